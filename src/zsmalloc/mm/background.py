"""BackgroundMigration: the VM moving an owner's pages underneath it while it works.

In a running kernel, pages of a zsmalloc pool move without the pool asking:
kcompactd migrates them to build free high-order blocks, memory offlining
evacuates whole ranges, NUMA balancing and CMA move single pages.  This thread
stands in for all of them, for demos and soak runs that want the allocator's
users to run while the movable-page protocol is exercised::

    every ``interval`` seconds
      |
      +-- move_pages(a random sample of ``batch`` movable frames)      (kcompactd, NUMA)
      |
      +-- every ``evacuate_every``-th round:
            evacuate([lo, lo + evacuate_span))  at a random lo          (memory offlining)

It only uses the public migration calls of :class:`~zsmalloc.mm.Memory`,
so it never knows whose pages it moves.  ``stop()`` ends it within one
round; the counters are read after that.
"""

from __future__ import annotations

import random
import threading

from zsmalloc.mm.memory import Memory


class BackgroundMigration(threading.Thread):
    """A daemon thread that migrates random movable frames and evacuates random ranges."""

    def __init__(
        self,
        memory: Memory,
        seed: int = 0,
        *,
        batch: int = 32,
        interval: float = 0.002,
        evacuate_every: int = 25,
        evacuate_span: int = 64,
    ) -> None:
        super().__init__(name="vm-background-migration", daemon=True)
        self.memory = memory
        self.rng = random.Random(seed)
        self.batch = batch
        self.interval = interval
        self.evacuate_every = evacuate_every
        self.evacuate_span = evacuate_span
        self._stop_event = threading.Event()
        #: frames moved by move_pages, and those it could not take or move (busy, pinned)
        self.moved = self.refused = 0
        #: evacuate runs, frames they moved, and runs that left frames in their range
        self.evacuations = self.evacuated = self.evacuations_incomplete = 0

    def run(self) -> None:
        mem, rng = self.memory, self.rng
        rounds = 0
        while not self._stop_event.is_set():
            rounds += 1
            pfns = mem.movable_pfns()
            if pfns:
                res = mem.move_pages(rng.sample(pfns, min(self.batch, len(pfns))))
                self.moved += res.succeeded
                self.refused += res.failed
            if self.evacuate_every and rounds % self.evacuate_every == 0 and mem.hwm > self.evacuate_span:
                lo = rng.randrange(mem.hwm - self.evacuate_span)
                ev = mem.evacuate(lo, lo + self.evacuate_span)
                self.evacuations += 1
                self.evacuated += ev.succeeded
                self.evacuations_incomplete += not ev.complete
            self._stop_event.wait(self.interval)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to finish its round and wait for it (at most ``timeout`` s)."""
        self._stop_event.set()
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"{self.name} did not stop within {timeout} s")

    def to_dict(self) -> dict[str, int]:
        return {
            "pages_moved": self.moved,
            "moves_refused_or_failed": self.refused,
            "evacuations": self.evacuations,
            "pages_evacuated": self.evacuated,
            "evacuations_incomplete": self.evacuations_incomplete,
        }
