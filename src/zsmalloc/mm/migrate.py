"""The migration core: isolate, migrate and put back movable pages (mm/migrate.c).

The VM moves an owner's page without knowing what is in it.  The owner marks
the page movable with three callbacks (an object with these methods)::

    isolate(pfn, mode) -> bool          page locked by the VM; may refuse
    migrate(dst, src, mode) -> int      both pages locked; MIGRATEPAGE_SUCCESS,
                                        or -EAGAIN ("busy, retry later")
    putback(pfn) -> None                page locked; the VM gave up on it

Life of one page through ``move_pages``::

    isolate_movable_page(pfn)   get_page, trylock, PG_movable and not PG_isolated?,
                                owner.isolate(), set PG_isolated, UNLOCK
            |                   <-- the window of the 2016 race: the page lock is
            |                       dropped here, so the owner may free the page
            v
    migrate_pages([pfn])        per pass: lock (sleep in sync mode, trylock in
            |                   async), owner already let go (refcount 1)? done;
            |                   allocate dst (fault injection applies), lock it,
            |                   owner.migrate(dst, src); on success the owner
            |                   holds dst and has dropped src, the VM drops its
            |                   references; -EAGAIN: retry next pass
            v
    putback_movable_page(pfn)   what could not move: lock, owner.putback() if the
                                page is still the owner's, clear PG_isolated, put

References: isolation takes one on the page, so a page the owner frees while
it is isolated stays allocated until the VM drops it; the destination page's
allocation reference is the VM's, and the owner takes its own when it adopts
the page.  A frame returns to the free pool only at refcount zero.

This module is a mixin of :class:`zsmalloc.mm.Memory`; it uses the Memory's
lock, flags and allocator and nothing else.
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from zsmalloc.errors import OutOfFramesError, PageStateError
from zsmalloc.mm.constants import PG_isolated, PG_locked, PG_movable
from zsmalloc.mm.counters import Counters

if TYPE_CHECKING:
    import threading

MIGRATEPAGE_SUCCESS = 0
EAGAIN = -11
EBUSY = -16
ENOMEM = -12
NR_MIGRATE_PASSES = 10  # the kernel's NR_MAX_MIGRATE_PAGES_RETRY


class MigrateMode(enum.IntEnum):
    """How hard the VM tries: async never sleeps on a page lock, sync does."""

    ASYNC = 0
    SYNC_LIGHT = 1
    SYNC = 2


class MovableOps(Protocol):
    """What an owner of movable pages provides (the kernel's ``movable_operations``)."""

    def isolate(self, pfn: int, mode: MigrateMode) -> bool: ...

    def migrate(self, dst: int, src: int, mode: MigrateMode) -> int: ...

    def putback(self, pfn: int) -> None: ...


@dataclass
class MigrateResult:
    """What one ``migrate_pages`` / ``move_pages`` / ``evacuate`` call did."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    moved: dict[int, int] = field(default_factory=dict)  # src pfn -> dst pfn
    failed_pfns: list[int] = field(default_factory=list)

    def merge(self, other: MigrateResult) -> None:
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.retried += other.retried
        self.moved.update(other.moved)
        self.failed_pfns.extend(other.failed_pfns)


class Migration:
    """The VM side of page migration, mixed into :class:`~zsmalloc.mm.Memory`."""

    # What the mixin uses of its Memory, which defines all of it (declared
    # here for the type checker; nothing below is defined at run time).
    vmstat: Counters
    if TYPE_CHECKING:
        _lock: threading.Lock
        _ops: list[MovableOps | None]
        hwm: int
        flags: bytearray
        refcount: array[int]
        movable_ops: array[int]

        def trylock_page(self, pfn: int) -> bool: ...
        def lock_page(self, pfn: int, timeout: float | None = None) -> bool: ...
        def unlock_page(self, pfn: int) -> None: ...
        def put_page(self, pfn: int) -> None: ...
        def _alloc_frame(self, lo: int = 0, hi: int = -1) -> int: ...
        def _release_frame(self, pfn: int) -> None: ...

    def _ops_of(self, pfn: int) -> MovableOps | None:
        return self._ops[self.movable_ops[pfn]]

    # ------------------------------------------------------------------

    def isolate_movable_page(self, pfn: int, mode: MigrateMode = MigrateMode.SYNC) -> bool:
        """Take a movable page away from its owner for migration (kernel ``isolate_movable_page``).

        On success the page is PG_isolated, unlocked, and the VM holds a
        reference on it; it must be passed to ``migrate_pages`` or
        ``putback_movable_page``.
        """
        with self._lock:  # get_page_unless_zero
            if not 0 <= pfn < self.hwm or self.refcount[pfn] <= 0:
                self.vmstat["isolate_fail"] += 1
                return False
            self.refcount[pfn] += 1
        ok = False
        if self.flags[pfn] & PG_movable and self.trylock_page(pfn):
            flags = self.flags[pfn]
            ops = self._ops_of(pfn)
            if flags & PG_movable and not flags & PG_isolated and ops is not None:
                ok = bool(ops.isolate(pfn, mode))
                if ok:
                    self.set_isolated(pfn, True)
            self.unlock_page(pfn)
        if not ok:
            self.put_page(pfn)
            self.vmstat["isolate_fail"] += 1
            return False
        self.vmstat["isolate_success"] += 1
        return True

    def putback_movable_page(self, pfn: int) -> None:
        """Give an isolated page back to its owner (kernel ``putback_movable_pages``)."""
        if not self.flags[pfn] & PG_isolated:
            raise PageStateError(f"putback of frame {pfn}, which is not isolated")
        self.lock_page(pfn)
        if self.flags[pfn] & PG_movable:  # still the owner's: it takes the page back
            ops = self._ops_of(pfn)
            if ops is not None:
                ops.putback(pfn)
        self.set_isolated(pfn, False)
        self.unlock_page(pfn)
        self.put_page(pfn)
        self.vmstat["putback"] += 1

    def set_isolated(self, pfn: int, isolated: bool) -> None:
        with self._lock:
            if isolated:
                self.flags[pfn] |= PG_isolated
            else:
                self.flags[pfn] &= ~PG_isolated

    # ------------------------------------------------------------------

    def migrate_pages(
        self,
        pfns: list[int],
        mode: MigrateMode = MigrateMode.SYNC,
        target: tuple[int, int] | Callable[[int], tuple[int, int]] | None = None,
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
        for pfn in pfns:
            if not self.flags[pfn] & PG_isolated:
                raise PageStateError(f"migrate_pages: frame {pfn} is not isolated")
        result = MigrateResult()
        pending = list(pfns)
        for _ in range(passes):
            retry = []
            for pfn in pending:
                rc, dst = self._unmap_and_move(pfn, mode, target, lock_timeout)
                if rc == MIGRATEPAGE_SUCCESS:
                    result.succeeded += 1
                    if dst >= 0:
                        result.moved[pfn] = dst
                elif rc == EAGAIN:
                    retry.append(pfn)
                    result.retried += 1
                else:
                    result.failed_pfns.append(pfn)
            pending = retry
            if not pending:
                break
        result.failed_pfns.extend(pending)
        result.failed = len(result.failed_pfns)
        self.vmstat["pgmigrate_success"] += result.succeeded
        self.vmstat["pgmigrate_fail"] += result.failed
        if putback:
            for pfn in result.failed_pfns:
                self.putback_movable_page(pfn)
        return result

    def _unmap_and_move(
        self,
        src: int,
        mode: MigrateMode,
        target: tuple[int, int] | Callable[[int], tuple[int, int]] | None,
        lock_timeout: float | None,
    ) -> tuple[int, int]:
        """One attempt at one page; returns (status, dst pfn or -1)."""
        if self._release_if_freed(src):
            return MIGRATEPAGE_SUCCESS, -1
        if mode == MigrateMode.ASYNC:
            if not self.trylock_page(src):
                return EAGAIN, -1
        elif not self.lock_page(src, lock_timeout):
            return EAGAIN, -1
        if self.refcount[src] == 1:  # the owner let it go while we slept
            self.unlock_page(src)
            self._release_if_freed(src)
            return MIGRATEPAGE_SUCCESS, -1
        try:
            if callable(target):
                lo, hi = target(src)
            else:
                lo, hi = target if target is not None else (0, -1)
            with self._lock:
                dst = self._alloc_frame(lo, hi)
        except OutOfFramesError:
            self.unlock_page(src)
            self.vmstat["pgmigrate_nomem"] += 1
            return ENOMEM, -1
        if not self.trylock_page(dst):  # a frame fresh from the allocator is ours alone
            raise PageStateError(f"new frame {dst} is locked")
        ops = self._ops_of(src)
        rc = (
            ops.migrate(dst, src, mode)
            if ops is not None and self.flags[src] & PG_movable
            else (MIGRATEPAGE_SUCCESS)
        )
        if rc == MIGRATEPAGE_SUCCESS:
            self.set_isolated(src, False)
        self.unlock_page(dst)
        self.put_page(dst)  # the allocation reference; an adopting owner took its own
        self.unlock_page(src)
        if rc == MIGRATEPAGE_SUCCESS:
            self.put_page(src)  # the isolation reference: the frame is free now
            return rc, dst if self.refcount[dst] > 0 else -1
        return rc, -1

    def _release_if_freed(self, pfn: int) -> bool:
        """If only the VM still holds the page, its owner freed it: finish it off."""
        with self._lock:
            if self.refcount[pfn] != 1 or self.flags[pfn] & PG_locked:
                return False
            self.flags[pfn] &= ~PG_isolated
            self.refcount[pfn] = 0
            self._release_frame(pfn)
            self.vmstat["pgmigrate_released"] += 1
            return True

    def move_pages(
        self,
        pfns: list[int],
        mode: MigrateMode = MigrateMode.SYNC,
        target: tuple[int, int] | None = None,
        passes: int = NR_MIGRATE_PASSES,
    ) -> MigrateResult:
        """Isolate, migrate, and put back what could not move, in one call."""
        isolated = [pfn for pfn in pfns if self.isolate_movable_page(pfn, mode)]
        result = self.migrate_pages(isolated, mode, target, passes)
        taken = set(isolated)
        refused = [pfn for pfn in pfns if pfn not in taken]
        result.failed += len(refused)
        result.failed_pfns.extend(refused)
        return result

    def movable_pfns(self, start: int = 0, end: int | None = None) -> list[int]:
        """In-use, movable, not isolated frames in ``[start, end)``."""
        flags, refcount = self.descriptor_snapshot(start, end)
        return [
            start + i
            for i, f in enumerate(flags)
            if f & (PG_movable | PG_isolated) == PG_movable and refcount[i] > 0
        ]

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
