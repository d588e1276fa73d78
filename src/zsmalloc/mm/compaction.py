"""Range evacuation and arena compaction (mm/compaction.c, memory offlining, CMA).

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

This module is a mixin of :class:`zsmalloc.mm.Memory`.
"""

from __future__ import annotations

import heapq
import mmap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from zsmalloc.mm.constants import PAGE_SHIFT, PG_isolated, PG_movable
from zsmalloc.mm.heap import trim_process_heap
from zsmalloc.mm.migrate import NR_MIGRATE_PASSES, MigrateMode, MigrateResult

if TYPE_CHECKING:
    import threading
    from array import array
    from collections.abc import Callable

    from zsmalloc.mm.counters import Counters

COMPACT_BATCH = 32  # pages isolated per round (the kernel's COMPACT_CLUSTER_MAX)
_MOVABLE_MASK = PG_movable | PG_isolated
_SCAN_CHUNK = 256  # frames the migration scanner looks at per hold of the Memory lock
_TRIM_HEAP_FRAMES = 1024


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


class Compaction:
    """Evacuation and compaction, mixed into :class:`~zsmalloc.mm.Memory`."""

    # What the mixin uses of its Memory, which defines all of it (the
    # migration calls are Migration's, the other mixin); declared here for the
    # type checker, nothing below is defined at run time.
    if TYPE_CHECKING:
        _lock: threading.Lock
        _pcp: list[int]
        _free: list[int]
        arena: mmap.mmap
        hwm: int
        refcount: array[int]
        vmstat: Counters

        def exclude_range(self, start: int, end: int) -> None: ...
        def unexclude_range(self, start: int, end: int) -> None: ...
        def _drain(self, pfns: list[int]) -> None: ...
        def _shrink_descriptors(self, hwm: int) -> None: ...
        def movable_pfns(self, start: int = 0, end: int | None = None) -> list[int]: ...
        def isolate_movable_page(self, pfn: int, mode: MigrateMode = MigrateMode.SYNC) -> bool: ...
        def migrate_pages(
            self,
            pfns: list[int],
            mode: MigrateMode = MigrateMode.SYNC,
            target: tuple[int, int] | Callable[[int], tuple[int, int]] | None = None,
            passes: int = NR_MIGRATE_PASSES,
            putback: bool = True,
            lock_timeout: float | None = None,
        ) -> MigrateResult: ...
        def descriptor_snapshot(self, start: int, end: int | None = None) -> tuple[bytes, array]: ...

    def evacuate(
        self,
        start: int,
        end: int,
        mode: MigrateMode = MigrateMode.SYNC,
        keep_excluded: bool = False,
    ) -> EvacuateResult:
        """Move every movable page out of ``[start, end)``.

        The allocator stays out of the range while this runs, and afterwards
        too if ``keep_excluded`` (an offlined range); undo with
        ``unexclude_range(start, end)``.
        """
        result = EvacuateResult()
        self.exclude_range(start, end)
        try:
            for _ in range(3):  # pages busy in one round may move in the next
                pfns = self.movable_pfns(start, end)
                if not pfns:
                    break
                isolated = [pfn for pfn in pfns if self.isolate_movable_page(pfn, mode)]
                result.merge(self.migrate_pages(isolated, mode))
        finally:
            if not keep_excluded:
                self.unexclude_range(start, end)
        with self._lock:
            result.remaining = [pfn for pfn in range(start, min(end, self.hwm)) if self.refcount[pfn] > 0]
        self.vmstat["evacuate_runs"] += 1
        return result

    def compact(self, mode: MigrateMode = MigrateMode.SYNC) -> CompactResult:
        """Move in-use movable frames down into free frames, then lower the high-water mark."""
        result = CompactResult(hwm_before=self.hwm)
        migrate_pfn = self.hwm - 1  # the migration scanner, walking down (cc->migrate_pfn)
        while True:
            with self._lock:
                lowest_free = min([*self._pcp, *self._free[:1]], default=self.hwm)
                migrate_pfn = min(migrate_pfn, self.hwm - 1)  # another thread may have shrunk it
            batch: list[int] = []
            while migrate_pfn > lowest_free and len(batch) < COMPACT_BATCH:
                lo = max(lowest_free + 1, migrate_pfn + 1 - _SCAN_CHUNK)
                flags, refcount = self.descriptor_snapshot(lo, migrate_pfn + 1)
                for i in range(len(flags) - 1, -1, -1):
                    if len(batch) == COMPACT_BATCH:
                        break
                    if flags[i] & _MOVABLE_MASK == PG_movable and refcount[i] > 0:
                        batch.append(lo + i)
                    migrate_pfn = lo + i - 1
                else:
                    migrate_pfn = lo - 1
            if not batch:
                break
            isolated = [p for p in batch if self.isolate_movable_page(p, mode)]
            if isolated:
                result.merge(self.migrate_pages(isolated, mode, target=_below))
        result.released = self.shrink_arena()
        if result.released < _TRIM_HEAP_FRAMES:  # (a bigger shrink has trimmed the heap already)
            trim_process_heap()  # whoever compacts wants the process's memory back, the C heap's too
        result.hwm_after = self.hwm
        self.vmstat["compact_runs"] += 1
        self.vmstat["compact_pages_moved"] += result.succeeded
        return result

    def shrink_arena(self) -> int:
        """Lower the high-water mark to just above the highest frame in use.

        Free frames above it leave the hot list and the cold heap (given back
        to the OS if they were resident), and the descriptor arrays shrink.
        Returns how many free frames were dropped.
        """
        with self._lock:
            refcount = self.refcount
            new_hwm = self.hwm
            while new_hwm > 0 and refcount[new_hwm - 1] <= 0:
                new_hwm -= 1
            if new_hwm == self.hwm:
                return 0
            resident = [pfn for pfn in self._pcp if pfn >= new_hwm]
            if resident:
                self._drain(resident)
                self._pcp[:] = [pfn for pfn in self._pcp if pfn < new_hwm]
            self._free[:] = [pfn for pfn in self._free if pfn < new_hwm]
            heapq.heapify(self._free)
            dropped = self.hwm - new_hwm
            self.arena.madvise(mmap.MADV_DONTNEED, new_hwm << PAGE_SHIFT, dropped << PAGE_SHIFT)
            self.hwm = new_hwm
            self._shrink_descriptors(new_hwm)
        if dropped >= _TRIM_HEAP_FRAMES:
            trim_process_heap()  # the shrunk descriptor arrays left free heap memory
        return dropped
