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

use super::memory::{trim_process_heap, Memory, MmError, PG_ISOLATED, PG_MOVABLE, TRIM_HEAP_FRAMES};
use super::migrate::{Event, MigrateMode, MigrateResult, Target, NR_MIGRATE_PASSES};

/// Pages isolated per round (the kernel's COMPACT_CLUSTER_MAX).
pub const COMPACT_BATCH: usize = 32;
/// Frames the migration scanner reads per hold of the allocator lock.
const SCAN_CHUNK: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvacuateResult {
    pub migrate: MigrateResult,
    /// in-use frames still in the range
    pub remaining: Vec<u32>,
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
