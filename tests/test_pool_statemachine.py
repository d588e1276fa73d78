"""A Hypothesis state machine: a Pool against a plain dict model, checked after every step.

One run per configuration (chain size 4, 8, 16 x both class rules) and per
implementation (the model and the engine, conftest.py's ``each_backend``).  The
model maps each live handle to its bytes; page counts are bounded from the
canonical class table: a class holding n live objects in zspages of N objects
and P pages uses between ceil(n / N) and n zspages (no zspage is ever empty:
no page is locked here, so nothing is deferred).
"""

from __future__ import annotations

import functools
import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from zsmalloc import RULE_MIN_WASTE, RULE_USED_PERCENTAGE, InvalidHandleError, Pool, size_classes
from zsmalloc.debug import snapshot
from zsmalloc.pool.zsmalloc import OBJ_ALLOCATED_TAG

pytestmark = pytest.mark.usefixtures("each_backend")

HEADER = 8
PAGE = 4096
BOUNDARY_SIZES = [1, 2, 23, 24, 25, 40, 41, 1560, 3257, 3264, 3624, 3625, 3626, 3832, 3833, 4095, 4096]

# a few common sizes, so that objects share classes and zspages (and straddle pages)
COMMON_SIZES = [100, 700, 1560, 2000, 3000]
sizes = st.one_of(st.sampled_from(BOUNDARY_SIZES), st.sampled_from(COMMON_SIZES), st.integers(1, 4096))
seeds = st.integers(0, 2**32 - 1)


def kernel_class_index(size_with_header: int) -> int:
    if size_with_header <= 32:
        return 0
    return min(-(-(size_with_header - 32) // 16), 254)


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


@functools.cache
def spec_table(chain: int, rule: str) -> dict:
    """Request size -> the canonical class serving it (merged classes go to the next one kept)."""
    by_raw = {}
    specs = sorted(size_classes(chain, rule), key=lambda s: s.index)
    k = 0
    for raw in range(255):
        while specs[k].index < raw:
            k += 1
        by_raw[raw] = specs[k]
    return {size: by_raw[kernel_class_index(size + HEADER)] for size in range(1, 4097)}


class PoolMachine(RuleBasedStateMachine):
    CHAIN = 8
    RULE = RULE_MIN_WASTE

    handles = Bundle("handles")
    freed = Bundle("freed")

    def __init__(self) -> None:
        super().__init__()
        self.pool = Pool(name=f"sm-{self.CHAIN}", chain_size=self.CHAIN, class_rule=self.RULE)
        self.model: dict[int, bytearray] = {}
        self.spec_of_size = spec_table(self.CHAIN, self.RULE)

    def teardown(self) -> None:
        self.pool.close()

    # -- rules ------------------------------------------------------------

    @rule(target=handles, size=sizes, seed=seeds)
    def malloc(self, size, seed):
        h = self.pool.malloc(size)
        assert isinstance(h, int) and h > 0 and h % 2 == 0
        assert h not in self.model
        data = payload(seed, size)
        self.pool.write(h, data)
        self.model[h] = bytearray(data)
        return h

    @rule(h=handles, data=st.data())
    def write(self, h, data):
        obj = self.model[h]
        size = len(obj)
        offset = data.draw(st.one_of(st.just(0), st.integers(0, size)), label="offset")
        n = data.draw(st.integers(0, size - offset), label="length")
        chunk = payload(data.draw(seeds, label="seed"), n)
        self.pool.write(h, chunk, offset)
        obj[offset : offset + n] = chunk

    @rule(h=handles)
    def read_full(self, h):
        assert self.pool.read(h) == bytes(self.model[h])
        assert self.pool.handle_size(h) == len(self.model[h])

    @rule(h=handles, data=st.data())
    def read_partial(self, h, data):
        obj = self.model[h]
        offset = data.draw(st.integers(0, len(obj)), label="offset")
        n = data.draw(st.integers(0, len(obj) - offset), label="length")
        assert self.pool.read(h, n, offset) == bytes(obj[offset : offset + n])

    @rule(h=handles, data=st.data())
    def read_into(self, h, data):
        obj = self.model[h]
        offset = data.draw(st.integers(0, len(obj)), label="offset")
        buf = bytearray(data.draw(st.integers(0, len(obj) - offset), label="length"))
        assert self.pool.read_into(h, buf, offset) == len(buf)
        assert buf == obj[offset : offset + len(buf)]

    @rule(h=handles, data=st.data())
    def map(self, h, data):
        obj = self.model[h]
        offset = data.draw(st.integers(0, len(obj)), label="offset")
        n = data.draw(st.integers(0, len(obj) - offset), label="length")
        with self.pool.map(h, n, offset) as view:
            assert view.readonly
            assert bytes(view) == bytes(obj[offset : offset + n])

    @rule(target=freed, h=consumes(handles))
    def free(self, h):
        self.pool.free(h)
        del self.model[h]
        return h

    @rule(h=freed)
    def use_freed_handle(self, h):
        assert h not in self.model
        for call in (self.pool.free, self.pool.read, self.pool.handle_size):
            try:
                call(h)
            except InvalidHandleError as exc:
                assert isinstance(exc, KeyError)
            else:
                raise AssertionError(f"{call.__name__} accepted freed handle {h:#x}")

    @rule()
    def class_stats_agree(self):
        rows = {r.index: r for r in self.pool.class_stats()}
        per_class: dict[int, int] = {}
        for obj in self.model.values():
            i = self.spec_of_size[len(obj)].index
            per_class[i] = per_class.get(i, 0) + 1
        for index, row in rows.items():
            assert row.obj_used == per_class.get(index, 0)
            assert row.empty_zspages == 0
        assert sum(r.pages_used for r in rows.values()) == self.pool.total_pages

    @rule()
    def flush_deferred(self):
        # nothing here locks a page, so no free was ever deferred
        assert self.pool.flush_deferred() == 0

    # -- invariants -------------------------------------------------------

    @invariant()
    def pool_is_consistent(self):
        self.pool.check()

    @invariant()
    def objects_lie_where_the_kernel_keeps_them(self):
        """Read every object straight from its frames (KERNEL.md section 2), not through the pool."""
        mem = self.pool.memory
        descriptors = snapshot(self.pool)["pages"]
        for h, obj in self.model.items():
            spec = self.spec_of_size[len(obj)]
            pfn, idx = self.pool.locate(h)
            frame = mem.frame(pfn)
            if spec.huge:
                assert idx == 0
                assert descriptors[pfn]["index"] == h | OBJ_ALLOCATED_TAG
                assert frame[: len(obj)] == obj
                continue
            start = idx * spec.size % PAGE
            assert int.from_bytes(frame[start : start + HEADER], "little") == h | OBJ_ALLOCATED_TAG
            first = min(len(obj), PAGE - start - HEADER)
            assert frame[start + HEADER : start + HEADER + first] == obj[:first]
            if first < len(obj):  # the rest at the start of the next page of the chain
                assert mem.frame(descriptors[pfn]["next"])[: len(obj) - first] == obj[first:]

    @invariant()
    def counts_match_the_model(self):
        pool = self.pool
        assert len(pool) == len(self.model)
        per_class: dict[int, int] = {}
        spec = {}
        for obj in self.model.values():
            s = self.spec_of_size[len(obj)]
            spec[s.index] = s
            per_class[s.index] = per_class.get(s.index, 0) + 1
        low = high = pages = 0
        for row in pool.class_stats():
            n = per_class.get(row.index, 0)
            assert row.obj_used == n, f"class {row.index}"
            zspages = row.obj_allocated // row.objs_per_zspage
            pages += zspages * row.pages_per_zspage
            if n:
                s = spec[row.index]
                assert (row.objs_per_zspage, row.pages_per_zspage) == (s.objs_per_zspage, s.pages_per_zspage)
                assert -(-n // s.objs_per_zspage) <= zspages <= n
                low += -(-n // s.objs_per_zspage) * s.pages_per_zspage
                high += n * s.pages_per_zspage
            else:
                assert zspages == 0, f"class {row.index} keeps an empty zspage"
        assert low <= pool.total_pages <= high
        assert pool.total_pages == pages
        assert pool.memory.nr_used == pool.total_pages


SETTINGS = settings(
    max_examples=25,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("rule", [RULE_MIN_WASTE, RULE_USED_PERCENTAGE])
@pytest.mark.parametrize("chain", [4, 8, 16])
def test_pool_state_machine(chain, rule):
    name = f"Chain{chain}{rule.title().replace('-', '')}"
    machine = type(f"PoolMachine{name}", (PoolMachine,), {"CHAIN": chain, "RULE": rule})
    run_state_machine_as_test(machine, settings=SETTINGS)
