//! Lazily backed tables: one private anonymous mapping per table, reserved
//! for the most entries it may ever hold and paid for only where touched.
//!
//! ```text
//!   reserved: capacity * size_of::<T>() bytes, MAP_NORESERVE, never moves
//!   +---------+---------+---------+- ... -+-------------------------------+
//!   | entry 0 | entry 1 | entry 2 |       | untouched: no RSS, reads zero |
//!   +---------+---------+---------+- ... -+-------------------------------+
//!   |<--- resident: written at least once --->|
//! ```
//!
//! The page descriptors, the zspage table and the handle table all grow
//! and shrink with the pool; reserving their whole range once means that no
//! entry ever moves, so readers need no lock against growth, and giving the
//! top of a table back (`release_from`) is one `madvise`.
//!
//! Entries are made of atomics only, so a zero-filled page is a valid table
//! of default entries and shared references are enough to mutate them: each
//! user says which lock orders its writes.
//!
//! Under `--cfg loom` the entries hold loom's atomics, which cannot be
//! conjured from zero pages: the table is then a `Vec` of default entries
//! (see the loom `Table` below).  The arena's mapping (`map_anonymous`) is
//! the same in both builds.

use std::io;
#[cfg(not(loom))]
use std::marker::PhantomData;
use std::ptr::NonNull;

/// Types whose all-zero bit pattern is a valid value, made of atomics only.
///
/// # Safety
/// An implementor must be valid when every byte is zero and must be `Sync`
/// through interior mutability alone (atomics), since a table hands out
/// shared references to entries that other threads update.
pub unsafe trait Zeroable: Sync {}

#[cfg(not(loom))]
pub struct Table<T: Zeroable> {
    ptr: NonNull<T>,
    capacity: usize,
    _owns: PhantomData<T>,
}

#[cfg(not(loom))]
// SAFETY: the table owns its mapping; entries are Sync (Zeroable's contract),
// and the mapping itself is never touched through `&mut` after creation.
unsafe impl<T: Zeroable> Send for Table<T> {}
#[cfg(not(loom))]
// SAFETY: as above: shared access only ever yields `&T`, and T is Sync.
unsafe impl<T: Zeroable> Sync for Table<T> {}

#[cfg(not(loom))]
const OS_PAGE: usize = 4096;

#[cfg(not(loom))]
impl<T: Zeroable> Table<T> {
    /// Reserve room for `capacity` entries (at least one).
    pub fn new(capacity: usize) -> io::Result<Self> {
        let capacity = capacity.max(1);
        let bytes = capacity
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| io::Error::other("table too large"))?;
        let ptr = map_anonymous(bytes)?;
        Ok(Table { ptr: ptr.cast(), capacity, _owns: PhantomData })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The whole reserved range as a slice; entries never touched read as zero.
    #[inline]
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the mapping holds `capacity` entries, zero-filled by the
        // kernel until written, and zero is a valid T (Zeroable); it lives as
        // long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity) }
    }

    /// Give the memory of entries `from..` back to the OS: they read as zero
    /// again.  The caller guarantees nobody uses those entries meanwhile
    /// (they lie above the table's logical length, under the lock that
    /// guards that length).
    pub fn release_from(&self, from: usize) {
        let size = std::mem::size_of::<T>();
        let start = (from * size).div_ceil(OS_PAGE) * OS_PAGE;
        let end = self.capacity * size;
        if start < end {
            // SAFETY: [start, end) lies inside our mapping; MADV_DONTNEED on
            // private anonymous memory only replaces its pages with zero
            // pages, which is a valid state for every entry.
            unsafe {
                libc::madvise(
                    self.ptr.as_ptr().cast::<u8>().add(start).cast(),
                    end - start,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
}

#[cfg(not(loom))]
impl<T: Zeroable> Drop for Table<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by map_anonymous with this length and
        // no reference into it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.capacity * std::mem::size_of::<T>());
        }
    }
}

/// Under loom: the entries are loom atomics, which cannot live in mmap'd
/// zero pages (each one is registered with the model when created), so the
/// table is a Vec of default entries made up front (a loom model's Memory has
/// a few frames, so its tables have a few thousand entries at most).
#[cfg(loom)]
pub struct Table<T: Zeroable> {
    entries: Vec<T>,
}

#[cfg(loom)]
impl<T: Zeroable + Default> Table<T> {
    /// Room for `capacity` entries (at least one), all default.
    pub fn new(capacity: usize) -> io::Result<Self> {
        let capacity = capacity.max(1);
        Ok(Table { entries: (0..capacity).map(|_| T::default()).collect() })
    }
}

#[cfg(loom)]
impl<T: Zeroable> Table<T> {
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    #[inline]
    pub fn as_slice(&self) -> &[T] {
        &self.entries
    }

    /// A no-op under loom: nothing is given back, and entries above a
    /// table's logical length keep their last values.  Every user
    /// initialises an entry before it uses it again (a handle slot when the
    /// table grows, a zspage in `alloc_zspage`, a descriptor when its frame
    /// is handed out), so no reader depends on the zeroing.
    pub fn release_from(&self, _from: usize) {}
}

/// A private anonymous read-write mapping of `bytes` bytes, not reserved
/// against overcommit: only touched pages cost memory.
pub(crate) fn map_anonymous(bytes: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh anonymous mapping aliases nothing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes.max(1),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

// the unit tests run real threads on std's atomics: not under loom (tests/loom.rs)
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::{AtomicU64, Ordering::Relaxed};

    struct E(AtomicU64);
    // SAFETY: an AtomicU64 of zero is valid.
    unsafe impl Zeroable for E {}

    #[test]
    fn reads_zero_and_releases() {
        let t: Table<E> = Table::new(100_000).unwrap();
        assert_eq!(t.as_slice()[99_999].0.load(Relaxed), 0);
        t.as_slice()[5000].0.store(7, Relaxed);
        t.as_slice()[10].0.store(9, Relaxed);
        t.release_from(4096);
        assert_eq!(t.as_slice()[5000].0.load(Relaxed), 0);
        assert_eq!(t.as_slice()[10].0.load(Relaxed), 9);
    }
}
