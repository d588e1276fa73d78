"""Page allocation failures during migration, arena compaction and evacuation.

The page allocator is told to fail (``Memory.inject_failures``): the next N
allocations, or each with a probability.  A page whose destination cannot be
had is not moved: it is put back to its owner (or left isolated when the
caller asked for no putback), counted as failed (not retried: -ENOMEM is not
-EAGAIN), and every object stays where it was and reads back intact.
zs_compact allocates no page at all, so it cannot fail this way.
"""

from __future__ import annotations

import random

import pytest

from helpers import pattern
from zsmalloc import Memory, Pool
from zsmalloc.debug import snapshot
from zsmalloc.mm import MigrateMode

pytestmark = pytest.mark.usefixtures("each_backend")

PROTOCOLS = ["mainline", "2016"]
REQ = 1560  # class 96: 5 pages, 13 objects


def fill(pool: Pool, n: int, seed: int) -> dict[int, bytes]:
    rng = random.Random(seed)
    data = {}
    for i in range(n):
        size = rng.choice([rng.randint(1, 4096), REQ, 4096, 300])
        h = pool.malloc(size)
        data[h] = pattern(i, size)
        pool.write(h, data[h])
    return data


def verify(pool: Pool, data: dict[int, bytes]) -> None:
    for h, d in data.items():
        assert pool.read(h) == d, f"handle {h:#x} differs"
    pool.check()
    mem = pool.memory
    assert not any(mem.page_isolated(p) or mem.page_locked(p) for p in mem.used_pfns())


@pytest.fixture(params=PROTOCOLS)
def filled(request):
    pool = Pool(name=f"faults-{request.param}", migration=request.param)
    data = fill(pool, 200, 1)
    try:
        yield pool, data
    finally:
        pool.memory.clear_failures()
        pool.close()


def test_destination_failure_puts_the_page_back(filled):
    pool, data = filled
    mem = pool.memory
    pfns = mem.movable_pfns()[:4]
    where = {h: pool.locate(h) for h in data}
    for p in pfns:
        assert mem.isolate_movable_page(p)
    mem.inject_failures(next_n=1)
    res = mem.migrate_pages(pfns)
    assert res.succeeded == 3 and res.failed == 1 and res.retried == 0
    assert res.failed_pfns == [pfns[0]]  # the first destination was the one refused
    assert pfns[0] not in res.moved
    assert mem.vmstat["pgmigrate_nomem"] == 1 and mem.vmstat["putback"] == 1
    assert mem.page_in_use(pfns[0]) and mem.page_movable(pfns[0]) and not mem.page_isolated(pfns[0])
    for h, (pfn, idx) in where.items():
        assert pool.locate(h) == (res.moved.get(pfn, pfn), idx)
    if pool.migration == "2016":
        assert not any(zs["isolated"] for zs in snapshot(pool)["zspages"].values())
    verify(pool, data)
    assert mem.nr_used == pool.total_pages


def test_every_destination_failing_moves_nothing(filled):
    pool, data = filled
    mem = pool.memory
    used = mem.used_pfns()
    where = {h: pool.locate(h) for h in data}
    mem.inject_failures(probability=1.0)
    res = mem.move_pages(used[:20])
    assert res.succeeded == 0 and res.failed == 20 and res.moved == {}
    assert sorted(res.failed_pfns) == used[:20]
    assert mem.used_pfns() == used
    assert {h: pool.locate(h) for h in data} == where
    verify(pool, data)
    mem.clear_failures()
    res = mem.move_pages(used[:20])
    assert res.succeeded == 20
    verify(pool, data)


def test_failure_without_putback_leaves_the_page_isolated(filled):
    pool, data = filled
    mem = pool.memory
    p = mem.movable_pfns()[3]
    assert mem.isolate_movable_page(p)
    mem.inject_failures(next_n=1)
    res = mem.migrate_pages([p], putback=False)
    assert res.failed_pfns == [p] and mem.page_isolated(p)
    # the VM may try again later: now it works
    res = mem.migrate_pages([p])
    assert res.succeeded == 1
    verify(pool, data)


def test_random_failures_in_move_pages(filled):
    pool, data = filled
    mem = pool.memory
    mem.inject_failures(probability=0.3, seed=4)
    total = failed = 0
    for _ in range(5):
        pfns = mem.movable_pfns()
        res = mem.move_pages(random.Random(total).sample(pfns, 15), MigrateMode.SYNC)
        assert res.succeeded + res.failed == 15 and res.retried == 0
        total += res.succeeded
        failed += res.failed
        verify(pool, data)
    assert total > 0 and failed > 0
    assert mem.vmstat["pgmigrate_nomem"] == failed
    assert mem.nr_used == pool.total_pages


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_memory_compact_with_failing_allocations(protocol):
    mem = Memory(capacity=1 << 14)
    pool = Pool(name=f"faults-compact-{protocol}", memory=mem, migration=protocol)
    try:
        data = fill(pool, 600, 2)
        rng = random.Random(3)
        for h in rng.sample(list(data), 400):
            pool.free(h)
            del data[h]
        hwm = mem.hwm
        mem.inject_failures(probability=0.5, seed=1)
        res = mem.compact()
        assert res.failed > 0, "no allocation failed: the test did not test anything"
        assert res.hwm_after == mem.hwm <= hwm
        assert mem.hwm >= mem.nr_used == pool.total_pages
        assert mem.vmstat["pgmigrate_nomem"] >= res.failed
        verify(pool, data)
        # everything refused: nothing moves, nothing breaks
        mem.inject_failures(probability=1.0)
        res = mem.compact()
        assert res.succeeded == 0
        verify(pool, data)
        # allowed again: the pages refused before move now
        mem.clear_failures()
        res = mem.compact()
        assert res.succeeded > 0 and mem.hwm < hwm
        verify(pool, data)
    finally:
        mem.clear_failures()
        pool.close()
        mem.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_evacuate_with_failing_allocations(protocol):
    pool = Pool(name=f"faults-evac-{protocol}", migration=protocol)
    mem = pool.memory
    try:
        data = fill(pool, 300, 4)
        start, end = 20, 80
        in_range = [p for p in mem.used_pfns() if start <= p < end]
        assert len(in_range) == end - start
        mem.inject_failures(probability=1.0)
        res = mem.evacuate(start, end)
        assert not res.complete and res.remaining == in_range
        assert res.succeeded == 0 and res.failed > 0
        verify(pool, data)
        # a few failures: the later rounds of evacuate move what the first could not
        mem.inject_failures(next_n=3)
        res = mem.evacuate(start, end)
        assert res.complete and res.remaining == []
        assert res.failed == 3 and res.succeeded == len(in_range)
        verify(pool, data)
        # neither call left the range excluded
        frame = mem.alloc_page_in(start, end)
        assert start <= frame < end
        mem.free_page(frame)
        # failing at random with the range kept excluded: what moved stays out
        mem.inject_failures(probability=0.4, seed=2)
        res = mem.evacuate(100, 160, keep_excluded=True)
        mem.clear_failures()
        assert res.remaining == [p for p in mem.used_pfns() if 100 <= p < 160]
        for i in range(50):
            h = pool.malloc(4096)
            data[h] = pattern(1000 + i, 4096)
            pool.write(h, data[h])
        assert set(mem.used_pfns()) & set(range(100, 160)) <= set(res.remaining)
        mem.unexclude_range(100, 160)
        verify(pool, data)
    finally:
        mem.clear_failures()
        pool.close()
