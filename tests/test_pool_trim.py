"""Pool.trim: the handle and zspage tables give back their free tops; stale handles stay stale."""

from __future__ import annotations

import pytest

from helpers import pattern
from zsmalloc import InvalidHandleError, Pool
from zsmalloc.debug import snapshot

pytestmark = pytest.mark.usefixtures("each_backend")

SLOT_SHIFT = 32


def table_sizes(pool: Pool) -> tuple[int, int]:
    """(handle slots, zspage ids) the pool's two tables hold, free ones included."""
    snap = snapshot(pool)
    return snap["nr_handle_slots"], snap["nr_zspage_ids"]


def _fill(pool: Pool, n: int, size: int = 900) -> list[int]:
    handles = []
    for i in range(n):
        h = pool.malloc(size)
        pool.write(h, pattern(i, size))
        handles.append(h)
    return handles


def test_freeing_the_top_shrinks_both_tables_to_what_is_live():
    with Pool(name="trim") as pool:
        handles = _fill(pool, 6000)
        keep = handles[:1500]
        for h in handles[1500:]:
            pool.free(h)
        pool.flush_deferred()  # (it trims as well; trim again to see the result)
        h_len, zs_len = table_sizes(pool)
        assert not pool.trim()  # nothing more to give back
        top_slot = max(h >> SLOT_SHIFT for h in keep)
        assert h_len == max(top_slot + 1, 1024)
        assert zs_len < 6000 // 4  # zspages of the freed objects are gone from the table
        pool.check()
        for i, h in enumerate(keep):
            assert pool.read(h) == pattern(i, 900)


def test_a_trimmed_slot_never_accepts_its_old_handle_again():
    with Pool(name="trim-stale") as pool:
        handles = _fill(pool, 3000)
        for h in handles[1200:]:
            pool.free(h)
        pool.flush_deferred()
        stale = handles[-1]
        assert stale >> SLOT_SHIFT >= table_sizes(pool)[0]  # its slot is gone
        fresh = _fill(pool, 1800)  # the slots come back, with newer generations
        assert any(h >> SLOT_SHIFT == stale >> SLOT_SHIFT for h in fresh)
        with pytest.raises(InvalidHandleError):
            pool.free(stale)
        with pytest.raises(InvalidHandleError):
            pool.read(stale)
        pool.check()


def test_scattered_free_slots_stay():
    with Pool(name="trim-scattered") as pool:
        handles = _fill(pool, 4000)
        for h in handles[::2]:
            pool.free(h)
        pool.trim()  # cuts the growth slack above the highest live slot, no more
        top_slot = max(h >> SLOT_SHIFT for h in handles[1::2])
        snap = snapshot(pool)
        assert snap["nr_handle_slots"] == top_slot + 1
        assert len(snap["free_handle_slots"]) >= 2000 - 1  # the freed slots below it stay free for reuse
        assert not pool.trim()
        pool.check()
        for i, h in enumerate(handles[1::2]):
            assert pool.read(h) == pattern(2 * i + 1, 900)
