"""Deferred free: an empty zspage with a locked page waits for the worker (KERNEL.md section 3).

When a free empties a zspage and one of its page locks cannot be had with
trylock, the zspage stays on its class's group-0 list and the deferred worker
is kicked; the worker frees it later, taking the page locks the blocking way.

To look at the state between the free and the worker, some tests make the
pool with ``background_work=False`` (the kernel's ``schedule_work`` recorded in
``pending_work``, not yet run); the others let the real worker run.  Every wait
is bounded, so a bug fails a test instead of hanging the suite.  Every test
runs on the model and on the engine.
"""

from __future__ import annotations

import threading
import time

import pytest

from helpers import WAIT, wait_until
from zsmalloc import Pool
from zsmalloc.debug import snapshot

pytestmark = pytest.mark.usefixtures("each_backend")

REQ = 1560  # class 96 with chain 8: 5 pages, 13 objects
CLASS = 96
PAGES = 5


def zid_of(pool: Pool, h: int) -> int:
    pfn, _ = pool.locate(h)
    return snapshot(pool)["pages"][pfn]["private"]


def zspage(pool: Pool, zid: int) -> dict:
    return snapshot(pool)["zspages"][zid]


def group0(pool: Pool) -> list[int]:
    """The class's group-0 list (empty zspages awaiting the deferred free)."""
    return next(c["fullness"][0] for c in snapshot(pool)["classes"] if c["index"] == CLASS)


def empty_zspages(pool: Pool) -> int:
    return next(r.empty_zspages for r in pool.class_stats() if r.index == CLASS)


class Setup:
    """One pool: a keeper object of another class, and one zspage of class 96 with two objects."""

    def __init__(self, name: str, background_work: bool) -> None:
        self.pool = Pool(name=name, chain_size=8, background_work=background_work)
        self.keeper = self.pool.malloc(100)
        self.pool.write(self.keeper, b"k" * 100)
        self.hs = [self.pool.malloc(REQ) for _ in range(2)]
        self.zid = zid_of(self.pool, self.hs[0])
        assert zid_of(self.pool, self.hs[1]) == self.zid
        assert zspage(self.pool, self.zid)["class"] == CLASS
        self.pfns = self.pool.zspage_pfns(self.hs[0])
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
        assert wait_until(lambda: not self.pool.worker_running)
        self.pool.close()


@pytest.fixture
def stubbed():
    s = Setup("deferred-stub", background_work=False)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def real():
    s = Setup("deferred-real", background_work=True)
    try:
        yield s
    finally:
        s.close()


# ----------------------------------------------------------------------


def test_unlocked_zspage_is_freed_at_once(stubbed):
    s = stubbed
    for h in s.hs:
        s.pool.free(h)
    assert s.pool.pending_work == []
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
    assert pool.pending_work == []  # not empty yet: nothing to defer
    pool.free(s.hs[1])
    assert pool.pending_work == ["free"]  # the worker was asked for
    # still there, empty, on the group-0 list
    assert pool.total_pages == s.pages_before
    assert pool.memory.nr_used == s.pages_before
    assert group0(pool) == [s.zid]
    assert empty_zspages(pool) == 1
    assert zspage(pool, s.zid)["class"] == CLASS and zspage(pool, s.zid)["inuse"] == 0
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


def test_the_deferred_free_takes_each_list_from_its_head(stubbed):
    """async_free_zspage frees a group-0 list head first, as the kernel walks it:
    the zspage emptied last goes first, so the frames of the one emptied first
    are the last freed and the first the page allocator hands out again."""
    s = stubbed
    pool = s.pool
    full = [pool.malloc(REQ) for _ in range(13 - len(s.hs))]  # the first zspage full
    second = [pool.malloc(REQ) for _ in range(13)]
    zid_b = zid_of(pool, second[0])
    assert zid_b != s.zid and {zid_of(pool, h) for h in second} == {zid_b}
    pfns_b = pool.zspage_pfns(second[0])
    s.lock(0)
    assert pool.memory.lock_page(pfns_b[0], timeout=WAIT)
    try:
        for h in [*s.hs, *full]:  # the first zspage empties first
            pool.free(h)
        for h in second:
            pool.free(h)
        assert group0(pool) == [zid_b, s.zid]  # the head: the zspage emptied last
    finally:
        pool.memory.unlock_page(pfns_b[0])
        s.unlock(0)
    assert pool.flush_deferred() == 2
    h = pool.malloc(REQ)
    assert pool.zspage_pfns(h)[0] == s.pfns[-1]  # the last frame freed is the first reused
    pool.free(h)
    pool.check()


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


def test_pending_work_run_by_another_thread_after_unlock(stubbed):
    s = stubbed
    pool = s.pool
    s.lock(2)
    for h in s.hs:
        pool.free(h)
    assert pool.pending_work == ["free"]
    assert pool.total_pages == s.pages_before
    s.unlock(2)
    worker = threading.Thread(target=pool.run_pending_work)  # as the kernel's worker would
    worker.start()
    assert wait_until(lambda: pool.total_pages == s.pages_before - PAGES), "the worker never freed it"
    worker.join(WAIT)
    assert not worker.is_alive(), "the worker did not finish"
    assert pool.pending_work == []
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
    assert wait_until(lambda: pool.worker_running), "no worker was started"
    assert wait_until(lambda: pool.memory.page_locked(s.pfns[0])), "the worker did not lock page 0"
    time.sleep(0.2)
    assert pool.worker_running, "the worker finished while a page of its zspage was locked"
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
    assert wait_until(lambda: not pool.worker_running), "the worker did not finish after the unlock"
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
    p2 = pool.zspage_pfns(others[0])
    assert pool.memory.lock_page(p2[0], timeout=WAIT)
    try:
        for h in others:
            pool.free(h)
        assert pool.total_pages == s.pages_before + PAGES
    finally:
        pool.memory.unlock_page(p2[0])
    s.unlock(4)
    assert wait_until(lambda: pool.total_pages == s.pages_before - PAGES), "both zspages should go"
    assert wait_until(lambda: not pool.worker_running)
    assert pool.stats().deferred_frees == 2
    pool.check()
