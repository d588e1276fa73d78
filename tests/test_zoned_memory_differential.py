"""The zoned Memory and ``compact_zone``: the model (``zsmalloc.mm.memory``,
``zsmalloc.mm.compaction``) against the engine (``mm/memory.rs``,
``mm/compaction.rs``).

Seeded runs build the same situation on ``zsmalloc.model.Memory.new_zoned``
and ``zsmalloc.engine.Memory.new_zoned``, step by step: a zsmalloc pool of
the same family on each (the model's pool on the model's Memory, the
engine's on the engine's) with objects written and freed, pages of another
owner of movable pages (a tag in each, moved through the movable-ops
protocol), order-0 pages and small blocks of every migratetype held and
freed to fragment the zone, and some of the other owner's pages pinned (no
longer movable).  Every call must give the same result on both.  Then
``compact_zone`` runs for several orders, migratetypes and modes, with churn
in between, and after each the two must agree on every field of the result
(status, the migration's moves in order, the scanners' counts), on the
zone's whole state (``tests/test_zone_differential.py``'s comparison, of a
``zone_snapshot``), on the Memory's counters and vmstat, and on the pools'
snapshots with every object's bytes and every descriptor; each pool reads
its objects back intact, the other owner's tags sit in the pages it now
holds, and ``check()`` passes on both pools and zones.

Then plain tests on each implementation: with no pinned page, compaction
makes a free block of the order asked, and the allocation that failed then
succeeds; and a zoned Memory refuses what only the arena does (and the
arena what only a zone does).

The compaction deferral is the caller's (``try_to_compact_pages``,
``kcompactd_do_work``; the engine's fragsim), not ``compact_zone``'s: a
seeded run makes the fragsim's calls around it on both, through the
Memory (``compaction_deferred``, async direct compaction and the retry at
the min watermark, ``defer_compaction`` or ``compaction_defer_reset``, and
kcompactd's sync-light turn), and compares each decision and, with the
zone's state, the deferral's counters.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from test_zone_differential import assert_same as assert_same_zone
from test_zone_differential import outcome
from zsmalloc import OutOfFramesError, engine, model
from zsmalloc.debug import snapshot
from zsmalloc.mm.compaction import EXTFRAG_THRESHOLD, CompactStatus
from zsmalloc.mm.migrate import MIGRATEPAGE_SUCCESS, MigrateMode
from zsmalloc.mm.zone import (
    MAX_PAGE_ORDER,
    MIGRATETYPES,
    MOVABLE,
    PAGEBLOCK_NR_PAGES,
    PAGEBLOCK_ORDER,
    UNMOVABLE,
)

IMPLEMENTATIONS = (model, engine)
TAG = 7  # both pools' handle tag: the same handles
MODES = (MigrateMode.ASYNC, MigrateMode.SYNC_LIGHT, MigrateMode.SYNC)


class Tagged:
    """An owner of movable pages (not zsmalloc) that knows each page by the tag written in it."""

    def __init__(self, mem: Any) -> None:
        self.mem = mem
        self.pages: dict[int, int] = {}  # pfn -> tag
        self.id = mem.register_movable_ops(self)

    def take(self, pfn: int, tag: int) -> None:
        self.mem.frame(pfn)[:8] = tag.to_bytes(8, "little")
        self.mem.set_pages_movable([pfn], self.id)
        self.pages[pfn] = tag

    def tag_in(self, pfn: int) -> int:
        return int.from_bytes(bytes(self.mem.frame(pfn)[:8]), "little")

    def isolate(self, pfn: int, mode: MigrateMode) -> bool:
        return True

    def migrate(self, dst: int, src: int, mode: MigrateMode) -> int:
        mem = self.mem
        mem.frame(dst)[:] = bytes(mem.frame(src))
        self.pages[dst] = self.pages.pop(src)
        mem.set_page_movable(dst, self.id)
        mem.get_page(dst)
        mem.reset_page(src)
        mem.put_page(src)
        return MIGRATEPAGE_SUCCESS

    def putback(self, pfn: int) -> None:
        pass


class Side:
    """One implementation's Memory, pool and other owner, and what they hold."""

    def __init__(self, impl: Any, nr_pages: int) -> None:
        self.mem = impl.Memory.new_zoned(nr_pages)
        self.pool = impl.Pool(name="zoned", memory=self.mem, background_work=False, handle_tag=TAG)
        self.owner = Tagged(self.mem)
        self.objects: dict[int, bytes] = {}  # handle -> data
        self.held: list[int] = []  # pages and block heads of no owner (pinned)

    def write(self, data: bytes) -> int:
        h = self.pool.malloc(len(data))
        self.pool.write(h, data)
        self.objects[h] = data
        return h

    def free(self, h: int) -> None:
        self.pool.free(h)
        del self.objects[h]

    def take_page(self, tag: int, reserve: bool = False) -> None:
        """A page for the other owner: above the min watermark, or (``reserve``) any."""
        pfn = self.mem.alloc_block(0, MOVABLE, 0) if reserve else self.mem.alloc_pages_mt(1, MOVABLE)[0]
        self.owner.take(pfn, tag)

    def owner_frees(self, pfn: int) -> None:
        del self.owner.pages[pfn]
        self.mem.reset_page(pfn)
        self.mem.put_page(pfn)

    def pin(self, pfn: int) -> None:
        """The other owner's page stops being movable: it stays in use, held."""
        del self.owner.pages[pfn]
        self.mem.reset_page(pfn)
        self.held.append(pfn)

    def hold_page(self, mt: str) -> None:
        self.held.append(self.mem.alloc_pages_mt(1, mt)[0])

    def hold_block(self, order: int, mt: str) -> None:
        self.held.append(self.mem.alloc_block(order, mt, 0))

    def put_held(self, i: int) -> None:
        self.mem.put_page(self.held.pop(i))

    def compact_zone(self, order: int, mt: str, mode: MigrateMode) -> Any:
        return self.mem.compact_zone(order, mt, mode)


class Run:
    """Both sides in lockstep: every call's outcome must agree."""

    def __init__(self, seed: int, nr_blocks: int) -> None:
        self.rng = random.Random(seed)
        self.sides = [Side(impl, nr_blocks * PAGEBLOCK_NR_PAGES) for impl in IMPLEMENTATIONS]

    def both(self, call: Any, *args: Any) -> Any:
        (a, b) = (outcome(lambda s=s: call(s, *args)) for s in self.sides)
        assert a == b, f"model {a!r}, engine {b!r}"
        return a

    def fragment(self, fill: float, checkerboard: bool) -> None:
        """Fill the zone to ``fill`` with every kind of page, then free half of each
        at random; or (``checkerboard``) fill the rest to the last frame,
        reserves too, with the other owner's pages, and free those of even
        pfn."""
        rng = self.rng
        mem = self.sides[0].mem
        kind = "ok"
        while kind == "ok" and mem.nr_used < fill * mem.capacity:
            roll = rng.random()
            if roll < 0.4:
                kind, _ = self.both(Side.write, rng.randbytes(rng.choice((40, 200, 700, 1500, 3000))))
            elif roll < 0.7:
                kind, _ = self.both(Side.take_page, rng.getrandbits(64))
            elif roll < 0.95:
                kind, _ = self.both(Side.hold_page, rng.choice(MIGRATETYPES))
            else:
                kind, _ = self.both(Side.hold_block, rng.choice((1, 2, 3)), rng.choice(MIGRATETYPES))
        if not checkerboard:
            self.free_some(0.5, 0.5)
            return
        while self.both(Side.take_page, rng.getrandbits(64), True)[0] == "ok":
            pass
        for p in sorted(p for p in self.sides[0].owner.pages if p % 2 == 0):
            self.both(Side.owner_frees, p)

    def free_some(self, objects: float, pages: float) -> None:
        """Free that share of the pool's objects, and of the other owner's pages and the held ones."""
        rng = self.rng
        side = self.sides[0]
        handles = rng.sample(sorted(side.objects), int(len(side.objects) * objects))
        owned = rng.sample(sorted(side.owner.pages), int(len(side.owner.pages) * pages))
        held = rng.sample(range(len(side.held)), int(len(side.held) * pages))
        for h in handles:
            self.both(Side.free, h)
        for p in owned:
            self.both(Side.owner_frees, p)
        for i in sorted(held, reverse=True):
            self.both(Side.put_held, i)

    def pin(self, share: float) -> None:
        """Some of the other owner's pages stop being movable: they stay in use, held."""
        side = self.sides[0]
        for p in self.rng.sample(sorted(side.owner.pages), int(len(side.owner.pages) * share)):
            self.both(Side.pin, p)

    def assert_same(self) -> None:
        (m, e) = self.sides
        assert_same_zone(m.mem.zone_snapshot(), e.mem.zone_snapshot())
        assert m.mem.stats() == e.mem.stats()
        assert snapshot(m.pool, data=True) == snapshot(e.pool, data=True)
        assert m.owner.pages == e.owner.pages
        assert m.held == e.held
        for s in self.sides:
            s.pool.check()
            for h, data in s.objects.items():
                assert s.pool.read(h) == data
            for p, tag in s.owner.pages.items():
                assert s.owner.tag_in(p) == tag


@pytest.mark.parametrize("checkerboard", [False, True], ids=["random", "checkerboard"])
@pytest.mark.parametrize("seed", range(2))
def test_compact_zone_agrees_on_a_fragmented_zone(seed: int, checkerboard: bool) -> None:
    run = Run(seed, nr_blocks=16 if checkerboard else 8)
    fill = 0.3 if checkerboard else 0.95
    run.fragment(fill, checkerboard)
    run.pin(0.1 * seed)
    run.assert_same()
    statuses, moved = [], 0
    for order in (2, 3, 4, PAGEBLOCK_ORDER, 10):
        for mt in (MOVABLE, UNMOVABLE):
            for mode in MODES:
                kind, r = run.both(Side.compact_zone, order, mt, mode)
                assert kind == "ok", r
                statuses.append((order, mt, mode.name, r.status.name, r.migrate.succeeded))
                moved += r.migrate.succeeded
                run.assert_same()
                if checkerboard:  # the zone fragmented again for the next call
                    run.fragment(fill, checkerboard)
        run.fragment(fill, checkerboard)
    assert {CompactStatus.SUCCESS.name, CompactStatus.COMPLETE.name} <= {s[3] for s in statuses}
    assert moved > 0
    if checkerboard:  # low orders made by migration, not found free
        assert any(o <= 4 and st == CompactStatus.SUCCESS.name and n > 0 for o, _, _, st, n in statuses)


@pytest.mark.parametrize("order", [3, PAGEBLOCK_ORDER, MAX_PAGE_ORDER])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=["model", "engine"])
def test_with_no_pinned_page_compaction_makes_a_free_block_of_the_order(impl: Any, order: int) -> None:
    side = Side(impl, 16 * PAGEBLOCK_NR_PAGES)
    rng = random.Random(order)
    while side.mem.nr_used < PAGEBLOCK_NR_PAGES:
        side.write(rng.randbytes(rng.choice((100, 900, 2500))))
    with pytest.raises(OutOfFramesError):  # every frame in use, the reserves too
        while True:
            side.owner.take(side.mem.alloc_block(0, MOVABLE, 0), rng.getrandbits(64))
    # every other frame of the other owner's freed: no free block above order 0
    for p in [p for p in side.owner.pages if p % 2 == 0]:
        side.owner_frees(p)
    zone = side.mem.zone_snapshot()
    assert zone.contig_page_info(1).free_blocks_suitable == 0
    with pytest.raises(OutOfFramesError):
        side.mem.alloc_block(order, MOVABLE, 0)
    r = side.mem.compact_zone(order, MOVABLE, MigrateMode.SYNC)
    assert r.status == CompactStatus.SUCCESS, r
    assert r.migrate.succeeded > 0
    assert r.migrate.failed == 0
    zone = side.mem.zone_snapshot()
    zone.check()
    assert zone.contig_page_info(order).free_blocks_suitable > 0
    side.pool.check()
    for h, data in side.objects.items():
        assert side.pool.read(h) == data
    for p, tag in side.owner.pages.items():
        assert side.owner.tag_in(p) == tag
    # the allocation that failed succeeds now
    side.mem.alloc_block(order, MOVABLE, 0)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=["model", "engine"])
def test_a_costly_order_that_fails_for_want_of_memory_is_not_compacted(impl: Any) -> None:
    # compaction_suitable: six free order-8 blocks, none of order 9, pass the watermark
    # check, but the fragmentation index says the failure is for want of memory
    mem = impl.Memory.new_zoned(16 * PAGEBLOCK_NR_PAGES)
    halves = [mem.alloc_block(PAGEBLOCK_ORDER - 1, MOVABLE, 0) for _ in range(32)]
    for p in sorted(halves)[::2][:6]:  # the first half of six pageblocks: no two are buddies
        mem.put_page(p)
    zone = mem.zone_snapshot()
    assert zone.contig_page_info(PAGEBLOCK_ORDER).free_blocks_suitable == 0
    assert 0 <= zone.fragmentation_index(PAGEBLOCK_ORDER) <= EXTFRAG_THRESHOLD
    r = mem.compact_zone(PAGEBLOCK_ORDER, MOVABLE, MigrateMode.SYNC)
    assert r.status == CompactStatus.SKIPPED and r.migrate_isolated == 0, r
    # a non-costly order is compacted whatever the index (it has free blocks: a success)
    assert mem.compact_zone(3, MOVABLE, MigrateMode.SYNC).status == CompactStatus.SUCCESS


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=["model", "engine"])
def test_a_zoned_memory_refuses_what_only_the_arena_does(impl: Any) -> None:
    mem = impl.Memory.new_zoned(PAGEBLOCK_NR_PAGES)
    assert mem.zoned
    assert mem.hwm == PAGEBLOCK_NR_PAGES  # every frame is the zone's from the start
    with pytest.raises(ValueError, match="not a zone"):
        mem.compact()
    with pytest.raises(ValueError, match="not a zone"):
        mem.evacuate(0, 10)
    with pytest.raises(ValueError, match="no frame by pfn range"):
        mem.alloc_page_in(0, 10)
    assert mem.shrink_arena() == 0
    arena = impl.Memory(16, pcp_high=4, pcp_batch=2)
    assert not arena.zoned
    with pytest.raises(ValueError, match="needs a zoned Memory"):
        arena.compact_zone(0, MOVABLE)
    with pytest.raises(ValueError, match="only a zoned Memory hands out blocks"):
        arena.alloc_block(1, MOVABLE, 0)
    with pytest.raises(ValueError, match="only a zoned Memory has a zone"):
        arena.zone_snapshot()
    # a block's head stands for the block
    p = mem.alloc_block(4, UNMOVABLE, 0)
    assert mem.nr_used == 16
    assert mem.zone_snapshot().allocated_block(p) == (4, UNMOVABLE)
    mem.put_page(p)
    assert mem.nr_used == 0
    assert mem.zone_snapshot().nr_free_pages == PAGEBLOCK_NR_PAGES
    # order-0 frames of a migratetype claim a pageblock of that type
    pfns = mem.alloc_pages_mt(3, UNMOVABLE)
    assert mem.zone_snapshot().pageblock_types() == [UNMOVABLE]
    for pfn in pfns:
        mem.put_page(pfn)
    assert mem.zone_snapshot().nr_free_pages == PAGEBLOCK_NR_PAGES


def direct_compaction(s: Side, order: int) -> tuple[str, bool]:
    """The fragsim's way with a failed movable request of ``order`` (``__alloc_pages_direct_compact``):
    the deferral, async compaction, the retry at the min watermark, and the deferral's update."""
    mem = s.mem
    if mem.compaction_deferred(order):
        return "deferred", False
    r = mem.compact_zone(order, MOVABLE, MigrateMode.ASYNC)
    try:
        s.held.append(mem.alloc_block(order, MOVABLE, mem.zone_snapshot().watermarks.min))
    except OutOfFramesError:
        if r.status == CompactStatus.COMPLETE:
            mem.defer_compaction(order)
        return r.status.name, False
    mem.compaction_defer_reset(order, True)
    return r.status.name, True


def kcompactd(s: Side, order: int) -> str:
    """The fragsim's kcompactd_do_work: the deferral, sync-light compaction, the deferral's update."""
    mem = s.mem
    if mem.compaction_deferred(order):
        return "deferred"
    r = mem.compact_zone(order, UNMOVABLE, MigrateMode.SYNC_LIGHT)
    if r.status == CompactStatus.SUCCESS:
        mem.compaction_defer_reset(order, False)
    elif r.status == CompactStatus.COMPLETE:
        mem.defer_compaction(order)
    return r.status.name


@pytest.mark.parametrize("seed", range(2))
def test_the_deferral_around_compact_zone_agrees(seed: int) -> None:
    run = Run(seed, nr_blocks=8)
    run.fragment(0.95, False)
    run.pin(0.3)
    seen = []
    for step in range(40):
        order = run.rng.choice((3, 4, PAGEBLOCK_ORDER))
        kind, got = run.both(direct_compaction, order)
        assert kind == "ok", got
        seen.append(got[0])
        if step % 4 == 3:
            kind, status = run.both(kcompactd, PAGEBLOCK_ORDER)
            assert kind == "ok", status
            seen.append(status)
        run.assert_same()  # the zone's state includes the deferral's counters
        if got[1]:
            run.fragment(0.95, False)
    assert {"deferred", CompactStatus.SUCCESS.name, CompactStatus.COMPLETE.name} <= set(seen), seen
