"""Fullness grouping and compaction before 6.4: ``Pool(fullness="legacy")``.

Which kernel this models
------------------------
mm/zsmalloc.c from 4.8 to 6.3, read against 6.1 (6.1.158, Debian bookworm's
series).  The 2023 series "zsmalloc: fine-grained fullness and new
compaction algorithm" (6.4) replaced all of it with the tenths of
pool/constants.py and the compaction of pool/compact.py.  The rest of the
pool (objects, handles, the deferred free, migration) is the same under
either grouping.

Four groups per class::

    ZS_EMPTY         inuse == 0                  (waits for the deferred free)
    ZS_ALMOST_EMPTY  0 < inuse <= 3*N // 4        (fullness_threshold_frac = 4)
    ZS_ALMOST_FULL   3*N // 4 < inuse < N
    ZS_FULL          inuse == N                   N = objs_per_zspage

``insert_zspage`` puts a zspage at the head of its list, unless the list has
a head that holds more objects, in which case it goes just after that head.
``find_get_zspage`` takes the head of ZS_ALMOST_FULL, else ZS_ALMOST_EMPTY,
else ZS_EMPTY (the pool's method, with ZS_FULL as the top).

``__zs_compact`` (per class, under the pool lock's write side and the class
lock)::

    while src = isolate_zspage(source): head of ALMOST_EMPTY, else of ALMOST_FULL
        write-lock src
        zs_can_compact(class) == 0?                  -> stop
        while dst = isolate_zspage(destination): head of ALMOST_FULL, else of ALMOST_EMPTY
            migrate_zspage: src's objects, in index order, into dst,
                            until src has none left, or dst is full with one to go
            src has none left                        -> keep dst, leave this loop
            putback_zspage(dst)                      (full now: goes to ZS_FULL)
        no dst left                                  -> stop
        putback_zspage(dst)
        putback_zspage(src) == ZS_EMPTY              -> free_zspage(src), and its pages
                                                        count in pages_compacted whether
                                                        it is freed now or deferred
    stop: putback_zspage(src)

So a source, once picked, is drained into as many destinations as it takes,
and every put back goes through ``insert_zspage``'s ordering.  Two
differences, both about waiting: the kernel takes the source's zspage lock
the sleeping way, where the model only tries it and stops the class when a
reader holds it (a ``map()`` in the same thread could never end); and the
kernel stops early when another CPU waits for the pool lock
(``spin_is_contended``), which a model run never sees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zsmalloc.pool.zsmalloc import Pool, SizeClass, Zspage

ZS_EMPTY = 0
ZS_ALMOST_EMPTY = 1
ZS_ALMOST_FULL = 2
ZS_FULL = 3
NR_ZS_FULLNESS = 4
fullness_threshold_frac = 4  # the kernel's name


def get_fullness_group(inuse: int, objs_per_zspage: int) -> int:
    """The group of a zspage with ``inuse`` of its ``objs_per_zspage`` objects allocated."""
    if inuse == 0:
        return ZS_EMPTY
    if inuse == objs_per_zspage:
        return ZS_FULL
    if inuse <= 3 * objs_per_zspage // fullness_threshold_frac:
        return ZS_ALMOST_EMPTY
    return ZS_ALMOST_FULL


def insert_zspage(cls: SizeClass, zspage: Zspage, fullness: int) -> None:
    """At the head of the group's list, or just after a head that holds more objects.

    The lists are dicts used as ordered sets whose last key is the head: the
    head steps out and back in, so that it stays the last key.
    """
    lst = cls.fullness_list[fullness]
    head = next(reversed(lst), None)
    if head is not None and zspage.inuse < head.inuse:
        lst.popitem()
        lst[zspage] = None
        lst[head] = None
    else:
        lst[zspage] = None
    zspage.fullness = fullness


def isolate_zspage(pool: Pool, cls: SizeClass, source: bool) -> Zspage | None:
    """Take a zspage off its list: a source from almost empty first, a destination from almost full."""
    groups = (ZS_ALMOST_EMPTY, ZS_ALMOST_FULL) if source else (ZS_ALMOST_FULL, ZS_ALMOST_EMPTY)
    for fg in groups:
        lst = cls.fullness_list[fg]
        if lst:
            zspage = next(reversed(lst))
            pool.remove_zspage(cls, zspage)
            return zspage
    return None


def migrate_zspage(pool: Pool, cls: SizeClass, src: Zspage, dst: Zspage) -> tuple[int, bool]:
    """Move src's objects, in index order, into dst; return (objects moved, dst full with one to go).

    The kernel keeps its place in src (``zs_compact_control``) from one
    destination to the next; scanning src from its first page again finds
    the same next object, since an isolated, write-locked src only loses
    objects.  Objects are found as ``find_alloced_obj`` finds them: those
    that start in each page, in order.
    """
    moved = 0
    for page in pool.zspage_pages(src):
        for handle, _ in pool.objs_in_page(cls, src, page):
            if dst.inuse == cls.objs_per_zspage:  # zspage_full: -ENOMEM
                return moved, True
            pool.migrate_obj(cls, dst, handle)
            moved += 1
    return moved, False


def __zs_compact(pool: Pool, cls: SizeClass) -> tuple[int, int]:
    """Compact one class as 6.1 does; return (pages freed, objects moved)."""
    freed = moved = 0
    locked = False
    with pool._lock, cls.lock:  # the pool lock's write side
        while (src := isolate_zspage(pool, cls, source=True)) is not None:
            locked = pool.zspage_write_trylock(src)
            if not locked or not pool.zs_can_compact(cls):
                break
            dst = None
            while (dst := isolate_zspage(pool, cls, source=False)) is not None:
                n, dst_full = migrate_zspage(pool, cls, src, dst)
                moved += n
                if not dst_full:
                    break
                pool.putback_zspage(cls, dst)
            if dst is None:
                break
            pool.putback_zspage(cls, dst)
            pool.zspage_write_unlock(src)
            locked = False
            if pool.putback_zspage(cls, src) == ZS_EMPTY:
                pool.free_zspage(cls, src)
                freed += cls.pages_per_zspage
        if src is not None:
            pool.putback_zspage(cls, src)
            if locked:
                pool.zspage_write_unlock(src)
    return freed, moved
