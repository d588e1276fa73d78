"""The pool's public API: round trips, map, handles, life cycle, page accounting, placement.

Expected values are derived here independently of the pool: class indexes from
the kernel's formula, the object layout from KERNEL.md section 2, page counts
from the canonical class table (``zsmalloc.size_classes``) and the arithmetic of
a fill with no frees.
"""

from __future__ import annotations

import functools
import pickle
import random
import threading

import pytest

import zsmalloc
from zsmalloc import (
    InvalidHandleError,
    Memory,
    Pool,
    PoolClosedError,
    ZsmallocError,
    size_classes,
)
from zsmalloc.debug import snapshot
from zsmalloc.pool.constants import OBJ_ALLOCATED_TAG, OBJ_INDEX_BITS

pytestmark = pytest.mark.usefixtures("each_backend")

PAGE = 4096
HEADER = 8
SLOT_SHIFT = 32  # handle = slot << 32 | generation << 1
RULES = (zsmalloc.RULE_MIN_WASTE, zsmalloc.RULE_USED_PERCENTAGE)


# ----------------------------------------------------------------------
# independent helpers


def kernel_class_index(size_with_header: int) -> int:
    """The kernel's get_size_class_index, written out again (KERNEL.md section 1)."""
    if size_with_header <= 32:
        return 0
    return min(-(-(size_with_header - 32) // 16), 254)


@functools.cache
def canonical_spec(request: int, chain: int = 8, rule: str = zsmalloc.RULE_MIN_WASTE):
    """The canonical class serving a request: merged classes point at the next larger one kept."""
    raw = kernel_class_index(request + HEADER)
    return min((s for s in _specs(chain, rule) if s.index >= raw), key=lambda s: s.index)


@functools.cache
def _specs(chain: int, rule: str):
    return tuple(size_classes(chain, rule))


def slot_of(handle: int) -> int:
    return handle >> SLOT_SHIFT


def location(pool: Pool, handle: int) -> int:
    pfn, idx = pool.locate(handle)
    return (pfn << OBJ_INDEX_BITS) | idx


def zid_of(pool: Pool, handle: int) -> int:
    pfn, _ = pool.locate(handle)
    return snapshot(pool)["pages"][pfn]["private"]


def class_of(pool: Pool, handle: int) -> dict:
    """The snapshot's entry of the class the handle's zspage belongs to."""
    snap = snapshot(pool)
    index = snap["zspages"][zid_of(pool, handle)]["class"]
    return next(c for c in snap["classes"] if c["index"] == index)


def obj_index(pool: Pool, handle: int) -> int:
    return location(pool, handle) & ((1 << OBJ_INDEX_BITS) - 1)


def rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def spans_pages(idx: int, size: int) -> bool:
    start = idx * size
    return start // PAGE != (start + size - 1) // PAGE


# ----------------------------------------------------------------------
# round trips

ROUND_TRIP_SIZES = [1, 24, 25, 32, 100, 1560, 3624, 3625, 3626, 4095, 4096]


@pytest.mark.parametrize("size", ROUND_TRIP_SIZES)
def test_round_trip_write_read_read_into_map_free(size):
    rng = random.Random(size)
    with Pool(name="rt") as pool:
        # a neighbour on each side, to catch writes that spill out of the object
        before = pool.malloc(size)
        h = pool.malloc(size)
        after = pool.malloc(size)
        nb_data = {before: rand_bytes(rng, size), after: rand_bytes(rng, size)}
        for nh, d in nb_data.items():
            pool.write(nh, d)
        data = rand_bytes(rng, size)
        pool.write(h, data)

        assert pool.handle_size(h) == size
        assert pool.read(h) == data
        assert pool.read(h, size) == data
        assert pool.read(h, size, 0) == data
        buf = bytearray(size)
        assert pool.read_into(h, buf) == size
        assert bytes(buf) == data
        with pool.map(h) as view:
            assert isinstance(view, memoryview)
            assert view.readonly
            assert bytes(view) == data
        # a partial write in the middle, and the tail
        mid = size // 2
        patch = rand_bytes(rng, size - mid)
        pool.write(h, patch, mid)
        expect = data[:mid] + patch
        assert pool.read(h) == expect
        assert pool.read(h, size - mid, mid) == patch
        for nh, d in nb_data.items():
            assert pool.read(nh) == d
        pool.check()
        pool.free(h)
        for nh, d in nb_data.items():
            assert pool.read(nh) == d
        pool.check()


@pytest.mark.parametrize(
    ("size", "class_size"),
    [(1, 32), (24, 32), (25, 48), (32, 48), (40, 48), (41, 64), (3624, 3632)],
)
def test_small_requests_land_in_the_class_their_size_plus_header_needs(size, class_size):
    """The 8-byte header is added before the class lookup (zs_malloc)."""
    with Pool(chain_size=8) as pool:
        h = pool.malloc(size)
        cls = class_of(pool, h)
        assert 32 + 16 * kernel_class_index(size + HEADER) == class_size
        assert cls["size"] == canonical_spec(size).size
        # merged classes serve a larger canonical class, never a smaller one
        assert cls["size"] >= class_size
        assert not cls["huge"]


@pytest.mark.parametrize(
    ("chain", "largest_non_huge"),
    [(4, 3264), (8, 3632), (16, 3840)],  # Documentation/mm/zsmalloc.rst, via KERNEL.md
)
@pytest.mark.parametrize("rule", RULES)
def test_huge_threshold(chain, largest_non_huge, rule):
    hcs = largest_non_huge - 7
    with Pool(chain_size=chain, class_rule=rule) as pool:
        assert pool.huge_class_size == hcs
        below = pool.malloc(hcs - 1)
        at = pool.malloc(hcs)
        cls_below = class_of(pool, below)
        cls_at = class_of(pool, at)
        assert not cls_below["huge"] and cls_below["pages_per_zspage"] > 1
        assert cls_below["size"] == hcs - 1 + HEADER
        assert cls_at["huge"] and cls_at["pages_per_zspage"] == 1 and cls_at["objs_per_zspage"] == 1
        assert pool.total_pages == cls_below["pages_per_zspage"] + 1


def test_huge_object_has_no_header_and_fills_a_page():
    rng = random.Random(7)
    with Pool(chain_size=8) as pool:
        h = pool.malloc(4096)
        data = rand_bytes(rng, 4096)
        pool.write(h, data)
        pfn = location(pool, h) >> OBJ_INDEX_BITS
        # the data starts at byte 0 of its own frame; the handle lives in the descriptor
        assert bytes(pool.memory.frame(pfn)) == data
        assert snapshot(pool)["pages"][pfn]["index"] == h | OBJ_ALLOCATED_TAG
        assert pool.total_pages == 1
        h2 = pool.malloc(3625)
        assert location(pool, h2) >> OBJ_INDEX_BITS != pfn
        assert pool.total_pages == 2


def test_non_huge_header_holds_tagged_handle_and_data_follows():
    rng = random.Random(3)
    with Pool(chain_size=8) as pool:
        hs = [pool.malloc(100) for _ in range(5)]
        cls_size = canonical_spec(100).size
        for k, h in enumerate(hs):
            data = rand_bytes(rng, 100)
            pool.write(h, data)
            pfn = location(pool, h) >> OBJ_INDEX_BITS
            assert obj_index(pool, h) == k  # a new zspage hands out 0, 1, 2, ...
            off = k * cls_size
            frame = pool.memory.frame(pfn)
            assert int.from_bytes(frame[off : off + 8], "little") == h | OBJ_ALLOCATED_TAG
            assert bytes(frame[off + 8 : off + 8 + 100]) == data


# ----------------------------------------------------------------------
# objects that straddle a page boundary

SPAN_REQUEST = 1560  # + 8 = 1568: 5 pages, 13 objects with chain >= 5 (KERNEL.md worked example)


def _span_pool():
    pool = Pool(name="span", chain_size=8)
    spec = canonical_spec(SPAN_REQUEST)
    assert (spec.size, spec.pages_per_zspage, spec.objs_per_zspage) == (1568, 5, 13)
    hs = [pool.malloc(SPAN_REQUEST) for _ in range(13)]
    return pool, hs


def test_spanning_objects_layout_and_every_offset():
    rng = random.Random(11)
    pool, hs = _span_pool()
    with pool:
        datas = {h: rand_bytes(rng, SPAN_REQUEST) for h in hs}
        for h, d in datas.items():
            pool.write(h, d)
        pages = pool.zspage_pfns(hs[0])
        assert len(pages) == 5
        spanning = [k for k in range(13) if spans_pages(k, 1568)]
        assert spanning == [2, 5, 7, 10]  # 3136..4704, 7840..9408, 10976..12544, 15680..17248
        for k in spanning:
            h = hs[k]
            assert obj_index(pool, h) == k
            data = datas[h]
            start = k * 1568 + HEADER  # chain byte of data[0]
            first_page = start // PAGE
            split = (first_page + 1) * PAGE - start  # data bytes in the first page
            assert 0 < split < SPAN_REQUEST
            # the bytes really are in two different frames, where the kernel puts them
            f1 = pool.memory.frame(pages[first_page])
            f2 = pool.memory.frame(pages[first_page + 1])
            assert bytes(f1[PAGE - split :]) == data[:split]
            assert bytes(f2[: SPAN_REQUEST - split]) == data[split:]
            # the location names the page the object starts in
            assert location(pool, h) >> OBJ_INDEX_BITS == pages[(k * 1568) // PAGE]
            # byte-exact reads at every offset
            for off in range(SPAN_REQUEST):
                assert pool.read(h, 1, off) == data[off : off + 1]
            for off in range(0, SPAN_REQUEST, 7):
                n = min(33, SPAN_REQUEST - off)
                assert pool.read(h, n, off) == data[off : off + n]
                buf = bytearray(n)
                pool.read_into(h, buf, off)
                assert bytes(buf) == data[off : off + n]
            for off in (0, split - 1, split, split + 1):
                assert pool.read(h, offset=off) == data[off:]
                assert pool.read(h, off) == data[:off]
        pool.check()


def test_spanning_partial_writes_with_offset():
    rng = random.Random(12)
    pool, hs = _span_pool()
    with pool:
        expect = {}
        for h in hs:
            d = rand_bytes(rng, SPAN_REQUEST)
            pool.write(h, d)
            expect[h] = bytearray(d)
        h = hs[2]
        split = PAGE - (2 * 1568 + HEADER)  # 952 bytes of obj 2's data lie in page 0
        for off, n in [
            (split - 1, 2),
            (split - 100, 200),
            (split, 1),
            (split - 1, 1),
            (0, split + 1),
            (split - 5, SPAN_REQUEST - split + 5),
            (split + 3, 17),
            (SPAN_REQUEST - 1, 1),
        ]:
            patch = rand_bytes(rng, n)
            pool.write(h, patch, off)
            expect[h][off : off + n] = patch
            assert pool.read(h) == bytes(expect[h])
        for hh, d in expect.items():
            assert pool.read(hh) == bytes(d)
        pool.check()


# ----------------------------------------------------------------------
# map


@pytest.mark.engine_only(reason="the model maps a copy (see zsmalloc.model.Pool.map)")
def test_map_inside_one_page_is_zero_copy():
    with Pool() as pool:
        h = pool.malloc(200)
        pool.write(h, b"a" * 200)
        with pool.map(h) as view:
            assert bytes(view) == b"a" * 200
            with pytest.raises(TypeError):
                view[0] = 1  # read-only
            pool.write(h, b"b" * 200)
            assert bytes(view) == b"b" * 200  # same memory: the write shows through
        # valid only inside the with
        with pytest.raises(ValueError):
            bytes(view)
        assert pool.read(h) == b"b" * 200


def test_map_of_a_spanning_object_is_a_copy():
    pool, hs = _span_pool()
    with pool:
        h = hs[2]
        assert spans_pages(obj_index(pool, h), 1568)
        pool.write(h, b"x" * SPAN_REQUEST)
        with pool.map(h) as view:
            assert view.readonly
            assert bytes(view) == b"x" * SPAN_REQUEST
            pool.write(h, b"y" * SPAN_REQUEST)
            assert bytes(view) == b"x" * SPAN_REQUEST  # a snapshot, not the live bytes
        assert pool.read(h) == b"y" * SPAN_REQUEST


def test_map_partial_ranges():
    rng = random.Random(5)
    pool, hs = _span_pool()
    with pool:
        for h in hs:
            data = rand_bytes(rng, SPAN_REQUEST)
            pool.write(h, data)
            for off, n in [(0, 1), (900, 100), (SPAN_REQUEST - 1, 1), (10, SPAN_REQUEST - 10), (5, 0)]:
                with pool.map(h, n, off) as view:
                    assert bytes(view) == data[off : off + n]
            with pool.map(h, offset=1000) as view:
                assert bytes(view) == data[1000:]


def test_map_leaves_no_zspage_lock_behind():
    with Pool() as pool:
        h = pool.malloc(100)
        zid = zid_of(pool, h)

        def lock() -> int:
            return snapshot(pool)["zspages"][zid]["lock"]

        with pool.map(h) as view:
            assert lock() == 1
            held = pickle.PickleBuffer(view)  # an export kept past the with must not break the unlock
        held.release()
        view.release()  # the last export of the mapping gone (the engine keeps the pin until then)
        assert lock() == 0
        with pytest.raises(RuntimeError), pool.map(h):
            raise RuntimeError("caller failure inside the with")
        assert lock() == 0
        pool.check()


def test_nested_map_of_two_objects_in_one_zspage_does_not_deadlock():
    with Pool() as pool:
        a = pool.malloc(100)
        b = pool.malloc(100)
        pool.write(a, b"A" * 100)
        pool.write(b, b"B" * 100)
        assert zid_of(pool, a) == zid_of(pool, b)
        result = []

        def nested():
            with pool.map(a) as va, pool.map(b) as vb, pool.map(a) as va2:
                result.append((bytes(va), bytes(vb), bytes(va2)))
                pool.write(b, b"C" * 100)  # writes, reads, malloc and free still work
                result.append(pool.read(a))
                c = pool.malloc(100)
                pool.free(c)

        t = threading.Thread(target=nested, daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), "nested map deadlocked"
        assert result == [(b"A" * 100, b"B" * 100, b"A" * 100), b"A" * 100]
        assert pool.read(b) == b"C" * 100
        pool.check()


# ----------------------------------------------------------------------
# handles


def test_handles_are_positive_even_nonzero_unique_and_stable():
    rng = random.Random(1)
    with Pool() as pool:
        keep = {}
        for _ in range(50):
            size = rng.randint(1, 4096)
            h = pool.malloc(size)
            d = rand_bytes(rng, size)
            pool.write(h, d)
            keep[h] = d
        # churn: grow the handle table past its first 1024 slots, free it all again
        churn = [pool.malloc(rng.randint(1, 4096)) for _ in range(2500)]
        for h in churn + list(keep):
            assert isinstance(h, int)
            assert h > 0 and h % 2 == 0
        assert len(set(churn) | set(keep)) == len(churn) + len(keep)
        rng.shuffle(churn)
        for h in churn:
            pool.free(h)
        for h, d in keep.items():
            assert pool.read(h) == d  # the same handle value still names the same bytes
            assert pool.handle_size(h) == len(d)
        assert len(pool) == len(keep)
        pool.check()


def test_freed_and_stale_handles_are_refused():
    with Pool() as pool:
        h = pool.malloc(64)
        pool.write(h, b"1" * 64)
        pool.free(h)
        for op in (
            lambda: pool.read(h),
            lambda: pool.free(h),
            lambda: pool.handle_size(h),
            lambda: pool.write(h, b"x"),
            lambda: pool.read_into(h, bytearray(1)),
        ):
            with pytest.raises(InvalidHandleError):
                op()
        # the slot is reused by the next malloc, with a new generation
        h2 = pool.malloc(64)
        assert slot_of(h2) == slot_of(h)
        assert h2 != h
        pool.write(h2, b"2" * 64)
        with pytest.raises(InvalidHandleError) as exc:
            pool.read(h)
        assert isinstance(exc.value, KeyError)
        with pytest.raises(KeyError):
            pool.free(h)
        with pytest.raises(InvalidHandleError), pool.map(h):
            pass
        assert pool.read(h2) == b"2" * 64  # the stale handle did not alias the new object
        assert len(pool) == 1
        pool.check()


def test_len_and_handle_size():
    rng = random.Random(2)
    with Pool() as pool:
        assert len(pool) == 0
        sizes = {}
        for i in range(1, 200):
            size = rng.choice([1, 24, 25, 3625, 4096, rng.randint(1, 4096)])
            h = pool.malloc(size)
            sizes[h] = size
            assert len(pool) == i
        for h, s in sizes.items():
            assert pool.handle_size(h) == s
        for i, h in enumerate(list(sizes)):
            pool.free(h)
            assert len(pool) == len(sizes) - i - 1
        assert pool.total_pages == 0


# ----------------------------------------------------------------------
# life cycle


def test_close_releases_memory_and_later_calls_raise():
    pool = Pool(name="closing")
    h = pool.malloc(100)
    pool.write(h, b"z" * 100)
    pool.close()
    assert pool.memory.nr_used == 0
    assert len(pool) == 0
    calls = {
        "read": lambda: pool.read(h),
        "write": lambda: pool.write(h, b"a"),
        "read_into": lambda: pool.read_into(h, bytearray(1)),
        "free": lambda: pool.free(h),
        "handle_size": lambda: pool.handle_size(h),
        "map": lambda: pool.map(h).__enter__(),
        "check": pool.check,
        "flush_deferred": pool.flush_deferred,
    }
    for name, call in calls.items():
        with pytest.raises(ZsmallocError):
            call()
            pytest.fail(f"{name} after close did not raise")
    pool.close()  # idempotent


def test_malloc_after_close_raises_pool_closed():
    pool = Pool(name="closing")
    pool.malloc(100)
    pool.close()
    with pytest.raises(PoolClosedError):
        pool.malloc(100)
    assert pool.total_pages == 0


def test_context_manager_closes():
    with Pool() as pool:
        h = pool.malloc(10)
    assert pool.memory.nr_used == 0
    with pytest.raises(ZsmallocError):
        pool.read(h)
    with pytest.raises(PoolClosedError):
        pool.check()


def test_context_manager_closes_on_error():
    with pytest.raises(KeyError), Pool() as pool:
        pool.malloc(10)
        raise KeyError("boom")
    assert pool.memory.nr_used == 0
    with pytest.raises(PoolClosedError):
        pool.malloc(10)


# ----------------------------------------------------------------------
# page accounting


def _fill_sizes(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    marks = [1, 24, 25, 40, 41, 1560, 3257, 3624, 3625, 3626, 3832, 3833, 4095, 4096]
    return [rng.choice(marks) if rng.random() < 0.3 else rng.randint(1, 4096) for _ in range(n)]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("chain", [4, 8, 16])
def test_fill_uses_exactly_the_kernels_page_count(chain, rule):
    sizes = _fill_sizes(chain * 31 + len(rule), 1500)
    per_class: dict[int, int] = {}
    specs = {}
    for s in sizes:
        spec = canonical_spec(s, chain, rule)
        specs[spec.index] = spec
        per_class[spec.index] = per_class.get(spec.index, 0) + 1
    expected_pages = sum(
        -(-count // specs[i].objs_per_zspage) * specs[i].pages_per_zspage for i, count in per_class.items()
    )
    with Pool(chain_size=chain, class_rule=rule) as pool:
        for s in sizes:
            pool.malloc(s)
        assert pool.total_pages == expected_pages
        assert pool.memory.nr_used == expected_pages
        rows = {r.index: r for r in pool.class_stats()}
        for i, count in per_class.items():
            n = specs[i].objs_per_zspage
            assert rows[i].obj_used == count
            assert rows[i].obj_allocated == -(-count // n) * n
        assert sum(r.obj_used for r in rows.values()) == len(sizes)
        pool.check()


def test_known_geometry_anchor():
    """The worked example of KERNEL.md: 1568-byte objects, 5 pages, 13 objects per zspage."""
    with Pool(chain_size=8) as pool:
        hs = [pool.malloc(SPAN_REQUEST) for _ in range(14)]
        assert pool.total_pages == 10  # 13 fill one zspage, the 14th opens a second
        assert len({zid_of(pool, h) for h in hs}) == 2
    with Pool(chain_size=4) as pool:  # 1..4 pages waste 960, 352, 1312, 704: 2 pages, 5 objects
        hs = [pool.malloc(SPAN_REQUEST) for _ in range(6)]
        assert pool.total_pages == 4


def test_zspage_freed_as_soon_as_its_last_object_goes():
    with Pool(chain_size=8) as pool:
        other = pool.malloc(24)  # a one-page zspage of another class stays
        hs = [pool.malloc(SPAN_REQUEST) for _ in range(13)]
        assert pool.total_pages == 6
        assert pool.memory.nr_used == pool.total_pages
        for h in hs[:-1]:
            pool.free(h)
            assert pool.total_pages == 6
            assert pool.memory.nr_used == 6
        pool.free(hs[-1])
        assert pool.total_pages == 1
        assert pool.memory.nr_used == 1
        assert all(r.empty_zspages == 0 for r in pool.class_stats())
        pool.free(other)
        assert pool.total_pages == 0
        assert pool.memory.nr_used == 0
        pool.check()


def test_page_accounting_follows_memory_through_churn():
    rng = random.Random(9)
    with Pool(chain_size=4) as pool:
        live = []
        for step in range(3000):
            if live and rng.random() < 0.45:
                pool.free(live.pop(rng.randrange(len(live))))
            else:
                live.append(pool.malloc(rng.randint(1, 4096)))
            if step % 250 == 0:
                assert pool.memory.nr_used == pool.total_pages
        assert pool.memory.nr_used == pool.total_pages
        pool.check()
        for h in live:
            pool.free(h)
        assert pool.total_pages == 0 == pool.memory.nr_used


# ----------------------------------------------------------------------
# placement: LIFO free lists, fullest zspage first


def test_free_list_is_lifo():
    with Pool(chain_size=8) as pool:
        hs = [pool.malloc(24) for _ in range(10)]  # class 32: one page, 128 objects
        assert len({zid_of(pool, h) for h in hs}) == 1
        locs = [location(pool, h) for h in hs]
        pool.free(hs[3])
        h = pool.malloc(24)
        assert location(pool, h) == locs[3]
        pool.free(hs[5])
        pool.free(hs[7])
        pool.free(hs[1])
        got = [location(pool, pool.malloc(20)) for _ in range(4)]
        # last freed first; then the untouched tail of the new zspage (object 10)
        assert got[:3] == [locs[1], locs[7], locs[5]]
        assert got[3] & ((1 << OBJ_INDEX_BITS) - 1) == 10
        pool.check()


def _two_zspages_of_class_32(pool):
    hs = [pool.malloc(24) for _ in range(256)]  # exactly two full one-page zspages
    z1, z2 = zid_of(pool, hs[0]), zid_of(pool, hs[255])
    assert z1 != z2
    first = [h for h in hs if zid_of(pool, h) == z1]
    second = [h for h in hs if zid_of(pool, h) == z2]
    assert len(first) == len(second) == 128
    return z1, first, z2, second


@pytest.mark.parametrize(("free_first", "free_second", "winner"), [(100, 5, 2), (5, 100, 1)])
def test_malloc_goes_to_the_fullest_non_full_zspage(free_first, free_second, winner):
    with Pool(chain_size=8) as pool:
        z1, first, z2, second = _two_zspages_of_class_32(pool)
        for h in first[:free_first]:
            pool.free(h)
        for h in second[:free_second]:
            pool.free(h)
        h = pool.malloc(24)
        assert zid_of(pool, h) == (z1 if winner == 1 else z2)
        # and it took the last slot freed there
        last_freed = (first[:free_first] if winner == 1 else second[:free_second])[-1]
        assert obj_index(pool, h) == (first + second).index(last_freed) % 128
        assert pool.total_pages == 2
        pool.check()


@pytest.mark.parametrize("order", ["first_then_second", "second_then_first"])
def test_within_a_group_the_zspage_that_entered_last_is_used(order):
    with Pool(chain_size=8) as pool:
        z1, first, z2, second = _two_zspages_of_class_32(pool)
        groups = [first[:60], second[:60]]  # both drop to 68/128: the 50% group
        if order == "second_then_first":
            groups.reverse()
        for g in groups:
            for h in g:
                pool.free(h)
        h = pool.malloc(24)
        entered_last = z2 if order == "first_then_second" else z1
        assert zid_of(pool, h) == entered_last
        pool.check()


def test_a_full_class_gets_a_new_zspage_not_another_classes():
    with Pool(chain_size=8) as pool:
        a = [pool.malloc(24) for _ in range(10)]  # class 32
        b = pool.malloc(100)  # another class: its own zspage
        assert zid_of(pool, b) not in {zid_of(pool, h) for h in a}
        assert pool.total_pages == 1 + canonical_spec(100).pages_per_zspage


# ----------------------------------------------------------------------
# several pools on one Memory


def test_pools_sharing_one_memory():
    rng = random.Random(4)
    mem = Memory()
    try:
        pools = [Pool(name=f"p{i}", chain_size=c, memory=mem) for i, c in enumerate((4, 8, 16))]
        data = {}
        for _ in range(600):
            p = rng.choice(pools)
            size = rng.randint(1, 4096)
            h = p.malloc(size)
            d = rand_bytes(rng, size)
            p.write(h, d)
            data[(p.name, h)] = (p, d)
        by_name = {p.name: p for p in pools}
        # free half, from all pools, so frames move between them
        for key in rng.sample(sorted(data), len(data) // 2):
            data[key][0].free(key[1])
            del data[key]
        for _ in range(200):
            p = rng.choice(pools)
            size = rng.randint(1, 4096)
            h = p.malloc(size)
            d = rand_bytes(rng, size)
            p.write(h, d)
            data[(p.name, h)] = (p, d)
        assert mem.nr_used == sum(p.total_pages for p in pools)
        for (name, h), (_p, d) in data.items():
            assert by_name[name].read(h) == d
        for p in pools:
            p.check()
            assert len(p) == sum(1 for (name, _h) in data if name == p.name)
        pools[0].close()
        mem.free_page(mem.alloc_page())  # the pool did not own the memory: it still works
        assert mem.nr_used == sum(p.total_pages for p in pools[1:])
        for (name, h), (p, d) in data.items():
            if name != "p0":
                assert p.read(h) == d
        for p in pools[1:]:
            p.check()
            p.close()
        assert mem.nr_used == 0
    finally:
        mem.close()


def test_a_kernel_sets_the_pools_shape():
    with Pool(kernel="6.1") as old, Pool(kernel="6.12") as new, Pool(kernel="6.12", chain_size=8) as same:
        assert (old.chain_size, old.class_rule, old.fullness) == (4, "used-percentage", "legacy")
        assert (new.chain_size, new.class_rule, new.fullness) == (8, "min-waste", "ratio")
        assert same.chain_size == 8
        assert old.huge_class_size < new.huge_class_size
        h = old.malloc(3000)
        old.write(h, b"x" * 3000)
        assert old.read(h) == b"x" * 3000
        old.check()
    for kwargs, message in (
        ({"kernel": "6.12", "chain_size": 4}, "chain size 8, not 4"),
        ({"kernel": "6.1", "fullness": "ratio"}, "fullness grouping legacy"),
        ({"kernel": "6.1", "class_rule": "min-waste"}, "class rule used-percentage"),
        ({"kernel": "5.4"}, "unknown kernel"),
    ):
        with pytest.raises(ValueError, match=message):
            Pool(**kwargs)
