"""Compaction: move objects between zspages of a class so that zspages empty (zs_compact).

Which kernel this models: 6.4 and later (the 2023 rework), for pools of the
default grouping, ``fullness="ratio"``.  A pool made with
``fullness="legacy"`` compacts as 6.1 does: ``__zs_compact`` of
pool/legacy.py, with its own choice of zspages and loop.  ``zs_compact``
walks the classes and counts for both.

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

The shrinker interface (``shrinker_count`` / ``shrinker_scan``) is what the
kernel's memory-pressure reclaim calls; ``Pool(auto_compact_pages=N)`` runs it
in the background once N pages are freeable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zsmalloc.pool import legacy
from zsmalloc.pool.constants import (
    FULLNESS_GROUPINGS,
    FULLNESS_LEGACY,
    ZS_INUSE_RATIO_0,
    ZS_INUSE_RATIO_10,
    ZS_INUSE_RATIO_99,
)

if TYPE_CHECKING:
    from zsmalloc.pool.zsmalloc import Pool, SizeClass, Zspage

SHRINK_STOP = -1


def _take(pool: Pool, cls: SizeClass, groups: range) -> Zspage | None:
    """Take the head of the first non-empty list of ``groups`` off its list."""
    lists = cls.fullness_list
    fg = next((fg for fg in groups if lists[fg]), -1)
    if fg < 0:
        return None
    zspage = next(reversed(lists[fg]))
    pool.remove_zspage(cls, zspage)
    return zspage


def isolate_src_zspage(pool: Pool, cls: SizeClass) -> Zspage | None:
    """The emptiest partial zspage, off its list: where objects move from."""
    return _take(pool, cls, range(ZS_INUSE_RATIO_10, ZS_INUSE_RATIO_99 + 1))


def isolate_dst_zspage(pool: Pool, cls: SizeClass) -> Zspage | None:
    """The fullest partial zspage, off its list: where objects move to."""
    return _take(pool, cls, range(ZS_INUSE_RATIO_99, ZS_INUSE_RATIO_10 - 1, -1))


def migrate_zspage(pool: Pool, cls: SizeClass, src: Zspage, dst: Zspage) -> int:
    """Move src's objects into dst until dst is full or src empty; return how many moved."""
    moved = 0
    for page in pool.zspage_pages(src):
        for handle, _ in pool.objs_in_page(cls, src, page):
            pool.migrate_obj(cls, dst, handle)
            moved += 1
            if dst.inuse == cls.objs_per_zspage or src.inuse == 0:
                return moved
    return moved


def __zs_compact(pool: Pool, cls: SizeClass) -> tuple[int, int]:
    """Compact one class as 6.4 does; return (pages freed, objects moved)."""
    freed = moved = 0
    with pool._lock, cls.lock:  # the pool lock's write side
        dst: Zspage | None = None
        src: Zspage | None = None
        while pool.zs_can_compact(cls):
            if dst is None:
                dst = isolate_dst_zspage(pool, cls)
                if dst is None:
                    break
            src = isolate_src_zspage(pool, cls)
            if src is None:
                break
            if not pool.zspage_write_trylock(src):
                break
            moved += migrate_zspage(pool, cls, src, dst)
            pool.zspage_write_unlock(src)
            if pool.putback_zspage(cls, src) == ZS_INUSE_RATIO_0:
                pool.free_zspage(cls, src)
                freed += cls.pages_per_zspage
            src = None
            if dst.inuse == cls.objs_per_zspage:
                pool.putback_zspage(cls, dst)
                dst = None
        if src is not None:
            pool.putback_zspage(cls, src)
        if dst is not None:
            pool.putback_zspage(cls, dst)
    return freed, moved


def check_policy(fullness: str, policy: str | None) -> None:
    """``compact(policy)``: compaction follows the pool's grouping, which ``policy``, if given, must name."""
    if policy is None or policy == fullness:
        return
    if policy not in FULLNESS_GROUPINGS:
        raise ValueError(f"compaction policy must be one of {FULLNESS_GROUPINGS}, not {policy!r}")
    raise ValueError(
        f"compaction follows the pool's fullness grouping, {fullness!r}: "
        f"compacting as {policy!r} needs a pool made with fullness={policy!r}"
    )


def zs_compact(pool: Pool) -> int:
    """Compact every canonical class, largest first; return the pages freed by this call."""
    compact_class = legacy.__zs_compact if pool.fullness == FULLNESS_LEGACY else __zs_compact
    freed = moved = 0
    for cls in pool.classes:
        f, m = compact_class(pool, cls)
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
