"""A Hypothesis state machine whose rules are the migration protocol's steps, across actors.

One pool on its own small Memory.  The rules are what the actors of
zsmalloc.protocheck do, but chosen and ordered by Hypothesis over longer
runs: the VM isolates a random in-use movable page, migrates or puts back a
page it holds isolated, takes and drops a page lock (a held lock defers the
free of a zspage that empties); the user mallocs, writes and frees objects of
a few sizes (most in one 3-page class, so that zspages empty often); zs_compact,
the deferred free, Memory.compact and the evacuation of a small pfn range run
in between.  After every step: ``pool.check()`` and a byte-exact read-back of
every live object.  At the end: locks dropped, isolated pages put back, the
deferred free flushed, everything freed, and no page or frame may be left.

Everything runs in this thread: the pool is made with ``background_work=False``
(the deferred free runs only as the ``flush`` rule), and its Memory with
``sleep_on_page_lock=False`` (any attempt to sleep on a page lock raises
WouldSleepError instead of hanging).  A step that would sleep on a lock the
machine holds is not enabled (its precondition).

Every machine runs on the model and on the engine.  It has teeth: run against
"2016-v3" it fails, on both.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from zsmalloc import CorruptionError, engine, model
from zsmalloc.mm import MigrateMode

SIZES = [3064, 3064, 3000, 200]  # 3064 and 3000: class 190 (3 pages, 4 objects per zspage)
MAX_OBJECTS = 6  # few live objects: zspages empty often, also while a page of theirs is isolated
MAX_LOCKS = 2

SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


class ProtocolMachine(RuleBasedStateMachine):
    PROTOCOL = "mainline"
    IMPL = model

    def __init__(self) -> None:
        super().__init__()
        self.memory = self.IMPL.Memory(capacity=256, sleep_on_page_lock=False)
        self.pool = self.IMPL.Pool(
            name="sm-proto", chain_size=4, memory=self.memory, migration=self.PROTOCOL, background_work=False
        )
        self.model: dict[int, bytes] = {}
        self.isolated: set[int] = set()
        self.locked: set[int] = set()

    # -- the user ---------------------------------------------------------

    @precondition(lambda self: len(self.model) < MAX_OBJECTS)
    @rule(size=st.sampled_from(SIZES), seed=st.integers(0, 2**16))
    def malloc(self, size, seed):
        h = self.pool.malloc(size)
        data = payload(seed, size)
        self.pool.write(h, data)
        self.model[h] = data

    @precondition(lambda self: self.model)
    @rule(data=st.data(), seed=st.integers(0, 2**16))
    def write(self, data, seed):
        h = data.draw(st.sampled_from(sorted(self.model)), label="handle")
        new = payload(seed, len(self.model[h]))
        self.pool.write(h, new)
        self.model[h] = new

    @precondition(lambda self: self.model)
    @rule(data=st.data(), adversarial=st.booleans())
    def free(self, data, adversarial):
        """Free an object; half the time one whose zspage has a page isolated (the race's victim)."""
        handles = sorted(self.model)
        if adversarial:
            handles = [h for h in handles if self.isolated & set(self.pool.zspage_pfns(h))] or handles
        h = data.draw(st.sampled_from(handles), label="handle")
        self.pool.free(h)
        del self.model[h]

    # -- the VM -------------------------------------------------------------

    def _movable(self) -> list[int]:
        return [pfn for pfn in self.memory.movable_pfns() if pfn not in self.locked]

    @precondition(lambda self: self._movable())
    @rule(data=st.data())
    def isolate(self, data):
        pfn = data.draw(st.sampled_from(self._movable()), label="pfn")
        if self.memory.isolate_movable_page(pfn):
            self.isolated.add(pfn)

    def _isolated_unlocked(self) -> list[int]:
        return sorted(self.isolated - self.locked)

    @precondition(lambda self: self._isolated_unlocked())
    @rule(data=st.data())
    def migrate(self, data):
        pfn = data.draw(st.sampled_from(self._isolated_unlocked()), label="pfn")
        res = self.memory.migrate_pages([pfn], MigrateMode.SYNC, putback=False)
        if res.succeeded:
            self.isolated.discard(pfn)
        else:
            assert res.failed_pfns == [pfn] and self.memory.page_isolated(pfn)

    @precondition(lambda self: self._isolated_unlocked())
    @rule(data=st.data())
    def putback(self, data):
        pfn = data.draw(st.sampled_from(self._isolated_unlocked()), label="pfn")
        self.memory.putback_movable_page(pfn)
        self.isolated.discard(pfn)

    def _lockable(self) -> list[int]:
        return [pfn for pfn in self.memory.used_pfns() if pfn not in self.locked]

    @precondition(lambda self: len(self.locked) < MAX_LOCKS and self._lockable())
    @rule(data=st.data())
    def lock(self, data):
        pfn = data.draw(st.sampled_from(self._lockable()), label="pfn")
        self.memory.get_page(pfn)
        assert self.memory.trylock_page(pfn)
        self.locked.add(pfn)

    @precondition(lambda self: self.locked)
    @rule(data=st.data())
    def unlock(self, data):
        pfn = data.draw(st.sampled_from(sorted(self.locked)), label="pfn")
        self.locked.discard(pfn)
        self.memory.unlock_page(pfn)
        self.memory.put_page(pfn)

    # -- compaction and the deferred free ------------------------------------

    @rule()
    def compact(self):
        self.pool.compact()

    @precondition(lambda self: not self.locked)  # the deferred free sleeps on page locks
    @rule()
    def flush(self):
        self.pool.flush_deferred()
        assert "free" not in self.pool.pending_work

    @rule()
    def mm_compact(self):
        self.memory.compact()

    @precondition(lambda self: self.memory.hwm > 0)
    @rule(data=st.data(), n=st.integers(1, 3))
    def evacuate(self, data, n):
        start = data.draw(st.integers(0, self.memory.hwm - 1), label="start")
        self.memory.evacuate(start, start + n)

    # -- after every step -------------------------------------------------------

    @invariant()
    def consistent(self):
        self.pool.check()
        for h, data in self.model.items():
            assert self.pool.read(h) == data, f"handle {h:#x} reads back wrong"

    def teardown(self):
        try:
            for pfn in sorted(self.locked):
                self.memory.unlock_page(pfn)
                self.memory.put_page(pfn)
            self.locked.clear()
            for pfn in sorted(self.isolated):
                self.memory.putback_movable_page(pfn)
            self.isolated.clear()
            self.pool.flush_deferred()
            self.consistent()
            for h in list(self.model):
                self.pool.free(h)
                del self.model[h]
            self.pool.flush_deferred()
            self.pool.check()
            assert self.pool.total_pages == 0, f"{self.pool.total_pages} pages left in an empty pool"
            assert self.memory.nr_used == 0, f"{self.memory.nr_used} frames leaked"
        finally:
            self.memory.close()


def machine(protocol: str, impl) -> type[ProtocolMachine]:
    name = f"{protocol.replace('-', '_')}_{impl.__name__.rsplit('.', 1)[-1]}"
    return type(f"Machine_{name}", (ProtocolMachine,), {"PROTOCOL": protocol, "IMPL": impl})


TestMainline = machine("mainline", model).TestCase
TestMainline.settings = SETTINGS
Test2016 = machine("2016", model).TestCase
Test2016.settings = SETTINGS
TestMainlineEngine = machine("mainline", engine).TestCase
TestMainlineEngine.settings = SETTINGS
Test2016Engine = machine("2016", engine).TestCase
Test2016Engine.settings = SETTINGS


@pytest.mark.parametrize("impl", [model, engine], ids=["model", "engine"])
def test_the_machine_catches_v3(impl):
    """The same rules against the reviewed patch: isolate, free the zspage empty, put back."""
    quick = settings(SETTINGS, max_examples=400, phases=[Phase.generate], report_multiple_bugs=False)
    with pytest.raises(CorruptionError, match="isolated"):
        run_state_machine_as_test(machine("2016-v3", impl), settings=quick)
