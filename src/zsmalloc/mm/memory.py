"""Physical memory for the model: page frames, page descriptors, page locks.

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

Frames are handed out lowest pfn first (a heap of free pfns above a
high-water mark), so the arena stays dense.  A frame whose last reference is
dropped is given back to the OS at once with ``madvise(MADV_DONTNEED)``: the
process RSS follows the number of frames in use.  (A shared mapping would only
look freed: its RSS drops while the memory stays allocated as shmem.)

Locking: ``_lock`` guards the allocator, the refcounts and every
read-modify-write of a flags byte.  It is a leaf lock: nothing is acquired
while holding it.  The page lock (PG_locked) is the kernel's: ``lock_page``
sleeps until the bit is clear, ``trylock_page`` never waits.
"""

from __future__ import annotations

import heapq
import mmap
import os
import random
import threading
from array import array

from zsmalloc.errors import OutOfFramesError, PageStateError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

PG_locked = 0x01
PG_movable = 0x02
PG_isolated = 0x04

# Linux's MAP_NORESERVE; the mmap module does not export it.  Without it a
# large capacity would be refused by the kernel's overcommit heuristic.
_MAP_NORESERVE = 0x4000
_MIN_GROWTH = 256


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

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is None:
            capacity = _physical_pages()
        if capacity < 1:
            raise ValueError(f"capacity must be at least one frame, not {capacity}")
        self.capacity = capacity
        self.arena = mmap.mmap(
            -1,
            capacity * PAGE_SIZE,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
        #: the whole arena as bytes, and as native 64-bit words (headers live there)
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
        self._free: list[int] = []  # heap of free pfns below hwm
        self.hwm = 0  # frames ever handed out; descriptors exist below it
        self._ops: list[object | None] = [None]  # movable_ops id 0 = not movable

        # counters (vmstat-like)
        self.nr_used = 0
        self.nr_used_max = 0
        self.nr_alloc = 0
        self.nr_free = 0
        self.nr_alloc_fail = 0

        self._fail_next = 0
        self._fail_probability = 0.0
        self._fail_rng = random.Random(0)
        self._closed = False

    # ------------------------------------------------------------------
    # page allocator

    def alloc_page(self) -> int:
        """Hand out one zeroed frame with refcount 1; raise OutOfFramesError if none."""
        with self._lock:
            if self._fail_next or self._fail_probability:
                if self._fail_next:
                    self._fail_next -= 1
                    self.nr_alloc_fail += 1
                    raise OutOfFramesError("page allocation failed (injected)")
                if self._fail_rng.random() < self._fail_probability:
                    self.nr_alloc_fail += 1
                    raise OutOfFramesError("page allocation failed (injected)")
            if self._free:
                pfn = heapq.heappop(self._free)
            elif self.hwm < self.capacity:
                pfn = self.hwm
                if pfn >= len(self.flags):
                    self._grow_descriptors(pfn + 1)
                self.hwm = pfn + 1
            else:
                self.nr_alloc_fail += 1
                raise OutOfFramesError(f"all {self.capacity} frames are in use")
            self.refcount[pfn] = 1
            self.nr_alloc += 1
            self.nr_used += 1
            if self.nr_used > self.nr_used_max:
                self.nr_used_max = self.nr_used
            return pfn

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
        self.arena.madvise(mmap.MADV_DONTNEED, pfn << PAGE_SHIFT, PAGE_SIZE)
        heapq.heappush(self._free, pfn)
        self.nr_used -= 1
        self.nr_free += 1

    def _grow_descriptors(self, needed: int) -> None:
        old = len(self.flags)
        new = min(self.capacity, max(needed, old * 2, _MIN_GROWTH))
        extra = new - old
        self.flags.extend(bytes(extra))
        for arr in (
            self.refcount,
            self.movable_ops,
            self.private,
            self.index,
            self.next,
            self.first_obj_offset,
        ):
            arr.frombytes(bytes(extra * arr.itemsize))

    def page_in_use(self, pfn: int) -> bool:
        return 0 <= pfn < self.hwm and self.refcount[pfn] > 0

    def used_pfns(self) -> list[int]:
        """The pfns of all frames in use, ascending."""
        with self._lock:
            refcount = self.refcount
            return [pfn for pfn in range(self.hwm) if refcount[pfn] > 0]

    # ------------------------------------------------------------------
    # fault injection

    def inject_failures(
        self, next_n: int = 0, probability: float = 0.0, seed: int | None = 0
    ) -> None:
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

    def lock_page(self, pfn: int, timeout: float | None = None) -> bool:
        """Sleep until the page lock is ours; False only if ``timeout`` ran out."""
        with self._page_wait:
            self._page_waiters += 1
            try:
                ok = self._page_wait.wait_for(
                    lambda: not self.flags[pfn] & PG_locked, timeout
                )
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
        with self._page_wait:
            self._page_waiters += 1
            try:
                return self._page_wait.wait_for(
                    lambda: not self.flags[pfn] & PG_locked, timeout
                )
            finally:
                self._page_waiters -= 1

    def page_locked(self, pfn: int) -> bool:
        return bool(self.flags[pfn] & PG_locked)

    def set_flag(self, pfn: int, bit: int) -> None:
        with self._lock:
            self.flags[pfn] |= bit

    def clear_flag(self, pfn: int, bit: int) -> None:
        with self._lock:
            self.flags[pfn] &= ~bit

    # ------------------------------------------------------------------
    # movable pages: the owner side of the migration protocol

    def register_movable_ops(self, ops: object) -> int:
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

    def clear_page_movable(self, pfn: int) -> None:
        with self._lock:
            self.flags[pfn] &= ~PG_movable

    def page_movable(self, pfn: int) -> bool:
        return bool(self.flags[pfn] & PG_movable)

    def page_isolated(self, pfn: int) -> bool:
        return bool(self.flags[pfn] & PG_isolated)

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
        }

    def close(self) -> None:
        """Give the whole arena back to the OS.  Frames must not be used afterwards."""
        if self._closed:
            return
        self._closed = True
        self.arena.madvise(mmap.MADV_DONTNEED, 0, self.capacity * PAGE_SIZE)
        self.words.release()
        self.buf.release()
        try:
            self.arena.close()
        except BufferError:  # a caller still holds a view; the mapping goes with it
            pass

    def __repr__(self) -> str:
        return f"<Memory {self.nr_used}/{self.capacity} frames in use, hwm {self.hwm}>"
