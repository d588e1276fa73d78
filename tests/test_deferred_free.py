"""Deferred free: an empty zspage with a locked page waits for the worker (KERNEL.md section 3).

When a free empties a zspage and one of its page locks cannot be had with
trylock, the zspage stays on its class's group-0 list and the deferred worker
is kicked; the worker frees it later, taking the page locks the blocking way.

To look at the state between the free and the worker, some tests replace the
pool's ``kick_deferred_free`` with a recorder (the kernel's ``schedule_work``
not yet run); the others let the real worker run.  Every wait is bounded, so a
bug fails a test instead of hanging the suite.
"""

from __future__ import annotations

import threading
import time

import pytest

from helpers import WAIT, wait_until
from zsmalloc import Pool
from zsmalloc.pool.zsmalloc import OBJ_INDEX_BITS

SLOT_SHIFT = 32  # handle = slot << 32 | generation << 1
REQ = 1560  # class 96 with chain 8: 5 pages, 13 objects
CLASS = 96
PAGES = 5


def zid_of(pool: Pool, h: int) -> int:
    return pool.memory.private[pool._h_obj[h >> SLOT_SHIFT] >> OBJ_INDEX_BITS]


def worker_threads(pool: Pool) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"zs-work-{pool.name}"]


def empty_zspages(pool: Pool) -> int:
    return next(r.empty_zspages for r in pool.class_stats() if r.index == CLASS)


class Setup:
    """One pool: a keeper object of another class, and one zspage of class 96 with two objects."""

    def __init__(self, name: str, stub_kick: bool) -> None:
        self.pool = Pool(name=name, chain_size=8)
        self.kicks: list[int] = []
        if stub_kick:
            self.pool.kick_deferred_free = lambda: self.kicks.append(1)
        self.keeper = self.pool.malloc(100)
        self.pool.write(self.keeper, b"k" * 100)
        self.hs = [self.pool.malloc(REQ) for _ in range(2)]
        self.zid = zid_of(self.pool, self.hs[0])
        assert zid_of(self.pool, self.hs[1]) == self.zid
        assert self.pool._zs_class[self.zid] == CLASS
        self.pfns = self.pool.zspage_pages(self.zid)
        assert len(self.pfns) == PAGES
        self.pages_before = self.pool.total_pages
        self.locked: set[int] = set()

    def lock(self, k: int) -> None:
        assert self.pool.memory.lock_page(self.pfns[k], timeout=WAIT)
        self.locked.add(self.pfns[k])

    def unlock(self, k: int) -> None:
        self.pool.memory.unlock_page(self.pfns[k])
        self.locked.discard(self.pfns[k])

    def close(self) -> None:
        for pfn in list(self.locked):  # never leave the worker blocked behind a failed assert
            self.pool.memory.unlock_page(pfn)
        self.locked.clear()
        if "kick_deferred_free" in vars(self.pool):
            del self.pool.kick_deferred_free
        assert wait_until(lambda: not worker_threads(self.pool))
        self.pool.close()


@pytest.fixture
def stubbed():
    s = Setup("deferred-stub", stub_kick=True)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def real():
    s = Setup("deferred-real", stub_kick=False)
    try:
        yield s
    finally:
        s.close()


# ----------------------------------------------------------------------


def test_unlocked_zspage_is_freed_at_once(stubbed):
    s = stubbed
    for h in s.hs:
        s.pool.free(h)
    assert s.kicks == []
    assert s.pool.total_pages == s.pages_before - PAGES
    assert empty_zspages(s.pool) == 0
    assert s.pool.flush_deferred() == 0
    s.pool.check()


@pytest.mark.parametrize("locked_page", [0, 3, 4])
def test_locked_page_defers_the_free(stubbed, locked_page):
    s = stubbed
    pool = s.pool
    s.lock(locked_page)
    pool.free(s.hs[0])
    assert s.kicks == []  # not empty yet: nothing to defer
    pool.free(s.hs[1])
    assert s.kicks == [1]  # the worker was asked for
    # still there, empty, on the group-0 list
    assert pool.total_pages == s.pages_before
    assert pool.memory.nr_used == s.pages_before
    assert pool.size_class[CLASS].nr_zspages[0] == 1
    assert empty_zspages(pool) == 1
    assert pool._zs_class[s.zid] == CLASS and pool._zs_inuse[s.zid] == 0
    assert len(pool) == 1
    # no page lock was left behind by the failed trylock
    held = [pfn for pfn in s.pfns if pool.memory.page_locked(pfn)]
    assert held == [s.pfns[locked_page]]
    pool.check()
    assert pool.read(s.keeper) == b"k" * 100
    # unlocked: the deferred free runs in the caller and frees it
    s.unlock(locked_page)
    assert pool.flush_deferred() == 1
    assert pool.total_pages == s.pages_before - PAGES
    assert pool.memory.nr_used == pool.total_pages
    assert empty_zspages(pool) == 0
    assert pool.stats().deferred_frees == 1
    assert not any(pool.memory.page_locked(pfn) for pfn in s.pfns)
    assert pool.flush_deferred() == 0
    pool.check()
    assert pool.read(s.keeper) == b"k" * 100


def test_malloc_may_reuse_the_empty_zspage(stubbed):
    s = stubbed
    pool = s.pool
    s.lock(1)
    for h in s.hs:
        pool.free(h)
    assert empty_zspages(pool) == 1
    h = pool.malloc(REQ)
    pool.write(h, b"r" * REQ)
    assert zid_of(pool, h) == s.zid  # group 0 can serve an allocation
    assert pool.total_pages == s.pages_before
    assert empty_zspages(pool) == 0
    pool.check()
    s.unlock(1)
    assert pool.flush_deferred() == 0  # nothing is empty any more
    assert pool.read(h) == b"r" * REQ
    pool.free(h)  # now nothing is locked: freed at once
    assert pool.total_pages == s.pages_before - PAGES
    pool.check()


def test_kick_after_unlock_frees_in_the_background(stubbed):
    s = stubbed
    pool = s.pool
    s.lock(2)
    for h in s.hs:
        pool.free(h)
    assert s.kicks == [1]
    assert pool.total_pages == s.pages_before
    s.unlock(2)
    del pool.kick_deferred_free  # the real schedule_work from now on
    pool.kick_deferred_free()
    assert wait_until(lambda: pool.total_pages == s.pages_before - PAGES), "the worker never freed it"
    assert wait_until(lambda: not worker_threads(pool)), "the worker did not finish"
    assert pool.memory.nr_used == pool.total_pages
    assert pool.stats().deferred_frees == 1
    pool.check()


def test_worker_blocks_on_a_locked_page_and_finishes_after_unlock(real):
    s = real
    pool = s.pool
    s.lock(1)
    for h in s.hs:
        pool.free(h)
    # the worker was started, took the zspage, locked page 0 and sleeps on page 1
    assert wait_until(lambda: worker_threads(pool)), "no worker was started"
    assert wait_until(lambda: pool.memory.page_locked(s.pfns[0])), "the worker did not lock page 0"
    time.sleep(0.2)
    assert worker_threads(pool), "the worker finished while a page of its zspage was locked"
    assert pool.total_pages == s.pages_before
    assert pool.memory.nr_used == s.pages_before
    assert all(pool.memory.page_in_use(pfn) for pfn in s.pfns)
    assert not any(pool.memory.page_locked(pfn) for pfn in s.pfns[2:])  # locks are taken in order
    # other work goes on meanwhile
    h = pool.malloc(REQ)
    pool.write(h, b"w" * REQ)
    assert zid_of(pool, h) != s.zid  # the zspage being freed is no longer offered
    assert pool.read(s.keeper) == b"k" * 100
    pool.free(h)
    s.unlock(1)
    assert wait_until(lambda: not worker_threads(pool)), "the worker did not finish after the unlock"
    assert pool.total_pages == s.pages_before - PAGES
    assert pool.memory.nr_used == pool.total_pages
    assert not any(pool.memory.page_locked(pfn) for pfn in s.pfns if pool.memory.page_in_use(pfn))
    assert pool.stats().deferred_frees == 1
    pool.check()
    assert pool.read(s.keeper) == b"k" * 100


def test_check_does_not_wait_for_a_worker_blocked_on_a_page_lock(real):
    """A page-lock holder (the VM, mid-migration) may check the pool: that must not deadlock.

    The worker holds the pool's deferred-free lock while it sleeps on a page
    lock; check() takes that lock first.  If the thread that holds the page lock
    is the one calling check(), neither can go on.
    """
    s = real
    pool = s.pool
    s.lock(1)
    for h in s.hs:
        pool.free(h)
    assert wait_until(lambda: pool.memory.page_locked(s.pfns[0])), "the worker did not start"
    errors: list[BaseException] = []

    def checker():
        try:
            pool.check()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=checker, daemon=True)
    t.start()
    t.join(3.0)
    blocked = t.is_alive()
    s.unlock(1)  # release the deadlock either way, so the suite goes on
    t.join(WAIT)
    assert not blocked, (
        "check() blocked behind the deferred-free worker, which holds pool._deferred_lock while "
        "it sleeps in lock_zspage on a page lock held by check()'s caller: a deadlock"
    )
    assert not errors, errors


def test_a_second_free_while_the_worker_waits_is_deferred_too(real):
    s = real
    pool = s.pool
    s.lock(4)
    for h in s.hs:
        pool.free(h)
    assert wait_until(lambda: pool.memory.page_locked(s.pfns[0]))
    # another zspage of the class, emptied while the worker still waits
    others = [pool.malloc(REQ) for _ in range(2)]
    z2 = zid_of(pool, others[0])
    assert z2 != s.zid
    p2 = pool.zspage_pages(z2)
    assert pool.memory.lock_page(p2[0], timeout=WAIT)
    try:
        for h in others:
            pool.free(h)
        assert pool.total_pages == s.pages_before + PAGES
    finally:
        pool.memory.unlock_page(p2[0])
    s.unlock(4)
    assert wait_until(lambda: pool.total_pages == s.pages_before - PAGES), "both zspages should go"
    assert wait_until(lambda: not worker_threads(pool))
    assert pool.stats().deferred_frees == 2
    pool.check()
