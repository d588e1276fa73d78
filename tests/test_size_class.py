"""Size classes (zsmalloc.pool.size_class): golden tests for both chain-size rules.

Sources of truth, never the code under test:

- the table of Documentation/mm/zsmalloc.rst (KERNEL.md section 1), which
  belongs to the older used-percentage rule;
- a brute-force reference written here from the rules' definitions
  (KERNEL.md section 1) for the current min-waste rule;
- a few hand-checked facts.

Most tests here are about the table functions (``zsmalloc.size_classes`` and
the rest of ``zsmalloc.pool.size_class``), which no implementation owns; the
tests that build a ``Pool`` run on both implementations (``both``), since
each computes its own table.
"""

from __future__ import annotations

import pytest

import zsmalloc
from zsmalloc import InvalidSizeError, Pool, debug
from zsmalloc.pool import size_class as sc
from zsmalloc.pool.size_class import (
    RULE_MIN_WASTE,
    RULE_USED_PERCENTAGE,
    build_class_table,
    calculate_zspage_chain_size,
    get_pages_per_zspage,
    get_size_class_index,
    huge_class_size,
    size_classes,
)

PAGE = 4096
HEADER = 8
CHAINS = range(4, 17)

#: the test builds a Pool: run it on the model and on the engine (conftest.py)
both = pytest.mark.usefixtures("each_backend")


# chain limit -> (canonical classes, size of the largest non-huge class), used-percentage rule
DOCUMENTED = {
    4: (69, 3264),
    5: (86, 3408),
    6: (93, 3504),
    7: (112, 3584),
    8: (123, 3632),
    9: (140, 3680),
    10: (143, 3712),
    11: (159, 3744),
    12: (164, 3776),
    13: (180, 3792),
    14: (183, 3808),
    15: (188, 3840),
    16: (191, 3840),
}


# ----------------------------------------------------------------------
# the reference, from the definitions


def ref_index(size: int) -> int:
    """Class index for an object of ``size`` bytes: ceil((size - 32) / 16), within 0..254."""
    if size <= 32:
        return 0
    q, r = divmod(size - 32, 16)
    return min(254, q + (1 if r else 0))


def ref_pages(size: int, chain: int, rule: str) -> int:
    candidates = range(1, chain + 1)
    if rule == "min-waste":
        if size in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            return 1
        # smallest tail waste, the smaller n on a tie
        return min(candidates, key=lambda n: ((n * PAGE) % size, n))
    # highest integer used-percentage, the smaller n on a tie
    return max(candidates, key=lambda n: ((n * PAGE // size) * size * 100 // (n * PAGE), -n))


def ref_table(chain: int, rule: str):
    """(canonical classes as (index, size, pages, objs, huge) ascending, canonical map, huge size)."""
    created: list[tuple[int, int, int, int, bool]] = []
    canonical = {}
    huge_size = None
    for i in range(254, -1, -1):
        size = 32 + 16 * i
        pages = ref_pages(size, chain, rule)
        objs = pages * PAGE // size
        if huge_size is None and pages > 1 and objs > 1:
            huge_size = size - 7
        if created and created[-1][2:4] == (pages, objs):
            canonical[i] = created[-1][0]
            continue
        created.append((i, size, pages, objs, pages == 1 and objs == 1))
        canonical[i] = i
    return sorted(created), canonical, huge_size


REF = {(c, r): ref_table(c, r) for c in CHAINS for r in ("min-waste", "used-percentage")}


def _as_tuples(specs) -> list[tuple[int, int, int, int, bool]]:
    return [(s.index, s.size, s.pages_per_zspage, s.objs_per_zspage, s.huge) for s in specs]


# ----------------------------------------------------------------------
# the reference itself agrees with the documentation


@pytest.mark.parametrize("chain", CHAINS)
def test_reference_reproduces_the_documented_table(chain):
    classes, _, huge = REF[chain, "used-percentage"]
    count, largest = DOCUMENTED[chain]
    assert len(classes) == count
    assert max(c[1] for c in classes if not c[4]) == largest
    assert huge == largest - 7


def test_reference_min_waste_differs_from_the_table_from_chain_6_on():
    for chain in CHAINS:
        classes, _, huge = REF[chain, "min-waste"]
        count, largest = DOCUMENTED[chain]
        assert huge == largest - 7  # same watermarks
        if chain < 6:
            assert len(classes) == count
        else:
            assert len(classes) != count


# ----------------------------------------------------------------------
# the documented (used-percentage) table


@pytest.mark.parametrize("chain", CHAINS)
def test_used_percentage_rule_matches_the_documented_table(chain):
    count, largest = DOCUMENTED[chain]
    classes = size_classes(chain, RULE_USED_PERCENTAGE)
    assert len(classes) == count
    assert max(c.size for c in classes if not c.huge) == largest
    assert huge_class_size(chain, RULE_USED_PERCENTAGE) == largest - 7
    assert build_class_table(chain, RULE_USED_PERCENTAGE)[2] == largest - 7


# ----------------------------------------------------------------------
# both rules, against the reference


@pytest.mark.parametrize("rule", [RULE_MIN_WASTE, RULE_USED_PERCENTAGE])
@pytest.mark.parametrize("chain", CHAINS)
def test_class_table_matches_the_reference(chain, rule):
    want_classes, want_canonical, want_huge = REF[chain, rule]
    assert _as_tuples(size_classes(chain, rule)) == want_classes
    canonical, specs, huge = build_class_table(chain, rule)
    assert len(canonical) == 255
    assert canonical == [want_canonical[i] for i in range(255)]
    assert sorted(specs) == [c[0] for c in want_classes]
    assert all(specs[i].index == i for i in specs)
    assert huge == want_huge
    assert huge_class_size(chain, rule) == want_huge


@pytest.mark.parametrize("chain", CHAINS)
def test_min_waste_counts_and_watermarks(chain):
    want_classes, _, want_huge = REF[chain, "min-waste"]
    classes = size_classes(chain)  # the default rule
    assert len(classes) == len(want_classes)
    largest = DOCUMENTED[chain][1]
    assert max(c.size for c in classes if not c.huge) == largest
    assert huge_class_size(chain) == want_huge == largest - 7


@pytest.mark.parametrize("rule", [RULE_MIN_WASTE, RULE_USED_PERCENTAGE])
@pytest.mark.parametrize("chain", CHAINS)
def test_per_size_pages_match_the_reference(chain, rule):
    fn = calculate_zspage_chain_size if rule == RULE_MIN_WASTE else get_pages_per_zspage
    for i in range(255):
        size = 32 + 16 * i
        assert fn(size, chain) == ref_pages(size, chain, rule), (size, chain, rule)


@pytest.mark.parametrize("rule", [RULE_MIN_WASTE, RULE_USED_PERCENTAGE])
@pytest.mark.parametrize("chain", [4, 8, 16])
def test_table_invariants(chain, rule):
    canonical, specs, huge = build_class_table(chain, rule)
    huge_specs = [s for s in specs.values() if s.huge]
    assert [s.index for s in huge_specs] == [254]  # all huge classes merge into 254
    for i in range(255):
        c = canonical[i]
        assert c >= i  # merged into a larger class
        assert canonical[c] == c
        size = 32 + 16 * i
        pages = ref_pages(size, chain, rule)
        assert (specs[c].pages_per_zspage, specs[c].objs_per_zspage) == (pages, pages * PAGE // size)
        # a request above the huge threshold needs a huge class, below it does not
        assert specs[c].huge == (size - 7 > huge)


# ----------------------------------------------------------------------
# hand-checked facts


def test_hand_checked_huge_class_sizes():
    assert huge_class_size(8) == 3625
    assert huge_class_size(4) == 3257
    assert huge_class_size() == 3625  # default chain 8
    assert huge_class_size(8, RULE_USED_PERCENTAGE) == 3625
    assert huge_class_size(4, RULE_USED_PERCENTAGE) == 3257


def test_worked_example_1568():
    assert [(n * PAGE) % 1568 for n in range(1, 6)] == [960, 352, 1312, 704, 96]
    for chain in CHAINS:
        if chain >= 5:
            assert calculate_zspage_chain_size(1568, chain) == 5
        else:
            assert calculate_zspage_chain_size(1568, chain) == 2  # 352 bytes wasted
    _, specs, _ = build_class_table(8)
    assert get_size_class_index(1568) == 96
    spec = specs[96]
    assert (spec.size, spec.pages_per_zspage, spec.objs_per_zspage, spec.huge) == (1568, 5, 13, False)
    canonical4, specs4, _ = build_class_table(4)
    # with chain 4, 1568 (2 pages, 5 objects) merges upwards up to 1632 (5 * 1632 = 8160 <= 8192;
    # 1648 fits only 4 times in 2 pages)
    assert canonical4[96] == 100
    assert (specs4[100].size, specs4[100].pages_per_zspage, specs4[100].objs_per_zspage) == (1632, 2, 5)


def test_hand_checked_rule_difference_208():
    # 208 bytes: waste 144, 80, 16, 160 for 1..4 pages; used 92%, 99%, 99%, 99%
    assert calculate_zspage_chain_size(208, 4) == 3  # least waste: 3 pages, 59 objects
    assert get_pages_per_zspage(208, 4) == 2  # 99% already at 2 pages: 39 objects
    _, mw, _ = build_class_table(4, RULE_MIN_WASTE)
    _, up, _ = build_class_table(4, RULE_USED_PERCENTAGE)
    idx = get_size_class_index(208)
    assert idx == 11
    assert (mw[idx].pages_per_zspage, mw[idx].objs_per_zspage) == (3, 59)
    assert (up[idx].pages_per_zspage, up[idx].objs_per_zspage) == (2, 39)


def test_powers_of_two_take_one_page():
    for size in (32, 64, 128, 256, 512, 1024, 2048, 4096):
        for chain in (4, 8, 16):
            assert calculate_zspage_chain_size(size, chain) == 1
            assert get_pages_per_zspage(size, chain) == 1


def test_class_254_is_4096_and_huge():
    for chain in (4, 8, 16):
        for rule in (RULE_MIN_WASTE, RULE_USED_PERCENTAGE):
            classes = size_classes(chain, rule)
            top = classes[-1]
            assert (top.index, top.size, top.pages_per_zspage, top.objs_per_zspage, top.huge) == (
                254,
                4096,
                1,
                1,
                True,
            )
            first = classes[0]
            assert (first.index, first.size, first.pages_per_zspage, first.objs_per_zspage) == (
                0,
                32,
                1,
                128,
            )


def test_get_size_class_index_facts():
    assert get_size_class_index(1) == 0
    assert get_size_class_index(32) == 0
    assert get_size_class_index(33) == 1
    assert get_size_class_index(48) == 1
    assert get_size_class_index(49) == 2
    assert get_size_class_index(4080) == 253
    assert get_size_class_index(4081) == 254
    assert get_size_class_index(4096) == 254
    assert get_size_class_index(4104) == 254  # 4096 + header: clamped
    for size in range(1, 4200):
        assert get_size_class_index(size) == ref_index(size), size


def test_constants():
    assert sc.ZS_SIZE_CLASSES == 255
    assert sc.ZS_HANDLE_SIZE == 8
    assert sc.ZS_MIN_ALLOC_SIZE == 32
    assert sc.ZS_MAX_ALLOC_SIZE == 4096
    assert sc.ZS_SIZE_CLASS_DELTA == 16
    assert sc.ZS_DEFAULT_CHAIN_SIZE == 8
    assert (RULE_MIN_WASTE, RULE_USED_PERCENTAGE) == ("min-waste", "used-percentage")
    assert zsmalloc.size_classes is size_classes
    assert zsmalloc.huge_class_size is huge_class_size


# ----------------------------------------------------------------------
# bad arguments


@both
@pytest.mark.parametrize("chain", [3, 17, 0, -1])
def test_invalid_chain_size_raises(chain):
    with pytest.raises(ValueError):
        size_classes(chain)
    with pytest.raises(ValueError):
        huge_class_size(chain)
    with pytest.raises(ValueError):
        build_class_table(chain)
    with pytest.raises(ValueError):
        size_classes(chain, RULE_USED_PERCENTAGE)
    with pytest.raises(ValueError):
        Pool(chain_size=chain)


@both
def test_unknown_rule_raises():
    for rule in ("", "min_waste", "used", "MIN-WASTE"):
        with pytest.raises(ValueError):
            size_classes(8, rule)
        with pytest.raises(ValueError):
            huge_class_size(8, rule)
        with pytest.raises(ValueError):
            build_class_table(8, rule)
    with pytest.raises(ValueError):
        Pool(class_rule="largest")


# ----------------------------------------------------------------------
# the pool uses the table


@both
@pytest.mark.parametrize("rule", [RULE_MIN_WASTE, RULE_USED_PERCENTAGE])
@pytest.mark.parametrize("chain", CHAINS)
def test_the_pools_classes_are_the_reference_table(chain, rule):
    """Each implementation builds its own class table: the classes it reports, the class malloc
    takes for every size (the header added, merged slots going to the next class kept) and the
    huge threshold are the reference's."""
    want_classes, want_canonical, want_huge = REF[chain, rule]
    with Pool(name="table", chain_size=chain, class_rule=rule) as pool:
        assert pool.huge_class_size == want_huge
        rows = pool.class_stats()
        assert [(r.index, r.size, r.pages_per_zspage, r.objs_per_zspage) for r in rows] == [
            c[:4] for c in want_classes
        ]
        snap = debug.snapshot(pool)
        classes = [
            (c["index"], c["size"], c["pages_per_zspage"], c["objs_per_zspage"], c["huge"])
            for c in snap["classes"]
        ]
        assert sorted(classes) == want_classes
        assert snap["class_of_size"] == [-1] + [
            want_canonical[ref_index(size + HEADER)] for size in range(1, 4097)
        ]


@both
@pytest.mark.parametrize(
    ("chain", "rule"),
    [(8, RULE_MIN_WASTE), (4, RULE_MIN_WASTE), (16, RULE_USED_PERCENTAGE), (11, RULE_MIN_WASTE)],
)
def test_pool_class_index_and_huge_class_size(chain, rule):
    _, canonical, huge = REF[chain, rule]
    with Pool(name="sc", chain_size=chain, class_rule=rule) as pool:
        assert pool.huge_class_size == huge
        # zs_lookup_class_index: no header added
        for size in range(1, 4097):
            assert pool.class_index(size) == canonical[ref_index(size)], size
        for bad in (0, -1, 4097):
            with pytest.raises(InvalidSizeError):
                pool.class_index(bad)
        with pytest.raises(ValueError):
            pool.class_index(4097)


@both
def test_pool_defaults_to_min_waste_chain_8():
    _, canonical, _ = REF[8, "min-waste"]
    _, canonical_up, _ = REF[8, "used-percentage"]
    with Pool(name="default") as pool:
        assert pool.huge_class_size == 3625
        assert [pool.class_index(32 + 16 * i) for i in range(255)] == [canonical[i] for i in range(255)]
        # and the legacy rule really is different at chain 8
        assert [canonical[i] for i in range(255)] != [canonical_up[i] for i in range(255)]
        assert len(pool.class_stats()) == len(REF[8, "min-waste"][0])


MALLOC_SIZES = [1, 24, 25, 40, 41, 100, 200, 1000, 1560, 1561, 3623, 3624, 3625, 3633, 4088, 4089, 4096]


@both
@pytest.mark.parametrize(("chain", "rule"), [(8, RULE_MIN_WASTE), (4, RULE_USED_PERCENTAGE)])
def test_malloc_lands_in_the_class_of_size_plus_header(chain, rule):
    _, canonical, huge = REF[chain, rule]
    with Pool(name="lands", chain_size=chain, class_rule=rule) as pool:
        for n in MALLOC_SIZES:
            before = {r.index: r.obj_used for r in pool.class_stats()}
            h = pool.malloc(n)
            after = {r.index: r.obj_used for r in pool.class_stats()}
            grew = [i for i in after if after[i] != before[i]]
            assert grew == [canonical[ref_index(n + HEADER)]], n
            assert after[grew[0]] == before[grew[0]] + 1
            # the huge threshold: requests of huge_class_size or more get a page of their own
            assert (grew[0] == 254) == (n >= huge), n
            pool.free(h)


@both
def test_malloc_at_the_chain_8_huge_threshold():
    with Pool(name="edge") as pool:
        small = pool.malloc(3624)  # 3632 with the header: class 225, the largest non-huge one
        big = pool.malloc(3625)  # 3633: huge
        rows = {r.index: r for r in pool.class_stats()}
        assert rows[225].obj_used == 1
        assert rows[225].size == 3632
        assert rows[225].pages_per_zspage > 1
        assert rows[254].obj_used == 1
        pool.free(small)
        pool.free(big)
