//! A zone's buddy allocator (mm/page_alloc.c, in outline): free blocks of
//! order 0-10 on one list per order and migratetype, pageblocks of 512
//! frames tagged unmovable, movable or reclaimable, fallback between
//! migratetypes with block claiming, watermarks, and the fragmentation
//! figures of /sys/kernel/debug/extfrag and /proc/pagetypeinfo
//! (mm/vmstat.c).  It is the page-allocator mode that the fragmentation
//! simulation runs zsmalloc in, beside the Memory's own lowest-frame-first
//! allocator, and it knows nothing of its users.
//!
//! ```text
//!   pfn  0        512       1024      1536      2048            nr_pages
//!        +---------+---------+---------+---------+--- ... ---------+
//!        |  MOV    |  UNMOV  |  MOV    |  RECL   |                 |  pageblock_mt
//!        +---------+---------+---------+---------+--- ... ---------+
//!   free_area[order].list[mt]: doubly linked through `next`/`prev` by pfn;
//!   a free block's head carries BUDDY and its order, an allocated block's
//!   head HEAD, its order and the migratetype it was asked with.
//!
//!   order 3 block at pfn 8, its buddy at 8 ^ (1 << 3) = 0:
//!   [0 .. 7][8 .. 15]  ->  freed together: one order-4 block at pfn 0
//! ```
//!
//! Which kernel this follows: mainline since 6.10/6.15 (the accounting
//! rework and the claim/steal split): a free block always sits on the list
//! of its pageblock's migratetype; `__rmqueue` tries the requested type
//! (`__rmqueue_smallest`), then claims a whole pageblock of another type
//! from the largest free block down (`__rmqueue_claim`,
//! `try_to_claim_block`), then steals the smallest block of another type
//! without claiming it (`__rmqueue_steal`).
//!
//! Watermark boosting (since 5.0, `vm.watermark_boost_factor`, 15000 by
//! default): a fallback that tries to claim the pageblock of a block
//! smaller than a pageblock (`try_to_claim_block`, whether the claim then
//! succeeds or not) raises `watermark_boost` by a pageblock, up to the
//! factor's share of the high watermark and at least a pageblock
//! (`boost_watermark`; not in zones of fewer than four pageblocks), and sets
//! the zone's ZONE_BOOSTED_WATERMARK flag.  Every watermark an allocation
//! or a compaction is held to includes the boost (`wmark_pages`:
//! [`Zone::watermarks`]); `__isolate_free_page` and `boost_watermark`
//! itself use the marks without it (`_watermark[]`).  The kernel tests and
//! clears the flag at the end of `rmqueue` and wakes kswapd; this zone
//! knows nothing of kswapd, so its owner does that test and clear
//! ([`Zone::take_boosted_watermark`]) and lowers the boost when its kswapd
//! has reclaimed ([`Zone::lower_watermark_boost`], as `balance_pgdat` does).
//!
//! Left out: per-cpu lists (the simulation's allocations go straight to the
//! buddy lists), CMA, MIGRATE_HIGHATOMIC, ALLOC_NOFRAGMENT (it is set only
//! when a lower zone exists, and this is the only zone), free-page
//! shuffling, and the boost's exception for `__GFP_HIGH` order-0 requests
//! at the min watermark (`zone_watermark_fast`: there are no such flags
//! here).
//!
//! The zone is plain data: its owner serialises calls (the Memory holds it
//! under its allocator lock).

use std::fmt;

pub const MAX_PAGE_ORDER: usize = 10;
pub const NR_PAGE_ORDERS: usize = MAX_PAGE_ORDER + 1;
/// x86-64 with transparent huge pages: pageblock_order = HPAGE_PMD_ORDER.
pub const PAGEBLOCK_ORDER: usize = 9;
pub const PAGEBLOCK_NR_PAGES: usize = 1 << PAGEBLOCK_ORDER;
/// The kernel's PAGE_ALLOC_COSTLY_ORDER.
pub const PAGE_ALLOC_COSTLY_ORDER: usize = 3;
/// After this many failures in a row, compaction runs once in 64 tries.
pub const COMPACT_MAX_DEFER_SHIFT: u32 = 6;
/// The default `vm.watermark_boost_factor`: the boost may reach 150% of
/// the high watermark (in ten-thousandths).
pub const WATERMARK_BOOST_FACTOR: usize = 15_000;

const NONE: u32 = u32::MAX;
/// The largest zone (64 GiB): its descriptors, about 10 bytes a frame, are all
/// written when it is made, so a size past what a simulation needs is refused
/// rather than left to exhaust memory.
pub const MAX_ZONE_PAGES: usize = 1 << 24;

/// The migratetypes that have free lists here (MIGRATE_PCPTYPES).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum MigrateType {
    Unmovable = 0,
    Movable = 1,
    Reclaimable = 2,
}

pub const MIGRATE_TYPES: [MigrateType; 3] =
    [MigrateType::Unmovable, MigrateType::Movable, MigrateType::Reclaimable];

impl MigrateType {
    pub fn name(self) -> &'static str {
        match self {
            MigrateType::Unmovable => "Unmovable",
            MigrateType::Movable => "Movable",
            MigrateType::Reclaimable => "Reclaimable",
        }
    }

    fn from_u8(v: u8) -> MigrateType {
        MIGRATE_TYPES[v as usize]
    }

    /// The kernel's `fallbacks[]`: where a request of this type looks next.
    fn fallbacks(self) -> [MigrateType; 2] {
        match self {
            MigrateType::Unmovable => [MigrateType::Reclaimable, MigrateType::Movable],
            MigrateType::Movable => [MigrateType::Reclaimable, MigrateType::Unmovable],
            MigrateType::Reclaimable => [MigrateType::Unmovable, MigrateType::Movable],
        }
    }
}

/// The three watermarks, in pages: `zone->_watermark[]`, or with the
/// boost added, what `wmark_pages` gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    pub min: usize,
    pub low: usize,
    pub high: usize,
}

impl Watermarks {
    /// As `__setup_per_zone_wmarks` sets them for a lone zone of
    /// `managed` pages: min from `min_free_kbytes` (4 * sqrt(lowmem KiB),
    /// clamped to 128 KiB..256 MiB), low and high a further
    /// max(min / 4, managed * watermark_scale_factor / 10000) apart, with
    /// the default scale factor of 10.
    pub fn for_zone(managed: usize) -> Watermarks {
        let kbytes = (managed * 4) as f64;
        let min_free_kbytes = ((kbytes * 16.0).sqrt() as usize).clamp(128, 262_144);
        let min = (min_free_kbytes / 4).min(managed / 4);
        let step = (min / 4).max(managed * 10 / 10_000);
        Watermarks { min, low: min + step, high: min + 2 * step }
    }
}

/// A call the zone's state does not allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneError(pub String);

impl fmt::Display for ZoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ZoneError {}

// per-pfn state bits; the low four bits hold the order of a block's head
const ORDER_MASK: u8 = 0x0f;
/// the head of a free block (PageBuddy)
const BUDDY: u8 = 0x10;
/// the head of an allocated block
const HEAD: u8 = 0x20;

/// One order's free lists (`struct free_area`).
#[derive(Clone, Copy)]
struct FreeArea {
    head: [u32; 3],
    tail: [u32; 3],
    nr_free: [usize; 3],
}

impl FreeArea {
    const EMPTY: FreeArea = FreeArea { head: [NONE; 3], tail: [NONE; 3], nr_free: [0; 3] };

    fn total(&self) -> usize {
        self.nr_free.iter().sum()
    }
}

/// `struct contig_page_info` (mm/vmstat.c).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContigPageInfo {
    pub free_pages: usize,
    pub free_blocks_total: usize,
    pub free_blocks_suitable: usize,
}

/// What allocations and frees have done (a part of /proc/vmstat).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneEvents {
    /// a request served from a pageblock of another migratetype
    pub alloc_fallback: u64,
    /// pageblocks whose migratetype a fallback changed
    pub blocks_claimed: u64,
    /// requests refused by the watermark or for want of a block
    pub alloc_fail: u64,
    /// `boost_watermark` calls that boosted (a count the kernel does not keep)
    pub watermark_boosts: u64,
}

/// A zone of `nr_pages` frames from pfn 0.
#[derive(Clone)]
pub struct Zone {
    nr_pages: usize,
    state: Vec<u8>,
    /// allocated heads: the migratetype asked for
    alloc_mt: Vec<u8>,
    next: Vec<u32>,
    prev: Vec<u32>,
    pageblock_mt: Vec<u8>,
    free_area: [FreeArea; NR_PAGE_ORDERS],
    nr_free_pages: usize,
    /// `_watermark[]`: without the boost
    watermarks: Watermarks,
    /// `watermark_boost`, in pages
    watermark_boost: usize,
    /// `vm.watermark_boost_factor`
    watermark_boost_factor: usize,
    /// ZONE_BOOSTED_WATERMARK in `zone->flags`
    boosted_watermark: bool,
    events: ZoneEvents,
    // the compaction deferral (zone->compact_*)
    compact_considered: u32,
    compact_defer_shift: u32,
    compact_order_failed: usize,
}

impl Zone {
    /// A zone whose pageblocks all start movable and whose frames are all
    /// free, as `memmap_init` and `memblock_free_all` leave it.
    pub fn new(nr_pages: usize) -> Result<Zone, ZoneError> {
        if nr_pages == 0 || nr_pages > MAX_ZONE_PAGES {
            return Err(ZoneError(format!("a zone needs 1..={MAX_ZONE_PAGES} pages, not {nr_pages}")));
        }
        let mut zone = Zone {
            nr_pages,
            state: vec![0; nr_pages],
            alloc_mt: vec![0; nr_pages],
            next: vec![NONE; nr_pages],
            prev: vec![NONE; nr_pages],
            pageblock_mt: vec![MigrateType::Movable as u8; nr_pages.div_ceil(PAGEBLOCK_NR_PAGES)],
            free_area: [FreeArea::EMPTY; NR_PAGE_ORDERS],
            nr_free_pages: 0,
            watermarks: Watermarks::for_zone(nr_pages),
            watermark_boost: 0,
            watermark_boost_factor: WATERMARK_BOOST_FACTOR,
            boosted_watermark: false,
            events: ZoneEvents::default(),
            compact_considered: 0,
            compact_defer_shift: 0,
            compact_order_failed: 0,
        };
        // __free_pages_core over the zone in the largest aligned blocks, each
        // to its list's tail, so that the lowest pfns are handed out first
        let mut pfn = 0;
        while pfn < nr_pages {
            let mut order = MAX_PAGE_ORDER;
            while pfn & ((1 << order) - 1) != 0 || pfn + (1 << order) > nr_pages {
                order -= 1;
            }
            zone.free_one_page(pfn as u32, order, true);
            pfn += 1 << order;
        }
        Ok(zone)
    }

    pub fn nr_pages(&self) -> usize {
        self.nr_pages
    }

    pub fn nr_free_pages(&self) -> usize {
        self.nr_free_pages
    }

    /// The marks allocations and compaction are held to: `_watermark[]`
    /// plus the boost, as `wmark_pages` (`min_wmark_pages`,
    /// `low_wmark_pages`, `high_wmark_pages`) gives them.
    pub fn watermarks(&self) -> Watermarks {
        let b = self.watermark_boost;
        let w = self.watermarks;
        Watermarks { min: w.min + b, low: w.low + b, high: w.high + b }
    }

    /// New `_watermark[]`; the boost starts again from 0, as
    /// `__setup_per_zone_wmarks` leaves it.
    pub fn set_watermarks(&mut self, w: Watermarks) {
        self.watermarks = w;
        self.watermark_boost = 0;
    }

    /// `zone->watermark_boost`, in pages.
    pub fn watermark_boost(&self) -> usize {
        self.watermark_boost
    }

    /// Whether ZONE_BOOSTED_WATERMARK is set: a boost since the flag was
    /// last taken.
    pub fn watermark_boosted(&self) -> bool {
        self.boosted_watermark
    }

    /// `rmqueue`'s test and clear of ZONE_BOOSTED_WATERMARK: true if a
    /// fallback boosted the watermark since the last call, and the caller
    /// is to wake kswapd (`wakeup_kswapd`).  The kernel makes it at the end
    /// of every allocation that may wake kswapd (ALLOC_KSWAPD); the zone's
    /// owner, which has the kswapd, makes it here.
    pub fn take_boosted_watermark(&mut self) -> bool {
        std::mem::take(&mut self.boosted_watermark)
    }

    /// kswapd has reclaimed for the boost it found when it started:
    /// `watermark_boost -= min(watermark_boost, pages)` (`balance_pgdat`).
    pub fn lower_watermark_boost(&mut self, pages: usize) {
        self.watermark_boost -= self.watermark_boost.min(pages);
    }

    /// `vm.watermark_boost_factor`, in ten-thousandths of the high watermark.
    pub fn watermark_boost_factor(&self) -> usize {
        self.watermark_boost_factor
    }

    /// A new `vm.watermark_boost_factor` (0: no boosting); the boost
    /// already made stays, as with the sysctl.
    pub fn set_watermark_boost_factor(&mut self, factor: usize) {
        self.watermark_boost_factor = factor;
    }

    pub fn events(&self) -> ZoneEvents {
        self.events
    }

    pub fn nr_pageblocks(&self) -> usize {
        self.pageblock_mt.len()
    }

    /// `get_pfnblock_migratetype`.
    pub fn pageblock_migratetype(&self, pfn: u32) -> MigrateType {
        MigrateType::from_u8(self.pageblock_mt[pfn as usize >> PAGEBLOCK_ORDER])
    }

    /// `set_pageblock_migratetype`.
    fn set_pageblock_migratetype(&mut self, pfn: u32, mt: MigrateType) {
        self.pageblock_mt[pfn as usize >> PAGEBLOCK_ORDER] = mt as u8;
    }

    /// The order of the free block whose head is `pfn` (`buddy_order`).
    pub fn buddy_order(&self, pfn: u32) -> Option<usize> {
        let s = *self.state.get(pfn as usize)?;
        (s & BUDDY != 0).then_some((s & ORDER_MASK) as usize)
    }

    /// The order and requested migratetype of the allocated block whose head is `pfn`.
    pub fn allocated_block(&self, pfn: u32) -> Option<(usize, MigrateType)> {
        let s = *self.state.get(pfn as usize)?;
        (s & HEAD != 0)
            .then(|| ((s & ORDER_MASK) as usize, MigrateType::from_u8(self.alloc_mt[pfn as usize])))
    }

    /// Free blocks of each order on each migratetype's list.
    pub fn nr_free(&self, order: usize, mt: MigrateType) -> usize {
        self.free_area[order].nr_free[mt as usize]
    }

    /// The pfns on one order's list of `mt`, head first (the order
    /// `__rmqueue_smallest` would take them in).
    pub fn free_list(&self, order: usize, mt: MigrateType) -> Vec<u32> {
        let mut pfns = Vec::with_capacity(self.free_area[order].nr_free[mt as usize]);
        let mut pfn = self.free_area[order].head[mt as usize];
        while pfn != NONE {
            pfns.push(pfn);
            pfn = self.next[pfn as usize];
        }
        pfns
    }

    /// The compaction deferral: (`compact_considered`,
    /// `compact_defer_shift`, `compact_order_failed`).
    pub fn compact_defer_state(&self) -> (u32, u32, usize) {
        (self.compact_considered, self.compact_defer_shift, self.compact_order_failed)
    }

    // free lists

    fn add_to_free_list(&mut self, pfn: u32, order: usize, mt: MigrateType, tail: bool) {
        let area = &mut self.free_area[order];
        let m = mt as usize;
        let p = pfn as usize;
        self.state[p] = BUDDY | order as u8;
        if tail {
            self.prev[p] = area.tail[m];
            self.next[p] = NONE;
            match area.tail[m] {
                NONE => area.head[m] = pfn,
                t => self.next[t as usize] = pfn,
            }
            area.tail[m] = pfn;
        } else {
            self.next[p] = area.head[m];
            self.prev[p] = NONE;
            match area.head[m] {
                NONE => area.tail[m] = pfn,
                h => self.prev[h as usize] = pfn,
            }
            area.head[m] = pfn;
        }
        area.nr_free[m] += 1;
        self.nr_free_pages += 1 << order;
    }

    fn del_page_from_free_list(&mut self, pfn: u32, order: usize, mt: MigrateType) {
        let area = &mut self.free_area[order];
        let m = mt as usize;
        let p = pfn as usize;
        debug_assert_eq!(self.state[p], BUDDY | order as u8);
        let (n, pr) = (self.next[p], self.prev[p]);
        match pr {
            NONE => area.head[m] = n,
            x => self.next[x as usize] = n,
        }
        match n {
            NONE => area.tail[m] = pr,
            x => self.prev[x as usize] = pr,
        }
        self.next[p] = NONE;
        self.prev[p] = NONE;
        self.state[p] = 0;
        area.nr_free[m] -= 1;
        self.nr_free_pages -= 1 << order;
    }

    fn move_to_free_list(&mut self, pfn: u32, order: usize, old: MigrateType, new: MigrateType) {
        self.del_page_from_free_list(pfn, order, old);
        self.add_to_free_list(pfn, order, new, true);
    }

    fn get_page_from_free_area(&self, order: usize, mt: MigrateType) -> Option<u32> {
        match self.free_area[order].head[mt as usize] {
            NONE => None,
            pfn => Some(pfn),
        }
    }

    /// `__find_buddy_pfn`.
    fn find_buddy_pfn(pfn: u32, order: usize) -> u32 {
        pfn ^ (1 << order)
    }

    /// `page_is_buddy`: `buddy` heads a free block of exactly `order`.
    fn page_is_buddy(&self, buddy: u32, order: usize) -> bool {
        (buddy as usize) < self.nr_pages && self.state[buddy as usize] == BUDDY | order as u8
    }

    /// `buddy_merge_likely`: the block's buddy one order up is free, so put
    /// this block at the tail where it is less likely to be taken first.
    fn buddy_merge_likely(&self, pfn: u32, buddy: u32, order: usize) -> bool {
        if order >= MAX_PAGE_ORDER - 1 {
            return false;
        }
        let higher = buddy & pfn;
        self.page_is_buddy(Self::find_buddy_pfn(higher, order + 1), order + 1)
    }

    /// `__free_one_page`: put a block back and merge it with its buddies;
    /// at the list's tail when `to_tail` (FPI_TO_TAIL) or when it is likely
    /// to merge further.
    fn free_one_page(&mut self, mut pfn: u32, mut order: usize, to_tail: bool) {
        let mt = self.pageblock_migratetype(pfn);
        while order < MAX_PAGE_ORDER {
            let buddy = Self::find_buddy_pfn(pfn, order);
            if !self.page_is_buddy(buddy, order) {
                break;
            }
            let buddy_mt = self.pageblock_migratetype(buddy);
            self.del_page_from_free_list(buddy, order, buddy_mt);
            if buddy_mt != mt {
                // match the buddy's type, so that a later expand() puts the
                // halves on the right lists
                self.set_pageblock_migratetype(buddy, mt);
            }
            pfn &= buddy;
            order += 1;
        }
        let tail = to_tail
            || (order < MAX_PAGE_ORDER
                && self.buddy_merge_likely(pfn, Self::find_buddy_pfn(pfn, order), order));
        self.add_to_free_list(pfn, order, mt, tail);
    }

    /// `expand`: split a block of order `high` at `pfn` down to `low`,
    /// the upper halves back on `mt`'s lists; pages put back.
    fn expand(&mut self, pfn: u32, low: usize, mut high: usize, mt: MigrateType) -> usize {
        let mut added = 0;
        while high > low {
            high -= 1;
            self.add_to_free_list(pfn + (1 << high), high, mt, false);
            added += 1 << high;
        }
        added
    }

    fn page_del_and_expand(&mut self, pfn: u32, low: usize, high: usize, mt: MigrateType) {
        self.del_page_from_free_list(pfn, high, mt);
        self.expand(pfn, low, high, mt);
    }

    /// `__rmqueue_smallest`: the smallest free block of `mt` that fits.
    fn rmqueue_smallest(&mut self, order: usize, mt: MigrateType) -> Option<u32> {
        for current in order..NR_PAGE_ORDERS {
            if let Some(pfn) = self.get_page_from_free_area(current, mt) {
                self.page_del_and_expand(pfn, order, current, mt);
                return Some(pfn);
            }
        }
        None
    }

    /// `find_suitable_fallback`: the first type of `mt`'s fallbacks with a
    /// free block of `order`.
    fn find_suitable_fallback(&self, order: usize, mt: MigrateType) -> Option<MigrateType> {
        let area = &self.free_area[order];
        if area.total() == 0 {
            return None;
        }
        mt.fallbacks().into_iter().find(|f| area.nr_free[*f as usize] > 0)
    }

    /// `should_try_claim_block`: whether a fallback of this order may take
    /// over the whole pageblock.  Small movable requests never do: movable
    /// pages can be moved out later, unmovable ones cannot.
    fn should_try_claim_block(order: usize, mt: MigrateType) -> bool {
        order >= PAGEBLOCK_ORDER / 2 || mt != MigrateType::Movable
    }

    /// The free and movable-allocated pages of the pageblock holding
    /// `pfn` (`prep_move_freepages_block`); None when the block runs past
    /// the zone's end.
    fn prep_move_freepages_block(&self, pfn: u32) -> Option<(u32, usize, usize)> {
        let start = pfn as usize & !(PAGEBLOCK_NR_PAGES - 1);
        let end = start + PAGEBLOCK_NR_PAGES;
        if end > self.nr_pages {
            return None;
        }
        let (mut free, mut movable) = (0, 0);
        let mut p = start;
        while p < end {
            let s = self.state[p];
            let order = (s & ORDER_MASK) as usize;
            if s & BUDDY != 0 {
                free += 1 << order;
                p += 1 << order;
            } else if s & HEAD != 0 {
                // the kernel counts PageLRU and __PageMovable pages: here,
                // the blocks allocated as movable
                if self.alloc_mt[p] == MigrateType::Movable as u8 {
                    movable += 1 << order;
                }
                p += 1 << order;
            } else {
                p += 1;
            }
        }
        Some((start as u32, free, movable))
    }

    /// `__move_freepages_block`: every free block of the pageblock at
    /// `start` onto `new`'s lists.
    fn move_freepages_block(&mut self, start: u32, old: MigrateType, new: MigrateType) {
        let end = start as usize + PAGEBLOCK_NR_PAGES;
        let mut p = start as usize;
        while p < end {
            let s = self.state[p];
            let order = (s & ORDER_MASK) as usize;
            if s & BUDDY != 0 {
                self.move_to_free_list(p as u32, order, old, new);
                p += 1 << order;
            } else if s & HEAD != 0 {
                p += 1 << order;
            } else {
                p += 1;
            }
        }
    }

    /// `change_pageblock_range`: a block of pageblock order or more becomes `mt`.
    fn change_pageblock_range(&mut self, pfn: u32, order: usize, mt: MigrateType) {
        let blocks = 1usize << order.saturating_sub(PAGEBLOCK_ORDER);
        for i in 0..blocks {
            self.set_pageblock_migratetype(pfn + (i * PAGEBLOCK_NR_PAGES) as u32, mt);
        }
    }

    /// `boost_watermark`: raise the boost by a pageblock, up to
    /// `watermark_boost_factor` ten-thousandths of the high watermark (but
    /// at least a pageblock); false, and no boost, when the factor is 0,
    /// the zone has fewer than four pageblocks' pages (every page of this
    /// zone is managed), or that share of the high watermark is 0.
    fn boost_watermark(&mut self) -> bool {
        if self.watermark_boost_factor == 0 || PAGEBLOCK_NR_PAGES * 4 > self.nr_pages {
            return false;
        }
        // mult_frac(high, factor, 10000), which cannot overflow in u128
        let share = self.watermarks.high as u128 * self.watermark_boost_factor as u128 / 10_000;
        let max_boost = usize::try_from(share).unwrap_or(usize::MAX);
        if max_boost == 0 {
            return false;
        }
        let max_boost = max_boost.max(PAGEBLOCK_NR_PAGES);
        self.watermark_boost = (self.watermark_boost + PAGEBLOCK_NR_PAGES).min(max_boost);
        true
    }

    /// `try_to_claim_block`: take over the pageblock of the free block at
    /// `pfn` for `start` when enough of it is free or alike, then allocate
    /// from it.  A block smaller than a pageblock boosts the watermark
    /// first, claimed or not, to have kswapd reclaim more and so make
    /// fewer fallbacks later.
    fn try_to_claim_block(
        &mut self,
        pfn: u32,
        current: usize,
        order: usize,
        start: MigrateType,
        block: MigrateType,
    ) -> Option<u32> {
        if current >= PAGEBLOCK_ORDER {
            self.del_page_from_free_list(pfn, current, block);
            self.change_pageblock_range(pfn, current, start);
            self.expand(pfn, order, current, start);
            self.events.blocks_claimed += 1 << (current - PAGEBLOCK_ORDER);
            return Some(pfn);
        }
        // every allocation here may wake kswapd (ALLOC_KSWAPD)
        if self.boost_watermark() {
            self.boosted_watermark = true;
            self.events.watermark_boosts += 1;
        }
        let (block_start, free, movable) = self.prep_move_freepages_block(pfn)?;
        let alike = if start == MigrateType::Movable {
            movable
        } else if block == MigrateType::Movable {
            PAGEBLOCK_NR_PAGES - (free + movable)
        } else {
            0
        };
        if free + alike >= 1 << (PAGEBLOCK_ORDER - 1) {
            self.move_freepages_block(block_start, block, start);
            self.set_pageblock_migratetype(block_start, start);
            self.events.blocks_claimed += 1;
            return self.rmqueue_smallest(order, start);
        }
        None
    }

    /// `__rmqueue_claim`: from the largest free block of another type
    /// down, claim its pageblock and allocate from it.
    fn rmqueue_claim(&mut self, order: usize, start: MigrateType) -> Option<u32> {
        for current in (order..NR_PAGE_ORDERS).rev() {
            let Some(fallback) = self.find_suitable_fallback(current, start) else {
                continue;
            };
            if !Self::should_try_claim_block(current, start) {
                break;
            }
            let pfn = self.get_page_from_free_area(current, fallback)?;
            if let Some(page) = self.try_to_claim_block(pfn, current, order, start, fallback) {
                return Some(page);
            }
        }
        None
    }

    /// `__rmqueue_steal`: the smallest block of another type, its pageblock
    /// left as it is.
    fn rmqueue_steal(&mut self, order: usize, start: MigrateType) -> Option<u32> {
        for current in order..NR_PAGE_ORDERS {
            if let Some(fallback) = self.find_suitable_fallback(current, start) {
                let pfn = self.get_page_from_free_area(current, fallback)?;
                self.page_del_and_expand(pfn, order, current, fallback);
                return Some(pfn);
            }
        }
        None
    }

    /// `__rmqueue`: the requested type, then a claimed block, then a stolen one.
    fn rmqueue(&mut self, order: usize, mt: MigrateType) -> Option<u32> {
        if let Some(pfn) = self.rmqueue_smallest(order, mt) {
            return Some(pfn);
        }
        let pfn = self.rmqueue_claim(order, mt).or_else(|| self.rmqueue_steal(order, mt))?;
        self.events.alloc_fallback += 1;
        Some(pfn)
    }

    /// `__compact_finished`'s test: a free block of `order` or more on
    /// `mt`'s lists, or on another type's that a request of `mt` would
    /// claim.
    pub fn suitable_page_free(&self, order: usize, mt: MigrateType) -> bool {
        (order..NR_PAGE_ORDERS).any(|o| {
            self.free_area[o].nr_free[mt as usize] > 0
                || (Self::should_try_claim_block(o, mt) && self.find_suitable_fallback(o, mt).is_some())
        })
    }

    /// `compaction_deferred`: skip this compaction?  After a failure at
    /// `order` or above, only one attempt in 2^defer_shift goes ahead.
    pub fn compaction_deferred(&mut self, order: usize) -> bool {
        if order < self.compact_order_failed {
            return false;
        }
        self.compact_considered = (self.compact_considered + 1).min(1 << self.compact_defer_shift);
        self.compact_considered < 1 << self.compact_defer_shift
    }

    /// `defer_compaction`: a compaction for `order` failed.
    pub fn defer_compaction(&mut self, order: usize) {
        self.compact_considered = 0;
        self.compact_defer_shift = (self.compact_defer_shift + 1).min(COMPACT_MAX_DEFER_SHIFT);
        self.compact_order_failed = self.compact_order_failed.min(order);
    }

    /// `compaction_defer_reset`: a compaction for `order` succeeded
    /// (`alloc_success`: and the allocation after it too).
    pub fn compaction_defer_reset(&mut self, order: usize, alloc_success: bool) {
        if alloc_success {
            self.compact_considered = 0;
            self.compact_defer_shift = 0;
        }
        if order >= self.compact_order_failed {
            self.compact_order_failed = order + 1;
        }
    }

    /// `__zone_watermark_ok`: after taking a block of `order`, would the
    /// zone keep more than `mark` free pages, and is there a free block of
    /// that order at all?
    pub fn zone_watermark_ok(&self, order: usize, mark: usize) -> bool {
        let free = self.nr_free_pages as isize - ((1isize << order) - 1);
        if free <= mark as isize {
            return false;
        }
        order == 0 || (order..NR_PAGE_ORDERS).any(|o| self.free_area[o].total() > 0)
    }

    /// Allocate a block of `order` for `mt` if the zone stays above `mark`
    /// (the checks of `get_page_from_freelist`, then `rmqueue`).
    pub fn alloc_pages(&mut self, order: usize, mt: MigrateType, mark: usize) -> Result<u32, ZoneError> {
        if order > MAX_PAGE_ORDER {
            return Err(ZoneError(format!("order {order} is above MAX_PAGE_ORDER {MAX_PAGE_ORDER}")));
        }
        let got = if self.zone_watermark_ok(order, mark) { self.rmqueue(order, mt) } else { None };
        match got {
            Some(pfn) => {
                let p = pfn as usize;
                self.state[p] = HEAD | order as u8;
                self.alloc_mt[p] = mt as u8;
                Ok(pfn)
            }
            None => {
                self.events.alloc_fail += 1;
                Err(ZoneError(format!(
                    "no free block of order {order} for {} above the watermark",
                    mt.name()
                )))
            }
        }
    }

    /// `__free_pages`: give back the allocated block whose head is `pfn`.
    pub fn free_pages(&mut self, pfn: u32, order: usize) -> Result<(), ZoneError> {
        match self.allocated_block(pfn) {
            Some((o, _)) if o == order => {
                self.state[pfn as usize] = 0;
                self.free_one_page(pfn, order, false);
                Ok(())
            }
            Some((o, _)) => Err(ZoneError(format!("pfn {pfn} heads a block of order {o}, not {order}"))),
            None => Err(ZoneError(format!("pfn {pfn} is not the head of an allocated block"))),
        }
    }

    /// `__isolate_free_page`: take the free block at `pfn` off its list for
    /// compaction if the zone stays above the min watermark (as an
    /// allocation of the block would: WMARK_MIN + 2^order at order 0; the
    /// kernel reads `_watermark[WMARK_MIN]`, without the boost); a block of
    /// pageblock order or more turns its pageblocks movable.  The block is
    /// split into order-0 pages allocated as movable; their pfns are pushed
    /// to `out`.
    pub fn isolate_free_page(&mut self, pfn: u32, out: &mut Vec<u32>) -> Option<usize> {
        let order = self.buddy_order(pfn)?;
        if !self.zone_watermark_ok(0, self.watermarks.min + (1 << order)) {
            return None;
        }
        let mt = self.pageblock_migratetype(pfn);
        self.del_page_from_free_list(pfn, order, mt);
        if order >= PAGEBLOCK_ORDER - 1 {
            // the pageblocks it spans become movable, with their other free blocks
            let blocks = 1usize << order.saturating_sub(PAGEBLOCK_ORDER);
            for i in 0..blocks {
                let b = pfn + (i * PAGEBLOCK_NR_PAGES) as u32;
                let old = self.pageblock_migratetype(b);
                if old != MigrateType::Movable {
                    if let Some((start, _, _)) = self.prep_move_freepages_block(b) {
                        self.move_freepages_block(start, old, MigrateType::Movable);
                        self.set_pageblock_migratetype(start, MigrateType::Movable);
                    }
                }
            }
        }
        for p in pfn..pfn + (1 << order) {
            self.state[p as usize] = HEAD;
            self.alloc_mt[p as usize] = MigrateType::Movable as u8;
            out.push(p);
        }
        Some(order)
    }

    /// `fill_contig_page_info`.
    pub fn contig_page_info(&self, suitable_order: usize) -> ContigPageInfo {
        let mut info = ContigPageInfo::default();
        for order in 0..NR_PAGE_ORDERS {
            let blocks = self.free_area[order].total();
            info.free_blocks_total += blocks;
            info.free_pages += blocks << order;
            if order >= suitable_order {
                info.free_blocks_suitable += blocks << (order - suitable_order);
            }
        }
        info
    }

    /// `__fragmentation_index` (extfrag_index), in thousandths: -1000 when a
    /// block of `order` is free; towards 0 a failure would be for want of
    /// memory, towards 1000 for want of contiguity.
    pub fn fragmentation_index(&self, order: usize) -> i64 {
        let info = self.contig_page_info(order);
        if info.free_blocks_total == 0 {
            return 0;
        }
        if info.free_blocks_suitable > 0 {
            return -1000;
        }
        let requested = 1u64 << order;
        1000 - ((1000 + (info.free_pages as u64 * 1000) / requested) / info.free_blocks_total as u64) as i64
    }

    /// `unusable_free_index` (unusable_index), in thousandths: the share of
    /// free memory that cannot serve a request of `order`.
    pub fn unusable_free_index(&self, order: usize) -> i64 {
        let info = self.contig_page_info(order);
        if info.free_pages == 0 {
            return 1000;
        }
        (((info.free_pages - (info.free_blocks_suitable << order)) as u64 * 1000) / info.free_pages as u64)
            as i64
    }

    /// Pageblocks of each migratetype (pagetypeinfo's "Number of blocks type").
    pub fn pageblock_counts(&self) -> [usize; 3] {
        let mut counts = [0; 3];
        for &mt in &self.pageblock_mt {
            counts[mt as usize] += 1;
        }
        counts
    }

    /// Every pageblock's migratetype, lowest pfn first.
    pub fn pageblock_types(&self) -> Vec<MigrateType> {
        self.pageblock_mt.iter().map(|&m| MigrateType::from_u8(m)).collect()
    }

    /// The whole-zone consistency check: every frame is in exactly one free
    /// or allocated block, blocks are aligned to their order, every free
    /// block is on the list of its pageblock's type and the lists and their
    /// counts agree, and no two free buddies are left unmerged.
    pub fn check(&self) -> Result<(), ZoneError> {
        let bad = |m: String| Err(ZoneError(m));
        let mut on_lists = vec![false; self.nr_pages];
        let mut free_pages = 0;
        for order in 0..NR_PAGE_ORDERS {
            for mt in MIGRATE_TYPES {
                let (mut count, mut prev, mut pfn) = (0, NONE, self.free_area[order].head[mt as usize]);
                while pfn != NONE {
                    let p = pfn as usize;
                    if p >= self.nr_pages || on_lists[p] {
                        return bad(format!(
                            "free list {order}/{} loops or leaves the zone at {pfn}",
                            mt.name()
                        ));
                    }
                    on_lists[p] = true;
                    if self.state[p] != BUDDY | order as u8 {
                        return bad(format!(
                            "pfn {pfn} on the order-{order} list is no free block of that order"
                        ));
                    }
                    if self.prev[p] != prev {
                        return bad(format!("pfn {pfn}'s prev link is broken"));
                    }
                    if self.pageblock_migratetype(pfn) != mt {
                        return bad(format!(
                            "free pfn {pfn} is on the {} list of a {} pageblock",
                            mt.name(),
                            self.pageblock_migratetype(pfn).name()
                        ));
                    }
                    count += 1;
                    free_pages += 1 << order;
                    prev = pfn;
                    pfn = self.next[p];
                }
                if prev != self.free_area[order].tail[mt as usize] {
                    return bad(format!("the order-{order} {} list's tail is wrong", mt.name()));
                }
                if count != self.free_area[order].nr_free[mt as usize] {
                    return bad(format!("nr_free of order {order} {} is wrong", mt.name()));
                }
            }
        }
        if free_pages != self.nr_free_pages {
            return bad(format!("nr_free_pages {} but {free_pages} free on the lists", self.nr_free_pages));
        }
        let mut p = 0;
        while p < self.nr_pages {
            let s = self.state[p];
            let order = (s & ORDER_MASK) as usize;
            if s & (BUDDY | HEAD) == 0 {
                return bad(format!("pfn {p} belongs to no block"));
            }
            if p & ((1 << order) - 1) != 0 || p + (1 << order) > self.nr_pages {
                return bad(format!(
                    "the order-{order} block at pfn {p} is misaligned or runs past the zone"
                ));
            }
            if s & BUDDY != 0 {
                if !on_lists[p] {
                    return bad(format!("free block at pfn {p} is on no list"));
                }
                let buddy = Self::find_buddy_pfn(p as u32, order);
                if order < MAX_PAGE_ORDER && self.page_is_buddy(buddy, order) {
                    return bad(format!(
                        "free buddies at pfns {p} and {buddy} of order {order} are not merged"
                    ));
                }
            }
            if (p + 1..p + (1 << order)).any(|q| self.state[q] != 0) {
                return bad(format!("the order-{order} block at pfn {p} overlaps another"));
            }
            p += 1 << order;
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const ZONE: usize = 16 * PAGEBLOCK_NR_PAGES;

    fn zone() -> Zone {
        let z = Zone::new(ZONE).unwrap();
        z.check().unwrap();
        z
    }

    #[test]
    fn a_new_zone_is_free_in_max_order_blocks() {
        let z = zone();
        assert_eq!(z.nr_free_pages(), ZONE);
        assert_eq!(z.nr_free(MAX_PAGE_ORDER, MigrateType::Movable), ZONE >> MAX_PAGE_ORDER);
        assert_eq!(z.pageblock_counts(), [0, 16, 0]);
        assert_eq!(z.fragmentation_index(9), -1000);
        assert_eq!(z.unusable_free_index(MAX_PAGE_ORDER), 0);
        // an odd size ends in smaller blocks
        let odd = Zone::new(1000).unwrap();
        odd.check().unwrap();
        assert_eq!(odd.nr_free_pages(), 1000);
        assert_eq!(odd.nr_free(9, MigrateType::Movable), 1);
        assert_eq!(odd.nr_free(3, MigrateType::Movable), 1);
    }

    #[test]
    fn split_then_free_coalesces_back() {
        let mut z = zone();
        let mut pfns = Vec::new();
        for _ in 0..300 {
            pfns.push(z.alloc_pages(0, MigrateType::Movable, 0).unwrap());
        }
        z.check().unwrap();
        assert_eq!(z.nr_free_pages(), ZONE - 300);
        // lowest first, as __rmqueue_smallest splits from the low end
        assert_eq!(&pfns[..4], &[0, 1, 2, 3]);
        for (i, &p) in pfns.iter().enumerate() {
            z.free_pages(p, 0).unwrap();
            if i % 50 == 0 {
                z.check().unwrap();
            }
        }
        z.check().unwrap();
        assert_eq!(z.nr_free(MAX_PAGE_ORDER, MigrateType::Movable), ZONE >> MAX_PAGE_ORDER);
    }

    #[test]
    fn bad_frees_are_refused_and_change_nothing() {
        let mut z = zone();
        let p = z.alloc_pages(2, MigrateType::Movable, 0).unwrap();
        assert!(z.free_pages(p, 1).is_err());
        assert!(z.free_pages(p + 1, 0).is_err());
        assert!(z.free_pages(p + 4, 0).is_err());
        assert!(z.free_pages(ZONE as u32 + 5, 0).is_err());
        assert!(z.alloc_pages(MAX_PAGE_ORDER + 1, MigrateType::Movable, 0).is_err());
        z.check().unwrap();
        z.free_pages(p, 2).unwrap();
        assert!(z.free_pages(p, 2).is_err());
        z.check().unwrap();
        assert!(Zone::new(0).is_err());
    }

    #[test]
    fn an_unmovable_request_claims_a_whole_pageblock() {
        let mut z = zone();
        let p = z.alloc_pages(0, MigrateType::Unmovable, 0).unwrap();
        z.check().unwrap();
        // the largest free block was claimed: its pageblocks are unmovable now
        assert_eq!(z.pageblock_migratetype(p), MigrateType::Unmovable);
        assert!(z.events().blocks_claimed >= 1);
        assert_eq!(z.events().alloc_fallback, 1);
        // the next unmovable request comes from the same block, no fallback
        let q = z.alloc_pages(0, MigrateType::Unmovable, 0).unwrap();
        assert_eq!(z.pageblock_migratetype(q), MigrateType::Unmovable);
        assert_eq!(z.events().alloc_fallback, 1);
    }

    #[test]
    fn a_small_movable_request_steals_without_claiming() {
        let mut z = Zone::new(2 * PAGEBLOCK_NR_PAGES).unwrap();
        // make both pageblocks unmovable, then fill them to one free page each
        let a = z.alloc_pages(PAGEBLOCK_ORDER, MigrateType::Unmovable, 0).unwrap();
        let _b = z.alloc_pages(PAGEBLOCK_ORDER, MigrateType::Unmovable, 0).unwrap();
        assert_eq!(z.pageblock_counts(), [2, 0, 0]);
        z.free_pages(a, PAGEBLOCK_ORDER).unwrap();
        let mut held = Vec::new();
        while z.nr_free_pages() > 3 {
            held.push(z.alloc_pages(0, MigrateType::Unmovable, 0).unwrap());
        }
        z.check().unwrap();
        let m = z.alloc_pages(0, MigrateType::Movable, 0).unwrap();
        // stolen: its block keeps the unmovable type
        assert_eq!(z.pageblock_migratetype(m), MigrateType::Unmovable);
        assert_eq!(z.pageblock_counts(), [2, 0, 0]);
        z.check().unwrap();
    }

    #[test]
    fn freeing_merges_across_pageblocks_and_retypes_the_buddy() {
        let mut z = Zone::new(2 * PAGEBLOCK_NR_PAGES).unwrap();
        let a = z.alloc_pages(PAGEBLOCK_ORDER, MigrateType::Unmovable, 0).unwrap();
        let b = z.alloc_pages(PAGEBLOCK_ORDER, MigrateType::Movable, 0).unwrap();
        z.free_pages(b, PAGEBLOCK_ORDER).unwrap();
        z.free_pages(a, PAGEBLOCK_ORDER).unwrap();
        z.check().unwrap();
        assert_eq!(z.nr_free(PAGEBLOCK_ORDER + 1, z.pageblock_migratetype(0)), 1);
    }

    #[test]
    fn watermarks_refuse_and_count_failures() {
        let mut z = zone();
        let w = z.watermarks();
        assert!(w.min > 0 && w.min < w.low && w.low < w.high);
        let mut n = 0;
        while z.alloc_pages(0, MigrateType::Movable, w.low).is_ok() {
            n += 1;
        }
        assert_eq!(z.nr_free_pages(), w.low);
        assert_eq!(n, ZONE - w.low);
        assert_eq!(z.events().alloc_fail, 1);
        // below the mark, a request that ignores it still succeeds
        assert!(z.alloc_pages(0, MigrateType::Movable, 0).is_ok());
        z.check().unwrap();
    }

    #[test]
    fn one_gib_watermarks_match_the_kernel() {
        // min_free_kbytes = sqrt(1 GiB in KiB * 16) = 4096 KiB = 1024 pages;
        // the scale factor's 0.1% of 262144 pages (262) beats min / 4 (256)
        let w = Watermarks::for_zone(262_144);
        assert_eq!(w, Watermarks { min: 1024, low: 1286, high: 1548 });
    }

    #[test]
    fn fragmentation_indices_follow_vmstat() {
        let mut z = Zone::new(PAGEBLOCK_NR_PAGES).unwrap();
        let pfns: Vec<u32> =
            (0..PAGEBLOCK_NR_PAGES).map(|_| z.alloc_pages(0, MigrateType::Movable, 0).unwrap()).collect();
        // free every other page: 256 free order-0 blocks
        for p in pfns.iter().step_by(2) {
            z.free_pages(*p, 0).unwrap();
        }
        z.check().unwrap();
        assert_eq!(z.unusable_free_index(0), 0);
        assert_eq!(z.unusable_free_index(1), 1000);
        assert_eq!(z.fragmentation_index(0), -1000);
        // 1000 - (1000 + 256 * 1000 / 8) / 256 = 1000 - 128
        assert_eq!(z.fragmentation_index(3), 872);
        let info = z.contig_page_info(3);
        assert_eq!(info, ContigPageInfo { free_pages: 256, free_blocks_total: 256, free_blocks_suitable: 0 });
    }

    #[test]
    fn isolating_a_free_block_gives_order_zero_movable_pages() {
        let mut z = zone();
        // an unmovable request claims the two pageblocks of the order-10
        // block at pfn 0; freed, the block stays unmovable
        let p = z.alloc_pages(PAGEBLOCK_ORDER, MigrateType::Unmovable, 0).unwrap();
        z.free_pages(p, PAGEBLOCK_ORDER).unwrap();
        assert_eq!(z.buddy_order(0), Some(MAX_PAGE_ORDER));
        assert_eq!(z.pageblock_migratetype(PAGEBLOCK_NR_PAGES as u32), MigrateType::Unmovable);
        let mut out = Vec::new();
        assert_eq!(z.isolate_free_page(0, &mut out), Some(MAX_PAGE_ORDER));
        assert_eq!(out.len(), 1 << MAX_PAGE_ORDER);
        assert!(out.iter().all(|&q| z.allocated_block(q) == Some((0, MigrateType::Movable))));
        assert_eq!(z.pageblock_migratetype(0), MigrateType::Movable);
        assert_eq!(z.pageblock_migratetype(PAGEBLOCK_NR_PAGES as u32), MigrateType::Movable);
        z.check().unwrap();
        // a free page that is no block's head, and one below the watermark, are refused
        assert_eq!(z.isolate_free_page(1, &mut out), None);
        for q in out {
            z.free_pages(q, 0).unwrap();
        }
        z.check().unwrap();
        assert_eq!(z.nr_free_pages(), ZONE);
        z.set_watermarks(Watermarks { min: ZONE, low: ZONE, high: ZONE });
        let mut none = Vec::new();
        assert_eq!(z.isolate_free_page(0, &mut none), None);
        assert!(none.is_empty());
    }

    #[test]
    fn isolating_half_a_pageblock_moves_its_other_free_blocks() {
        let mut z = zone();
        // one unmovable page claims pageblocks 0-1; page 0 held, the rest free
        let p = z.alloc_pages(0, MigrateType::Unmovable, 0).unwrap();
        assert_eq!(p, 0);
        let head = PAGEBLOCK_NR_PAGES as u32 / 2;
        assert_eq!(z.buddy_order(head), Some(PAGEBLOCK_ORDER - 1));
        let mut out = Vec::new();
        assert_eq!(z.isolate_free_page(head, &mut out), Some(PAGEBLOCK_ORDER - 1));
        assert_eq!(z.pageblock_migratetype(0), MigrateType::Movable);
        z.check().unwrap();
    }

    #[test]
    fn a_free_list_is_listed_head_first() {
        let mut z = Zone::new(2 * PAGEBLOCK_NR_PAGES).unwrap();
        assert_eq!(z.free_list(MAX_PAGE_ORDER, MigrateType::Movable), vec![0]);
        let a = z.alloc_pages(0, MigrateType::Movable, 0).unwrap();
        // the split left one block of each order 0..9 at the head of its list
        for order in 0..MAX_PAGE_ORDER {
            assert_eq!(z.free_list(order, MigrateType::Movable), vec![1 << order]);
        }
        let b = z.alloc_pages(2, MigrateType::Movable, 0).unwrap();
        let c = z.alloc_pages(2, MigrateType::Movable, 0).unwrap();
        assert_eq!((a, b, c), (0, 4, 8));
        // freed, b cannot merge (its buddy c is held): it goes to the head,
        // before the order-2 block split off c's order-3 block
        z.free_pages(b, 2).unwrap();
        assert_eq!(z.free_list(2, MigrateType::Movable), vec![4, 12]);
        assert_eq!(z.free_list(2, MigrateType::Unmovable), Vec::<u32>::new());
        for order in 0..NR_PAGE_ORDERS {
            for mt in MIGRATE_TYPES {
                assert_eq!(z.free_list(order, mt).len(), z.nr_free(order, mt));
            }
        }
        z.check().unwrap();
    }

    #[test]
    fn compaction_deferral_backs_off_and_resets() {
        let mut z = zone();
        assert!(!z.compaction_deferred(9));
        z.defer_compaction(9);
        z.defer_compaction(9);
        // two failures: one try in four goes ahead
        let runs: Vec<bool> = (0..8).map(|_| !z.compaction_deferred(9)).collect();
        assert_eq!(runs, [false, false, false, true, true, true, true, true]);
        assert_eq!(z.compact_defer_state(), (4, 2, 0));
        z.compaction_defer_reset(9, true);
        assert_eq!(z.compact_defer_state(), (0, 0, 10));
        assert!(!z.compaction_deferred(9));
        // a failure at 9 after a success there defers 9 but not the orders below
        z.defer_compaction(9);
        assert!(z.compaction_deferred(9));
        assert!(!z.compaction_deferred(3));
    }

    /// A zone of `pageblocks` pageblocks filled with movable order-8
    /// blocks, one order-8 block freed in each of the first `freed`
    /// pageblocks: every free block is smaller than a pageblock.
    fn order8_filled(pageblocks: usize, freed: usize) -> Zone {
        let mut z = Zone::new(pageblocks * PAGEBLOCK_NR_PAGES).unwrap();
        let held: Vec<u32> =
            (0..2 * pageblocks).map(|_| z.alloc_pages(8, MigrateType::Movable, 0).unwrap()).collect();
        assert_eq!(z.nr_free_pages(), 0);
        for b in 0..freed {
            z.free_pages(held[2 * b], 8).unwrap();
        }
        z.check().unwrap();
        z
    }

    #[test]
    fn a_claim_of_a_block_smaller_than_a_pageblock_boosts_the_watermark() {
        // 1 GiB: _watermark[HIGH] 1548, so the boost may reach
        // mult_frac(1548, 15000, 10000) = 2322 pages
        let mut z = order8_filled(512, 6);
        let raw = z.watermarks();
        assert_eq!(raw, Watermarks { min: 1024, low: 1286, high: 1548 });
        assert_eq!((z.watermark_boost(), z.watermark_boosted()), (0, false));
        let mut boosts = Vec::new();
        for _ in 0..6 {
            // each request falls back to a free order-8 block of a movable
            // pageblock and claims the pageblock (256 free pages of 512)
            z.alloc_pages(8, MigrateType::Unmovable, 0).unwrap();
            boosts.push(z.watermark_boost());
        }
        assert_eq!(boosts, [512, 1024, 1536, 2048, 2322, 2322]);
        assert_eq!(z.events().watermark_boosts, 6);
        assert_eq!(z.events().blocks_claimed, 6);
        assert!(z.watermark_boosted());
        // every mark allocations see carries the boost
        assert_eq!(z.watermarks(), Watermarks { min: 1024 + 2322, low: 1286 + 2322, high: 1548 + 2322 });
        // the owner takes the flag (rmqueue's test and clear) once
        assert!(z.take_boosted_watermark());
        assert!(!z.take_boosted_watermark());
        // kswapd lowers the boost by what it found, never below 0
        z.lower_watermark_boost(1000);
        assert_eq!(z.watermark_boost(), 1322);
        z.lower_watermark_boost(5000);
        assert_eq!(z.watermark_boost(), 0);
        assert_eq!(z.watermarks(), raw);
        z.check().unwrap();
    }

    #[test]
    fn a_claim_that_fails_still_boosts_and_a_whole_pageblock_does_not() {
        // one free movable page in a full zone: the unmovable request tries
        // to claim its pageblock (1 free page, nothing alike: refused),
        // then steals the page
        let mut z = Zone::new(4 * PAGEBLOCK_NR_PAGES).unwrap();
        let pages: Vec<u32> =
            (0..4 * PAGEBLOCK_NR_PAGES).map(|_| z.alloc_pages(0, MigrateType::Movable, 0).unwrap()).collect();
        z.free_pages(pages[100], 0).unwrap();
        let p = z.alloc_pages(0, MigrateType::Unmovable, 0).unwrap();
        assert_eq!(p, pages[100]);
        assert_eq!(z.events().blocks_claimed, 0);
        assert_eq!(z.events().alloc_fallback, 1);
        // high 134 here: max(512, 201) caps the boost at one pageblock
        assert_eq!(z.watermark_boost(), PAGEBLOCK_NR_PAGES);
        assert!(z.watermark_boosted());
        z.check().unwrap();
        // a block of pageblock order or more is claimed whole, without a boost
        let mut fresh = zone();
        fresh.alloc_pages(0, MigrateType::Unmovable, 0).unwrap();
        assert!(fresh.events().blocks_claimed >= 1);
        assert_eq!((fresh.watermark_boost(), fresh.watermark_boosted()), (0, false));
        assert_eq!(fresh.events().watermark_boosts, 0);
    }

    #[test]
    fn no_boost_in_a_small_zone_or_with_the_factor_at_zero() {
        // fewer than four pageblocks' pages
        let mut small = order8_filled(3, 2);
        small.alloc_pages(8, MigrateType::Unmovable, 0).unwrap();
        assert_eq!(small.events().blocks_claimed, 1);
        assert_eq!((small.watermark_boost(), small.watermark_boosted()), (0, false));
        // the factor at 0 turns boosting off
        let mut off = order8_filled(4, 2);
        off.set_watermark_boost_factor(0);
        off.alloc_pages(8, MigrateType::Unmovable, 0).unwrap();
        assert_eq!((off.watermark_boost(), off.events().watermark_boosts), (0, 0));
        // a factor whose share of the high watermark rounds to 0 boosts nothing
        // (134 * 1 / 10000); 100 gives 1 page, raised to a pageblock
        let mut tiny = order8_filled(4, 2);
        tiny.set_watermark_boost_factor(1);
        tiny.alloc_pages(8, MigrateType::Unmovable, 0).unwrap();
        assert_eq!(tiny.watermark_boost(), 0);
        tiny.set_watermark_boost_factor(100);
        tiny.alloc_pages(8, MigrateType::Unmovable, 0).unwrap();
        assert_eq!(tiny.watermark_boost(), PAGEBLOCK_NR_PAGES);
        assert_eq!(tiny.watermark_boost_factor(), 100);
    }

    #[test]
    fn the_boost_raises_the_marks_but_not_isolations_and_new_marks_drop_it() {
        let mut z = Zone::new(4 * PAGEBLOCK_NR_PAGES).unwrap();
        let held: Vec<u32> = (0..8).map(|_| z.alloc_pages(8, MigrateType::Movable, 0).unwrap()).collect();
        z.free_pages(held[0], 8).unwrap();
        z.alloc_pages(8, MigrateType::Unmovable, 0).unwrap();
        assert_eq!(z.watermark_boost(), PAGEBLOCK_NR_PAGES);
        // nothing free; raw marks 90/112/134, boosted 602/624/646
        let w = z.watermarks();
        assert_eq!(w, Watermarks { min: 602, low: 624, high: 646 });
        // two order-8 blocks of pageblock 2 back: 512 free, below the boosted min
        z.free_pages(held[4], 8).unwrap();
        z.free_pages(held[6], 8).unwrap();
        assert_eq!(z.nr_free_pages(), 512);
        assert!(z.alloc_pages(0, MigrateType::Movable, w.min).is_err());
        assert!(!z.zone_watermark_ok(0, w.min));
        // __isolate_free_page reads the min mark without the boost: 512 > 90 + 256
        let head = z.free_list(8, MigrateType::Movable)[0];
        let mut out = Vec::new();
        assert_eq!(z.isolate_free_page(head, &mut out), Some(8));
        assert_eq!(out.len(), 256);
        // new marks start the boost again from 0; the flag stays until it is taken
        z.set_watermarks(Watermarks { min: 1, low: 2, high: 3 });
        assert_eq!(z.watermark_boost(), 0);
        assert_eq!(z.watermarks(), Watermarks { min: 1, low: 2, high: 3 });
        assert!(z.take_boosted_watermark());
        z.check().unwrap();
    }

    #[test]
    fn random_churn_keeps_every_invariant() {
        let mut z = zone();
        let mut held: Vec<(u32, usize)> = Vec::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for step in 0..20_000 {
            let r = next();
            if held.is_empty() || r % 3 != 0 {
                let order = [0, 0, 0, 0, 1, 2, 3, 4, 9][(r >> 8) as usize % 9];
                let mt = MIGRATE_TYPES[(r >> 16) as usize % 3];
                if let Ok(p) = z.alloc_pages(order, mt, z.watermarks().min) {
                    held.push((p, order));
                }
            } else {
                let (p, o) = held.swap_remove((r >> 24) as usize % held.len());
                z.free_pages(p, o).unwrap();
            }
            if step % 2000 == 0 {
                z.check().unwrap();
            }
        }
        z.check().unwrap();
        for (p, o) in held.drain(..) {
            z.free_pages(p, o).unwrap();
        }
        z.check().unwrap();
        assert_eq!(z.nr_free_pages(), ZONE);
        assert_eq!(
            (0..NR_PAGE_ORDERS)
                .map(|o| MIGRATE_TYPES.iter().map(|&m| z.nr_free(o, m)).sum::<usize>())
                .sum::<usize>(),
            ZONE >> MAX_PAGE_ORDER
        );
    }
}
