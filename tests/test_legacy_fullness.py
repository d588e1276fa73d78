"""The fullness grouping before 6.4 (pool/legacy.py), on both backends, against 6.1's mm/zsmalloc.c.

The expected lists and counts are worked out by hand from 6.1's
get_fullness_group (almost empty up to 3*N//4 objects), insert_zspage (after
a head that holds more), find_get_zspage (almost full, almost empty, empty)
and __zs_compact (a source from almost empty drained into destinations from
almost full), for class 1568 (5 pages, 13 objects: almost empty up to 9).
"""

from __future__ import annotations

import pytest

from zsmalloc import Pool
from zsmalloc.debug import snapshot
from zsmalloc.pool import legacy
from zsmalloc.pool.size_class import size_classes
from zsmalloc.pool.zsmalloc import SizeClass, Zspage

pytestmark = pytest.mark.usefixtures("each_backend")

REQ = 1560  # class 96, 1568 bytes: 5 pages, 13 objects
CLASS = 96
OBJS = 13
EMPTY, ALMOST_EMPTY, ALMOST_FULL, FULL = 0, 1, 2, 3


def zspages_of(pool: Pool, n: int) -> list[list[int]]:
    """n full zspages of class 96, their handles by zspage, in the order they were made."""
    handles = [pool.malloc(REQ) for _ in range(n * OBJS)]
    return [handles[i * OBJS : (i + 1) * OBJS] for i in range(n)]


def zid(pool: Pool, handle: int) -> int:
    """The zspage id of a handle's object."""
    snap = snapshot(pool)
    first = pool.zspage_pfns(handle)[0]
    return next(z for z, zs in snap["zspages"].items() if zs["pages"][0] == first)


def lists(pool: Pool) -> list[list[int]]:
    """Class 96's four lists, head first."""
    cls = next(c for c in snapshot(pool)["classes"] if c["index"] == CLASS)
    assert not any(cls["fullness"][4:]), "a legacy pool uses groups 0..3 only"
    return cls["fullness"][:4]


def test_the_three_quarter_mark_and_the_columns():
    with Pool(name="legacy", fullness="legacy") as pool:
        [z] = zspages_of(pool, 1)
        for h in z[:3]:
            pool.free(h)  # 10 of 13: almost full
        assert lists(pool)[ALMOST_FULL] and not lists(pool)[ALMOST_EMPTY]
        pool.free(z[3])  # 9 of 13 = 3*13//4: almost empty
        assert lists(pool)[ALMOST_EMPTY] and not lists(pool)[ALMOST_FULL]
        row = next(r for r in pool.class_stats() if r.index == CLASS)
        assert (row.fullness, row.inuse_ratio) == ("legacy", (1, 0, 0))
        assert row.to_dict()["inuse_ratio"] == {"almost_empty": 1, "almost_full": 0, "full": 0}
        text = pool.format_classes()
        assert text.splitlines()[0].split()[:4] == ["class", "size", "almost_full", "almost_empty"]
        line = next(x for x in text.splitlines() if x.split()[:2] == [str(CLASS), "1568"])
        assert line.split() == ["96", "1568", "0", "1", "13", "9", "5", "5", "0"]
        pool.check()


def test_malloc_takes_the_head_of_almost_full():
    """6.1 takes the head of almost full, whatever its use; 6.4 the fullest group's head."""
    for fullness, want in (("legacy", 0), ("ratio", 1)):
        with Pool(name="pick", fullness=fullness) as pool:
            z = zspages_of(pool, 2)
            pool.free(z[1][0])  # z1 at 12: almost full (92%)
            pool.free(z[0][0])  # z0 at 12: almost full, the head
            for h in z[0][1:3]:
                pool.free(h)  # z0 at 10 (76%): still the head of almost full
            h = pool.malloc(REQ)
            assert zid(pool, h) == zid(pool, z[want][5]), fullness
            pool.check()


def test_compaction_drains_one_source_into_several_destinations():
    """Z0 at 2, Z1 at 11, Z2 at 12, Z3 at 5: 6.1 takes Z3 (head of almost empty) as its source and
    moves its 5 objects into Z2 (1), Z1 (2) and Z0 (2); 6.4 moves Z0's 2 into Z2 and Z1."""
    for fullness, moved, kept in (("legacy", 5, 0), ("ratio", 2, 3)):
        with Pool(name="drain", fullness=fullness) as pool:
            z = zspages_of(pool, 4)
            ids = [zid(pool, zs[0]) for zs in z]
            data = {}
            for zs, keep in zip(z, (2, 11, 12, 5), strict=True):
                for h in zs[keep:]:
                    pool.free(h)
                for i, h in enumerate(zs[:keep]):
                    data[h] = bytes([i]) * REQ
                    pool.write(h, data[h])
            if fullness == "legacy":
                assert lists(pool) == [[], [ids[3], ids[0]], [ids[2], ids[1]], []]
            assert pool.compact() == 5
            assert pool.objs_compacted == moved
            assert all(pool.read(h) == d for h, d in data.items())
            assert {zid(pool, h) for h in data} == {ids[i] for i in range(4) if i != 3 - kept}
            if fullness == "legacy":
                # Z2 then Z1 put back full, Z0 (4 objects) back on almost empty
                assert lists(pool) == [[], [ids[0]], [], [ids[1], ids[2]]]
            assert pool.pages_compacted == 5
            pool.check()


def test_a_zspage_with_fewer_objects_than_the_head_goes_after_it():
    """insert_zspage as 6.1 has it, on the model's lists (dicts whose last key is the head)."""
    spec = next(s for s in size_classes(8) if s.index == CLASS)
    cls = SizeClass(spec)
    zspages = []
    for i, inuse in enumerate((4, 7, 2, 7)):
        zspage = Zspage(i)
        zspage.inuse = inuse
        legacy.insert_zspage(cls, zspage, ALMOST_EMPTY)
        zspages.append(zspage)
    head_first = [z.zid for z in reversed(cls.fullness_list[ALMOST_EMPTY])]
    # 4; 7 takes the head; 2 goes after 7; 7 (not fewer than 7) takes the head
    assert head_first == [3, 1, 2, 0]
    assert all(z.fullness == ALMOST_EMPTY for z in zspages)


def test_compact_names_the_pools_grouping_or_nothing():
    with Pool(name="policy", fullness="legacy") as pool:
        assert pool.fullness == "legacy"
        assert pool.compact("legacy") == 0
        with pytest.raises(ValueError, match="needs a pool made with fullness='ratio'"):
            pool.compact("ratio")
        with pytest.raises(ValueError, match="policy must be one of"):
            pool.compact("tenths")
    with pytest.raises(ValueError, match="fullness must be one of"):
        Pool(name="bad", fullness="tenths")
