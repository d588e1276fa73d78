"""Every error of the contract, and that a failed call leaves the pool exactly as it was.

After each failure: ``pool.check()`` passes, every other live object reads back
byte for byte, and a snapshot of the pool's state (counters, handle table,
zspages, fullness lists, page descriptors and frame contents) is unchanged.
"""

from __future__ import annotations

import random

import pytest

from zsmalloc import (
    InvalidHandleError,
    InvalidSizeError,
    Pool,
    PoolFullError,
    ZsmallocError,
    debug,
)

pytestmark = pytest.mark.usefixtures("each_backend")

PAGE = 4096
SLOT_SHIFT = 32  # handle = slot << 32 | generation << 1
SIZES = [1, 24, 25, 100, 1560, 1560, 1560, 3624, 4096, 3625, 700, 2000, 1560]


def slot_of(handle: int) -> int:
    return handle >> SLOT_SHIFT


def populate(pool: Pool, seed: int = 0, sizes=SIZES) -> dict[int, bytes]:
    rng = random.Random(seed)
    live = {}
    for size in sizes:
        h = pool.malloc(size)
        d = rng.randbytes(size)
        pool.write(h, d)
        live[h] = d
    # free a few so that free lists and the handle cache are not trivial
    for h in list(live)[1::4]:
        pool.free(h)
        del live[h]
    return live


def verify(pool: Pool, live: dict[int, bytes]) -> None:
    pool.check()
    assert len(pool) == len(live)
    for h, d in live.items():
        assert pool.handle_size(h) == len(d)
        assert pool.read(h) == d


def class_of(pool: Pool, handle: int) -> dict:
    """The snapshot's entry of the class the handle's zspage belongs to."""
    snap = debug.snapshot(pool)
    pfn, _ = pool.locate(handle)
    index = snap["zspages"][snap["pages"][pfn]["private"]]["class"]
    return next(c for c in snap["classes"] if c["index"] == index)


def free_handle_slots(pool: Pool) -> list[int]:
    """The handle cache, in stack order."""
    return debug.snapshot(pool)["free_handle_slots"]


def _free_slot_generations(pool: Pool) -> dict:
    """What a freed handle slot keeps beyond the snapshot format: the generation its next handle gets.

    The snapshot lists live slots only.  The model keeps each free slot's
    last handle (with the freed bit) in its table, and the generation that
    fresh slots start from; a failed call must not move either.  The engine
    does not show them, so there the rest of the state has to do.
    """
    h_val = getattr(pool, "_h_val", None)
    if h_val is None:
        return {}
    return {"model.handle_table": bytes(h_val), "model.gen_base": pool._gen_base}


def state(pool: Pool) -> dict:
    """Everything a failed call must not change.

    The pool's whole snapshot (counters, handle table, zspages with every slot
    header, fullness lists, the zspage id cache, page descriptors, the
    deferred free), one entry per part so that a difference is named, with
    every live object's bytes; besides it the bytes of every frame in use and
    the debugfs rows.
    """
    mem = pool.memory
    pfns = mem.used_pfns()
    snap = debug.snapshot(pool, data=True)
    return {
        "total_pages": pool.total_pages,
        "nr_used": mem.nr_used,
        "len": len(pool),
        **{f"snapshot.{key}": value for key, value in snap.items()},
        "class_stats": pool.class_stats(),
        "pfns": tuple(pfns),
        "frames": tuple(bytes(mem.frame(p)) for p in pfns),
        "nr_deferred_frees": pool.nr_deferred_frees,
        **_free_slot_generations(pool),
    }


def assert_unchanged(pool: Pool, before, live) -> None:
    after = state(pool)
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"a failed call changed {changed}"
    verify(pool, live)


@pytest.fixture
def pool_and_live():
    with Pool(name="err", chain_size=8) as pool:
        live = populate(pool)
        verify(pool, live)
        yield pool, live


# ----------------------------------------------------------------------
# sizes


@pytest.mark.parametrize("size", [0, -1, 4097, 10**6, -(2**70)])
def test_invalid_size(pool_and_live, size):
    pool, live = pool_and_live
    before = state(pool)
    with pytest.raises(InvalidSizeError) as exc:
        pool.malloc(size)
    assert isinstance(exc.value, ValueError)
    assert isinstance(exc.value, ZsmallocError)
    assert_unchanged(pool, before, live)


@pytest.mark.parametrize("size", [1.0, 100.5, "100", None, b"1"])
def test_size_of_wrong_type(pool_and_live, size):
    pool, live = pool_and_live
    before = state(pool)
    with pytest.raises(TypeError):
        pool.malloc(size)
    assert_unchanged(pool, before, live)


def test_size_limits_are_inclusive(pool_and_live):
    pool, live = pool_and_live
    for size in (1, 4096):
        h = pool.malloc(size)
        pool.write(h, b"\x5a" * size)
        live[h] = b"\x5a" * size
    verify(pool, live)


# ----------------------------------------------------------------------
# ranges


def _pick(live, size):
    return next(h for h, d in live.items() if len(d) == size)


RANGE_ERRORS = {
    "write_too_long": lambda p, h, n: p.write(h, b"x" * (n + 1)),
    "write_past_end_at_offset": lambda p, h, n: p.write(h, b"xy", n - 1),
    "write_at_offset_beyond": lambda p, h, n: p.write(h, b"x", n + 5),
    "write_empty_at_offset_beyond": lambda p, h, n: p.write(h, b"", n + 1),
    "write_negative_offset": lambda p, h, n: p.write(h, b"x", -1),
    "read_past_end": lambda p, h, n: p.read(h, n + 1),
    "read_past_end_at_offset": lambda p, h, n: p.read(h, 2, n - 1),
    "read_offset_beyond": lambda p, h, n: p.read(h, offset=n + 1),
    "read_negative_offset": lambda p, h, n: p.read(h, 1, -1),
    "read_negative_length": lambda p, h, n: p.read(h, -1),
    "read_into_too_big": lambda p, h, n: p.read_into(h, bytearray(n + 1)),
    "read_into_past_end_at_offset": lambda p, h, n: p.read_into(h, bytearray(2), n - 1),
    "read_into_negative_offset": lambda p, h, n: p.read_into(h, bytearray(1), -1),
    "map_past_end": lambda p, h, n: p.map(h, n + 1).__enter__(),
    "map_negative_offset": lambda p, h, n: p.map(h, 1, -1).__enter__(),
    "map_offset_beyond": lambda p, h, n: p.map(h, offset=n + 1).__enter__(),
}


@pytest.mark.parametrize("size", [25, 1560, 4096])
@pytest.mark.parametrize("name", sorted(RANGE_ERRORS))
def test_range_errors(pool_and_live, name, size):
    pool, live = pool_and_live
    h = _pick(live, size)
    before = state(pool)
    with pytest.raises(ValueError) as exc:
        RANGE_ERRORS[name](pool, h, size)
    assert not isinstance(exc.value, KeyError)
    assert_unchanged(pool, before, live)


# the limits of a range are inclusive: an empty access at the very end of an object is no error,
# also for an object whose slot ends where its page ends (the last one of a page, or a huge one)

EMPTY_TAIL_ACCESSES = {
    "read": lambda p, h, n: p.read(h, 0, n) == b"",
    "read_to_the_end": lambda p, h, n: p.read(h, offset=n) == b"",
    "read_into": lambda p, h, n: p.read_into(h, bytearray(0), n) == 0,
    "write": lambda p, h, n: p.write(h, b"", n) is None,
    "map": lambda p, h, n: _map_bytes(p, h, 0, n) == b"",
}


def _map_bytes(pool: Pool, handle: int, length: int, offset: int) -> bytes:
    with pool.map(handle, length, offset) as view:
        return bytes(view)


def _page_final(pool: Pool, live: dict[int, bytes], size: int) -> int:
    """A live object of ``size`` bytes whose slot ends at the end of a page; malloc more until one is."""
    candidates = [h for h, d in live.items() if len(d) == size]
    slot_size = None
    while True:
        for h in candidates:
            slot_size = slot_size or class_of(pool, h)["size"]
            if (pool.locate(h)[1] + 1) * slot_size % PAGE == 0:
                return h
        h = pool.malloc(size)
        live[h] = bytes([len(live) % 251]) * size
        pool.write(h, live[h])
        candidates = [h]


@pytest.mark.parametrize("size", [24, 4096])  # the last 32-byte slot of a page; a huge object
@pytest.mark.parametrize("name", sorted(EMPTY_TAIL_ACCESSES))
def test_empty_access_at_the_end_of_an_object(pool_and_live, name, size):
    pool, live = pool_and_live
    h = _page_final(pool, live, size)
    verify(pool, live)
    before = state(pool)
    assert EMPTY_TAIL_ACCESSES[name](pool, h, size)
    assert_unchanged(pool, before, live)


# ----------------------------------------------------------------------
# handles


def _unknown_zero(pool, live):
    return 0


def _never_issued(pool, live):
    return (debug.snapshot(pool)["nr_handle_slots"] + 10) << SLOT_SHIFT | 1 << 1


def _free_slot_generation_zero(pool, live):
    # a slot of the table that was never handed out, with generation 0
    return (debug.snapshot(pool)["nr_handle_slots"] - 1) << SLOT_SHIFT


def _one(pool, live):
    # slot 0, never handed out
    return 1


def _freed_odd(pool, live):
    # a freed handle with bit 0 set: the freed slot's table entry must not match it
    h = next(iter(live))
    pool.free(h)
    del live[h]
    return h | 1


def _odd(pool, live):
    return next(iter(live)) | 1


def _negative(pool, live):
    return -next(iter(live))


def _huge_int(pool, live):
    return next(iter(live)) + (1 << 80)


def _next_generation(pool, live):
    return next(iter(live)) + (1 << 1)


def _freed(pool, live):
    h = next(iter(live))
    pool.free(h)
    del live[h]
    return h


def _stale(pool, live):
    h = next(iter(live))
    size = len(live[h])
    pool.free(h)
    del live[h]
    h2 = pool.malloc(size)
    assert slot_of(h2) == slot_of(h) and h2 != h
    pool.write(h2, b"\x33" * size)
    live[h2] = b"\x33" * size
    return h


BAD_HANDLES = {
    f.__name__.lstrip("_"): f
    for f in (
        _unknown_zero,
        _never_issued,
        _free_slot_generation_zero,
        _one,
        _freed_odd,
        _odd,
        _negative,
        _huge_int,
        _next_generation,
        _freed,
        _stale,
    )
}

HANDLE_OPS = {
    "free": lambda p, h: p.free(h),
    "read": lambda p, h: p.read(h),
    "read_partial": lambda p, h: p.read(h, 1, 0),
    "write": lambda p, h: p.write(h, b"q"),
    "read_into": lambda p, h: p.read_into(h, bytearray(1)),
    "map": lambda p, h: p.map(h).__enter__(),
    "handle_size": lambda p, h: p.handle_size(h),
}


@pytest.mark.parametrize("op", sorted(HANDLE_OPS))
@pytest.mark.parametrize("kind", sorted(BAD_HANDLES))
def test_bad_handles(pool_and_live, kind, op):
    pool, live = pool_and_live
    bad = BAD_HANDLES[kind](pool, live)
    assert bad not in live
    before = state(pool)
    with pytest.raises(InvalidHandleError) as exc:
        HANDLE_OPS[op](pool, bad)
    assert isinstance(exc.value, KeyError)
    assert isinstance(exc.value, ZsmallocError)
    assert str(exc.value)  # a readable message, not a repr of the handle only
    assert_unchanged(pool, before, live)


def test_double_free(pool_and_live):
    pool, live = pool_and_live
    h = next(iter(live))
    pool.free(h)
    del live[h]
    before = state(pool)
    for _ in range(3):
        with pytest.raises(InvalidHandleError):
            pool.free(h)
    assert_unchanged(pool, before, live)
    # the slot is still usable once, by one new object
    h2 = pool.malloc(10)
    assert slot_of(h2) == slot_of(h)
    pool.write(h2, b"0123456789")
    live[h2] = b"0123456789"
    verify(pool, live)
    free_slots = free_handle_slots(pool)
    assert len(set(free_slots)) == len(free_slots)


# ----------------------------------------------------------------------
# running out of pages: max_pages


def test_max_pages_limit_and_recovery():
    with Pool(name="cap", chain_size=8, max_pages=10) as pool:
        live = {}
        for i in range(10):
            h = pool.malloc(4096)  # huge: one page each
            pool.write(h, bytes([i]) * 4096)
            live[h] = bytes([i]) * 4096
        assert pool.total_pages == 10
        before = state(pool)
        for size in (4096, 24, 1560):  # every size needs a new zspage now
            with pytest.raises(PoolFullError) as exc:
                pool.malloc(size)
            assert isinstance(exc.value, MemoryError)
            assert isinstance(exc.value, ZsmallocError)
            assert_unchanged(pool, before, live)
        victim = next(iter(live))
        pool.free(victim)
        del live[victim]
        assert pool.total_pages == 9
        h = pool.malloc(24)  # one page for a class-32 zspage
        pool.write(h, b"k" * 24)
        live[h] = b"k" * 24
        assert pool.total_pages == 10
        # the new zspage has room: mallocs of its class still work at the limit
        for _ in range(20):
            h = pool.malloc(20)
            pool.write(h, b"m" * 20)
            live[h] = b"m" * 20
        assert pool.total_pages == 10
        verify(pool, live)


def test_max_pages_counts_whole_zspages():
    with Pool(name="cap", chain_size=8, max_pages=10) as pool:
        a = pool.malloc(3624)  # class 3632: 8 pages
        assert pool.total_pages == 8
        live = {a: b""}
        pool.write(a, b"a" * 3624)
        live[a] = b"a" * 3624
        # room left in that zspage
        b = pool.malloc(3600)
        pool.write(b, b"b" * 3600)
        live[b] = b"b" * 3600
        before = state(pool)
        with pytest.raises(PoolFullError):
            pool.malloc(1560)  # 5 more pages: 13 > 10, though 2 remain
        assert_unchanged(pool, before, live)
        c = pool.malloc(4096)
        d = pool.malloc(4000)
        assert pool.total_pages == 10
        for h in (c, d):
            pool.write(h, b"c" * pool.handle_size(h))
            live[h] = b"c" * pool.handle_size(h)
        verify(pool, live)


def test_max_pages_zero():
    with Pool(max_pages=0) as pool:
        for size in (1, 4096):
            with pytest.raises(PoolFullError):
                pool.malloc(size)
        assert pool.total_pages == 0
        assert len(pool) == 0
        pool.check()


def test_max_pages_can_change_on_a_live_pool():
    with Pool(name="cap", chain_size=8) as pool:
        live = {}
        for i in range(3):
            h = pool.malloc(4096)
            pool.write(h, bytes([i]) * 4096)
            live[h] = bytes([i]) * 4096
        pool.max_pages = 3  # what is in use: the next page is refused
        assert pool.max_pages == 3
        before = state(pool)
        with pytest.raises(PoolFullError):
            pool.malloc(4096)
        assert_unchanged(pool, before, live)
        pool.max_pages = None  # no limit again
        h = pool.malloc(4096)
        pool.write(h, b"z" * 4096)
        live[h] = b"z" * 4096
        assert pool.total_pages == 4
        verify(pool, live)


def test_negative_max_pages_refused():
    with pytest.raises(ValueError):
        Pool(max_pages=-1)


# ----------------------------------------------------------------------
# the page allocator failing


@pytest.mark.parametrize("size", [24, 1560, 3624, 4096])
def test_page_allocator_failure_leaks_nothing(pool_and_live, size):
    pool, live = pool_and_live
    # fill every zspage of the class, so that the next malloc needs a new one
    rng = random.Random(size)
    while True:
        pages = pool.total_pages
        h = pool.malloc(size)
        d = rng.randbytes(size)
        pool.write(h, d)
        live[h] = d
        if pool.total_pages != pages:
            break
    cls = class_of(pool, h)
    for _ in range(cls["objs_per_zspage"] - 1):
        h = pool.malloc(size)
        d = rng.randbytes(size)
        pool.write(h, d)
        live[h] = d
    verify(pool, live)
    before = state(pool)
    free_slots = free_handle_slots(pool)
    pool.memory.inject_failures(next_n=1)
    with pytest.raises(PoolFullError) as exc:
        pool.malloc(size)
    assert isinstance(exc.value, MemoryError)
    assert free_handle_slots(pool) == free_slots
    assert pool.memory.nr_used == before["nr_used"]
    assert_unchanged(pool, before, live)
    # the failure was used up: the next malloc succeeds
    h = pool.malloc(size)
    pool.write(h, b"\x01" * size)
    live[h] = b"\x01" * size
    assert pool.total_pages == before["total_pages"] + cls["pages_per_zspage"]
    verify(pool, live)


def test_armed_failure_does_not_hit_mallocs_that_need_no_page(pool_and_live):
    pool, live = pool_and_live
    h = pool.malloc(24)  # class 32 has room now
    pool.write(h, b"p" * 24)
    live[h] = b"p" * 24
    pool.memory.inject_failures(next_n=1)
    pages = pool.total_pages
    for _ in range(5):
        h = pool.malloc(24)
        pool.write(h, b"r" * 24)
        live[h] = b"r" * 24
    assert pool.total_pages == pages
    with pytest.raises(PoolFullError):
        pool.malloc(4096)  # the first one to need a page gets the failure
    h = pool.malloc(4096)
    pool.write(h, b"s" * 4096)
    live[h] = b"s" * 4096
    verify(pool, live)


@pytest.mark.parametrize("chain", [4, 16])
def test_random_page_allocator_failures(chain):
    rng = random.Random(chain)
    with Pool(name="flaky", chain_size=chain) as pool:
        live = populate(pool, seed=chain)
        pool.memory.inject_failures(probability=0.35, seed=chain)
        failures = successes = 0
        for step in range(400):
            if live and rng.random() < 0.3:
                h = rng.choice(list(live))
                pool.free(h)
                del live[h]
                continue
            size = rng.choice([rng.randint(1, 4096), 1560, 3624, 4096, 24])
            cheap = (step % 10) != 0  # a full snapshot every tenth malloc, counters always
            before = state(pool) if not cheap else None
            counters = (pool.total_pages, pool.memory.nr_used, len(pool), free_handle_slots(pool))
            try:
                h = pool.malloc(size)
            except PoolFullError:
                failures += 1
                assert (pool.total_pages, pool.memory.nr_used, len(pool), free_handle_slots(pool)) == counters
                if before is not None:
                    assert_unchanged(pool, before, live)
                continue
            successes += 1
            d = rng.randbytes(size)
            pool.write(h, d)
            live[h] = d
        assert failures > 20 and successes > 20  # both paths were exercised
        pool.memory.clear_failures()
        verify(pool, live)
        assert pool.memory.nr_used == pool.total_pages
        for h in list(live):
            pool.free(h)
        assert pool.total_pages == 0 == pool.memory.nr_used
        pool.check()
