//! Range evacuation and arena compaction (mm/compaction.c, memory
//! offlining, CMA), the two users of the migration core.  The model's
//! counterpart is `zsmalloc/mm/compaction.py`.
//!
//! `evacuate(start, end)` empties a pfn range: the allocator is kept out of
//! it, every movable page in it is isolated and migrated elsewhere, and
//! what could not move is reported.
//!
//! `compact()` runs the kernel's two scanners over the whole arena: the
//! migration scanner walks down from the top picking in-use movable pages,
//! and each batch moves below itself into the lowest free frames, while the
//! lowest free frame lies below the scanner.  Then the high-water mark drops
//! to just above the highest page in use:
//!
//! ```text
//!   before:  [U][.][U][.][.][U][.][U][U][.][U]        hwm = 11
//!   after:   [U][U][U][U][U][U][.][.][.][.][.]  ->  [U][U][U][U][U][U]   hwm = 6
//! ```
//!
//! `compact_zone(order, mt, mode)` is the kernel's own, on a zoned Memory:
//! a request of `order` failed, so move movable pages out of the bottom of
//! the zone into free pages at its top until a free block of that order
//! exists or the scanners meet.
//!
//! ```text
//!   pageblocks:  [ M ][ U ][ M ][ M ][ U ][ M ][ M ]
//!   migrate scanner ->  (in-use movable pages,        <- free scanner (free
//!   suitable source blocks, 32 at a time)             pages of movable blocks)
//! ```
//!
//! Each round isolates up to COMPACT_CLUSTER_MAX pages from one pageblock,
//! captures at least as many free pages from the top (split to order 0),
//! and migrates into them; a round ends on a pageblock boundary before
//! `compact_finished` looks for the free block.  Async direct compaction
//! only takes sources from pageblocks of the request's type (movable
//! requests from movable blocks); the sync modes take any.  Free
//! pageblocks are never broken up as targets.  Left out: the cached scanner
//! positions and pageblock skip bits, the fast free-page search, and
//! compaction of a block's high-order allocations (compound pages are
//! skipped, as the kernel skips them outside alloc_contig).

use super::memory::{trim_process_heap, Memory, MmError, PG_ISOLATED, PG_MOVABLE, TRIM_HEAP_FRAMES};
use super::migrate::{Event, MigrateMode, MigrateResult, Target, NR_MIGRATE_PASSES};
use super::zone::{MigrateType, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER, PAGE_ALLOC_COSTLY_ORDER};
use crate::sync::Ordering::Relaxed;

/// Pages isolated per round (the kernel's COMPACT_CLUSTER_MAX).
pub const COMPACT_BATCH: usize = 32;
/// `vm.extfrag_threshold`: a costly order whose fragmentation index is at most this
/// failed for want of memory, which compaction cannot give (`compaction_suitable`).
pub const EXTFRAG_THRESHOLD: i64 = 500;
/// Frames the migration scanner reads per hold of the allocator lock.
const SCAN_CHUNK: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvacuateResult {
    pub migrate: MigrateResult,
    /// in-use frames still in the range
    pub remaining: Vec<u32>,
}

/// How a `compact_zone` ended (`enum compact_result`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompactStatus {
    /// too few free pages to compact into: nothing was tried
    #[default]
    Skipped,
    /// the scanners met without making a free block of the order
    Complete,
    /// a free block of the order exists
    Success,
}

/// What one `compact_zone` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneCompactResult {
    pub status: CompactStatus,
    pub migrate: MigrateResult,
    /// pages isolated for migration and frames looked at by the migrate scanner
    pub migrate_isolated: usize,
    pub migrate_scanned: usize,
    /// free pages captured as targets and frames looked at by the free scanner
    pub free_isolated: usize,
    pub free_scanned: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactResult {
    pub migrate: MigrateResult,
    pub hwm_before: usize,
    pub hwm_after: usize,
    /// free frames above the new high-water mark given back
    pub released: usize,
}

impl Memory {
    /// Move every movable page out of `[start, end)`; the allocator stays
    /// out of the range meanwhile, and afterwards too if `keep_excluded`.
    pub fn evacuate(
        &self,
        start: usize,
        end: usize,
        mode: MigrateMode,
        keep_excluded: bool,
    ) -> Result<EvacuateResult, MmError> {
        let mut result = EvacuateResult::default();
        self.refuse_zoned("evacuate")?;
        self.exclude_range(start, end)?;
        let mut moved = Ok(());
        for _ in 0..3 {
            // pages busy in one round may move in the next
            let pfns = self.movable_pfns(start, Some(end));
            if pfns.is_empty() {
                break;
            }
            let isolated: Vec<u32> =
                pfns.into_iter().filter(|&p| self.isolate_movable_page(p, mode)).collect();
            match self.migrate_pages(&isolated, mode, Target::Anywhere, NR_MIGRATE_PASSES, true, None) {
                Ok(r) => result.migrate.merge(r),
                Err(e) => {
                    moved = Err(e);
                    break;
                }
            }
        }
        if !keep_excluded {
            self.unexclude_range(start, end)?;
        }
        moved?;
        result.remaining = self.in_use_in(start, end);
        self.vmstat.add(Event::EvacuateRuns, 1);
        Ok(result)
    }

    /// Move in-use movable frames down into free frames, then lower the
    /// high-water mark.
    pub fn compact(&self, mode: MigrateMode) -> Result<CompactResult, MmError> {
        self.refuse_zoned("compact (the arena's; a zone has compact_zone)")?;
        let mut result = CompactResult { hwm_before: self.hwm(), ..CompactResult::default() };
        let mut migrate_pfn = result.hwm_before as i64 - 1; // the migration scanner (cc->migrate_pfn)
        loop {
            let lowest_free = self.lowest_free() as i64;
            migrate_pfn = migrate_pfn.min(self.hwm() as i64 - 1); // another thread may have shrunk it
            let mut batch: Vec<u32> = Vec::with_capacity(COMPACT_BATCH);
            while migrate_pfn > lowest_free && batch.len() < COMPACT_BATCH {
                let lo = (lowest_free + 1).max(migrate_pfn + 1 - SCAN_CHUNK as i64);
                let (first, descs) = self.descriptor_snapshot(lo as usize, Some(migrate_pfn as usize + 1));
                let mut full = false;
                for (i, &(flags, refcount)) in descs.iter().enumerate().rev() {
                    if batch.len() == COMPACT_BATCH {
                        full = true;
                        break;
                    }
                    if flags & (PG_MOVABLE | PG_ISOLATED) == PG_MOVABLE && refcount > 0 {
                        batch.push((first + i) as u32);
                    }
                    migrate_pfn = (first + i) as i64 - 1;
                }
                if !full {
                    migrate_pfn = lo - 1;
                }
            }
            if batch.is_empty() {
                break;
            }
            let isolated: Vec<u32> =
                batch.into_iter().filter(|&p| self.isolate_movable_page(p, mode)).collect();
            if !isolated.is_empty() {
                let r = self.migrate_pages(&isolated, mode, Target::Below, NR_MIGRATE_PASSES, true, None)?;
                result.migrate.merge(r);
            }
        }
        result.released = self.shrink_arena();
        if result.released < TRIM_HEAP_FRAMES {
            // (a bigger shrink has trimmed the heap already) whoever compacts
            // wants the process's memory back, the C heap's too
            trim_process_heap();
        }
        result.hwm_after = self.hwm();
        self.vmstat.add(Event::CompactRuns, 1);
        self.vmstat.add(Event::CompactPagesMoved, result.migrate.succeeded);
        Ok(result)
    }
}

impl Memory {
    fn refuse_zoned(&self, what: &str) -> Result<(), MmError> {
        if self.is_zoned() {
            return Err(MmError::Invalid(format!(
                "{what} runs on the lowest-frame-first allocator, not a zone"
            )));
        }
        Ok(())
    }

    /// `compact_zone` for a failed request of `order` and `mt` on a zoned
    /// Memory: the two scanners until a free block of `order` exists or
    /// they meet.
    pub fn compact_zone(
        &self,
        order: usize,
        mt: MigrateType,
        mode: MigrateMode,
    ) -> Result<ZoneCompactResult, MmError> {
        let mut r = ZoneCompactResult::default();
        let nr_pages = self
            .with_zone(|z| z.nr_pages())
            .ok_or_else(|| MmError::Invalid("compact_zone needs a zoned Memory".into()))?;
        {
            let a = self.alloc.lock();
            let z = a.zone.as_ref().expect("a zoned Memory");
            let w = z.watermarks();
            if z.zone_watermark_ok(order, w.min) && z.suitable_page_free(order, mt) {
                r.status = CompactStatus::Success;
                return Ok(r);
            }
            // compaction_suitable: room for the targets, twice the request
            let mark = if order > PAGE_ALLOC_COSTLY_ORDER { w.low } else { w.min };
            if !z.zone_watermark_ok(0, mark + (2 << order)) {
                return Ok(r);
            }
            // and, for a costly order, a failure for want of contiguity rather than of
            // memory: a fragmentation index above vm.extfrag_threshold
            if order > PAGE_ALLOC_COSTLY_ORDER
                && (0..=EXTFRAG_THRESHOLD).contains(&z.fragmentation_index(order))
            {
                return Ok(r);
            }
        }
        let mut migrate_pfn = 0usize;
        let mut free_pfn = (nr_pages - 1) & !(PAGEBLOCK_NR_PAGES - 1);
        let met = |migrate: usize, free: usize| free >> PAGEBLOCK_ORDER <= migrate >> PAGEBLOCK_ORDER;
        let mut outcome = Ok(());
        r.status = loop {
            if met(migrate_pfn, free_pfn) {
                break CompactStatus::Complete;
            }
            if migrate_pfn % PAGEBLOCK_NR_PAGES == 0
                && self.with_zone(|z| z.suitable_page_free(order, mt)).unwrap_or(false)
            {
                break CompactStatus::Success;
            }
            let candidates = self.isolate_migratepages(&mut migrate_pfn, free_pfn, order, mt, mode, &mut r);
            let isolated: Vec<u32> =
                candidates.into_iter().filter(|&p| self.isolate_movable_page(p, mode)).collect();
            if isolated.is_empty() {
                continue;
            }
            r.migrate_isolated += isolated.len();
            self.isolate_freepages(&mut free_pfn, migrate_pfn, isolated.len(), &mut r);
            match self.migrate_pages(&isolated, mode, Target::Captured, NR_MIGRATE_PASSES, true, None) {
                Ok(m) => r.migrate.merge(m),
                Err(e) => {
                    outcome = Err(e);
                    break CompactStatus::Complete;
                }
            }
        };
        self.release_freepages();
        outcome?;
        self.vmstat.add(Event::CompactRuns, 1);
        self.vmstat.add(Event::CompactPagesMoved, r.migrate.succeeded);
        Ok(r)
    }

    /// `isolate_migratepages`: from `migrate_pfn`, the next pageblock that
    /// is a suitable source: its in-use movable order-0 pages, at most
    /// COMPACT_BATCH of them, leaving `migrate_pfn` where the scan stopped.
    /// Async (direct) compaction skips the rest of an `order`-aligned block
    /// at the first page that cannot move, and drops what it took from it
    /// (`skip_on_failure`): that block can never become free.
    fn isolate_migratepages(
        &self,
        migrate_pfn: &mut usize,
        free_pfn: usize,
        order: usize,
        mt: MigrateType,
        mode: MigrateMode,
        r: &mut ZoneCompactResult,
    ) -> Vec<u32> {
        let mut found = Vec::with_capacity(COMPACT_BATCH);
        let a = self.alloc.lock();
        let z = a.zone.as_ref().expect("a zoned Memory");
        let skip_on_failure = mode == MigrateMode::Async && order > 0;
        let chunk_mask = (1usize << order) - 1;
        while *migrate_pfn < free_pfn {
            let block_end = (*migrate_pfn | (PAGEBLOCK_NR_PAGES - 1)) + 1;
            // suitable_migration_source: async compaction keeps to blocks of the request's type
            let block_mt = z.pageblock_migratetype(*migrate_pfn as u32);
            if mode == MigrateMode::Async && block_mt != mt {
                *migrate_pfn = block_end;
                continue;
            }
            let end = block_end.min(z.nr_pages());
            let mut p = *migrate_pfn;
            let (mut chunk_start, mut next_skip) = (found.len(), (p | chunk_mask) + 1);
            while p < end && found.len() < COMPACT_BATCH {
                r.migrate_scanned += 1;
                if p >= next_skip {
                    (chunk_start, next_skip) = (found.len(), (p | chunk_mask) + 1);
                }
                if let Some(o) = z.buddy_order(p as u32) {
                    p += 1 << o;
                    continue;
                }
                let Some((o, _)) = z.allocated_block(p as u32) else {
                    p += 1;
                    continue;
                };
                let d = self.desc(p as u32);
                let flags = d.flags.load(Relaxed);
                if o == 0 && flags & PG_MOVABLE != 0 && d.refcount.load(Relaxed) > 0 {
                    if flags & PG_ISOLATED == 0 {
                        found.push(p as u32);
                    }
                } else if skip_on_failure {
                    found.truncate(chunk_start);
                    p = next_skip;
                    continue;
                }
                p += 1 << o;
            }
            *migrate_pfn = if p >= end { p.max(block_end) } else { p };
            break;
        }
        found
    }

    /// `isolate_freepages`: from `free_pfn` down, capture the free pages of
    /// movable pageblocks until there are `needed` or the scanners meet;
    /// `free_pfn` ends on the next pageblock to scan.
    fn isolate_freepages(
        &self,
        free_pfn: &mut usize,
        migrate_pfn: usize,
        needed: usize,
        r: &mut ZoneCompactResult,
    ) {
        let mut a = self.alloc.lock();
        let a = &mut *a;
        let z = a.zone.as_mut().expect("a zoned Memory");
        while a.captured.len() < needed && *free_pfn >> PAGEBLOCK_ORDER > migrate_pfn >> PAGEBLOCK_ORDER {
            let block = *free_pfn as u32;
            // suitable_migration_target: a movable block, not a free one whole
            let whole_free = z.buddy_order(block).is_some_and(|o| o >= PAGEBLOCK_ORDER);
            if z.pageblock_migratetype(block) == MigrateType::Movable && !whole_free {
                let end = (*free_pfn + PAGEBLOCK_NR_PAGES).min(z.nr_pages());
                let mut p = *free_pfn;
                while p < end {
                    r.free_scanned += 1;
                    if z.buddy_order(p as u32).is_some() {
                        let before = a.captured.len();
                        match z.isolate_free_page(p as u32, &mut a.captured) {
                            Some(o) => {
                                r.free_isolated += a.captured.len() - before;
                                p += 1 << o;
                            }
                            None => return, // the zone is at its watermark
                        }
                    } else if let Some((o, _)) = z.allocated_block(p as u32) {
                        p += 1 << o;
                    } else {
                        p += 1;
                    }
                }
            }
            *free_pfn -= PAGEBLOCK_NR_PAGES;
        }
    }

    /// `release_free_list`: the captured pages no migration used go back.
    fn release_freepages(&self) {
        let mut a = self.alloc.lock();
        let a = &mut *a;
        if let Some(z) = a.zone.as_mut() {
            for pfn in a.captured.drain(..) {
                let freed = z.free_pages(pfn, 0);
                debug_assert!(freed.is_ok(), "a captured page is an order-0 block");
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::migrate::{MovableOps, MIGRATEPAGE_SUCCESS};
    use crate::mm::zone::{MAX_PAGE_ORDER, NR_PAGE_ORDERS};
    use crate::mm::PAGE_SHIFT;
    use crate::sync::{Arc, Mutex};

    /// An owner of movable pages that knows each page by a tag written in it.
    struct Owner {
        pages: Mutex<Vec<u32>>,
        id: Mutex<u8>,
    }

    impl MovableOps for Owner {
        fn isolate(&self, _mem: &Memory, _pfn: u32, _mode: MigrateMode) -> bool {
            true
        }
        fn migrate(&self, mem: &Memory, dst: u32, src: u32, _mode: MigrateMode) -> i32 {
            mem.copy_page(dst, src);
            let mut pages = self.pages.lock();
            let i = pages.iter().position(|&p| p == src).expect("one of ours");
            pages[i] = dst;
            mem.set_page_movable(dst, *self.id.lock());
            mem.get_page(dst).unwrap();
            mem.reset_page(src);
            mem.put_page(src).unwrap();
            MIGRATEPAGE_SUCCESS
        }
        fn putback(&self, _mem: &Memory, _pfn: u32) {}
    }

    fn tag(mem: &Memory, pfn: u32) -> u64 {
        let mut b = [0u8; 8];
        mem.copy_out((pfn as usize) << PAGE_SHIFT, &mut b);
        u64::from_le_bytes(b)
    }

    /// A zoned Memory whose every other frame holds a page of `owner`:
    /// no free block above order 0 anywhere.
    fn fragmented(blocks: usize) -> (Arc<Memory>, Arc<Owner>) {
        let mem = Arc::new(Memory::new_zoned(blocks * PAGEBLOCK_NR_PAGES).unwrap());
        let owner = Arc::new(Owner { pages: Mutex::new(Vec::new()), id: Mutex::new(0) });
        let weak: std::sync::Weak<dyn MovableOps> = Arc::downgrade(&owner) as std::sync::Weak<dyn MovableOps>;
        *owner.id.lock() = mem.register_movable_ops(weak).unwrap();
        let mut all = Vec::new();
        while let Ok(p) = mem.alloc_block(0, MigrateType::Movable, 0) {
            all.push(p);
        }
        let id = *owner.id.lock();
        for (i, &p) in all.iter().enumerate() {
            if i % 2 == 0 {
                mem.copy_in((p as usize) << PAGE_SHIFT, &(i as u64).to_le_bytes());
                mem.set_pages_movable(&[p], id).unwrap();
                owner.pages.lock().push(p);
            } else {
                mem.put_page(p).unwrap();
            }
        }
        mem.with_zone(|z| z.check()).unwrap().unwrap();
        assert!(mem
            .with_zone(|z| (1..NR_PAGE_ORDERS).all(|o| z.contig_page_info(o).free_blocks_suitable == 0))
            .unwrap());
        (mem, owner)
    }

    #[test]
    fn compaction_makes_a_free_block_of_the_order_asked() {
        for order in [3, PAGEBLOCK_ORDER, MAX_PAGE_ORDER] {
            // room for the targets: twice the order over the low watermark
            let (mem, owner) = fragmented(16);
            let before: Vec<u64> = owner.pages.lock().iter().map(|&p| tag(&mem, p)).collect();
            let r = mem.compact_zone(order, MigrateType::Movable, MigrateMode::Sync).unwrap();
            assert_eq!(r.status, CompactStatus::Success, "order {order}: {r:?}");
            assert!(r.migrate.succeeded > 0);
            assert_eq!(r.migrate.failed, 0);
            mem.with_zone(|z| {
                z.check().unwrap();
                assert!(z.contig_page_info(order).free_blocks_suitable > 0);
            });
            // every page moved with its contents, none lost
            let after: Vec<u64> = owner.pages.lock().iter().map(|&p| tag(&mem, p)).collect();
            assert_eq!(before, after);
            // and the allocation that failed now succeeds
            assert!(mem.alloc_block(order, MigrateType::Movable, 0).is_ok());
        }
    }

    #[test]
    fn compaction_cannot_move_what_is_not_movable() {
        let (mem, owner) = fragmented(8);
        // the owner's pages become unmovable: nothing can move
        for &p in owner.pages.lock().iter() {
            mem.reset_page(p);
        }
        let r = mem.compact_zone(PAGEBLOCK_ORDER, MigrateType::Movable, MigrateMode::Sync).unwrap();
        assert_eq!(r.status, CompactStatus::Complete);
        assert_eq!(r.migrate.succeeded, 0);
        mem.with_zone(|z| z.check().unwrap());
        // the captured targets all went back
        assert_eq!(mem.with_zone(|z| z.nr_free_pages()).unwrap(), 8 * PAGEBLOCK_NR_PAGES / 2);
    }

    #[test]
    fn async_compaction_skips_a_block_that_cannot_become_free() {
        let (mem, owner) = fragmented(16);
        // one page in every pageblock can no longer move
        let pinned: Vec<u32> =
            owner.pages.lock().iter().copied().filter(|p| p % PAGEBLOCK_NR_PAGES as u32 == 0).collect();
        for &p in &pinned {
            mem.reset_page(p);
        }
        let r = mem.compact_zone(PAGEBLOCK_ORDER, MigrateType::Movable, MigrateMode::Async).unwrap();
        assert_eq!(r.status, CompactStatus::Complete);
        assert_eq!(r.migrate.succeeded, 0, "nothing moved out of blocks that stay busy");
        // sync compaction does not skip: it moves pages, and still makes no order-9 block
        let r = mem.compact_zone(PAGEBLOCK_ORDER, MigrateType::Movable, MigrateMode::Sync).unwrap();
        assert_eq!(r.status, CompactStatus::Complete);
        assert!(r.migrate.succeeded > 0);
        // order 3 blocks can still be made around the pinned pages
        let r = mem.compact_zone(3, MigrateType::Movable, MigrateMode::Async).unwrap();
        assert_eq!(r.status, CompactStatus::Success);
        mem.with_zone(|z| z.check().unwrap());
    }

    #[test]
    fn compaction_is_skipped_without_room_and_short_when_done() {
        let mem = Memory::new_zoned(4 * PAGEBLOCK_NR_PAGES).unwrap();
        let r = mem.compact_zone(3, MigrateType::Movable, MigrateMode::Async).unwrap();
        assert_eq!(r.status, CompactStatus::Success);
        assert_eq!(r.migrate_scanned, 0);
        // nearly full: too few free pages to compact into
        while mem.alloc_block(0, MigrateType::Movable, 0).is_ok() {}
        let r = mem.compact_zone(3, MigrateType::Movable, MigrateMode::Async).unwrap();
        assert_eq!(r.status, CompactStatus::Skipped);
    }

    #[test]
    fn a_zoned_memory_refuses_what_only_the_arena_does() {
        let mem = Memory::new_zoned(PAGEBLOCK_NR_PAGES).unwrap();
        assert!(mem.compact(MigrateMode::Sync).is_err());
        assert!(mem.evacuate(0, 10, MigrateMode::Sync, false).is_err());
        assert!(mem.alloc_page_in(0, Some(10)).is_err());
        assert!(Memory::new(16, 4, 2)
            .unwrap()
            .compact_zone(0, MigrateType::Movable, MigrateMode::Sync)
            .is_err());
        assert!(Memory::new(16, 4, 2).unwrap().alloc_block(1, MigrateType::Movable, 0).is_err());
        // a block's head stands for the block
        let p = mem.alloc_block(4, MigrateType::Unmovable, 0).unwrap();
        assert_eq!(mem.stats().nr_used, 16);
        mem.put_page(p).unwrap();
        assert_eq!(mem.stats().nr_used, 0);
        assert_eq!(mem.with_zone(|z| z.nr_free_pages()).unwrap(), PAGEBLOCK_NR_PAGES);
    }
}
