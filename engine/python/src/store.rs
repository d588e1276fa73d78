//! The Store's value codec (`zsmalloc_core::store`) for `zsmalloc.store`:
//! a value in or out of its pool objects in one call, and batches of them.
//!
//! An entry crosses as the Store's `_Entry` tuple: `(kind, nbytes, stored,
//! handles, fill)`.  A single value keeps the GIL unless it is large
//! (`DETACH_BYTES`); the batch calls release it for the whole batch.

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use zsmalloc_core::pool::{Pool, PoolError};
use zsmalloc_core::store::{self, Kind, Stored};

use super::{guard, new_bytes, pool_err, BorrowedBuffer, PyPool};

/// From this size on, one value's work pays for a release of the GIL.
const DETACH_BYTES: usize = 64 << 10;

type Entry = (String, usize, usize, Vec<u64>, u8);

fn compression_arg(name: &str) -> PyResult<Kind> {
    match name {
        "lz4" => Ok(Kind::Lz4),
        "zstd" => Ok(Kind::Zstd),
        "none" => Ok(Kind::Raw),
        _ => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "compression must be one of ('lz4', 'zstd', 'none'), not {name:?}"
        ))),
    }
}

fn stored_of(e: Entry) -> PyResult<Stored> {
    let kind = Kind::parse(&e.0).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!("no such kind of value: {:?}", e.0))
    })?;
    Ok(Stored { kind, nbytes: e.1, stored: e.2, handles: e.3, fill: e.4 })
}

fn entry_of<'py>(py: Python<'py>, s: Stored) -> PyResult<Bound<'py, PyTuple>> {
    let handles = PyTuple::new(py, s.handles)?;
    (s.kind.name(), s.nbytes, s.stored, handles, s.fill).into_pyobject(py)
}

/// Run `f` on the pool under its panic guard.
fn on_pool<T>(
    py: Python<'_>,
    pool: &PyPool,
    what: &str,
    f: impl FnOnce(&Pool) -> PyResult<T>,
) -> PyResult<T> {
    guard(py, &[&pool.poisoned, &pool.memory.get().poisoned], what, || f(&pool.inner))
}

/// `f`, with the GIL released when `detach`.
fn maybe_detached<T: Send>(py: Python<'_>, detach: bool, f: impl FnOnce() -> T + Send) -> T {
    if detach {
        py.detach(f)
    } else {
        f()
    }
}

/// ``store_put(pool, value, compression)``: the entry of ``value`` (any bytes-like), its chunks written.
#[pyfunction]
pub fn store_put<'py>(
    py: Python<'py>,
    pool: &Bound<'py, PyPool>,
    value: &Bound<'py, PyAny>,
    compression: &str,
) -> PyResult<Bound<'py, PyTuple>> {
    let comp = compression_arg(compression)?;
    on_pool(py, pool.get(), "store_put", |p| {
        let buf = BorrowedBuffer::get(value, false)?;
        let bytes = buf.as_slice();
        let s = maybe_detached(py, bytes.len() >= DETACH_BYTES, || store::put(p, comp, bytes));
        entry_of(py, s.map_err(|e| pool_err(py, e))?)
    })
}

/// ``store_put_many(pool, values, compression)``: the entries of ``values``, the GIL released
/// for the batch; on an error, every chunk the batch made is freed again.
#[pyfunction]
pub fn store_put_many<'py>(
    py: Python<'py>,
    pool: &Bound<'py, PyPool>,
    values: Vec<Bound<'py, PyAny>>,
    compression: &str,
) -> PyResult<Vec<Bound<'py, PyTuple>>> {
    let comp = compression_arg(compression)?;
    on_pool(py, pool.get(), "store_put_many", |p| {
        let bufs = values.iter().map(|v| BorrowedBuffer::get(v, false)).collect::<PyResult<Vec<_>>>()?;
        let slices: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
        let made = py.detach(|| -> Result<Vec<Stored>, PoolError> {
            let mut made = Vec::with_capacity(slices.len());
            for v in &slices {
                match store::put(p, comp, v) {
                    Ok(s) => made.push(s),
                    Err(e) => {
                        for s in &made {
                            let _ = store::free(p, &s.handles);
                        }
                        return Err(e);
                    }
                }
            }
            Ok(made)
        });
        made.map_err(|e| pool_err(py, e))?.into_iter().map(|s| entry_of(py, s)).collect()
    })
}

/// ``store_get(pool, entry)``: the value, as bytes.
#[pyfunction]
pub fn store_get<'py>(
    py: Python<'py>,
    pool: &Bound<'py, PyPool>,
    entry: Entry,
) -> PyResult<Bound<'py, PyAny>> {
    let e = stored_of(entry)?;
    on_pool(py, pool.get(), "store_get", |p| {
        let mut result = Ok(());
        // a bytes object nobody else sees yet: filled without the GIL if it is large
        let value = new_bytes(py, e.nbytes, |out| {
            result = maybe_detached(py, e.nbytes >= DETACH_BYTES, || store::get(p, &e, out))
        })?;
        result.map_err(|err| pool_err(py, err))?;
        Ok(value)
    })
}

/// ``store_get_into(pool, entry, buf)``: the value into the first ``nbytes`` of the writable ``buf``.
#[pyfunction]
pub fn store_get_into(
    py: Python<'_>,
    pool: &Bound<'_, PyPool>,
    entry: Entry,
    buf: &Bound<'_, PyAny>,
) -> PyResult<usize> {
    let e = stored_of(entry)?;
    on_pool(py, pool.get(), "store_get_into", |p| {
        let mut out = BorrowedBuffer::get(buf, true)?;
        let slice = out.as_mut_slice();
        if slice.len() < e.nbytes {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "a buffer of {} bytes cannot hold a value of {} bytes",
                slice.len(),
                e.nbytes
            )));
        }
        let target = &mut slice[..e.nbytes];
        maybe_detached(py, e.nbytes >= DETACH_BYTES, || store::get(p, &e, target))
            .map_err(|err| pool_err(py, err))?;
        Ok(e.nbytes)
    })
}

/// ``store_get_many(pool, entries)``: their values, as bytes, the GIL released for the batch.
#[pyfunction]
pub fn store_get_many<'py>(
    py: Python<'py>,
    pool: &Bound<'py, PyPool>,
    entries: Vec<Entry>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let entries = entries.into_iter().map(stored_of).collect::<PyResult<Vec<_>>>()?;
    on_pool(py, pool.get(), "store_get_many", |p| {
        // the bytes objects first (with the GIL), filled all at once without it
        let mut ptrs: Vec<(usize, usize)> = Vec::with_capacity(entries.len());
        let values = entries
            .iter()
            .map(|e| {
                new_bytes(py, e.nbytes, |out| {
                    ptrs.push((out.as_mut_ptr() as usize, out.len()));
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let filled = py.detach(|| {
            entries.iter().zip(&ptrs).try_for_each(|(e, &(addr, len))| {
                // SAFETY: the buffer of a bytes object made above, alive in
                // `values` and seen by nobody else until we return it
                let out = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
                store::get(p, e, out)
            })
        });
        filled.map_err(|e| pool_err(py, e))?;
        Ok(values)
    })
}

/// ``store_free(pool, handles)``: free a value's chunks.
#[pyfunction]
pub fn store_free(py: Python<'_>, pool: &Bound<'_, PyPool>, handles: Vec<u64>) -> PyResult<()> {
    on_pool(py, pool.get(), "store_free", |p| store::free(p, &handles).map_err(|e| pool_err(py, e)))
}
