"""The model's VM: page frames in one mmap arena, page descriptors, page locks,
the page allocator, the migration core and compaction, and a background
migration thread that stands in for kcompactd and memory offlining.

Nothing here knows that zsmalloc exists; owners talk to it through frames,
descriptor words and registered movable-page callbacks.
"""

from zsmalloc.mm.background import BackgroundMigration
from zsmalloc.mm.compaction import CompactResult, EvacuateResult
from zsmalloc.mm.constants import PAGE_SHIFT, PAGE_SIZE, PG_isolated, PG_locked, PG_movable
from zsmalloc.mm.memory import Memory
from zsmalloc.mm.migrate import (
    EAGAIN,
    MIGRATEPAGE_SUCCESS,
    MigrateMode,
    MigrateResult,
    MovableOps,
)

__all__ = [
    "EAGAIN",
    "MIGRATEPAGE_SUCCESS",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "BackgroundMigration",
    "CompactResult",
    "EvacuateResult",
    "Memory",
    "MigrateMode",
    "MigrateResult",
    "MovableOps",
    "PG_isolated",
    "PG_locked",
    "PG_movable",
]
