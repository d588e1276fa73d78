"""Page migration: the VM side (zsmalloc.mm.migrate, mm.compaction) and zsmalloc's callbacks.

Expected values come from KERNEL.md sections 2 and 5 and the docstrings of
mm/migrate.py and pool/migrate.py: after a page moves, every object reads back
byte for byte, the handle of every object that starts in the moved page names
the new pfn with the same index, the old frame is free, and ``check()`` passes.
Every test runs under both working protocols ("mainline", "2016"); the tests
at the end are specific to one of them.

Geometry used throughout (chain 8): a 1560-byte request lands in class 96,
size 1568, 5 pages and 13 objects per zspage; objects start in pages
0,0,0,1,1,1,2,2,3,3,3,4,4, and objects 2, 5, 7 and 10 span into the next page.
A 4096-byte request is a huge object: one page, no header.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from helpers import WAIT, pattern, wait_until
from zsmalloc import Memory, PageStateError, Pool, model
from zsmalloc.debug import snapshot
from zsmalloc.mm import PAGE_SIZE, MigrateMode
from zsmalloc.pool.constants import FG_NONE, get_fullness_group

pytestmark = pytest.mark.usefixtures("each_backend")

PROTOCOLS = ["mainline", "2016"]
REQ = 1560
CLASS = 96
PAGES = 5
OBJS = 13
FIRST_PAGE_OF_OBJ = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4]
MIN_DESCRIPTORS = 1024  # Memory never shrinks its descriptor arrays below this (mm/memory.py)


def refcount(pool: Pool, pfn: int) -> int:
    """The frame's reference count, from the snapshot (which lists every frame in use)."""
    page = snapshot(pool)["pages"].get(pfn)
    return 0 if page is None else page["refcount"]


def zspage(pool: Pool, zid: int) -> dict:
    """The snapshot's entry of zspage ``zid``: class, inuse, fg, isolated, pages, ..."""
    return snapshot(pool)["zspages"][zid]


class Zs:
    """A pool holding one full zspage of class 96, a huge object, and two keepers."""

    def __init__(self, protocol: str) -> None:
        self.pool = Pool(name=f"mig-{protocol}", chain_size=8, migration=protocol)
        self.mem = self.pool.memory
        self.data: dict[int, bytes] = {}
        self.keepers = [self.add(100, 1), self.add(700, 2)]
        self.hs = [self.add(REQ, 10 + i) for i in range(OBJS)]
        self.huge = self.add(4096, 99)
        self.zid = self.zid_of(self.hs[0])
        assert zspage(self.pool, self.zid)["class"] == CLASS
        assert all(self.zid_of(h) == self.zid for h in self.hs)

    def add(self, size: int, tag: int) -> int:
        h = self.pool.malloc(size)
        d = pattern(tag, size)
        self.pool.write(h, d)
        self.data[h] = d
        return h

    def zid_of(self, h: int) -> int:
        return snapshot(self.pool)["pages"][self.pool.locate(h)[0]]["private"]

    def pfns(self) -> list[int]:
        return self.pool.zspage_pfns(self.hs[0])

    def verify(self) -> None:
        for h, d in self.data.items():
            assert self.pool.read(h) == d, f"handle {h:#x} differs"
        self.pool.check()
        assert self.mem.nr_used == self.pool.total_pages

    def close(self) -> None:
        name = "zs-work-" + self.pool.name
        assert wait_until(lambda: not [t for t in threading.enumerate() if t.name == name])
        self.pool.close()


@pytest.fixture(params=PROTOCOLS)
def zs(request):
    z = Zs(request.param)
    try:
        yield z
    finally:
        z.close()


# ----------------------------------------------------------------------
# isolate, migrate, putback of one page


@pytest.mark.parametrize("where", ["head", "middle", "last", "huge"])
def test_migrate_one_page(zs, where):
    pool, mem = zs.pool, zs.mem
    if where == "huge":
        old = pool.locate(zs.huge)[0]
        assert pool.zspage_pfns(zs.huge) == [old]
        k = 0
    else:
        k = {"head": 0, "middle": 2, "last": PAGES - 1}[where]
        old = zs.pfns()[k]
    chain_before = pool.zspage_pfns(zs.huge) if where == "huge" else zs.pfns()
    where_before = {h: pool.locate(h) for h in zs.data}
    page_bytes = bytes(mem.frame(old))
    used_before = mem.nr_used

    assert mem.isolate_movable_page(old)
    assert mem.page_isolated(old)
    assert refcount(pool, old) == 2  # the pool's reference and the VM's
    res = mem.migrate_pages([old])
    assert (res.succeeded, res.failed, res.retried, res.failed_pfns) == (1, 0, 0, [])
    new = res.moved[old]
    assert new != old

    # the old frame is free, the new one is the pool's, movable, not isolated
    assert not mem.page_in_use(old)
    assert refcount(pool, old) == 0 and not mem.page_isolated(old) and not mem.page_locked(old)
    assert refcount(pool, new) == 1 and mem.page_movable(new) and not mem.page_isolated(new)
    assert not mem.page_locked(new)
    assert bytes(mem.frame(new)) == page_bytes
    assert mem.nr_used == used_before

    # the chain has the new page where the old one was
    chain = pool.zspage_pfns(zs.huge) if where == "huge" else zs.pfns()
    assert chain == [new if p == old else p for p in chain_before]
    # handles of objects that start in the moved page name the new pfn, same index
    for h, (pfn, idx) in where_before.items():
        assert pool.locate(h) == ((new, idx) if pfn == old else (pfn, idx))
    if where != "huge":
        moved = [i for i, first in enumerate(FIRST_PAGE_OF_OBJ) if first == k]
        assert {i for i, h in enumerate(zs.hs) if pool.locate(h)[0] == new} == set(moved)
    assert mem.vmstat["isolate_success"] == 1 and mem.vmstat["pgmigrate_success"] == 1
    zs.verify()
    # the moved objects can be rewritten and freed like any other
    for h in list(zs.data):
        if where_before[h][0] == old:
            d = pattern(77, len(zs.data[h]))
            pool.write(h, d)
            zs.data[h] = d
    zs.verify()


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_objects_spanning_the_moved_page_stay_intact(zs, k):
    """Move page k: the object ending in it (started in k-1) and the one starting in it and
    running into k+1 both read back, whole and in part, through read, read_into and map."""
    pool, mem = zs.pool, zs.mem
    old = zs.pfns()[k]
    ending_in = max(i for i, first in enumerate(FIRST_PAGE_OF_OBJ) if first == k - 1)
    spanning_out = [i for i, first in enumerate(FIRST_PAGE_OF_OBJ) if first == k]
    spanning_out = spanning_out[-1] if k < PAGES - 1 else None
    res = mem.move_pages([old])
    assert res.succeeded == 1, res
    for i in [ending_in, spanning_out]:
        if i is None:
            continue
        h, d = zs.hs[i], zs.data[zs.hs[i]]
        start = (i * 1568) % PAGE_SIZE + 8  # where the caller's bytes begin in the first page
        cut = PAGE_SIZE - start  # bytes of the object in its first page
        assert 0 < cut < len(d), "the object should span two pages"
        assert pool.read(h) == d
        assert pool.read(h, 40, cut - 20) == d[cut - 20 : cut + 20]
        buf = bytearray(100)
        pool.read_into(h, buf, cut - 50)
        assert bytes(buf) == d[cut - 50 : cut + 50]
        with pool.map(h) as view:
            assert bytes(view) == d
        d2 = pattern(200 + i, len(d))
        pool.write(h, d2)
        zs.data[h] = d2
        assert pool.read(h) == d2
    zs.verify()


def test_putback_keeps_everything_in_place(zs):
    pool, mem = zs.pool, zs.mem
    chain = zs.pfns()
    where_before = {h: pool.locate(h) for h in zs.data}
    for p in chain[1:3]:
        assert mem.isolate_movable_page(p)
    for p in chain[1:3]:
        mem.putback_movable_page(p)
        assert not mem.page_isolated(p) and refcount(pool, p) == 1
    assert zs.pfns() == chain
    assert {h: pool.locate(h) for h in zs.data} == where_before
    assert mem.vmstat["putback"] == 2
    assert zspage(pool, zs.zid)["isolated"] == 0
    zs.verify()
    # a page that is not isolated cannot be put back
    with pytest.raises(PageStateError):
        mem.putback_movable_page(chain[0])


def test_migrate_every_page_of_the_pool(zs):
    mem = zs.mem
    before = mem.used_pfns()
    res = mem.move_pages(before)
    assert res.succeeded == len(before) and res.failed == 0
    assert set(res.moved) == set(before)
    assert all(dst != src for src, dst in res.moved.items())
    assert sorted(mem.used_pfns()) == sorted(res.moved.values())
    zs.verify()


def test_migrate_pages_refuses_a_page_that_is_not_isolated(zs):
    with pytest.raises(PageStateError):
        zs.mem.migrate_pages([zs.pfns()[0]])
    zs.verify()


# ----------------------------------------------------------------------
# what isolation refuses


def test_isolate_refuses_an_isolated_page(zs):
    mem, pool = zs.mem, zs.pool
    p = zs.pfns()[1]
    assert mem.isolate_movable_page(p)
    assert not mem.isolate_movable_page(p)
    assert refcount(pool, p) == 2  # the refused attempt gave its reference back
    assert mem.vmstat["isolate_fail"] == 1
    if pool.migration == "2016":
        assert zspage(pool, zs.zid)["isolated"] == 1  # counted once
    mem.putback_movable_page(p)
    assert zspage(pool, zs.zid)["isolated"] == 0
    zs.verify()


def test_isolate_refuses_free_and_unmovable_frames(zs):
    mem = zs.mem
    frame = mem.alloc_page()  # in use, not movable (no owner callbacks)
    assert not mem.isolate_movable_page(frame)
    assert refcount(zs.pool, frame) == 1 and not mem.page_isolated(frame)
    freed = mem.alloc_page()
    mem.free_page(freed)
    assert not mem.isolate_movable_page(freed)
    assert refcount(zs.pool, freed) == 0 and not mem.page_in_use(freed)
    assert not mem.isolate_movable_page(mem.hwm)  # never handed out
    assert not mem.isolate_movable_page(mem.hwm + 1000)
    assert mem.vmstat["isolate_fail"] == 4 and mem.vmstat["isolate_success"] == 0
    mem.free_page(frame)
    zs.verify()


def test_isolate_refuses_a_locked_page(zs):
    mem = zs.mem
    p = zs.pfns()[3]
    assert mem.trylock_page(p)
    try:
        assert not mem.isolate_movable_page(p)  # isolation only trylocks
        assert refcount(zs.pool, p) == 1
    finally:
        mem.unlock_page(p)
    assert mem.isolate_movable_page(p)
    mem.putback_movable_page(p)
    zs.verify()


# ----------------------------------------------------------------------
# busy pages: a mapped object, a page locked by someone else


def test_migrate_is_busy_while_an_object_of_the_page_is_mapped(zs):
    """A mapped object makes migrate answer -EAGAIN on every pass; the page is put back at the
    end; once the mapping ends the page moves (mainline: the zspage read lock; 2016: the pin)."""
    pool, mem = zs.pool, zs.mem
    h = zs.hs[4]  # starts in page 1
    p = zs.pfns()[1]
    loc = pool.locate(h)
    with pool.map(h) as view:
        assert mem.isolate_movable_page(p)
        res = mem.migrate_pages([p], passes=4)
        assert (res.succeeded, res.failed, res.retried, res.failed_pfns) == (0, 1, 4, [p])
        assert not mem.page_isolated(p), "a page that could not move is put back"
        assert mem.vmstat["putback"] == 1 and mem.vmstat["pgmigrate_fail"] == 1
        assert pool.locate(h) == loc and zs.pfns()[1] == p
        assert bytes(view) == zs.data[h]
        # the default number of passes, through move_pages
        res = mem.move_pages([p])
        assert res.retried == 10 and res.failed == 1 and res.succeeded == 0
        assert bytes(view) == zs.data[h]
        assert zspage(pool, zs.zid)["isolated"] == 0
    res = mem.move_pages([p])
    assert res.succeeded == 1 and res.retried == 0
    assert pool.locate(h) == (res.moved[p], loc[1])
    zs.verify()


def test_map_of_another_page_of_the_zspage(zs):
    """Both protocols hold the whole zspage while an object is mapped: mainline's zspage lock,
    and 2016's per-zspage migrate rwlock (4.8's zs_map_object took it for reading; its pins
    alone would only hold the page the mapped object starts in)."""
    pool, mem = zs.pool, zs.mem
    h = zs.hs[0]  # starts in page 0
    p3 = zs.pfns()[3]
    with pool.map(h) as view:
        res = mem.move_pages([p3], passes=3)
        assert res.succeeded == 0 and res.retried == 3
        assert bytes(view) == zs.data[h]
    res = mem.move_pages([p3])
    assert res.succeeded == 1  # unmapped: it moves
    zs.verify()


def test_a_huge_object_mapped_stops_its_page(zs):
    pool, mem = zs.pool, zs.mem
    p = pool.locate(zs.huge)[0]
    with pool.map(zs.huge) as view:
        res = mem.move_pages([p], passes=2)
        assert res.retried == 2 and res.failed == 1
        assert bytes(view) == zs.data[zs.huge]
    res = mem.move_pages([p])
    assert res.succeeded == 1
    assert pool.locate(zs.huge) == (res.moved[p], 0)
    zs.verify()


def test_async_migration_of_a_page_locked_elsewhere_retries(zs):
    mem = zs.mem
    p = zs.pfns()[2]
    assert mem.isolate_movable_page(p)
    assert mem.lock_page(p, timeout=WAIT)  # someone else holds the page lock
    try:
        res = mem.migrate_pages([p], MigrateMode.ASYNC, passes=3, putback=False)
        assert (res.succeeded, res.failed, res.retried, res.failed_pfns) == (0, 1, 3, [p])
        assert mem.page_isolated(p)  # putback=False: still the VM's
        # sync mode sleeps on the lock, here for a bounded time
        t0 = time.monotonic()
        res = mem.migrate_pages([p], MigrateMode.SYNC, passes=2, putback=False, lock_timeout=0.05)
        assert res.retried == 2 and res.failed == 1 and time.monotonic() - t0 >= 0.1
        assert zs.pfns()[2] == p
    finally:
        mem.unlock_page(p)
    res = mem.migrate_pages([p], MigrateMode.ASYNC)
    assert res.succeeded == 1
    assert zs.pfns()[2] == res.moved[p]
    zs.verify()


def test_sync_migration_waits_for_the_page_lock(zs):
    mem = zs.mem
    p = zs.pfns()[2]
    assert mem.isolate_movable_page(p)
    assert mem.lock_page(p, timeout=WAIT)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("res", mem.migrate_pages([p])), daemon=True)
    try:
        t.start()
        if isinstance(mem, model.Memory):  # the model counts the sleepers on a page lock
            assert wait_until(lambda: mem._page_waiters > 0), "migrate_pages did not wait for the page lock"
        # on either: a migration that gave up (-EAGAIN after its passes) would have returned by now
        time.sleep(0.5)
        assert t.is_alive(), f"migrate_pages did not wait for the page lock: {out.get('res')}"
        assert mem.page_isolated(p) and zs.pfns()[2] == p
    finally:
        mem.unlock_page(p)
    t.join(WAIT)
    assert not t.is_alive()
    assert out["res"].succeeded == 1
    zs.verify()


# ----------------------------------------------------------------------
# where pages go: target ranges, move_pages, evacuate, compact


def test_target_range_places_the_page(zs):
    mem = zs.mem
    lo = mem.hwm + 40
    p = zs.pfns()[1]
    assert mem.isolate_movable_page(p)
    res = mem.migrate_pages([p], target=(lo, lo + 5))
    assert res.succeeded == 1
    assert lo <= res.moved[p] < lo + 5
    # a range with no free frame: the destination cannot be had, the page is put back
    used = sorted(set(mem.used_pfns()) - {res.moved[p]})
    q = zs.pfns()[3]
    assert mem.isolate_movable_page(q)
    res2 = mem.migrate_pages([q], target=(used[0], used[0] + 1))
    assert (res2.succeeded, res2.failed, res2.retried) == (0, 1, 0)
    assert mem.vmstat["pgmigrate_nomem"] == 1
    assert not mem.page_isolated(q) and zs.pfns()[3] == q
    zs.verify()


def test_move_pages_puts_back_what_cannot_move(zs):
    pool, mem = zs.pool, zs.mem
    chain = zs.pfns()
    good, busy = chain[4], chain[1]
    unmovable = mem.alloc_page()
    free = mem.alloc_page()
    mem.free_page(free)
    with pool.map(zs.hs[3]):  # pins page 1 (2016) / the whole zspage (mainline)
        res = mem.move_pages([busy, unmovable, free], passes=2)
        assert res.succeeded == 0 and res.failed == 3
        assert sorted(res.failed_pfns) == sorted([busy, unmovable, free])
        assert not mem.page_isolated(busy)
    res = mem.move_pages([good, busy, unmovable])
    assert res.succeeded == 2 and res.failed == 1 and res.failed_pfns == [unmovable]
    assert set(res.moved) == {good, busy}
    assert not any(mem.page_isolated(p) for p in mem.used_pfns())
    mem.free_page(unmovable)
    zs.verify()


def _fill(pool: Pool, n: int, seed: int) -> tuple[dict[int, bytes], random.Random]:
    rng = random.Random(seed)
    data = {}
    for i in range(n):
        size = rng.choice([rng.randint(1, 4096), REQ, 4096, 300])
        h = pool.malloc(size)
        d = pattern(i, size)
        pool.write(h, d)
        data[h] = d
    return data, rng


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_evacuate_empties_a_range_while_the_pool_works(protocol):
    pool = Pool(name=f"evac-{protocol}", migration=protocol)
    mem = pool.memory
    try:
        data, _ = _fill(pool, 600, 1)
        assert mem.hwm > 300
        start, end = mem.hwm // 3, mem.hwm // 3 + 100
        assert len([p for p in mem.used_pfns() if start <= p < end]) > 50

        # meanwhile a thread allocates, reads and frees objects of its own
        stop = threading.Event()
        errors: list[BaseException] = []
        mine: dict[int, bytes] = {}
        ops = [0]

        def worker():
            rng = random.Random(2)
            try:
                while not stop.is_set() or ops[0] < 50:
                    size = rng.randint(1, 4096)
                    h = pool.malloc(size)
                    d = rng.randbytes(size)
                    pool.write(h, d)
                    mine[h] = d
                    victim = rng.choice(list(mine))
                    assert pool.read(victim) == mine[victim]
                    if len(mine) > 20:
                        pool.free(victim)
                        del mine[victim]
                    ops[0] += 1
            except BaseException as exc:  # reported below
                errors.append(exc)

        t = threading.Thread(target=worker, daemon=True)
        t.start()
        try:
            res = mem.evacuate(start, end, keep_excluded=True)
        finally:
            stop.set()
            t.join(WAIT)
        assert not t.is_alive(), "the worker hung"
        assert not errors, errors
        assert res.remaining == [] and res.complete
        assert res.succeeded > 50 and res.failed == 0
        assert not [p for p in mem.used_pfns() if start <= p < end]

        # the range stays excluded: new zspages keep out of it
        for i in range(300):
            h = pool.malloc(REQ if i % 2 else 4096)
            pool.write(h, pattern(i, pool.handle_size(h)))
            data[h] = pattern(i, pool.handle_size(h))
        assert not [p for p in mem.used_pfns() if start <= p < end]
        pool.check()
        for h, d in {**data, **mine}.items():
            assert pool.read(h) == d
        # give it back: the allocator may use it again
        mem.unexclude_range(start, end)
        frame = mem.alloc_page_in(start, end)
        assert start <= frame < end
        mem.free_page(frame)
        pool.check()
    finally:
        pool.close()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _churned(protocol: str, pcp_high: int = 1 << 16) -> tuple[Memory, Pool, dict[int, bytes]]:
    """A pool on its own Memory, filled and then mostly freed and zs-compacted: in-use frames
    are scattered up to a high-water mark well above their number."""
    mem = Memory(capacity=1 << 16, pcp_high=pcp_high)
    pool = Pool(name=f"vmcompact-{protocol}", memory=mem, migration=protocol)
    rng = random.Random(5)
    data = {}
    for i in range(3600):
        size = rng.choice([4096, REQ, 2500, 900])
        h = pool.malloc(size)
        d = pattern(i, size)
        pool.write(h, d)
        data[h] = d
    for h in rng.sample(list(data), 2700):
        pool.free(h)
        del data[h]
    pool.compact()
    assert mem.nr_used == pool.total_pages
    assert mem.hwm > 2 * mem.nr_used and mem.hwm > MIN_DESCRIPTORS
    return mem, pool, data


@pytest.mark.parametrize("hot_near_top", [False, True], ids=["all-free-hot", "hot-near-top-cold-below"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_memory_compact_packs_every_movable_page_down(protocol, hot_near_top):
    """Everything is movable: afterwards the frames in use are exactly 0..n-1 and the
    high-water mark is n (the compact() docstring: pages move down while the lowest free
    frame is below the highest movable page).  In the second case the free frames are cold
    except a few hot ones near the top (pages that just migrated away, as under a running
    VM): a destination must still be the lowest free frame, not the lowest hot one, or a
    page lands in a frame the migration scanner has passed and stays above the new mark."""
    mem, pool, data = _churned(protocol)
    if hot_near_top:
        mem.drain_pages()
        near_top = mem.used_pfns()[-20:-12]  # inside the scanner's first batch
        assert len(mem.move_pages(near_top, target=(0, mem.hwm // 2)).moved) == 8
    try:
        in_use = mem.nr_used
        res = mem.compact()
        holes = [p for p in range(mem.hwm) if not mem.page_in_use(p)]
        assert res.hwm_after == mem.hwm == in_use == mem.nr_used, (
            f"hwm {res.hwm_before} -> {res.hwm_after} with {in_use} frames in use: free frames "
            f"{holes[:8]}... ({len(holes)}) lie below movable pages up to {mem.hwm - 1}; "
            f"{res.failed} pages failed (pgmigrate_nomem {mem.vmstat['pgmigrate_nomem']})"
        )
        assert mem.used_pfns() == list(range(in_use))
        pool.check()
        for h, d in data.items():
            assert pool.read(h) == d
    finally:
        pool.close()
        mem.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_memory_compact_shrinks_the_arena_and_rss(protocol):
    """The high-water mark falls, the descriptor arrays shrink with it (down to the minimum size
    Memory keeps them at), the dropped frames leave RSS, and every object reads back."""
    # a hot list that never drains: freed frames stay resident until compaction drops them
    mem, pool, data = _churned(protocol)
    try:
        hwm_before = mem.hwm
        in_use = mem.nr_used
        descriptors = isinstance(mem, model.Memory)  # the model's descriptor arrays are Python objects
        if descriptors:
            assert len(mem.flags) >= hwm_before
        rss_before = _rss()

        res = mem.compact()

        assert res.hwm_before == hwm_before
        assert res.hwm_after == mem.hwm < hwm_before / 1.5
        assert res.released == hwm_before - res.hwm_after
        assert mem.nr_used == in_use == pool.total_pages
        if descriptors:
            assert res.hwm_after <= len(mem.flags) <= max(res.hwm_after, MIN_DESCRIPTORS) < hwm_before
            arrays = (mem.refcount, mem.movable_ops, mem.private, mem.index, mem.next, mem.first_obj_offset)
            for arr in arrays:
                assert len(arr) == len(mem.flags)
        assert res.succeeded > 0 and mem.vmstat["compact_runs"] == 1
        assert mem.vmstat["compact_pages_moved"] == res.succeeded
        dropped = rss_before - _rss()
        assert dropped >= 0.5 * res.released * PAGE_SIZE, (dropped, res.released)
        pool.check()
        for h, d in data.items():
            assert pool.read(h) == d
        # and the pool goes on growing from there
        h = pool.malloc(4096)
        pool.write(h, b"z" * 4096)
        assert pool.read(h) == b"z" * 4096
        assert mem.hwm <= res.hwm_after + 1
        pool.check()
    finally:
        pool.close()
        mem.close()


def test_memory_compact_leaves_unmovable_frames_in_place():
    mem = Memory(capacity=4096)
    pool = Pool(name="vmcompact-pinned", memory=mem)
    try:
        data, rng = _fill(pool, 300, 3)
        pinned = mem.alloc_page()  # not movable, stays where it is
        top = [pool.malloc(4096) for _ in range(50)]
        for h in top:
            pool.write(h, b"t" * 4096)
        for h in rng.sample(list(data), 200):
            pool.free(h)
            del data[h]
        res = mem.compact()
        assert mem.page_in_use(pinned)
        assert res.hwm_after == mem.hwm >= pinned + 1
        assert mem.nr_used == pool.total_pages + 1
        pool.check()
        for h, d in data.items():
            assert pool.read(h) == d
        for h in top:
            assert pool.read(h) == b"t" * 4096
        mem.free_page(pinned)
    finally:
        pool.close()
        mem.close()


def test_scanners_race_with_a_shrinking_arena(impl):
    """``movable_pfns()`` (which evacuate() and compact() scan with) reads the high-water mark and
    then the descriptor arrays without the memory lock, while ``shrink_arena()`` in another
    thread (memory.compact(), drain_pages()) may truncate those arrays in between: the scan
    must see either state, never raise IndexError.  Bounded: 3 s at most."""
    mem = Memory(capacity=1 << 14)
    stop = threading.Event()
    errors: list[str] = []

    def scan(fn):
        def body():
            try:
                while not stop.is_set():
                    fn()
            except BaseException as exc:
                errors.append(f"{fn.__name__}: {exc!r}")

        return threading.Thread(target=body, daemon=True)

    threads = [scan(mem.movable_pfns), scan(mem.compact)]
    for t in threads:
        t.start()
    rounds = 0
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not errors:
            frames = mem.alloc_pages(3000)  # the arrays grow past their minimum size...
            for pfn in frames:
                mem.free_page(pfn)
            mem.shrink_arena()  # ...and shrink back
            rounds += 1
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert not errors, f"after {rounds} grow/shrink rounds: {errors}"
    assert rounds > 3
    mem.close()


# ----------------------------------------------------------------------
# the 2016 protocol: an isolated zspage is off its list


@pytest.fixture
def z2016():
    z = Zs("2016")
    try:
        yield z
    finally:
        z.close()


@pytest.fixture
def zmain():
    z = Zs("mainline")
    try:
        yield z
    finally:
        z.close()


def _membership(pool: Pool, zid: int) -> list[int]:
    """The fullness groups whose lists hold zspage ``zid`` (one, or none while taken off)."""
    snap = snapshot(pool)
    ci = snap["zspages"][zid]["class"]
    cls = next(c for c in snap["classes"] if c["index"] == ci)
    return [fg for fg, lst in enumerate(cls["fullness"]) if zid in lst]


def fg_of_inuse(inuse: int) -> int:
    """The fullness group a class-96 zspage with ``inuse`` objects belongs on."""
    return get_fullness_group(inuse, OBJS)


def test_2016_isolation_takes_the_zspage_off_its_list_and_counts_pages(z2016):
    zs = z2016
    pool, mem = zs.pool, zs.mem
    chain = zs.pfns()
    # make the zspage partial, so that malloc would pick it if it were on a list
    for h in zs.hs[5:]:
        pool.free(h)
        del zs.data[h]
    assert _membership(pool, zs.zid) == [fg_of_inuse(5)]
    assert mem.isolate_movable_page(chain[0])
    assert zspage(pool, zs.zid)["isolated"] == 1
    assert zspage(pool, zs.zid)["fg"] == FG_NONE and _membership(pool, zs.zid) == []
    assert mem.isolate_movable_page(chain[3])
    assert zspage(pool, zs.zid)["isolated"] == 2
    pool.check()

    # malloc does not pick it: a new zspage is made
    pages = pool.total_pages
    h = zs.add(REQ, 50)
    assert zs.zid_of(h) != zs.zid and pool.total_pages == pages + PAGES
    # a free in the isolated zspage changes its inuse, not its (absent) list
    pool.free(zs.hs[0])
    del zs.data[zs.hs[0]]
    assert zspage(pool, zs.zid)["inuse"] == 4 and _membership(pool, zs.zid) == []
    pool.check()

    # migrate one isolated page: one left, still off the lists
    res = mem.migrate_pages([chain[3]])
    assert res.succeeded == 1
    assert zspage(pool, zs.zid)["isolated"] == 1 and _membership(pool, zs.zid) == []
    pool.check()
    # the last putback puts it back on the list its inuse calls for now
    mem.putback_movable_page(chain[0])
    assert zspage(pool, zs.zid)["isolated"] == 0
    assert _membership(pool, zs.zid) == [fg_of_inuse(4)] == [zspage(pool, zs.zid)["fg"]]
    zs.verify()
    # and from now on malloc may use it again
    h2 = zs.add(REQ, 51)
    assert zs.zid_of(h2) in (zs.zid, zs.zid_of(h))
    zs.verify()


@pytest.mark.model_only(reason="needs the deferred-work hook")
def test_2016_isolation_refuses_an_empty_zspage(z2016):
    zs = z2016
    pool, mem = zs.pool, zs.mem
    kicks = []
    pool.kick_deferred_free = lambda: kicks.append(1)  # keep the emptied zspage around
    try:
        chain = zs.pfns()
        assert mem.lock_page(chain[4], timeout=WAIT)  # the free cannot take this lock: deferred
        try:
            for h in zs.hs:
                pool.free(h)
                del zs.data[h]
        finally:
            mem.unlock_page(chain[4])
        assert kicks and zspage(pool, zs.zid)["inuse"] == 0
        assert not mem.isolate_movable_page(chain[1])
        assert zspage(pool, zs.zid)["isolated"] == 0 and _membership(pool, zs.zid) == [0]
        pool.check()
    finally:
        del pool.kick_deferred_free
    assert pool.flush_deferred() == 1
    zs.verify()


def test_2016_compaction_does_not_pick_an_isolated_zspage(z2016):
    zs = z2016
    pool, mem = zs.pool, zs.mem
    # two sparse zspages of the class: compaction would merge them
    others = [zs.add(REQ, 60 + i) for i in range(OBJS)]
    assert zs.zid_of(others[0]) != zs.zid
    for h in zs.hs[2:] + others[2:]:
        pool.free(h)
        del zs.data[h]
    assert pool.shrinker_count() == PAGES
    p = zs.pfns()[0]
    assert mem.isolate_movable_page(p)
    where = {h: pool.locate(h) for h in zs.hs[:2]}
    assert pool.compact() == 0
    assert {h: pool.locate(h) for h in zs.hs[:2]} == where
    assert zspage(pool, zs.zid)["inuse"] == 2
    pool.check()
    mem.putback_movable_page(p)
    assert pool.compact() == PAGES
    zs.verify()


def test_mainline_isolation_leaves_the_zspage_on_its_list(zmain):
    zs = zmain
    pool, mem = zs.pool, zs.mem
    for h in zs.hs[5:]:
        pool.free(h)
        del zs.data[h]
    assert mem.isolate_movable_page(zs.pfns()[2])
    assert _membership(pool, zs.zid) == [fg_of_inuse(5)]
    assert zspage(pool, zs.zid)["isolated"] == 0
    h = zs.add(REQ, 70)
    assert zs.zid_of(h) == zs.zid  # malloc may use it
    res = mem.migrate_pages([zs.pfns()[2]])
    assert res.succeeded == 1
    zs.verify()
