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
    get_fullness_group,
)

if TYPE_CHECKING:
    from zsmalloc.pool.zsmalloc import Pool, SizeClass, Zspage

POLICIES = ("ratio", "legacy")
SHRINK_STOP = -1
_LEGACY_ALMOST_EMPTY = range(ZS_INUSE_RATIO_10, 9)  # groups 1..8: up to 79% (the old 3/4 mark)
_LEGACY_ALMOST_FULL = range(9, ZS_INUSE_RATIO_100)


def _zid(zspage: Zspage) -> int:
    return zspage.zid


def _take(pool: Pool, cls: SizeClass, groups: range, lowest_zid: bool) -> Zspage | None:
    """Take a zspage off the first non-empty list of ``groups``: its head, or (legacy) its lowest id."""
    lists = cls.fullness_list
    if lowest_zid:
        candidates = [min(lists[fg], key=_zid) for fg in groups if lists[fg]]
        if not candidates:
            return None
        zspage = min(candidates, key=_zid)
    else:
        fg = next((fg for fg in groups if lists[fg]), -1)
        if fg < 0:
            return None
        zspage = next(reversed(lists[fg]))
    pool.remove_zspage(cls, zspage)
    return zspage


def isolate_src_zspage(pool: Pool, cls: SizeClass, policy: str) -> Zspage | None:
    """The emptiest partial zspage, off its list: where objects move from."""
    if policy == "legacy":
        zspage = _take(pool, cls, _LEGACY_ALMOST_EMPTY, True)
        return zspage if zspage is not None else _take(pool, cls, _LEGACY_ALMOST_FULL, True)
    return _take(pool, cls, range(ZS_INUSE_RATIO_10, ZS_INUSE_RATIO_99 + 1), False)


def isolate_dst_zspage(pool: Pool, cls: SizeClass, policy: str) -> Zspage | None:
    """The fullest partial zspage, off its list: where objects move to."""
    if policy == "legacy":
        zspage = _take(pool, cls, _LEGACY_ALMOST_FULL, True)
        return zspage if zspage is not None else _take(pool, cls, _LEGACY_ALMOST_EMPTY, True)
    return _take(pool, cls, range(ZS_INUSE_RATIO_99, ZS_INUSE_RATIO_10 - 1, -1), False)


def putback_zspage(pool: Pool, cls: SizeClass, zspage: Zspage) -> int:
    """Put a zspage back on the list its inuse calls for; return that group."""
    fg = get_fullness_group(zspage.inuse, cls.objs_per_zspage)
    pool.insert_zspage(cls, zspage, fg)
    return fg


def migrate_zspage(pool: Pool, cls: SizeClass, src: Zspage, dst: Zspage) -> int:
    """Move src's objects into dst until dst is full or src empty; return how many moved."""
    moved = 0
    for page in pool.zspage_pages(src):
        for handle, _ in pool.objs_in_page(cls, src, page):
            used_obj = pool.handle_to_obj(handle)
            free_obj = pool.obj_malloc(dst, handle)
            pool.zs_object_copy(cls, free_obj, used_obj)
            pool.obj_free(cls, used_obj)
            moved += 1
            if dst.inuse == cls.objs_per_zspage or src.inuse == 0:
                return moved
    return moved


def __zs_compact(pool: Pool, cls: SizeClass, policy: str) -> tuple[int, int]:
    """Compact one class; return (pages freed, objects moved)."""
    freed = moved = 0
    with pool._lock, cls.lock:  # the pool lock's write side
        dst: Zspage | None = None
        src: Zspage | None = None
        while pool.zs_can_compact(cls):
            if dst is None:
                dst = isolate_dst_zspage(pool, cls, policy)
                if dst is None:
                    break
            src = isolate_src_zspage(pool, cls, policy)
            if src is None:
                break
            if not pool.zspage_write_trylock(src):
                break
            moved += migrate_zspage(pool, cls, src, dst)
            pool.zspage_write_unlock(src)
            if putback_zspage(pool, cls, src) == ZS_INUSE_RATIO_0:
                pool.free_zspage(cls, src)
                freed += cls.pages_per_zspage
            src = None
            if get_fullness_group(dst.inuse, cls.objs_per_zspage) == ZS_INUSE_RATIO_100:
                putback_zspage(pool, cls, dst)
                dst = None
        if src is not None:
            putback_zspage(pool, cls, src)
        if dst is not None:
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
