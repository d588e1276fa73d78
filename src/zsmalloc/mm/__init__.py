"""The model's VM: page frames in one mmap arena, page descriptors, page locks,
the page allocator, the migration core and compaction, and a background
migration thread that stands in for kcompactd and memory offlining.

Nothing here knows that zsmalloc exists; owners talk to it through frames,
descriptor words and registered movable-page callbacks.

What lives where: ``memory.py`` (the arena, descriptors, page locks, the page
allocator, and ``Memory``'s public methods), ``migrate.py`` (the migration
core, mainline 6.17 names: ``isolate_movable_ops_page``,
``PageMovableOpsIsolated``), ``compaction.py`` (evacuation, arena
compaction, and a zoned Memory's ``compact_zone``), ``background.py``
(kcompactd's stand-in), ``zone.py`` (a zone's buddy allocator, the model of
the engine's page-allocator mode that the fragmentation simulation runs on,
which ``Memory.new_zoned`` hands frames out of; ``zsmalloc.engine.Zone`` is
the engine's).
Lock order: page lock -> the owner's locks (inside its callbacks) -> the
Memory's lock.
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
from zsmalloc.mm.zone import Zone

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
    "Zone",
]
