"""Pool statistics: debugfs ``classes`` text (zs_stats_size_show), class_stats(), stats().

The expected text is built here with printf formats taken from the kernel's
seq_printf calls, from a class table computed by a small reference (the
min-waste rule of KERNEL.md section 1) and from the fullness of zspages that
the test itself arranges, never from the code under test.
"""

# ruff: noqa: UP031  (printf-style on purpose: the formats mirror the kernel's seq_printf calls)

from __future__ import annotations

import random
import threading
import time

import pytest

from zsmalloc import ClassStats, Pool, PoolStats

PAGE = 4096
RATIO_COLUMNS = ["10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "99%", "100%"]


# ----------------------------------------------------------------------
# reference class table (min-waste rule) and the kernel's formats


def ref_canonical_classes(chain: int = 8) -> list[tuple[int, int, int, int]]:
    """Canonical (index, size, pages_per_zspage, objs_per_zspage), ascending."""
    created: list[tuple[int, int, int, int]] = []
    for i in range(254, -1, -1):
        size = 32 + 16 * i
        pages = 1  # a power of two wastes nothing in one page
        if size & (size - 1):
            pages = min(range(1, chain + 1), key=lambda n: ((n * PAGE) % size, n))
        objs = pages * PAGE // size
        if created and created[-1][2:] == (pages, objs):
            continue
        created.append((i, size, pages, objs))
    return sorted(created)


def ref_index(size: int) -> int:
    return 0 if size <= 32 else min(254, -(-(size - 32) // 16))


def group(inuse: int, objs: int) -> int:
    """Fullness group (KERNEL.md section 3); groups 1..11 print in columns 10%..100%."""
    if inuse == 0:
        return 0
    if inuse == objs:
        return 11
    return (100 * inuse // objs) // 10 + 1


def header_line() -> str:
    return (
        " %5s %5s " % ("class", "size")
        + "".join("%9s " % c for c in RATIO_COLUMNS)
        + "%13s %10s %10s %16s %8s"
        % ("obj_allocated", "obj_used", "pages_used", "pages_per_zspage", "freeable")
    )


def class_line(index, size, ratios, allocated, used, pages_used, ppz, freeable) -> str:
    return (
        " %5u %5u " % (index, size)
        + "".join("%9lu " % v for v in ratios)
        + "%13lu %10lu %10lu %16d %8lu" % (allocated, used, pages_used, ppz, freeable)
    )


def total_line(ratios, allocated, used, pages_used, freeable) -> str:
    return (
        " %5s %5s " % ("Total", "")
        + "".join("%9lu " % v for v in ratios)
        + "%13lu %10lu %10lu %16s %8lu" % (allocated, used, pages_used, "", freeable)
    )


def expected_text(per_class: dict[int, tuple[list[int], int, int]], chain: int = 8) -> str:
    """``per_class``: index -> (zspages per group 1..11, obj_allocated, obj_used); others empty."""
    lines = [header_line()]
    tot_ratio = [0] * 11
    tot_alloc = tot_used = tot_pages = tot_free = 0
    for index, size, ppz, opz in ref_canonical_classes(chain):
        ratios, allocated, used = per_class.get(index, ([0] * 11, 0, 0))
        pages_used = allocated // opz * ppz
        freeable = (allocated - used) // opz * ppz if allocated > used else 0
        lines.append(class_line(index, size, ratios, allocated, used, pages_used, ppz, freeable))
        tot_ratio = [a + b for a, b in zip(tot_ratio, ratios, strict=True)]
        tot_alloc += allocated
        tot_used += used
        tot_pages += pages_used
        tot_free += freeable
    lines.append("")
    lines.append(total_line(tot_ratio, tot_alloc, tot_used, tot_pages, tot_free))
    return "\n".join(lines) + "\n"


def ratios_of(groups: list[int]) -> list[int]:
    """Columns 10%..100% for zspages in the given fullness groups."""
    cols = [0] * 11
    for g in groups:
        assert 1 <= g <= 11
        cols[g - 1] += 1
    return cols


# ----------------------------------------------------------------------
# the scenario: zspages of known fullness in four classes (chain 8)

C0, C1, C96, C254 = 0, 1, 96, 254  # sizes 32, 48, 1568, 4096


def test_reference_geometry_of_the_scenario_classes():
    """Hand-checked: the classes the scenario uses are canonical with these shapes."""
    geo = {c[0]: c[1:] for c in ref_canonical_classes(8)}
    assert geo[C0] == (32, 1, 128)  # power of two: one page
    assert geo[C1] == (48, 3, 256)  # 3 pages waste nothing
    assert geo[C96] == (1568, 5, 13)  # KERNEL.md worked example
    assert geo[C254] == (4096, 1, 1)
    assert ref_index(20 + 8) == C0
    assert ref_index(40 + 8) == C1
    assert ref_index(1560 + 8) == C96


@pytest.fixture
def scenario():
    pool = Pool(name="stats", chain_size=8)
    keep: list[int] = []
    # class 0 (128 objects/zspage): X full then Y with 127; free all of X but one
    h0 = [pool.malloc(20) for _ in range(255)]
    for h in h0[1:128]:
        pool.free(h)
    keep += [h0[0], *h0[128:]]
    # class 1 (256 objects/zspage): one full zspage, free every other object -> exactly half used
    h1 = [pool.malloc(40) for _ in range(256)]
    for h in h1[::2]:
        pool.free(h)
    keep += h1[1::2]
    # class 96 (13 objects/zspage): A, B, C full; B keeps 6, C keeps 1
    h96 = [pool.malloc(1560) for _ in range(39)]
    for h in h96[13:20] + h96[27:39]:
        pool.free(h)
    keep += h96[:13] + h96[20:26] + h96[26:27]
    # huge: two one-page zspages, one freed again
    big = [pool.malloc(4000), pool.malloc(3700)]
    pool.free(big[1])
    keep.append(big[0])
    try:
        yield pool, keep
    finally:
        pool.close()


SCENARIO = {
    # index: (fullness groups of its zspages, obj_allocated, obj_used)
    C0: ([group(1, 128), group(127, 128)], 256, 128),
    C1: ([group(128, 256)], 256, 128),
    C96: ([group(13, 13), group(6, 13), group(1, 13)], 39, 20),
    C254: ([group(1, 1)], 1, 1),
}


def test_scenario_groups_by_hand():
    # the group rule, checked by hand for the zspages of the scenario
    assert group(1, 128) == 1  # 0% -> "10%" column
    assert group(127, 128) == 10  # 99% -> "99%" column
    assert group(128, 256) == 6  # exactly half: 50 // 10 + 1 -> printed under "60%"
    assert group(13, 13) == 11  # full -> "100%"
    assert group(6, 13) == 5  # 46% -> "50%"
    assert group(1, 13) == 1  # 7% -> "10%"


def _scenario_per_class():
    return {i: (ratios_of(groups), alloc, used) for i, (groups, alloc, used) in SCENARIO.items()}


def test_format_classes_matches_the_kernel_text(scenario):
    pool, _ = scenario
    assert pool.format_classes() == expected_text(_scenario_per_class())


def test_format_classes_scenario_rows_by_hand(scenario):
    """The four interesting rows and the Total row, spelled out."""
    pool, _ = scenario
    lines = pool.format_classes().split("\n")
    rows = {int(line.split()[0]): line for line in lines[1:] if line.strip() and line.split()[0].isdigit()}
    z = 0
    assert rows[C0] == class_line(0, 32, [1, z, z, z, z, z, z, z, z, 1, z], 256, 128, 2, 1, 1)
    assert rows[C1] == class_line(1, 48, [z, z, z, z, z, 1, z, z, z, z, z], 256, 128, 3, 3, 0)
    assert rows[C96] == class_line(96, 1568, [1, z, z, z, 1, z, z, z, z, z, 1], 39, 20, 15, 5, 5)
    assert rows[C254] == class_line(254, 4096, [z, z, z, z, z, z, z, z, z, z, 1], 1, 1, 1, 1, 0)
    assert lines[-1] == ""  # the text ends with a newline
    assert lines[-3] == ""  # blank line before Total
    assert lines[-2] == total_line([2, z, z, z, 1, 1, z, z, z, 1, 2], 552, 277, 21, 6)
    # pages_used agrees with the frames really taken from memory
    assert pool.memory.stats()["nr_used"] == 21
    assert pool.total_pages == 21


def test_format_classes_layout(scenario):
    pool, _ = scenario
    text = pool.format_classes()
    assert text.endswith("\n")
    lines = text.rstrip("\n").split("\n")
    header, body, blank, total = lines[0], lines[1:-2], lines[-2], lines[-1]
    tail = ["obj_allocated", "obj_used", "pages_used", "pages_per_zspage", "freeable"]
    assert header.split() == ["class", "size", *RATIO_COLUMNS, *tail]
    assert blank == ""
    canonical = ref_canonical_classes(8)
    assert len(body) == len(canonical) == 119
    assert len(body) == len(pool.class_stats())
    indexes = []
    for line, (index, size, ppz, _) in zip(body, canonical, strict=True):
        fields = line.split()
        assert len(fields) == 18
        assert all(f.isdigit() for f in fields)
        indexes.append(int(fields[0]))
        assert (int(fields[0]), int(fields[1]), int(fields[16])) == (index, size, ppz)
        assert len(line) == len(header)  # fixed column widths
    assert indexes == sorted(indexes)  # ascending class order
    assert len(set(indexes)) == len(indexes)
    t = total.split()
    assert t[0] == "Total"
    assert len(t) == 16  # no class size, no pages_per_zspage
    assert len(total) == len(header)
    assert total.startswith(" Total" + " " * 7 + " " * 8 + "2 ")  # " %5s %5s " then "%9lu "


def test_total_row_sums_the_class_rows(scenario):
    pool, _ = scenario
    lines = pool.format_classes().rstrip("\n").split("\n")
    body = [[int(f) for f in line.split()] for line in lines[1:-2]]
    total = [int(f) for f in lines[-1].split()[1:]]
    sums = [sum(r[k] for r in body) for k in range(2, 16)]  # 11 ratios, allocated, used, pages_used
    sums.append(sum(r[17] for r in body))  # freeable
    assert total == sums


def test_each_row_obeys_the_formulas(scenario):
    pool, _ = scenario
    geo = {c[0]: c for c in ref_canonical_classes(8)}
    lines = pool.format_classes().rstrip("\n").split("\n")
    for line in lines[1:-2]:
        f = [int(x) for x in line.split()]
        index, ratios, allocated, used, pages_used, ppz, freeable = f[0], f[2:13], *f[13:]
        _, _, want_ppz, opz = geo[index]
        assert ppz == want_ppz
        assert pages_used == allocated // opz * ppz
        assert freeable == max(0, (allocated - used) // opz * ppz)
        assert sum(ratios) * opz == allocated  # no empty zspage is pending here


def test_empty_pool_prints_every_class_with_zeros():
    with Pool(name="empty") as pool:
        assert pool.format_classes() == expected_text({})
        total = pool.format_classes().rstrip("\n").split("\n")[-1]
        assert [int(x) for x in total.split()[1:]] == [0] * 15


@pytest.mark.parametrize("chain", [4, 16])
def test_other_chain_sizes_print_their_own_canonical_classes(chain):
    with Pool(name="chain", chain_size=chain) as pool:
        h = pool.malloc(1560)
        idx = ref_index(1568)
        canonical = ref_canonical_classes(chain)
        owner = min(c for c in canonical if c[0] >= idx)  # the class serving 1568 after merging
        per_class = {owner[0]: (ratios_of([group(1, owner[3])]), owner[3], 1)}
        assert pool.format_classes() == expected_text(per_class, chain)
        pool.free(h)
        assert pool.format_classes() == expected_text({}, chain)


def test_random_workload_rows_match_live_objects():
    """Seeded churn over many sizes: obj_used per class and the Total row, against our own count."""
    rng = random.Random(1234)
    geo = {c[0]: c for c in ref_canonical_classes(8)}
    serving = {}
    for i in range(255):
        serving[i] = min(c for c in geo if c >= i)
    with Pool(name="churn") as pool:
        live: dict[int, int] = {}
        for _ in range(3000):
            if live and rng.random() < 0.45:
                h = rng.choice(list(live))
                del live[h]
                pool.free(h)
            else:
                n = rng.randint(1, 4096)
                live[pool.malloc(n)] = n
        used = {}
        for n in live.values():
            c = serving[ref_index(n + 8)]
            used[c] = used.get(c, 0) + 1
        lines = pool.format_classes().rstrip("\n").split("\n")
        rows = [[int(x) for x in line.split()] for line in lines[1:-2]]
        assert {r[0]: r[14] for r in rows if r[14]} == used
        for r in rows:
            opz = geo[r[0]][3]
            assert r[13] % opz == 0
            assert sum(r[2:13]) * opz == r[13]
            assert r[14] <= r[13]
        total = pool.format_classes().rstrip("\n").split("\n")[-1].split()
        assert int(total[13]) == len(live)
        assert int(total[14]) == pool.memory.stats()["nr_used"] == pool.total_pages
        stats = pool.stats()
        assert stats.objs_inuse == len(live) == len(pool)
        assert stats.bytes_requested == sum(live.values())
        assert stats.pages_allocated == int(total[14])


def test_group_0_is_not_printed_while_a_free_is_deferred():
    """An empty zspage whose free is deferred still counts in obj_allocated, in no ratio column."""
    with Pool(name="deferred") as pool:
        mem = pool.memory
        before = set(mem.used_pfns())
        h = pool.malloc(1560)
        pages = sorted(set(mem.used_pfns()) - before)
        assert len(pages) == 5
        assert mem.trylock_page(pages[2])  # someone (the VM) holds one page lock
        try:
            pool.free(h)  # empties the zspage: trylock of its pages fails -> deferred
            text = pool.format_classes()
            assert text == expected_text({C96: ([0] * 11, 13, 0)})
            row = next(r for r in pool.class_stats() if r.index == C96)
            assert row.freeable == 5
            assert row.obj_used == 0
            assert row.inuse_ratio == (0,) * 11
        finally:
            mem.unlock_page(pages[2])
        deadline = time.monotonic() + 5
        while pool.stats().objs_allocated and time.monotonic() < deadline:
            time.sleep(0.01)
        pool.flush_deferred()
        assert pool.format_classes() == expected_text({})
        assert pool.stats().deferred_frees == 1


# ----------------------------------------------------------------------
# class_stats() and stats() as data


def test_class_stats_rows(scenario):
    pool, _ = scenario
    rows = pool.class_stats()
    assert all(isinstance(r, ClassStats) for r in rows)
    shapes = [(r.index, r.size, r.pages_per_zspage, r.objs_per_zspage) for r in rows]
    assert shapes == ref_canonical_classes(8)
    by = {r.index: r for r in rows}
    for index, (groups, allocated, used) in SCENARIO.items():
        r = by[index]
        assert r.inuse_ratio == tuple(ratios_of(groups))
        assert (r.obj_allocated, r.obj_used) == (allocated, used)
        assert r.empty_zspages == 0
    assert by[C96].pages_used == 15
    assert by[C96].freeable == 5
    assert by[C0].freeable == 1
    assert by[C0].pages_used == 2
    others = [r for r in rows if r.index not in SCENARIO]
    assert all(r.obj_allocated == r.obj_used == r.freeable == r.pages_used == 0 for r in others)
    assert all(r.inuse_ratio == (0,) * 11 for r in others)


def test_class_stats_to_dict(scenario):
    pool, _ = scenario
    r = next(r for r in pool.class_stats() if r.index == C96)
    d = r.to_dict()
    assert d == {
        "index": 96,
        "size": 1568,
        "inuse_ratio": {
            "10%": 1,
            "20%": 0,
            "30%": 0,
            "40%": 0,
            "50%": 1,
            "60%": 0,
            "70%": 0,
            "80%": 0,
            "90%": 0,
            "99%": 0,
            "100%": 1,
        },
        "obj_allocated": 39,
        "obj_used": 20,
        "pages_per_zspage": 5,
        "objs_per_zspage": 13,
        "freeable": 5,
        "empty_zspages": 0,
        "fullness": "ratio",
        "pages_used": 15,
    }
    assert list(d["inuse_ratio"]) == RATIO_COLUMNS


def test_pool_stats(scenario):
    pool, keep = scenario
    s = pool.stats()
    assert isinstance(s, PoolStats)
    requested = 128 * 20 + 128 * 40 + 20 * 1560 + 4000
    assert len(keep) == 277
    assert s.name == "stats"
    assert s.pages_allocated == 21
    assert s.pages_compacted == 0
    assert s.objs_allocated == 552
    assert s.objs_inuse == 277
    assert s.bytes_requested == requested
    assert s.freeable_pages == 6
    assert s.deferred_frees == 0
    assert s.chain_size == 8
    assert s.huge_class_size == 3625
    assert s.overhead == pytest.approx(21 * 4096 / requested)
    d = s.to_dict()
    assert d == {
        "name": "stats",
        "pages_allocated": 21,
        "pages_compacted": 0,
        "objs_allocated": 552,
        "objs_inuse": 277,
        "bytes_requested": requested,
        "freeable_pages": 6,
        "objs_compacted": 0,
        "compactions": 0,
        "deferred_frees": 0,
        "chain_size": 8,
        "huge_class_size": 3625,
        "overhead": pytest.approx(21 * 4096 / requested),
    }


def test_pool_stats_after_freeing_everything(scenario):
    pool, keep = scenario
    for h in keep:
        pool.free(h)
    s = pool.stats()
    assert (s.pages_allocated, s.objs_allocated, s.objs_inuse, s.bytes_requested, s.freeable_pages) == (
        0,
        0,
        0,
        0,
        0,
    )
    assert s.overhead == 0.0
    assert s.to_dict()["overhead"] == 0.0
    assert pool.format_classes() == expected_text({})
    assert pool.memory.stats()["nr_used"] == 0


def test_stats_are_consistent_under_concurrent_churn():
    """format_classes() from another thread never sees a row that breaks the formulas."""
    geo = {c[0]: c for c in ref_canonical_classes(8)}
    stop = threading.Event()
    errors: list[str] = []

    with Pool(name="concurrent") as pool:

        def churn():
            rng = random.Random(7)
            handles = []
            while not stop.is_set():
                if handles and rng.random() < 0.5:
                    pool.free(handles.pop(rng.randrange(len(handles))))
                else:
                    handles.append(pool.malloc(rng.choice([20, 40, 1560, 4000])))
            for h in handles:
                pool.free(h)

        t = threading.Thread(target=churn, daemon=True)
        t.start()
        try:
            for _ in range(30):
                for line in pool.format_classes().rstrip("\n").split("\n")[1:-2]:
                    f = [int(x) for x in line.split()]
                    opz, ppz = geo[f[0]][3], geo[f[0]][2]
                    if (
                        f[15] != f[13] // opz * ppz
                        or f[17] != max(0, (f[13] - f[14]) // opz * ppz)
                        or sum(f[2:13]) * opz != f[13]
                        or f[14] > f[13]
                    ):
                        errors.append(line)
        finally:
            stop.set()
            t.join(10)
        assert not t.is_alive()
        assert errors == []
        assert pool.format_classes() == expected_text({})


def test_the_engine_formats_classes_as_the_python_formatter_does(scenario):
    """One text: the engine's formatter (zsmalloc_core::pool::stats, also the nbdkit plugin's) and
    zsmalloc.pool.stats.format_classes agree on the same rows."""
    from zsmalloc import backend
    from zsmalloc.pool.stats import format_classes

    pool, _ = scenario
    if backend != "engine":
        pytest.skip("the model's pool has no engine formatter")
    assert pool.format_classes() == format_classes(pool.class_stats())
    assert pool._format_classes() == format_classes(pool.class_stats())
