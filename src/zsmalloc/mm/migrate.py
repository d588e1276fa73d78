"""The migration core: isolate, migrate and put back movable pages (mm/migrate.c).

Which kernel this models: mainline 6.17, where the VM's side of movable
pages that are not on the LRU (zsmalloc's, balloon pages) was reworked.
The names changed with it, and this module uses the new ones (KERNEL.md, 5)::

    before 6.17                    6.17 and here
    isolate_movable_page()     ->  isolate_movable_ops_page()
    PG_isolated                ->  PageMovableOpsIsolated (our flag bit keeps
                                   the name PG_isolated: zsmalloc.mm.PG_isolated)
    __SetPageMovable(page, ops)->  movable ops registered per page type
                                   (here: Memory.register_movable_ops, then
                                   Memory.set_page_movable with the owner's id)

``Memory.isolate_movable_page`` keeps the old name as the public call.  One
page's attempt is ``unmap_and_move`` here (split into ``migrate_folio_unmap``
and ``migrate_folio_move`` in 6.3, when migrate_pages began to work in
batches); a busy page (-EAGAIN) is retried in the next of up to
NR_MAX_MIGRATE_PAGES_RETRY passes.

The VM moves an owner's page without knowing what is in it.  The owner marks
the page movable with three callbacks (an object with these methods, the
kernel's ``struct movable_operations``)::

    isolate(pfn, mode) -> bool          page locked by the VM; may refuse
    migrate(dst, src, mode) -> int      both pages locked; MIGRATEPAGE_SUCCESS,
                                        or -EAGAIN ("busy, retry later")
    putback(pfn) -> None                page locked; the VM gave up on it

Life of one page through ``move_pages``::

    isolate_movable_ops_page(pfn)  get_page, trylock, movable and not isolated?,
            |                      owner.isolate(), set PG_isolated, UNLOCK
            |                      <-- the window of the 2016 race: the page lock is
            |                          dropped here, so the owner may free the page
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

These are plain functions over a :class:`zsmalloc.mm.Memory`, whose methods
of the same names call them.  They use the Memory's lock, page locks, flags,
refcounts and allocator, and nothing else.  Lock order: page lock, then the
owner's locks (inside its callbacks), then the Memory's lock, a leaf.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, Protocol

from zsmalloc.errors import OutOfFramesError, PageStateError
from zsmalloc.mm.constants import PG_isolated, PG_locked, PG_movable

if TYPE_CHECKING:
    from zsmalloc.mm.memory import Memory

MIGRATEPAGE_SUCCESS = 0
EAGAIN = -11
EBUSY = -16
ENOMEM = -12
NR_MIGRATE_PASSES = 10  # the kernel's NR_MAX_MIGRATE_PAGES_RETRY

#: the destinations are the free frames the zone compaction's free scanner
#: captured (``compaction_alloc``); none left is -ENOMEM
CAPTURED: Final = "captured"
#: where destination pages come from: a pfn range [lo, hi), one per source pfn, or the captured frames
Target = tuple[int, int] | Callable[[int], tuple[int, int]] | Literal["captured"] | None


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


def page_movable_ops(mem: Memory, pfn: int) -> MovableOps | None:
    """The callbacks the page's owner registered, or None (``page_movable_ops``)."""
    return mem._ops[mem.movable_ops[pfn]]


def set_page_isolated(mem: Memory, pfn: int, isolated: bool) -> None:
    """Set or clear the isolation flag (``SetPageMovableOpsIsolated`` / ``ClearPage...``)."""
    with mem._lock:
        if isolated:
            mem.flags[pfn] |= PG_isolated
        else:
            mem.flags[pfn] &= ~PG_isolated


def isolate_movable_ops_page(mem: Memory, pfn: int, mode: MigrateMode) -> bool:
    """Take a movable page away from its owner for migration.

    On success the page is PG_isolated, unlocked, and the VM holds a
    reference on it; it must be passed to ``migrate_pages`` or
    ``putback_movable_page``.
    """
    with mem._lock:  # get_page_unless_zero
        if not 0 <= pfn < mem.hwm or mem.refcount[pfn] <= 0:
            mem.vmstat["isolate_fail"] += 1
            return False
        mem.refcount[pfn] += 1
    ok = False
    if mem.flags[pfn] & PG_movable and mem.trylock_page(pfn):
        flags = mem.flags[pfn]
        ops = page_movable_ops(mem, pfn)
        if flags & PG_movable and not flags & PG_isolated and ops is not None:
            ok = bool(ops.isolate(pfn, mode))
            if ok:
                set_page_isolated(mem, pfn, True)
        mem.unlock_page(pfn)
    if not ok:
        mem.put_page(pfn)
        mem.vmstat["isolate_fail"] += 1
        return False
    mem.vmstat["isolate_success"] += 1
    return True


def putback_movable_page(mem: Memory, pfn: int) -> None:
    """Give an isolated page back to its owner (``putback_movable_ops_page`` in 6.17)."""
    if not mem.flags[pfn] & PG_isolated:
        raise PageStateError(f"putback of frame {pfn}, which is not isolated")
    mem.lock_page(pfn)
    if mem.flags[pfn] & PG_movable:  # still the owner's: it takes the page back
        ops = page_movable_ops(mem, pfn)
        if ops is not None:
            ops.putback(pfn)
    set_page_isolated(mem, pfn, False)
    mem.unlock_page(pfn)
    mem.put_page(pfn)
    mem.vmstat["putback"] += 1


def migrate_pages(
    mem: Memory,
    pfns: list[int],
    mode: MigrateMode,
    target: Target,
    passes: int,
    putback: bool,
    lock_timeout: float | None,
) -> MigrateResult:
    """Move isolated pages to new frames, in up to ``passes`` passes (see ``Memory.migrate_pages``)."""
    for pfn in pfns:
        if not mem.flags[pfn] & PG_isolated:
            raise PageStateError(f"migrate_pages: frame {pfn} is not isolated")
    result = MigrateResult()
    pending = list(pfns)
    for _ in range(passes):
        retry = []
        for pfn in pending:
            rc, dst = unmap_and_move(mem, pfn, mode, target, lock_timeout)
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
    mem.vmstat["pgmigrate_success"] += result.succeeded
    mem.vmstat["pgmigrate_fail"] += result.failed
    if putback:
        for pfn in result.failed_pfns:
            putback_movable_page(mem, pfn)
    return result


def unmap_and_move(
    mem: Memory, src: int, mode: MigrateMode, target: Target, lock_timeout: float | None
) -> tuple[int, int]:
    """One attempt at one page; returns (status, dst pfn or -1)."""
    if release_if_freed(mem, src):
        return MIGRATEPAGE_SUCCESS, -1
    if mode == MigrateMode.ASYNC:
        if not mem.trylock_page(src):
            return EAGAIN, -1
    elif not mem.lock_page(src, lock_timeout):
        return EAGAIN, -1
    if mem.refcount[src] == 1:  # the owner let it go while we slept
        mem.unlock_page(src)
        release_if_freed(mem, src)
        return MIGRATEPAGE_SUCCESS, -1
    try:
        dst = alloc_migration_target(mem, src, target)
    except OutOfFramesError:
        mem.unlock_page(src)
        mem.vmstat["pgmigrate_nomem"] += 1
        return ENOMEM, -1
    if not mem.trylock_page(dst):  # a frame fresh from the allocator is ours alone
        raise PageStateError(f"new frame {dst} is locked")
    rc = migrate_movable_ops_page(mem, dst, src, mode)
    if rc == MIGRATEPAGE_SUCCESS:
        set_page_isolated(mem, src, False)
    mem.unlock_page(dst)
    mem.put_page(dst)  # the allocation reference; an adopting owner took its own
    mem.unlock_page(src)
    if rc == MIGRATEPAGE_SUCCESS:
        mem.put_page(src)  # the isolation reference: the frame is free now
        return rc, dst if mem.refcount[dst] > 0 else -1
    return rc, -1


def alloc_migration_target(mem: Memory, src: int, target: Target) -> int:
    """A free frame for ``src`` to move to, from the ``target`` range; OutOfFramesError if none."""
    if target == CAPTURED:
        with mem._lock:
            dst = mem.take_captured()
        if dst is None:
            raise OutOfFramesError("no captured frame left")
        return dst
    if callable(target):
        lo, hi = target(src)
    else:
        lo, hi = target if target is not None else (0, -1)
    with mem._lock:
        return mem._alloc_frame(lo, hi)


def migrate_movable_ops_page(mem: Memory, dst: int, src: int, mode: MigrateMode) -> int:
    """Ask the owner to move ``src`` to ``dst``; a page the owner no longer marks movable has moved."""
    ops = page_movable_ops(mem, src)
    if ops is None or not mem.flags[src] & PG_movable:
        return MIGRATEPAGE_SUCCESS
    return ops.migrate(dst, src, mode)


def release_if_freed(mem: Memory, pfn: int) -> bool:
    """If only the VM still holds the page, its owner freed it: finish it off."""
    with mem._lock:
        if mem.refcount[pfn] != 1 or mem.flags[pfn] & PG_locked:
            return False
        mem.flags[pfn] &= ~PG_isolated
        mem.refcount[pfn] = 0
        mem._release_frame(pfn)
        mem.vmstat["pgmigrate_released"] += 1
        return True


def move_pages(mem: Memory, pfns: list[int], mode: MigrateMode, target: Target, passes: int) -> MigrateResult:
    """Isolate, migrate, and put back what could not move, in one call."""
    isolated = [pfn for pfn in pfns if isolate_movable_ops_page(mem, pfn, mode)]
    result = migrate_pages(mem, isolated, mode, target, passes, True, None)
    taken = set(isolated)
    refused = [pfn for pfn in pfns if pfn not in taken]
    result.failed += len(refused)
    result.failed_pfns.extend(refused)
    return result


def movable_pfns(mem: Memory, start: int, end: int | None) -> list[int]:
    """In-use, movable, not isolated frames in ``[start, end)``."""
    flags, refcount = mem.descriptor_snapshot(start, end)
    return [
        start + i
        for i, f in enumerate(flags)
        if f & (PG_movable | PG_isolated) == PG_movable and refcount[i] > 0
    ]
