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

``compact_zone(order, mt, mode)``
    The kernel's own, on a zoned Memory (the model of ``compact_zone`` in
    the engine's ``mm/compaction.rs``, decision for decision): a request of
    ``order`` failed, so move movable pages out of the bottom of the zone
    into free pages at its top until a free block of that order exists or
    the scanners meet::

        pageblocks:  [ M ][ U ][ M ][ M ][ U ][ M ][ M ]
        migrate scanner ->  (in-use movable pages,        <- free scanner (free
        suitable source blocks, 32 at a time)             pages of movable blocks)

    Each round isolates up to COMPACT_CLUSTER_MAX pages from one pageblock
    (``isolate_migratepages``), captures at least as many free pages from
    the top, split to order 0 (``isolate_freepages``), and migrates into
    them; a round ends on a pageblock boundary before ``compact_finished``
    looks for the free block.  Async direct compaction only takes sources
    from pageblocks of the request's type, and skips the rest of an
    ``order``-aligned block at the first page that cannot move; the sync
    modes take any.  Free pageblocks are never broken up as targets.  Left
    out, as in the engine: the cached scanner positions and pageblock skip
    bits, the fast free-page search, and compaction of high-order
    allocations.  The deferral (``compaction_deferred``,
    ``defer_compaction``) is the caller's, as in the kernel's
    ``try_to_compact_pages``: the zone keeps its counters.

These are plain functions over a :class:`zsmalloc.mm.Memory`, whose methods
of the same names call them.  They take the Memory's lock (a leaf) for short
reads of the descriptors and the free lists, never across a migration.
"""

from __future__ import annotations

import enum
import heapq
import mmap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from zsmalloc.mm.constants import PAGE_SHIFT, PG_isolated, PG_movable
from zsmalloc.mm.heap import trim_process_heap
from zsmalloc.mm.migrate import (
    CAPTURED,
    NR_MIGRATE_PASSES,
    MigrateMode,
    MigrateResult,
    isolate_movable_ops_page,
    migrate_pages,
    movable_pfns,
)
from zsmalloc.mm.zone import MOVABLE, PAGE_ALLOC_COSTLY_ORDER, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER

if TYPE_CHECKING:
    from zsmalloc.mm.memory import Memory

COMPACT_BATCH = 32  # pages isolated per round (the kernel's COMPACT_CLUSTER_MAX)
#: ``vm.extfrag_threshold``: a costly order whose fragmentation index is at most this failed
#: for want of memory, which compaction cannot give (``compaction_suitable``)
EXTFRAG_THRESHOLD = 500
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


class CompactStatus(enum.Enum):
    """How a ``compact_zone`` ended (``enum compact_result``)."""

    SKIPPED = "skipped"  # too few free pages to compact into: nothing was tried
    COMPLETE = "complete"  # the scanners met without making a free block of the order
    SUCCESS = "success"  # a free block of the order exists


@dataclass
class ZoneCompactResult:
    """What one ``compact_zone`` did."""

    status: CompactStatus = CompactStatus.SKIPPED
    migrate: MigrateResult = field(default_factory=MigrateResult)
    #: pages isolated for migration and frames looked at by the migrate scanner
    migrate_isolated: int = 0
    migrate_scanned: int = 0
    #: free pages captured as targets and frames looked at by the free scanner
    free_isolated: int = 0
    free_scanned: int = 0


def _refuse_zoned(mem: Memory, what: str) -> None:
    if mem.zoned:
        raise ValueError(f"{what} runs on the lowest-frame-first allocator, not a zone")


def evacuate(mem: Memory, start: int, end: int, mode: MigrateMode, keep_excluded: bool) -> EvacuateResult:
    """Move every movable page out of ``[start, end)`` (see ``Memory.evacuate``)."""
    result = EvacuateResult()
    _refuse_zoned(mem, "evacuate")
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


def isolate_arena_migratepages(mem: Memory, migrate_pfn: int, lowest_free: int) -> tuple[list[int], int]:
    """The arena's migration scanner: up to COMPACT_BATCH movable pages from ``migrate_pfn`` down.

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
    _refuse_zoned(mem, "compact (the arena's; a zone has compact_zone)")
    result = CompactResult(hwm_before=mem.hwm)
    migrate_pfn = mem.hwm - 1  # the migration scanner, walking down (cc->migrate_pfn)
    while True:
        with mem._lock:  # the free scanner: the lowest free frame
            lowest_free = min([*mem._pcp, *mem._free[:1]], default=mem.hwm)
            migrate_pfn = min(migrate_pfn, mem.hwm - 1)  # another thread may have shrunk it
        batch, migrate_pfn = isolate_arena_migratepages(mem, migrate_pfn, lowest_free)
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
        if mem.zoned:
            return 0  # a zone keeps its frames
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


def compact_zone(mem: Memory, order: int, mt: str, mode: MigrateMode) -> ZoneCompactResult:
    """``compact_zone`` for a failed request of ``order`` and ``mt`` (see ``Memory.compact_zone``)."""
    r = ZoneCompactResult()
    zone = mem._zone
    if zone is None:
        raise ValueError("compact_zone needs a zoned Memory")
    with mem._lock:
        w = zone.watermarks
        if zone.zone_watermark_ok(order, w.min) and zone.suitable_page_free(order, mt):
            r.status = CompactStatus.SUCCESS
            return r
        # compaction_suitable: room for the targets, twice the request
        mark = w.low if order > PAGE_ALLOC_COSTLY_ORDER else w.min
        if not zone.zone_watermark_ok(0, mark + (2 << order)):
            return r
        # and, for a costly order, a failure for want of contiguity rather than of
        # memory: a fragmentation index above vm.extfrag_threshold
        if order > PAGE_ALLOC_COSTLY_ORDER and 0 <= zone.fragmentation_index(order) <= EXTFRAG_THRESHOLD:
            return r
    migrate_pfn = 0
    free_pfn = (zone.nr_pages - 1) & ~(PAGEBLOCK_NR_PAGES - 1)
    try:
        while True:
            if free_pfn >> PAGEBLOCK_ORDER <= migrate_pfn >> PAGEBLOCK_ORDER:  # the scanners met
                r.status = CompactStatus.COMPLETE
                break
            if migrate_pfn % PAGEBLOCK_NR_PAGES == 0:
                with mem._lock:
                    done = zone.suitable_page_free(order, mt)
                if done:
                    r.status = CompactStatus.SUCCESS
                    break
            candidates, migrate_pfn = isolate_migratepages(mem, migrate_pfn, free_pfn, order, mt, mode, r)
            isolated = [p for p in candidates if isolate_movable_ops_page(mem, p, mode)]
            if not isolated:
                continue
            r.migrate_isolated += len(isolated)
            free_pfn = isolate_freepages(mem, free_pfn, migrate_pfn, len(isolated), r)
            r.migrate.merge(migrate_pages(mem, isolated, mode, CAPTURED, NR_MIGRATE_PASSES, True, None))
    finally:
        release_freepages(mem)
    mem.vmstat["compact_runs"] += 1
    mem.vmstat["compact_pages_moved"] += r.migrate.succeeded
    return r


def isolate_migratepages(
    mem: Memory, migrate_pfn: int, free_pfn: int, order: int, mt: str, mode: MigrateMode, r: ZoneCompactResult
) -> tuple[list[int], int]:
    """``isolate_migratepages``: from ``migrate_pfn``, the next pageblock that is a
    suitable source: its in-use movable order-0 pages, at most COMPACT_BATCH of
    them; returns them and where the scan stopped.

    Async (direct) compaction skips the rest of an ``order``-aligned block at
    the first page that cannot move, and drops what it took from it
    (``skip_on_failure``): that block can never become free.
    """
    found: list[int] = []
    skip_on_failure = mode == MigrateMode.ASYNC and order > 0
    chunk_mask = (1 << order) - 1
    with mem._lock:
        zone = mem._zone
        assert zone is not None, "a zoned Memory"
        flags, refcount = mem.flags, mem.refcount
        while migrate_pfn < free_pfn:
            block_end = (migrate_pfn | (PAGEBLOCK_NR_PAGES - 1)) + 1
            # suitable_migration_source: async compaction keeps to blocks of the request's type
            if mode == MigrateMode.ASYNC and zone.pageblock_migratetype(migrate_pfn) != mt:
                migrate_pfn = block_end
                continue
            end = min(block_end, zone.nr_pages)
            p = migrate_pfn
            chunk_start, next_skip = len(found), (p | chunk_mask) + 1
            while p < end and len(found) < COMPACT_BATCH:
                r.migrate_scanned += 1
                if p >= next_skip:
                    chunk_start, next_skip = len(found), (p | chunk_mask) + 1
                free_order = zone.buddy_order(p)
                if free_order is not None:
                    p += 1 << free_order
                    continue
                block = zone.allocated_block(p)
                if block is None:
                    p += 1
                    continue
                o = block[0]
                if o == 0 and flags[p] & PG_movable and refcount[p] > 0:
                    if not flags[p] & PG_isolated:
                        found.append(p)
                elif skip_on_failure:
                    del found[chunk_start:]
                    p = next_skip
                    continue
                p += 1 << o
            migrate_pfn = max(p, block_end) if p >= end else p
            break
    return found, migrate_pfn


def isolate_freepages(mem: Memory, free_pfn: int, migrate_pfn: int, needed: int, r: ZoneCompactResult) -> int:
    """``isolate_freepages``: from ``free_pfn`` down, capture the free pages of
    movable pageblocks until there are ``needed`` or the scanners meet;
    returns the next pageblock to scan."""
    with mem._lock:
        zone, captured = mem._zone, mem._captured
        assert zone is not None, "a zoned Memory"
        while len(captured) < needed and free_pfn >> PAGEBLOCK_ORDER > migrate_pfn >> PAGEBLOCK_ORDER:
            # suitable_migration_target: a movable block, not a free one whole
            head = zone.buddy_order(free_pfn)
            whole_free = head is not None and head >= PAGEBLOCK_ORDER
            if zone.pageblock_migratetype(free_pfn) == MOVABLE and not whole_free:
                end = min(free_pfn + PAGEBLOCK_NR_PAGES, zone.nr_pages)
                p = free_pfn
                while p < end:
                    r.free_scanned += 1
                    if zone.buddy_order(p) is not None:
                        o = zone.isolate_free_page(p)
                        if o is None:
                            return free_pfn  # the zone is at its watermark
                        captured.extend(range(p, p + (1 << o)))
                        r.free_isolated += 1 << o
                        p += 1 << o
                        continue
                    block = zone.allocated_block(p)
                    p += 1 if block is None else 1 << block[0]
            free_pfn -= PAGEBLOCK_NR_PAGES
    return free_pfn


def release_freepages(mem: Memory) -> None:
    """``release_free_list``: the captured pages no migration used go back."""
    with mem._lock:
        zone = mem._zone
        if zone is not None:
            for pfn in mem._captured:
                zone.free_pages(pfn, 0)
        mem._captured.clear()
