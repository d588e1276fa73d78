"""The engine against the model, step by step.

A Hypothesis state machine drives ``zsmalloc.model.Pool`` and
``zsmalloc.engine.Pool``, each on a Memory of the same capacity, with the
same operations: malloc (any size, and with page allocation made to fail),
write, read, read_into, map, free (live, freed and made-up handles), compact
(naming the pool's grouping, another or none), flush the deferred free,
trim, and the VM's drain and
shrink of the arena, and the deferred work they queued (the pools run
without worker threads, ``background_work=False``, so that deferred work runs
when the test says and not when a thread is scheduled).  Every call must give the same result, or raise the
same error with the same message, on both.  After every step the two
``zsmalloc.debug.snapshot(pool, data=True)`` must be equal: both follow one
deterministic algorithm, so handles, locations, fullness lists (in order),
under either fullness grouping (6.4's ratios or the legacy groups before 6.4),
zspage ids, header words, descriptors, frames in use and every object's
bytes agree exactly.

The VM's side runs too: ``move_pages`` of a sample of movable frames,
``isolate_movable_page`` now and ``migrate_pages`` or
``putback_movable_page`` steps later (with frees, compaction and the
deferred free in between: the window of the 2016 race), ``evacuate`` of a
pfn range and ``Memory.compact``, under the mainline and the 2016 protocols.

What is left out, and why: ``inject_failures(probability=...)`` (the model
draws from Python's ``random``, the engine from its own generator).
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from zsmalloc import RULE_MIN_WASTE, RULE_USED_PERCENTAGE, ZsmallocError, engine, model
from zsmalloc.debug import snapshot

TAG = 7  # both pools' handle tag (pool/handles.py): by default every pool has its own

SIZES = st.one_of(
    st.integers(1, 4096),
    st.sampled_from([1, 24, 25, 3000, 3264, 3625, 3626, 4095, 4096]),
    st.integers(1000, 2600),  # the kernel-build mass: zspages of several pages, objects across pages
)


def first_difference(a: object, b: object, path: str = "") -> str | None:
    """Where two snapshots part, as a readable path, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=repr):
            if key not in a or key not in b:
                return f"{path}[{key!r}] only in {'engine' if key in b else 'model'}"
            found = first_difference(a[key], b[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{path}: model {a!r}, engine {b!r}"


def outcome(call):
    """A call's result, or its error's type and message."""
    try:
        return "ok", call()
    except (ZsmallocError, ValueError, KeyError, TypeError) as exc:
        return type(exc).__name__, str(exc)


class Differential(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pools: tuple = ()
        self.live: list[int] = []
        self.dead: list[int] = []
        self.isolated: list[int] = []

    @initialize(
        chain=st.sampled_from([4, 8, 16]),
        rule=st.sampled_from([RULE_MIN_WASTE, RULE_USED_PERCENTAGE]),
        capacity=st.sampled_from([96, 4096]),
        max_pages=st.one_of(st.none(), st.integers(20, 200)),
        migration=st.sampled_from(["mainline", "2016"]),
        fullness=st.sampled_from(["ratio", "legacy"]),
    )
    def setup(
        self, chain: int, rule: str, capacity: int, max_pages: int | None, migration: str, fullness: str
    ) -> None:
        self.pools = tuple(
            impl.Pool(
                name="diff",
                chain_size=chain,
                memory=impl.Memory(capacity),
                max_pages=max_pages,
                class_rule=rule,
                fullness=fullness,
                migration=migration,
                # deferred work waits for run_pending_work / flush_deferred: a
                # worker thread of each would run it whenever it is scheduled
                background_work=False,
                handle_tag=TAG,  # one tag for both: the same handles
            )
            for impl in (model, engine)
        )

    def both(self, call):
        results = [outcome(lambda p=p: call(p)) for p in self.pools]
        assert results[0] == results[1], f"model {results[0]!r}, engine {results[1]!r}"
        return results[0]

    def teardown(self) -> None:
        for pfn in self.isolated:
            self.both(lambda p, pfn=pfn: p.memory.putback_movable_page(pfn))
        for pool in self.pools:
            pool.close()

    # ------------------------------------------------------------------

    @rule(size=SIZES)
    def malloc(self, size: int) -> None:
        kind, value = self.both(lambda p: p.malloc(size))
        if kind == "ok":
            self.live.append(value)

    @rule(size=SIZES, fail=st.integers(1, 3))
    def malloc_with_failing_pages(self, size: int, fail: int) -> None:
        for p in self.pools:
            p.memory.inject_failures(next_n=fail)
        try:
            kind, value = self.both(lambda p: p.malloc(size))
        finally:
            for p in self.pools:
                p.memory.clear_failures()
        if kind == "ok":
            self.live.append(value)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self.live))
        size = self.pools[0].handle_size(h)
        offset = data.draw(st.integers(0, size))
        n = data.draw(st.integers(0, size - offset + 2))  # past the end now and then
        payload = data.draw(st.binary(min_size=n, max_size=n))
        self.both(lambda p: p.write(h, payload, offset))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self.live))
        length = data.draw(st.one_of(st.none(), st.integers(-1, 4100)))
        offset = data.draw(st.integers(-1, 4100))
        self.both(lambda p: p.read(h, length, offset))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def read_into(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self.live))
        n = data.draw(st.integers(0, 4097))
        offset = data.draw(st.integers(0, 64))
        self.both(lambda p: (lambda buf: (p.read_into(h, buf, offset), bytes(buf)))(bytearray(n)))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def map_and_read(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self.live))
        length = data.draw(st.one_of(st.none(), st.integers(0, 4096)))
        offset = data.draw(st.integers(0, 100))

        def mapped(p):
            with p.map(h, length, offset) as view:
                return bytes(view)

        self.both(mapped)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        h = self.live.pop(data.draw(st.integers(0, len(self.live) - 1)))
        self.both(lambda p: p.free(h))
        self.dead.append(h)

    @rule(data=st.data())
    def free_bad_handle(self, data: st.DataObject) -> None:
        made_up = st.one_of(st.integers(-(2**70), 2**70), st.integers(0, 2**40))
        h = data.draw(st.sampled_from(self.dead) if self.dead else made_up)
        if h in self.live:
            return
        self.both(lambda p: p.free(h))

    @rule(policy=st.sampled_from([None, "ratio", "legacy", "tenths"]))
    def compact(self, policy: str | None) -> None:
        self.both(lambda p: p.compact(policy))

    @rule()
    def flush_deferred(self) -> None:
        self.both(lambda p: p.flush_deferred())

    @rule()
    def run_pending_work(self) -> None:
        self.both(lambda p: (p.pending_work(), p.run_pending_work()))

    @rule()
    def trim(self) -> None:
        self.both(lambda p: p.trim())

    @rule()
    def drain_pages(self) -> None:
        self.both(lambda p: p.memory.drain_pages())

    @rule()
    def shrink_arena(self) -> None:
        self.both(lambda p: p.memory.shrink_arena())

    @rule()
    def sizes_and_counts(self) -> None:
        self.both(lambda p: (len(p), p.total_pages, p.shrinker_count(), p.format_classes()))

    # ------------------------------------------------------------------
    # the VM

    @rule(data=st.data())
    def move_pages(self, data: st.DataObject) -> None:
        movable = self.pools[0].memory.movable_pfns()
        assert movable == self.pools[1].memory.movable_pfns()
        if movable:
            pfns = data.draw(st.lists(st.sampled_from(movable), max_size=32, unique=True))
            self.both(lambda p: vars(p.memory.move_pages(pfns)))

    @rule(data=st.data())
    def isolate(self, data: st.DataObject) -> None:
        movable = self.pools[0].memory.movable_pfns()
        if movable:
            pfn = data.draw(st.sampled_from(movable))
            _, ok = self.both(lambda p: p.memory.isolate_movable_page(pfn))
            if ok:
                self.isolated.append(pfn)

    @precondition(lambda self: self.isolated)
    @rule(data=st.data(), putback=st.booleans())
    def migrate_or_putback_isolated(self, data: st.DataObject, putback: bool) -> None:
        pfn = self.isolated.pop(data.draw(st.integers(0, len(self.isolated) - 1)))
        if putback:
            self.both(lambda p: p.memory.putback_movable_page(pfn))
        else:
            self.both(lambda p: vars(p.memory.migrate_pages([pfn])))

    @rule(data=st.data())
    def evacuate(self, data: st.DataObject) -> None:
        hwm = self.pools[0].memory.hwm
        start = data.draw(st.integers(0, max(hwm, 1)))
        span = data.draw(st.integers(1, 64))
        self.both(lambda p: vars(p.memory.evacuate(start, start + span)))

    @rule()
    def memory_compact(self) -> None:
        self.both(lambda p: vars(p.memory.compact()))

    # ------------------------------------------------------------------

    @invariant()
    def same_state(self) -> None:
        if not self.pools:
            return
        a, b = (snapshot(p, data=True) for p in self.pools)
        assert a == b, first_difference(a, b)
        self.pools[1].check()


Differential.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestDifferential = Differential.TestCase


@pytest.mark.parametrize(
    ("fullness", "chain", "rule"), [("ratio", 8, RULE_MIN_WASTE), ("legacy", 4, RULE_USED_PERCENTAGE)]
)
def test_long_churn_agrees(fullness: str, chain: int, rule: str) -> None:
    """A longer deterministic churn than the state machine's, compaction included."""
    import random

    rng = random.Random(7)
    pools = [
        impl.Pool(
            name="long",
            chain_size=chain,
            class_rule=rule,
            fullness=fullness,
            memory=impl.Memory(1 << 14),
            migration="2016",
            handle_tag=TAG,
        )
        for impl in (model, engine)
    ]
    live: list[int] = []
    for step in range(6000):
        if live and rng.random() < 0.45:
            h = live.pop(rng.randrange(len(live)))
            for p in pools:
                p.free(h)
        else:
            size = rng.choice([rng.randint(1, 4096), rng.randint(900, 2600)])
            hs = {p.malloc(size) for p in pools}
            assert len(hs) == 1
            h = hs.pop()
            payload = rng.randbytes(size)
            for p in pools:
                p.write(h, payload)
            live.append(h)
        if step % 1500 == 1499:
            assert pools[0].compact() == pools[1].compact()
            assert pools[0].format_classes() == pools[1].format_classes()
        if step % 700 == 350:
            pfns = pools[0].memory.movable_pfns()
            assert pfns == pools[1].memory.movable_pfns()
            sample = rng.sample(pfns, min(64, len(pfns)))
            assert vars(pools[0].memory.move_pages(sample)) == vars(pools[1].memory.move_pages(sample))
        if step % 2000 == 1999:
            assert vars(pools[0].memory.compact()) == vars(pools[1].memory.compact())
    a, b = (snapshot(p, data=True) for p in pools)
    assert a == b, first_difference(a, b)
    for p in pools:
        p.close()
