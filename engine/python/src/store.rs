//! `zsmalloc._engine.StoreIndex`: the engine's `zsmalloc.Store`, its key
//! index and its hot path.  `zsmalloc.store` subclasses it (with the
//! `MutableMapping` mixins) for a Store on an engine pool, so that a set or a
//! get is one call from Python into here, with no Python object per value
//! besides its key.
//!
//! The index is an insertion-ordered hash table keyed by Python objects (as
//! CPython's dict is laid out): `slots`, in insertion order, each the key,
//! its `__hash__` and the value's entry (`zsmalloc_core::store::Stored`, 48
//! bytes: kind, lengths, the chunks' handles, two inline), and `index`, open
//! addressing over `u32` positions in `slots`, probed as CPython probes (so
//! that keys whose hashes share their low bits spread).  Equality is the
//! key's `__eq__`, called under the GIL.  64 bytes a value, and 6-16 of index.
//!
//! Locking: one mutex guards the table.  It is never waited for with the GIL
//! held (a `try_lock`, else a wait with the GIL released), so its holder may
//! release the GIL (a large value's copy, a key's `__eq__` written in Python)
//! without a deadlock; a key whose `__eq__` or `__hash__` uses the store
//! itself gets a RuntimeError, not a hang.  A set compresses and writes the
//! new objects before it takes the lock, and swaps the entry and frees the
//! old objects under it; a get reads its objects under the lock, so no set
//! or del frees them meanwhile.  No call allocates on the heap but for what
//! it keeps or returns (a value's bytes, an entry of more than two objects,
//! the table's growth) and the batch calls' lists.  A single value keeps the GIL unless it is
//! large (`DETACH_BYTES`); the batch calls release it for the whole batch.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::{Mutex, MutexGuard};
use pyo3::exceptions::{PyKeyError, PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyList, PyTuple};
use pyo3::PyTraverseError;

use zsmalloc_core::pool::{Pool, PoolError};
use zsmalloc_core::store::{self, Handles, Kind, Stored};

use super::{guard, new_bytes, pool_err, zs_error, BorrowedBuffer, PyPool};

/// From this size on, one value's work pays for a release of the GIL.
const DETACH_BYTES: u64 = 64 << 10;
/// `index` cells: no position yet, and a position given up by a delete.
const EMPTY: u32 = u32::MAX;
const DUMMY: u32 = u32::MAX - 1;
/// An index half full after a rebuild is rebuilt again at two thirds.
const MIN_INDEX: usize = 8;

fn compression_arg(name: &str) -> PyResult<Kind> {
    match name {
        "lz4" => Ok(Kind::Lz4),
        "zstd" => Ok(Kind::Zstd),
        "none" => Ok(Kind::Raw),
        _ => Err(PyValueError::new_err(format!(
            "compression must be one of ('lz4', 'zstd', 'none'), not {name:?}"
        ))),
    }
}

/// The place of a value in the table.
struct Slot {
    /// None once deleted (until the next rebuild drops the slot)
    key: Option<Py<PyAny>>,
    hash: isize,
    entry: Stored,
}

const GONE: Stored = Stored { nbytes: 0, stored: 0, handles: Handles::NONE, kind: Kind::Same, fill: 0 };

enum Probe {
    /// (index cell, slot)
    Found(usize, usize),
    /// the cell a new key takes (none while the index is empty)
    Vacant(Option<usize>),
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    index: Vec<u32>,
    live: usize,
    /// index cells that are not EMPTY
    filled: usize,
    nbytes: u64,
    stored: u64,
}

/// CPython's probe sequence over an index of `mask + 1` cells.
struct Cells {
    i: usize,
    perturb: usize,
    mask: usize,
}

impl Cells {
    fn new(hash: isize, mask: usize) -> Cells {
        Cells { i: hash as usize & mask, perturb: hash as usize, mask }
    }

    fn next(&mut self) {
        self.perturb >>= 5;
        self.i = self.i.wrapping_mul(5).wrapping_add(self.perturb).wrapping_add(1) & self.mask;
    }
}

impl Table {
    /// Where `key` (of hash `hash`) is or would go.  Calls the keys' `__eq__`.
    fn probe(&self, key: &Bound<'_, PyAny>, hash: isize) -> PyResult<Probe> {
        if self.index.is_empty() {
            return Ok(Probe::Vacant(None));
        }
        let mut cells = Cells::new(hash, self.index.len() - 1);
        let mut dummy = None;
        loop {
            // the index always has an EMPTY cell (it is at most two thirds full): the loop ends
            match self.index[cells.i] {
                EMPTY => return Ok(Probe::Vacant(Some(dummy.unwrap_or(cells.i)))),
                DUMMY => {
                    dummy.get_or_insert(cells.i);
                }
                at => {
                    let slot = &self.slots[at as usize];
                    if slot.hash == hash {
                        if let Some(k) = &slot.key {
                            if k.as_ptr() == key.as_ptr() || k.bind(key.py()).eq(key)? {
                                return Ok(Probe::Found(cells.i, at as usize));
                            }
                        }
                    }
                }
            }
            cells.next();
        }
    }

    fn entry(&self, probe: &Probe) -> Option<&Stored> {
        match *probe {
            Probe::Found(_, at) => Some(&self.slots[at].entry),
            Probe::Vacant(_) => None,
        }
    }

    /// Room for one more key: the index rebuilt first if that would fill two thirds of it.
    fn reserve_one(&mut self) -> PyResult<()> {
        if self.slots.len() >= DUMMY as usize {
            return Err(PyMemoryError::new_err("a Store holds at most 2**32 - 2 keys"));
        }
        if (self.filled + 1) * 3 > self.index.len() * 2 {
            self.rebuild(false);
        }
        Ok(())
    }

    /// Put `entry` at the place `probe` found (after `reserve_one`): the entry it replaces, if any.
    fn put(&mut self, probe: Probe, key: &Bound<'_, PyAny>, hash: isize, entry: Stored) -> Option<Stored> {
        self.nbytes += entry.nbytes;
        self.stored += entry.stored;
        let old = match probe {
            Probe::Found(_, at) => std::mem::replace(&mut self.slots[at].entry, entry),
            Probe::Vacant(cell) => {
                let cell = cell.expect("reserve_one sized the index");
                if self.index[cell] == EMPTY {
                    self.filled += 1;
                }
                self.index[cell] = self.slots.len() as u32;
                self.slots.push(Slot { key: Some(key.clone().unbind()), hash, entry });
                self.live += 1;
                return None;
            }
        };
        self.nbytes -= old.nbytes;
        self.stored -= old.stored;
        Some(old)
    }

    /// Take out the key and entry `probe` found.
    fn remove(&mut self, probe: &Probe) -> Option<(Py<PyAny>, Stored)> {
        let Probe::Found(cell, at) = *probe else { return None };
        self.index[cell] = DUMMY;
        let slot = &mut self.slots[at];
        let key = slot.key.take()?;
        let entry = std::mem::replace(&mut slot.entry, GONE);
        self.live -= 1;
        self.nbytes -= entry.nbytes;
        self.stored -= entry.stored;
        if self.slots.len() > 2 * self.live + MIN_INDEX {
            self.rebuild(false);
        }
        Some((key, entry))
    }

    /// Drop the deleted slots and index the live ones again, half full; `shrink`: give
    /// the spare capacity back too.
    fn rebuild(&mut self, shrink: bool) {
        self.slots.retain(|s| s.key.is_some());
        if shrink {
            self.slots.shrink_to_fit();
        }
        let cells = (2 * (self.live + 1)).next_power_of_two().max(MIN_INDEX);
        self.index.clear();
        self.index.resize(cells, EMPTY);
        if shrink {
            self.index.shrink_to_fit();
        }
        for (at, slot) in self.slots.iter().enumerate() {
            let mut c = Cells::new(slot.hash, cells - 1);
            while self.index[c.i] != EMPTY {
                c.next();
            }
            self.index[c.i] = at as u32;
        }
        self.filled = self.live;
    }

    fn live_slots(&self) -> impl Iterator<Item = (&Py<PyAny>, &Stored)> {
        self.slots.iter().filter_map(|s| s.key.as_ref().map(|k| (k, &s.entry)))
    }
}

/// An address unique to the calling thread while it lives.
fn thread_token() -> usize {
    thread_local! {
        static TOKEN: u8 = const { 0 };
    }
    TOKEN.with(|t| t as *const u8 as usize)
}

/// The table, locked by this thread.
struct Locked<'a> {
    table: MutexGuard<'a, Table>,
    owner: &'a AtomicUsize,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.owner.store(0, Ordering::Relaxed);
    }
}

impl std::ops::Deref for Locked<'_> {
    type Target = Table;
    fn deref(&self) -> &Table {
        &self.table
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Table {
        &mut self.table
    }
}

/// `f`, with the GIL released when `detach`.
fn maybe_detached<T: Send>(py: Python<'_>, detach: bool, f: impl FnOnce() -> T + Send) -> T {
    if detach {
        py.detach(f)
    } else {
        f()
    }
}

fn missing(key: &Bound<'_, PyAny>) -> PyErr {
    PyKeyError::new_err(key.clone().unbind())
}

fn free_all(pool: &Pool, entries: impl IntoIterator<Item = Stored>) -> Result<(), PoolError> {
    let mut first = Ok(());
    for e in entries {
        let r = store::free(pool, e.handles.as_slice());
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// The engine's Store: the key index and each value's work (``zsmalloc.store`` subclasses it).
#[pyclass(module = "zsmalloc._engine", name = "StoreIndex", frozen, subclass)]
pub struct PyStoreIndex {
    pool: Py<PyPool>,
    comp: Kind,
    table: Mutex<Table>,
    /// the `thread_token` of the table's holder, 0 when none
    owner: AtomicUsize,
    closed: AtomicBool,
}

impl PyStoreIndex {
    /// The table, locked; never waited for with the GIL held.
    fn lock(&self, py: Python<'_>) -> PyResult<Locked<'_>> {
        let me = thread_token();
        let table = match self.table.try_lock() {
            Some(t) => t,
            None if self.owner.load(Ordering::Relaxed) == me => {
                return Err(PyRuntimeError::new_err(
                    "the Store was used by a key's __eq__ or __hash__ while it looked that key up",
                ))
            }
            None => {
                py.detach(|| std::mem::forget(self.table.lock()));
                // SAFETY: this thread took the lock just above and forgot its guard
                // (a guard may not cross the GIL's release); this guard unlocks it once
                unsafe { self.table.make_guard_unchecked() }
            }
        };
        self.owner.store(me, Ordering::Relaxed);
        Ok(Locked { table, owner: &self.owner })
    }

    /// `f` on the pool under its panic guard, once the store is known open.
    fn on_pool<T>(&self, py: Python<'_>, what: &str, f: impl FnOnce(&Pool) -> PyResult<T>) -> PyResult<T> {
        self.check_open(py)?;
        let pool = self.pool.get();
        guard(py, &[&pool.poisoned, &pool.memory.get().poisoned], what, || f(&pool.inner))
    }

    fn check_open(&self, py: Python<'_>) -> PyResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(zs_error(py, 3, "the store is closed".into()));
        }
        Ok(())
    }

    /// Store each of `entries` under its key of `pairs`, and free the objects of the entries
    /// they replace (under the lock: nobody reads them then); on an error, the entries not
    /// stored are freed.
    fn swap_in(
        &self,
        py: Python<'_>,
        p: &Pool,
        pairs: &[(&Bound<'_, PyAny>, isize)],
        entries: impl IntoIterator<Item = Stored>,
    ) -> PyResult<()> {
        let mut entries = entries.into_iter();
        let mut freed = Ok(());
        let done = (|| -> PyResult<()> {
            let mut t = self.lock(py)?;
            self.check_open(py)?;
            for &(key, hash) in pairs {
                t.reserve_one()?;
                let probe = t.probe(key, hash)?;
                let entry = entries.next().expect("an entry per key");
                if let Some(old) = t.put(probe, key, hash, entry) {
                    let r = store::free(p, old.handles.as_slice());
                    if freed.is_ok() {
                        freed = r;
                    }
                }
            }
            Ok(())
        })();
        let rest = free_all(p, entries);
        done?;
        freed.and(rest).map_err(|e| pool_err(py, e))
    }
}

#[pymethods]
impl PyStoreIndex {
    #[new]
    #[pyo3(signature = (pool, compression = "lz4"))]
    fn new(pool: Py<PyPool>, compression: &str) -> PyResult<Self> {
        Ok(PyStoreIndex {
            pool,
            comp: compression_arg(compression)?,
            table: Mutex::new(Table::default()),
            owner: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        })
    }

    fn __setitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.on_pool(py, "Store.__setitem__", |p| {
            let hash = key.hash()?; // an unhashable key fails before any work
            let buf = BorrowedBuffer::get(value, false)?;
            let bytes = buf.as_slice();
            let entry =
                maybe_detached(py, bytes.len() as u64 >= DETACH_BYTES, || store::put(p, self.comp, bytes))
                    .map_err(|e| pool_err(py, e))?;
            drop(buf);
            self.swap_in(py, p, &[(key, hash)], [entry])
        })
    }

    fn __getitem__<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.on_pool(py, "Store.__getitem__", |p| {
            let hash = key.hash()?;
            let t = self.lock(py)?;
            let probe = t.probe(key, hash)?;
            let e = t.entry(&probe).ok_or_else(|| missing(key))?;
            let mut result = Ok(());
            // a bytes object nobody else sees yet: filled without the GIL if it is large
            let value = new_bytes(py, e.nbytes as usize, |out| {
                result = maybe_detached(py, e.nbytes >= DETACH_BYTES, || store::get(p, e, out))
            })?;
            result.map_err(|err| pool_err(py, err))?;
            Ok(value)
        })
    }

    fn __delitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        self.on_pool(py, "Store.__delitem__", |p| {
            let hash = key.hash()?;
            let (gone, entry) = {
                let mut t = self.lock(py)?;
                let probe = t.probe(key, hash)?;
                t.remove(&probe).ok_or_else(|| missing(key))?
            };
            drop(gone); // the key's reference, with the GIL and without the lock
            store::free(p, entry.handles.as_slice()).map_err(|e| pool_err(py, e))
        })
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let hash = match key.hash() {
            Ok(h) => h,
            Err(e) if e.is_instance_of::<PyTypeError>(py) => return Ok(false), // unhashable: not a key of ours
            Err(e) => return Err(e),
        };
        let t = self.lock(py)?;
        Ok(matches!(t.probe(key, hash)?, Probe::Found(..)))
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.lock(py)?.live)
    }

    /// The keys, in insertion order, as they were at the call.
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let keys = {
            let t = self.lock(py)?;
            PyList::new(py, t.live_slots().map(|(k, _)| k.bind(py)))?
        };
        Ok(keys.try_iter()?.into_any())
    }

    /// Free every value.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.on_pool(py, "Store.clear", |p| {
            let table = std::mem::take(&mut *self.lock(py)?);
            free_all(p, table.slots.into_iter().map(|s| s.entry)).map_err(|e| pool_err(py, e))
        })
    }

    /// Whether ``close()`` has run.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Bytes of the values stored, as given.
    #[getter]
    fn nbytes(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.lock(py)?.nbytes)
    }

    /// Bytes of their payloads in the pool (a same-filled value has none).
    #[getter]
    fn compressed_nbytes(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.lock(py)?.stored)
    }

    /// Write the value of ``key`` into the writable buffer ``buf``; return its length.
    fn get_into(&self, py: Python<'_>, key: &Bound<'_, PyAny>, buf: &Bound<'_, PyAny>) -> PyResult<u64> {
        self.on_pool(py, "Store.get_into", |p| {
            let hash = key.hash()?;
            let mut out = BorrowedBuffer::get(buf, true)?;
            let slice = out.as_mut_slice();
            let t = self.lock(py)?;
            let probe = t.probe(key, hash)?;
            let e = t.entry(&probe).ok_or_else(|| missing(key))?;
            if (slice.len() as u64) < e.nbytes {
                return Err(PyValueError::new_err(format!(
                    "a buffer of {} bytes cannot hold the {} bytes of {}",
                    slice.len(),
                    e.nbytes,
                    key.repr()?
                )));
            }
            let target = &mut slice[..e.nbytes as usize];
            maybe_detached(py, e.nbytes >= DETACH_BYTES, || store::get(p, e, target))
                .map_err(|err| pool_err(py, err))?;
            Ok(e.nbytes)
        })
    }

    /// How the value of ``key`` is stored: ``(kind, nbytes, payload)``, the payload copied out.
    fn get_compressed<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
        self.on_pool(py, "Store.get_compressed", |p| {
            let hash = key.hash()?;
            let t = self.lock(py)?;
            let probe = t.probe(key, hash)?;
            let e = t.entry(&probe).ok_or_else(|| missing(key))?;
            let payload = if e.kind == Kind::Same {
                PyByteArray::new(py, &[e.fill])
            } else {
                let mut result = Ok(());
                let out = PyByteArray::new_with(py, e.stored as usize, |out| {
                    result = store::read_payload(p, e, out);
                    Ok(())
                })?;
                result.map_err(|err| pool_err(py, err))?;
                out
            };
            (e.kind.name(), e.nbytes, payload).into_pyobject(py)
        })
    }

    /// Store ``values[i]`` under ``keys[i]``, all of them or (on an error) none, the GIL
    /// released while the values are compressed and written.
    fn _set_many(
        &self,
        py: Python<'_>,
        keys: Vec<Bound<'_, PyAny>>,
        values: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if keys.len() != values.len() {
            return Err(PyValueError::new_err("as many values as keys"));
        }
        self.on_pool(py, "Store.set_many", |p| {
            let pairs = keys.iter().map(|k| Ok((k, k.hash()?))).collect::<PyResult<Vec<_>>>()?;
            let bufs = values.iter().map(|v| BorrowedBuffer::get(v, false)).collect::<PyResult<Vec<_>>>()?;
            let slices: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
            let comp = self.comp;
            let made = py.detach(|| -> Result<Vec<Stored>, PoolError> {
                let mut made = Vec::with_capacity(slices.len());
                for v in &slices {
                    match store::put(p, comp, v) {
                        Ok(s) => made.push(s),
                        Err(e) => {
                            let _ = free_all(p, made);
                            return Err(e);
                        }
                    }
                }
                Ok(made)
            });
            drop(slices);
            drop(bufs);
            self.swap_in(py, p, &pairs, made.map_err(|e| pool_err(py, e))?)
        })
    }

    /// The values of ``keys``, in order (KeyError for a missing one), the GIL released while
    /// they are read.
    #[pyo3(name = "_get_many")]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        self.on_pool(py, "Store.get_many", |p| {
            let hashes = keys.iter().map(|k| k.hash()).collect::<PyResult<Vec<_>>>()?;
            let t = self.lock(py)?;
            let mut entries = Vec::with_capacity(keys.len());
            for (key, &hash) in keys.iter().zip(&hashes) {
                let probe = t.probe(key, hash)?;
                entries.push(t.entry(&probe).ok_or_else(|| missing(key))?);
            }
            // the bytes objects first (with the GIL), filled all at once without it
            let mut ptrs: Vec<(usize, usize)> = Vec::with_capacity(entries.len());
            let values = entries
                .iter()
                .map(|e| {
                    new_bytes(py, e.nbytes as usize, |out| ptrs.push((out.as_mut_ptr() as usize, out.len())))
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

    /// Every ``(key, value)``, in insertion order, read under one lock (for pickling).
    fn _items<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        self.on_pool(py, "Store._items", |p| {
            let t = self.lock(py)?;
            t.live_slots()
                .map(|(k, e)| {
                    let mut result = Ok(());
                    let value = new_bytes(py, e.nbytes as usize, |out| result = store::get(p, e, out))?;
                    result.map_err(|err| pool_err(py, err))?;
                    (k.bind(py), value).into_pyobject(py)
                })
                .collect()
        })
    }

    /// ``(kind, nbytes, stored, handles, fill)`` of the entry of ``key`` (introspection).
    fn _entry<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
        let hash = key.hash()?;
        let t = self.lock(py)?;
        let probe = t.probe(key, hash)?;
        let e = t.entry(&probe).ok_or_else(|| missing(key))?;
        let handles = PyTuple::new(py, e.handles.as_slice())?;
        (e.kind.name(), e.nbytes, e.stored, handles, e.fill).into_pyobject(py)
    }

    /// Give the index's spare room back (deleted slots, spare capacity).
    fn _compact_index(&self, py: Python<'_>) -> PyResult<()> {
        self.lock(py)?.rebuild(true);
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.pool)?;
        // a table a thread holds is skipped: its keys then look referenced from elsewhere,
        // and the collector keeps them (never frees what is reachable)
        if let Some(t) = self.table.try_lock() {
            for slot in &t.slots {
                visit.call(&slot.key)?;
            }
        }
        Ok(())
    }

    /// The collector breaks a cycle through the keys: every value freed, the keys let go.
    fn __clear__(&self) {
        let Some(table) = self.table.try_lock().map(|mut t| std::mem::take(&mut *t)) else { return };
        let pool = &self.pool.get().inner;
        if !pool.is_closed() {
            // no panic leaves a slot of the collector's; a failed free only leaks its object
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                free_all(pool, table.slots.into_iter().map(|s| s.entry))
            }));
        }
    }

    /// Free every value (unless the pool is closed already) and refuse further use.
    fn _close(&self, py: Python<'_>) -> PyResult<()> {
        let table = {
            let mut t = self.lock(py)?;
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *t)
        };
        let pool = self.pool.get();
        if pool.inner.is_closed() {
            return Ok(());
        }
        guard(py, &[&pool.poisoned, &pool.memory.get().poisoned], "Store.close", || {
            free_all(&pool.inner, table.slots.into_iter().map(|s| s.entry)).map_err(|e| pool_err(py, e))
        })
    }
}
