//! The migration core: isolate, migrate and put back movable pages
//! (mm/migrate.c).  The model's counterpart is `zsmalloc/mm/migrate.py`,
//! decision for decision.
//!
//! The VM moves an owner's page without knowing what is in it.  The owner
//! marks the page movable with its [`MovableOps`]:
//!
//! ```text
//!   isolate(pfn, mode) -> bool        page locked by the VM; may refuse
//!   migrate(dst, src, mode) -> i32    both pages locked: MIGRATEPAGE_SUCCESS,
//!                                     or -EAGAIN ("busy, retry later")
//!   putback(pfn)                      page locked; the VM gave up on it
//! ```
//!
//! Life of one page through `move_pages`:
//!
//! ```text
//!   isolate_movable_page(pfn)   get_page, trylock, PG_movable and not
//!          |                    PG_isolated?, owner.isolate(), PG_isolated,
//!          |                    UNLOCK  <- the window of the 2016 race
//!          v
//!   migrate_pages([pfn])        per pass: lock (trylock when async); the
//!          |                    owner let go (refcount 1)? done; allocate
//!          |                    dst, lock it, owner.migrate(dst, src);
//!          |                    -EAGAIN: the next pass
//!          v
//!   putback_movable_page(pfn)   what could not move: lock, owner.putback()
//!                               if still the owner's, clear PG_isolated, put
//! ```
//!
//! Isolation takes a reference on the page, so a page its owner frees while
//! isolated stays allocated until the VM drops it; the destination page's
//! allocation reference is the VM's, and the owner takes its own.
//!
//! Names: `isolate_movable_page` is `isolate_movable_ops_page` since 6.17,
//! and PG_isolated is `PageMovableOpsIsolated`.

use std::time::Duration;

use crate::sync::AtomicU64;
use crate::sync::Ordering::Relaxed;

use super::memory::{Memory, MmError, PG_ISOLATED, PG_LOCKED, PG_MOVABLE};

pub const MIGRATEPAGE_SUCCESS: i32 = 0;
pub const EAGAIN: i32 = -11;
pub const ENOMEM: i32 = -12;
/// The kernel's NR_MAX_MIGRATE_PAGES_RETRY.
pub const NR_MIGRATE_PASSES: usize = 10;

/// How hard the VM tries: async never sleeps on a page lock, sync does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrateMode {
    Async = 0,
    SyncLight = 1,
    Sync = 2,
}

/// What an owner of movable pages provides (`struct movable_operations`).
pub trait MovableOps: Send + Sync {
    fn isolate(&self, mem: &Memory, pfn: u32, mode: MigrateMode) -> bool;
    fn migrate(&self, mem: &Memory, dst: u32, src: u32, mode: MigrateMode) -> i32;
    fn putback(&self, mem: &Memory, pfn: u32);
}

/// Where destination frames are taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// wherever the allocator hands out next
    Anywhere,
    /// the lowest free frame in `[lo, hi)`
    Range(usize, usize),
    /// the lowest free frame below the source (compaction)
    Below,
    /// the free frames the zone compaction's free scanner captured
    /// (`compaction_alloc`); none left is -ENOMEM
    Captured,
}

/// What one `migrate_pages` / `move_pages` / `evacuate` / `compact` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrateResult {
    pub succeeded: usize,
    pub failed: usize,
    pub retried: usize,
    /// (src, dst) of every page moved, in order
    pub moved: Vec<(u32, u32)>,
    pub failed_pfns: Vec<u32>,
}

impl MigrateResult {
    pub fn merge(&mut self, other: MigrateResult) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.retried += other.retried;
        self.moved.extend(other.moved);
        self.failed_pfns.extend(other.failed_pfns);
    }
}

/// Migration and compaction events, as the model's ``Memory.vmstat``.
#[derive(Default)]
pub struct VmStat {
    counters: [AtomicU64; VMSTAT_EVENTS.len()],
}

pub const VMSTAT_EVENTS: [&str; 10] = [
    "isolate_success",
    "isolate_fail",
    "putback",
    "pgmigrate_success",
    "pgmigrate_fail",
    "pgmigrate_nomem",
    "pgmigrate_released",
    "evacuate_runs",
    "compact_runs",
    "compact_pages_moved",
];

#[derive(Clone, Copy)]
pub enum Event {
    IsolateSuccess = 0,
    IsolateFail = 1,
    Putback = 2,
    PgmigrateSuccess = 3,
    PgmigrateFail = 4,
    PgmigrateNomem = 5,
    PgmigrateReleased = 6,
    EvacuateRuns = 7,
    CompactRuns = 8,
    CompactPagesMoved = 9,
}

impl VmStat {
    pub fn add(&self, e: Event, n: usize) {
        self.counters[e as usize].fetch_add(n as u64, Relaxed);
    }
    pub fn values(&self) -> [u64; VMSTAT_EVENTS.len()] {
        std::array::from_fn(|i| self.counters[i].load(Relaxed))
    }
}

impl Memory {
    fn set_isolated(&self, pfn: u32, on: bool) {
        let f = &self.desc(pfn).flags;
        if on {
            f.fetch_or(PG_ISOLATED, Relaxed);
        } else {
            f.fetch_and(!PG_ISOLATED, Relaxed);
        }
    }

    /// Take a movable page from its owner for migration
    /// (`isolate_movable_page`).  On success the page is PG_isolated,
    /// unlocked, and the VM holds a reference: pass it to `migrate_pages`
    /// or `putback_movable_page`.
    pub fn isolate_movable_page(&self, pfn: u32, mode: MigrateMode) -> bool {
        {
            // get_page_unless_zero
            let a = self.alloc.lock();
            let rc = &self.desc(pfn).refcount;
            if pfn as usize >= a.hwm || rc.load(Relaxed) <= 0 {
                self.vmstat.add(Event::IsolateFail, 1);
                return false;
            }
            rc.store(rc.load(Relaxed) + 1, Relaxed);
        }
        let mut ok = false;
        if self.page_flags(pfn) & PG_MOVABLE != 0 && self.trylock_page(pfn) {
            let flags = self.page_flags(pfn);
            if flags & PG_MOVABLE != 0 && flags & PG_ISOLATED == 0 {
                if let Some(ops) = self.ops_of(pfn) {
                    ok = ops.isolate(self, pfn, mode);
                    if ok {
                        self.set_isolated(pfn, true);
                    }
                }
            }
            let _ = self.unlock_page(pfn); // ours: it was locked just above
        }
        if !ok {
            let _ = self.put_page(pfn); // the reference taken above
            self.vmstat.add(Event::IsolateFail, 1);
            return false;
        }
        self.vmstat.add(Event::IsolateSuccess, 1);
        true
    }

    /// Give an isolated page back to its owner (`putback_movable_pages`).
    pub fn putback_movable_page(&self, pfn: u32) -> Result<(), MmError> {
        if self.page_flags(pfn) & PG_ISOLATED == 0 {
            return Err(MmError::PageState(format!("putback of frame {pfn}, which is not isolated")));
        }
        self.lock_page(pfn, None)?;
        if self.page_flags(pfn) & PG_MOVABLE != 0 {
            if let Some(ops) = self.ops_of(pfn) {
                ops.putback(self, pfn);
            }
        }
        self.set_isolated(pfn, false);
        self.unlock_page(pfn)?;
        self.put_page(pfn)?;
        self.vmstat.add(Event::Putback, 1);
        Ok(())
    }

    /// Move isolated pages to new frames (`migrate_pages`).  A page whose
    /// owner answers -EAGAIN is retried in the next pass, up to `passes`;
    /// what could not move is put back when `putback`, else it stays
    /// isolated and is listed in `failed_pfns`.
    pub fn migrate_pages(
        &self,
        pfns: &[u32],
        mode: MigrateMode,
        target: Target,
        passes: usize,
        putback: bool,
        lock_timeout: Option<Duration>,
    ) -> Result<MigrateResult, MmError> {
        for &pfn in pfns {
            if pfn as usize >= self.capacity() || self.page_flags(pfn) & PG_ISOLATED == 0 {
                return Err(MmError::PageState(format!("migrate_pages: frame {pfn} is not isolated")));
            }
        }
        let mut result = MigrateResult::default();
        let mut pending = pfns.to_vec();
        let mut retry = Vec::new();
        for _ in 0..passes {
            retry.clear();
            for &pfn in &pending {
                let (rc, dst) = self.unmap_and_move(pfn, mode, target, lock_timeout)?;
                match rc {
                    MIGRATEPAGE_SUCCESS => {
                        result.succeeded += 1;
                        if let Some(dst) = dst {
                            result.moved.push((pfn, dst));
                        }
                    }
                    EAGAIN => {
                        retry.push(pfn);
                        result.retried += 1;
                    }
                    _ => result.failed_pfns.push(pfn),
                }
            }
            std::mem::swap(&mut pending, &mut retry);
            if pending.is_empty() {
                break;
            }
        }
        result.failed_pfns.extend(pending);
        result.failed = result.failed_pfns.len();
        self.vmstat.add(Event::PgmigrateSuccess, result.succeeded);
        self.vmstat.add(Event::PgmigrateFail, result.failed);
        if putback {
            for &pfn in &result.failed_pfns {
                self.putback_movable_page(pfn)?;
            }
        }
        Ok(result)
    }

    /// One attempt at one page: (status, the destination if the page moved).
    fn unmap_and_move(
        &self,
        src: u32,
        mode: MigrateMode,
        target: Target,
        lock_timeout: Option<Duration>,
    ) -> Result<(i32, Option<u32>), MmError> {
        if self.release_if_freed(src) {
            return Ok((MIGRATEPAGE_SUCCESS, None));
        }
        let locked = if mode == MigrateMode::Async {
            self.trylock_page(src)
        } else {
            self.lock_page(src, lock_timeout)?
        };
        if !locked {
            return Ok((EAGAIN, None));
        }
        if self.desc(src).refcount.load(Relaxed) == 1 {
            // the owner let it go while we slept
            self.unlock_page(src)?;
            self.release_if_freed(src);
            return Ok((MIGRATEPAGE_SUCCESS, None));
        }
        let (lo, hi) = match target {
            Target::Anywhere | Target::Captured => (0, None),
            Target::Range(lo, hi) => (lo, Some(hi)),
            Target::Below => (0, Some(src as usize)),
        };
        let dst = if target == Target::Captured {
            self.take_captured(&mut self.alloc.lock())
        } else {
            self.alloc_one(lo, hi).ok()
        };
        let dst = match dst {
            Some(dst) => dst,
            None => {
                self.unlock_page(src)?;
                self.vmstat.add(Event::PgmigrateNomem, 1);
                return Ok((ENOMEM, None));
            }
        };
        if !self.trylock_page(dst) {
            return Err(MmError::PageState(format!("new frame {dst} is locked")));
        }
        let rc = match self.ops_of(src) {
            Some(ops) if self.page_flags(src) & PG_MOVABLE != 0 => ops.migrate(self, dst, src, mode),
            _ => MIGRATEPAGE_SUCCESS,
        };
        if rc == MIGRATEPAGE_SUCCESS {
            self.set_isolated(src, false);
        }
        self.unlock_page(dst)?;
        self.put_page(dst)?; // the allocation reference; an adopting owner took its own
        self.unlock_page(src)?;
        if rc == MIGRATEPAGE_SUCCESS {
            self.put_page(src)?; // the isolation reference: the frame is free now
            let adopted = self.desc(dst).refcount.load(Relaxed) > 0;
            return Ok((rc, adopted.then_some(dst)));
        }
        Ok((rc, None))
    }

    /// If only the VM still holds the page, its owner freed it: finish it off.
    fn release_if_freed(&self, pfn: u32) -> bool {
        let mut a = self.alloc.lock();
        let d = self.desc(pfn);
        if d.refcount.load(Relaxed) != 1 || d.flags.load(Relaxed) & PG_LOCKED != 0 {
            return false;
        }
        d.flags.fetch_and(!PG_ISOLATED, Relaxed);
        d.refcount.store(0, Relaxed);
        self.release_frame(&mut a, pfn);
        self.vmstat.add(Event::PgmigrateReleased, 1);
        true
    }

    /// Isolate, migrate, and put back what could not move, in one call.
    pub fn move_pages(
        &self,
        pfns: &[u32],
        mode: MigrateMode,
        target: Target,
        passes: usize,
    ) -> Result<MigrateResult, MmError> {
        let mut isolated = Vec::with_capacity(pfns.len());
        let mut refused = Vec::new();
        for &pfn in pfns {
            if (pfn as usize) < self.capacity() && self.isolate_movable_page(pfn, mode) {
                isolated.push(pfn);
            } else {
                refused.push(pfn);
            }
        }
        let mut result = self.migrate_pages(&isolated, mode, target, passes, true, None)?;
        result.failed += refused.len();
        result.failed_pfns.extend(refused);
        Ok(result)
    }

    /// In-use, movable, not isolated frames in `[start, end)`.
    pub fn movable_pfns(&self, start: usize, end: Option<usize>) -> Vec<u32> {
        let (start, descs) = self.descriptor_snapshot(start, end);
        descs
            .iter()
            .enumerate()
            .filter(|(_, &(f, rc))| f & (PG_MOVABLE | PG_ISOLATED) == PG_MOVABLE && rc > 0)
            .map(|(i, _)| (start + i) as u32)
            .collect()
    }
}
