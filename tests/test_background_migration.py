"""mm.BackgroundMigration: the VM thread that moves an owner's pages while it works."""

from __future__ import annotations

import random

import pytest

from helpers import pattern
from zsmalloc import Pool
from zsmalloc.mm import BackgroundMigration

pytestmark = pytest.mark.usefixtures("each_backend")


def test_pages_move_and_ranges_empty_while_the_pool_works():
    pool = Pool(name="bg")
    rng = random.Random(3)
    data: dict[int, bytes] = {}
    vm = BackgroundMigration(pool.memory, seed=1, interval=0.0005, evacuate_every=3, evacuate_span=16)
    vm.start()
    try:
        for i in range(6000):
            size = rng.choice([100, 900, 1560, 2500, 4096])
            h = pool.malloc(size)
            d = pattern(i, size)
            pool.write(h, d)
            data[h] = d
            if i % 3 == 0:
                victim = rng.choice(list(data))
                pool.free(victim)
                del data[victim]
            if vm.moved and vm.evacuations >= 3 and i > 3000:
                break
    finally:
        vm.stop()
    assert not vm.is_alive()
    assert vm.moved > 0 and vm.evacuations >= 3
    counts = vm.to_dict()
    assert counts["pages_moved"] == vm.moved and counts["evacuations"] == vm.evacuations
    assert pool.memory.vmstat["pgmigrate_success"] >= vm.moved
    pool.check()
    for h, d in data.items():
        assert pool.read(h) == d
    pool.close()


def test_stop_is_bounded_and_idempotent_on_an_idle_arena():
    pool = Pool(name="bg-idle")
    vm = BackgroundMigration(pool.memory, interval=0.001)
    vm.start()
    vm.stop(timeout=5)
    vm.stop(timeout=5)
    assert vm.moved == 0 and vm.evacuations == 0
    pool.close()
