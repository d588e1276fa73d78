"""Memory: the page allocator, page descriptors and page locks, on the model and the engine.

Expected values come from the documented behaviour (the module docstring of
``zsmalloc/mm/memory.py`` and KERNEL.md section 5), never from the code under
test: the reuse order is checked against a small independent model of the hot
list and the cold heap, and RSS is read from /proc/self/statm.

A frame's descriptor (refcount, flags, owner words) is read from
``zsmalloc.debug.snapshot`` of a pool on the Memory that allocates nothing
(:func:`descriptors`): a snapshot lists every frame of its Memory in use,
whoever holds it.  The model's descriptor arrays themselves are its internals.
"""

from __future__ import annotations

import heapq
import os
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsmalloc import Memory, OutOfFramesError, PageStateError, Pool, ZsmallocError, model
from zsmalloc.debug import snapshot
from zsmalloc.mm import PAGE_SIZE, PG_isolated, PG_locked, PG_movable
from zsmalloc.mm.memory import VMSTAT_EVENTS

pytestmark = pytest.mark.usefixtures("each_backend")

WAIT = 5.0  # seconds a thread may take to react; only reached when something is broken


def descriptors(mem: Memory, window: Pool | None = None) -> dict[int, dict]:
    """The descriptor of every frame of ``mem`` in use, by pfn, from a snapshot of ``window``
    (a pool on ``mem``) or of a pool made here for the purpose and closed again."""
    if window is not None:
        return snapshot(window)["pages"]
    with Pool(name="window", memory=mem) as pool:
        return snapshot(pool)["pages"]


def refcount(mem: Memory, pfn: int, window: Pool | None = None) -> int:
    page = descriptors(mem, window).get(pfn)
    return 0 if page is None else page["refcount"]


@pytest.fixture
def mem():
    m = Memory(capacity=256)
    yield m
    m.close()


# ----------------------------------------------------------------------
# construction


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Memory(capacity=0)
    with pytest.raises(ValueError):
        Memory(capacity=4, pcp_high=-1)
    with pytest.raises(ValueError):
        Memory(capacity=4, pcp_batch=0)


def test_fresh_memory_is_empty(mem):
    assert mem.capacity == 256
    assert mem.hwm == 0
    assert mem.used_pfns() == []
    s = mem.stats()
    assert s == {
        "capacity": 256,
        "hwm": 0,
        "nr_used": 0,
        "nr_used_max": 0,
        "nr_alloc": 0,
        "nr_free": 0,
        "nr_alloc_fail": 0,
        "nr_pcp": 0,
        "nr_drained": 0,
        **dict.fromkeys(VMSTAT_EVENTS, 0),
    }


# ----------------------------------------------------------------------
# alloc / free / refcounts


def test_alloc_page_hands_out_fresh_frames_in_order_with_refcount_one(mem):
    pfns = [mem.alloc_page() for _ in range(5)]
    assert pfns == [0, 1, 2, 3, 4]
    assert all(refcount(mem, p) == 1 for p in pfns)
    assert all(mem.page_in_use(p) for p in pfns)
    assert not mem.page_in_use(5)
    assert not mem.page_in_use(-1)
    assert mem.hwm == 5
    assert mem.used_pfns() == pfns
    s = mem.stats()
    assert (s["nr_used"], s["nr_used_max"], s["nr_alloc"], s["nr_free"]) == (5, 5, 5, 0)


def test_alloc_pages_returns_distinct_frames(mem):
    pfns = mem.alloc_pages(7)
    assert len(pfns) == 7
    assert len(set(pfns)) == 7
    assert mem.used_pfns() == sorted(pfns)
    assert mem.alloc_pages(0) == []
    assert mem.stats()["nr_used"] == 7


def test_free_page_returns_the_frame_at_refcount_zero(mem):
    a = mem.alloc_page()
    mem.free_page(a)
    assert refcount(mem, a) == 0
    assert not mem.page_in_use(a)
    assert mem.used_pfns() == []
    s = mem.stats()
    assert (s["nr_used"], s["nr_free"], s["nr_pcp"]) == (0, 1, 1)


def test_a_frame_returns_to_the_free_pool_only_at_refcount_zero(mem):
    a = mem.alloc_page()
    mem.get_page(a)  # e.g. the VM isolating it
    assert refcount(mem, a) == 2
    mem.free_page(a)  # the owner lets it go ...
    assert refcount(mem, a) == 1
    assert mem.page_in_use(a)  # ... but the VM still holds it
    assert mem.used_pfns() == [a]
    b = mem.alloc_page()
    assert b != a, "a frame still referenced must not be handed out again"
    mem.put_page(a)  # the VM drops its reference: now it is free
    assert not mem.page_in_use(a)
    assert mem.used_pfns() == [b]
    assert mem.alloc_page() == a  # and reusable


def test_get_and_put_on_a_free_frame_raise(mem):
    a = mem.alloc_page()
    mem.free_page(a)
    with pytest.raises(PageStateError):
        mem.put_page(a)
    with pytest.raises(PageStateError):
        mem.free_page(a)
    with pytest.raises(PageStateError):
        mem.get_page(a)
    assert refcount(mem, a) == 0
    # a descriptor slot that was never handed out is free as well
    if isinstance(mem, model.Memory):  # the model's arrays reach beyond the high-water mark
        assert len(mem.refcount) > 3
    with pytest.raises(PageStateError):
        mem.put_page(3)
    with pytest.raises(PageStateError):
        mem.get_page(3)
    assert mem.stats()["nr_free"] == 1
    assert issubclass(PageStateError, ZsmallocError)


def test_freeing_a_locked_frame_raises_and_keeps_it(mem):
    a = mem.alloc_page()
    assert mem.trylock_page(a)
    with pytest.raises(PageStateError):
        mem.free_page(a)
    assert refcount(mem, a) == 1
    assert mem.page_in_use(a)
    assert mem.page_locked(a)
    # dropping a reference that is not the last one is fine while locked
    mem.get_page(a)
    mem.put_page(a)
    assert refcount(mem, a) == 1
    mem.unlock_page(a)
    mem.free_page(a)
    assert not mem.page_in_use(a)


@pytest.mark.model_only(reason="writes the model's descriptor words")
def test_freed_frame_comes_back_with_a_clean_descriptor(mem):
    a = mem.alloc_page()
    mem.private[a] = 11
    mem.index[a] = 12
    mem.next[a] = 13
    mem.first_obj_offset[a] = 14
    mem.set_flag(a, PG_isolated)
    mem.set_page_movable(a, 0)
    mem.free_page(a)
    b = mem.alloc_page()
    assert b == a  # LIFO hot list
    assert (mem.private[b], mem.index[b], mem.next[b], mem.first_obj_offset[b]) == (0, 0, 0, 0)
    assert mem.flags[b] == 0
    assert mem.movable_ops[b] == 0


def test_set_and_clear_flag(mem):
    a = mem.alloc_page()
    mem.set_flag(a, PG_isolated)
    assert mem.page_isolated(a)
    assert not mem.page_locked(a)
    mem.clear_flag(a, PG_isolated)
    assert not mem.page_isolated(a)
    assert descriptors(mem)[a]["flags"] == 0


# ----------------------------------------------------------------------
# reuse order: hot list (LIFO), cold heap (lowest pfn first), never-touched frames


def test_hot_list_is_reused_last_freed_first(mem):
    pfns = mem.alloc_pages(6)
    assert pfns == [0, 1, 2, 3, 4, 5]
    for p in (1, 4, 2):
        mem.free_page(p)
    assert mem.nr_pcp == 3
    assert [mem.alloc_page() for _ in range(4)] == [2, 4, 1, 6]


def test_cold_heap_is_reused_lowest_pfn_first():
    m = Memory(capacity=64, pcp_high=0)  # every free drains at once
    try:
        m.alloc_pages(8)
        for p in (6, 1, 4, 3):
            m.free_page(p)
            assert m.nr_pcp == 0
        assert m.stats()["nr_drained"] == 4
        assert [m.alloc_page() for _ in range(5)] == [1, 3, 4, 6, 8]
    finally:
        m.close()


def test_drain_pages_moves_the_hot_list_to_the_cold_heap(mem):
    mem.alloc_pages(8)
    for p in (5, 2, 7):
        mem.free_page(p)
    assert mem.nr_pcp == 3
    assert mem.drain_pages() == 3
    assert mem.nr_pcp == 0
    assert mem.drain_pages() == 0
    s = mem.stats()
    assert (s["nr_pcp"], s["nr_drained"]) == (0, 3)
    assert [mem.alloc_page() for _ in range(4)] == [2, 5, 7, 8]


def test_hot_list_is_preferred_over_cold_heap(mem):
    mem.alloc_pages(6)
    mem.free_page(1)
    mem.free_page(2)
    mem.drain_pages()  # 1, 2 cold
    mem.free_page(4)  # 4 hot
    assert [mem.alloc_page() for _ in range(4)] == [4, 1, 2, 6]


def test_hot_list_overflow_drains_its_oldest_batch():
    m = Memory(capacity=64, pcp_high=8, pcp_batch=3)
    try:
        m.alloc_pages(20)
        for p in range(9):  # the ninth free overflows the list of 8
            m.free_page(p)
            assert m.nr_pcp <= 8
        assert m.nr_pcp == 6
        assert m.stats()["nr_drained"] == 3
        # hot 8..3 last freed first, then the drained 0, 1, 2 lowest first, then fresh
        assert [m.alloc_page() for _ in range(10)] == [8, 7, 6, 5, 4, 3, 0, 1, 2, 20]
    finally:
        m.close()


def test_hot_list_never_exceeds_pcp_high_with_defaults(impl):
    m = Memory(capacity=4096)
    try:
        pfns = m.alloc_pages(1000)
        for p in pfns:
            m.free_page(p)
            assert m.nr_pcp <= m.pcp_high
        assert m.pcp_high == 64
        assert m.nr_pcp > 0
        assert m.stats()["nr_drained"] == 1000 - m.nr_pcp
    finally:
        m.close()


class _Model:
    """Independent model of the documented allocator: hot list, cold heap, fresh frames."""

    def __init__(self, capacity: int, high: int, batch: int) -> None:
        self.capacity, self.high, self.batch = capacity, high, batch
        self.hot: list[int] = []
        self.cold: list[int] = []
        self.hwm = 0
        self.refs: dict[int, int] = {}
        self.drained = 0

    def alloc(self) -> int | None:
        if self.hot:
            pfn = self.hot.pop()
        elif self.cold:
            pfn = heapq.heappop(self.cold)
        elif self.hwm < self.capacity:
            pfn = self.hwm
            self.hwm += 1
        else:
            return None
        self.refs[pfn] = 1
        return pfn

    def put(self, pfn: int) -> None:
        self.refs[pfn] -= 1
        if self.refs[pfn] == 0:
            del self.refs[pfn]
            self.hot.append(pfn)
            if len(self.hot) > self.high:
                k = min(self.batch, len(self.hot))
                for p in self.hot[:k]:
                    heapq.heappush(self.cold, p)
                del self.hot[:k]
                self.drained += k

    def drain(self) -> None:
        for p in self.hot:
            heapq.heappush(self.cold, p)
        self.drained += len(self.hot)
        self.hot.clear()
        # then the arena shrinks: the high-water mark drops to just above the top frame in use
        self.hwm = max(self.refs, default=-1) + 1
        self.cold = [p for p in self.cold if p < self.hwm]
        heapq.heapify(self.cold)


@settings(max_examples=60, deadline=None)
@given(
    high=st.integers(0, 6),
    batch=st.integers(1, 4),
    ops=st.lists(
        st.tuples(st.sampled_from(["alloc", "alloc", "put", "get", "drain"]), st.integers(0, 10**6)),
        max_size=80,
    ),
)
def test_allocator_matches_the_documented_model(high, batch, ops):
    capacity = 12
    m = Memory(capacity=capacity, pcp_high=high, pcp_batch=batch)
    model = _Model(capacity, high, batch)
    window = Pool(name="window", memory=m)  # allocates nothing: for the refcounts
    try:
        for op, r in ops:
            if op == "alloc":
                want = model.alloc()
                if want is None:
                    with pytest.raises(OutOfFramesError):
                        m.alloc_page()
                else:
                    assert m.alloc_page() == want
            elif op == "drain":
                n = len(model.hot)
                model.drain()
                assert m.drain_pages() == n
            elif model.refs:
                held = sorted(model.refs)
                pfn = held[r % len(held)]
                if op == "get":
                    model.refs[pfn] += 1
                    m.get_page(pfn)
                else:
                    model.put(pfn)
                    m.put_page(pfn)
            assert m.nr_pcp <= high
            assert m.used_pfns() == sorted(model.refs)
            pages = descriptors(m, window)
            assert all(pages[p]["refcount"] == c for p, c in model.refs.items())
            s = m.stats()
            assert s["nr_used"] == len(model.refs)
            assert s["nr_pcp"] == len(model.hot)
            assert s["nr_drained"] == model.drained
            assert s["hwm"] == model.hwm
    finally:
        window.close()
        m.close()


# ----------------------------------------------------------------------
# exhaustion and all-or-nothing


def test_capacity_exhaustion_raises_out_of_frames():
    m = Memory(capacity=4)
    try:
        assert m.alloc_pages(4) == [0, 1, 2, 3]
        with pytest.raises(OutOfFramesError):
            m.alloc_page()
        with pytest.raises(MemoryError):  # OutOfFramesError is a MemoryError too
            m.alloc_page()
        assert issubclass(OutOfFramesError, MemoryError)
        assert issubclass(OutOfFramesError, ZsmallocError)
        assert m.stats()["nr_alloc_fail"] == 2
        assert m.stats()["nr_used"] == 4
        m.free_page(2)
        assert m.alloc_page() == 2
    finally:
        m.close()


@pytest.mark.parametrize("prefill", ["fresh", "hot", "cold"])
def test_alloc_pages_is_all_or_nothing(prefill):
    m = Memory(capacity=8)
    try:
        held = m.alloc_pages(5)
        if prefill != "fresh":
            # make 2 of the 3 free frames come from the hot list or the cold heap
            m.alloc_pages(3)
            m.free_page(5)
            m.free_page(7)
            if prefill == "cold":
                m.drain_pages()
        used_before = m.used_pfns()
        refs_before = [refcount(m, p) for p in range(8)]
        with pytest.raises(OutOfFramesError):
            m.alloc_pages(4)
        assert m.used_pfns() == used_before
        assert [refcount(m, p) for p in range(8)] == refs_before
        assert m.stats()["nr_used"] == len(used_before)
        # every frame the failed call had taken is free again
        got = m.alloc_pages(8 - len(used_before))
        assert sorted(got + used_before) == list(range(8))
        assert set(held) <= set(used_before)
    finally:
        m.close()


def test_failed_alloc_pages_leaves_stats_unchanged():
    """A failed all-or-nothing call must not look, afterwards, as if frames had been used."""
    m = Memory(capacity=8)
    try:
        m.alloc_pages(6)
        before = m.stats()
        with pytest.raises(OutOfFramesError):
            m.alloc_pages(3)
        after = m.stats()
        assert after["nr_alloc_fail"] == before["nr_alloc_fail"] + 1
        del before["nr_alloc_fail"], after["nr_alloc_fail"]
        assert after == before  # no phantom peak, allocations, frees, hot frames or hwm growth
    finally:
        m.close()


def test_failed_alloc_pages_leaves_the_next_allocation_unchanged():
    m = Memory(capacity=8)
    try:
        m.alloc_pages(6)
        with pytest.raises(OutOfFramesError):
            m.alloc_pages(3)
        # before the failed call the next frame out was 6 (lowest never-touched frame)
        assert m.alloc_page() == 6
        assert m.alloc_page() == 7
    finally:
        m.close()


# ----------------------------------------------------------------------
# fault injection


def test_inject_next_n_failures(mem):
    mem.inject_failures(next_n=2)
    with pytest.raises(OutOfFramesError):
        mem.alloc_page()
    with pytest.raises(MemoryError):
        mem.alloc_page()
    assert mem.alloc_page() == 0
    assert mem.alloc_page() == 1
    s = mem.stats()
    assert (s["nr_alloc_fail"], s["nr_alloc"], s["nr_used"]) == (2, 2, 2)


def test_injected_failure_in_alloc_pages_changes_nothing(mem):
    mem.alloc_pages(2)
    mem.inject_failures(next_n=1)
    with pytest.raises(OutOfFramesError):
        mem.alloc_pages(3)
    assert mem.used_pfns() == [0, 1]
    assert mem.stats()["nr_used"] == 2
    assert mem.alloc_pages(3) == [2, 3, 4]


def test_probability_one_always_fails_and_clear_failures_restores(mem):
    mem.inject_failures(probability=1.0)
    for _ in range(20):
        with pytest.raises(OutOfFramesError):
            mem.alloc_page()
    assert mem.stats()["nr_alloc_fail"] == 20
    assert mem.used_pfns() == []
    mem.clear_failures()
    assert [mem.alloc_page() for _ in range(20)] == list(range(20))
    assert mem.stats()["nr_alloc_fail"] == 20


def _failure_pattern(probability: float, seed: int, n: int = 200) -> list[bool]:
    m = Memory(capacity=n)
    try:
        m.inject_failures(probability=probability, seed=seed)
        pattern = []
        for _ in range(n):
            try:
                m.alloc_page()
                pattern.append(False)
            except OutOfFramesError:
                pattern.append(True)
        assert m.stats()["nr_alloc_fail"] == sum(pattern)
        assert m.stats()["nr_used"] == n - sum(pattern)
        return pattern
    finally:
        m.close()


def test_probabilistic_failures_are_seeded_and_near_the_probability():
    a = _failure_pattern(0.3, seed=1)
    assert a == _failure_pattern(0.3, seed=1)  # reproducible
    assert a != _failure_pattern(0.3, seed=2)  # and the seed matters
    assert 30 <= sum(a) <= 90  # 60 expected out of 200
    assert _failure_pattern(0.0, seed=1) == [False] * 200


def test_next_n_failures_come_before_probabilistic_ones(mem):
    mem.inject_failures(next_n=3, probability=0.0)
    for _ in range(3):
        with pytest.raises(OutOfFramesError):
            mem.alloc_page()
    assert mem.alloc_page() == 0


def test_inject_failures_rejects_bad_arguments(mem):
    with pytest.raises(ValueError):
        mem.inject_failures(next_n=-1)
    with pytest.raises(ValueError):
        mem.inject_failures(probability=1.5)
    with pytest.raises(ValueError):
        mem.inject_failures(probability=-0.1)
    assert mem.alloc_page() == 0  # nothing was armed


# ----------------------------------------------------------------------
# page lock


def test_trylock_and_unlock(mem):
    a = mem.alloc_page()
    assert not mem.page_locked(a)
    assert mem.trylock_page(a)
    assert mem.page_locked(a)
    assert descriptors(mem)[a]["flags"] & PG_locked
    assert not mem.trylock_page(a)
    mem.unlock_page(a)
    assert not mem.page_locked(a)
    assert mem.trylock_page(a)
    mem.unlock_page(a)


def test_unlock_of_an_unlocked_page_raises(mem):
    a = mem.alloc_page()
    with pytest.raises(PageStateError):
        mem.unlock_page(a)
    assert mem.trylock_page(a)
    mem.unlock_page(a)
    with pytest.raises(PageStateError):
        mem.unlock_page(a)
    assert not mem.page_locked(a)


def test_lock_page_on_an_unlocked_page_takes_it_at_once(mem):
    a = mem.alloc_page()
    assert mem.lock_page(a, timeout=WAIT) is True
    assert mem.page_locked(a)
    mem.unlock_page(a)
    assert mem.lock_page(a) is True  # no timeout: still returns at once
    mem.unlock_page(a)


def test_lock_page_times_out_on_a_held_lock(mem):
    a = mem.alloc_page()
    assert mem.trylock_page(a)
    t0 = time.monotonic()
    assert mem.lock_page(a, timeout=0.05) is False
    assert time.monotonic() - t0 >= 0.04
    assert mem.page_locked(a)
    mem.unlock_page(a)  # still held exactly once
    with pytest.raises(PageStateError):
        mem.unlock_page(a)


def test_lock_page_blocks_until_unlock(mem):
    a = mem.alloc_page()
    assert mem.trylock_page(a)
    started = threading.Event()
    result: list[bool] = []

    def locker():
        started.set()
        result.append(mem.lock_page(a, timeout=WAIT))

    t = threading.Thread(target=locker, daemon=True)
    t.start()
    assert started.wait(WAIT)
    time.sleep(0.1)
    assert t.is_alive(), "lock_page returned while the page was locked"
    assert result == []
    mem.unlock_page(a)
    t.join(WAIT)
    assert not t.is_alive()
    assert result == [True]
    assert mem.page_locked(a)  # now held by the other thread
    mem.unlock_page(a)


def test_lock_page_gives_mutual_exclusion():
    m = Memory(capacity=4)
    a = m.alloc_page()
    inside = [0]
    overlap = []
    errors = []

    def worker():
        try:
            for _ in range(200):
                if not m.lock_page(a, timeout=WAIT):
                    errors.append("timeout")
                    return
                inside[0] += 1
                if inside[0] != 1:
                    overlap.append(inside[0])
                time.sleep(0)
                inside[0] -= 1
                m.unlock_page(a)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(3)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(4 * WAIT)
    finally:
        sys.setswitchinterval(old)
    try:
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert overlap == []
        assert not m.page_locked(a)
    finally:
        m.close()


def test_wait_on_page_locked(mem):
    a = mem.alloc_page()
    assert mem.wait_on_page_locked(a, timeout=WAIT) is True  # unlocked: returns at once
    assert not mem.page_locked(a)  # and does not take the lock
    assert mem.trylock_page(a)
    assert mem.wait_on_page_locked(a, timeout=0.05) is False
    assert mem.page_locked(a)

    started = threading.Event()
    result: list[bool] = []

    def waiter():
        started.set()
        result.append(mem.wait_on_page_locked(a, timeout=WAIT))

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    assert started.wait(WAIT)
    time.sleep(0.1)
    assert t.is_alive()
    mem.unlock_page(a)
    t.join(WAIT)
    assert result == [True]
    assert not mem.page_locked(a)  # waiting does not lock


def test_trylock_pages_is_all_or_none(mem):
    pfns = mem.alloc_pages(3)
    assert mem.trylock_page(pfns[1])
    assert mem.trylock_pages(pfns) is False
    assert not mem.page_locked(pfns[0])
    assert not mem.page_locked(pfns[2])
    assert mem.page_locked(pfns[1])
    mem.unlock_page(pfns[1])
    assert mem.trylock_pages(pfns) is True
    assert all(mem.page_locked(p) for p in pfns)
    assert mem.trylock_pages(pfns[:1]) is False
    for p in pfns:
        mem.unlock_page(p)
    assert mem.trylock_pages([]) is True


# ----------------------------------------------------------------------
# movable pages, unlock_and_free_pages


def test_set_pages_movable(mem, impl):

    class Ops:
        pass

    ops_id = mem.register_movable_ops(Ops())
    assert ops_id >= 1
    pfns = mem.alloc_pages(3)
    mem.set_pages_movable(pfns, ops_id)
    pages = descriptors(mem)
    for p in pfns:
        assert mem.page_movable(p)
        assert pages[p]["flags"] & PG_movable
        assert pages[p]["movable_ops"] == ops_id
    mem.clear_page_movable(pfns[0])
    assert not mem.page_movable(pfns[0])


def test_set_pages_movable_refuses_locked_or_free_pages(mem):
    ops_id = mem.register_movable_ops(object())
    a, b = mem.alloc_pages(2)
    assert mem.trylock_page(a)
    with pytest.raises(PageStateError):
        mem.set_pages_movable([a], ops_id)
    assert not mem.page_movable(a)
    mem.free_page(b)
    with pytest.raises(PageStateError):
        mem.set_pages_movable([b], ops_id)
    assert not mem.page_movable(b)


def test_a_pfn_walkers_passing_reference_does_not_stop_set_pages_movable(mem):
    """The race the threaded stress found: the VM's isolate_movable_page takes its reference
    on a page the moment the owner has it, before either knows whether it is movable; the
    owner's __SetPageMovable must not take that for a second owner."""
    ops_id = mem.register_movable_ops(object())
    (p,) = mem.alloc_pages(1)
    mem.get_page(p)  # isolate_movable_page: get_page_unless_zero, then it looks at the flags
    mem.set_pages_movable([p], ops_id)  # the owner, in between
    mem.put_page(p)  # the walker lets go
    assert mem.page_movable(p) and refcount(mem, p) == 1


@pytest.mark.model_only(reason="writes the model's descriptor words")
def test_unlock_and_free_pages_frees_locked_pages(mem):
    pfns = mem.alloc_pages(3)
    ops_id = mem.register_movable_ops(object())
    mem.set_pages_movable(pfns, ops_id)
    for p in pfns:
        mem.private[p] = 7
        mem.next[p] = 9
        assert mem.trylock_page(p)
    mem.unlock_and_free_pages(pfns)
    assert mem.used_pfns() == []
    for p in pfns:
        assert mem.refcount[p] == 0
        assert mem.flags[p] == 0
        assert mem.movable_ops[p] == 0
        assert mem.private[p] == 0
        assert mem.next[p] == 0
    assert mem.stats()["nr_used"] == 0


def test_unlock_and_free_pages_checks_every_page_first(mem):
    pfns = mem.alloc_pages(3)
    assert mem.trylock_page(pfns[0])
    assert mem.trylock_page(pfns[2])
    with pytest.raises(PageStateError):
        mem.unlock_and_free_pages(pfns)  # pfns[1] is not locked
    assert mem.used_pfns() == pfns
    assert mem.page_locked(pfns[0])
    assert mem.page_locked(pfns[2])
    free = mem.alloc_page()
    mem.free_page(free)
    assert mem.trylock_page(free)
    with pytest.raises(PageStateError):
        mem.unlock_and_free_pages([pfns[0], free])  # a free frame
    assert mem.page_in_use(pfns[0])
    assert mem.page_locked(pfns[0])


def test_unlock_and_free_pages_keeps_a_page_the_vm_still_holds(mem):
    a, b = mem.alloc_pages(2)
    mem.set_pages_movable([a, b], mem.register_movable_ops(object()))
    mem.get_page(a)  # the VM isolated it
    mem.set_flag(a, PG_isolated)
    assert mem.trylock_pages([a, b])
    mem.unlock_and_free_pages([a, b])
    assert not mem.page_in_use(b)
    assert mem.page_in_use(a)
    assert refcount(mem, a) == 1
    assert not mem.page_locked(a)
    assert not mem.page_movable(a)
    assert descriptors(mem)[a]["private"] == 0
    assert mem.alloc_page() == b  # only b went back to the hot list
    mem.put_page(a)  # the VM lets go: now the frame is free
    assert not mem.page_in_use(a)
    assert mem.alloc_page() == a


def test_unlock_and_free_pages_wakes_a_waiter(mem):
    """The deferred-free pattern: pin the page, wait for its lock, unpin."""
    a = mem.alloc_page()
    assert mem.trylock_page(a)
    mem.get_page(a)
    result: list[bool] = []

    def waiter():
        result.append(mem.wait_on_page_locked(a, timeout=WAIT))
        mem.put_page(a)

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    time.sleep(0.05)
    mem.unlock_and_free_pages([a])
    t.join(WAIT)
    assert result == [True]
    assert not mem.page_in_use(a)
    assert refcount(mem, a) == 0


def test_register_and_unregister_movable_ops(mem):
    first = mem.register_movable_ops(object())
    second = mem.register_movable_ops(object())
    assert first != second
    assert 0 not in (first, second)  # id 0 means "not movable"
    mem.unregister_movable_ops(first)


# ----------------------------------------------------------------------
# descriptors: proportional to frames used, not to capacity


@pytest.mark.model_only(reason="about the model's descriptor arrays")
def test_descriptors_grow_with_the_high_water_mark_only():
    capacity = 1 << 20  # 4 GiB of address space
    m = Memory(capacity=capacity)
    try:
        arrays = (m.flags, m.refcount, m.movable_ops, m.private, m.index, m.next, m.first_obj_offset)
        assert all(len(a) == 0 for a in arrays)
        for _ in range(10):
            m.alloc_page()
        assert m.hwm == 10
        assert all(10 <= len(a) <= 1024 for a in arrays)
        assert len({len(a) for a in arrays}) == 1
        # 32 bytes per descriptor slot, as documented
        itemsize = {bytearray: 1}
        per_slot = sum(itemsize.get(type(a), getattr(a, "itemsize", 0)) for a in arrays)
        assert per_slot == 32
        nbytes = sum(sys.getsizeof(a) for a in arrays)
        assert nbytes < 64 * 1024, nbytes  # not 32 MiB for the whole capacity
        # freeing does not shrink the high-water mark; reusing frames does not grow it
        for p in range(10):
            m.free_page(p)
        for _ in range(10):
            m.alloc_page()
        assert m.hwm == 10
        # growth keeps up with the high-water mark, at most about doubling
        m.alloc_pages(3000)
        assert m.hwm == 3010
        assert all(3010 <= len(a) <= 2 * 3010 for a in arrays)
    finally:
        m.close()


def test_used_pfns_is_ascending_and_exact(mem):
    pfns = mem.alloc_pages(10)
    for p in (7, 0, 3):
        mem.free_page(p)
    assert mem.used_pfns() == [1, 2, 4, 5, 6, 8, 9]
    assert mem.alloc_page() == 3
    assert mem.used_pfns() == [1, 2, 3, 4, 5, 6, 8, 9]
    assert sorted(pfns) == pfns


# ----------------------------------------------------------------------
# frames and real memory


def test_frame_is_a_writable_view_of_the_arena(mem, impl):
    a, b = mem.alloc_pages(2)
    fa = mem.frame(a)
    assert len(fa) == PAGE_SIZE
    assert not fa.readonly
    fa[:5] = b"hello"
    fa[-1] = 0x7F
    # a later look at the frame sees what was written through the view
    assert bytes(mem.frame(a)[:5]) == b"hello"
    assert mem.frame(a)[PAGE_SIZE - 1] == 0x7F
    if isinstance(mem, model.Memory):  # and it is the arena, at the frame's offset
        assert mem.arena[a * PAGE_SIZE : a * PAGE_SIZE + 5] == b"hello"
        assert mem.arena[(a + 1) * PAGE_SIZE - 1] == 0x7F
    mem.frame(b)[:5] = b"world"
    assert bytes(mem.frame(a)[:5]) == b"hello"  # frames do not overlap
    assert bytes(mem.frame(b)[:5]) == b"world"
    if isinstance(mem, model.Memory):
        assert mem.arena[b * PAGE_SIZE : b * PAGE_SIZE + 5] == b"world"
    fa.release()


def test_frame_of_a_free_or_unknown_pfn_raises(mem, impl):
    a = mem.alloc_page()
    mem.free_page(a)
    with pytest.raises(PageStateError):
        mem.frame(a)
    with pytest.raises(PageStateError):
        mem.frame(100)
    with pytest.raises(PageStateError):
        mem.frame(-1)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


N_TOUCH = 8192  # 32 MiB
TOUCH_BYTES = N_TOUCH * PAGE_SIZE


def _touch(m: Memory, pfns: list[int]) -> None:
    """Write the first and last byte of each frame, through its view."""
    for p in pfns:
        view = m.frame(p)
        view[0] = 0xA5
        view[PAGE_SIZE - 1] = 0x5A
        view.release()


def test_freed_and_drained_frames_give_memory_back(impl):
    m = Memory(capacity=1 << 16)
    try:
        base = _rss()
        pfns = m.alloc_pages(N_TOUCH)
        _touch(m, pfns)
        peak = _rss()
        assert peak - base >= 0.7 * TOUCH_BYTES, (base, peak)
        for p in pfns:
            m.free_page(p)
        # the hot list keeps at most pcp_high frames resident
        assert m.nr_pcp <= m.pcp_high
        freed = _rss()
        assert freed - base <= 0.3 * TOUCH_BYTES, (base, peak, freed)
        m.drain_pages()
        assert m.nr_pcp == 0
        drained = _rss()
        assert drained - base <= 0.3 * TOUCH_BYTES
        # reusing drained frames faults memory back in (measured from here:
        # the drain also trims the C heap, which may take the RSS below base)
        again = m.alloc_pages(N_TOUCH)
        assert sorted(again) == sorted(pfns)  # the cold heap, not fresh frames
        assert m.hwm == N_TOUCH
        _touch(m, again)
        assert _rss() - drained >= 0.7 * TOUCH_BYTES
    finally:
        m.close()


def test_close_gives_the_arena_back(impl):
    m = Memory(capacity=1 << 16)
    base = _rss()
    _touch(m, m.alloc_pages(N_TOUCH))
    assert _rss() - base >= 0.7 * TOUCH_BYTES
    m.close()
    assert _rss() - base <= 0.3 * TOUCH_BYTES
    if isinstance(m, model.Memory):
        assert m.arena.closed
        with pytest.raises(ValueError):
            m.buf[0]  # the views are released
    m.close()  # idempotent


def test_close_with_a_frame_view_still_held(impl):
    m = Memory(capacity=1 << 16)
    base = _rss()
    pfns = m.alloc_pages(N_TOUCH)
    _touch(m, pfns)
    view = m.frame(pfns[0])
    assert _rss() - base >= 0.7 * TOUCH_BYTES
    m.close()  # must not raise although a view is exported
    # the mapping survives for the view, but its memory is given back all the same
    assert _rss() - base <= 0.3 * TOUCH_BYTES
    m.close()
    view.release()


def test_repr_mentions_usage(mem):
    mem.alloc_pages(3)
    assert "3/256" in repr(mem)


def test_extreme_arguments_are_answered_not_crashed(mem):
    """A page count past the arena is refused (no buffer of that size is made first); an
    infinite or negative timeout is a timeout, not a crash."""
    with pytest.raises(OutOfFramesError):
        mem.alloc_pages(10**12)
    assert mem.nr_used == 0
    p = mem.alloc_page()
    assert mem.wait_on_page_locked(p, timeout=float("inf")) is True
    assert mem.lock_page(p, timeout=float("inf")) is True
    assert mem.lock_page(p, timeout=-1.0) is False  # locked by us: no wait at all
    mem.unlock_page(p)
    mem.free_page(p)
