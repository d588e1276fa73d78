//! The VM: page frames in one arena, page descriptors, page locks, the page
//! allocator, the migration core (mm/migrate.c), and evacuation and arena
//! compaction (mm/compaction.c).  Nothing here knows that zsmalloc exists:
//! an owner takes frames, writes its words into their descriptors and
//! registers its movable-page callbacks.

pub mod compaction;
pub mod memory;
pub mod migrate;
pub mod table;
pub mod zone;

pub use memory::{
    trim_process_heap, Memory, MemoryStats, MmError, PageDesc, NO_PAGE, PAGE_SHIFT, PAGE_SIZE, PG_ISOLATED,
    PG_LOCKED, PG_MOVABLE,
};
pub use migrate::{MigrateMode, MigrateResult, MovableOps, Target};
