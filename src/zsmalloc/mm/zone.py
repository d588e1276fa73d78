"""A zone's buddy allocator (mm/page_alloc.c, in outline): the model of the engine's ``mm/zone.rs``.

What this owns: the frames of one zone, pfn 0 to ``nr_pages - 1``, cut into
free and allocated blocks of 2^order frames (order 0-10); one free list per
order and migratetype (unmovable, movable, reclaimable); the migratetype of
every pageblock of 512 frames; the fallback from one migratetype to another,
with the claiming of whole pageblocks; the watermarks and their boost; the
compaction deferral counters; and the fragmentation figures of
/sys/kernel/debug/extfrag and /proc/pagetypeinfo (mm/vmstat.c).  It knows
nothing of its users: the engine's fragmentation simulation runs zsmalloc
beside other users on it, and ``zsmalloc._engine.Zone`` is the same zone,
which ``tests/test_zone_differential.py`` compares with this one step by step.

Layout::

    pfn  0        512       1024      1536      2048            nr_pages
         +---------+---------+---------+---------+--- ... ---------+
         |  MOV    |  UNMOV  |  MOV    |  RECL   |                 |  pageblock_mt
         +---------+---------+---------+---------+--- ... ---------+

    free_area[order][migratetype]: a list of the pfns of free blocks,
        head first (index 0 is the block taken next)
    free_blocks:  head pfn -> order            (the kernel's PageBuddy)
    allocated:    head pfn -> (order, migratetype asked for)

    an order-3 block at pfn 8, its buddy at 8 ^ (1 << 3) = 0:
    [0 .. 7][8 .. 15]  ->  freed together: one order-4 block at pfn 0

Which kernel this follows: mainline since 6.10/6.15 (the free-page
accounting rework and the split of the fallback into claiming and
stealing), as ``zone.rs`` does: a free block always sits on the list of its
pageblock's migratetype; ``__rmqueue`` tries the requested type
(``__rmqueue_smallest``), then claims a whole pageblock of another type from
the largest free block down (``__rmqueue_claim``, ``try_to_claim_block``),
then steals the smallest block of another type without claiming its
pageblock (``__rmqueue_steal``).

Watermark boosting, as there (since 5.0; ``vm.watermark_boost_factor``,
15000 by default): a fallback that tries to claim the pageblock of a block
smaller than a pageblock (``try_to_claim_block``, claimed or not) raises
``watermark_boost`` by a pageblock, up to the factor's share of the high
watermark and at least a pageblock (``boost_watermark``; not in zones of
fewer than four pageblocks), and sets ZONE_BOOSTED_WATERMARK.  The marks
that allocations and compaction are held to include the boost (``wmark_pages``:
:attr:`Zone.watermarks`); ``__isolate_free_page`` and ``boost_watermark``
read them without it (``_watermark[]``).  The kernel tests and clears the
flag at the end of ``rmqueue`` and wakes kswapd; the zone's owner, which has
the kswapd, does that here (:meth:`Zone.take_boosted_watermark`) and lowers
the boost once kswapd has reclaimed (:meth:`Zone.lower_watermark_boost`, as
``balance_pgdat`` does).

Left out, as there: per-cpu lists, CMA, MIGRATE_HIGHATOMIC, ALLOC_NOFRAGMENT
(set only when a lower zone exists, and this is the only zone), free-page
shuffling, and the boost's exception for ``__GFP_HIGH`` order-0 requests at
the min watermark (``zone_watermark_fast``).

The methods have the kernel's names and make the engine's decisions one for
one: the same list ends, the same pfns, the same claims, the same counts.
Arguments are checked as the engine's binding checks them (an order within
0..10, a pfn inside the zone, a known migratetype, marks >= 0); a refused
call raises :class:`zsmalloc.errors.ZoneError` and changes nothing but the
``alloc_fail`` count of a refused allocation.  ``check()`` raises
:class:`zsmalloc.errors.CorruptionError`.  Migratetypes are the strings of
:data:`MIGRATETYPES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from zsmalloc.errors import CorruptionError, ZoneError

MAX_PAGE_ORDER = 10
NR_PAGE_ORDERS = MAX_PAGE_ORDER + 1
#: x86-64 with transparent huge pages: pageblock_order = HPAGE_PMD_ORDER
PAGEBLOCK_ORDER = 9
PAGEBLOCK_NR_PAGES = 1 << PAGEBLOCK_ORDER
#: the kernel's PAGE_ALLOC_COSTLY_ORDER
PAGE_ALLOC_COSTLY_ORDER = 3
#: after this many failures in a row, compaction runs once in 64 tries
COMPACT_MAX_DEFER_SHIFT = 6
#: the default ``vm.watermark_boost_factor``: the boost may reach 150% of the high watermark
#: (in ten-thousandths)
WATERMARK_BOOST_FACTOR = 15_000
#: the largest zone (64 GiB): its descriptors are all written when it is made, so a size
#: past what a simulation needs is refused rather than left to exhaust memory
MAX_ZONE_PAGES = 1 << 24

UNMOVABLE = "unmovable"
MOVABLE = "movable"
RECLAIMABLE = "reclaimable"
#: the migratetypes that have free lists here (MIGRATE_PCPTYPES), in the kernel's order
MIGRATETYPES = (UNMOVABLE, MOVABLE, RECLAIMABLE)

#: the kernel's ``fallbacks[]``: where a request of each type looks next, in turn
FALLBACKS = {
    UNMOVABLE: (RECLAIMABLE, MOVABLE),
    MOVABLE: (RECLAIMABLE, UNMOVABLE),
    RECLAIMABLE: (UNMOVABLE, MOVABLE),
}


def _title(mt: str) -> str:
    """A migratetype as pagetypeinfo and the engine's messages print it: "Movable"."""
    return mt.capitalize()


@dataclass(frozen=True)
class Watermarks:
    """The three watermarks, in pages: ``zone->_watermark[]``, or with the boost added,
    what ``wmark_pages`` gives."""

    min: int
    low: int
    high: int

    @classmethod
    def for_zone(cls, managed: int) -> Watermarks:
        """As ``__setup_per_zone_wmarks`` sets them for a lone zone of ``managed`` pages.

        min comes from ``min_free_kbytes`` (sqrt(16 * lowmem KiB), clamped to
        128 KiB..256 MiB), and is at most a quarter of the zone (the
        engine's bound, for zones smaller than any machine's); low and high
        lie a further max(min / 4, managed * watermark_scale_factor / 10000)
        apart, with the default scale factor of 10.
        """
        min_free_kbytes = min(max(math.isqrt(managed * 4 * 16), 128), 262_144)
        min_pages = min(min_free_kbytes // 4, managed // 4)
        step = max(min_pages // 4, managed * 10 // 10_000)
        return cls(min=min_pages, low=min_pages + step, high=min_pages + 2 * step)


@dataclass(frozen=True)
class ContigPageInfo:
    """``struct contig_page_info`` (mm/vmstat.c)."""

    free_pages: int = 0
    free_blocks_total: int = 0
    free_blocks_suitable: int = 0


@dataclass(frozen=True)
class ZoneEvents:
    """What allocations and frees have done (a part of /proc/vmstat)."""

    #: requests served from a pageblock of another migratetype
    alloc_fallback: int = 0
    #: pageblocks whose migratetype a fallback changed
    blocks_claimed: int = 0
    #: requests refused by the watermark or for want of a block
    alloc_fail: int = 0
    #: ``boost_watermark`` calls that boosted (a count the kernel does not keep)
    watermark_boosts: int = 0


class Zone:
    """A zone of ``nr_pages`` frames from pfn 0, all free, every pageblock movable.

    That is how ``memmap_init`` and ``memblock_free_all`` leave a zone.  The
    zone is plain data: its owner serialises calls.
    """

    def __init__(self, nr_pages: int) -> None:
        if not 0 < nr_pages <= MAX_ZONE_PAGES:
            raise ZoneError(f"a zone needs 1..={MAX_ZONE_PAGES} pages, not {nr_pages}")
        self._nr_pages = nr_pages
        self.free_area: list[dict[str, list[int]]] = [
            {mt: [] for mt in MIGRATETYPES} for _ in range(NR_PAGE_ORDERS)
        ]
        self.free_blocks: dict[int, int] = {}
        self.allocated: dict[int, tuple[int, str]] = {}
        self.pageblock_mt: list[str] = [MOVABLE] * -(-nr_pages // PAGEBLOCK_NR_PAGES)
        self._nr_free_pages = 0
        # _watermark[], without the boost
        self._watermarks = Watermarks.for_zone(nr_pages)
        self._watermark_boost = 0
        self._watermark_boost_factor = WATERMARK_BOOST_FACTOR
        # ZONE_BOOSTED_WATERMARK in zone->flags
        self._boosted_watermark = False
        self._alloc_fallback = 0
        self._blocks_claimed = 0
        self._alloc_fail = 0
        self._watermark_boosts = 0
        # the compaction deferral (zone->compact_*)
        self.compact_considered = 0
        self.compact_defer_shift = 0
        self.compact_order_failed = 0
        # __free_pages_core over the zone in the largest aligned blocks, each
        # to its list's tail, so that the lowest pfns are handed out first
        pfn = 0
        while pfn < nr_pages:
            order = MAX_PAGE_ORDER
            while pfn % (1 << order) != 0 or pfn + (1 << order) > nr_pages:
                order -= 1
            self._free_one_page(pfn, order, to_tail=True)
            pfn += 1 << order

    # ------------------------------------------------------------------
    # what the zone looks like

    @property
    def nr_pages(self) -> int:
        return self._nr_pages

    @property
    def nr_free_pages(self) -> int:
        return self._nr_free_pages

    @property
    def nr_pageblocks(self) -> int:
        return len(self.pageblock_mt)

    @property
    def watermarks(self) -> Watermarks:
        """The marks allocations and compaction are held to: ``_watermark[]`` plus the boost
        (``wmark_pages``)."""
        w, b = self._watermarks, self._watermark_boost
        return Watermarks(w.min + b, w.low + b, w.high + b)

    def set_watermarks(self, watermarks: Watermarks) -> None:
        """New ``_watermark[]``; the boost starts again from 0, as ``__setup_per_zone_wmarks``
        leaves it."""
        for name in ("min", "low", "high"):
            _count_arg(name, getattr(watermarks, name))
        self._watermarks = Watermarks(watermarks.min, watermarks.low, watermarks.high)
        self._watermark_boost = 0

    @property
    def watermark_boost(self) -> int:
        """``zone->watermark_boost``, in pages."""
        return self._watermark_boost

    @property
    def watermark_boosted(self) -> bool:
        """Whether ZONE_BOOSTED_WATERMARK is set: a boost since the flag was last taken."""
        return self._boosted_watermark

    def take_boosted_watermark(self) -> bool:
        """``rmqueue``'s test and clear of ZONE_BOOSTED_WATERMARK.

        True if a fallback boosted the watermark since the last call: the
        caller is to wake kswapd (``wakeup_kswapd``).  The kernel makes the
        test at the end of every allocation that may wake kswapd
        (ALLOC_KSWAPD); here the zone's owner, which has the kswapd, makes it.
        """
        boosted, self._boosted_watermark = self._boosted_watermark, False
        return boosted

    def lower_watermark_boost(self, pages: int) -> None:
        """kswapd has reclaimed for the boost it found when it started:
        ``watermark_boost -= min(watermark_boost, pages)`` (``balance_pgdat``)."""
        _count_arg("pages", pages)
        self._watermark_boost -= min(self._watermark_boost, pages)

    @property
    def watermark_boost_factor(self) -> int:
        """``vm.watermark_boost_factor``, in ten-thousandths of the high watermark."""
        return self._watermark_boost_factor

    def set_watermark_boost_factor(self, factor: int) -> None:
        """A new ``vm.watermark_boost_factor`` (0: no boosting); the boost already made stays."""
        _count_arg("factor", factor)
        self._watermark_boost_factor = factor

    @property
    def events(self) -> ZoneEvents:
        return ZoneEvents(
            self._alloc_fallback, self._blocks_claimed, self._alloc_fail, self._watermark_boosts
        )

    def pageblock_migratetype(self, pfn: int) -> str:
        """``get_pfnblock_migratetype``."""
        self._pfn_arg(pfn)
        return self.pageblock_mt[pfn >> PAGEBLOCK_ORDER]

    def buddy_order(self, pfn: int) -> int | None:
        """The order of the free block whose head is ``pfn`` (``buddy_order``), or None."""
        self._pfn_arg(pfn)
        return self.free_blocks.get(pfn)

    def allocated_block(self, pfn: int) -> tuple[int, str] | None:
        """The order and requested migratetype of the allocated block whose head is ``pfn``, or None."""
        self._pfn_arg(pfn)
        return self.allocated.get(pfn)

    def nr_free(self, order: int, mt: str) -> int:
        """Free blocks of ``order`` on ``mt``'s list (pagetypeinfo's columns)."""
        _order_arg(order)
        _mt_arg(mt)
        return len(self.free_area[order][mt])

    def free_list(self, order: int, mt: str) -> list[int]:
        """The pfns on ``order``'s list of ``mt``, head first: the order they would be taken in."""
        _order_arg(order)
        _mt_arg(mt)
        return list(self.free_area[order][mt])

    def compact_defer_state(self) -> tuple[int, int, int]:
        """(``compact_considered``, ``compact_defer_shift``, ``compact_order_failed``)."""
        return (self.compact_considered, self.compact_defer_shift, self.compact_order_failed)

    def pageblock_counts(self) -> dict[str, int]:
        """Pageblocks of each migratetype (pagetypeinfo's "Number of blocks type")."""
        return {mt: self.pageblock_mt.count(mt) for mt in MIGRATETYPES}

    def pageblock_types(self) -> list[str]:
        """Every pageblock's migratetype, lowest pfn first."""
        return list(self.pageblock_mt)

    # ------------------------------------------------------------------
    # the free lists

    def _set_pageblock_migratetype(self, pfn: int, mt: str) -> None:
        self.pageblock_mt[pfn >> PAGEBLOCK_ORDER] = mt

    def _total_free(self, order: int) -> int:
        return sum(len(blocks) for blocks in self.free_area[order].values())

    def _add_to_free_list(self, pfn: int, order: int, mt: str, to_tail: bool) -> None:
        blocks = self.free_area[order][mt]
        if to_tail:
            blocks.append(pfn)
        else:
            blocks.insert(0, pfn)
        self.free_blocks[pfn] = order
        self._nr_free_pages += 1 << order

    def _del_page_from_free_list(self, pfn: int, order: int, mt: str) -> None:
        self.free_area[order][mt].remove(pfn)
        del self.free_blocks[pfn]
        self._nr_free_pages -= 1 << order

    def _move_to_free_list(self, pfn: int, order: int, old: str, new: str) -> None:
        self._del_page_from_free_list(pfn, order, old)
        self._add_to_free_list(pfn, order, new, to_tail=True)

    def _get_page_from_free_area(self, order: int, mt: str) -> int | None:
        blocks = self.free_area[order][mt]
        return blocks[0] if blocks else None

    @staticmethod
    def _find_buddy_pfn(pfn: int, order: int) -> int:
        """``__find_buddy_pfn``: the block that ``pfn``'s block merges with one order up."""
        return pfn ^ (1 << order)

    def _page_is_buddy(self, buddy: int, order: int) -> bool:
        """``page_is_buddy``: ``buddy`` heads a free block of exactly ``order``."""
        return self.free_blocks.get(buddy) == order

    def _buddy_merge_likely(self, pfn: int, buddy: int, order: int) -> bool:
        """``buddy_merge_likely``: the block's buddy one order up is free.

        Then the block goes to its list's tail, where it is taken last and
        has the longest time to merge.
        """
        if order >= MAX_PAGE_ORDER - 1:
            return False
        higher = buddy & pfn
        return self._page_is_buddy(self._find_buddy_pfn(higher, order + 1), order + 1)

    def _free_one_page(self, pfn: int, order: int, to_tail: bool) -> None:
        """``__free_one_page``: put a block back and merge it with its free buddies.

        It goes to the list's tail when ``to_tail`` (FPI_TO_TAIL) or when it
        is likely to merge further, else to the head.
        """
        mt = self.pageblock_mt[pfn >> PAGEBLOCK_ORDER]
        while order < MAX_PAGE_ORDER:
            buddy = self._find_buddy_pfn(pfn, order)
            if not self._page_is_buddy(buddy, order):
                break
            buddy_mt = self.pageblock_mt[buddy >> PAGEBLOCK_ORDER]
            self._del_page_from_free_list(buddy, order, buddy_mt)
            if buddy_mt != mt:
                # the buddy's pageblock takes this block's type, so that a
                # later expand() puts the halves on the right lists
                self._set_pageblock_migratetype(buddy, mt)
            pfn &= buddy
            order += 1
        tail = to_tail or (
            order < MAX_PAGE_ORDER and self._buddy_merge_likely(pfn, self._find_buddy_pfn(pfn, order), order)
        )
        self._add_to_free_list(pfn, order, mt, tail)

    def _expand(self, pfn: int, low: int, high: int, mt: str) -> None:
        """``expand``: split the block of order ``high`` at ``pfn`` down to ``low``.

        The upper halves go back to the heads of ``mt``'s lists.
        """
        while high > low:
            high -= 1
            self._add_to_free_list(pfn + (1 << high), high, mt, to_tail=False)

    def _page_del_and_expand(self, pfn: int, low: int, high: int, mt: str) -> None:
        self._del_page_from_free_list(pfn, high, mt)
        self._expand(pfn, low, high, mt)

    # ------------------------------------------------------------------
    # taking a block: __rmqueue and its fallbacks

    def _rmqueue_smallest(self, order: int, mt: str) -> int | None:
        """``__rmqueue_smallest``: the smallest free block of ``mt`` that fits, split down to ``order``."""
        for current in range(order, NR_PAGE_ORDERS):
            pfn = self._get_page_from_free_area(current, mt)
            if pfn is not None:
                self._page_del_and_expand(pfn, order, current, mt)
                return pfn
        return None

    def _find_suitable_fallback(self, order: int, mt: str) -> str | None:
        """``find_suitable_fallback``: the first of ``mt``'s fallbacks with a free block of ``order``."""
        if self._total_free(order) == 0:
            return None
        for fallback in FALLBACKS[mt]:
            if self.free_area[order][fallback]:
                return fallback
        return None

    @staticmethod
    def _should_try_claim_block(order: int, mt: str) -> bool:
        """``should_try_claim_block``: may a fallback of this order take over the whole pageblock?

        Small movable requests never do: movable pages can be moved out of
        the block later, unmovable ones cannot.
        """
        return order >= PAGEBLOCK_ORDER // 2 or mt != MOVABLE

    def _prep_move_freepages_block(self, pfn: int) -> tuple[int, int, int] | None:
        """``prep_move_freepages_block``: (start, free pages, movable pages) of ``pfn``'s pageblock.

        Movable pages are those of blocks allocated as movable (the kernel
        counts PageLRU and __PageMovable pages).  None when the pageblock
        runs past the zone's end.
        """
        start = pfn - pfn % PAGEBLOCK_NR_PAGES
        end = start + PAGEBLOCK_NR_PAGES
        if end > self._nr_pages:
            return None
        free = movable = 0
        p = start
        while p < end:
            if p in self.free_blocks:
                free += 1 << self.free_blocks[p]
                p += 1 << self.free_blocks[p]
            elif p in self.allocated:
                order, mt = self.allocated[p]
                if mt == MOVABLE:
                    movable += 1 << order
                p += 1 << order
            else:
                p += 1
        return start, free, movable

    def _move_freepages_block(self, start: int, old: str, new: str) -> None:
        """``__move_freepages_block``: every free block of the pageblock at ``start`` onto ``new``'s lists."""
        p = start
        end = start + PAGEBLOCK_NR_PAGES
        while p < end:
            if p in self.free_blocks:
                order = self.free_blocks[p]
                self._move_to_free_list(p, order, old, new)
                p += 1 << order
            elif p in self.allocated:
                p += 1 << self.allocated[p][0]
            else:
                p += 1

    def _change_pageblock_range(self, pfn: int, order: int, mt: str) -> None:
        """``change_pageblock_range``: the pageblocks of a block of pageblock order or more become ``mt``."""
        for i in range(1 << max(order - PAGEBLOCK_ORDER, 0)):
            self._set_pageblock_migratetype(pfn + i * PAGEBLOCK_NR_PAGES, mt)

    def _boost_watermark(self) -> bool:
        """``boost_watermark``: raise the boost by a pageblock.

        Up to ``watermark_boost_factor`` ten-thousandths of the high
        watermark (``_watermark[WMARK_HIGH]``), but at least a pageblock.
        False, and no boost, when the factor is 0, the zone has fewer than
        four pageblocks' pages (every page of it is managed), or that share
        of the high watermark is 0.
        """
        if self._watermark_boost_factor == 0 or self._nr_pages < PAGEBLOCK_NR_PAGES * 4:
            return False
        max_boost = self._watermarks.high * self._watermark_boost_factor // 10_000
        if max_boost == 0:
            return False
        max_boost = max(max_boost, PAGEBLOCK_NR_PAGES)
        self._watermark_boost = min(self._watermark_boost + PAGEBLOCK_NR_PAGES, max_boost)
        return True

    def _try_to_claim_block(self, pfn: int, current: int, order: int, start: str, block: str) -> int | None:
        """``try_to_claim_block``: take over the pageblock of the free block at ``pfn`` for ``start``.

        A block of pageblock order or more is claimed whole.  A smaller one
        first boosts the watermark (claimed or not: kswapd is to reclaim
        more, so that fewer fallbacks follow), and its pageblock is claimed
        when at least half of it is free or alike
        (movable pages for a movable request; for another type's request
        into a movable pageblock, the pages allocated as anything but
        movable), and the allocation is then served from it.
        """
        if current >= PAGEBLOCK_ORDER:
            self._del_page_from_free_list(pfn, current, block)
            self._change_pageblock_range(pfn, current, start)
            self._expand(pfn, order, current, start)
            self._blocks_claimed += 1 << (current - PAGEBLOCK_ORDER)
            return pfn
        # every allocation here may wake kswapd (ALLOC_KSWAPD)
        if self._boost_watermark():
            self._boosted_watermark = True
            self._watermark_boosts += 1
        counted = self._prep_move_freepages_block(pfn)
        if counted is None:
            return None
        block_start, free, movable = counted
        if start == MOVABLE:
            alike = movable
        elif block == MOVABLE:
            alike = PAGEBLOCK_NR_PAGES - (free + movable)
        else:
            alike = 0
        if free + alike >= 1 << (PAGEBLOCK_ORDER - 1):
            self._move_freepages_block(block_start, block, start)
            self._set_pageblock_migratetype(block_start, start)
            self._blocks_claimed += 1
            return self._rmqueue_smallest(order, start)
        return None

    def _rmqueue_claim(self, order: int, start: str) -> int | None:
        """``__rmqueue_claim``: from the largest free block of another type down, claim its pageblock."""
        for current in range(MAX_PAGE_ORDER, order - 1, -1):
            fallback = self._find_suitable_fallback(current, start)
            if fallback is None:
                continue
            if not self._should_try_claim_block(current, start):
                break
            pfn = self._get_page_from_free_area(current, fallback)
            if pfn is None:
                return None
            page = self._try_to_claim_block(pfn, current, order, start, fallback)
            if page is not None:
                return page
        return None

    def _rmqueue_steal(self, order: int, start: str) -> int | None:
        """``__rmqueue_steal``: the smallest block of another type, its pageblock left as it is."""
        for current in range(order, NR_PAGE_ORDERS):
            fallback = self._find_suitable_fallback(current, start)
            if fallback is not None:
                pfn = self._get_page_from_free_area(current, fallback)
                if pfn is None:
                    return None
                self._page_del_and_expand(pfn, order, current, fallback)
                return pfn
        return None

    def _rmqueue(self, order: int, mt: str) -> int | None:
        """``__rmqueue``: the requested type, then a claimed pageblock, then a stolen block."""
        pfn = self._rmqueue_smallest(order, mt)
        if pfn is not None:
            return pfn
        pfn = self._rmqueue_claim(order, mt)
        if pfn is None:
            pfn = self._rmqueue_steal(order, mt)
        if pfn is None:
            return None
        self._alloc_fallback += 1
        return pfn

    # ------------------------------------------------------------------
    # the public calls

    def zone_watermark_ok(self, order: int, mark: int) -> bool:
        """``__zone_watermark_ok``: would the zone keep more than ``mark`` free pages after
        taking a block of ``order``, and is there a free block of that order at all?"""
        _order_arg(order)
        _count_arg("mark", mark)
        return self._watermark_ok(order, mark)

    def _watermark_ok(self, order: int, mark: int) -> bool:
        free = self._nr_free_pages - ((1 << order) - 1)
        if free <= mark:
            return False
        return order == 0 or any(self._total_free(o) > 0 for o in range(order, NR_PAGE_ORDERS))

    def alloc_pages(self, order: int, mt: str, mark: int) -> int:
        """Allocate a block of ``order`` for ``mt`` if the zone stays above ``mark`` free pages.

        The checks of ``get_page_from_freelist``, then ``rmqueue``.  Returns
        the block's head pfn; a refusal counts in ``events.alloc_fail``.
        """
        _order_arg(order)
        _mt_arg(mt)
        _count_arg("mark", mark)
        pfn = self._rmqueue(order, mt) if self._watermark_ok(order, mark) else None
        if pfn is None:
            self._alloc_fail += 1
            raise ZoneError(f"no free block of order {order} for {_title(mt)} above the watermark")
        self.allocated[pfn] = (order, mt)
        return pfn

    def free_pages(self, pfn: int, order: int) -> None:
        """``__free_pages``: give back the allocated block whose head is ``pfn``."""
        self._pfn_arg(pfn)
        _order_arg(order)
        block = self.allocated.get(pfn)
        if block is None:
            raise ZoneError(f"pfn {pfn} is not the head of an allocated block")
        if block[0] != order:
            raise ZoneError(f"pfn {pfn} heads a block of order {block[0]}, not {order}")
        del self.allocated[pfn]
        self._free_one_page(pfn, order, to_tail=False)

    def isolate_free_page(self, pfn: int) -> int | None:
        """``__isolate_free_page``: take the free block at ``pfn`` for compaction.

        Only if the zone stays above the min watermark (as an allocation of
        the block would: ``_watermark[WMARK_MIN] + (1 << order)`` at order 0,
        the mark without the boost).  A block of half a
        pageblock or more turns the pageblocks it spans movable, with their
        other free blocks.  The block becomes 2^order order-0 pages, pfn to
        pfn + 2^order - 1, allocated as movable (compaction's migration
        targets).  Returns the block's order, or None when ``pfn`` heads no
        free block or the watermark refuses.
        """
        self._pfn_arg(pfn)
        order = self.free_blocks.get(pfn)
        if order is None:
            return None
        if not self._watermark_ok(0, self._watermarks.min + (1 << order)):
            return None
        mt = self.pageblock_mt[pfn >> PAGEBLOCK_ORDER]
        self._del_page_from_free_list(pfn, order, mt)
        if order >= PAGEBLOCK_ORDER - 1:
            for i in range(1 << max(order - PAGEBLOCK_ORDER, 0)):
                block = pfn + i * PAGEBLOCK_NR_PAGES
                old = self.pageblock_mt[block >> PAGEBLOCK_ORDER]
                if old == MOVABLE:
                    continue
                counted = self._prep_move_freepages_block(block)
                if counted is not None:
                    self._move_freepages_block(counted[0], old, MOVABLE)
                    self._set_pageblock_migratetype(counted[0], MOVABLE)
        for p in range(pfn, pfn + (1 << order)):
            self.allocated[p] = (0, MOVABLE)
        return order

    def suitable_page_free(self, order: int, mt: str) -> bool:
        """``__compact_finished``'s test: a free block of ``order`` or more on ``mt``'s lists,
        or on another type's that a request of ``mt`` would claim."""
        _order_arg(order)
        _mt_arg(mt)
        return any(
            self.free_area[o][mt]
            or (self._should_try_claim_block(o, mt) and self._find_suitable_fallback(o, mt) is not None)
            for o in range(order, NR_PAGE_ORDERS)
        )

    def compaction_deferred(self, order: int) -> bool:
        """``compaction_deferred``: skip this compaction?

        Once a compaction has failed, a request of the order that failed or
        above goes ahead only once in 2^compact_defer_shift calls; each call
        counts as an attempt.
        """
        _order_arg(order)
        if order < self.compact_order_failed:
            return False
        self.compact_considered = min(self.compact_considered + 1, 1 << self.compact_defer_shift)
        return self.compact_considered < 1 << self.compact_defer_shift

    def defer_compaction(self, order: int) -> None:
        """``defer_compaction``: a compaction for ``order`` failed."""
        _order_arg(order)
        self.compact_considered = 0
        self.compact_defer_shift = min(self.compact_defer_shift + 1, COMPACT_MAX_DEFER_SHIFT)
        self.compact_order_failed = min(self.compact_order_failed, order)

    def compaction_defer_reset(self, order: int, alloc_success: bool) -> None:
        """``compaction_defer_reset``: a compaction for ``order`` succeeded
        (``alloc_success``: and the allocation after it too)."""
        _order_arg(order)
        if alloc_success:
            self.compact_considered = 0
            self.compact_defer_shift = 0
        if order >= self.compact_order_failed:
            self.compact_order_failed = order + 1

    # ------------------------------------------------------------------
    # the fragmentation figures (mm/vmstat.c)

    def contig_page_info(self, suitable_order: int) -> ContigPageInfo:
        """``fill_contig_page_info``: free pages, free blocks, and how many blocks of
        ``suitable_order`` the free blocks of that order or more would make."""
        _order_arg(suitable_order)
        free_pages = free_blocks_total = free_blocks_suitable = 0
        for order in range(NR_PAGE_ORDERS):
            blocks = self._total_free(order)
            free_blocks_total += blocks
            free_pages += blocks << order
            if order >= suitable_order:
                free_blocks_suitable += blocks << (order - suitable_order)
        return ContigPageInfo(free_pages, free_blocks_total, free_blocks_suitable)

    def fragmentation_index(self, order: int) -> int:
        """``__fragmentation_index`` (extfrag_index), in thousandths.

        -1000 when a block of ``order`` is free; otherwise towards 0 a
        failure would be for want of memory, towards 1000 for want of
        contiguity.
        """
        info = self.contig_page_info(order)
        if info.free_blocks_total == 0:
            return 0
        if info.free_blocks_suitable > 0:
            return -1000
        requested = 1 << order
        return 1000 - (1000 + info.free_pages * 1000 // requested) // info.free_blocks_total

    def unusable_free_index(self, order: int) -> int:
        """``unusable_free_index`` (unusable_index), in thousandths: the share of free
        memory that cannot serve a request of ``order``."""
        info = self.contig_page_info(order)
        if info.free_pages == 0:
            return 1000
        return (info.free_pages - (info.free_blocks_suitable << order)) * 1000 // info.free_pages

    # ------------------------------------------------------------------
    # the consistency check

    def check(self) -> None:
        """Raise CorruptionError unless the zone is consistent.

        Every frame is in exactly one free or allocated block; blocks are
        aligned to their order and end inside the zone; every free block is
        on exactly one list, that of its order and its pageblock's
        migratetype; ``nr_free_pages`` is the lists' sum; and no two free
        buddies are left unmerged.
        """
        listed: dict[int, tuple[int, str]] = {}
        free_pages = 0
        for order in range(NR_PAGE_ORDERS):
            for mt in MIGRATETYPES:
                for pfn in self.free_area[order][mt]:
                    if pfn in listed or not 0 <= pfn < self._nr_pages:
                        raise CorruptionError(
                            f"free list {order}/{_title(mt)} repeats or leaves the zone at {pfn}"
                        )
                    listed[pfn] = (order, mt)
                    if self.free_blocks.get(pfn) != order:
                        raise CorruptionError(
                            f"pfn {pfn} on the order-{order} list is no free block of that order"
                        )
                    block_mt = self.pageblock_mt[pfn >> PAGEBLOCK_ORDER]
                    if block_mt != mt:
                        raise CorruptionError(
                            f"free pfn {pfn} is on the {_title(mt)} list of a {_title(block_mt)} pageblock"
                        )
                    free_pages += 1 << order
        if free_pages != self._nr_free_pages:
            raise CorruptionError(f"nr_free_pages {self._nr_free_pages} but {free_pages} free on the lists")
        if set(self.free_blocks) & set(self.allocated):
            raise CorruptionError("a pfn heads both a free and an allocated block")
        p = walked = 0
        while p < self._nr_pages:
            if p in self.free_blocks:
                order = self.free_blocks[p]
                if p not in listed:
                    raise CorruptionError(f"free block at pfn {p} is on no list")
                buddy = self._find_buddy_pfn(p, order)
                if order < MAX_PAGE_ORDER and self._page_is_buddy(buddy, order):
                    raise CorruptionError(
                        f"free buddies at pfns {p} and {buddy} of order {order} are not merged"
                    )
            elif p in self.allocated:
                order = self.allocated[p][0]
            else:
                raise CorruptionError(f"pfn {p} belongs to no block")
            if p % (1 << order) != 0 or p + (1 << order) > self._nr_pages:
                raise CorruptionError(
                    f"the order-{order} block at pfn {p} is misaligned or runs past the zone"
                )
            inside = range(p + 1, p + (1 << order))
            if any(q in self.free_blocks or q in self.allocated for q in inside):
                raise CorruptionError(f"the order-{order} block at pfn {p} overlaps another")
            walked += 1
            p += 1 << order
        if walked != len(self.free_blocks) + len(self.allocated):
            raise CorruptionError("a block's head lies past the zone")

    # ------------------------------------------------------------------
    # arguments, as the engine's binding checks them

    def _pfn_arg(self, pfn: int) -> None:
        if not 0 <= pfn < self._nr_pages:
            raise ZoneError(f"pfn {pfn} is outside the zone (0..{self._nr_pages - 1})")


def _order_arg(order: int) -> None:
    if not 0 <= order <= MAX_PAGE_ORDER:
        raise ZoneError(f"order {order} is outside 0..{MAX_PAGE_ORDER}")


def _mt_arg(mt: str) -> None:
    if mt not in MIGRATETYPES:
        raise ZoneError(f"migratetype must be unmovable, movable or reclaimable, not {mt!r}")


def _count_arg(name: str, value: int) -> None:
    if value < 0:
        raise ZoneError(f"{name} must be >= 0, not {value}")
