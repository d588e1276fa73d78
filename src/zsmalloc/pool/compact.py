"""Compaction: move objects between zspages of a class so that zspages empty (zs_compact).

For each canonical class, largest first, under the pool lock (write side)
and the class lock::

    dst = head of the fullest partial group     (99% down to 10%)
    src = head of the emptiest partial group    (10% up to 99%)
    while zs_can_compact(class):
        move src's allocated objects, in index order, into dst
            (obj_malloc in dst, copy, obj_free in src, re-point the handle)
        until dst is full or src is empty
        src empty  -> free it, count its pages in pages_compacted
        dst full   -> put it back, take the next fullest as dst

A source zspage whose lock a reader holds (an object is mapped) stops the
class: compaction only trylocks.  Both zspages are off their lists while they
are worked on (``isolate_src_zspage`` / ``isolate_dst_zspage``), so no
allocation lands in them meanwhile; in the 2016 protocol an isolated zspage is
on no list and so is never picked.

``policy="legacy"`` reproduces the choice before the 2023 rework (6.4), which
had only two partial lists, "almost empty" (at most 3/4 in use) and "almost
full": source from almost empty, else almost full; destination from almost
full, else almost empty; within a list, order carried no fullness
information (zspage-id order stands in for it here).  It exists to measure
what the rework bought.

The shrinker interface (``shrinker_count`` / ``shrinker_scan``) is what the
kernel's memory-pressure reclaim calls; ``Pool(auto_compact_pages=N)`` runs it
in the background once N pages are freeable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zsmalloc.pool.constants import (
    ZS_INUSE_RATIO_0,
    ZS_INUSE_RATIO_10,
    ZS_INUSE_RATIO_99,
    ZS_INUSE_RATIO_100,
)

if TYPE_CHECKING:
    from zsmalloc.pool.zsmalloc import Pool, SizeClass

POLICIES = ("ratio", "legacy")
SHRINK_STOP = -1
_LEGACY_ALMOST_EMPTY = range(ZS_INUSE_RATIO_10, 9)  # groups 1..8: up to 79% (the old 3/4 mark)
_LEGACY_ALMOST_FULL = range(9, ZS_INUSE_RATIO_100)


def _take(pool: Pool, cls: SizeClass, groups: range | list[int], lowest_zid: bool) -> int:
    lists = cls.fullness_list
    if lowest_zid:
        candidates = [min(lists[fg]) for fg in groups if lists[fg]]
        if not candidates:
            return -1
        zid = min(candidates)
    else:
        fg = next((fg for fg in groups if lists[fg]), -1)
        if fg < 0:
            return -1
        zid = next(reversed(lists[fg]))
    pool.remove_zspage(cls, zid)
    return zid


def isolate_src_zspage(pool: Pool, cls: SizeClass, policy: str) -> int:
    if policy == "legacy":
        zid = _take(pool, cls, _LEGACY_ALMOST_EMPTY, True)
        return zid if zid >= 0 else _take(pool, cls, _LEGACY_ALMOST_FULL, True)
    return _take(pool, cls, range(ZS_INUSE_RATIO_10, ZS_INUSE_RATIO_99 + 1), False)


def isolate_dst_zspage(pool: Pool, cls: SizeClass, policy: str) -> int:
    if policy == "legacy":
        zid = _take(pool, cls, _LEGACY_ALMOST_FULL, True)
        return zid if zid >= 0 else _take(pool, cls, _LEGACY_ALMOST_EMPTY, True)
    return _take(pool, cls, range(ZS_INUSE_RATIO_99, ZS_INUSE_RATIO_10 - 1, -1), False)


def putback_zspage(pool: Pool, cls: SizeClass, zid: int) -> int:
    fg = cls.fg_of_inuse[pool._zs_inuse[zid]]
    pool.insert_zspage(cls, zid, fg)
    return fg


def migrate_zspage(pool: Pool, cls: SizeClass, src: int, dst: int) -> int:
    """Move src's objects into dst until dst is full or src empty; return how many moved."""
    moved = 0
    n = cls.objs_per_zspage
    for page in pool.zspage_pages(src):
        for slot, _ in pool.objs_in_page(cls, src, page):
            handle = pool._h_val[slot]
            old = pool._h_obj[slot]
            new = pool.obj_malloc(cls, dst, handle)
            pool.obj_copy(cls, new, old)
            pool.obj_free(cls, src, old)
            pool._h_obj[slot] = new
            moved += 1
            if pool._zs_inuse[dst] == n or pool._zs_inuse[src] == 0:
                return moved
    return moved


def __zs_compact(pool: Pool, cls: SizeClass, policy: str) -> tuple[int, int]:
    """Compact one class; return (pages freed, objects moved)."""
    freed = moved = 0
    with pool._lock, cls.lock:
        dst = src = -1
        while pool.zs_can_compact(cls):
            if dst < 0:
                dst = isolate_dst_zspage(pool, cls, policy)
                if dst < 0:
                    break
            src = isolate_src_zspage(pool, cls, policy)
            if src < 0:
                break
            if not pool.zspage_write_trylock(src):
                break
            moved += migrate_zspage(pool, cls, src, dst)
            pool.zspage_write_unlock(src)
            if putback_zspage(pool, cls, src) == ZS_INUSE_RATIO_0:
                pool.free_zspage(cls, src)
                freed += cls.pages_per_zspage
            src = -1
            if pool._zs_inuse[dst] == cls.objs_per_zspage:
                putback_zspage(pool, cls, dst)
                dst = -1
        if src >= 0:
            putback_zspage(pool, cls, src)
        if dst >= 0:
            putback_zspage(pool, cls, dst)
    return freed, moved


def zs_compact(pool: Pool, policy: str = "ratio") -> int:
    """Compact every canonical class, largest first; return the pages freed by this call."""
    if policy not in POLICIES:
        raise ValueError(f"compaction policy must be one of {POLICIES}, not {policy!r}")
    freed = moved = 0
    for cls in pool.classes:
        f, m = __zs_compact(pool, cls, policy)
        freed += f
        moved += m
    with pool._cache_lock:
        events = pool.events
        events["pages_compacted"] += freed
        events["objs_compacted"] += moved
        events["compactions"] += 1
    return freed


def shrinker_count(pool: Pool) -> int:
    """``zs_shrinker_count``: pages compaction could free now."""
    total = 0
    for cls in pool.classes:
        with cls.lock:
            total += pool.zs_can_compact(cls)
    return total


def shrinker_scan(pool: Pool) -> int:
    """``zs_shrinker_scan``: compact; the pages freed, or SHRINK_STOP if none."""
    freed = zs_compact(pool)
    return freed if freed else SHRINK_STOP
