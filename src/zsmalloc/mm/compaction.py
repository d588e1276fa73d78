"""Range evacuation and arena compaction (mm/compaction.c, memory offlining, CMA).

Which kernel this models: the shape of mm/compaction.c (``compact_zone``'s
two scanners, batches of COMPACT_CLUSTER_MAX pages) and of memory offlining
(``offline_pages``: isolate the range's pageblocks, migrate out, retry), as
they have been for many releases; mainline 6.17 names (``isolate_movable_ops_page``,
see mm/migrate.py).  Lowering the high-water mark is the model's own: an mmap
arena can shrink where a zone cannot.

Two users of the migration core:

``evacuate(start, end)``
    Empty a pfn range, as memory offlining and CMA allocation do: keep the
    allocator out of the range, isolate every movable page in it, and
    migrate them elsewhere.  Pages that cannot move (unmovable, locked, owner
    busy) are reported.

``compact()``
    The kernel's two compaction scanners over the whole arena: a migration
    scanner walking down from the top picks in-use movable pages, a free
    scanner walking up from the bottom finds free frames; pages move down
    while the lowest free frame is below the highest movable page.  Then the
    high-water mark drops to just above the highest page still in use, the
    free frames above it are given back to the OS, and the page descriptors
    shrink with it::

        before:  [U][.][U][.][.][U][.][U][U][.][U]        hwm = 11
        after:   [U][U][U][U][U][U][.][.][.][.][.]  ->  [U][U][U][U][U][U]   hwm = 6

These are plain functions over a :class:`zsmalloc.mm.Memory`, whose methods
of the same names call them.  They take the Memory's lock (a leaf) for short
reads of the descriptors and the free lists, never across a migration.
"""

from __future__ import annotations

import heapq
import mmap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from zsmalloc.mm.constants import PAGE_SHIFT, PG_isolated, PG_movable
from zsmalloc.mm.heap import trim_process_heap
from zsmalloc.mm.migrate import (
    NR_MIGRATE_PASSES,
    MigrateMode,
    MigrateResult,
    isolate_movable_ops_page,
    migrate_pages,
    movable_pfns,
)

if TYPE_CHECKING:
    from zsmalloc.mm.memory import Memory

COMPACT_BATCH = 32  # pages isolated per round (the kernel's COMPACT_CLUSTER_MAX)
_MOVABLE_MASK = PG_movable | PG_isolated
_SCAN_CHUNK = 256  # frames the migration scanner looks at per hold of the Memory lock
_TRIM_HEAP_FRAMES = 1024
_EVACUATE_ROUNDS = 3  # pages busy in one round may move in the next


def _below(pfn: int) -> tuple[int, int]:
    """Compaction moves a page only downwards."""
    return 0, pfn


@dataclass
class EvacuateResult(MigrateResult):
    remaining: list[int] = field(default_factory=list)  # in-use frames still in the range

    @property
    def complete(self) -> bool:
        return not self.remaining


@dataclass
class CompactResult(MigrateResult):
    hwm_before: int = 0
    hwm_after: int = 0
    released: int = 0  # free frames above the new high-water mark given back


def evacuate(mem: Memory, start: int, end: int, mode: MigrateMode, keep_excluded: bool) -> EvacuateResult:
    """Move every movable page out of ``[start, end)`` (see ``Memory.evacuate``)."""
    result = EvacuateResult()
    mem.exclude_range(start, end)
    try:
        for _ in range(_EVACUATE_ROUNDS):
            pfns = movable_pfns(mem, start, end)
            if not pfns:
                break
            isolated = [pfn for pfn in pfns if isolate_movable_ops_page(mem, pfn, mode)]
            result.merge(migrate_pages(mem, isolated, mode, None, NR_MIGRATE_PASSES, True, None))
    finally:
        if not keep_excluded:
            mem.unexclude_range(start, end)
    with mem._lock:
        result.remaining = [pfn for pfn in range(start, min(end, mem.hwm)) if mem.refcount[pfn] > 0]
    mem.vmstat["evacuate_runs"] += 1
    return result


def isolate_migratepages(mem: Memory, migrate_pfn: int, lowest_free: int) -> tuple[list[int], int]:
    """The migration scanner: up to COMPACT_BATCH movable pages from ``migrate_pfn`` down.

    It stops above ``lowest_free``; returns the pages and where to scan on from.
    """
    batch: list[int] = []
    while migrate_pfn > lowest_free and len(batch) < COMPACT_BATCH:
        lo = max(lowest_free + 1, migrate_pfn + 1 - _SCAN_CHUNK)
        flags, refcount = mem.descriptor_snapshot(lo, migrate_pfn + 1)
        for i in range(len(flags) - 1, -1, -1):
            if len(batch) == COMPACT_BATCH:
                break
            if flags[i] & _MOVABLE_MASK == PG_movable and refcount[i] > 0:
                batch.append(lo + i)
            migrate_pfn = lo + i - 1
        else:
            migrate_pfn = lo - 1
    return batch, migrate_pfn


def compact(mem: Memory, mode: MigrateMode) -> CompactResult:
    """Move in-use movable frames down into free frames, then lower the high-water mark."""
    result = CompactResult(hwm_before=mem.hwm)
    migrate_pfn = mem.hwm - 1  # the migration scanner, walking down (cc->migrate_pfn)
    while True:
        with mem._lock:  # the free scanner: the lowest free frame
            lowest_free = min([*mem._pcp, *mem._free[:1]], default=mem.hwm)
            migrate_pfn = min(migrate_pfn, mem.hwm - 1)  # another thread may have shrunk it
        batch, migrate_pfn = isolate_migratepages(mem, migrate_pfn, lowest_free)
        if not batch:
            break
        isolated = [p for p in batch if isolate_movable_ops_page(mem, p, mode)]
        if isolated:
            result.merge(migrate_pages(mem, isolated, mode, _below, NR_MIGRATE_PASSES, True, None))
    result.released = shrink_arena(mem)
    if result.released < _TRIM_HEAP_FRAMES:  # (a bigger shrink has trimmed the heap already)
        trim_process_heap()  # whoever compacts wants the process's memory back, the C heap's too
    result.hwm_after = mem.hwm
    mem.vmstat["compact_runs"] += 1
    mem.vmstat["compact_pages_moved"] += result.succeeded
    return result


def shrink_arena(mem: Memory) -> int:
    """Lower the high-water mark to just above the highest frame in use (see ``Memory.shrink_arena``)."""
    with mem._lock:
        refcount = mem.refcount
        new_hwm = mem.hwm
        while new_hwm > 0 and refcount[new_hwm - 1] <= 0:
            new_hwm -= 1
        if new_hwm == mem.hwm:
            return 0
        resident = [pfn for pfn in mem._pcp if pfn >= new_hwm]
        if resident:
            mem._drain(resident)
            mem._pcp[:] = [pfn for pfn in mem._pcp if pfn < new_hwm]
        mem._free[:] = [pfn for pfn in mem._free if pfn < new_hwm]
        heapq.heapify(mem._free)
        dropped = mem.hwm - new_hwm
        mem.arena.madvise(mmap.MADV_DONTNEED, new_hwm << PAGE_SHIFT, dropped << PAGE_SHIFT)
        mem.hwm = new_hwm
        mem._shrink_descriptors(new_hwm)
    if dropped >= _TRIM_HEAP_FRAMES:
        trim_process_heap()  # the shrunk descriptor arrays left free heap memory
    return dropped
