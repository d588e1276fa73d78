"""One regression test per page-migration fix named in KERNEL.md section 5.

Each test stands for a kernel fix, named in its docstring, and runs under
every protocol where the situation can arise ("mainline", "2016").  Where a
situation cannot arise under a protocol, a test shows the rule that prevents
it.  Two tests run a scenario against a deliberately broken variant (the
pre-2022 deferred free, the 2016-v3 protocol) to show that the scenario
catches the bug it is about.

Threads are used only where the race needs them; every wait is bounded (a
broken build fails a test, it does not hang the suite).

Geometry (chain 8): a 1560-byte request is class 96, 5 pages and 13 objects
per zspage.
"""

from __future__ import annotations

import random
import threading

import pytest

from helpers import WAIT, pattern, wait_until
from zsmalloc import CorruptionError, Pool, engine, model
from zsmalloc.debug import snapshot
from zsmalloc.mm import MIGRATEPAGE_SUCCESS, PAGE_SIZE, MigrateMode
from zsmalloc.pool.constants import FG_NONE, get_fullness_group
from zsmalloc.pool.zsmalloc import Zspage

pytestmark = pytest.mark.usefixtures("each_backend")

PROTOCOLS = ["mainline", "2016"]
REQ = 1560
CLASS = 96
PAGES = 5
OBJS = 13
#: the tests that replace the pool's deferred-work kick cannot run on the engine yet
NEEDS_HOOK = pytest.mark.model_only(reason="needs the deferred-work hook")


def xfail_on_engine(request: pytest.FixtureRequest, impl, reason: str) -> None:
    """Record a gap of the engine: the test is expected to fail there (strict: it must)."""
    if impl is engine:
        request.applymarker(pytest.mark.xfail(reason=f"engine: {reason}", strict=True))


def refcount(pool: Pool, pfn: int) -> int:
    """The frame's reference count, from the snapshot (which lists every frame in use)."""
    page = snapshot(pool)["pages"].get(pfn)
    return 0 if page is None else page["refcount"]


def descriptor(pool: Pool, pfn: int) -> dict:
    """The snapshot's descriptor of a frame in use: flags, refcount, private, ..."""
    return snapshot(pool)["pages"][pfn]


def zspage(pool: Pool, zid: int) -> dict:
    """The snapshot's entry of zspage ``zid``: class, inuse, fg, isolated, pages, ..."""
    return snapshot(pool)["zspages"][zid]


def vm_held(pool: Pool) -> list[int]:
    """Frames only the VM still holds: isolated pages whose zspage was destroyed (mainline)."""
    mem = pool.memory
    return [p for p in mem.used_pfns() if mem.page_isolated(p) and not mem.page_movable(p)]


class Setup:
    """A pool with a keeper object of another class and one full zspage of class 96."""

    def __init__(self, protocol: str, stub_kick: bool = False, name: str = "") -> None:
        self.pool = Pool(name=name or f"reg-{protocol}", chain_size=8, migration=protocol)
        self.mem = self.pool.memory
        self.kicks: list[int] = []
        if stub_kick:  # schedule_work recorded, not run: the test runs the worker itself
            self.pool.kick_deferred_free = lambda: self.kicks.append(1)
        self.keeper = self.pool.malloc(300)
        self.pool.write(self.keeper, pattern(1, 300))
        self.hs = [self.pool.malloc(REQ) for _ in range(OBJS)]
        for i, h in enumerate(self.hs):
            self.pool.write(h, pattern(10 + i, REQ))
        self.zid = descriptor(self.pool, self.pool.locate(self.hs[0])[0])["private"]
        self.pfns = self.pool.zspage_pfns(self.hs[0])
        assert len(self.pfns) == PAGES and zspage(self.pool, self.zid)["class"] == CLASS
        self.pages_before = self.pool.total_pages
        self.locked: set[int] = set()

    def free_all(self) -> None:
        for h in self.hs:
            self.pool.free(h)
        self.hs = []

    def lock(self, pfn: int) -> None:
        assert self.mem.lock_page(pfn, timeout=WAIT)
        self.locked.add(pfn)

    def unlock(self, pfn: int) -> None:
        self.locked.discard(pfn)
        self.mem.unlock_page(pfn)

    def workers(self) -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == f"zs-work-{self.pool.name}"]

    def assert_clean(self) -> None:
        """Everything freed that should be: no frame leaked, nothing left locked or isolated."""
        pool, mem = self.pool, self.mem
        assert pool.total_pages == self.pages_before - PAGES
        assert mem.nr_used == pool.total_pages, "a frame leaked"
        for pfn in mem.used_pfns():
            assert not mem.page_locked(pfn) and not mem.page_isolated(pfn), pfn
        for pfn in self.pfns:
            assert not mem.page_in_use(pfn) and not mem.page_locked(pfn)
        pool.check()
        assert pool.read(self.keeper) == pattern(1, 300)

    def close(self) -> None:
        for pfn in list(self.locked):
            self.unlock(pfn)
        if "kick_deferred_free" in vars(self.pool):
            del self.pool.kick_deferred_free
        assert wait_until(lambda: not self.workers())
        self.pool.close()


def run_in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def body():
        try:
            out["result"] = fn(*args)
        except BaseException as exc:  # reported by the caller
            out["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, out


# ----------------------------------------------------------------------
# (a) 2017, 2019: migration leaving empty zspages never freed


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("last", ["migrate", "putback"])
@pytest.mark.parametrize("worker", [pytest.param("flush", marks=NEEDS_HOOK), "background"])
def test_zspage_emptied_while_isolated_is_freed(protocol, last, worker):
    """Kernel fixes of 2017 ("zsmalloc: zs_page_migrate: skip unnecessary loops but not return
    -EBUSY if zspage is not inuse": migrate of a page of an empty zspage failed for ever, so the
    zspage was never freed) and 2019 ("mm/zsmalloc.c: migration can leave pages in ZS_EMPTY
    indefinitely": after the last isolated page of an empty zspage was migrated or put back,
    no one scheduled its free).

    Two pages of a zspage are isolated, every object of it is freed, one page is migrated and
    the other migrated or put back.  Mainline destroys the zspage at the free (the VM's
    references keep the two frames until it lets them go); the 2016 protocol keeps it until the
    last isolated page leaves and then hands it to the deferred free.  Either way the pages go
    and no frame is left behind.
    """
    s = Setup(protocol, stub_kick=(worker == "flush"), name=f"reg-a-{protocol}-{last}-{worker}")
    pool, mem = s.pool, s.mem
    try:
        first, second = s.pfns[1], s.pfns[3]
        assert mem.isolate_movable_page(first) and mem.isolate_movable_page(second)
        s.free_all()
        if protocol == "mainline":
            assert pool.total_pages == s.pages_before - PAGES  # destroyed at once
            assert mem.nr_used == pool.total_pages + 2  # the VM still holds its two pages
        else:
            assert pool.total_pages == s.pages_before  # kept while isolated
            zs = zspage(pool, s.zid)
            assert zs["inuse"] == 0 and zs["isolated"] == 2
            assert zs["fg"] == FG_NONE
        pool.check()

        res = mem.migrate_pages([first])
        assert res.succeeded == 1 and res.failed == 0 and res.retried == 0
        if last == "migrate":
            res = mem.migrate_pages([second])
            assert res.succeeded == 1 and res.failed == 0 and res.retried == 0
        else:
            mem.putback_movable_page(second)

        if worker == "flush":
            assert pool.flush_deferred() == (1 if protocol == "2016" else 0)
        else:
            assert wait_until(lambda: pool.total_pages == s.pages_before - PAGES), (
                f"the empty zspage was never freed: {pool.total_pages} pages"
            )
            assert wait_until(lambda: not s.workers())
        s.assert_clean()
        if protocol == "2016":
            assert pool.stats().deferred_frees == 1
        else:
            assert mem.vmstat["pgmigrate_released"] == 1 + (last == "migrate")
    finally:
        s.close()


# ----------------------------------------------------------------------
# (b) 2022: a deferred free locking a page that had already migrated out of the zspage


def _migrate_ahead_of_the_worker(s: Setup) -> list[str]:
    """The deferred free waits on page 3 (locked here); page 4, not yet locked by it, migrates
    away; page 3 is unlocked.  Returns what went wrong (empty: all good)."""
    pool, mem = s.pool, s.mem
    problems: list[str] = []
    p0, p1, p3, p4 = s.pfns[0], s.pfns[1], s.pfns[3], s.pfns[4]
    s.lock(p3)
    s.free_all()
    assert s.kicks, "the free should have been deferred"
    t, out = run_in_thread(pool.flush_deferred)
    try:
        # the worker locks pages 0, 1, 2 in order and sleeps on page 3
        if not wait_until(lambda: mem.page_locked(s.pfns[2]) and mem._page_waiters > 0):
            problems.append("the deferred free did not start waiting on page 3")
        # a page the worker holds cannot be isolated (isolation only trylocks)
        if mem.isolate_movable_page(p1):
            problems.append(f"page {p1}, locked by the worker, was isolated")
            mem.putback_movable_page(p1)
        # page 4 moves out of the zspage meanwhile
        if not mem.isolate_movable_page(p4):
            problems.append("page 4 could not be isolated")
            new4 = -1
        else:
            res = mem.migrate_pages([p4])
            new4 = res.moved.get(p4, -1)
            if res.succeeded != 1 or new4 < 0:
                problems.append(f"page 4 did not migrate: {res}")
            elif zspage(pool, s.zid)["pages"][4] != new4:
                problems.append("the chain does not hold the new page 4")
    finally:
        s.unlock(p3)
    t.join(WAIT)
    if t.is_alive():
        problems.append("the deferred free never finished")
        return problems
    if "error" in out:
        problems.append(f"the deferred free failed: {out['error']!r}")
    elif out.get("result") != 1:
        problems.append(f"the deferred free freed {out.get('result')} zspages, not 1")
    for pfn, what in [(p0, "page 0"), (p4, "old page 4"), (new4, "new page 4")]:
        if pfn >= 0 and (mem.page_in_use(pfn) or mem.page_locked(pfn)):
            problems.append(f"{what} (frame {pfn}) left in use or locked")
    if pool.total_pages != s.pages_before - PAGES:
        problems.append(f"total_pages {pool.total_pages}, expected {s.pages_before - PAGES}")
    if mem.nr_used != pool.total_pages:
        problems.append(f"{mem.nr_used} frames in use for {pool.total_pages} pool pages: a leak")
    try:
        pool.check()
    except CorruptionError as exc:
        problems.append(f"check: {exc}")
    return problems


@NEEDS_HOOK
def test_deferred_free_locks_the_page_that_replaced_a_migrated_one():
    """Kernel fix of 2022 ("zsmalloc: fix races between asynchronous zspage free and page
    migration"): the deferred free took the zspage's page list once and then slept on the page
    locks one by one; a page migrated out of the zspage meanwhile was then locked (and "freed")
    in place of the page that replaced it.

    Mainline: the worker sleeps on page 3 of the zspage while page 4 (not yet locked by it)
    migrates away.  It must lock and free the new page 4, not touch the old frame.
    """
    s = Setup("mainline", stub_kick=True, name="reg-b-ahead")
    try:
        assert _migrate_ahead_of_the_worker(s) == []
    finally:
        s.close()


@pytest.mark.model_only(reason="a mutant (the pre-2022 lock_zspage); needs the deferred-work hook")
def test_the_pre_2022_deferred_free_fails_that_scenario():
    """The scenario above catches the bug: with a deferred free that snapshots the chain before
    sleeping on its page locks (as before the 2022 fix), it reports a failure."""
    s = Setup("mainline", stub_kick=True, name="reg-b-broken")
    pool = s.pool

    def lock_zspage_snapshot(zs: Zspage) -> None:
        for pfn in pool.zspage_pages(zs):  # the chain as it is now, then sleep on each lock
            pool.memory.lock_page(pfn, timeout=2.0)

    pool.lock_zspage = lock_zspage_snapshot
    try:
        problems = _migrate_ahead_of_the_worker(s)
        assert problems, "the scenario did not notice the stale page list"
    finally:
        del pool.lock_zspage
        for pfn in range(s.mem.hwm):  # whatever the broken worker left locked
            if s.mem.page_locked(pfn):
                s.mem.unlock_page(pfn)
        try:
            s.close()
        except Exception:  # the broken run leaves a broken pool behind
            pass


@NEEDS_HOOK
@pytest.mark.parametrize("k", [0, 2, 4])
def test_deferred_free_waits_on_a_page_that_migrates_away(k):
    """Kernel fix of 2022 ("zsmalloc: fix races between asynchronous zspage free and page
    migration"), the direct case: the deferred free sleeps on the lock of page k while the VM,
    holding that lock, migrates the page.  After the wake-up it must look the page up again
    and lock the new one; the old frame is released exactly once.

    Mainline.  The free is made inside the VM's migrate call (so it finds page k locked and is
    deferred), and the worker is started there and observed asleep before the page moves.
    """
    s = Setup("mainline", stub_kick=True, name=f"reg-b-wait-{k}")
    pool, mem = s.pool, s.mem
    ops = pool.movable_ops
    real_migrate = ops.migrate
    old = s.pfns[k]
    seen: dict = {}

    def migrate_with_a_waiting_worker(dst: int, src: int, mode: MigrateMode) -> int:
        # the VM holds the locks of src and dst here
        s.free_all()
        seen["kicked"] = bool(s.kicks)
        t, out = run_in_thread(pool.flush_deferred)
        seen["thread"], seen["out"] = t, out
        seen["waiting"] = wait_until(
            lambda: mem._page_waiters > 0 and all(mem.page_locked(p) for p in s.pfns[:k]), 5.0
        )
        return real_migrate(dst, src, mode)

    ops.migrate = migrate_with_a_waiting_worker
    try:
        assert mem.isolate_movable_page(old)
        res = mem.migrate_pages([old])
        del ops.migrate
        assert seen["kicked"], "the free was not deferred"
        assert seen["waiting"], "the worker did not sleep on the page being migrated"
        assert res.succeeded == 1 and res.failed == 0
        new = res.moved[old]
        t, out = seen["thread"], seen["out"]
        t.join(WAIT)
        assert not t.is_alive(), "the deferred free never finished"
        assert "error" not in out, out.get("error")
        assert out["result"] == 1
        assert not mem.page_in_use(new) and not mem.page_locked(new)
        assert not mem.page_in_use(old) and not mem.page_locked(old)
        assert mem.vmstat["pgmigrate_success"] == 1
        s.assert_clean()
    finally:
        if "migrate" in vars(ops):
            del ops.migrate
        s.close()


@NEEDS_HOOK
def test_2016_a_zspage_awaiting_its_deferred_free_cannot_lose_a_page():
    """The 2016 design closes the 2022 window another way: isolation refuses a page of an
    empty zspage, so no page of a zspage the deferred free is working on can migrate."""
    s = Setup("2016", stub_kick=True, name="reg-b-2016")
    pool, mem = s.pool, s.mem
    try:
        s.lock(s.pfns[3])
        s.free_all()
        assert s.kicks
        t, out = run_in_thread(pool.flush_deferred)
        try:
            assert wait_until(lambda: mem.page_locked(s.pfns[2]) and mem._page_waiters > 0)
            assert not mem.isolate_movable_page(s.pfns[4])
            assert zspage(pool, s.zid)["isolated"] == 0
        finally:
            s.unlock(s.pfns[3])
        t.join(WAIT)
        assert not t.is_alive() and "error" not in out, out
        assert out["result"] == 1
        s.assert_clean()
    finally:
        s.close()


# ----------------------------------------------------------------------
# (c) 2023: fullness and isolation state written under different locks


def _isolation_agrees(pool: Pool) -> None:
    """Every zspage: its isolated count is the number of its isolated pages; in the 2016
    protocol it is on no list while isolated, else on exactly the list its inuse calls for.
    """
    mem = pool.memory
    snap = snapshot(pool)
    if isinstance(pool, model.Pool):  # the model keeps a count for free zspage ids too
        for zid in snap["free_zspage_ids"]:
            assert pool._zspages[zid].isolated == 0
    classes = {c["index"]: c for c in snap["classes"]}
    for zid, zs in snap["zspages"].items():
        cls = classes[zs["class"]]
        n_iso = sum(mem.page_isolated(p) for p in zs["pages"])
        lists = [fg for fg, lst in enumerate(cls["fullness"]) if zid in lst]
        if pool.migration == "2016":
            assert zs["isolated"] == n_iso, (zid, zs["isolated"], n_iso)
            if n_iso:
                assert lists == [] and zs["fg"] == FG_NONE, (zid, lists)
                continue
        else:
            assert zs["isolated"] == 0
        want = get_fullness_group(zs["inuse"], cls["objs_per_zspage"])
        assert lists == [want] == [zs["fg"]], (zid, lists)


@NEEDS_HOOK
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("seed", [1, 2])
def test_isolation_state_agrees_with_the_lists_after_every_step(protocol, seed):
    """Kernel fix of 2023 ("zsmalloc: fix races between modifications of fullness and
    isolated": the two were bit fields of one word, written under different locks, so one
    update could undo the other).  Focused form: a seeded sequence of isolate, putback,
    migrate, malloc, free and compact on one class; after every step each zspage's isolated
    count matches its isolated pages and its list membership matches both."""
    rng = random.Random(seed)
    pool = Pool(name=f"reg-c-{protocol}-{seed}", migration=protocol)
    pool.kick_deferred_free = lambda: None  # deferred frees run as a step below, not in a thread
    mem = pool.memory
    data: dict[int, bytes] = {}
    isolated: list[int] = []
    counts = {"isolate": 0, "putback": 0, "migrate": 0, "refused": 0}
    try:
        for step in range(400):
            r = rng.random()
            if r < 0.3 or len(data) < 5:
                size = rng.choice([REQ, 1500, 1570])  # all class 96
                h = pool.malloc(size)
                data[h] = pattern(step, size)
                pool.write(h, data[h])
            elif r < 0.5:
                h = rng.choice(list(data))
                pool.free(h)
                del data[h]
            elif r < 0.7 and mem.movable_pfns():
                pfn = rng.choice(mem.movable_pfns())
                if mem.isolate_movable_page(pfn):
                    isolated.append(pfn)
                    counts["isolate"] += 1
                else:
                    counts["refused"] += 1
            elif r < 0.85 and isolated:
                pfn = isolated.pop(rng.randrange(len(isolated)))
                mem.putback_movable_page(pfn)
                counts["putback"] += 1
            elif r < 0.97 and isolated:
                pfn = isolated.pop(rng.randrange(len(isolated)))
                res = mem.migrate_pages([pfn])
                assert res.succeeded == 1
                counts["migrate"] += 1
            elif r < 0.985:
                pool.compact()
            else:
                pool.flush_deferred()
            _isolation_agrees(pool)
            pool.check()
        assert counts["isolate"] > 30 and counts["putback"] > 10 and counts["migrate"] > 10, counts
        for pfn in isolated:
            mem.putback_movable_page(pfn)
        pool.flush_deferred()
        _isolation_agrees(pool)
        pool.check()
        for h, d in data.items():
            assert pool.read(h) == d
    finally:
        del pool.kick_deferred_free
        pool.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_isolation_and_fullness_under_concurrency(protocol):
    """Kernel fix of 2023 ("zsmalloc: fix races between modifications of fullness and
    isolated"), threaded form: two threads malloc and free objects of one class while a third
    isolates pages of that class and puts them back or migrates them, and a fourth compacts,
    for a bounded time.  Then check() and every object must be clean."""
    pool = Pool(name=f"reg-c-threads-{protocol}", migration=protocol)
    mem = pool.memory
    stop = threading.Event()
    errors: list[str] = []
    owned: list[dict[int, bytes]] = [{}, {}]
    counts = {"isolate": 0, "putback": 0, "migrate": 0, "malloc": 0, "compact": 0}

    def guard(fn, *args):
        def body():
            try:
                fn(*args)
            except BaseException as exc:
                errors.append(f"{fn.__name__}: {exc!r}")
                stop.set()

        return threading.Thread(target=body, daemon=True)

    def mutator(k: int) -> None:
        rng = random.Random(k)
        mine = owned[k]
        while not stop.is_set():
            if rng.random() < 0.55 or len(mine) < 10:
                size = rng.choice([REQ, 1500, 1570])
                h = pool.malloc(size)
                mine[h] = rng.randbytes(size)
                pool.write(h, mine[h])
                counts["malloc"] += 1
            else:
                h = rng.choice(list(mine))
                assert pool.read(h) == mine[h], "object changed"
                pool.free(h)
                del mine[h]
            if len(mine) > 150:
                for h in list(mine)[:75]:
                    pool.free(h)
                    del mine[h]

    def vm() -> None:
        rng = random.Random(9)
        held: list[int] = []
        while not stop.is_set():
            pfns = mem.movable_pfns()
            if pfns and len(held) < 6:
                pfn = rng.choice(pfns)
                if mem.isolate_movable_page(pfn, MigrateMode.ASYNC):
                    held.append(pfn)
                    counts["isolate"] += 1
            if held and rng.random() < 0.5:
                pfn = held.pop(rng.randrange(len(held)))
                if rng.random() < 0.5:
                    mem.putback_movable_page(pfn)
                    counts["putback"] += 1
                else:
                    res = mem.migrate_pages([pfn], passes=3)
                    counts["migrate"] += res.succeeded
        for pfn in held:
            mem.putback_movable_page(pfn)

    def compactor() -> None:
        while not stop.wait(0.01):
            pool.compact()
            counts["compact"] += 1

    threads = [guard(mutator, 0), guard(mutator, 1), guard(vm), guard(compactor)]
    try:
        for t in threads:
            t.start()
        stop.wait(1.5)
        stop.set()
        for t in threads:
            t.join(WAIT)
        assert not [t for t in threads if t.is_alive()], "a thread hung: deadlock?"
        assert not errors, errors
        assert counts["isolate"] > 20 and counts["migrate"] > 5 and counts["putback"] > 5, counts
        pool.flush_deferred()
        _isolation_agrees(pool)
        pool.check()
        for mine in owned:
            for h, d in mine.items():
                assert pool.read(h) == d
            for h in mine:
                pool.free(h)
        pool.flush_deferred()
        worker = f"zs-work-{pool.name}"
        assert wait_until(
            lambda: pool.total_pages == 0 and not [t for t in threading.enumerate() if t.name == worker]
        )
        assert mem.nr_used == 0
        pool.check()
    finally:
        stop.set()
        pool.close()


# ----------------------------------------------------------------------
# (d) 2025: callbacks reached for a page already destroyed


@pytest.fixture
def destroyed(impl):
    """Mainline: page 2 of a zspage is isolated, then every object is freed: the zspage is
    destroyed while the VM still holds the page.

    On the model, ``s.copies`` records every call of the pool's page copy (its callbacks are
    Python); the engine's are not reachable, so there it stays empty and the tests rely on
    what both show: no destination frame allocated, nothing in ``res.moved``."""
    s = Setup("mainline", name="reg-d")
    copies: list[tuple[int, int]] = []
    ops = s.pool.movable_ops if impl is model else None
    if ops is not None:
        real_move = ops.move_page

        def counting_move(cls, zid, dst, src):
            copies.append((dst, src))
            return real_move(cls, zid, dst, src)

        ops.move_page = counting_move
    s.copies = copies
    s.victim = s.pfns[2]
    assert s.mem.isolate_movable_page(s.victim)
    s.free_all()
    assert s.pool.total_pages == s.pages_before - PAGES, "the zspage should be destroyed at once"
    assert refcount(s.pool, s.victim) == 1 and s.mem.page_isolated(s.victim)
    assert not s.mem.page_movable(s.victim) and descriptor(s.pool, s.victim)["private"] == 0
    try:
        yield s
    finally:
        if ops is not None:
            del ops.move_page
        s.close()


def test_migrate_of_a_destroyed_page_succeeds_without_a_copy(destroyed):
    """The 6.17 rule for the destroyed-while-isolated page (KERNEL.md section 5, the 2025 fix):
    migrate reports success without copying, and the frame is released."""
    s = destroyed
    mem = s.mem
    allocs = mem.stats()["nr_alloc"]
    res = s.mem.migrate_pages([s.victim])
    assert (res.succeeded, res.failed, res.retried) == (1, 0, 0)
    assert res.moved == {}  # nothing moved anywhere
    assert s.copies == []
    assert mem.stats()["nr_alloc"] == allocs  # no destination was even taken
    assert mem.vmstat["pgmigrate_released"] == 1
    s.assert_clean()


def test_putback_of_a_destroyed_page_does_not_touch_a_zspage(destroyed, impl):
    """The 2025 fix, putback: nothing to do for a destroyed page, even when its zspage id was
    reused by a new zspage meanwhile.  (On the model, also: the pool's putback callback is not
    called at all.)"""
    s = destroyed
    pool, mem = s.pool, s.mem
    calls: list[int] = []
    ops = pool.movable_ops if impl is model else None
    if ops is not None:
        real_putback = ops.putback
        ops.putback = lambda pfn: (calls.append(pfn), real_putback(pfn))
    try:
        h = pool.malloc(REQ)  # a new zspage of the class, likely on the old zspage id
        pool.write(h, pattern(5, REQ))
        new_zid = descriptor(pool, pool.locate(h)[0])["private"]

        def state() -> tuple[int, int, int]:
            zs = zspage(pool, new_zid)
            return zs["fg"], zs["inuse"], zs["isolated"]

        before = state()
        mem.putback_movable_page(s.victim)
        assert calls == []
        assert state() == before
        assert not mem.page_in_use(s.victim)
        pool.check()
        assert pool.read(h) == pattern(5, REQ)
        pool.free(h)
    finally:
        if ops is not None:
            del ops.putback
    s.assert_clean()


def test_a_destroyed_page_cannot_be_isolated_again(destroyed, impl):
    """The 2025 fix, isolate: a page no longer in a zspage is refused, by the VM (not movable any
    more) and by zsmalloc's own callback if it is reached anyway (the model's: the engine's
    callbacks are not reachable from Python)."""
    s = destroyed
    pool, mem = s.pool, s.mem
    assert not mem.isolate_movable_page(s.victim)
    assert refcount(pool, s.victim) == 1  # the refused attempt gave its reference back
    if impl is model:
        assert not pool.movable_ops.isolate(s.victim, MigrateMode.SYNC)
    res = mem.migrate_pages([s.victim])
    assert res.succeeded == 1
    assert not mem.isolate_movable_page(s.victim)  # now a free frame
    s.assert_clean()


@pytest.mark.model_only(reason="calls the model pool's movable-page callbacks directly")
def test_callbacks_called_directly_on_a_destroyed_page(destroyed):
    """The owner's callbacks themselves tolerate the destroyed page: isolate refuses, migrate
    answers success and leaves the destination alone, putback does nothing."""
    s = destroyed
    pool, mem = s.pool, s.mem
    ops = pool.movable_ops
    dst = mem.alloc_page()
    mem.frame(dst)[:] = pattern(3, PAGE_SIZE)
    assert mem.trylock_page(dst) and mem.trylock_page(s.victim)
    try:
        assert not ops.isolate(s.victim, MigrateMode.SYNC)
        assert ops.migrate(dst, s.victim, MigrateMode.SYNC) == MIGRATEPAGE_SUCCESS
        ops.putback(s.victim)
    finally:
        mem.unlock_page(dst)
        mem.unlock_page(s.victim)
    assert s.copies == []
    assert bytes(mem.frame(dst)) == pattern(3, PAGE_SIZE)
    assert mem.refcount[dst] == 1 and not mem.page_movable(dst)  # not adopted
    mem.free_page(dst)
    pool.check()
    mem.putback_movable_page(s.victim)
    s.assert_clean()


def test_check_accepts_a_destroyed_page_the_vm_still_holds(destroyed):
    """In mainline a zspage may be destroyed while the VM holds one of its pages (KERNEL.md
    section 5): the frame stays allocated until migrate or putback.  That is a legal state, and
    check() must not report it as corruption ("memory has N frames in use, the pool holds M")."""
    s = destroyed
    assert vm_held(s.pool) == [s.victim]
    s.pool.check()


def test_a_page_held_by_a_reference_outlives_its_zspage_and_is_refused(impl):
    """The 2025 fix, the other way to reach a destroyed page: a pfn walker holds a reference
    (get_page) while the zspage is freed; isolating the page afterwards is refused (on the
    model, by the pool's own isolate callback too)."""
    s = Setup("mainline", name="reg-d-ref")
    pool, mem = s.pool, s.mem
    try:
        p = s.pfns[1]
        mem.get_page(p)
        s.free_all()
        assert pool.total_pages == s.pages_before - PAGES
        assert refcount(pool, p) == 1 and not mem.page_movable(p)
        assert not mem.isolate_movable_page(p)
        if impl is model:
            assert not pool.movable_ops.isolate(p, MigrateMode.SYNC)
        mem.put_page(p)
        s.assert_clean()
    finally:
        s.close()


@NEEDS_HOOK
def test_2016_a_zspage_with_an_isolated_page_is_not_destroyed():
    """The 2016 design avoids the destroyed page altogether: zs_free never destroys an isolated
    zspage; the migrate of its last isolated page copies it and hands it to the deferred free."""
    s = Setup("2016", stub_kick=True, name="reg-d-2016")
    pool, mem = s.pool, s.mem
    try:
        victim = s.pfns[2]
        assert mem.isolate_movable_page(victim)
        s.free_all()
        assert pool.total_pages == s.pages_before
        assert zspage(pool, s.zid)["inuse"] == 0 and zspage(pool, s.zid)["isolated"] == 1
        assert mem.page_movable(victim) and mem.private[victim] == s.zid
        pool.check()
        res = mem.migrate_pages([victim])
        assert res.succeeded == 1 and victim in res.moved
        assert s.kicks, "the last isolated page left an empty zspage: its free must be scheduled"
        assert pool.flush_deferred() == 1
        s.assert_clean()
    finally:
        s.close()


def test_the_2016_v3_protocol_fails_the_putback_scenario():
    """The scenario of the putback test catches the race of v3 of the 2016 patch (Chulmin Kim,
    April 2016): there zs_free destroys a zspage with an isolated page, and the putback that
    follows works on whatever zspage now has that id."""
    s = Setup("2016-v3", name="reg-d-v3")
    pool, mem = s.pool, s.mem
    try:
        victim = s.pfns[2]
        assert mem.isolate_movable_page(victim)
        s.free_all()
        h = pool.malloc(REQ)  # reuses the destroyed zspage's id
        pool.write(h, pattern(5, REQ))
        mem.putback_movable_page(victim)
        with pytest.raises(CorruptionError):
            pool.check()
    finally:
        try:
            s.close()
        except Exception:  # a corrupted pool may not close cleanly
            pass
