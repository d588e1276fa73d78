//! `zsmalloc._engine`: the PyO3 binding of zsmalloc-core.
//!
//! A thin layer: argument checks that Python callers expect (types, ranges,
//! the model's error messages), conversion of results to Python objects, and
//! the GIL released around the calls that do real work (compaction, the
//! deferred free, trimming, sleeping on a page lock, snapshots).  A single
//! object's malloc, free, read or write keeps the GIL: it takes well under a
//! microsecond, less than a release and re-acquire would cost.
//!
//! No engine lock is ever held while this layer waits for the GIL, so a
//! thread blocked on an engine lock with the GIL held only waits for a
//! detached thread to finish its work; it cannot deadlock.
//!
//! Errors are the classes of `zsmalloc.errors`, looked up once.  The zram
//! device's binding is the submodule `zram`, the Store's index and hot path `store`,
//! the zone's buddy allocator (for the differential test of its model) `zone`.

mod fragsim;
mod store;
mod zone;
mod zram;

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyTuple};

use zsmalloc_core::mm::compaction::CompactStatus;
use zsmalloc_core::mm::memory::{ALLOC_EVENTS, PCP_BATCH, PCP_HIGH};
use zsmalloc_core::mm::migrate::{EAGAIN, NR_MIGRATE_PASSES, VMSTAT_EVENTS};
use zsmalloc_core::mm::zone::{MigrateType, Zone};
use zsmalloc_core::mm::{
    Memory, MigrateMode, MigrateResult, MmError, MovableOps, Target, PAGE_SHIFT, PAGE_SIZE, PG_ISOLATED,
    PG_LOCKED, PG_MOVABLE,
};
use zsmalloc_core::pool::zsmalloc::NR_HANDLE_TAGS;
use zsmalloc_core::pool::{ClassRule, Fullness, Mapped, Pool, PoolConfig, PoolError, Protocol};

// ----------------------------------------------------------------------
// errors

static ERRORS: [PyOnceLock<Py<PyAny>>; ERROR_NAMES.len()] = [const { PyOnceLock::new() }; ERROR_NAMES.len()];
const ERROR_NAMES: [&str; 9] = [
    "InvalidSizeError",
    "InvalidHandleError",
    "PoolFullError",
    "PoolClosedError",
    "OutOfFramesError",
    "PageStateError",
    "CorruptionError",
    "WouldSleepError",
    "ObjectMappedError",
];

fn zs_error(py: Python<'_>, which: usize, msg: String) -> PyErr {
    python_error(py, &ERRORS[which], "zsmalloc.errors", ERROR_NAMES[which], msg)
}

/// An instance of the exception class `module.name` (looked up once, kept in `cell`) with `msg`.
fn python_error(
    py: Python<'_>,
    cell: &PyOnceLock<Py<PyAny>>,
    module: &str,
    name: &str,
    msg: String,
) -> PyErr {
    match cell
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> { Ok(py.import(module)?.getattr(name)?.unbind()) })
    {
        Ok(cls) => PyErr::from_value(match cls.bind(py).call1((msg,)) {
            Ok(exc) => exc,
            Err(e) => return e,
        }),
        Err(e) => e,
    }
}

fn mm_err(py: Python<'_>, e: MmError) -> PyErr {
    match e {
        MmError::OutOfFrames(m) => zs_error(py, 4, m),
        MmError::PageState(m) => zs_error(py, 5, m),
        MmError::Invalid(m) => PyValueError::new_err(m),
        MmError::WouldSleep(m) => zs_error(py, 7, m),
    }
}

fn pool_err(py: Python<'_>, e: PoolError) -> PyErr {
    match e {
        PoolError::InvalidSize(m) => zs_error(py, 0, m),
        PoolError::InvalidHandle(m) => zs_error(py, 1, m),
        PoolError::PoolFull(m) => zs_error(py, 2, m),
        PoolError::NoFrame(m, cause) => {
            let err = zs_error(py, 2, m);
            err.set_cause(py, Some(mm_err(py, cause)));
            err
        }
        PoolError::PoolClosed(m) => zs_error(py, 3, m),
        PoolError::Mapped(m) => zs_error(py, 8, m),
        PoolError::Value(m) => PyValueError::new_err(m),
        PoolError::Mm(e) => mm_err(py, e),
    }
}

/// Run `f`, turning a panic into CorruptionError and poisoning `poisoned`.
///
/// The core asserts its bounds rather than read or write outside what it
/// owns, so a panic means an invariant broke (an engine bug, or the damage
/// of the deliberately broken 2016-v3 protocol): the structures may be half
/// updated, so the pool (or the Memory) refuses every later call.
fn guard<T>(
    py: Python<'_>,
    poisoned: &[&AtomicBool],
    what: &str,
    f: impl FnOnce() -> PyResult<T>,
) -> PyResult<T> {
    if poisoned.iter().any(|p| p.load(Ordering::Acquire)) {
        return Err(zs_error(
            py,
            6,
            format!("{what}: an earlier call found the engine's state broken; this pool refuses further use"),
        ));
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            poisoned[0].store(true, Ordering::Release);
            let msg = payload
                .downcast_ref::<&str>()
                .map(|m| m.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(zs_error(
                py,
                6,
                format!("{what}: the engine's state is broken ({msg}); it refuses further use"),
            ))
        }
    }
}

// ----------------------------------------------------------------------
// arguments

/// The value of an exact `int` that fits an i64, without the general
/// conversion's cost (CPython 3.11 converts every multi-digit int to u64
/// through a byte array); None for anything else.
#[inline]
fn exact_i64(obj: &Bound<'_, PyAny>) -> Option<i64> {
    // SAFETY: obj is a live object (we hold a reference); PyLong_CheckExact
    // only reads its type, and PyLong_AsLongAndOverflow on an exact int
    // never raises: it reports overflow through the flag instead.
    unsafe {
        if ffi::PyLong_CheckExact(obj.as_ptr()) == 0 {
            return None;
        }
        let mut overflow = 0;
        let v = ffi::PyLong_AsLongAndOverflow(obj.as_ptr(), &mut overflow);
        (overflow == 0).then_some(v as i64)
    }
}

/// A handle argument: any int; one that is no u64 is no handle of ours.
fn handle_arg(pool: &Pool, obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    if let Some(h) = exact_i64(obj).filter(|&h| h >= 0) {
        return Ok(h as u64);
    }
    if let Ok(h) = obj.extract::<u64>() {
        return Ok(h);
    }
    let index = obj.py().import("operator")?.getattr("index")?;
    let as_int = index.call1((obj,))?; // TypeError for what is not an int
    let msg = if pool.is_closed() {
        format!("pool '{}' is closed", pool.config.name)
    } else {
        format!("invalid handle {}: unknown, freed or stale", as_int.repr()?)
    };
    Err(zs_error(obj.py(), if pool.is_closed() { 3 } else { 1 }, msg))
}

/// A size argument: an int within 1..4096, else InvalidSizeError.
fn size_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    if let Some(s) = exact_i64(obj).filter(|&s| s >= 0) {
        return Ok(s as usize);
    }
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err("size must be an int, not bool"));
    }
    if let Ok(s) = obj.extract::<usize>() {
        return Ok(s);
    }
    let index = obj.py().import("operator")?.getattr("index")?;
    let as_int = index.call1((obj,))?;
    Err(zs_error(obj.py(), 0, format!("size must be within 1..4096, not {}", as_int.repr()?)))
}

/// A page cap: None, or an int >= 0 (not a bool, not a float).
fn page_cap_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err("max_pages must be an int or None, not bool"));
    }
    let m: i64 = obj.extract()?;
    if m < 0 {
        return Err(PyValueError::new_err(format!("max_pages must be >= 0, not {m}")));
    }
    Ok(Some(m as usize))
}

/// PoolClosedError for a call on a closed Memory.
fn memory_open(py: Python<'_>, mem: &Memory) -> PyResult<()> {
    if mem.is_closed() {
        return Err(zs_error(py, 3, "the memory is closed: its frames are gone".into()));
    }
    Ok(())
}

/// An int that may be negative or huge: clamped into i64 (a range check follows).
fn int_arg(obj: &Bound<'_, PyAny>) -> PyResult<i64> {
    if let Ok(v) = obj.extract::<i64>() {
        return Ok(v);
    }
    let index = obj.py().import("operator")?.getattr("index")?;
    let as_int = index.call1((obj,))?;
    Ok(if as_int.lt(0)? { i64::MIN / 2 } else { i64::MAX / 2 })
}

/// A timeout in seconds: negative or NaN is no wait at all, infinite or too
/// long for a Duration is no limit (Duration::from_secs_f64 would panic).
fn timeout_arg(timeout: Option<f64>) -> Option<Duration> {
    let t = timeout?;
    if t.is_nan() || t <= 0.0 {
        return Some(Duration::ZERO);
    }
    Duration::try_from_secs_f64(t).ok()
}

fn pfn_arg(mem: &Memory, pfn: i64) -> PyResult<u32> {
    if pfn < 0 || pfn as u64 >= mem.capacity() as u64 {
        return Err(PyValueError::new_err(format!(
            "pfn {pfn} is outside the arena (capacity {})",
            mem.capacity()
        )));
    }
    Ok(pfn as u32)
}

/// A C-contiguous byte buffer borrowed from a Python object for the length
/// of one call (the buffer protocol; no heap allocation).
struct BorrowedBuffer {
    view: ffi::Py_buffer,
}

impl BorrowedBuffer {
    fn get(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<BorrowedBuffer> {
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
        let flags = if writable { ffi::PyBUF_WRITABLE } else { ffi::PyBUF_SIMPLE };
        // SAFETY: PyObject_GetBuffer fills the whole view on success (0) and
        // leaves nothing to release on failure.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: initialised by the successful call above.
        Ok(BorrowedBuffer { view: unsafe { view.assume_init() } })
    }

    fn as_slice(&self) -> &[u8] {
        if self.view.len == 0 {
            return &[];
        }
        // SAFETY: a PyBUF_SIMPLE export is `len` contiguous bytes at `buf`,
        // alive until PyBuffer_Release; we hold the GIL for the whole call,
        // so no Python code changes it meanwhile.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.view.len as usize) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.view.len == 0 {
            return &mut [];
        }
        // SAFETY: as above, and the export was asked for writable.
        unsafe { std::slice::from_raw_parts_mut(self.view.buf as *mut u8, self.view.len as usize) }
    }
}

impl Drop for BorrowedBuffer {
    fn drop(&mut self) {
        // SAFETY: the view came from a successful PyObject_GetBuffer and is
        // released once; the GIL is held by the call that made it.
        unsafe { ffi::PyBuffer_Release(&mut self.view) }
    }
}

/// A new bytes object of `len` bytes filled by `fill`, without zeroing it first.
fn new_bytes<'py>(py: Python<'py>, len: usize, fill: impl FnOnce(&mut [u8])) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: PyBytes_FromStringAndSize(NULL, len) makes an uninitialised
    // bytes object of len bytes that we own; we fill all of it before any
    // Python code can see it.
    unsafe {
        let ptr = ffi::PyBytes_FromStringAndSize(std::ptr::null(), len as ffi::Py_ssize_t);
        if ptr.is_null() {
            return Err(PyErr::fetch(py));
        }
        let buf = ffi::PyBytes_AsString(ptr).cast::<u8>();
        fill(std::slice::from_raw_parts_mut(buf, len));
        Ok(Bound::from_owned_ptr(py, ptr))
    }
}

fn physical_pages() -> usize {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    if pages <= 0 || size <= 0 {
        return 1 << 20;
    }
    (pages as usize * size as usize) / PAGE_SIZE
}

// ----------------------------------------------------------------------
// Memory

/// Page frames in one arena, with descriptors, page locks and a page allocator.
#[pyclass(module = "zsmalloc._engine", name = "Memory", frozen, subclass)]
pub struct PyMemory {
    inner: Arc<Memory>,
    poisoned: AtomicBool,
    /// movable-page owners written in Python, kept alive while registered
    py_owners: std::sync::Mutex<Vec<(u8, Arc<PyOwner>)>>,
}

/// A movable-page owner written in Python (``isolate``/``migrate``/``putback``
/// methods, as the model's ``MovableOps``), called with the GIL.  The VM
/// holds only page locks while it calls an owner, and every engine call that
/// may sleep on a page lock releases the GIL first, so the GIL is never
/// awaited by a thread that a GIL holder waits for.  An exception in a
/// callback is reported as unraisable and counts as a refusal (isolate) or
/// as busy (migrate).
struct PyOwner {
    ops: Py<PyAny>,
}

fn mode_arg(mode: i64) -> PyResult<MigrateMode> {
    match mode {
        0 => Ok(MigrateMode::Async),
        1 => Ok(MigrateMode::SyncLight),
        2 => Ok(MigrateMode::Sync),
        _ => Err(PyValueError::new_err(format!("migrate mode must be 0, 1 or 2 (MigrateMode), not {mode}"))),
    }
}

fn py_mode(py: Python<'_>, mode: MigrateMode) -> PyResult<Bound<'_, PyAny>> {
    py.import("zsmalloc.mm.migrate")?.getattr("MigrateMode")?.call1((mode as i64,))
}

impl MovableOps for PyOwner {
    fn isolate(&self, _mem: &Memory, pfn: u32, mode: MigrateMode) -> bool {
        Python::attach(|py| {
            let r = py_mode(py, mode)
                .and_then(|m| self.ops.bind(py).call_method1("isolate", (pfn, m)))
                .and_then(|v| v.is_truthy());
            r.unwrap_or_else(|e| {
                e.write_unraisable(py, Some(self.ops.bind(py)));
                false
            })
        })
    }

    fn migrate(&self, _mem: &Memory, dst: u32, src: u32, mode: MigrateMode) -> i32 {
        Python::attach(|py| {
            let r = py_mode(py, mode)
                .and_then(|m| self.ops.bind(py).call_method1("migrate", (dst, src, m)))
                .and_then(|v| v.extract::<i32>());
            r.unwrap_or_else(|e| {
                e.write_unraisable(py, Some(self.ops.bind(py)));
                EAGAIN
            })
        })
    }

    fn putback(&self, _mem: &Memory, pfn: u32) {
        Python::attach(|py| {
            if let Err(e) = self.ops.bind(py).call_method1("putback", (pfn,)) {
                e.write_unraisable(py, Some(self.ops.bind(py)));
            }
        })
    }
}

fn target_arg(target: Option<(i64, i64)>) -> PyResult<Target> {
    match target {
        None => Ok(Target::Anywhere),
        Some((lo, hi)) if lo >= 0 && hi >= lo => Ok(Target::Range(lo as usize, hi as usize)),
        Some((lo, hi)) => Err(PyValueError::new_err(format!("bad target range [{lo}, {hi})"))),
    }
}

fn pfns_arg(mem: &Memory, pfns: Vec<i64>) -> PyResult<Vec<u32>> {
    pfns.into_iter().map(|p| pfn_arg(mem, p)).collect()
}

/// Fill one of the model's result dataclasses (``zsmalloc.mm.migrate`` and
/// ``zsmalloc.mm.compaction``: plain data, shared by both implementations).
fn migrate_result<'py>(
    py: Python<'py>,
    module: &str,
    class: &str,
    r: &MigrateResult,
) -> PyResult<Bound<'py, PyAny>> {
    let obj = py.import(module)?.getattr(class)?.call0()?;
    obj.setattr("succeeded", r.succeeded)?;
    obj.setattr("failed", r.failed)?;
    obj.setattr("retried", r.retried)?;
    let moved = PyDict::new(py);
    for &(src, dst) in &r.moved {
        moved.set_item(src, dst)?;
    }
    obj.setattr("moved", moved)?;
    obj.setattr("failed_pfns", r.failed_pfns.clone())?;
    Ok(obj)
}

impl PyMemory {
    fn wrap(mem: Memory) -> PyMemory {
        PyMemory {
            inner: Arc::new(mem),
            poisoned: AtomicBool::new(false),
            py_owners: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// `f` on the zone of a zoned Memory, under the allocator lock.
    fn zone_mut<R>(&self, f: impl FnOnce(&mut Zone) -> R) -> PyResult<R> {
        self.inner.with_zone_mut(f).ok_or_else(|| PyValueError::new_err("only a zoned Memory has a zone"))
    }

    /// `alloc_pages_mt` of `n` frames.
    fn alloc_n(&self, py: Python<'_>, n: usize, mt: MigrateType) -> PyResult<Vec<u32>> {
        if n > self.inner.capacity() {
            // more than the arena holds: refused before a buffer of n is made
            return Err(mm_err(
                py,
                MmError::OutOfFrames(format!(
                    "no free frame for {n} pages (capacity {})",
                    self.inner.capacity()
                )),
            ));
        }
        let mut out = vec![0u32; n];
        self.inner.alloc_pages_mt(&mut out, mt).map_err(|e| mm_err(py, e))?;
        Ok(out)
    }
}

#[pymethods]
impl PyMemory {
    #[new]
    #[pyo3(signature = (capacity = None, *, pcp_high = PCP_HIGH as i64, pcp_batch = PCP_BATCH as i64,
                        sleep_on_page_lock = true))]
    fn new(capacity: Option<i64>, pcp_high: i64, pcp_batch: i64, sleep_on_page_lock: bool) -> PyResult<Self> {
        let capacity = capacity.unwrap_or(physical_pages() as i64);
        if capacity < 1 {
            return Err(PyValueError::new_err(format!(
                "capacity must be at least one frame, not {capacity}"
            )));
        }
        if pcp_high < 0 || pcp_batch <= 0 {
            return Err(PyValueError::new_err("pcp_high must be >= 0 and pcp_batch > 0"));
        }
        let mem = Memory::new(capacity as usize, pcp_high as usize, pcp_batch as usize)
            .map_err(|e| Python::attach(|py| mm_err(py, e)))?
            .with_sleep_on_page_lock(sleep_on_page_lock);
        Ok(PyMemory::wrap(mem))
    }

    /// A Memory whose frames come from one zone's buddy allocator
    /// (`Memory::new_zoned`): all free at first, every pageblock movable.
    #[staticmethod]
    #[pyo3(signature = (capacity, *, sleep_on_page_lock = true))]
    fn new_zoned(py: Python<'_>, capacity: i64, sleep_on_page_lock: bool) -> PyResult<Self> {
        if capacity < 1 {
            return Err(PyValueError::new_err(format!(
                "capacity must be at least one frame, not {capacity}"
            )));
        }
        let mem = Memory::new_zoned(capacity as usize)
            .map_err(|e| mm_err(py, e))?
            .with_sleep_on_page_lock(sleep_on_page_lock);
        Ok(PyMemory::wrap(mem))
    }

    #[getter]
    fn zoned(&self) -> bool {
        self.inner.is_zoned()
    }

    /// A copy of the zone of a zoned Memory, taken under the allocator lock.
    fn zone_snapshot(&self) -> PyResult<zone::PyZone> {
        self.zone_mut(|z| zone::PyZone::snapshot(z.clone()))
    }

    /// The zone's `compaction_deferred(order)`: skip this compaction?
    fn compaction_deferred(&self, py: Python<'_>, order: i64) -> PyResult<bool> {
        let order = zone::order_arg(py, order)?;
        self.zone_mut(|z| z.compaction_deferred(order))
    }

    /// The zone's `defer_compaction(order)`: a compaction for `order` failed.
    fn defer_compaction(&self, py: Python<'_>, order: i64) -> PyResult<()> {
        let order = zone::order_arg(py, order)?;
        self.zone_mut(|z| z.defer_compaction(order))
    }

    /// The zone's `compaction_defer_reset(order, alloc_success)`: a compaction for `order` succeeded.
    fn compaction_defer_reset(&self, py: Python<'_>, order: i64, alloc_success: bool) -> PyResult<()> {
        let order = zone::order_arg(py, order)?;
        self.zone_mut(|z| z.compaction_defer_reset(order, alloc_success))
    }

    /// A block of `2^order` frames of migratetype `mt` if the zone stays above
    /// `mark` free pages; its head pfn stands for the block.
    fn alloc_block(&self, py: Python<'_>, order: i64, mt: &Bound<'_, PyAny>, mark: i64) -> PyResult<u32> {
        let order = zone::order_arg(py, order)?;
        let mt = zone::mt_arg(mt)?;
        let mark = zone::count_arg(py, "mark", mark)?;
        self.inner.alloc_block(order, mt, mark).map_err(|e| mm_err(py, e))
    }

    /// `alloc_pages` of a migratetype: where a zoned Memory places the frames.
    fn alloc_pages_mt(&self, py: Python<'_>, n: usize, mt: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        self.alloc_n(py, n, zone::mt_arg(mt)?)
    }

    /// `compact_zone` for a failed request of `order` and `mt` (the GIL released).
    #[pyo3(signature = (order, mt, mode = 2))]
    fn compact_zone<'py>(
        &self,
        py: Python<'py>,
        order: i64,
        mt: &Bound<'py, PyAny>,
        mode: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        guard(py, &[&self.poisoned], "compact_zone", || {
            memory_open(py, &self.inner)?;
            let order = zone::order_arg(py, order)?;
            let mt = zone::mt_arg(mt)?;
            let mode = mode_arg(mode)?;
            let mem = &self.inner;
            let r = py.detach(|| mem.compact_zone(order, mt, mode)).map_err(|e| mm_err(py, e))?;
            let module = py.import("zsmalloc.mm.compaction")?;
            let status = match r.status {
                CompactStatus::Skipped => "skipped",
                CompactStatus::Complete => "complete",
                CompactStatus::Success => "success",
            };
            let obj = module.getattr("ZoneCompactResult")?.call0()?;
            obj.setattr("status", module.getattr("CompactStatus")?.call1((status,))?)?;
            obj.setattr("migrate", migrate_result(py, "zsmalloc.mm.migrate", "MigrateResult", &r.migrate)?)?;
            obj.setattr("migrate_isolated", r.migrate_isolated)?;
            obj.setattr("migrate_scanned", r.migrate_scanned)?;
            obj.setattr("free_isolated", r.free_isolated)?;
            obj.setattr("free_scanned", r.free_scanned)?;
            Ok(obj)
        })
    }

    // ------------------------------------------------------------------
    // movable pages and the migration core (the GIL released)

    /// Register an owner's ``isolate`` / ``migrate`` / ``putback`` callbacks;
    /// returns the id to pass to ``set_page_movable``.
    fn register_movable_ops(&self, py: Python<'_>, ops: Py<PyAny>) -> PyResult<u8> {
        let owner = Arc::new(PyOwner { ops });
        let weak: std::sync::Weak<dyn MovableOps> = {
            let as_dyn: Arc<dyn MovableOps> = owner.clone();
            Arc::downgrade(&as_dyn)
        };
        let id = self.inner.register_movable_ops(weak).map_err(|e| mm_err(py, e))?;
        self.py_owners.lock().map_err(|_| PyTypeError::new_err("owner table poisoned"))?.push((id, owner));
        Ok(id)
    }

    fn unregister_movable_ops(&self, ops_id: u8) -> PyResult<()> {
        self.inner.unregister_movable_ops(ops_id);
        self.py_owners
            .lock()
            .map_err(|_| PyTypeError::new_err("owner table poisoned"))?
            .retain(|(id, _)| *id != ops_id);
        Ok(())
    }

    /// ``__SetPageMovable``.
    fn set_page_movable(&self, pfn: i64, ops_id: u8) -> PyResult<()> {
        self.inner.set_page_movable(pfn_arg(&self.inner, pfn)?, ops_id);
        Ok(())
    }

    fn set_pages_movable(&self, py: Python<'_>, pfns: Vec<i64>, ops_id: u8) -> PyResult<()> {
        let pfns = pfns_arg(&self.inner, pfns)?;
        self.inner.set_pages_movable(&pfns, ops_id).map_err(|e| mm_err(py, e))
    }

    /// The owner forgets the page: its owner words and PG_movable cleared.
    fn reset_page(&self, pfn: i64) -> PyResult<()> {
        self.inner.reset_page(pfn_arg(&self.inner, pfn)?);
        Ok(())
    }

    /// ``reset_page``, ``unlock_page``, ``put_page`` on each of these locked pages.
    fn unlock_and_free_pages(&self, py: Python<'_>, pfns: Vec<i64>) -> PyResult<()> {
        let pfns = pfns_arg(&self.inner, pfns)?;
        self.inner.unlock_and_free_pages(&pfns, &[]).map_err(|e| mm_err(py, e))
    }

    #[pyo3(signature = (pfn, mode = 2))]
    fn isolate_movable_page(&self, py: Python<'_>, pfn: i64, mode: i64) -> PyResult<bool> {
        guard(py, &[&self.poisoned], "isolate_movable_page", || {
            memory_open(py, &self.inner)?;
            let (pfn, mode) = (pfn_arg(&self.inner, pfn)?, mode_arg(mode)?);
            let mem = &self.inner;
            Ok(py.detach(|| mem.isolate_movable_page(pfn, mode)))
        })
    }

    fn putback_movable_page(&self, py: Python<'_>, pfn: i64) -> PyResult<()> {
        guard(py, &[&self.poisoned], "putback_movable_page", || {
            memory_open(py, &self.inner)?;
            let pfn = pfn_arg(&self.inner, pfn)?;
            let mem = &self.inner;
            py.detach(|| mem.putback_movable_page(pfn)).map_err(|e| mm_err(py, e))
        })
    }

    #[pyo3(signature = (pfns, mode = 2, target = None, passes = NR_MIGRATE_PASSES, putback = true, lock_timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn migrate_pages<'py>(
        &self,
        py: Python<'py>,
        pfns: Vec<i64>,
        mode: i64,
        target: Option<(i64, i64)>,
        passes: usize,
        putback: bool,
        lock_timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guard(py, &[&self.poisoned], "migrate_pages", || {
            memory_open(py, &self.inner)?;
            let (pfns, mode, target) = (pfns_arg(&self.inner, pfns)?, mode_arg(mode)?, target_arg(target)?);
            let timeout = timeout_arg(lock_timeout);
            let mem = &self.inner;
            let r = py.detach(|| mem.migrate_pages(&pfns, mode, target, passes, putback, timeout));
            migrate_result(py, "zsmalloc.mm.migrate", "MigrateResult", &r.map_err(|e| mm_err(py, e))?)
        })
    }

    /// Isolate, migrate, and put back what could not move, in one call.
    #[pyo3(signature = (pfns, mode = 2, target = None, passes = NR_MIGRATE_PASSES))]
    fn move_pages<'py>(
        &self,
        py: Python<'py>,
        pfns: Vec<i64>,
        mode: i64,
        target: Option<(i64, i64)>,
        passes: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        guard(py, &[&self.poisoned], "move_pages", || {
            memory_open(py, &self.inner)?;
            let (mode, target) = (mode_arg(mode)?, target_arg(target)?);
            let mem = &self.inner;
            // a pfn outside the arena is simply not movable: refused, as the model does
            let pfns: Vec<u32> = pfns.into_iter().map(|p| u32::try_from(p).unwrap_or(u32::MAX)).collect();
            let r = py.detach(|| mem.move_pages(&pfns, mode, target, passes));
            migrate_result(py, "zsmalloc.mm.migrate", "MigrateResult", &r.map_err(|e| mm_err(py, e))?)
        })
    }

    /// In-use, movable, not isolated frames in ``[start, end)``.
    #[pyo3(signature = (start = 0, end = None))]
    fn movable_pfns(&self, start: usize, end: Option<usize>) -> Vec<u32> {
        self.inner.movable_pfns(start, end)
    }

    /// Move every movable page out of ``[start, end)`` (memory offline, CMA).
    #[pyo3(signature = (start, end, mode = 2, keep_excluded = false))]
    fn evacuate<'py>(
        &self,
        py: Python<'py>,
        start: i64,
        end: i64,
        mode: i64,
        keep_excluded: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        guard(py, &[&self.poisoned], "evacuate", || {
            memory_open(py, &self.inner)?;
            if start < 0 || end <= start {
                return Err(PyValueError::new_err(format!("bad pfn range [{start}, {end})")));
            }
            let mode = mode_arg(mode)?;
            let mem = &self.inner;
            let r = py
                .detach(|| mem.evacuate(start as usize, end as usize, mode, keep_excluded))
                .map_err(|e| mm_err(py, e))?;
            let obj = migrate_result(py, "zsmalloc.mm.compaction", "EvacuateResult", &r.migrate)?;
            obj.setattr("remaining", r.remaining)?;
            Ok(obj)
        })
    }

    /// Move in-use movable frames down into free frames, then lower the high-water mark.
    #[pyo3(signature = (mode = 2))]
    fn compact<'py>(&self, py: Python<'py>, mode: i64) -> PyResult<Bound<'py, PyAny>> {
        guard(py, &[&self.poisoned], "compact", || {
            memory_open(py, &self.inner)?;
            let mode = mode_arg(mode)?;
            let mem = &self.inner;
            let r = py.detach(|| mem.compact(mode)).map_err(|e| mm_err(py, e))?;
            let obj = migrate_result(py, "zsmalloc.mm.compaction", "CompactResult", &r.migrate)?;
            obj.setattr("hwm_before", r.hwm_before)?;
            obj.setattr("hwm_after", r.hwm_after)?;
            obj.setattr("released", r.released)?;
            Ok(obj)
        })
    }

    /// Migration and compaction events (like /proc/vmstat).
    #[getter]
    fn vmstat<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, v) in VMSTAT_EVENTS.iter().zip(self.inner.vmstat.values()) {
            d.set_item(name, v)?;
        }
        Ok(d)
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
    #[getter]
    fn pcp_high(&self) -> usize {
        self.inner.pcp_high()
    }
    #[getter]
    fn pcp_batch(&self) -> usize {
        self.inner.pcp_batch()
    }
    #[getter]
    fn sleep_on_page_lock(&self) -> bool {
        self.inner.sleeps_on_page_lock()
    }
    #[getter]
    fn hwm(&self) -> usize {
        self.inner.hwm()
    }
    #[getter]
    fn nr_used(&self) -> usize {
        self.inner.stats().nr_used
    }
    #[getter]
    fn nr_pcp(&self) -> usize {
        self.inner.stats().nr_pcp
    }
    #[getter]
    fn nr_alloc(&self) -> u64 {
        self.inner.stats().events[0]
    }
    #[getter]
    fn nr_free(&self) -> u64 {
        self.inner.stats().events[1]
    }
    #[getter]
    fn nr_alloc_fail(&self) -> u64 {
        self.inner.stats().events[2]
    }
    #[getter]
    fn nr_drained(&self) -> u64 {
        self.inner.stats().events[3]
    }
    #[getter]
    fn nr_used_max(&self) -> u64 {
        self.inner.stats().events[4]
    }

    fn alloc_page(&self, py: Python<'_>) -> PyResult<u32> {
        self.inner.alloc_page().map_err(|e| mm_err(py, e))
    }

    fn alloc_pages(&self, py: Python<'_>, n: usize) -> PyResult<Vec<u32>> {
        self.alloc_n(py, n, MigrateType::Movable)
    }

    #[pyo3(signature = (lo = 0, hi = None))]
    fn alloc_page_in(&self, py: Python<'_>, lo: usize, hi: Option<usize>) -> PyResult<u32> {
        self.inner.alloc_page_in(lo, hi).map_err(|e| mm_err(py, e))
    }

    fn free_page(&self, py: Python<'_>, pfn: i64) -> PyResult<()> {
        self.put_page(py, pfn)
    }

    fn get_page(&self, py: Python<'_>, pfn: i64) -> PyResult<()> {
        self.inner.get_page(pfn_arg(&self.inner, pfn)?).map_err(|e| mm_err(py, e))
    }

    fn put_page(&self, py: Python<'_>, pfn: i64) -> PyResult<()> {
        self.inner.put_page(pfn_arg(&self.inner, pfn)?).map_err(|e| mm_err(py, e))
    }

    fn exclude_range(&self, py: Python<'_>, start: i64, end: i64) -> PyResult<()> {
        if start < 0 || end <= start {
            return Err(PyValueError::new_err(format!("bad pfn range [{start}, {end})")));
        }
        self.inner.exclude_range(start as usize, end as usize).map_err(|e| mm_err(py, e))
    }

    fn unexclude_range(&self, py: Python<'_>, start: usize, end: usize) -> PyResult<()> {
        self.inner.unexclude_range(start, end).map_err(|e| mm_err(py, e))
    }

    #[pyo3(signature = (next_n = 0, probability = 0.0, seed = Some(0)))]
    fn inject_failures(
        &self,
        py: Python<'_>,
        next_n: i64,
        probability: f64,
        seed: Option<u64>,
    ) -> PyResult<()> {
        if next_n < 0 {
            return Err(PyValueError::new_err("next_n must be >= 0 and probability within [0, 1]"));
        }
        self.inner.inject_failures(next_n as u64, probability, seed.unwrap_or(0)).map_err(|e| mm_err(py, e))
    }

    fn clear_failures(&self, py: Python<'_>) -> PyResult<()> {
        self.inject_failures(py, 0, 0.0, Some(0))
    }

    fn trylock_page(&self, pfn: i64) -> PyResult<bool> {
        Ok(self.inner.trylock_page(pfn_arg(&self.inner, pfn)?))
    }

    /// Sleep (the GIL released) until the page lock is ours; False if `timeout` ran out.
    #[pyo3(signature = (pfn, timeout = None))]
    fn lock_page(&self, py: Python<'_>, pfn: i64, timeout: Option<f64>) -> PyResult<bool> {
        let pfn = pfn_arg(&self.inner, pfn)?;
        let mem = &self.inner;
        if mem.trylock_page(pfn) {
            return Ok(true);
        }
        let timeout = timeout_arg(timeout);
        py.detach(|| mem.lock_page(pfn, timeout)).map_err(|e| mm_err(py, e))
    }

    #[pyo3(signature = (pfn, timeout = None))]
    fn wait_on_page_locked(&self, py: Python<'_>, pfn: i64, timeout: Option<f64>) -> PyResult<bool> {
        let pfn = pfn_arg(&self.inner, pfn)?;
        let mem = &self.inner;
        let timeout = timeout_arg(timeout);
        py.detach(|| mem.wait_on_page_locked(pfn, timeout)).map_err(|e| mm_err(py, e))
    }

    fn unlock_page(&self, py: Python<'_>, pfn: i64) -> PyResult<()> {
        self.inner.unlock_page(pfn_arg(&self.inner, pfn)?).map_err(|e| mm_err(py, e))
    }

    fn trylock_pages(&self, pfns: Vec<i64>) -> PyResult<bool> {
        let pfns: Vec<u32> = pfns.into_iter().map(|p| pfn_arg(&self.inner, p)).collect::<PyResult<_>>()?;
        Ok(self.inner.trylock_pages(&pfns))
    }

    fn page_locked(&self, pfn: i64) -> PyResult<bool> {
        Ok(self.inner.page_flags(pfn_arg(&self.inner, pfn)?) & PG_LOCKED != 0)
    }
    fn page_movable(&self, pfn: i64) -> PyResult<bool> {
        Ok(self.inner.page_flags(pfn_arg(&self.inner, pfn)?) & PG_MOVABLE != 0)
    }
    fn page_isolated(&self, pfn: i64) -> PyResult<bool> {
        Ok(self.inner.page_flags(pfn_arg(&self.inner, pfn)?) & PG_ISOLATED != 0)
    }

    fn set_flag(&self, py: Python<'_>, pfn: i64, bit: u8) -> PyResult<()> {
        self.inner.set_flags(pfn_arg(&self.inner, pfn)?, bit, true).map_err(|e| mm_err(py, e))
    }

    fn clear_flag(&self, py: Python<'_>, pfn: i64, bit: u8) -> PyResult<()> {
        self.inner.set_flags(pfn_arg(&self.inner, pfn)?, bit, false).map_err(|e| mm_err(py, e))
    }

    fn page_in_use(&self, pfn: i64) -> bool {
        pfn >= 0 && pfn < self.inner.capacity() as i64 && self.inner.page_in_use(pfn as u32)
    }

    fn used_pfns(&self) -> Vec<u32> {
        self.inner.used_pfns()
    }

    fn drain_pages(&self, py: Python<'_>) -> PyResult<usize> {
        memory_open(py, &self.inner)?;
        let mem = &self.inner;
        Ok(py.detach(|| mem.drain_pages()))
    }

    fn shrink_arena(&self, py: Python<'_>) -> PyResult<usize> {
        memory_open(py, &self.inner)?;
        let mem = &self.inner;
        Ok(py.detach(|| mem.shrink_arena()))
    }

    /// A read-write view of one frame's 4096 bytes (for tools and tests).
    fn frame<'py>(&self, py: Python<'py>, pfn: i64) -> PyResult<Bound<'py, PyAny>> {
        if pfn < 0 || pfn >= self.inner.capacity() as i64 || !self.inner.page_in_use(pfn as u32) {
            return Err(zs_error(py, 5, format!("frame {pfn} is not in use")));
        }
        let frame = Py::new(py, Frame { mem: self.inner.clone(), pfn: pfn as u32 })?;
        Ok(pyo3::types::PyMemoryView::from(frame.bind(py).as_any())?.into_any())
    }

    fn clear_page_movable(&self, pfn: i64) -> PyResult<()> {
        self.inner
            .set_flags(pfn_arg(&self.inner, pfn)?, PG_MOVABLE, false)
            .map_err(|e| Python::attach(|py| mm_err(py, e)))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("capacity", s.capacity)?;
        d.set_item("hwm", s.hwm)?;
        d.set_item("nr_used", s.nr_used)?;
        d.set_item("nr_used_max", s.events[4])?;
        d.set_item("nr_alloc", s.events[0])?;
        d.set_item("nr_free", s.events[1])?;
        d.set_item("nr_alloc_fail", s.events[2])?;
        d.set_item("nr_pcp", s.nr_pcp)?;
        d.set_item("nr_drained", s.events[3])?;
        for (name, v) in VMSTAT_EVENTS.iter().zip(self.inner.vmstat.values()) {
            d.set_item(name, v)?;
        }
        Ok(d)
    }

    /// The allocator's events, as the model's ``Memory.events`` counters.
    #[getter]
    fn events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        for (name, v) in ALLOC_EVENTS.iter().zip(s.events) {
            d.set_item(name, v)?;
        }
        Ok(d)
    }

    fn close(&self) {
        self.inner.close();
    }

    fn __repr__(&self) -> String {
        let s = self.inner.stats();
        format!("<Memory {}/{} frames in use, hwm {}>", s.nr_used, s.capacity, s.hwm)
    }
}

// ----------------------------------------------------------------------
// Pool

/// The engine's zsmalloc pool (the Python class ``zsmalloc.engine.Pool`` adds the rest).
#[pyclass(module = "zsmalloc._engine", name = "Pool", frozen, subclass)]
pub struct PyPool {
    inner: Arc<Pool>,
    poisoned: AtomicBool,
    memory: Py<PyMemory>,
    migration: String,
}

/// `compact(policy)`: compaction follows the pool's grouping, which
/// `policy`, if given, must name (zsmalloc/pool/compact.py, same messages).
fn check_policy(fullness: Fullness, policy: Option<&str>) -> PyResult<()> {
    let Some(policy) = policy.filter(|&p| p != fullness.name()) else {
        return Ok(());
    };
    Err(PyValueError::new_err(match Fullness::from_name(policy) {
        None => format!("compaction policy must be one of ('ratio', 'legacy'), not '{policy}'"),
        Some(_) => format!(
            "compaction follows the pool's fullness grouping, '{}': \
             compacting as '{policy}' needs a pool made with fullness='{policy}'",
            fullness.name()
        ),
    }))
}

#[pymethods]
impl PyPool {
    #[new]
    #[pyo3(signature = (name = "zsmalloc".to_string(), chain_size = 8, memory = None, max_pages = None, *,
                        class_rule = "min-waste".to_string(), fullness = "ratio".to_string(),
                        migration = "mainline".to_string(),
                        auto_compact_pages = None, background_work = true, handle_tag = 0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: String,
        chain_size: i64,
        memory: Option<Py<PyMemory>>,
        max_pages: Option<&Bound<'_, PyAny>>,
        class_rule: String,
        fullness: String,
        migration: String,
        auto_compact_pages: Option<i64>,
        background_work: bool,
        handle_tag: i64,
    ) -> PyResult<Self> {
        let Some(rule) = ClassRule::from_name(&class_rule) else {
            return Err(PyValueError::new_err(format!(
                "rule must be one of ('min-waste', 'used-percentage'), not '{class_rule}'"
            )));
        };
        let Some(grouping) = Fullness::from_name(&fullness) else {
            return Err(PyValueError::new_err(format!(
                "fullness must be one of ('ratio', 'legacy'), not '{fullness}'"
            )));
        };
        if !(4..=16).contains(&chain_size) {
            return Err(PyValueError::new_err(format!("chain_size must be within 4..16, not {chain_size}")));
        }
        let max_pages = page_cap_arg(max_pages)?;
        let Some(protocol) = Protocol::from_name(&migration) else {
            return Err(PyValueError::new_err(format!(
                "migration protocol must be one of ('mainline', '2016', '2016-v3'), not '{migration}'"
            )));
        };
        let config = PoolConfig {
            name,
            chain_size: chain_size as usize,
            class_rule: rule,
            fullness: grouping,
            max_pages,
            auto_compact_pages: auto_compact_pages.map(|a| a.max(0) as usize),
            migration: protocol,
            background_work,
            movable: true,
            migratable: true,
            handle_tag: u16::try_from(handle_tag).ok().filter(|&t| t < NR_HANDLE_TAGS).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "handle_tag must be within 0..{}, not {handle_tag}",
                    NR_HANDLE_TAGS - 1
                ))
            })?,
        };
        let own = memory.is_none();
        let memory = match memory {
            Some(m) => m,
            None => Py::new(py, PyMemory::new(None, PCP_HIGH as i64, PCP_BATCH as i64, true)?)?,
        };
        let inner = Pool::new(config, memory.get().inner.clone(), own).map_err(|e| pool_err(py, e))?;
        Ok(PyPool { inner, poisoned: AtomicBool::new(false), memory, migration })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.inner.config.name
    }
    /// The tag in every handle of this pool (zsmalloc/pool/handles.py).
    #[getter]
    fn handle_tag(&self) -> u16 {
        self.inner.config.handle_tag
    }
    #[getter]
    fn chain_size(&self) -> usize {
        self.inner.config.chain_size
    }
    #[getter]
    fn class_rule(&self) -> &'static str {
        self.inner.config.class_rule.name()
    }
    /// How zspages are grouped: "ratio" (6.4 and later) or "legacy" (4.8 to 6.3).
    #[getter]
    fn fullness(&self) -> &'static str {
        self.inner.config.fullness.name()
    }
    /// The pool's page cap, or None; writable (zram's mem_limit changes it).
    #[getter]
    fn max_pages(&self) -> Option<usize> {
        self.inner.max_pages()
    }
    #[setter]
    fn set_max_pages(&self, max_pages: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.inner.set_max_pages(page_cap_arg(max_pages)?);
        Ok(())
    }
    #[getter]
    fn migration(&self) -> &str {
        &self.migration
    }
    #[getter]
    fn auto_compact_pages(&self) -> Option<usize> {
        self.inner.config.auto_compact_pages
    }
    #[getter]
    fn memory(&self, py: Python<'_>) -> Py<PyMemory> {
        self.memory.clone_ref(py)
    }
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }
    /// ``zs_get_total_pages``: pages the pool holds, fragmentation included.
    #[getter]
    fn total_pages(&self) -> usize {
        self.inner.total_pages()
    }
    #[getter]
    fn pages_allocated(&self) -> usize {
        self.inner.total_pages()
    }
    #[getter]
    fn huge_class_size(&self) -> usize {
        self.inner.huge_class_size()
    }
    #[getter]
    fn pages_compacted(&self) -> u64 {
        self.inner.events().pages_compacted
    }
    #[getter]
    fn objs_compacted(&self) -> u64 {
        self.inner.events().objs_compacted
    }
    #[getter]
    fn nr_compactions(&self) -> u64 {
        self.inner.events().compactions
    }
    #[getter]
    fn nr_deferred_frees(&self) -> u64 {
        self.inner.events().deferred_frees
    }

    /// ``zs_lookup_class_index``: the canonical class index serving ``size`` bytes.
    fn class_index(&self, py: Python<'_>, size: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.inner.zs_lookup_class_index(size_arg(size)?).map_err(|e| pool_err(py, e))
    }

    /// ``zs_malloc``: allocate ``size`` bytes (1..4096); return a handle, never 0.
    fn malloc(&self, py: Python<'_>, size: &Bound<'_, PyAny>) -> PyResult<u64> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "malloc", || {
            self.inner.zs_malloc(size_arg(size)?).map_err(|e| pool_err(py, e))
        })
    }

    /// ``zs_free``: free the object; the handle becomes invalid.
    fn free(&self, py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "free", || {
            let h = handle_arg(&self.inner, handle)?;
            self.inner.zs_free(h).map_err(|e| pool_err(py, e))
        })
    }

    /// Copy ``data`` into the object at ``offset``; it must fit in the size allocated.
    #[pyo3(signature = (handle, data, offset = None))]
    fn write(
        &self,
        py: Python<'_>,
        handle: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        offset: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "write", || {
            let h = handle_arg(&self.inner, handle)?;
            let offset = offset.map(int_arg).transpose()?.unwrap_or(0);
            let result = if let Ok(b) = data.cast::<PyBytes>() {
                self.inner.zs_obj_write(h, b.as_bytes(), offset)
            } else {
                let buf = BorrowedBuffer::get(data, false)?;
                self.inner.zs_obj_write(h, buf.as_slice(), offset)
            };
            result.map_err(|e| pool_err(py, e))
        })
    }

    /// Return ``length`` bytes of the object from ``offset`` (default: to its end).
    #[pyo3(signature = (handle, length = None, offset = None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        handle: &Bound<'py, PyAny>,
        length: Option<&Bound<'py, PyAny>>,
        offset: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "read", || {
            let h = handle_arg(&self.inner, handle)?;
            let length = length.map(int_arg).transpose()?;
            let offset = offset.map(int_arg).transpose()?.unwrap_or(0);
            let obj = self.inner.zs_obj_read_begin(h, offset, length, "read").map_err(|e| pool_err(py, e))?;
            new_bytes(py, obj.len(), |out| obj.copy_to(out))
        })
    }

    /// Fill the writable buffer ``buf`` from the object at ``offset``; return its length.
    #[pyo3(signature = (handle, buf, offset = None))]
    fn read_into(
        &self,
        py: Python<'_>,
        handle: &Bound<'_, PyAny>,
        buf: &Bound<'_, PyAny>,
        offset: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "read_into", || {
            let h = handle_arg(&self.inner, handle)?;
            let offset = offset.map(int_arg).transpose()?.unwrap_or(0);
            let mut out = BorrowedBuffer::get(buf, true)?;
            let n = out.as_slice().len();
            let obj = self
                .inner
                .zs_obj_read_begin(h, offset, Some(n as i64), "read")
                .map_err(|e| pool_err(py, e))?;
            obj.copy_to(out.as_mut_slice());
            Ok(n)
        })
    }

    /// Map the object for reading: ``with pool.map(h) as view`` gives a
    /// read-only memoryview.  The object stays pinned (compaction and
    /// migration leave its zspage alone) until the ``with`` ends and the
    /// last buffer exported from the view is released.
    #[pyo3(signature = (handle, length = None, offset = None))]
    fn map(
        slf: &Bound<'_, Self>,
        handle: &Bound<'_, PyAny>,
        length: Option<&Bound<'_, PyAny>>,
        offset: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Mapping> {
        let py = slf.py();
        let this = slf.get();
        guard(py, &[&this.poisoned, &this.memory.get().poisoned], "map", || {
            let h = handle_arg(&this.inner, handle)?;
            let length = length.map(int_arg).transpose()?;
            let offset = offset.map(int_arg).transpose()?.unwrap_or(0);
            let mapped = this.inner.zs_map_object(h, offset, length).map_err(|e| pool_err(py, e))?;
            let copy = match mapped.span.contiguous() {
                Some(_) => None,
                None => {
                    let mut v = vec![0u8; mapped.span.len()];
                    this.inner.copy_mapped(&mapped, &mut v);
                    Some(v)
                }
            };
            Ok(Mapping {
                pool: this.inner.clone(),
                mapped,
                copy,
                exports: AtomicUsize::new(0),
                exited: AtomicBool::new(false),
                unmapped: AtomicBool::new(false),
                view: std::sync::Mutex::new(None),
            })
        })
    }

    /// The size ``malloc`` was asked for.
    fn handle_size(&self, py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<usize> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "handle_size", || {
            let h = handle_arg(&self.inner, handle)?;
            self.inner.handle_size(h).map_err(|e| pool_err(py, e))
        })
    }

    /// (pfn of the page the object starts in, its index in the zspage).
    fn locate(&self, py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<(u32, usize)> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "locate", || {
            let h = handle_arg(&self.inner, handle)?;
            self.inner.locate(h).map_err(|e| pool_err(py, e))
        })
    }

    /// The pfns of the object's zspage, head page first.
    fn zspage_pfns(&self, py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "zspage_pfns", || {
            let h = handle_arg(&self.inner, handle)?;
            self.inner.zspage_pfns(h).map_err(|e| pool_err(py, e))
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// ``zs_compact``: move objects so that zspages empty; pages freed by this
    /// call.  Then the tables give back their free tops.  The GIL is released.
    /// Compaction follows the pool's grouping; ``policy``, if given, must name it.
    #[pyo3(signature = (policy = None))]
    fn compact(&self, py: Python<'_>, policy: Option<&str>) -> PyResult<u64> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "compact", || {
            check_policy(self.inner.config.fullness, policy)?;
            let pool = &self.inner;
            if pool.is_closed() {
                return Err(pool_err(
                    py,
                    PoolError::PoolClosed(format!("pool '{}' is closed", pool.config.name)),
                ));
            }
            let freed = py.detach(|| {
                let freed = pool.zs_compact();
                pool.trim();
                freed
            });
            freed.map_err(|e| pool_err(py, e))
        })
    }

    /// Pages compaction could free now (the shrinker's ``count_objects``).
    fn shrinker_count(&self) -> u64 {
        self.inner.shrinker_count()
    }

    /// Compact for the shrinker: pages freed, or -1 (SHRINK_STOP) if none.
    fn shrinker_scan(&self, py: Python<'_>) -> PyResult<i64> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "shrinker_scan", || {
            let pool = &self.inner;
            if pool.is_closed() {
                return Err(pool_err(
                    py,
                    PoolError::PoolClosed(format!("pool '{}' is closed", pool.config.name)),
                ));
            }
            let freed = py.detach(|| pool.zs_compact()).map_err(|e| pool_err(py, e))?;
            Ok(if freed > 0 { freed as i64 } else { -1 })
        })
    }

    #[getter]
    fn background_work(&self) -> bool {
        self.inner.config.background_work
    }

    /// Whether the background worker (deferred free, auto compaction) is running now.
    #[getter]
    fn worker_running(&self) -> bool {
        self.inner.worker_running()
    }

    /// Work asked for and not yet run, with ``background_work=False``: one entry per request.
    #[getter]
    fn pending_work(&self) -> Vec<&'static str> {
        self.inner.pending_work()
    }

    /// Run the work ``pending_work`` lists, in the caller (the GIL released); return what was run.
    fn run_pending_work(&self, py: Python<'_>) -> PyResult<Vec<&'static str>> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "run_pending_work", || {
            let pool = &self.inner;
            py.detach(|| pool.run_pending_work()).map_err(|e| pool_err(py, e))
        })
    }

    /// Run the deferred free now (the GIL released); the zspages it freed.
    fn flush_deferred(&self, py: Python<'_>) -> PyResult<usize> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "flush_deferred", || {
            let pool = &self.inner;
            py.detach(|| pool.flush_deferred()).map_err(|e| pool_err(py, e))
        })
    }

    /// The free of empty zspages left on group-0 lists, without the trim.
    fn async_free_zspage(&self, py: Python<'_>) -> PyResult<usize> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "async_free_zspage", || {
            let pool = &self.inner;
            py.detach(|| pool.async_free_zspage()).map_err(|e| pool_err(py, e))
        })
    }

    /// Give back the table space of free handle slots and zspage ids at the top.
    fn trim(&self, py: Python<'_>) -> bool {
        let pool = &self.inner;
        py.detach(|| pool.trim())
    }

    /// Free every page of the pool.  Handles become invalid.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "close", || {
            let pool = &self.inner;
            py.detach(|| pool.close()).map_err(|e| pool_err(py, e))
        })
    }

    fn _bytes_requested(&self) -> u64 {
        self.inner.bytes_requested()
    }

    /// One tuple per canonical class, smallest first: (index, size,
    /// zspages per fullness group 0..11, obj_allocated, obj_used,
    /// pages_per_zspage, objs_per_zspage, freeable).
    fn _class_rows<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let rows = PyList::empty(py);
        for r in self.inner.class_stats() {
            rows.append((
                r.spec.index,
                r.spec.size,
                r.zspages_per_group.to_vec(),
                r.objs_allocated,
                r.objs_inuse,
                r.spec.pages_per_zspage,
                r.spec.objs_per_zspage,
                r.freeable,
            ))?;
        }
        Ok(rows)
    }

    /// The kernel's debugfs ``classes`` text (``zsmalloc_core::pool::stats``).
    fn _format_classes(&self) -> String {
        zsmalloc_core::pool::stats::format_classes(&self.inner.class_stats())
    }

    /// The plain-data snapshot of ``zsmalloc.debug.snapshot``.
    #[pyo3(signature = (data = false))]
    fn _snapshot<'py>(&self, py: Python<'py>, data: bool) -> PyResult<Bound<'py, PyDict>> {
        guard(py, &[&self.poisoned, &self.memory.get().poisoned], "_snapshot", || {
            let pool = &self.inner;
            let snap = py.detach(|| pool.snapshot());
            let d = PyDict::new(py);
            let cfg = &pool.config;
            d.set_item("name", &cfg.name)?;
            d.set_item("chain_size", cfg.chain_size)?;
            d.set_item("class_rule", cfg.class_rule.name())?;
            d.set_item("fullness", cfg.fullness.name())?;
            d.set_item("migration", &self.migration)?;
            d.set_item("huge_class_size", pool.huge_class_size())?;
            d.set_item("pages_allocated", snap.pages_allocated)?;
            let ev = PyDict::new(py);
            ev.set_item("pages_compacted", snap.events.pages_compacted)?;
            ev.set_item("objs_compacted", snap.events.objs_compacted)?;
            ev.set_item("compactions", snap.events.compactions)?;
            ev.set_item("deferred_frees", snap.events.deferred_frees)?;
            d.set_item("events", ev)?;
            d.set_item("ops_id", pool.ops_id())?;
            let classes = PyList::empty(py);
            for (spec, (allocated, inuse, lists)) in pool.specs().zip(&snap.classes) {
                let c = PyDict::new(py);
                c.set_item("index", spec.index)?;
                c.set_item("size", spec.size)?;
                c.set_item("pages_per_zspage", spec.pages_per_zspage)?;
                c.set_item("objs_per_zspage", spec.objs_per_zspage)?;
                c.set_item("huge", spec.huge)?;
                c.set_item("objs_allocated", allocated)?;
                c.set_item("objs_inuse", inuse)?;
                c.set_item("fullness", lists.clone())?;
                classes.append(c)?;
            }
            d.set_item("classes", classes)?;
            let mut class_of_size: Vec<i64> = vec![-1];
            for s in 1..=PAGE_SIZE {
                class_of_size.push(if pool.is_closed() {
                    -1
                } else {
                    pool.class_index_for_size(s).map_or(-1, |i| i as i64)
                });
            }
            d.set_item("class_of_size", class_of_size)?;
            let zspages = PyDict::new(py);
            for z in &snap.zspages {
                let e = PyDict::new(py);
                e.set_item("class", z.class)?;
                e.set_item("inuse", z.inuse)?;
                e.set_item("freeobj", z.freeobj)?;
                e.set_item("fg", z.fg)?;
                e.set_item("lock", z.lock)?;
                e.set_item("isolated", z.isolated)?;
                e.set_item("pages", z.pages.clone())?;
                e.set_item("headers", z.headers.clone())?;
                zspages.set_item(z.zid, e)?;
            }
            d.set_item("zspages", zspages)?;
            d.set_item("free_zspage_ids", snap.free_zspage_ids.clone())?;
            d.set_item("nr_zspage_ids", snap.nr_zspage_ids)?;
            let handles = PyDict::new(py);
            for &(slot, handle, pfn, idx, size) in &snap.handles {
                let e = PyDict::new(py);
                e.set_item("handle", handle)?;
                e.set_item("pfn", pfn)?;
                e.set_item("idx", idx)?;
                e.set_item("size", size)?;
                handles.set_item(slot, e)?;
            }
            d.set_item("handles", handles)?;
            d.set_item("free_handle_slots", snap.free_handle_slots.clone())?;
            d.set_item("nr_handle_slots", snap.nr_handle_slots)?;
            let pinned = PyDict::new(py);
            for &(slot, n) in &snap.pinned {
                pinned.set_item(slot, n)?;
            }
            d.set_item("pinned", pinned)?;
            let deferred: Vec<u32> = snap.zspages.iter().filter(|z| z.deferred).map(|z| z.zid).collect();
            d.set_item("deferred", deferred)?;
            let pages = PyDict::new(py);
            for p in &snap.pages {
                let e = PyDict::new(py);
                e.set_item("flags", p.flags)?;
                e.set_item("refcount", p.refcount)?;
                e.set_item("movable_ops", p.movable_ops)?;
                e.set_item("private", p.private)?;
                e.set_item("index", p.index)?;
                e.set_item("next", p.next)?;
                e.set_item("first_obj_offset", p.first_obj_offset)?;
                pages.set_item(p.pfn, e)?;
            }
            d.set_item("pages", pages)?;
            let mem = PyDict::new(py);
            mem.set_item("hwm", snap.hwm)?;
            mem.set_item("nr_used", snap.nr_used)?;
            mem.set_item("capacity", pool.memory().capacity())?;
            mem.set_item("own", pool.owns_memory())?;
            d.set_item("memory", mem)?;
            d.set_item("closed", pool.is_closed())?;
            if data {
                let objs = PyDict::new(py);
                for &(_, handle, _, _, _) in &snap.handles {
                    if let Ok(obj) = pool.zs_obj_read_begin(handle, 0, None, "read") {
                        objs.set_item(handle, new_bytes(py, obj.len(), |out| obj.copy_to(out))?)?;
                    }
                }
                d.set_item("data", objs)?;
            }
            Ok(d)
        })
    }
}

/// One frame as a writable buffer (``Memory.frame``): what a tool sees of a
/// page.  It keeps the arena mapped; it does not keep the frame in use, as
/// with the model's view, so a tool must not hold it across a free.
#[pyclass(module = "zsmalloc._engine", name = "Frame", frozen)]
pub struct Frame {
    mem: Arc<Memory>,
    pfn: u32,
}

#[pymethods]
impl Frame {
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let this = slf.get();
        let ptr = this.mem.raw((this.pfn as usize) << PAGE_SHIFT, PAGE_SIZE);
        // SAFETY: `view` is the caller's to fill; the frame's 4096 bytes lie
        // inside the arena, which stays mapped while `slf` (referenced by the
        // view) holds the Memory; writable (readonly = 0): raw arena bytes.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                ptr as *mut c_void,
                PAGE_SIZE as ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}

// ----------------------------------------------------------------------
// Mapping: a pinned object as a read-only buffer

/// One ``map()``: a context manager whose ``__enter__`` gives a read-only
/// memoryview of the object.  The pin (zspage read lock, handle pin) lasts
/// until ``__exit__`` *and* the release of the last buffer exported, so no
/// view derived from the mapping ever sees its object move.
#[pyclass(module = "zsmalloc._engine", name = "Mapping", frozen)]
pub struct Mapping {
    pool: Arc<Pool>,
    mapped: Mapped,
    /// the object's bytes, for one that spans two pages (the kernel copies too)
    copy: Option<Vec<u8>>,
    exports: AtomicUsize,
    exited: AtomicBool,
    unmapped: AtomicBool,
    view: std::sync::Mutex<Option<Py<PyAny>>>,
}

impl Mapping {
    fn unmap_once(&self) {
        if !self.unmapped.swap(true, Ordering::AcqRel) {
            self.pool.zs_unmap_object(self.mapped);
        }
    }

    fn data_ptr(&self) -> *const u8 {
        match (&self.copy, self.mapped.span.contiguous()) {
            (Some(v), _) => v.as_ptr(),
            (None, Some(addr)) => self.pool.memory().raw(addr, self.mapped.span.len()),
            (None, None) => unreachable!("a spanning object is always copied"),
        }
    }
}

#[pymethods]
impl Mapping {
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let this = slf.get();
        if this.unmapped.load(Ordering::Acquire)
            || (this.exited.load(Ordering::Acquire) && this.exports.load(Ordering::Acquire) == 0)
        {
            return Err(PyValueError::new_err("the mapping has ended"));
        }
        let len = this.mapped.span.len();
        let ptr = this.data_ptr();
        // SAFETY: `view` is the caller's Py_buffer to fill; the bytes at ptr
        // stay valid and unmoved while any export lives: the pin is held
        // until the last __releasebuffer__, the arena (or `copy`) lives as
        // long as `slf`, which the view references; readonly = 1.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr as *mut c_void, len as ffi::Py_ssize_t, 1, flags)
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        this.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        if self.exports.fetch_sub(1, Ordering::AcqRel) == 1 && self.exited.load(Ordering::Acquire) {
            self.unmap_once();
        }
    }

    fn __enter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let view = pyo3::types::PyMemoryView::from(slf.as_any())?.into_any();
        *slf.get().view.lock().map_err(|_| PyTypeError::new_err("mapping lock poisoned"))? =
            Some(view.clone().unbind());
        Ok(view)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        let view = self.view.lock().map_err(|_| PyTypeError::new_err("mapping lock poisoned"))?.take();
        if let Some(v) = view {
            // a view with buffers of its own exported raises BufferError: they keep the pin
            let _ = v.bind(py).call_method0(pyo3::intern!(py, "release"));
        }
        self.exited.store(true, Ordering::Release);
        if self.exports.load(Ordering::Acquire) == 0 {
            self.unmap_once();
        }
        Ok(false)
    }

    /// Whether the object is still pinned by this mapping.
    #[getter]
    fn pinned(&self) -> bool {
        !self.unmapped.load(Ordering::Acquire)
    }

    fn __repr__(&self) -> String {
        format!(
            "<Mapping of {} bytes{}>",
            self.mapped.span.len(),
            if self.pinned() { ", pinned" } else { "" }
        )
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.unmap_once();
    }
}

#[pymodule(gil_used = true)]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyMemory>()?;
    m.add_class::<PyPool>()?;
    m.add_class::<Mapping>()?;
    m.add_class::<Frame>()?;
    m.add_class::<zram::PyZram>()?;
    m.add_function(wrap_pyfunction!(zram::compress, m)?)?;
    m.add_function(wrap_pyfunction!(zram::codec_versions, m)?)?;
    m.add_function(wrap_pyfunction!(fragsim::fragsim_run, m)?)?;
    m.add_class::<store::PyStoreIndex>()?;
    m.add_class::<zone::PyZone>()?;
    m.add("PAGE_SIZE", PAGE_SIZE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
