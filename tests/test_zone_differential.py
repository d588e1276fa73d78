"""The zone's buddy allocator: the model (``zsmalloc.mm.zone``) against the engine (``mm/zone.rs``).

A Hypothesis state machine, and seeded random runs long enough to fill the
zone, drive ``zsmalloc.model.Zone`` and ``zsmalloc.engine.Zone`` with the
same calls: ``alloc_pages`` of every order and migratetype above every
watermark, ``free_pages`` of held blocks and of made-up, freed and misnamed
ones, ``isolate_free_page``, the compaction deferral, new watermarks, the
watermark boost (fallbacks that boost it, the flag taken and the boost
lowered as kswapd does, new boost factors), and the queries with arguments
in and out of range.  Every call must give the
same result, or raise the same error with the same message, on both.  After
every step the two zones' whole state must be equal: free pages, events,
watermarks, the boost, its flag and its factor, the deferral counters, every pageblock's migratetype, every
free list's pfns in order, every pfn's block, the extfrag indices and
``contig_page_info`` of every order, ``suitable_page_free`` and
``zone_watermark_ok``; and ``check()`` must pass on both.  The state
machine and the churns must have boosted the watermark, taken the flag and
lowered the boost (asserted), and the churn of a zone too small to boost
must not have boosted.

Then plain tests of the invariants on each implementation: the free lists
per order and migratetype, no overlap between free and allocated blocks,
coalescing back to max-order blocks, and bad calls refused with ZoneError,
leaving the zone as it was.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from zsmalloc import CorruptionError, ZoneError, ZsmallocError, engine, model
from zsmalloc.mm.zone import (
    MAX_PAGE_ORDER,
    MAX_ZONE_PAGES,
    MIGRATETYPES,
    NR_PAGE_ORDERS,
    PAGEBLOCK_NR_PAGES,
    PAGEBLOCK_ORDER,
    Watermarks,
)

ORDERS = range(NR_PAGE_ORDERS)
IMPLEMENTATIONS = {"model": model.Zone, "engine": engine.Zone}
#: sizes with a partial last pageblock, a lone max-order block, and several pageblocks
ZONE_SIZES = (PAGEBLOCK_NR_PAGES, 1000, 4 * PAGEBLOCK_NR_PAGES, 3 * PAGEBLOCK_NR_PAGES + 77)

AnyZone = Any  # either implementation: they share the API


def outcome(call: Any) -> tuple[str, Any]:
    """A call's result, or its error's type and message."""
    try:
        return "ok", call()
    except (ZsmallocError, ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)


def state(zone: AnyZone) -> dict[str, Any]:
    """Everything the API shows of a zone (the queries do not change it)."""
    return {
        "nr_pages": zone.nr_pages,
        "nr_free_pages": zone.nr_free_pages,
        "nr_pageblocks": zone.nr_pageblocks,
        "watermarks": zone.watermarks,
        "watermark_boost": zone.watermark_boost,
        "watermark_boosted": zone.watermark_boosted,
        "watermark_boost_factor": zone.watermark_boost_factor,
        "events": zone.events,
        "compact_defer_state": zone.compact_defer_state(),
        "pageblock_types": zone.pageblock_types(),
        "pageblock_counts": zone.pageblock_counts(),
        "nr_free": [[zone.nr_free(o, mt) for mt in MIGRATETYPES] for o in ORDERS],
        "free_lists": [[zone.free_list(o, mt) for mt in MIGRATETYPES] for o in ORDERS],
        "contig_page_info": [zone.contig_page_info(o) for o in ORDERS],
        "fragmentation_index": [zone.fragmentation_index(o) for o in ORDERS],
        "unusable_free_index": [zone.unusable_free_index(o) for o in ORDERS],
        "suitable_page_free": [[zone.suitable_page_free(o, mt) for mt in MIGRATETYPES] for o in ORDERS],
        "zone_watermark_ok": [zone.zone_watermark_ok(o, zone.watermarks.min) for o in ORDERS],
        "blocks": [(zone.buddy_order(p), zone.allocated_block(p)) for p in range(zone.nr_pages)],
    }


def assert_same(mdl: AnyZone, eng: AnyZone) -> None:
    a, b = state(mdl), state(eng)
    for key in a:
        if key == "blocks":
            diff = [p for p, (x, y) in enumerate(zip(a[key], b[key], strict=True)) if x != y]
            assert not diff, f"pfn {diff[0]}: model {a[key][diff[0]]}, engine {b[key][diff[0]]}"
        assert a[key] == b[key], f"{key}: model {a[key]!r}, engine {b[key]!r}"
    mdl.check()
    eng.check()


def free_heads(zone: AnyZone) -> list[int]:
    return sorted(p for o in ORDERS for mt in MIGRATETYPES for p in zone.free_list(o, mt))


# ----------------------------------------------------------------------
# the state machine


MARKS = st.one_of(st.sampled_from(["zero", "min", "low", "high"]), st.integers(0, 2200))
SMALL_ORDERS = st.sampled_from([0, 0, 0, 0, 1, 2, 3, 4, 5, 8, 9, 10])
#: what the state machine's runs reached, summed over its examples
REACHED: Counter[str] = Counter()


class ZoneDifferential(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.zones: tuple[AnyZone, ...] = ()
        self.held: list[tuple[int, int]] = []
        self.freed: list[tuple[int, int]] = []

    def teardown(self) -> None:
        if self.zones:
            REACHED["boosts"] += self.zones[0].events.watermark_boosts

    # the zone of four pageblocks, the one size here that boosts, twice as often
    @initialize(nr_pages=st.sampled_from((*ZONE_SIZES, 4 * PAGEBLOCK_NR_PAGES)))
    def new_zones(self, nr_pages: int) -> None:
        self.zones = (model.Zone(nr_pages), engine.Zone(nr_pages))

    def same(self, name: str, *args: Any) -> tuple[str, Any]:
        m, e = (outcome(lambda z=z: getattr(z, name)(*args)) for z in self.zones)
        assert m == e, f"{name}{args}: model {m}, engine {e}"
        return m

    def mark(self, mark: str | int) -> int:
        """A mark given as a number, or by the name of one of the zone's watermarks."""
        if isinstance(mark, int):
            return mark
        w = self.zones[0].watermarks
        return {"zero": 0, "min": w.min, "low": w.low, "high": w.high}[mark]

    def forget(self, pfn: int, order: int) -> None:
        self.held.remove((pfn, order))
        self.freed.append((pfn, order))

    @rule(order=SMALL_ORDERS, mt=st.sampled_from(MIGRATETYPES), mark=MARKS)
    def alloc(self, order: int, mt: str, mark: str | int) -> None:
        kind, pfn = self.same("alloc_pages", order, mt, self.mark(mark))
        if kind == "ok":
            self.held.append((pfn, order))

    @rule(
        n=st.integers(1, 400),
        order=st.sampled_from([0, 0, 1, 2]),
        mt=st.sampled_from(MIGRATETYPES),
        mark=st.sampled_from(["zero", "min"]),
    )
    def alloc_many(self, n: int, order: int, mt: str, mark: str) -> None:
        """Enough requests to fill the zone, so that fallbacks, claims and steals happen."""
        for _ in range(n):
            kind, pfn = self.same("alloc_pages", order, mt, self.mark(mark))
            if kind != "ok":
                break
            self.held.append((pfn, order))

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 10**6))
    def free(self, index: int) -> None:
        pfn, order = self.held[index % len(self.held)]
        assert self.same("free_pages", pfn, order) == ("ok", None)
        self.forget(pfn, order)

    @precondition(lambda self: self.held)
    @rule(start=st.integers(0, 10**6), step=st.integers(1, 4))
    def free_many(self, start: int, step: int) -> None:
        for pfn, order in self.held[start % len(self.held) :: step]:
            assert self.same("free_pages", pfn, order) == ("ok", None)
            self.forget(pfn, order)

    @rule(pfn=st.integers(-3, 2200), order=st.integers(-2, MAX_PAGE_ORDER + 2))
    def free_made_up(self, pfn: int, order: int) -> None:
        """Mostly refused (no block's head, the wrong order, out of range); when it does
        name a held block, both free it."""
        if self.same("free_pages", pfn, order)[0] == "ok":
            self.forget(pfn, order)

    @precondition(lambda self: self.freed)
    @rule(index=st.integers(0, 10**6), wrong_order=st.booleans())
    def free_again(self, index: int, wrong_order: bool) -> None:
        """A double free (or, once the pfn is allocated again, a free that may succeed)."""
        pfn, order = self.freed[index % len(self.freed)]
        order = (order + 1) % NR_PAGE_ORDERS if wrong_order else order
        if self.same("free_pages", pfn, order)[0] == "ok":
            self.forget(pfn, order)

    @rule(index=st.integers(0, 10**6))
    def isolate(self, index: int) -> None:
        heads = free_heads(self.zones[0])
        if not heads:
            return
        pfn = heads[index % len(heads)]
        kind, order = self.same("isolate_free_page", pfn)
        if kind == "ok" and order is not None:
            self.held.extend((p, 0) for p in range(pfn, pfn + (1 << order)))

    @rule(pfn=st.integers(-2, 2200))
    def isolate_any(self, pfn: int) -> None:
        kind, order = self.same("isolate_free_page", pfn)
        if kind == "ok" and order is not None:
            self.held.extend((p, 0) for p in range(pfn, pfn + (1 << order)))

    @rule(order=st.integers(-1, MAX_PAGE_ORDER + 1))
    def compaction_deferred(self, order: int) -> None:
        self.same("compaction_deferred", order)

    @rule(order=st.integers(-1, MAX_PAGE_ORDER + 1))
    def defer_compaction(self, order: int) -> None:
        self.same("defer_compaction", order)

    @rule(order=st.integers(-1, MAX_PAGE_ORDER + 1), alloc_success=st.booleans())
    def compaction_defer_reset(self, order: int, alloc_success: bool) -> None:
        self.same("compaction_defer_reset", order, alloc_success)

    @rule(marks=st.tuples(st.integers(-1, 700), st.integers(0, 700), st.integers(0, 700)))
    def set_watermarks(self, marks: tuple[int, int, int]) -> None:
        self.same("set_watermarks", Watermarks(*marks))

    @rule(
        kept=st.sampled_from(MIGRATETYPES),
        every=st.integers(2, 8),
        n=st.integers(1, 40),
        lower=st.sampled_from(["boost", "half", "none", "no kswapd"]),
    )
    def fill_then_fall_back(self, kept: str, every: int, n: int, lower: str) -> None:
        """Fill the zone with order-0 pages of one type, give back every few, then ask
        for another type: its fallbacks find only blocks smaller than a pageblock, and
        try to claim their pageblocks, boosting the watermark where the zone may; then,
        mostly, kswapd."""
        # a type whose requests try to claim the pageblocks of small blocks (not movable)
        asking = "reclaimable" if kept == "unmovable" else "unmovable"
        mine = []
        while True:
            kind, pfn = self.same("alloc_pages", 0, kept, 0)
            if kind != "ok":
                break
            mine.append((pfn, 0))
        self.held.extend(mine)
        for pfn, order in mine[::every]:
            assert self.same("free_pages", pfn, order) == ("ok", None)
            self.forget(pfn, order)
        for _ in range(n):
            kind, pfn = self.same("alloc_pages", 0, asking, 0)
            if kind == "ok":
                self.held.append((pfn, 0))
        if lower != "no kswapd":
            self.kswapd(lower)

    @rule(lower=st.sampled_from(["boost", "half", "none"]))
    def kswapd(self, lower: str) -> None:
        """kswapd as ``balance_pgdat`` treats a boost: the flag taken, the boost lowered."""
        if self.same("take_boosted_watermark")[1] is True:
            REACHED["flags_taken"] += 1
        boost = self.zones[0].watermark_boost
        pages = {"boost": boost, "half": boost // 2, "none": 0}[lower]
        if pages:
            REACHED["lowered"] += 1
        self.same("lower_watermark_boost", pages)

    @rule(pages=st.integers(-1, 1200))
    def lower_watermark_boost(self, pages: int) -> None:
        self.same("lower_watermark_boost", pages)

    @rule(factor=st.one_of(st.sampled_from([0, 1, 100, 15_000]), st.integers(-1, 40_000)))
    def set_watermark_boost_factor(self, factor: int) -> None:
        self.same("set_watermark_boost_factor", factor)

    @rule(
        order=st.integers(-2, MAX_PAGE_ORDER + 2),
        mt=st.sampled_from([*MIGRATETYPES, "highatomic", "Movable"]),
        mark=st.integers(-1, 2200),
        pfn=st.integers(-2, 2200),
    )
    def queries(self, order: int, mt: str, mark: int, pfn: int) -> None:
        """The queries, their arguments in range or not."""
        self.same("zone_watermark_ok", order, mark)
        self.same("suitable_page_free", order, mt)
        self.same("nr_free", order, mt)
        self.same("free_list", order, mt)
        self.same("contig_page_info", order)
        self.same("fragmentation_index", order)
        self.same("unusable_free_index", order)
        self.same("buddy_order", pfn)
        self.same("allocated_block", pfn)
        self.same("pageblock_migratetype", pfn)
        kind, got = self.same("alloc_pages", order, mt, mark)
        if kind == "ok":
            self.held.append((got, order))

    @invariant()
    def the_zones_agree(self) -> None:
        if self.zones:
            assert_same(*self.zones)


def test_the_zones_agree_step_by_step() -> None:
    REACHED.clear()
    run_state_machine_as_test(
        ZoneDifferential,
        settings=settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            # the same examples every run: the coverage asserted below is then no matter of luck
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    # the runs boosted the watermark, and took the flag and lowered the boost as kswapd does
    assert REACHED["boosts"] > 0 and REACHED["flags_taken"] > 0 and REACHED["lowered"] > 0, REACHED


# ----------------------------------------------------------------------
# seeded runs: long enough to fill the zone and churn it


@pytest.mark.parametrize(
    ("seed", "nr_pages"),
    [(1, 4 * PAGEBLOCK_NR_PAGES), (2, 3 * PAGEBLOCK_NR_PAGES + 77), (3, 8 * PAGEBLOCK_NR_PAGES)],
)
def test_a_long_churn_agrees_step_by_step(seed: int, nr_pages: int) -> None:
    rng = random.Random(seed)
    zones = (model.Zone(nr_pages), engine.Zone(nr_pages))
    held: list[tuple[int, int]] = []
    seen = {"isolated": 0, "refused": 0, "flags_taken": 0, "lowered": 0}

    def same(name: str, *args: Any) -> tuple[str, Any]:
        m, e = (outcome(lambda z=z: getattr(z, name)(*args)) for z in zones)
        assert m == e, f"{name}{args}: model {m}, engine {e}"
        return m

    for step in range(8000):
        r = rng.random()
        if r < 0.55 or not held:
            order = rng.choice([0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 9])
            mt = rng.choice(MIGRATETYPES)
            mark = rng.choice([0, zones[0].watermarks.min, zones[0].watermarks.low])
            kind, pfn = same("alloc_pages", order, mt, mark)
            if kind == "ok":
                held.append((pfn, order))
            else:
                seen["refused"] += 1
        elif r < 0.93:
            pfn, order = held.pop(rng.randrange(len(held)))
            assert same("free_pages", pfn, order) == ("ok", None)
        elif r < 0.95:
            # kswapd: the flag taken, the boost lowered by what it found, or by part of it
            if same("take_boosted_watermark")[1] is True:
                seen["flags_taken"] += 1
            boost = zones[0].watermark_boost
            if boost:
                seen["lowered"] += 1
                same("lower_watermark_boost", rng.choice([boost, rng.randrange(boost + 1)]))
        elif r < 0.97:
            heads = free_heads(zones[0])
            if heads:
                pfn = rng.choice(heads)
                kind, order = same("isolate_free_page", pfn)
                if order is not None:
                    seen["isolated"] += 1
                    held.extend((p, 0) for p in range(pfn, pfn + (1 << order)))
        else:
            order = rng.randrange(NR_PAGE_ORDERS)
            call = rng.choice(["compaction_deferred", "defer_compaction", "compaction_defer_reset"])
            same(call, order, *([rng.random() < 0.5] if call == "compaction_defer_reset" else []))
        if step % 250 == 0:
            assert_same(*zones)
    assert_same(*zones)
    events = zones[0].events
    # the run reached what it is for: fallbacks that claimed pageblocks, refusals, isolations,
    # and in a zone of four pageblocks or more, boosts that kswapd took and lowered
    assert events.alloc_fallback > 0 and events.blocks_claimed > 0, events
    assert seen["refused"] > 0 and seen["isolated"] > 0, seen
    if nr_pages >= 4 * PAGEBLOCK_NR_PAGES:
        assert events.watermark_boosts > 0 and seen["flags_taken"] > 0 and seen["lowered"] > 0, (events, seen)
    else:
        assert events.watermark_boosts == 0 and not seen["flags_taken"], (events, seen)
    for pfn, order in held:
        same("free_pages", pfn, order)
    assert_same(*zones)
    assert zones[0].nr_free_pages == nr_pages


# ----------------------------------------------------------------------
# the invariants, on each implementation


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def Impl(request: pytest.FixtureRequest) -> Any:
    return IMPLEMENTATIONS[request.param]


def churn(zone: AnyZone, rng: random.Random, steps: int) -> list[tuple[int, int]]:
    held: list[tuple[int, int]] = []
    for _ in range(steps):
        if held and rng.random() < 0.4:
            zone.free_pages(*held.pop(rng.randrange(len(held))))
            continue
        order = rng.choice([0, 0, 0, 1, 2, 3, 5, 9])
        try:
            held.append((zone.alloc_pages(order, rng.choice(MIGRATETYPES), 0), order))
        except ZoneError:
            pass
    return held


def test_a_new_zone_is_free_in_max_order_blocks(Impl: Any) -> None:
    z = Impl(4 * PAGEBLOCK_NR_PAGES)
    z.check()
    assert z.nr_free_pages == 4 * PAGEBLOCK_NR_PAGES
    assert z.free_list(MAX_PAGE_ORDER, "movable") == [0, 1024]
    assert z.pageblock_counts() == {"unmovable": 0, "movable": 4, "reclaimable": 0}
    assert z.fragmentation_index(9) == -1000 and z.unusable_free_index(MAX_PAGE_ORDER) == 0
    # an odd size ends in smaller blocks: 1000 = 512 + 256 + 128 + 64 + 32 + 8
    odd = Impl(1000)
    odd.check()
    assert [odd.nr_free(o, "movable") for o in ORDERS] == [0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 0]
    assert odd.nr_pageblocks == 2


def test_free_blocks_sit_on_the_list_of_their_order_and_pageblock(Impl: Any) -> None:
    z = Impl(4 * PAGEBLOCK_NR_PAGES)
    churn(z, random.Random(5), 1500)
    z.check()
    counted = 0
    for order in ORDERS:
        for mt in MIGRATETYPES:
            pfns = z.free_list(order, mt)
            assert len(pfns) == z.nr_free(order, mt)
            for pfn in pfns:
                assert z.buddy_order(pfn) == order
                assert pfn % (1 << order) == 0
                assert z.pageblock_migratetype(pfn) == mt
                counted += 1 << order
    assert counted == z.nr_free_pages
    assert len(set(z.pageblock_types())) > 1, "the churn claimed no pageblock"


def test_free_and_allocated_blocks_tile_the_zone(Impl: Any) -> None:
    z = Impl(3 * PAGEBLOCK_NR_PAGES + 77)
    held = churn(z, random.Random(6), 1200)
    owner = [None] * z.nr_pages
    blocks = [(p, o, "free") for o in ORDERS for mt in MIGRATETYPES for p in z.free_list(o, mt)]
    blocks += [(p, o, "held") for p, o in held]
    for pfn, order, what in blocks:
        for q in range(pfn, pfn + (1 << order)):
            assert owner[q] is None, f"pfn {q} is in two blocks"
            owner[q] = what
        if what == "held":
            assert z.allocated_block(pfn)[0] == order and z.buddy_order(pfn) is None
    assert None not in owner
    assert owner.count("free") == z.nr_free_pages


@pytest.mark.parametrize("nr_pages", [1024, 4 * PAGEBLOCK_NR_PAGES, 1000])
def test_freeing_everything_coalesces_back(Impl: Any, nr_pages: int) -> None:
    z = Impl(nr_pages)
    rng = random.Random(nr_pages)
    held = churn(z, rng, 800)
    # then fill the zone to the last page, from every migratetype
    while True:
        try:
            held.append((z.alloc_pages(0, rng.choice(MIGRATETYPES), 0), 0))
        except ZoneError:
            break
    assert z.nr_free_pages == 0
    rng.shuffle(held)
    for pfn, order in held:
        z.free_pages(pfn, order)
    z.check()
    assert z.nr_free_pages == nr_pages
    fresh = Impl(nr_pages)
    # every block has merged as far as the zone allows: the same sizes as a new zone
    assert [sum(z.nr_free(o, mt) for mt in MIGRATETYPES) for o in ORDERS] == [
        fresh.nr_free(o, "movable") for o in ORDERS
    ]
    if nr_pages == 1024:
        lists = [mt for mt in MIGRATETYPES if z.nr_free(MAX_PAGE_ORDER, mt)]
        assert len(lists) == 1 and z.free_list(MAX_PAGE_ORDER, lists[0]) == [0]


def test_a_freed_block_likely_to_merge_goes_to_the_tail(Impl: Any) -> None:
    """``buddy_merge_likely``: when the buddy one order up is free, the block goes to the
    list's tail, so that it is taken last; not for orders 9 and 10, which merge no higher."""
    z = Impl(1 << MAX_PAGE_ORDER)
    pfns = [z.alloc_pages(0, "movable", 0) for _ in range(6)]
    assert pfns == [0, 1, 2, 3, 4, 5]
    z.free_pages(2, 0)
    z.free_pages(3, 0)  # merges with 2: an order-1 block at 2, its order-2 buddy (4) held
    assert z.free_list(1, "movable") == [2, 6]
    z.free_pages(5, 0)  # buddy 4 held, but 6 (order 1, the buddy of 4-5) free: the tail
    z.free_pages(1, 0)  # buddy 0 held, 2 (order 1) free: the tail, after 5
    assert z.free_list(0, "movable") == [5, 1]
    # order 9: the order-10 buddy is free, yet the block goes to the head
    z = Impl(4 << MAX_PAGE_ORDER)
    assert [z.alloc_pages(9, "movable", 0) for _ in range(2)] == [0, 512]
    c = z.alloc_pages(MAX_PAGE_ORDER, "movable", 0)
    assert (c, z.alloc_pages(9, "movable", 0)) == (1024, 2048)
    z.free_pages(c, MAX_PAGE_ORDER)
    assert z.free_list(9, "movable") == [2560]
    z.free_pages(512, 9)
    assert z.buddy_order(1024) == MAX_PAGE_ORDER
    assert z.free_list(9, "movable") == [512, 2560]
    z.check()


def test_bad_calls_are_refused_and_change_nothing(Impl: Any) -> None:
    z = Impl(4 * PAGEBLOCK_NR_PAGES)
    p = z.alloc_pages(2, "movable", 0)
    q = z.alloc_pages(0, "unmovable", 0)
    z.free_pages(q, 0)
    before = state(z)
    bad = [
        (lambda: z.free_pages(p + 1, 0), f"pfn {p + 1} is not the head of an allocated block"),
        (lambda: z.free_pages(p, 1), f"pfn {p} heads a block of order 2, not 1"),
        (lambda: z.free_pages(q, 0), f"pfn {q} is not the head of an allocated block"),  # a double free
        (lambda: z.free_pages(p, 11), "order 11 is outside 0..10"),
        (lambda: z.free_pages(p, -1), "order -1 is outside 0..10"),
        (lambda: z.free_pages(5000, 0), "pfn 5000 is outside the zone (0..2047)"),
        (lambda: z.free_pages(-1, 0), "pfn -1 is outside the zone (0..2047)"),
        (lambda: z.alloc_pages(11, "movable", 0), "order 11 is outside 0..10"),
        (lambda: z.alloc_pages(0, "highatomic", 0), "not 'highatomic'"),
        (lambda: z.alloc_pages(0, "movable", -1), "mark must be >= 0, not -1"),
        (lambda: z.isolate_free_page(2048), "pfn 2048 is outside the zone"),
        (lambda: z.nr_free(-1, "movable"), "order -1 is outside 0..10"),
        (lambda: z.set_watermarks(Watermarks(-1, 0, 0)), "min must be >= 0, not -1"),
        (lambda: z.lower_watermark_boost(-1), "pages must be >= 0, not -1"),
        (lambda: z.set_watermark_boost_factor(-5), "factor must be >= 0, not -5"),
    ]
    for call, message in bad:
        with pytest.raises(ZoneError, match=re.escape(message)):
            call()
        z.check()
        assert state(z) == before
    for size in (0, -3, MAX_ZONE_PAGES + 1, 1 << 32):  # 64 GiB at most: its descriptors are written at once
        with pytest.raises(
            ZoneError, match=re.escape(f"a zone needs 1..={MAX_ZONE_PAGES} pages, not {size}")
        ):
            Impl(size)
    # an allocation the watermark refuses counts as a failure, and changes nothing else
    with pytest.raises(ZoneError, match="no free block of order 0 for Movable above the watermark"):
        z.alloc_pages(0, "movable", z.nr_pages)
    assert z.events.alloc_fail == before["events"].alloc_fail + 1
    assert {k: v for k, v in state(z).items() if k != "events"} == {
        k: v for k, v in before.items() if k != "events"
    }
    z.check()


def test_isolating_a_free_block_makes_it_movable_order_zero_pages(Impl: Any) -> None:
    z = Impl(4 * PAGEBLOCK_NR_PAGES)
    # an unmovable request claims the order-10 block at pfn 0; freed, it stays unmovable
    p = z.alloc_pages(PAGEBLOCK_ORDER, "unmovable", 0)
    z.free_pages(p, PAGEBLOCK_ORDER)
    assert z.buddy_order(0) == MAX_PAGE_ORDER and z.pageblock_types()[:2] == ["unmovable"] * 2
    assert z.isolate_free_page(1) is None  # no free block's head
    assert z.isolate_free_page(0) == MAX_PAGE_ORDER
    assert z.pageblock_types() == ["movable"] * 4
    assert all(z.allocated_block(q) == (0, "movable") for q in range(1 << MAX_PAGE_ORDER))
    z.check()
    for q in range(1 << MAX_PAGE_ORDER):
        z.free_pages(q, 0)
    z.check()
    # the last free merged up to max order: to the list's head
    assert z.free_list(MAX_PAGE_ORDER, "movable") == [0, 1024]
    # the mark is the min watermark plus the block, as for an allocation of it
    # (__isolate_free_page), whatever the low and high ones say
    free = z.nr_free_pages
    z.set_watermarks(Watermarks(free - (1 << MAX_PAGE_ORDER), free, free))
    assert z.isolate_free_page(0) is None
    z.set_watermarks(Watermarks(free - (1 << MAX_PAGE_ORDER) - 1, free, free))
    assert z.isolate_free_page(0) == MAX_PAGE_ORDER
    z.check()


def order8_filled(Impl: Any, pageblocks: int, freed: int) -> AnyZone:
    """A zone filled with movable order-8 blocks, one of them given back in each of the
    first ``freed`` pageblocks: every free block is smaller than a pageblock."""
    z = Impl(pageblocks * PAGEBLOCK_NR_PAGES)
    held = [z.alloc_pages(8, "movable", 0) for _ in range(2 * pageblocks)]
    assert z.nr_free_pages == 0
    for b in range(freed):
        z.free_pages(held[2 * b], 8)
    return z


def test_a_claim_of_a_block_smaller_than_a_pageblock_boosts_the_watermark(Impl: Any) -> None:
    # 1 GiB: _watermark[HIGH] 1548, so the boost may reach mult_frac(1548, 15000, 10000) = 2322
    z = order8_filled(Impl, 512, 6)
    raw = z.watermarks
    assert raw == Watermarks(1024, 1286, 1548)
    assert (z.watermark_boost, z.watermark_boosted, z.watermark_boost_factor) == (0, False, 15_000)
    boosts = []
    for _ in range(6):
        # each falls back to a movable pageblock's free order-8 block and claims the pageblock
        z.alloc_pages(8, "unmovable", 0)
        boosts.append(z.watermark_boost)
    assert boosts == [512, 1024, 1536, 2048, 2322, 2322]
    assert (z.events.watermark_boosts, z.events.blocks_claimed) == (6, 6)
    assert z.watermarks == Watermarks(1024 + 2322, 1286 + 2322, 1548 + 2322)
    assert z.watermark_boosted
    assert z.take_boosted_watermark() and not z.take_boosted_watermark()
    z.lower_watermark_boost(1000)
    assert z.watermark_boost == 1322
    z.lower_watermark_boost(5000)
    assert z.watermark_boost == 0 and z.watermarks == raw
    z.check()


def test_boosting_needs_four_pageblocks_a_factor_and_a_sub_pageblock_claim(Impl: Any) -> None:
    small = order8_filled(Impl, 3, 2)
    small.alloc_pages(8, "unmovable", 0)
    assert small.events.blocks_claimed == 1
    assert (small.watermark_boost, small.watermark_boosted) == (0, False)
    off = order8_filled(Impl, 4, 2)
    off.set_watermark_boost_factor(0)
    off.alloc_pages(8, "unmovable", 0)
    assert (off.watermark_boost, off.events.watermark_boosts) == (0, 0)
    # 134 * 1 // 10000 is 0: no boost; 134 * 100 // 10000 is 1, raised to a pageblock
    tiny = order8_filled(Impl, 4, 2)
    tiny.set_watermark_boost_factor(1)
    tiny.alloc_pages(8, "unmovable", 0)
    assert tiny.watermark_boost == 0
    tiny.set_watermark_boost_factor(100)
    tiny.alloc_pages(8, "unmovable", 0)
    assert tiny.watermark_boost == PAGEBLOCK_NR_PAGES
    # a whole free pageblock is claimed without a boost
    fresh = Impl(4 * PAGEBLOCK_NR_PAGES)
    fresh.alloc_pages(0, "unmovable", 0)
    assert fresh.events.blocks_claimed == 2 and fresh.watermark_boost == 0
    # a claim that fails (one free page, nothing alike) boosts all the same, then steals
    full = Impl(4 * PAGEBLOCK_NR_PAGES)
    pages = [full.alloc_pages(0, "movable", 0) for _ in range(4 * PAGEBLOCK_NR_PAGES)]
    full.free_pages(pages[100], 0)
    assert full.alloc_pages(0, "unmovable", 0) == pages[100]
    assert full.events == type(full.events)(1, 0, 0, 1)
    assert full.watermark_boosted and full.watermark_boost == PAGEBLOCK_NR_PAGES


def test_the_boost_raises_the_marks_but_not_isolations(Impl: Any) -> None:
    z = Impl(4 * PAGEBLOCK_NR_PAGES)
    held = [z.alloc_pages(8, "movable", 0) for _ in range(8)]
    z.free_pages(held[0], 8)
    z.alloc_pages(8, "unmovable", 0)
    w = z.watermarks
    assert z.watermark_boost == PAGEBLOCK_NR_PAGES and w == Watermarks(602, 624, 646)
    z.free_pages(held[4], 8)
    z.free_pages(held[6], 8)
    assert z.nr_free_pages == 512
    with pytest.raises(ZoneError, match="above the watermark"):
        z.alloc_pages(0, "movable", w.min)
    # __isolate_free_page reads _watermark[WMARK_MIN], without the boost: 512 > 90 + 256
    assert z.isolate_free_page(z.free_list(8, "movable")[0]) == 8
    # new marks start the boost from 0; the flag stays until taken
    z.set_watermarks(Watermarks(1, 2, 3))
    assert z.watermark_boost == 0 and z.watermarks == Watermarks(1, 2, 3)
    assert z.take_boosted_watermark()
    z.check()


def test_one_gib_watermarks_match_the_kernel() -> None:
    # min_free_kbytes = sqrt(16 * 1 GiB in KiB) = 4096 KiB = 1024 pages; the scale
    # factor's 0.1% of 262144 pages (262) beats min / 4 (256)
    assert Watermarks.for_zone(262_144) == Watermarks(min=1024, low=1286, high=1548)
    assert engine.Zone(262_144).watermarks == model.Zone(262_144).watermarks == Watermarks(1024, 1286, 1548)


@pytest.mark.parametrize("nr_pages", [1, 2, 3, 511, 513, 1023, 1025, 1537, 4095])
def test_new_zones_of_any_size_agree(nr_pages: int) -> None:
    assert_same(model.Zone(nr_pages), engine.Zone(nr_pages))


def test_the_watermarks_of_every_size_agree() -> None:
    """``for_zone``'s integer square root against the engine's float one, and its clamps."""
    sizes = [*range(1, 3000, 7), 65_536, 1 << 20, 3 << 20]
    assert [model.Zone(n).watermarks for n in sizes] == [engine.Zone(n).watermarks for n in sizes]


def test_the_models_check_finds_damage() -> None:
    """``check()`` is no formality: each kind of damage to the model's structures is named."""

    def off_its_list(z: Any) -> None:
        z.free_area[MAX_PAGE_ORDER]["movable"].remove(1024)

    def lost_block(z: Any) -> None:
        z.allocated.pop(z.alloc_pages(0, "movable", 0))

    def overlapping(z: Any) -> None:
        z.allocated[1] = (0, "movable")
        z.alloc_pages(3, "movable", 0)

    def retyped(z: Any) -> None:
        z.pageblock_mt[2] = "unmovable"

    def unmerged(z: Any) -> None:
        z.free_area[MAX_PAGE_ORDER]["movable"].remove(1024)
        z.free_area[PAGEBLOCK_ORDER]["movable"] += [1024, 1536]
        z.free_blocks.update({1024: PAGEBLOCK_ORDER, 1536: PAGEBLOCK_ORDER})

    def past_the_end(z: Any) -> None:
        z.allocated[5000] = (0, "movable")

    cases = {
        "nr_free_pages 2048 but 1024 free on the lists": off_its_list,
        "pfn 0 belongs to no block": lost_block,
        "the order-3 block at pfn 0 overlaps another": overlapping,
        "free pfn 1024 is on the Movable list of a Unmovable pageblock": retyped,
        "free buddies at pfns 1024 and 1536 of order 9 are not merged": unmerged,
        "a block's head lies past the zone": past_the_end,
    }
    for message, damage in cases.items():
        z = model.Zone(4 * PAGEBLOCK_NR_PAGES)
        z.check()
        damage(z)
        with pytest.raises(CorruptionError, match=message):
            z.check()
