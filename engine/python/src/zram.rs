//! `zsmalloc._engine.Zram`: the core's zram device, for
//! `zsmalloc.zram.engine.ZramDevice` (which adds the stats dataclasses, the
//! kernel's text formats and the argument conventions of the model's device).
//!
//! One page per call keeps the GIL: a page costs 1-4 µs, less than a
//! release and re-acquire would cost two threads.  The multi-page calls
//! (`write_pages`, `read_pages`, `read_pages_into`) and the walks over the
//! whole device (compact, writeback, recompress, mark_idle, reset, check)
//! release it for the whole call.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use pyo3::types::PyBytes;
use zsmalloc_core::zram::{
    library_versions, Algorithm, Codec, CodecSpec, Zram, ZramConfig, ZramError, ZstdFrame, COMPRESS_BOUND,
    PAGE_SIZE,
};

use super::{exact_i64, guard, int_arg, new_bytes, pool_err, python_error, zs_error, BorrowedBuffer, PyPool};

static ZRAM_ERRORS: [PyOnceLock<Py<PyAny>>; ZRAM_ERROR_NAMES.len()] =
    [const { PyOnceLock::new() }; ZRAM_ERROR_NAMES.len()];
const ZRAM_ERROR_NAMES: [&str; 5] =
    ["InvalidIOError", "ZramFullError", "ZramIOError", "NoBackingDeviceError", "ZramError"];

fn zram_error(py: Python<'_>, which: usize, msg: String) -> PyErr {
    python_error(py, &ZRAM_ERRORS[which], "zsmalloc.zram.errors", ZRAM_ERROR_NAMES[which], msg)
}

fn zram_err(py: Python<'_>, e: ZramError) -> PyErr {
    match e {
        ZramError::Invalid(m) => zram_error(py, 0, m),
        ZramError::Full(m) => zram_error(py, 1, m),
        ZramError::Io(m) => zram_error(py, 2, m),
        ZramError::NoBackingDevice(m) => zram_error(py, 3, m),
        ZramError::Value(m) => PyValueError::new_err(m),
        ZramError::Unsupported(m) => zram_error(py, 4, m),
        ZramError::Closed(m) => zs_error(py, 3, m),
        ZramError::Corrupt(m) => zs_error(py, 6, m),
        ZramError::Os(errno, m) => PyOSError::new_err((errno, m)),
        ZramError::Pool(e) => pool_err(py, e),
    }
}

/// A recompression algorithm from Python: (name, level, zstd frame, zstd library).
type RecompressSpec = (String, Option<i32>, Option<String>, Option<PathBuf>);

fn codec_spec(
    name: &str,
    level: Option<i32>,
    dictionary: Option<Vec<u8>>,
    frame: Option<&str>,
    library: Option<PathBuf>,
) -> PyResult<CodecSpec> {
    let algorithm: Algorithm = name.parse().map_err(PyValueError::new_err)?;
    let frame = match frame {
        None => ZstdFrame::Magicless,
        Some(f) => ZstdFrame::from_name(f).ok_or_else(|| {
            PyValueError::new_err(format!("zstd frame must be one of {:?}, not {f:?}", ZstdFrame::NAMES))
        })?,
    };
    Ok(CodecSpec { algorithm, level, dictionary, frame, library })
}

/// ``codec_versions()``: the versions of the C libraries the engine's codecs
/// are: ``(liblz4, libzstd)``, as ``("1.9.4", "1.5.7")``.
#[pyfunction]
pub fn codec_versions() -> (String, String) {
    library_versions()
}

/// ``compress(page, algorithm="lz4", level=None, frame=None, library=None)``:
/// the 4096-byte page as the engine's zram would store it, whatever its size
/// (for tools and tests); ``library`` a libzstd to load for zstd.
#[pyfunction]
#[pyo3(signature = (page, algorithm = "lz4", level = None, frame = None, library = None))]
pub fn compress<'py>(
    py: Python<'py>,
    page: &Bound<'py, PyAny>,
    algorithm: &str,
    level: Option<i32>,
    frame: Option<&str>,
    library: Option<PathBuf>,
) -> PyResult<Bound<'py, PyBytes>> {
    let codec =
        Codec::new(&codec_spec(algorithm, level, None, frame, library)?).map_err(PyValueError::new_err)?;
    let buf = BorrowedBuffer::get(page, false)?;
    if buf.as_slice().len() != PAGE_SIZE {
        return Err(PyValueError::new_err(format!(
            "a page is {PAGE_SIZE} bytes, not {}",
            buf.as_slice().len()
        )));
    }
    let mut out = [0u8; COMPRESS_BOUND];
    let n = codec
        .compress(buf.as_slice(), &mut out, COMPRESS_BOUND)
        .ok_or_else(|| PyValueError::new_err(format!("{algorithm} could not compress the page")))?;
    Ok(PyBytes::new(py, &out[..n]))
}

/// An int argument (TypeError for anything else), clamped into i64.
#[inline]
fn int(obj: &Bound<'_, PyAny>) -> PyResult<i64> {
    exact_i64(obj).map_or_else(|| int_arg(obj), Ok)
}

/// A page index: refused (and counted) if negative; a large one is the core's to refuse.
fn page_index(py: Python<'_>, z: &Zram, index: &Bound<'_, PyAny>) -> PyResult<usize> {
    index_of(py, z, int(index)?)
}

fn index_of(py: Python<'_>, z: &Zram, i: i64) -> PyResult<usize> {
    usize::try_from(i).map_err(|_| {
        let msg = format!("page index {i} is outside {} (0..{})", z.name, z.nr_pages() - 1);
        zram_err(py, z.refuse(msg))
    })
}

/// A byte range: refused (and counted) if it has a negative end.
fn byte_range(py: Python<'_>, z: &Zram, offset: &Bound<'_, PyAny>, length: i64) -> PyResult<(u64, u64)> {
    let o = int(offset)?;
    match (u64::try_from(o), u64::try_from(length)) {
        (Ok(o), Ok(n)) => Ok((o, n)),
        _ => {
            let msg = format!("byte range [{o}, {}) is outside {} (0..{})", o + length, z.name, z.disksize());
            Err(zram_err(py, z.refuse(msg)))
        }
    }
}

/// The engine's zram device on an engine pool.
#[pyclass(module = "zsmalloc._engine", name = "Zram", frozen)]
pub struct PyZram {
    inner: Arc<Zram>,
    pool: Py<PyPool>,
}

impl PyZram {
    /// Run `f` on the device under the pool's panic guard.
    fn call<T>(&self, py: Python<'_>, what: &str, f: impl FnOnce(&Zram) -> PyResult<T>) -> PyResult<T> {
        let pool = self.pool.get();
        guard(py, &[&pool.poisoned, &pool.memory.get().poisoned], what, || f(&self.inner))
    }

    /// Run `f` on the device with the GIL released.
    fn detached<T: Send>(
        &self,
        py: Python<'_>,
        what: &str,
        f: impl FnOnce(&Zram) -> Result<T, ZramError> + Send,
    ) -> PyResult<T> {
        self.call(py, what, |z| py.detach(|| f(z)).map_err(|e| zram_err(py, e)))
    }
}

#[pymethods]
impl PyZram {
    /// ``Zram(pool, disksize, algorithm, level, dictionary, frame, library, recompress, mem_limit, backing_file,
    /// backing_blocks, name)``; ``recompress`` is a list of ``(algorithm, level, frame, library)``.
    #[new]
    #[pyo3(signature = (pool, disksize, algorithm = "lz4", level = None, dictionary = None, frame = None, library = None,
                        recompress = Vec::new(),
                        mem_limit = 0, backing_file = None, backing_blocks = None, name = "zram0".to_string()))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        pool: Bound<'_, PyPool>,
        disksize: u64,
        algorithm: &str,
        level: Option<i32>,
        dictionary: Option<Vec<u8>>,
        frame: Option<&str>,
        library: Option<PathBuf>,
        recompress: Vec<RecompressSpec>,
        mem_limit: u64,
        backing_file: Option<PathBuf>,
        backing_blocks: Option<u64>,
        name: String,
    ) -> PyResult<PyZram> {
        let mut config = ZramConfig::new(disksize);
        config.name = name;
        config.algorithm = codec_spec(algorithm, level, dictionary, frame, library)?;
        config.recompress = recompress
            .into_iter()
            .map(|(n, l, f, lib)| codec_spec(&n, l, None, f.as_deref(), lib))
            .collect::<PyResult<Vec<_>>>()?;
        config.mem_limit = mem_limit;
        config.backing_file = backing_file;
        config.backing_blocks = backing_blocks;
        let core_pool = Arc::clone(&pool.get().inner);
        let zram = Zram::new(core_pool, config).map_err(|e| zram_err(py, e))?;
        Ok(PyZram { inner: Arc::new(zram), pool: pool.unbind() })
    }

    #[getter]
    fn pool(&self, py: Python<'_>) -> Py<PyPool> {
        self.pool.clone_ref(py)
    }
    #[getter]
    fn disksize(&self) -> u64 {
        self.inner.disksize()
    }
    #[getter]
    fn nr_pages(&self) -> usize {
        self.inner.nr_pages()
    }
    #[getter]
    fn pages_stored(&self) -> u64 {
        self.inner.pages_stored()
    }
    /// ``(name, level)`` of each algorithm by priority.
    #[getter]
    fn algorithms(&self) -> Vec<(&'static str, Option<i32>)> {
        self.inner.comps().iter().map(|c| (c.algorithm.name(), c.level)).collect()
    }
    /// ``(path, version)`` of the libzstd each algorithm loaded, by priority (None: none loaded).
    #[getter]
    fn libraries(&self) -> Vec<Option<(PathBuf, String)>> {
        self.inner
            .comps()
            .iter()
            .map(|c| c.library().map(|l| (l.path().to_path_buf(), l.version_string())))
            .collect()
    }
    #[getter]
    fn backing_file(&self) -> Option<PathBuf> {
        self.inner.backing_file().map(|p| p.to_path_buf())
    }
    #[getter]
    fn mem_limit(&self) -> u64 {
        self.inner.mem_limit()
    }
    #[setter]
    fn set_mem_limit(&self, bytes: u64) {
        self.inner.set_mem_limit(bytes)
    }

    // one page per call, with the GIL

    fn write_page(&self, py: Python<'_>, index: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.call(py, "write_page", |z| {
            let index = page_index(py, z, index)?;
            let buf = BorrowedBuffer::get(data, false)?;
            z.write_page(index, buf.as_slice()).map_err(|e| zram_err(py, e))
        })
    }

    fn read_page<'py>(&self, py: Python<'py>, index: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, "read_page", |z| {
            let index = page_index(py, z, index)?;
            let mut result = Ok(());
            let page = new_bytes(py, PAGE_SIZE, |out| result = z.read_page(index, out))?;
            result.map_err(|e| zram_err(py, e))?;
            Ok(page)
        })
    }

    fn read_page_into(
        &self,
        py: Python<'_>,
        index: &Bound<'_, PyAny>,
        buf: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.call(py, "read_page_into", |z| {
            let index = page_index(py, z, index)?;
            let mut out = BorrowedBuffer::get(buf, true)?;
            z.read_page(index, out.as_mut_slice()).map_err(|e| zram_err(py, e))
        })
    }

    fn pwrite(&self, py: Python<'_>, offset: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.call(py, "pwrite", |z| {
            let buf = BorrowedBuffer::get(data, false)?;
            let (offset, _) = byte_range(py, z, offset, buf.as_slice().len() as i64)?;
            z.pwrite(offset, buf.as_slice()).map_err(|e| zram_err(py, e))?;
            Ok(buf.as_slice().len())
        })
    }

    fn pread<'py>(
        &self,
        py: Python<'py>,
        offset: &Bound<'py, PyAny>,
        length: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, "pread", |z| {
            let (offset, length) = byte_range(py, z, offset, int(length)?)?;
            // checked before the bytes object of `length` is made
            z.check_range(offset, length).map_err(|e| zram_err(py, e))?;
            let mut result = Ok(());
            let data = new_bytes(py, length as usize, |out| result = z.pread(offset, out))?;
            result.map_err(|e| zram_err(py, e))?;
            Ok(data)
        })
    }

    fn write_zeroes(
        &self,
        py: Python<'_>,
        offset: &Bound<'_, PyAny>,
        length: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.call(py, "write_zeroes", |z| {
            let (offset, length) = byte_range(py, z, offset, int(length)?)?;
            z.write_zeroes(offset, length).map_err(|e| zram_err(py, e))
        })
    }

    fn discard(&self, py: Python<'_>, index: &Bound<'_, PyAny>, count: &Bound<'_, PyAny>) -> PyResult<()> {
        self.call(py, "discard", |z| {
            let (i, n) = (int(index)?, int(count)?);
            let (Ok(index), Ok(count)) = (usize::try_from(i), usize::try_from(n)) else {
                let msg = format!("discard of pages [{i}, {}) is outside {}", i + n, z.name);
                return Err(zram_err(py, z.refuse(msg)));
            };
            z.discard(index, count).map_err(|e| zram_err(py, e))
        })
    }

    /// ``(flags, handle, size)`` of slot ``index``, under its lock.
    fn slot(&self, py: Python<'_>, index: &Bound<'_, PyAny>) -> PyResult<(u32, u64, usize)> {
        self.call(py, "slot", |z| {
            let index = page_index(py, z, index)?;
            let v = z.slot_view(index).map_err(|e| zram_err(py, e))?;
            Ok((v.flags, v.handle, v.size))
        })
    }

    // many pages per call, without the GIL

    /// Pages ``index ..`` from ``data`` (a whole number of pages).
    fn write_pages(&self, py: Python<'_>, index: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let index = page_index(py, &self.inner, index)?;
        let buf = BorrowedBuffer::get(data, false)?;
        let bytes = buf.as_slice();
        // the export pins the buffer's memory until `buf` drops, after the call
        self.detached(py, "write_pages", |z| z.write_pages(index, bytes))
    }

    /// ``count`` pages from ``index``, as one bytes object.
    fn read_pages<'py>(
        &self,
        py: Python<'py>,
        index: &Bound<'py, PyAny>,
        count: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, "read_pages", |z| {
            let index = page_index(py, z, index)?;
            let n = int(count)?;
            let count = usize::try_from(n)
                .map_err(|_| zram_err(py, z.refuse(format!("read_pages of {n} pages: a count is >= 0"))))?;
            // checked before the bytes object of `count` pages is made
            z.check_page_range(index, count).map_err(|e| zram_err(py, e))?;
            let mut result = Ok(());
            let data = new_bytes(py, count * PAGE_SIZE, |out| {
                // a bytes object nobody else sees yet: filled without the GIL
                result = py.detach(|| z.read_pages(index, out));
            })?;
            result.map_err(|e| zram_err(py, e))?;
            Ok(data)
        })
    }

    /// Fill the writable buffer ``buf`` (a whole number of pages) from page ``index``.
    fn read_pages_into(
        &self,
        py: Python<'_>,
        index: &Bound<'_, PyAny>,
        buf: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let index = page_index(py, &self.inner, index)?;
        let mut out = BorrowedBuffer::get(buf, true)?;
        let bytes = out.as_mut_slice();
        let n = bytes.len() / PAGE_SIZE;
        self.detached(py, "read_pages_into", |z| z.read_pages(index, bytes))?;
        Ok(n)
    }

    // walks over the device, without the GIL

    fn compact(&self, py: Python<'_>) -> PyResult<u64> {
        self.detached(py, "compact", |z| z.compact())
    }

    fn mark_idle(&self, py: Python<'_>) -> PyResult<u64> {
        self.detached(py, "mark_idle", |z| z.mark_idle())
    }

    #[pyo3(signature = (mode, max_pages = None, indices = None))]
    fn writeback(
        &self,
        py: Python<'_>,
        mode: &str,
        max_pages: Option<u64>,
        indices: Option<Vec<i64>>,
    ) -> PyResult<u64> {
        let indices = match indices {
            None => None,
            Some(list) => {
                Some(list.into_iter().map(|i| index_of(py, &self.inner, i)).collect::<PyResult<Vec<_>>>()?)
            }
        };
        self.detached(py, "writeback", |z| z.writeback(mode, max_pages, indices.as_deref()))
    }

    #[pyo3(signature = (algorithm = None, only_huge = false, only_idle = false, threshold = 0, max_pages = None))]
    fn recompress(
        &self,
        py: Python<'_>,
        algorithm: Option<&str>,
        only_huge: bool,
        only_idle: bool,
        threshold: i64,
        max_pages: Option<u64>,
    ) -> PyResult<u64> {
        let threshold = usize::try_from(threshold).map_err(|_| {
            let why = format!(
                "threshold must be within 0..{}, not {threshold}",
                self.inner.pool().huge_class_size() - 1
            );
            PyValueError::new_err(why)
        })?;
        self.detached(py, "recompress", |z| {
            z.recompress(algorithm, only_huge, only_idle, threshold, max_pages)
        })
    }

    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.detached(py, "reset", |z| z.reset())
    }

    /// Free every page; every later call raises PoolClosedError.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.detached(py, "close", |z| z.close())
    }

    /// The slot table against the counters and the pool; CorruptionError if they differ.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        self.detached(py, "check", |z| z.check())
    }

    // statistics

    fn mm_stat(&self) -> [u64; 9] {
        let s = self.inner.mm_stat();
        [
            s.orig_data_size,
            s.compr_data_size,
            s.mem_used_total,
            s.mem_limit,
            s.mem_used_max,
            s.same_pages,
            s.pages_compacted,
            s.huge_pages,
            s.huge_pages_since,
        ]
    }

    fn io_stat(&self) -> [u64; 4] {
        let s = self.inner.io_stat();
        [s.failed_reads, s.failed_writes, s.invalid_io, s.notify_free]
    }

    fn bd_stat(&self) -> [u64; 3] {
        let s = self.inner.bd_stat();
        [s.bd_count, s.bd_reads, s.bd_writes]
    }

    fn recomp_stat(&self) -> [u64; 7] {
        let s = self.inner.recomp_stat();
        [
            s.attempted,
            s.recompressed,
            s.failed,
            s.incompressible,
            s.huge_recompressed,
            s.bytes_before,
            s.bytes_after,
        ]
    }

    fn reset_mem_used_max(&self, py: Python<'_>) -> PyResult<()> {
        self.inner.reset_mem_used_max().map_err(|e| zram_err(py, e))
    }
}
