//! Physical memory: page frames in one arena, page descriptors, page locks
//! and the page allocator.  The engine's counterpart of the model's
//! `zsmalloc/mm/memory.py`, decision for decision, so that both hand out
//! the same frames in the same order.
//!
//! ```text
//!   arena (one private anonymous mapping, MAP_NORESERVE)
//!   +---------+---------+---------+-- ... --+------------------------+
//!   |  pfn 0  |  pfn 1  |  pfn 2  |         |  never touched: no RSS |
//!   +---------+---------+---------+-- ... --+------------------------+
//!   |<------ hwm: frames ever handed out ------>|
//!
//!   descriptors: Table<PageDesc>, one 16-byte entry per pfn
//!     flags u8 (PG_locked | PG_movable | PG_isolated), movable_ops u8,
//!     first_obj_offset u16, refcount i32, private u32 (the owner's: zspage
//!     id), next u32 (the owner's page chain); the kernel's page->index (a
//!     huge object's handle) is the pool's, in its zspage entry
//! ```
//!
//! Free frames are on the *hot list* (the kernel's per-cpu lists: recently
//! freed, still resident, reused last-freed-first) or in the *cold heap*
//! (given back to the OS with MADV_DONTNEED, reused lowest pfn first), and
//! above the high-water mark lie frames never touched.  When the hot list
//! passes `pcp_high` frames its oldest `pcp_batch` are drained to the heap.
//!
//! A zoned Memory (`Memory::new_zoned`, for the fragmentation simulation)
//! hands frames out of a buddy allocator instead ([`super::zone::Zone`]):
//! order-0 frames and blocks of any order, each of a migratetype; there
//! is no hot list, and every pfn counts as handed out (the high-water mark
//! is the capacity).  Frames the zone compaction's free scanner took are
//! held in `captured` until a migration uses them or they go back.
//!
//! Locking: `alloc` (the model's `Memory._lock`) guards the allocator, the
//! refcounts and the page-lock transitions that must be all-or-none; it is a
//! leaf but for `populate`, which is taken before it (populate -> alloc) and
//! held over a `populate_ahead`'s madvise, outside `alloc`, so that faulting
//! frames in does not hold up other threads' allocations; `shrink_arena`
//! takes it so that no madvise in flight faults in what it gives back.
//! The page lock is the PG_locked bit: `trylock_page` never waits,
//! `lock_page` sleeps on `page_cond` until the bit is clear.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::io;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::sync::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use crate::sync::{
    Arc, ArenaWord, AtomicBool, AtomicI32, AtomicU16, AtomicU32, AtomicU8, AtomicUsize, Condvar, Mutex,
    MutexGuard, RwLock, Weak,
};

use super::migrate::{MovableOps, VmStat};
use super::zone::{MigrateType, Zone};

use super::table::{map_anonymous, Table, Zeroable};

pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

pub const PG_LOCKED: u8 = 0x01;
pub const PG_MOVABLE: u8 = 0x02;
pub const PG_ISOLATED: u8 = 0x04;

/// `next` of the last page of a chain.
pub const NO_PAGE: u32 = u32::MAX;

pub const PCP_HIGH: usize = 64;
pub const PCP_BATCH: usize = 32;
const MAX_OWNERS: usize = 256;

/// Errors of the page allocator and of page-descriptor operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MmError {
    /// No frame to give (or the allocator was told to fail).
    OutOfFrames(String),
    /// An operation the page's state does not allow.
    PageState(String),
    /// A bad argument (a range, a capacity).
    Invalid(String),
    /// A wait for a locked page on a Memory told not to sleep.
    WouldSleep(String),
}

impl fmt::Display for MmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MmError::OutOfFrames(m)
            | MmError::PageState(m)
            | MmError::Invalid(m)
            | MmError::WouldSleep(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for MmError {}

/// One page descriptor (the kernel's struct page, lighter).
#[derive(Default)]
pub struct PageDesc {
    pub flags: AtomicU8,
    pub movable_ops: AtomicU8,
    pub first_obj_offset: AtomicU16,
    pub refcount: AtomicI32,
    pub private: AtomicU32,
    pub next: AtomicU32,
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<PageDesc>() == 16);

// SAFETY: atomics only; all-zero is a free frame's descriptor.
unsafe impl Zeroable for PageDesc {}

impl PageDesc {
    fn reset_owner_words(&self) {
        self.movable_ops.store(0, Relaxed);
        self.private.store(0, Relaxed);
        self.next.store(0, Relaxed);
        self.first_obj_offset.store(0, Relaxed);
    }
}

/// Allocator events, in the order of the model's `ALLOC_EVENTS`.
pub const ALLOC_EVENTS: [&str; 5] = ["nr_alloc", "nr_free", "nr_alloc_fail", "nr_drained", "nr_used_max"];
const NR_ALLOC: usize = 0;
const NR_FREE: usize = 1;
const NR_ALLOC_FAIL: usize = 2;
const NR_DRAINED: usize = 3;
const NR_USED_MAX: usize = 4;

/// A shrink of the arena by this many frames or more, or an arena
/// compaction, also gives the C heap's free memory back to the OS.
pub(super) const TRIM_HEAP_FRAMES: usize = 1024;

/// Ask the C heap to give its free memory back to the OS (glibc's
/// `malloc_trim(0)`): tables that shrank leave free memory that glibc
/// keeps resident until asked.
pub fn trim_process_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap structures.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Where a frame handed out by `alloc_pages` came from, to put it back on failure.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Hot,
    Cold,
    Fresh,
}

pub(super) struct Alloc {
    pcp: Vec<u32>,
    free: BinaryHeap<Reverse<u32>>,
    pub(super) hwm: usize,
    excluded: Vec<(usize, usize)>,
    nr_used: usize,
    ev: [u64; 5],
    fail_next: u64,
    fail_probability: f64,
    rng: u64,
    /// the hot list's oldest frames on their way to the heap (kept for its capacity)
    scratch: Vec<u32>,
    /// where each frame of an `alloc_pages` came from (kept for its capacity)
    sources: Vec<Source>,
    /// frames below this one were faulted in ahead of use (populate_ahead)
    populated: usize,
    /// false once the kernel refused MADV_POPULATE_WRITE (before 5.14)
    can_populate: bool,
    /// frames to fault in once the lock is dropped (`populate`)
    ahead: Option<Ahead>,
    /// bumped by every `shrink_arena` that lowers the mark: a range taken before is stale
    populate_gen: u64,
    /// the buddy allocator of a zoned Memory
    pub(super) zone: Option<Zone>,
    /// free frames the zone compaction isolated as migration targets
    pub(super) captured: Vec<u32>,
}

/// Frames `[from, to)` to fault in, taken under the allocator lock in generation `gen`.
#[derive(Clone, Copy, Debug)]
struct Ahead {
    from: usize,
    to: usize,
    gen: u64,
}

/// A point-in-time copy of the allocator's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    pub capacity: usize,
    pub hwm: usize,
    pub nr_used: usize,
    pub nr_pcp: usize,
    pub events: [u64; 5],
}

pub struct Memory {
    arena: NonNull<u8>,
    capacity: usize,
    descs: Table<PageDesc>,
    pub(super) alloc: Mutex<Alloc>,
    /// held over a populate_ahead's madvise and by shrink_arena (see the header)
    populate: Mutex<()>,
    page_wait: Mutex<()>,
    page_cond: Condvar,
    page_waiters: AtomicUsize,
    /// movable-page owners by id (0: not movable); ids are never reused
    owners: RwLock<Vec<Option<Weak<dyn MovableOps>>>>,
    pcp_high: usize,
    pcp_batch: usize,
    closed: AtomicBool,
    /// false: a wait for a locked page fails with WouldSleep (single-threaded checkers)
    sleep_on_page_lock: bool,
    /// migration and compaction events (like /proc/vmstat)
    pub vmstat: VmStat,
}

// SAFETY: the arena pointer is owned by the Memory (unmapped in Drop); every
// access to arena bytes goes through the methods below, which are ordered by
// the callers' locks (see pool/zsmalloc.rs), and all other state is behind
// mutexes or atomics.
unsafe impl Send for Memory {}
// SAFETY: as for Send.
unsafe impl Sync for Memory {}

impl Memory {
    /// An arena of `capacity` frames; only frames handed out cost memory.
    pub fn new(capacity: usize, pcp_high: usize, pcp_batch: usize) -> Result<Memory, MmError> {
        Memory::build(capacity, pcp_high, pcp_batch, None)
    }

    /// A Memory whose frames come from one zone's buddy allocator, all of
    /// them free at first, every pageblock movable.
    pub fn new_zoned(capacity: usize) -> Result<Memory, MmError> {
        let zone = Zone::new(capacity).map_err(|e| MmError::Invalid(e.0))?;
        Memory::build(capacity, 0, 1, Some(zone))
    }

    fn build(
        capacity: usize,
        pcp_high: usize,
        pcp_batch: usize,
        zone: Option<Zone>,
    ) -> Result<Memory, MmError> {
        if capacity < 1 {
            return Err(MmError::Invalid(format!("capacity must be at least one frame, not {capacity}")));
        }
        if pcp_batch == 0 {
            return Err(MmError::Invalid("pcp_high must be >= 0 and pcp_batch > 0".into()));
        }
        if capacity > NO_PAGE as usize {
            return Err(MmError::Invalid(format!("capacity {capacity} exceeds {NO_PAGE} frames")));
        }
        let os_err = |e: io::Error| MmError::Invalid(format!("cannot reserve the arena: {e}"));
        let bytes =
            capacity.checked_mul(PAGE_SIZE).ok_or_else(|| MmError::Invalid("capacity too large".into()))?;
        let arena = map_anonymous(bytes).map_err(os_err)?;
        let descs = Table::new(capacity).map_err(os_err)?;
        // a zone owns every frame from the start: nothing to fault in ahead
        let hwm = if zone.is_some() { capacity } else { 0 };
        Ok(Memory {
            arena,
            capacity,
            descs,
            alloc: Mutex::new(Alloc {
                pcp: Vec::with_capacity(pcp_high + 1),
                free: BinaryHeap::new(),
                hwm,
                populated: hwm,
                can_populate: zone.is_none(),
                ahead: None,
                populate_gen: 0,
                excluded: Vec::new(),
                nr_used: 0,
                ev: [0; 5],
                fail_next: 0,
                fail_probability: 0.0,
                rng: 0,
                scratch: Vec::with_capacity(pcp_batch),
                sources: Vec::with_capacity(16),
                zone,
                captured: Vec::new(),
            }),
            populate: Mutex::new(()),
            page_wait: Mutex::new(()),
            page_cond: Condvar::new(),
            page_waiters: AtomicUsize::new(0),
            owners: RwLock::new(vec![None]),
            pcp_high,
            pcp_batch,
            closed: AtomicBool::new(false),
            sleep_on_page_lock: true,
            vmstat: VmStat::default(),
        })
    }

    /// With `false`, a wait for a locked page fails with `MmError::WouldSleep`
    /// instead of sleeping: what a checker running every actor in one
    /// thread needs.
    pub fn with_sleep_on_page_lock(mut self, sleep: bool) -> Memory {
        self.sleep_on_page_lock = sleep;
        self
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn pcp_high(&self) -> usize {
        self.pcp_high
    }

    pub fn pcp_batch(&self) -> usize {
        self.pcp_batch
    }

    pub fn sleeps_on_page_lock(&self) -> bool {
        self.sleep_on_page_lock
    }

    /// The descriptor of `pfn` (any pfn below the capacity; the caller checks).
    #[inline]
    pub fn desc(&self, pfn: u32) -> &PageDesc {
        &self.descs.as_slice()[pfn as usize]
    }

    /// A hint that page `pfn`'s descriptor is about to be read.
    #[inline]
    pub fn prefetch_desc(&self, pfn: u32) {
        let d: *const PageDesc = self.desc(pfn);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is only a hint: it never faults, and `d` is a
        // live descriptor of the table anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(d.cast::<i8>())
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = d;
    }

    pub fn hwm(&self) -> usize {
        self.alloc.lock().hwm
    }

    pub fn stats(&self) -> MemoryStats {
        let a = self.alloc.lock();
        MemoryStats {
            capacity: self.capacity,
            hwm: a.hwm,
            nr_used: a.nr_used,
            nr_pcp: a.pcp.len(),
            events: a.ev,
        }
    }

    // ------------------------------------------------------------------
    // the page allocator

    /// One frame with refcount 1.
    pub fn alloc_page(&self) -> Result<u32, MmError> {
        self.alloc_one(0, None)
    }

    /// A frame whose pfn lies in `[lo, hi)`, lowest free first.
    pub fn alloc_page_in(&self, lo: usize, hi: Option<usize>) -> Result<u32, MmError> {
        self.alloc_one(lo, Some(hi.map_or(self.capacity, |h| h.min(self.capacity))))
    }

    /// `alloc_frame` under the allocator lock, then the frames it took to fault in ahead.
    pub(super) fn alloc_one(&self, lo: usize, hi: Option<usize>) -> Result<u32, MmError> {
        let (got, ahead) = {
            let mut a = self.alloc.lock();
            let got = self.alloc_frame(&mut a, lo, hi, MigrateType::Movable);
            (got, a.ahead.take())
        };
        self.populate(ahead);
        got.map(|(pfn, _)| pfn)
    }

    /// Fill `out` with frames (not contiguous), all or none, under one hold
    /// of the allocator lock.  On failure every frame goes back where it came
    /// from and only `nr_alloc_fail` has changed.
    pub fn alloc_pages(&self, out: &mut [u32]) -> Result<(), MmError> {
        self.alloc_pages_mt(out, MigrateType::Movable)
    }

    /// `alloc_pages` of a migratetype (the gfp flags' __GFP_MOVABLE or
    /// not): it places the frames in a zoned Memory, and means nothing to
    /// the lowest-frame-first allocator.
    pub fn alloc_pages_mt(&self, out: &mut [u32], mt: MigrateType) -> Result<(), MmError> {
        let mut a = self.alloc.lock();
        let result = self.alloc_pages_locked(&mut a, out, mt);
        let ahead = a.ahead.take();
        drop(a);
        self.populate(ahead);
        result
    }

    fn alloc_pages_locked(&self, a: &mut Alloc, out: &mut [u32], mt: MigrateType) -> Result<(), MmError> {
        let (hwm, used_max) = (a.hwm, a.ev[NR_USED_MAX]);
        let mut sources = std::mem::take(&mut a.sources); // kept for its capacity: no allocation
        sources.clear();
        let mut result = Ok(());
        for i in 0..out.len() {
            match self.alloc_frame(a, 0, None, mt) {
                Ok((pfn, src)) => {
                    out[i] = pfn;
                    sources.push(src);
                }
                Err(e) => {
                    self.undo_alloc(a, &out[..i], &sources, hwm);
                    a.ev[NR_USED_MAX] = used_max;
                    result = Err(e);
                    break;
                }
            }
        }
        a.sources = sources;
        result
    }

    fn undo_alloc(&self, a: &mut Alloc, pfns: &[u32], sources: &[Source], hwm: usize) {
        let mut fresh = Vec::new();
        for (&pfn, &src) in pfns.iter().zip(sources).rev() {
            self.desc(pfn).refcount.store(0, Relaxed);
            if let Some(zone) = a.zone.as_mut() {
                let freed = zone.free_pages(pfn, 0);
                debug_assert!(freed.is_ok(), "a frame just taken from the zone");
                continue;
            }
            match src {
                Source::Hot => a.pcp.push(pfn),
                Source::Cold => a.free.push(Reverse(pfn)),
                Source::Fresh if (pfn as usize) < hwm => a.free.push(Reverse(pfn)),
                Source::Fresh => fresh.push(pfn),
            }
        }
        if a.free.iter().any(|&Reverse(p)| p as usize >= hwm) {
            for &pfn in &fresh {
                a.free.push(Reverse(pfn));
            }
        } else {
            a.hwm = hwm;
        }
        a.ev[NR_ALLOC] -= pfns.len() as u64;
        a.nr_used -= pfns.len();
    }

    /// One frame from `[lo, hi)` (lowest free first), or from anywhere when
    /// `hi` is None (in a zoned Memory: from the zone, of migratetype `mt`,
    /// above the min watermark; a zone serves no ranges); the caller holds
    /// the allocator lock.
    pub(super) fn alloc_frame(
        &self,
        a: &mut Alloc,
        lo: usize,
        hi: Option<usize>,
        mt: MigrateType,
    ) -> Result<(u32, Source), MmError> {
        if a.fail_next > 0 || a.fail_probability > 0.0 {
            if a.fail_next > 0 {
                a.fail_next -= 1;
                a.ev[NR_ALLOC_FAIL] += 1;
                return Err(MmError::OutOfFrames("page allocation failed (injected)".into()));
            }
            if next_unit(&mut a.rng) < a.fail_probability {
                a.ev[NR_ALLOC_FAIL] += 1;
                return Err(MmError::OutOfFrames("page allocation failed (injected)".into()));
            }
        }
        let found = if let Some(zone) = a.zone.as_mut() {
            if lo > 0 || hi.is_some() {
                return Err(MmError::Invalid("a zoned Memory hands out no frame by pfn range".into()));
            }
            let mark = zone.watermarks().min;
            zone.alloc_pages(0, mt, mark).ok().map(|pfn| (pfn, Source::Cold))
        } else if hi.is_none() && a.excluded.is_empty() {
            if let Some(pfn) = a.pcp.pop() {
                Some((pfn, Source::Hot))
            } else if let Some(Reverse(pfn)) = a.free.pop() {
                Some((pfn, Source::Cold))
            } else if a.hwm < self.capacity {
                Some((take_hwm_frame(a), Source::Fresh))
            } else {
                None
            }
        } else {
            take_frame_in(a, lo, hi.unwrap_or(self.capacity), self.capacity)
        };
        let Some((pfn, src)) = found else {
            a.ev[NR_ALLOC_FAIL] += 1;
            return Err(MmError::OutOfFrames(format!(
                "no free frame (capacity {}, {} in use)",
                self.capacity, a.nr_used
            )));
        };
        if src == Source::Fresh {
            self.populate_ahead(a, pfn as usize);
        }
        self.desc(pfn).refcount.store(1, Relaxed);
        a.ev[NR_ALLOC] += 1;
        a.nr_used += 1;
        if a.nr_used as u64 > a.ev[NR_USED_MAX] {
            a.ev[NR_USED_MAX] = a.nr_used as u64;
        }
        Ok((pfn, src))
    }

    /// A block of `2^order` frames of migratetype `mt` from a zoned
    /// Memory, if the zone stays above `mark` free pages: its head frame
    /// has refcount 1 and stands for the block (`put_page` of the head
    /// frees it all).
    pub fn alloc_block(&self, order: usize, mt: MigrateType, mark: usize) -> Result<u32, MmError> {
        let mut a = self.alloc.lock();
        let zone =
            a.zone.as_mut().ok_or_else(|| MmError::Invalid("only a zoned Memory hands out blocks".into()))?;
        let pfn = match zone.alloc_pages(order, mt, mark) {
            Ok(pfn) => pfn,
            Err(e) => {
                a.ev[NR_ALLOC_FAIL] += 1;
                return Err(MmError::OutOfFrames(e.0));
            }
        };
        self.desc(pfn).refcount.store(1, Relaxed);
        a.ev[NR_ALLOC] += 1;
        a.nr_used += 1 << order;
        if a.nr_used as u64 > a.ev[NR_USED_MAX] {
            a.ev[NR_USED_MAX] = a.nr_used as u64;
        }
        Ok(pfn)
    }

    /// A frame the zone compaction captured, now a migration's
    /// destination (`compaction_alloc`).
    pub(super) fn take_captured(&self, a: &mut Alloc) -> Option<u32> {
        let pfn = a.captured.pop()?;
        self.desc(pfn).refcount.store(1, Relaxed);
        a.ev[NR_ALLOC] += 1;
        a.nr_used += 1;
        if a.nr_used as u64 > a.ev[NR_USED_MAX] {
            a.ev[NR_USED_MAX] = a.nr_used as u64;
        }
        Some(pfn)
    }

    /// Whether this Memory hands out its frames from a zone.
    pub fn is_zoned(&self) -> bool {
        self.alloc.lock().zone.is_some()
    }

    /// `f` on the zone of a zoned Memory, under the allocator lock (for
    /// its statistics and indices).
    pub fn with_zone<R>(&self, f: impl FnOnce(&Zone) -> R) -> Option<R> {
        self.alloc.lock().zone.as_ref().map(f)
    }

    /// `f` on the zone of a zoned Memory, under the allocator lock, to
    /// change its settings (watermarks, the compaction deferral).
    pub fn with_zone_mut<R>(&self, f: impl FnOnce(&mut Zone) -> R) -> Option<R> {
        self.alloc.lock().zone.as_mut().map(f)
    }

    /// Keep the allocator out of `[start, end)` (MIGRATE_ISOLATE pageblocks).
    pub fn exclude_range(&self, start: usize, end: usize) -> Result<(), MmError> {
        if start >= end {
            return Err(MmError::Invalid(format!("bad pfn range [{start}, {end})")));
        }
        self.alloc.lock().excluded.push((start, end));
        Ok(())
    }

    pub fn unexclude_range(&self, start: usize, end: usize) -> Result<(), MmError> {
        let mut a = self.alloc.lock();
        match a.excluded.iter().position(|&r| r == (start, end)) {
            Some(i) => {
                a.excluded.remove(i);
                Ok(())
            }
            None => Err(MmError::Invalid(format!("range [{start}, {end}) is not excluded"))),
        }
    }

    // ------------------------------------------------------------------
    // references

    pub(super) fn check_pfn(&self, pfn: u32, a: &Alloc) -> Result<(), MmError> {
        if (pfn as usize) < a.hwm {
            Ok(())
        } else {
            Err(MmError::PageState(format!("frame {pfn} was never handed out")))
        }
    }

    /// Take a reference on an in-use frame.
    pub fn get_page(&self, pfn: u32) -> Result<(), MmError> {
        let a = self.alloc.lock();
        self.check_pfn(pfn, &a)?;
        let rc = &self.desc(pfn).refcount;
        if rc.load(Relaxed) <= 0 {
            return Err(MmError::PageState(format!("get_page on free frame {pfn}")));
        }
        rc.store(rc.load(Relaxed) + 1, Relaxed);
        Ok(())
    }

    /// Drop a reference; at zero the frame is free again (`__free_page`).
    pub fn put_page(&self, pfn: u32) -> Result<(), MmError> {
        let mut a = self.alloc.lock();
        self.check_pfn(pfn, &a)?;
        let d = self.desc(pfn);
        let count = d.refcount.load(Relaxed) - 1;
        if count < 0 {
            return Err(MmError::PageState(format!("put_page on free frame {pfn}")));
        }
        if count == 0 && d.flags.load(Relaxed) & PG_LOCKED != 0 {
            return Err(MmError::PageState(format!("frame {pfn} freed while locked")));
        }
        d.refcount.store(count, Relaxed);
        if count == 0 {
            self.release_frame(&mut a, pfn);
        }
        Ok(())
    }

    pub(super) fn release_frame(&self, a: &mut Alloc, pfn: u32) {
        let d = self.desc(pfn);
        d.flags.store(0, Relaxed);
        d.reset_owner_words();
        a.ev[NR_FREE] += 1;
        if let Some(zone) = a.zone.as_mut() {
            // the head of a block gives back the whole block
            let order = zone.allocated_block(pfn).map_or(0, |(o, _)| o);
            let freed = zone.free_pages(pfn, order);
            debug_assert!(freed.is_ok(), "frame {pfn} was allocated from the zone");
            a.nr_used -= 1 << order;
            return;
        }
        a.nr_used -= 1;
        a.pcp.push(pfn);
        if a.pcp.len() > self.pcp_high {
            let batch = self.pcp_batch.min(a.pcp.len());
            let mut oldest = std::mem::take(&mut a.scratch);
            oldest.clear();
            oldest.extend(a.pcp.drain(..batch));
            self.drain(a, &mut oldest);
            a.scratch = oldest;
        }
    }

    /// Give frames back to the OS, one madvise per run of adjacent pfns.
    fn drain(&self, a: &mut Alloc, pfns: &mut [u32]) {
        if pfns.is_empty() {
            return;
        }
        pfns.sort_unstable();
        let mut start = pfns[0];
        let mut prev = start;
        for &pfn in &pfns[1..] {
            if pfn != prev + 1 {
                self.dontneed(start as usize, (prev + 1 - start) as usize);
                start = pfn;
            }
            prev = pfn;
        }
        self.dontneed(start as usize, (prev + 1 - start) as usize);
        for &pfn in pfns.iter() {
            a.free.push(Reverse(pfn));
        }
        a.ev[NR_DRAINED] += pfns.len() as u64;
    }

    pub(super) fn dontneed(&self, pfn: usize, count: usize) {
        debug_assert!(pfn + count <= self.capacity);
        // SAFETY: the frames lie inside the arena (pfn + count <= capacity)
        // and are free: no owner reads them, and MADV_DONTNEED only turns
        // them into zero pages.
        unsafe {
            libc::madvise(
                self.arena.as_ptr().add(pfn << PAGE_SHIFT).cast(),
                count << PAGE_SHIFT,
                libc::MADV_DONTNEED,
            );
        }
    }

    /// Give every frame of the hot list back to the OS, then lower the
    /// high-water mark over the free frames at the top.  Returns the frames
    /// drained.
    pub fn drain_pages(&self) -> usize {
        let n = {
            let mut a = self.alloc.lock();
            let mut hot = std::mem::take(&mut a.pcp);
            let n = hot.len();
            self.drain(&mut a, &mut hot);
            hot.clear();
            a.pcp = hot;
            n
        };
        self.shrink_arena();
        n
    }

    /// Lower the high-water mark to just above the highest frame in use;
    /// returns how many free frames were dropped.
    pub fn shrink_arena(&self) -> usize {
        let dropped = {
            let _held = self.populate.lock(); // no madvise faults in what this gives back
            self.shrink_arena_locked(&mut self.alloc.lock())
        };
        if dropped >= TRIM_HEAP_FRAMES {
            trim_process_heap(); // the shrunk descriptor table and frame heap left free heap memory
        }
        dropped
    }

    fn shrink_arena_locked(&self, a: &mut Alloc) -> usize {
        if a.zone.is_some() {
            return 0; // a zone keeps its frames
        }
        let mut new_hwm = a.hwm;
        while new_hwm > 0 && self.desc(new_hwm as u32 - 1).refcount.load(Relaxed) <= 0 {
            new_hwm -= 1;
        }
        if new_hwm == a.hwm {
            return 0;
        }
        let mut resident: Vec<u32> = a.pcp.iter().copied().filter(|&p| p as usize >= new_hwm).collect();
        if !resident.is_empty() {
            self.drain(a, &mut resident);
            a.pcp.retain(|&p| (p as usize) < new_hwm);
        }
        let kept: Vec<Reverse<u32>> = a.free.drain().filter(|&Reverse(p)| (p as usize) < new_hwm).collect();
        a.free = BinaryHeap::from(kept);
        let dropped = a.hwm - new_hwm;
        // the frames faulted in ahead of the old mark go too
        self.dontneed(new_hwm, a.hwm.max(a.populated) - new_hwm);
        a.hwm = new_hwm;
        a.populated = new_hwm;
        a.populate_gen += 1;
        self.descs.release_from(new_hwm);
        dropped
    }

    /// The lowest free frame (hot or cold), or the high-water mark.
    pub(super) fn lowest_free(&self) -> usize {
        let a = self.alloc.lock();
        let hot = a.pcp.iter().copied().min();
        let cold = a.free.peek().map(|&Reverse(p)| p);
        hot.into_iter().chain(cold).min().map_or(a.hwm, |p| p as usize)
    }

    /// Copies of the flags and refcounts of `[start, end)`, clamped to the
    /// high-water mark, under the allocator lock.
    pub fn descriptor_snapshot(&self, start: usize, end: Option<usize>) -> (usize, Vec<(u8, i32)>) {
        let a = self.alloc.lock();
        let end = end.map_or(a.hwm, |e| e.min(a.hwm));
        let start = start.min(end);
        let descs = (start..end)
            .map(|p| {
                let d = self.desc(p as u32);
                (d.flags.load(Relaxed), d.refcount.load(Relaxed))
            })
            .collect();
        (start, descs)
    }

    /// In-use frames in `[start, end)` below the high-water mark.
    pub fn in_use_in(&self, start: usize, end: usize) -> Vec<u32> {
        let a = self.alloc.lock();
        (start..end.min(a.hwm))
            .filter(|&p| self.desc(p as u32).refcount.load(Relaxed) > 0)
            .map(|p| p as u32)
            .collect()
    }

    pub fn page_in_use(&self, pfn: u32) -> bool {
        let a = self.alloc.lock();
        (pfn as usize) < a.hwm && self.desc(pfn).refcount.load(Relaxed) > 0
    }

    /// The pfns of all frames in use, ascending.
    pub fn used_pfns(&self) -> Vec<u32> {
        let a = self.alloc.lock();
        (0..a.hwm as u32).filter(|&p| self.desc(p).refcount.load(Relaxed) > 0).collect()
    }

    // ------------------------------------------------------------------
    // fault injection

    /// Fail the next `next_n` allocations, then each with `probability`.
    ///
    /// The engine draws with its own generator (SplitMix64 from `seed`), so a
    /// probability gives other failures than the model's `random.Random`;
    /// `next_n` behaves the same in both.
    pub fn inject_failures(&self, next_n: u64, probability: f64, seed: u64) -> Result<(), MmError> {
        if !(0.0..=1.0).contains(&probability) {
            return Err(MmError::Invalid("next_n must be >= 0 and probability within [0, 1]".into()));
        }
        let mut a = self.alloc.lock();
        a.fail_next = next_n;
        a.fail_probability = probability;
        a.rng = seed;
        Ok(())
    }

    // ------------------------------------------------------------------
    // the page lock (PG_locked) and flags

    pub fn trylock_page(&self, pfn: u32) -> bool {
        self.desc(pfn).flags.fetch_or(PG_LOCKED, Acquire) & PG_LOCKED == 0
    }

    /// Sleep until the page lock is ours; false only if `timeout` ran out.
    pub fn lock_page(&self, pfn: u32, timeout: Option<Duration>) -> Result<bool, MmError> {
        self.wait_page(pfn, timeout, true, "lock_page")
    }

    /// Sleep until the page is unlocked, without taking the lock.
    pub fn wait_on_page_locked(&self, pfn: u32, timeout: Option<Duration>) -> Result<bool, MmError> {
        self.wait_page(pfn, timeout, false, "wait_on_page_locked")
    }

    fn wait_page(
        &self,
        pfn: u32,
        timeout: Option<Duration>,
        take: bool,
        call: &str,
    ) -> Result<bool, MmError> {
        let ready = |m: &Memory| {
            if take {
                m.trylock_page(pfn)
            } else {
                m.desc(pfn).flags.load(SeqCst) & PG_LOCKED == 0
            }
        };
        if ready(self) {
            return Ok(true);
        }
        if !self.sleep_on_page_lock {
            return Err(MmError::WouldSleep(format!("{call}({pfn}) would sleep: the page is locked")));
        }
        // Registered as a waiter, look at the page with a release RMW on its
        // flags (taking the lock, or or-ing in nothing): whoever clears
        // PG_LOCKED does it with an RMW that reads from ours or a later one,
        // so it sees our registration when it loads page_waiters.  With an
        // acquire-only trylock or a plain load here, the memory model lets
        // the unlocker read no waiter while we still read the page locked
        // (the store-buffering pattern): a lost wake-up, found by the loom
        // models.  Only the sleeping path pays for it.
        let ready_registered = |m: &Memory| {
            let bit = if take { PG_LOCKED } else { 0 };
            m.desc(pfn).flags.fetch_or(bit, AcqRel) & PG_LOCKED == 0
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut guard = self.page_wait.lock();
        self.page_waiters.fetch_add(1, SeqCst);
        let ok = loop {
            if ready_registered(self) {
                break true;
            }
            match deadline {
                None => self.page_cond.wait(&mut guard),
                Some(d) => {
                    if self.page_cond.wait_until(&mut guard, d).timed_out() {
                        break ready_registered(self);
                    }
                }
            }
        };
        self.page_waiters.fetch_sub(1, SeqCst);
        Ok(ok)
    }

    pub fn unlock_page(&self, pfn: u32) -> Result<(), MmError> {
        let old = self.desc(pfn).flags.fetch_and(!PG_LOCKED, SeqCst);
        if old & PG_LOCKED == 0 {
            return Err(MmError::PageState(format!("unlock_page of unlocked frame {pfn}")));
        }
        self.wake_page_waiters();
        Ok(())
    }

    pub(super) fn wake_page_waiters(&self) {
        if self.page_waiters.load(SeqCst) > 0 {
            let _g = self.page_wait.lock();
            self.page_cond.notify_all();
        }
    }

    /// Trylock every page, all or none (the kernel's `trylock_zspage`: each
    /// page with `trylock_page`, and on the first busy one the pages already
    /// taken are unlocked again).
    ///
    /// Each page is taken with one atomic test-and-set, never checked first
    /// and set after: `trylock_page` and `lock_page` take a page lock without
    /// the allocator lock, so a VM thread could take the lock between a check
    /// and a set, and both would believe they held it (found by the loom
    /// model of the seed race: the pool destroyed a zspage under the VM's
    /// page lock).
    pub fn trylock_pages(&self, pfns: &[u32]) -> bool {
        let taken = {
            let _a = self.alloc.lock();
            let mut taken = 0;
            while taken < pfns.len() && self.trylock_page(pfns[taken]) {
                taken += 1;
            }
            if taken == pfns.len() {
                return true;
            }
            for &p in &pfns[..taken] {
                self.desc(p).flags.fetch_and(!PG_LOCKED, SeqCst);
            }
            taken
        };
        if taken > 0 {
            // someone may have begun to wait on a page we held for a moment
            self.wake_page_waiters();
        }
        false
    }

    pub fn page_flags(&self, pfn: u32) -> u8 {
        self.desc(pfn).flags.load(Relaxed)
    }

    /// Set or clear flag bits other than PG_locked.
    pub fn set_flags(&self, pfn: u32, bits: u8, on: bool) -> Result<(), MmError> {
        if bits & PG_LOCKED != 0 {
            return Err(MmError::PageState(
                "take the page lock with lock_page or trylock_page, release it with unlock_page".into(),
            ));
        }
        let f = &self.desc(pfn).flags;
        if on {
            f.fetch_or(bits, Release);
        } else {
            f.fetch_and(!bits, Release);
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // movable pages: the owner side

    /// Register an owner's movable-page callbacks; returns the id to pass
    /// to `set_pages_movable` (at most 255 owners on one Memory).
    pub fn register_movable_ops(&self, ops: Weak<dyn MovableOps>) -> Result<u8, MmError> {
        let mut owners = self.owners.write();
        if owners.len() >= MAX_OWNERS {
            return Err(MmError::Invalid("too many movable-page owners on one Memory".into()));
        }
        owners.push(Some(ops));
        Ok((owners.len() - 1) as u8)
    }

    pub fn unregister_movable_ops(&self, id: u8) {
        if let Some(slot) = self.owners.write().get_mut(id as usize) {
            *slot = None;
        }
    }

    /// The callbacks of the owner that marked `pfn` movable, if it still lives.
    pub(super) fn ops_of(&self, pfn: u32) -> Option<Arc<dyn MovableOps>> {
        let id = self.desc(pfn).movable_ops.load(Relaxed) as usize;
        self.owners.read().get(id)?.as_ref()?.upgrade()
    }

    /// `__SetPageMovable` on each of an owner's new pages: in use, unlocked
    /// (a PFN walker's passing reference may make the refcount above one).
    pub fn set_pages_movable(&self, pfns: &[u32], ops_id: u8) -> Result<(), MmError> {
        let _a = self.alloc.lock();
        for &p in pfns {
            let d = self.desc(p);
            if d.flags.load(Relaxed) & PG_LOCKED != 0 || d.refcount.load(Relaxed) < 1 {
                return Err(MmError::PageState(format!("new page {p} is locked or free")));
            }
        }
        for &p in pfns {
            let d = self.desc(p);
            d.movable_ops.store(ops_id, Relaxed);
            d.flags.fetch_or(PG_MOVABLE, Release);
        }
        Ok(())
    }

    /// `__SetPageMovable` on one page (the destination of a migration).
    pub fn set_page_movable(&self, pfn: u32, ops_id: u8) {
        let d = self.desc(pfn);
        d.movable_ops.store(ops_id, Relaxed);
        d.flags.fetch_or(PG_MOVABLE, Release);
    }

    /// The owner forgets the page: owner words and PG_movable cleared.
    pub fn reset_page(&self, pfn: u32) {
        let d = self.desc(pfn);
        d.flags.fetch_and(!PG_MOVABLE, Release);
        d.reset_owner_words();
    }

    /// The owner is done with these locked pages: per page `reset_page`,
    /// `unlock_page`, `put_page`.  A page the VM still holds stays allocated
    /// until the VM drops its reference; `keep_descriptor` pages (only the
    /// broken 2016-v3 protocol asks for it) keep their owner words.
    pub fn unlock_and_free_pages(&self, pfns: &[u32], keep_descriptor: &[u32]) -> Result<(), MmError> {
        {
            let mut a = self.alloc.lock();
            for &p in pfns {
                self.check_pfn(p, &a)?;
                let d = self.desc(p);
                if d.flags.load(Relaxed) & PG_LOCKED == 0 {
                    return Err(MmError::PageState(format!(
                        "unlock_and_free_pages: frame {p} is not locked"
                    )));
                }
                if d.refcount.load(Relaxed) <= 0 {
                    return Err(MmError::PageState(format!("unlock_and_free_pages: frame {p} is free")));
                }
            }
            for &p in pfns {
                let d = self.desc(p);
                let count = d.refcount.load(Relaxed) - 1;
                d.refcount.store(count, Relaxed);
                if count == 0 {
                    self.release_frame(&mut a, p);
                } else if keep_descriptor.contains(&p) {
                    d.flags.fetch_and(!PG_LOCKED, SeqCst);
                } else {
                    d.flags.fetch_and(!(PG_LOCKED | PG_MOVABLE), SeqCst);
                    d.reset_owner_words();
                }
            }
        }
        self.wake_page_waiters();
        Ok(())
    }

    /// The allocator lock, for a caller that reads many descriptors at once
    /// and must see no frame change hands meanwhile (snapshots).
    pub fn hold(&self) -> MemoryHold<'_> {
        MemoryHold { guard: self.alloc.lock() }
    }

    // ------------------------------------------------------------------
    // arena bytes
    //
    // Every access is bounds-checked against the arena.  The engine's own
    // accesses are ordered by its locks (the class lock for headers and free
    // links, the pool lock for object bytes against migration and
    // compaction); two callers writing one object at once race only on
    // that object's bytes, as with any allocator's memory.

    #[inline]
    fn span(&self, addr: usize, len: usize) -> *mut u8 {
        assert!(addr <= self.capacity << PAGE_SHIFT && len <= (self.capacity << PAGE_SHIFT) - addr);
        // SAFETY: [addr, addr + len) lies inside the arena (asserted above).
        unsafe { self.arena.as_ptr().add(addr) }
    }

    /// The 8-byte word at arena address `addr` (8-aligned: object headers).
    #[inline]
    pub fn word(&self, addr: usize) -> &ArenaWord {
        assert!(addr % 8 == 0);
        // SAFETY: in bounds (span), 8-aligned (asserted; the arena is
        // page-aligned), and AtomicU64 has the layout of u64; the arena
        // lives as long as `self`.
        unsafe { &*self.span(addr, 8).cast::<ArenaWord>() }
    }

    /// A hint that `len` arena bytes at `addr` are about to be written: the
    /// cache lines are fetched while the caller does other work.
    #[inline]
    pub fn prefetch_write(&self, addr: usize, len: usize) {
        #[cfg(target_arch = "x86_64")]
        self.prefetch::<{ std::arch::x86_64::_MM_HINT_ET0 }>(addr, len);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = self.span(addr, len);
    }

    /// A hint that `len` arena bytes at `addr` are about to be read.
    #[inline]
    pub fn prefetch_read(&self, addr: usize, len: usize) {
        #[cfg(target_arch = "x86_64")]
        self.prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr, len);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = self.span(addr, len);
    }

    /// Prefetch every cache line of `len` arena bytes at `addr` with `HINT`.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn prefetch<const HINT: i32>(&self, addr: usize, len: usize) {
        let start = self.span(addr, len) as usize;
        for line in (start & !63..start + len).step_by(64) {
            // SAFETY: a prefetch is only a hint: it never faults, whatever the
            // address, and the lines lie inside the arena anyway.
            unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(line as *const i8) }
        }
    }

    /// Copy `src` into the arena at `addr`.
    #[inline]
    pub fn copy_in(&self, addr: usize, src: &[u8]) {
        let dst = self.span(addr, src.len());
        // SAFETY: dst is in bounds for src.len() bytes, and the arena never
        // overlaps a caller's Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    /// Copy arena bytes at `addr` into `dst`.
    #[inline]
    pub fn copy_out(&self, addr: usize, dst: &mut [u8]) {
        let src = self.span(addr, dst.len());
        // SAFETY: src is in bounds for dst.len() bytes; no overlap, as above.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) }
    }

    /// `len` arena bytes at `addr`, borrowed.
    ///
    /// # Safety
    /// Nothing may write those bytes while the slice lives (for an object:
    /// its owner makes no write, and the pool lock keeps migration and
    /// compaction away).
    #[inline]
    pub unsafe fn bytes(&self, addr: usize, len: usize) -> &[u8] {
        // SAFETY: in bounds (span) and alive as long as `self`; no writer,
        // by the caller's contract
        unsafe { std::slice::from_raw_parts(self.span(addr, len), len) }
    }

    /// Copy one whole frame onto another.
    pub fn copy_page(&self, dst: u32, src: u32) {
        let d = self.span((dst as usize) << PAGE_SHIFT, PAGE_SIZE);
        let s = self.span((src as usize) << PAGE_SHIFT, PAGE_SIZE);
        if d != s {
            // SAFETY: two distinct whole frames inside the arena.
            unsafe { std::ptr::copy_nonoverlapping(s, d, PAGE_SIZE) }
        }
    }

    /// Raw pointer to `len` arena bytes at `addr`, for a buffer export
    /// whose owner keeps the Memory alive (and, for a mapping, the object
    /// pinned).
    pub fn raw(&self, addr: usize, len: usize) -> *const u8 {
        self.span(addr, len)
    }

    /// Give the whole arena back to the OS; frames read as zero afterwards.
    pub fn close(&self) {
        if self.closed.swap(true, SeqCst) {
            return;
        }
        let mut a = self.alloc.lock();
        a.pcp.clear();
        self.dontneed(0, self.capacity);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: the arena was mapped with this length in `new`, and every
        // borrower holds the Memory (an Arc) for as long as it reads it.
        unsafe {
            libc::munmap(self.arena.as_ptr().cast(), self.capacity << PAGE_SHIFT);
        }
    }
}

/// The allocator lock held: no frame changes hands while this lives.
pub struct MemoryHold<'a> {
    guard: MutexGuard<'a, Alloc>,
}

impl MemoryHold<'_> {
    pub fn hwm(&self) -> usize {
        self.guard.hwm
    }
    pub fn nr_used(&self) -> usize {
        self.guard.nr_used
    }
}

impl Memory {
    /// A fresh frame (never used, or given back) is about to be written:
    /// take it with the next POPULATE_AHEAD frames to fault in with one
    /// madvise once the allocator lock is dropped (`populate`), rather
    /// than one page fault each (the faults were a fifth of zram's write
    /// path on a growing pool).  At most POPULATE_AHEAD - 1 frames are
    /// resident before their use; `shrink_arena` gives them back.
    fn populate_ahead(&self, a: &mut Alloc, pfn: usize) {
        if pfn < a.populated || !a.can_populate {
            return;
        }
        let to = (pfn + POPULATE_AHEAD).min(self.capacity);
        // the ranges of one hold come in ascending order: one madvise covers them
        let from = a.ahead.filter(|r| r.gen == a.populate_gen).map_or(pfn, |r| r.from);
        a.ahead = Some(Ahead { from, to, gen: a.populate_gen });
        a.populated = to;
    }

    /// Fault in the frames `populate_ahead` took, without the allocator lock,
    /// unless a `shrink_arena` gave them back meanwhile.
    fn populate(&self, ahead: Option<Ahead>) {
        let Some(r) = ahead else { return };
        let _held = self.populate.lock();
        if self.alloc.lock().populate_gen != r.gen {
            return;
        }
        // SAFETY: [from, to) lies inside the arena (to <= capacity).  Its
        // frames are free or handed out; MADV_POPULATE_WRITE only faults in
        // pages not yet present, as the zero pages they already read as, and
        // leaves present ones (and what their owners write meanwhile) alone.
        // No shrink_arena gives them back while we hold `populate`.
        let rc = unsafe {
            libc::madvise(
                self.arena.as_ptr().add(r.from << PAGE_SHIFT).cast(),
                (r.to - r.from) << PAGE_SHIFT,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc != 0 {
            self.alloc.lock().can_populate = false;
        }
    }
}

/// Frames faulted in at once by `populate_ahead` (64 KiB).
const POPULATE_AHEAD: usize = 16;

fn take_hwm_frame(a: &mut Alloc) -> u32 {
    let pfn = a.hwm as u32;
    a.hwm += 1;
    pfn
}

fn allowed(excluded: &[(usize, usize)], pfn: u32, lo: usize, hi: usize) -> bool {
    let p = pfn as usize;
    lo <= p && p < hi && !excluded.iter().any(|&(s, e)| s <= p && p < e)
}

/// The lowest free frame in `[lo, hi)` outside the excluded ranges.
fn take_frame_in(a: &mut Alloc, lo: usize, mut hi: usize, capacity: usize) -> Option<(u32, Source)> {
    let mut best: Option<usize> = None;
    for (i, &pfn) in a.pcp.iter().enumerate() {
        if allowed(&a.excluded, pfn, lo, hi) && best.is_none_or(|b| pfn < a.pcp[b]) {
            best = Some(i);
        }
    }
    let cold_min = a.free.peek().map(|&Reverse(p)| p);
    if let Some(b) = best {
        if cold_min.is_none_or(|c| c >= a.pcp[b]) {
            return Some((a.pcp.remove(b), Source::Hot));
        }
        hi = a.pcp[b] as usize;
    }
    let mut rejected: Vec<u32> = Vec::new();
    let mut found = None;
    while let Some(&Reverse(cand)) = a.free.peek() {
        if cand as usize >= hi {
            break;
        }
        a.free.pop();
        if allowed(&a.excluded, cand, lo, hi) {
            found = Some(cand);
            break;
        }
        rejected.push(cand);
    }
    for cand in rejected {
        a.free.push(Reverse(cand));
    }
    if let Some(pfn) = found {
        return Some((pfn, Source::Cold));
    }
    if let Some(b) = best {
        return Some((a.pcp.remove(b), Source::Hot));
    }
    while a.hwm < hi.min(capacity) {
        let pfn = take_hwm_frame(a);
        if allowed(&a.excluded, pfn, lo, hi) {
            return Some((pfn, Source::Fresh));
        }
        a.free.push(Reverse(pfn));
    }
    None
}

/// SplitMix64, as a uniform draw in [0, 1).
fn next_unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

// the unit tests run real threads on std's atomics: not under loom (tests/loom.rs)
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn mem(cap: usize) -> Memory {
        Memory::new(cap, PCP_HIGH, PCP_BATCH).unwrap()
    }

    #[test]
    fn hot_list_is_lifo_and_heap_lowest_first() {
        let m = mem(1000);
        let pfns: Vec<u32> = (0..200).map(|_| m.alloc_page().unwrap()).collect();
        assert_eq!(pfns[..3], [0, 1, 2]);
        m.put_page(5).unwrap();
        m.put_page(7).unwrap();
        assert_eq!(m.alloc_page().unwrap(), 7);
        assert_eq!(m.alloc_page().unwrap(), 5);
        for p in 0..100 {
            m.put_page(p).unwrap();
        }
        // 100 freed: the hot list passed 64, its oldest 32 went to the heap (twice: 0..32, 32..64)
        let s = m.stats();
        assert_eq!(s.events[NR_DRAINED], 64);
        assert_eq!(s.nr_pcp, 36);
        assert_eq!(m.alloc_page().unwrap(), 99);
    }

    #[test]
    fn failed_alloc_pages_changes_nothing_but_the_fail_count() {
        let m = mem(10);
        let mut four = [0u32; 4];
        m.alloc_pages(&mut four).unwrap();
        m.put_page(2).unwrap();
        let before = m.stats();
        let mut eight = [0u32; 8];
        assert!(m.alloc_pages(&mut eight).is_err());
        let after = m.stats();
        assert_eq!(after.hwm, before.hwm);
        assert_eq!(after.nr_used, before.nr_used);
        assert_eq!(after.events[NR_ALLOC_FAIL], 1);
        assert_eq!(m.alloc_page().unwrap(), 2);
    }

    #[test]
    fn alloc_pages_of_any_count() {
        let m = mem(100);
        let mut many = [0u32; 40];
        m.alloc_pages(&mut many).unwrap();
        assert_eq!(m.stats().nr_used, 40);
        let mut more = [0u32; 70];
        assert!(m.alloc_pages(&mut more).is_err());
        assert_eq!(m.stats().nr_used, 40);
    }

    #[test]
    fn page_lock_wakes_sleeper() {
        let m = std::sync::Arc::new(mem(4));
        let p = m.alloc_page().unwrap();
        assert!(m.trylock_page(p));
        assert!(!m.trylock_page(p));
        let m2 = m.clone();
        let t = std::thread::spawn(move || m2.lock_page(p, Some(Duration::from_secs(10))).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        m.unlock_page(p).unwrap();
        assert!(t.join().unwrap());
        assert!(m.unlock_page(p).is_ok());
        assert!(m.unlock_page(p).is_err());
    }

    #[test]
    fn excluded_range_is_skipped() {
        let m = mem(64);
        m.exclude_range(0, 4).unwrap();
        assert_eq!(m.alloc_page().unwrap(), 4);
        m.unexclude_range(0, 4).unwrap();
        assert_eq!(m.alloc_page().unwrap(), 0);
    }

    /// The arena's frames that are resident (mincore).
    fn resident(m: &Memory) -> usize {
        let mut vec = vec![0u8; m.capacity()];
        // SAFETY: the arena is mapped for capacity frames; mincore writes
        // one byte per page into a vector of that many
        let rc = unsafe {
            libc::mincore(m.arena.as_ptr().cast(), m.capacity() << PAGE_SHIFT, vec.as_mut_ptr().cast())
        };
        assert_eq!(rc, 0);
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn populate_ahead_faults_frames_in_and_shrink_gives_them_back() {
        let m = mem(4 * POPULATE_AHEAD);
        assert_eq!(resident(&m), 0);
        let p = m.alloc_page().unwrap();
        if !m.alloc.lock().can_populate {
            return; // a kernel before 5.14: no MADV_POPULATE_WRITE, nothing ahead
        }
        // one frame handed out, the next ones faulted in with it
        assert_eq!(resident(&m), POPULATE_AHEAD);
        m.put_page(p).unwrap();
        m.drain_pages();
        assert_eq!(m.hwm(), 0);
        assert_eq!(resident(&m), 0, "the frames faulted in ahead went back with the arena's top");
    }

    #[test]
    fn frames_taken_to_fault_in_before_a_shrink_are_not_faulted_in_after_it() {
        let m = mem(4 * POPULATE_AHEAD);
        let (p, ahead) = {
            let mut a = m.alloc.lock();
            let (p, _) = m.alloc_frame(&mut a, 0, None, MigrateType::Movable).unwrap();
            (p, a.ahead.take())
        };
        if !m.alloc.lock().can_populate {
            return; // a kernel before 5.14: nothing taken ahead
        }
        assert_eq!(ahead.map(|r| (r.from, r.to)), Some((0, POPULATE_AHEAD)));
        m.put_page(p).unwrap();
        m.drain_pages(); // the mark goes back to 0: the range is stale
        m.populate(ahead);
        assert_eq!(resident(&m), 0);
        // a range taken and populated now is faulted in
        let p = m.alloc_page().unwrap();
        assert_eq!(resident(&m), POPULATE_AHEAD);
        m.put_page(p).unwrap();
    }

    #[test]
    fn shrink_arena_lowers_hwm() {
        let m = mem(64);
        let pfns: Vec<u32> = (0..10).map(|_| m.alloc_page().unwrap()).collect();
        for &p in &pfns[3..] {
            m.put_page(p).unwrap();
        }
        assert_eq!(m.shrink_arena(), 7);
        assert_eq!(m.hwm(), 3);
        assert_eq!(m.alloc_page().unwrap(), 3);
    }
}
