"""zs_compact, the shrinker and background compaction (KERNEL.md section 4, pool/compact.py).

Expected values come from KERNEL.md: zs_can_compact(class) =
((objs_allocated - objs_inuse) // objs_per_zspage) * pages_per_zspage drives
compaction, the shrinker count and the ``freeable`` column; zs_compact returns
the pages it freed, which pages_compacted accumulates; a source zspage that a
reader holds is skipped; the shrinker's scan reports SHRINK_STOP (-1) when
there is nothing to free.
"""

from __future__ import annotations

import random
import threading

import pytest

from helpers import pattern, wait_until
from zsmalloc import Pool
from zsmalloc.debug import snapshot
from zsmalloc.pool.compact import SHRINK_STOP

pytestmark = pytest.mark.usefixtures("each_backend")

PROTOCOLS = ["mainline", "2016"]
REQ = 1560  # class 96: 5 pages, 13 objects
CLASS = 96
PAGES = 5
OBJS = 13


def can_compact(row) -> int:
    """zs_can_compact from a class_stats row, by KERNEL.md's formula."""
    wasted = row.obj_allocated - row.obj_used
    return (wasted // row.objs_per_zspage) * row.pages_per_zspage if wasted > 0 else 0


def can_compact_class(cls: dict) -> int:
    """zs_can_compact by KERNEL.md's formula, from a class's own counters (a snapshot's class)."""
    wasted = cls["objs_allocated"] - cls["objs_inuse"]
    return (wasted // cls["objs_per_zspage"]) * cls["pages_per_zspage"] if wasted > 0 else 0


def churned(seed: int, protocol: str = "mainline", n: int = 3000, **kw) -> tuple[Pool, dict[int, bytes]]:
    """A pool filled with n objects of mixed sizes, two thirds of them freed at random."""
    rng = random.Random(seed)
    pool = Pool(name=f"churn-{seed}-{protocol}", migration=protocol, **kw)
    data = {}
    for i in range(n):
        size = rng.choice([rng.randint(32, 3000), REQ, 200, 800])
        h = pool.malloc(size)
        data[h] = pattern(i, size)
        pool.write(h, data[h])
    for h in rng.sample(list(data), n * 2 // 3):
        pool.free(h)
        del data[h]
    return pool, data


def verify(pool: Pool, data: dict[int, bytes]) -> None:
    for h, d in data.items():
        assert pool.read(h) == d, f"handle {h:#x} differs"
    pool.check()
    assert pool.memory.nr_used == pool.total_pages


# ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("fullness", ["ratio", "legacy"])
def test_compact_frees_what_it_reports(protocol, fullness):
    pool, data = churned(1, protocol, fullness=fullness)
    policy = fullness  # naming the pool's own grouping is the same as naming none
    try:
        before = pool.total_pages
        count = pool.shrinker_count()
        rows = pool.class_stats()
        assert count == sum(can_compact(r) for r in rows) > 50
        freed = pool.compact(policy)
        assert freed == before - pool.total_pages
        assert freed > 0
        assert freed <= count  # a class frees at most what zs_can_compact promised
        assert pool.pages_compacted == freed
        assert pool.stats().pages_compacted == freed
        assert pool.objs_compacted > 0 and pool.nr_compactions == 1
        assert pool.memory.nr_used == pool.total_pages
        # done: nothing left to free, or nothing more compaction can do
        left = pool.shrinker_count()
        again = pool.compact()
        assert left == 0 or again == 0
        assert pool.pages_compacted == freed + again
        verify(pool, data)
        # and it accumulates over calls: more churn, more compaction
        rng = random.Random(2)
        for h in rng.sample(list(data), len(data) // 2):
            pool.free(h)
            del data[h]
        total = pool.pages_compacted
        before = pool.total_pages
        third = pool.compact(policy)
        assert third > 0 and pool.pages_compacted == total + third
        assert pool.total_pages == before - third
        verify(pool, data)
    finally:
        pool.close()


@pytest.mark.parametrize(("fullness", "partial_groups"), [("ratio", 10), ("legacy", 2)])
def test_every_class_ends_with_nothing_freeable(fullness, partial_groups):
    """After zs_compact, each class has zs_can_compact 0, or no partial pair left to work on."""
    pool, data = churned(3, fullness=fullness)
    try:
        pool.compact()
        for row in pool.class_stats():
            if row.freeable:
                # groups 10%..99%, or almost empty and almost full
                partial = sum(row.inuse_ratio[:partial_groups])
                assert partial < 2, row
        verify(pool, data)
    finally:
        pool.close()


def test_class_stats_freeable_is_zs_can_compact():
    pool, _ = churned(4)
    try:
        rows = pool.class_stats()
        assert any(r.freeable for r in rows)
        classes = {cls["index"]: cls for cls in snapshot(pool)["classes"]}
        assert sorted(classes) == [r.index for r in rows]
        for r in rows:
            assert r.freeable == can_compact(r)
            assert r.freeable == can_compact_class(classes[r.index])
        assert pool.shrinker_count() == sum(r.freeable for r in rows) == pool.stats().freeable_pages
        pool.compact()
        rows = pool.class_stats()
        assert pool.shrinker_count() == sum(can_compact(r) for r in rows)
    finally:
        pool.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_ratio_grouping_moves_fewer_objects_than_legacy(seed):
    """The 6.4 compaction (fullest destination, emptiest source) frees the same pages with fewer
    object moves than 6.1's, on pools churned alike."""
    moved, freed = {}, {}
    for fullness in ("ratio", "legacy"):
        pool, data = churned(seed, fullness=fullness)
        try:
            freed[fullness] = pool.compact()
            moved[fullness] = pool.objs_compacted
            verify(pool, data)
        finally:
            pool.close()
    assert freed["ratio"] >= freed["legacy"] > 0
    assert moved["ratio"] < moved["legacy"], (moved, freed)


def test_shrinker_scan_stops_when_nothing_to_do():
    with Pool(name="shrink") as pool:
        assert pool.shrinker_count() == 0
        assert pool.shrinker_scan() == SHRINK_STOP == -1
        hs = [pool.malloc(REQ) for _ in range(2 * OBJS)]
        for h in hs[1:OBJS] + hs[OBJS + 1 :]:  # two zspages with one object each
            pool.free(h)
        assert pool.shrinker_count() == PAGES
        assert pool.shrinker_scan() == PAGES
        assert pool.shrinker_count() == 0
        assert pool.shrinker_scan() == SHRINK_STOP
        assert pool.pages_compacted == PAGES
        pool.check()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_mapped_source_zspage_is_skipped(protocol):
    """Compaction only trylocks the source zspage: while a reader maps one of its objects, the
    zspage stays as it is and the mapped bytes stay valid; after the unmap it is compacted."""
    with Pool(name=f"mapped-{protocol}", migration=protocol) as pool:
        data = {}
        hs = []
        for i in range(2 * OBJS):
            h = pool.malloc(REQ)
            data[h] = pattern(i, REQ)
            pool.write(h, data[h])
            hs.append(h)
        # zspage A keeps 1 object (the source), zspage B keeps 10 (the destination)
        for h in hs[1:OBJS] + hs[OBJS + 10 :]:
            pool.free(h)
            del data[h]
        src_h = hs[0]
        loc = pool.locate(src_h)
        assert pool.shrinker_count() == PAGES
        pages = pool.total_pages
        with pool.map(src_h) as view:
            assert pool.compact() == 0
            assert pool.locate(src_h) == loc
            assert bytes(view) == data[src_h]
            assert pool.total_pages == pages and pool.shrinker_count() == PAGES
        pool.check()
        assert pool.compact() == PAGES
        assert pool.locate(src_h) != loc
        assert pool.zspage_pfns(src_h) == pool.zspage_pfns(hs[OBJS])  # now in B
        assert pool.objs_compacted == 1
        verify(pool, data)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_compaction_with_an_isolated_page(protocol):
    """2016: an isolated zspage is on no list, so compaction leaves it alone.  Mainline: the
    zspage is compacted and destroyed; the VM's page is released when it lets go."""
    with Pool(name=f"iso-{protocol}", migration=protocol) as pool:
        mem = pool.memory
        data = {}
        hs = []
        for i in range(2 * OBJS):
            h = pool.malloc(REQ)
            data[h] = pattern(i, REQ)
            pool.write(h, data[h])
            hs.append(h)
        for h in hs[2:OBJS] + hs[OBJS + 10 :]:  # A: 2 objects, B: 10 objects
            pool.free(h)
            del data[h]
        a_pages = pool.zspage_pfns(hs[0])
        where = {h: pool.locate(h) for h in hs[:2]}
        assert mem.isolate_movable_page(a_pages[0])
        freed = pool.compact()
        if protocol == "2016":
            assert freed == 0
            assert {h: pool.locate(h) for h in hs[:2]} == where
            pool.check()
            mem.putback_movable_page(a_pages[0])
            assert pool.compact() == PAGES
        else:
            assert freed == PAGES
            assert snapshot(pool)["pages"][a_pages[0]]["refcount"] == 1  # only the VM holds it now
            res = mem.migrate_pages([a_pages[0]])
            assert res.succeeded == 1 and res.moved == {}
            assert not mem.page_in_use(a_pages[0])
        assert all(not mem.page_in_use(p) for p in a_pages)
        verify(pool, data)


def test_auto_compaction_runs_in_the_background():
    """Pool(auto_compact_pages=N): after enough frees, with N pages freeable, the pool compacts
    by itself (the shrinker run from the pool's worker)."""
    pool, data = churned(5, auto_compact_pages=8)
    try:
        assert wait_until(lambda: pool.nr_compactions > 0), "no background compaction happened"
        assert wait_until(lambda: not [t for t in threading.enumerate() if t.name == f"zs-work-{pool.name}"])
        assert pool.pages_compacted > 0 and pool.objs_compacted > 0
        verify(pool, data)
    finally:
        pool.close()


def test_no_background_compaction_without_a_threshold():
    pool, _ = churned(5)
    try:
        assert wait_until(lambda: not [t for t in threading.enumerate() if t.name == f"zs-work-{pool.name}"])
        assert pool.nr_compactions == 0 and pool.pages_compacted == 0
        assert pool.shrinker_count() > 8
    finally:
        pool.close()


def test_auto_compaction_waits_for_the_threshold():
    """A threshold higher than what is freeable: no background compaction."""
    pool, _ = churned(5, auto_compact_pages=1 << 20)
    try:
        assert wait_until(lambda: not [t for t in threading.enumerate() if t.name == f"zs-work-{pool.name}"])
        assert pool.nr_compactions == 0
    finally:
        pool.close()


def test_compaction_takes_no_page():
    """zs_compact moves objects into zspages that exist: with every page allocation failing, it
    still frees pages, and no allocation was even tried."""
    pool, data = churned(6)
    mem = pool.memory
    try:
        mem.inject_failures(probability=1.0)  # any page allocation would now fail
        before = pool.total_pages
        freed = pool.compact()
        assert freed > 0
        assert pool.total_pages == before - freed
        assert mem.nr_alloc_fail == 0
    finally:
        mem.clear_failures()
    verify(pool, data)
    pool.close()


@pytest.mark.model_only  # watches the model's _free_zspage and alloc_zspage, Python methods
def test_compaction_never_allocates_pages():
    """zs_compact moves objects into zspages that exist: it takes no page, so it cannot fail for
    want of one, and the pool's page count only falls while it runs."""
    pool, data = churned(6)
    mem = pool.memory
    seen: list[int] = []
    allocs: list[str] = []
    real_free = pool._free_zspage

    def watch_free(cls, zid):
        real_free(cls, zid)
        seen.append(pool.total_pages)

    pool._free_zspage = watch_free
    pool.alloc_zspage = lambda cls: allocs.append("alloc_zspage")
    try:
        mem.inject_failures(probability=1.0)  # any page allocation would now fail
        before = pool.total_pages
        freed = pool.compact()
        assert freed > 0 and allocs == []
        assert seen == sorted(seen, reverse=True) and seen[0] < before
        assert pool.total_pages == before - freed
        assert mem.nr_alloc_fail == 0
    finally:
        mem.clear_failures()
        del pool._free_zspage, pool.alloc_zspage
    verify(pool, data)
    pool.close()
