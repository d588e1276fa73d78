"""Physical memory for the model: page frames, page descriptors, page locks.

Which kernel this models: the page allocator's per-cpu lists and free lists
(mm/page_alloc.c), the page lock and the reference count of struct page, and
the movable-ops registration of mainline 6.17 (owners register callbacks
per page type, where 4.8 had ``__SetPageMovable(page, mapping)``; see
mm/migrate.py for the renames).  The migration core (mm/migrate.py) and
evacuation and compaction (mm/compaction.py) are plain functions over a
Memory; the methods of the same names here are their public entry points.

This module is the model's "VM".  It owns a single private anonymous mmap
(the *arena*) cut into 4 KiB frames; a frame's page frame number (pfn) is its
index in the arena.  It knows nothing of zsmalloc: an owner allocates frames,
writes its bookkeeping into the descriptor words it is given, and, if it wants
its pages to be movable, registers callbacks (see ``register_movable_ops``).

Arena and descriptors::

    arena (one mmap, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
    +-----------+-----------+-----------+-----------+-- ... --+-----------+
    |  pfn 0    |  pfn 1    |  pfn 2    |  pfn 3    |         | capacity-1|
    +-----------+-----------+-----------+-----------+-- ... --+-----------+
    |<--------------- hwm (frames ever handed out) --------->|  untouched:
                                                                no RSS, no
    descriptors, one slot per pfn below hwm (struct of arrays)  descriptor
      flags             bytearray   PG_locked | PG_movable | PG_isolated
      refcount          array('i')  0 = free frame
      movable_ops       array('B')  index into the registered callback table
      private, index    array('q')  two words for the owner (zsmalloc: zspage id, huge handle)
      next              array('q')  link to the owner's next page (zsmalloc: zspage chain)
      first_obj_offset  array('H')

That is 32 bytes of Python-side memory per frame ever used (the kernel's
struct page is 64), and nothing at all for capacity never touched.

Free frames live in two places, as in the kernel's page allocator:

- the *hot list* (the kernel's per-cpu page lists): frames freed recently,
  still resident, handed out again first, last freed first.  Reusing one costs
  no page fault.  When it grows past ``pcp_high`` frames, its oldest
  ``pcp_batch`` frames are drained: given back to the OS with
  ``madvise(MADV_DONTNEED)`` (adjacent frames in one call) and moved to
- the *cold heap*: frames with no memory behind them, handed out lowest pfn
  first so that the arena stays dense; above them, the never-touched frames
  from the high-water mark to the capacity.

So the process RSS follows the frames in use, give or take ``pcp_high``
frames (256 KiB by default), and ``drain_pages()`` returns even those.  On
the machines this was built on, one ``madvise`` costs about 10 us and the
page fault that follows it about 3 us: the hot list is what keeps a
malloc/free churn from paying both for every page.  (A shared mapping would
only look freed: its RSS drops while the memory stays allocated as shmem.)
A frame comes with unspecified contents, like the kernel's ``alloc_page``
without ``__GFP_ZERO``.

A zoned Memory (``Memory.new_zoned``, the model of the engine's, for the
fragmentation simulation) hands frames out of a zone's buddy allocator
instead (:class:`zsmalloc.mm.zone.Zone`): order-0 frames and blocks of any
order, each of a migratetype; there is no hot list, and every pfn counts as
handed out (the high-water mark is the capacity).  Frames the zone
compaction's free scanner took are held in ``_captured`` until a migration
uses them (``take_captured``) or they go back.

Locking: ``_lock`` guards the allocator, the refcounts and every
read-modify-write of a flags byte.  It is a leaf lock: nothing is acquired
while holding it.  The page lock (PG_locked) is the kernel's: ``lock_page``
sleeps until the bit is clear, ``trylock_page`` never waits.
"""

from __future__ import annotations

import copy
import heapq
import mmap
import os
import random
import threading
from array import array
from collections.abc import Callable
from typing import TypeVar

from zsmalloc.errors import OutOfFramesError, PageStateError, PoolClosedError, WouldSleepError, ZoneError
from zsmalloc.mm import compaction, migrate
from zsmalloc.mm.compaction import CompactResult, EvacuateResult, ZoneCompactResult
from zsmalloc.mm.constants import PAGE_SHIFT, PAGE_SIZE, PG_isolated, PG_locked, PG_movable
from zsmalloc.mm.counters import Counters
from zsmalloc.mm.migrate import NR_MIGRATE_PASSES, MigrateMode, MigrateResult, MovableOps, Target
from zsmalloc.mm.zone import MOVABLE, Zone, _count_arg, _mt_arg, _order_arg

# Linux's MAP_NORESERVE; the mmap module does not export it.  Without it a
# large capacity would be refused by the kernel's overcommit heuristic.
VMSTAT_EVENTS = (
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
)

ALLOC_EVENTS = ("nr_alloc", "nr_free", "nr_alloc_fail", "nr_drained", "nr_used_max")

T = TypeVar("T")

_MAP_NORESERVE = 0x4000
_MIN_GROWTH = 1024  # descriptor arrays: at least this many entries (buffers > 512 B stay out of pymalloc)
PCP_HIGH = 64
PCP_BATCH = 32


def _physical_pages() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // PAGE_SIZE
    except (ValueError, OSError):  # pragma: no cover - non-Linux sysconf
        return 1 << 20


class Memory:
    """Page frames in one mmap arena, with descriptors, locks and a page allocator.

    ``capacity`` is the number of frames the arena may ever hold (default: the
    machine's physical memory).  Only frames actually handed out cost memory.
    """

    def __init__(
        self,
        capacity: int | None = None,
        *,
        pcp_high: int = PCP_HIGH,
        pcp_batch: int = PCP_BATCH,
        sleep_on_page_lock: bool = True,
    ) -> None:
        if capacity is None:
            capacity = _physical_pages()
        if capacity < 1:
            raise ValueError(f"capacity must be at least one frame, not {capacity}")
        if pcp_high < 0 or pcp_batch <= 0:
            raise ValueError("pcp_high must be >= 0 and pcp_batch > 0")
        self.capacity = capacity
        #: False: a wait for a locked page raises WouldSleepError instead (single-threaded checkers)
        self.sleep_on_page_lock = sleep_on_page_lock
        self.pcp_high = pcp_high
        self.pcp_batch = pcp_batch
        self.arena = mmap.mmap(
            -1,
            capacity * PAGE_SIZE,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
        #: the whole arena as bytes, and as native unsigned 64-bit words (headers live there)
        self.buf = memoryview(self.arena)
        self.words = self.buf.cast("Q")

        self.flags = bytearray()
        self.refcount = array("i")
        self.movable_ops = array("B")
        self.private = array("q")
        self.index = array("q")
        self.next = array("q")
        self.first_obj_offset = array("H")

        self._lock = threading.Lock()
        self._page_wait = threading.Condition(self._lock)
        self._page_waiters = 0
        self._excluded: list[tuple[int, int]] = []  # pfn ranges the allocator must not use
        self._pcp: list[int] = []  # hot list: free, still resident, LIFO
        self._free: list[int] = []  # cold heap: free, given back to the OS
        self.hwm = 0  # frames ever handed out; descriptors exist below it
        self._ops: list[MovableOps | None] = [None]  # movable_ops id 0 = not movable

        # counters (vmstat-like)
        self.nr_used = 0
        #: allocator events: frames handed out and freed, failures, drains, peak use
        self.events = Counters(ALLOC_EVENTS)
        #: migration and compaction events (like /proc/vmstat)
        self.vmstat = Counters(VMSTAT_EVENTS)

        self._fail_next = 0
        self._fail_probability = 0.0
        self._fail_rng = random.Random(0)
        self._closed = False
        #: the buddy allocator of a zoned Memory
        self._zone: Zone | None = None
        #: free frames the zone compaction isolated as migration targets
        self._captured: list[int] = []

    @classmethod
    def new_zoned(cls, capacity: int, *, sleep_on_page_lock: bool = True) -> Memory:
        """A Memory whose frames come from one zone's buddy allocator, all of
        them free at first, every pageblock movable."""
        if capacity < 1:
            raise ValueError(f"capacity must be at least one frame, not {capacity}")
        try:
            zone = Zone(capacity)
        except ZoneError as exc:
            raise ValueError(str(exc)) from None
        mem = cls(capacity, pcp_high=0, pcp_batch=1, sleep_on_page_lock=sleep_on_page_lock)
        mem._zone = zone
        mem._grow_descriptors(capacity)  # a zone owns every frame from the start
        mem.hwm = capacity
        return mem

    @property
    def zoned(self) -> bool:
        """Whether this Memory hands out its frames from a zone."""
        return self._zone is not None

    def _zone_call(self, call: Callable[[Zone], T]) -> T:
        """``call`` on the zone of a zoned Memory, under the lock (the engine's ``with_zone_mut``)."""
        zone = self._zone
        if zone is None:
            raise ValueError("only a zoned Memory has a zone")
        with self._lock:
            return call(zone)

    def zone_snapshot(self) -> Zone:
        """A copy of the zone of a zoned Memory, taken under the lock."""
        return self._zone_call(copy.deepcopy)

    def compaction_deferred(self, order: int) -> bool:
        """The zone's ``compaction_deferred(order)``: skip this compaction?"""
        _order_arg(order)
        return self._zone_call(lambda z: z.compaction_deferred(order))

    def defer_compaction(self, order: int) -> None:
        """The zone's ``defer_compaction(order)``: a compaction for ``order`` failed."""
        _order_arg(order)
        self._zone_call(lambda z: z.defer_compaction(order))

    def compaction_defer_reset(self, order: int, alloc_success: bool) -> None:
        """The zone's ``compaction_defer_reset``: a compaction for ``order`` succeeded."""
        _order_arg(order)
        self._zone_call(lambda z: z.compaction_defer_reset(order, alloc_success))

    # ------------------------------------------------------------------
    # page allocator

    def alloc_page(self) -> int:
        """Hand out one frame with refcount 1; raise OutOfFramesError if none."""
        with self._lock:
            return self._alloc_frame()

    def alloc_pages(self, n: int) -> list[int]:
        """Hand out ``n`` frames (not contiguous), all or none, under one lock hold.

        On failure every frame taken goes back exactly where it came from and
        the counters are restored, so the failed call changes nothing but
        ``nr_alloc_fail``.
        """
        return self.alloc_pages_mt(n, MOVABLE)

    def alloc_pages_mt(self, n: int, mt: str) -> list[int]:
        """``alloc_pages`` of a migratetype (the gfp flags' __GFP_MOVABLE or not):
        it places the frames in a zoned Memory, and means nothing to the
        lowest-frame-first allocator."""
        _mt_arg(mt)
        with self._lock:
            hwm, used_max = self.hwm, self.events["nr_used_max"]
            pcp_before = self._pcp[:]  # where each frame came from, should the call fail
            pfns: list[int] = []
            try:
                for _ in range(n):
                    pfns.append(self._alloc_frame(mt=mt))
            except OutOfFramesError:
                on_pcp = set(pcp_before)
                fresh = []
                for pfn in reversed(pfns):  # undo in reverse: the hot list gets its order back
                    self.refcount[pfn] = 0
                    if self._zone is not None:
                        self._zone.free_pages(pfn, 0)
                    elif pfn in on_pcp:
                        self._pcp.append(pfn)
                    elif pfn < hwm:
                        heapq.heappush(self._free, pfn)
                    else:
                        fresh.append(pfn)
                if any(pfn >= hwm for pfn in self._free):  # the hwm moved past skipped frames
                    for pfn in fresh:
                        heapq.heappush(self._free, pfn)
                else:
                    self.hwm = hwm
                self.events["nr_used_max"] = used_max
                self.events["nr_alloc"] -= len(pfns)
                self.nr_used -= len(pfns)
                raise
            return pfns

    def alloc_page_in(self, lo: int = 0, hi: int | None = None) -> int:
        """Hand out one frame whose pfn lies in ``[lo, hi)``, lowest free first.

        The migration core uses it to place destination pages (a target range,
        or below the page being moved when compacting).
        """
        hi = self.capacity if hi is None else min(hi, self.capacity)
        with self._lock:
            return self._alloc_frame(lo, hi)

    def _alloc_frame(self, lo: int = 0, hi: int = -1, mt: str = MOVABLE) -> int:
        """One frame from ``[lo, hi)`` (lowest free first), or from anywhere when
        ``hi`` is negative (in a zoned Memory: from the zone, of migratetype
        ``mt``, above the min watermark; a zone serves no ranges)."""
        if self._fail_next or self._fail_probability:
            if self._fail_next:
                self._fail_next -= 1
                self.events["nr_alloc_fail"] += 1
                raise OutOfFramesError("page allocation failed (injected)")
            if self._fail_rng.random() < self._fail_probability:
                self.events["nr_alloc_fail"] += 1
                raise OutOfFramesError("page allocation failed (injected)")
        zone = self._zone
        if zone is not None:
            if lo > 0 or hi >= 0:
                raise ValueError("a zoned Memory hands out no frame by pfn range")
            try:
                pfn = zone.alloc_pages(0, mt, zone.watermarks.min)
            except ZoneError:
                pfn = -1
        elif hi < 0 and not self._excluded:
            if self._pcp:
                pfn = self._pcp.pop()
            elif self._free:
                pfn = heapq.heappop(self._free)
            elif self.hwm < self.capacity:
                pfn = self._take_hwm_frame()
            else:
                pfn = -1
        else:
            pfn = self._take_frame_in(lo, self.capacity if hi < 0 else hi)
        if pfn < 0:
            self.events["nr_alloc_fail"] += 1
            raise OutOfFramesError(f"no free frame (capacity {self.capacity}, {self.nr_used} in use)")
        return self._hand_out(pfn, 1)

    def _hand_out(self, pfn: int, nr_pages: int) -> int:
        """``pfn``, heading ``nr_pages`` frames, is in use now: refcount 1, and counted."""
        self.refcount[pfn] = 1
        self.events["nr_alloc"] += 1
        self.nr_used += nr_pages
        if self.nr_used > self.events["nr_used_max"]:
            self.events["nr_used_max"] = self.nr_used
        return pfn

    def alloc_block(self, order: int, mt: str, mark: int) -> int:
        """A block of ``2^order`` frames of migratetype ``mt`` from a zoned Memory,
        if the zone stays above ``mark`` free pages: its head frame has
        refcount 1 and stands for the block (``put_page`` of the head frees it all)."""
        _order_arg(order)
        _mt_arg(mt)
        _count_arg("mark", mark)
        zone = self._zone
        if zone is None:
            raise ValueError("only a zoned Memory hands out blocks")
        with self._lock:
            try:
                pfn = zone.alloc_pages(order, mt, mark)
            except ZoneError as exc:
                self.events["nr_alloc_fail"] += 1
                raise OutOfFramesError(str(exc)) from None
            return self._hand_out(pfn, 1 << order)

    def take_captured(self) -> int | None:
        """A frame the zone compaction captured, now a migration's destination
        (``compaction_alloc``); the caller holds the lock."""
        if not self._captured:
            return None
        return self._hand_out(self._captured.pop(), 1)

    def _take_hwm_frame(self) -> int:
        pfn = self.hwm
        if pfn >= len(self.flags):
            self._grow_descriptors(pfn + 1)
        self.hwm = pfn + 1
        return pfn

    def _allowed(self, pfn: int, lo: int, hi: int) -> bool:
        if not lo <= pfn < hi:
            return False
        return not any(start <= pfn < end for start, end in self._excluded)

    def _take_frame_in(self, lo: int, hi: int) -> int:
        """The lowest free frame in [lo, hi) outside the excluded ranges, or -1."""
        pcp = self._pcp
        best = -1
        for i, pfn in enumerate(pcp):
            if self._allowed(pfn, lo, hi) and (best < 0 or pfn < pcp[best]):
                best = i
        free = self._free
        if best >= 0 and not (free and free[0] < pcp[best]):
            return pcp.pop(best)
        if best >= 0:
            hi = pcp[best]  # a cold frame below the best hot one, or else the hot one
        rejected = []
        pfn = -1
        while free and free[0] < hi:
            cand = heapq.heappop(free)
            if self._allowed(cand, lo, hi):
                pfn = cand
                break
            rejected.append(cand)
        for cand in rejected:
            heapq.heappush(free, cand)
        if pfn >= 0:
            return pfn
        if best >= 0:
            return pcp.pop(best)
        # never-touched frames above the high-water mark; skipped ones become cold free frames
        while self.hwm < min(hi, self.capacity):
            if self._allowed(self.hwm, lo, hi):
                return self._take_hwm_frame()
            heapq.heappush(free, self._take_hwm_frame())
        return -1

    def exclude_range(self, start: int, end: int) -> None:
        """Keep the allocator out of ``[start, end)`` (the kernel's MIGRATE_ISOLATE pageblocks)."""
        if not 0 <= start < end:
            raise ValueError(f"bad pfn range [{start}, {end})")
        with self._lock:
            self._excluded.append((start, end))

    def unexclude_range(self, start: int, end: int) -> None:
        with self._lock:
            self._excluded.remove((start, end))

    def free_page(self, pfn: int) -> None:
        """The owner lets the frame go: drop its reference (kernel ``__free_page``)."""
        self.put_page(pfn)

    def get_page(self, pfn: int) -> None:
        """Take a reference on an in-use frame, so it is not reused while held."""
        with self._lock:
            if self.refcount[pfn] <= 0:
                raise PageStateError(f"get_page on free frame {pfn}")
            self.refcount[pfn] += 1

    def put_page(self, pfn: int) -> None:
        """Drop a reference; the frame returns to the free pool when none is left."""
        with self._lock:
            count = self.refcount[pfn] - 1
            if count < 0:
                raise PageStateError(f"put_page on free frame {pfn}")
            if count == 0 and self.flags[pfn] & PG_locked:
                raise PageStateError(f"frame {pfn} freed while locked")
            self.refcount[pfn] = count
            if count == 0:
                self._release_frame(pfn)

    def _release_frame(self, pfn: int) -> None:
        self.flags[pfn] = 0
        self.movable_ops[pfn] = 0
        self.private[pfn] = 0
        self.index[pfn] = 0
        self.next[pfn] = 0
        self.first_obj_offset[pfn] = 0
        self.events["nr_free"] += 1
        zone = self._zone
        if zone is not None:
            block = zone.allocated_block(pfn)  # the head of a block gives back the whole block
            order = 0 if block is None else block[0]
            zone.free_pages(pfn, order)
            self.nr_used -= 1 << order
            return
        self.nr_used -= 1
        pcp = self._pcp
        pcp.append(pfn)
        if len(pcp) > self.pcp_high:
            batch = min(self.pcp_batch, len(pcp))
            self._drain(pcp[:batch])
            del pcp[:batch]

    def _drain(self, pfns: list[int]) -> None:
        """Give frames back to the OS, one madvise per run of adjacent pfns."""
        pfns = sorted(pfns)
        madvise = self.arena.madvise
        start = prev = pfns[0]
        for pfn in pfns[1:]:
            if pfn != prev + 1:
                madvise(mmap.MADV_DONTNEED, start << PAGE_SHIFT, (prev + 1 - start) << PAGE_SHIFT)
                start = pfn
            prev = pfn
        madvise(mmap.MADV_DONTNEED, start << PAGE_SHIFT, (prev + 1 - start) << PAGE_SHIFT)
        free = self._free
        for pfn in pfns:
            heapq.heappush(free, pfn)
        self.events["nr_drained"] += len(pfns)

    def drain_pages(self) -> int:
        """Give every frame on the hot list back to the OS (``drain_all_pages``).

        Then lower the high-water mark over the free frames at the top of the
        arena (``shrink_arena``), so their descriptors go too.  Returns the
        number of frames drained.
        """
        self._check_open()
        with self._lock:
            n = len(self._pcp)
            if n:
                self._drain(self._pcp)
                self._pcp.clear()
        self.shrink_arena()
        return n

    nr_alloc = property(lambda self: self.events["nr_alloc"], doc="frames handed out so far")
    nr_free = property(lambda self: self.events["nr_free"], doc="frames returned so far")
    nr_alloc_fail = property(lambda self: self.events["nr_alloc_fail"], doc="allocations refused")
    nr_drained = property(lambda self: self.events["nr_drained"], doc="frames given back to the OS")
    nr_used_max = property(lambda self: self.events["nr_used_max"], doc="peak frames in use")

    @property
    def nr_pcp(self) -> int:
        """Free frames still resident on the hot list."""
        return len(self._pcp)

    def _grow_descriptors(self, needed: int) -> None:
        old = len(self.flags)
        new = min(self.capacity, max(needed, old + old // 4, _MIN_GROWTH))  # +25%: the slack is resident
        extra = new - old
        self.flags.extend(bytes(extra))
        for arr in self._descriptor_arrays():
            arr.frombytes(bytes(extra * arr.itemsize))

    def _shrink_descriptors(self, hwm: int) -> None:
        keep = max(hwm, _MIN_GROWTH)
        if keep >= len(self.flags):
            return
        del self.flags[keep:]
        for arr in self._descriptor_arrays():
            del arr[keep:]

    def _descriptor_arrays(self) -> tuple[array, ...]:
        return (
            self.refcount,
            self.movable_ops,
            self.private,
            self.index,
            self.next,
            self.first_obj_offset,
        )

    def page_in_use(self, pfn: int) -> bool:
        with self._lock:
            return 0 <= pfn < self.hwm and self.refcount[pfn] > 0

    def used_pfns(self) -> list[int]:
        """The pfns of all frames in use, ascending."""
        with self._lock:
            refcount = self.refcount
            return [pfn for pfn in range(self.hwm) if refcount[pfn] > 0]

    # ------------------------------------------------------------------
    # fault injection

    def inject_failures(self, next_n: int = 0, probability: float = 0.0, seed: int | None = 0) -> None:
        """Make the next ``next_n`` allocations fail, then each with ``probability``."""
        if next_n < 0 or not 0.0 <= probability <= 1.0:
            raise ValueError("next_n must be >= 0 and probability within [0, 1]")
        with self._lock:
            self._fail_next = next_n
            self._fail_probability = probability
            self._fail_rng = random.Random(seed)

    def clear_failures(self) -> None:
        self.inject_failures(0, 0.0)

    # ------------------------------------------------------------------
    # page lock (PG_locked) and flags

    def trylock_page(self, pfn: int) -> bool:
        with self._lock:
            flags = self.flags[pfn]
            if flags & PG_locked:
                return False
            self.flags[pfn] = flags | PG_locked
            return True

    def _would_sleep(self, call: str, pfn: int) -> None:
        if not self.sleep_on_page_lock and self.flags[pfn] & PG_locked:
            raise WouldSleepError(f"{call}({pfn}) would sleep: the page is locked")

    def lock_page(self, pfn: int, timeout: float | None = None) -> bool:
        """Sleep until the page lock is ours; False only if ``timeout`` ran out."""
        self._would_sleep("lock_page", pfn)
        with self._page_wait:
            self._page_waiters += 1
            try:
                ok = self._page_wait.wait_for(lambda: not self.flags[pfn] & PG_locked, timeout)
            finally:
                self._page_waiters -= 1
            if ok:
                self.flags[pfn] |= PG_locked
            return ok

    def unlock_page(self, pfn: int) -> None:
        with self._lock:
            flags = self.flags[pfn]
            if not flags & PG_locked:
                raise PageStateError(f"unlock_page of unlocked frame {pfn}")
            self.flags[pfn] = flags & ~PG_locked
            if self._page_waiters:
                self._page_wait.notify_all()

    def wait_on_page_locked(self, pfn: int, timeout: float | None = None) -> bool:
        """Sleep until the page is unlocked, without taking the lock."""
        self._would_sleep("wait_on_page_locked", pfn)
        with self._page_wait:
            self._page_waiters += 1
            try:
                return self._page_wait.wait_for(lambda: not self.flags[pfn] & PG_locked, timeout)
            finally:
                self._page_waiters -= 1

    def trylock_pages(self, pfns: list[int]) -> bool:
        """Trylock every page, all or none (one trylock_page per page, under one lock hold)."""
        with self._lock:
            flags = self.flags
            for pfn in pfns:
                if flags[pfn] & PG_locked:
                    return False
            for pfn in pfns:
                flags[pfn] |= PG_locked
            return True

    def page_locked(self, pfn: int) -> bool:
        return bool(self.flags[pfn] & PG_locked)

    def set_flag(self, pfn: int, bit: int) -> None:
        if bit & PG_locked:
            raise PageStateError("take the page lock with lock_page or trylock_page")
        with self._lock:
            self.flags[pfn] |= bit

    def clear_flag(self, pfn: int, bit: int) -> None:
        if bit & PG_locked:
            raise PageStateError("release the page lock with unlock_page")
        with self._lock:
            self.flags[pfn] &= ~bit

    # ------------------------------------------------------------------
    # movable pages: the owner side of the migration protocol

    def register_movable_ops(self, ops: MovableOps) -> int:
        """Register an owner's ``isolate`` / ``migrate`` / ``putback`` callbacks.

        Returns the id to pass to :meth:`set_page_movable`.
        """
        with self._lock:
            if len(self._ops) >= 256:
                raise ValueError("too many movable-page owners on one Memory")
            self._ops.append(ops)
            return len(self._ops) - 1

    def unregister_movable_ops(self, ops_id: int) -> None:
        with self._lock:
            self._ops[ops_id] = None

    def set_page_movable(self, pfn: int, ops_id: int) -> None:
        """Mark a page movable with the given owner's callbacks (kernel ``__SetPageMovable``)."""
        with self._lock:
            self.movable_ops[pfn] = ops_id
            self.flags[pfn] |= PG_movable

    def set_pages_movable(self, pfns: list[int], ops_id: int) -> None:
        """``__SetPageMovable`` on each of an owner's new pages.

        A new page is the owner's alone, but a PFN walker may hold a passing
        reference: ``isolate_movable_ops_page`` takes one (get_page_unless_zero)
        before it looks whether the page is movable, and drops it when it is
        not yet.  So the page must be in use and unlocked; its refcount may be
        above one.
        """
        with self._lock:
            flags, movable_ops, refcount = self.flags, self.movable_ops, self.refcount
            for pfn in pfns:
                if flags[pfn] & PG_locked or refcount[pfn] < 1:
                    raise PageStateError(f"new page {pfn} is locked or free")
            for pfn in pfns:
                movable_ops[pfn] = ops_id
                flags[pfn] |= PG_movable

    def reset_page(self, pfn: int) -> None:
        """The owner forgets the page: clear its owner words and PG_movable (``reset_page``)."""
        with self._lock:
            self.flags[pfn] &= ~PG_movable
            self.movable_ops[pfn] = 0
            self.private[pfn] = 0
            self.index[pfn] = 0
            self.next[pfn] = 0
            self.first_obj_offset[pfn] = 0

    def unlock_and_free_pages(self, pfns: list[int], keep_descriptor: tuple[int, ...] = ()) -> None:
        """The owner is done with these locked pages: clear them, unlock, drop its reference.

        Per page this is the kernel's ``reset_page``, ``unlock_page``,
        ``put_page``; a page the VM still holds (isolated) stays allocated
        until the VM drops its own reference.  A page whose last reference
        goes is cleared once, by the release of its frame.
        """
        with self._lock:
            flags, refcount = self.flags, self.refcount
            for pfn in pfns:
                if not flags[pfn] & PG_locked:
                    raise PageStateError(f"unlock_and_free_pages: frame {pfn} is not locked")
                if refcount[pfn] <= 0:
                    raise PageStateError(f"unlock_and_free_pages: frame {pfn} is free")
            for pfn in pfns:
                count = refcount[pfn] - 1
                refcount[pfn] = count
                if not count:
                    self._release_frame(pfn)  # clears the whole descriptor, flags included
                elif pfn in keep_descriptor:  # only the deliberately broken protocol asks this
                    flags[pfn] &= ~PG_locked
                else:
                    flags[pfn] &= ~(PG_locked | PG_movable)
                    self.movable_ops[pfn] = 0
                    self.private[pfn] = 0
                    self.index[pfn] = 0
                    self.next[pfn] = 0
                    self.first_obj_offset[pfn] = 0
            if self._page_waiters:
                self._page_wait.notify_all()

    def clear_page_movable(self, pfn: int) -> None:
        with self._lock:
            self.flags[pfn] &= ~PG_movable

    def page_movable(self, pfn: int) -> bool:
        return bool(self.flags[pfn] & PG_movable)

    def page_isolated(self, pfn: int) -> bool:
        return bool(self.flags[pfn] & PG_isolated)

    def descriptor_snapshot(self, start: int, end: int | None = None) -> tuple[bytes, array]:
        """Copies of the flags and refcounts of ``[start, end)`` (clamped to the arena).

        Scanners work on these, not on the live arrays: the copy is one C
        memcpy under the Memory lock, so a long scan neither holds the lock
        (starving allocations) nor races with ``shrink_arena``.
        """
        with self._lock:
            end = self.hwm if end is None else min(end, self.hwm)
            start = min(start, end)
            return bytes(self.flags[start:end]), self.refcount[start:end]

    # ------------------------------------------------------------------
    # the migration core (mm/migrate.py) and compaction (mm/compaction.py)

    def isolate_movable_page(self, pfn: int, mode: MigrateMode = MigrateMode.SYNC) -> bool:
        """``isolate_movable_ops_page`` (6.17; ``isolate_movable_page`` before).

        On success the page is PG_isolated, unlocked, and the VM holds a
        reference on it; it must be passed to ``migrate_pages`` or
        ``putback_movable_page``.
        """
        self._check_open()
        return migrate.isolate_movable_ops_page(self, pfn, mode)

    def putback_movable_page(self, pfn: int) -> None:
        """Give an isolated page back to its owner (``putback_movable_ops_page`` in 6.17)."""
        self._check_open()
        migrate.putback_movable_page(self, pfn)

    def migrate_pages(
        self,
        pfns: list[int],
        mode: MigrateMode = MigrateMode.SYNC,
        target: Target = None,
        passes: int = NR_MIGRATE_PASSES,
        putback: bool = True,
        lock_timeout: float | None = None,
    ) -> MigrateResult:
        """Move isolated pages to new frames (kernel ``migrate_pages``).

        ``target`` is the pfn range ``[lo, hi)`` destinations are taken from
        (lowest free first; default anywhere), or a function giving that
        range for each source pfn.  A page whose owner answers
        -EAGAIN is retried in the next pass, up to ``passes``.  Pages that
        could not move are put back to their owners when ``putback`` is true
        (else they stay isolated and are listed in ``failed_pfns``).
        """
        self._check_open()
        return migrate.migrate_pages(self, pfns, mode, target, passes, putback, lock_timeout)

    def move_pages(
        self,
        pfns: list[int],
        mode: MigrateMode = MigrateMode.SYNC,
        target: tuple[int, int] | None = None,
        passes: int = NR_MIGRATE_PASSES,
    ) -> MigrateResult:
        """Isolate, migrate, and put back what could not move, in one call."""
        self._check_open()
        return migrate.move_pages(self, pfns, mode, target, passes)

    def movable_pfns(self, start: int = 0, end: int | None = None) -> list[int]:
        """In-use, movable, not isolated frames in ``[start, end)``."""
        return migrate.movable_pfns(self, start, end)

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
        self._check_open()
        return compaction.evacuate(self, start, end, mode, keep_excluded)

    def compact(self, mode: MigrateMode = MigrateMode.SYNC) -> CompactResult:
        """Move in-use movable frames down into free frames, then lower the high-water mark."""
        self._check_open()
        return compaction.compact(self, mode)

    def compact_zone(self, order: int, mt: str, mode: MigrateMode = MigrateMode.SYNC) -> ZoneCompactResult:
        """``compact_zone`` for a failed request of ``order`` and ``mt`` on a zoned
        Memory: the two scanners until a free block of ``order`` exists or they meet."""
        self._check_open()
        _order_arg(order)
        _mt_arg(mt)
        return compaction.compact_zone(self, order, mt, mode)

    def shrink_arena(self) -> int:
        """Lower the high-water mark to just above the highest frame in use.

        Free frames above it leave the hot list and the cold heap (given back
        to the OS if they were resident), and the descriptor arrays shrink.
        Returns how many free frames were dropped.
        """
        self._check_open()
        return compaction.shrink_arena(self)

    # ------------------------------------------------------------------

    def frame(self, pfn: int) -> memoryview:
        """A read-write view of one frame's 4096 bytes (for tools and tests)."""
        if not self.page_in_use(pfn):
            raise PageStateError(f"frame {pfn} is not in use")
        return self.buf[pfn << PAGE_SHIFT : (pfn + 1) << PAGE_SHIFT]

    def stats(self) -> dict[str, int]:
        return {
            "capacity": self.capacity,
            "hwm": self.hwm,
            "nr_used": self.nr_used,
            "nr_used_max": self.nr_used_max,
            "nr_alloc": self.nr_alloc,
            "nr_free": self.nr_free,
            "nr_alloc_fail": self.nr_alloc_fail,
            "nr_pcp": len(self._pcp),
            "nr_drained": self.nr_drained,
            **self.vmstat.to_dict(),
        }

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosedError("the memory is closed: its frames are gone")

    def close(self) -> None:
        """Give the whole arena back to the OS.  Frames must not be used afterwards."""
        if self._closed:
            return
        self._closed = True
        self._pcp.clear()
        self.arena.madvise(mmap.MADV_DONTNEED, 0, self.capacity * PAGE_SIZE)
        self.words.release()
        self.buf.release()
        try:
            self.arena.close()
        except BufferError:  # a caller still holds a view; the mapping goes with it
            pass

    def __repr__(self) -> str:
        return f"<Memory {self.nr_used}/{self.capacity} frames in use, hwm {self.hwm}>"
