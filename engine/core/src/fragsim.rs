//! The fragmentation simulation: zsmalloc in one zone with the other users
//! of a machine's memory, and what its page migration buys the high-order
//! allocations that come after.  The driver is `zsmalloc fragsim`.
//!
//! ```text
//!   one zoned Memory (mm/zone.rs): a buddy allocator over pageblocks
//!     zram      a zsmalloc pool: objects of the workload's sizes, a fill
//!               phase then churn; its pages movable (mainline or 2016
//!               protocol) or unmovable (before 4.8)
//!     anon      movable order-0 pages (anonymous memory, page cache),
//!               migratable by the zone's compaction, with their own churn
//!     kernel    unmovable order-0 pages (slab, kernel buffers)
//!     reclaim   reclaimable order-0 pages (dentries, inodes)
//!     cache     the page cache: movable order-0 pages that take the free
//!               memory down to the high watermark each tick, reclaimed
//!               (dropped at random: the LRU's age has nothing to do with
//!               where a page lies) when an allocation needs room
//!     requests  blocks of order 1-10 for a while (network buffers, slab,
//!               transparent huge pages), each kind with its rate
//! ```
//!
//! One tick: each user frees a share of its pages and allocates back to
//! its level (zram grows to its level during the fill), then the
//! high-order requests arrive; kswapd reclaims the cache up to the high
//! watermark when the zone is below the low one, and the cache grows into
//! what is free above the high one.  An order-0 allocation that fails
//! reclaims 32 cache pages and tries again, as long as reclaim makes
//! progress (direct reclaim and the slowpath's retries); a high-order
//! request that has too few free pages for compaction reclaims them first.
//! A request that fails wakes kcompactd and, if its kind may, runs direct
//! compaction first (`compaction_deferred`, `compact_zone` in async mode,
//! the allocation again).  kcompactd runs after the requests while woken,
//! in sync-light mode, as `kcompactd_do_work` does for the highest order
//! that failed; zsmalloc's shrinker (`zs_compact`) runs every few ticks.
//!
//! Watermark boosting: a fallback that tries to claim the pageblock of a
//! block smaller than a pageblock boosts the zone's watermarks
//! (`boost_watermark`, with the scenario's `vm.watermark_boost_factor`),
//! and every watermark here includes the boost (`wmark_pages`).  Such an
//! allocation also wakes kswapd (ZONE_BOOSTED_WATERMARK, `wakeup_kswapd`),
//! which then runs after that user's turn (zram, anon, the kernel's users)
//! or at the tick's end, whatever the free memory (`balance_pgdat`): below
//! the high watermark, boost included, it reclaims up to it; above it, the
//! boost's pages (`nr_boost_reclaim`).  Then it drops the boost it found
//! and wakes kcompactd at pageblock order: kcompactd runs in its turn
//! after the requests, and at once after the tick's last kswapd, before
//! the cache grows back into what kswapd freed.
//!
//! Every few ticks the simulation records an interval: the requests of
//! each order and how many were served, compaction stalls and successes,
//! pages migrated, watermark boosts, the zone's indices and free lists.
//!
//! The anonymous, kernel and reclaimable pages hold no bytes (migrating
//! one copies nothing); zsmalloc's pages are real memory, written and
//! migrated byte for byte.  The simulation runs in one thread.

use std::sync::{Arc, Weak};

use crate::mm::compaction::CompactStatus;
use crate::mm::migrate::{MigrateMode, MovableOps, MIGRATEPAGE_SUCCESS};
use crate::mm::zone::{
    MigrateType, Watermarks, Zone, ZoneEvents, MAX_ZONE_PAGES, MIGRATE_TYPES, NR_PAGE_ORDERS,
    PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER,
};
use crate::mm::{Memory, MmError};
use crate::pool::{Pool, PoolConfig, PoolError, Protocol};
use crate::sync::Mutex;

/// Pages one reclaim pass frees (the kernel's SWAP_CLUSTER_MAX).
const SWAP_CLUSTER_MAX: usize = 32;

/// How zsmalloc's pages live in the zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// movable, migrated with the mainline protocol
    Mainline,
    /// movable, migrated with the 2016 (4.8) protocol
    Seed2016,
    /// movable placement (__GFP_MOVABLE) but never migrated: placement alone
    Placed,
    /// unmovable: the world before page migration
    Unmovable,
}

impl Mode {
    pub const NAMES: [&'static str; 4] = ["mainline", "2016", "placed", "unmovable"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn from_name(name: &str) -> Option<Mode> {
        [Mode::Mainline, Mode::Seed2016, Mode::Placed, Mode::Unmovable].into_iter().find(|m| m.name() == name)
    }
}

/// One kind of high-order request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub order: usize,
    pub migratetype: MigrateType,
    /// requests a tick (fractions accumulate)
    pub per_tick: f64,
    /// ticks a served block is held
    pub lifetime: usize,
    /// whether a failure runs direct compaction (else only kcompactd is woken)
    pub direct_compaction: bool,
}

/// An order-0 user: its level as a share of the zone and its churn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Level {
    pub share: f64,
    /// the share of its pages replaced each tick
    pub churn: f64,
}

/// Everything one run does.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub zone_pages: usize,
    pub seed: u64,
    /// zram: the pool's pages at the end of the fill, and its churn after
    pub zram: Level,
    pub anon: Level,
    pub kernel: Level,
    pub reclaimable: Level,
    pub requests: Vec<Request>,
    /// whether the page cache takes the free memory above the high watermark
    pub page_cache: bool,
    pub fill_ticks: usize,
    pub churn_ticks: usize,
    /// zsmalloc's shrinker every this many ticks (0: never)
    pub pool_compact_every: usize,
    /// an interval record every this many ticks
    pub report_every: usize,
    /// ticks at which a pageblock map is kept
    pub maps_at: Vec<usize>,
    pub chain_size: usize,
    /// `vm.watermark_boost_factor` (ten-thousandths of the high watermark; 0: no boosting)
    pub watermark_boost_factor: usize,
}

/// One interval's record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interval {
    pub tick: usize,
    /// per order: requests, and those served
    pub requests: [u64; NR_PAGE_ORDERS],
    pub served: [u64; NR_PAGE_ORDERS],
    /// direct compaction: stalls (runs), then successes and failures of the allocation after
    pub compact_stall: u64,
    pub compact_success: u64,
    pub compact_fail: u64,
    /// compactions skipped by the deferral
    pub compact_deferred: u64,
    pub kcompactd_runs: u64,
    /// pages moved by the zone's compaction: all, and zsmalloc's
    pub pages_migrated: u64,
    pub zspages_migrated: u64,
    pub migrate_scanned: u64,
    pub free_scanned: u64,
    /// order-0 allocations that found no page even after reclaim (the
    /// users then stay below their level)
    pub order0_failed: u64,
    /// cache pages reclaimed: by kswapd and by the allocations themselves
    pub reclaimed: u64,
    /// allocations served from a pageblock of another migratetype, and
    /// pageblocks whose migratetype such a fallback changed (the
    /// mm_page_alloc_extfrag events)
    pub alloc_fallbacks: u64,
    pub blocks_claimed: u64,
    /// claims of a pageblock tried by a fallback that boosted the
    /// watermarks (`boost_watermark`; one request may try several orders,
    /// each a boost), and kswapd runs that dropped a boost
    pub watermark_boosts: u64,
    pub boosts_reclaimed: u64,
    /// the zone at the end of the interval
    pub free_pages: usize,
    pub pool_pages: usize,
    pub anon_pages: usize,
    pub kernel_pages: usize,
    pub reclaimable_pages: usize,
    pub cache_pages: usize,
    pub held_blocks_pages: usize,
    pub unusable_index: [i64; NR_PAGE_ORDERS],
    pub fragmentation_index: [i64; NR_PAGE_ORDERS],
    /// free blocks per migratetype and order (pagetypeinfo)
    pub free_blocks: [[usize; NR_PAGE_ORDERS]; 3],
    /// pageblocks per migratetype
    pub pageblocks: [usize; 3],
}

/// A pageblock map: per pageblock its migratetype, its free pages, and its
/// allocated pages that are not of its type (the pollution that blocks
/// compaction of a movable block).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockMap {
    pub tick: usize,
    pub migratetype: Vec<u8>,
    pub free: Vec<u16>,
    pub foreign: Vec<u16>,
}

/// A whole run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub intervals: Vec<Interval>,
    pub maps: Vec<BlockMap>,
    /// the pool's objects written and read back intact at the end
    pub objects_checked: usize,
}

/// xorshift64*: the run's only source of randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Order-0 pages of one user, picked at random for freeing.  Movable ones
/// answer the zone's compaction: migrating one moves only its entry.
struct PageSet {
    pages: Mutex<PageList>,
    ops_id: Mutex<u8>,
}

struct PageList {
    pfns: Vec<u32>,
    /// where each pfn sits in `pfns` (u32::MAX: not ours)
    at: Vec<u32>,
}

impl PageSet {
    fn new(zone_pages: usize) -> Arc<PageSet> {
        Arc::new(PageSet {
            pages: Mutex::new(PageList { pfns: Vec::new(), at: vec![u32::MAX; zone_pages] }),
            ops_id: Mutex::new(0),
        })
    }

    fn len(&self) -> usize {
        self.pages.lock().pfns.len()
    }

    fn push(&self, pfn: u32) {
        let mut l = self.pages.lock();
        l.at[pfn as usize] = l.pfns.len() as u32;
        l.pfns.push(pfn);
    }

    fn take_random(&self, rng: &mut Rng) -> Option<u32> {
        let mut l = self.pages.lock();
        if l.pfns.is_empty() {
            return None;
        }
        let i = rng.below(l.pfns.len());
        let pfn = l.pfns.swap_remove(i);
        l.at[pfn as usize] = u32::MAX;
        if let Some(&moved) = l.pfns.get(i) {
            l.at[moved as usize] = i as u32;
        }
        Some(pfn)
    }
}

impl MovableOps for PageSet {
    fn isolate(&self, _mem: &Memory, pfn: u32, _mode: MigrateMode) -> bool {
        self.pages.lock().at[pfn as usize] != u32::MAX
    }

    fn migrate(&self, mem: &Memory, dst: u32, src: u32, _mode: MigrateMode) -> i32 {
        {
            let mut l = self.pages.lock();
            let i = l.at[src as usize];
            if i == u32::MAX {
                return MIGRATEPAGE_SUCCESS; // freed while isolated
            }
            l.pfns[i as usize] = dst;
            l.at[src as usize] = u32::MAX;
            l.at[dst as usize] = i;
        }
        mem.set_page_movable(dst, *self.ops_id.lock());
        let _ = mem.get_page(dst); // ours now; the VM holds the allocation reference
        mem.reset_page(src);
        let _ = mem.put_page(src); // our reference; the VM drops its own
        MIGRATEPAGE_SUCCESS
    }

    fn putback(&self, _mem: &Memory, _pfn: u32) {}
}

/// A zsmalloc object of the run: its handle and the byte it is filled with.
#[derive(Clone, Copy)]
struct Object {
    handle: u64,
    size: u16,
    tag: u8,
}

struct Held {
    pfn: u32,
    order: usize,
    until: usize,
}

/// The run's state.
struct Sim<'a> {
    sc: &'a Scenario,
    sizes: &'a [u16],
    next_size: usize,
    mem: Arc<Memory>,
    pool: Arc<Pool>,
    anon: Arc<PageSet>,
    cache: Arc<PageSet>,
    /// the kernel's unmovable and reclaimable pages
    plain: [Vec<u32>; 2],
    objects: Vec<Object>,
    held: Vec<Held>,
    owed: Vec<f64>,
    kcompactd_order: Option<usize>,
    /// the zone's fallback counters at the last interval's end
    zone_events: ZoneEvents,
    rng: Rng,
    cur: Interval,
    buf: Vec<u8>,
}

/// Run `sc` with zsmalloc in `mode`, its objects' sizes drawn in turn from
/// `sizes` (1..4096).  `progress` is called after each tick; the run stops
/// with an error when it answers false.
pub fn run(
    sc: &Scenario,
    mode: Mode,
    sizes: &[u16],
    progress: &mut dyn FnMut(usize) -> bool,
) -> Result<Outcome, String> {
    check_scenario(sc, sizes)?;
    let err = |e: MmError| e.to_string();
    let perr = |e: PoolError| e.to_string();
    let mem = Arc::new(Memory::new_zoned(sc.zone_pages).map_err(err)?);
    mem.with_zone_mut(|z| z.set_watermark_boost_factor(sc.watermark_boost_factor)).expect("a zoned Memory");
    let config = PoolConfig {
        chain_size: sc.chain_size,
        migration: if mode == Mode::Seed2016 { Protocol::Seed2016 } else { Protocol::Mainline },
        background_work: false,
        movable: mode != Mode::Unmovable,
        migratable: matches!(mode, Mode::Mainline | Mode::Seed2016),
        ..PoolConfig::new("fragsim")
    };
    let pool = Pool::new(config, mem.clone(), true).map_err(perr)?;
    let (anon, cache) = (PageSet::new(sc.zone_pages), PageSet::new(sc.zone_pages));
    for set in [&anon, &cache] {
        let weak: Weak<dyn MovableOps> = Arc::downgrade(set) as Weak<dyn MovableOps>;
        *set.ops_id.lock() = mem.register_movable_ops(weak).map_err(err)?;
    }
    let mut sim = Sim {
        sc,
        sizes,
        next_size: 0,
        mem,
        pool,
        anon,
        cache,
        plain: [Vec::new(), Vec::new()],
        objects: Vec::new(),
        held: Vec::new(),
        owed: vec![0.0; sc.requests.len()],
        kcompactd_order: None,
        zone_events: ZoneEvents::default(),
        rng: Rng(sc.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
        cur: Interval::default(),
        buf: vec![0; 4096],
    };
    let mut out = Outcome::default();
    let ticks = sc.fill_ticks + sc.churn_ticks;
    for tick in 1..=ticks {
        sim.tick(tick)?;
        if sc.maps_at.contains(&tick) {
            out.maps.push(sim.block_map(tick));
        }
        if tick % sc.report_every == 0 || tick == ticks {
            out.intervals.push(sim.close_interval(tick));
        }
        if !progress(tick) {
            sim.pool.close().map_err(perr)?;
            return Err(format!("interrupted at tick {tick}"));
        }
    }
    out.objects_checked = sim.verify()?;
    sim.mem.with_zone(|z| z.check()).expect("a zoned Memory").map_err(|e| e.0)?;
    sim.pool.close().map_err(perr)?;
    Ok(out)
}

fn check_scenario(sc: &Scenario, sizes: &[u16]) -> Result<(), String> {
    if !(4 * PAGEBLOCK_NR_PAGES..=MAX_ZONE_PAGES).contains(&sc.zone_pages) {
        return Err(format!(
            "a zone needs {}..{} pages (16 MiB to 64 GiB), not {}",
            4 * PAGEBLOCK_NR_PAGES,
            MAX_ZONE_PAGES,
            sc.zone_pages
        ));
    }
    if sizes.is_empty() || sizes.iter().any(|&s| s == 0 || s > 4096) {
        return Err("object sizes must be a non-empty list within 1..4096".into());
    }
    let levels = [sc.zram, sc.anon, sc.kernel, sc.reclaimable];
    if levels.iter().any(|l| !(0.0..=1.0).contains(&l.share) || !(0.0..=1.0).contains(&l.churn)) {
        return Err("every share and churn must be within 0..1".into());
    }
    if levels.iter().map(|l| l.share).sum::<f64>() > 0.95 {
        return Err("the users' shares add up to more than 95% of the zone".into());
    }
    for r in &sc.requests {
        if r.order == 0
            || r.order >= NR_PAGE_ORDERS
            || !(0.0..=1000.0).contains(&r.per_tick)
            || r.lifetime == 0
        {
            return Err(format!(
                "a request needs an order in 1..{}, a rate in 0..1000 and a lifetime of 1 tick or more",
                NR_PAGE_ORDERS - 1
            ));
        }
    }
    if sc.fill_ticks + sc.churn_ticks == 0 || sc.report_every == 0 {
        return Err("the run needs ticks and a report interval".into());
    }
    if !(4..=16).contains(&sc.chain_size) {
        return Err(format!("chain_size must be within 4..16, not {}", sc.chain_size));
    }
    Ok(())
}

impl Sim<'_> {
    fn level(&self, l: Level) -> usize {
        (l.share * self.sc.zone_pages as f64) as usize
    }

    fn tick(&mut self, tick: usize) -> Result<(), String> {
        let filling = tick <= self.sc.fill_ticks;
        let ramp = if filling { tick as f64 / self.sc.fill_ticks as f64 } else { 1.0 };
        self.zram_tick(filling, ramp)?;
        self.kswapd_if_boosted();
        let anon = self.anon.clone();
        let target = (self.level(self.sc.anon) as f64 * ramp) as usize;
        self.order0_anon(&anon, target, if filling { 0.0 } else { self.sc.anon.churn });
        self.kswapd_if_boosted();
        for (i, (mt, level)) in
            [(MigrateType::Unmovable, self.sc.kernel), (MigrateType::Reclaimable, self.sc.reclaimable)]
                .into_iter()
                .enumerate()
        {
            let mut pages = std::mem::take(&mut self.plain[i]);
            self.order0_plain(&mut pages, mt, (self.level(level) as f64 * ramp) as usize, level.churn);
            self.plain[i] = pages;
        }
        self.kswapd_if_boosted();
        self.expire_held(tick);
        self.requests(tick);
        self.kcompactd();
        if self.kswapd() {
            self.kcompactd();
        }
        if self.sc.page_cache {
            self.grow_cache();
        }
        if self.sc.pool_compact_every > 0 && tick % self.sc.pool_compact_every == 0 {
            self.pool.zs_compact().map_err(|e| e.to_string())?;
            self.pool.flush_deferred().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// zram: grow to the level during the fill, then replace a share of the objects.
    fn zram_tick(&mut self, filling: bool, ramp: f64) -> Result<(), String> {
        let target = (self.level(self.sc.zram) as f64 * ramp) as usize;
        if !filling {
            let n = (self.objects.len() as f64 * self.sc.zram.churn) as usize;
            for _ in 0..n {
                let i = self.rng.below(self.objects.len());
                let o = self.objects.swap_remove(i);
                self.pool.zs_free(o.handle).map_err(|e| e.to_string())?;
            }
            self.pool.flush_deferred().map_err(|e| e.to_string())?;
        }
        while self.pool.total_pages() < target {
            if !self.zram_store()? {
                break;
            }
        }
        Ok(())
    }

    /// One object of the next size, filled with its tag; false if the zone had no page.
    fn zram_store(&mut self) -> Result<bool, String> {
        let size = self.sizes[self.next_size % self.sizes.len()];
        self.next_size += 1;
        let mut handle = self.pool.zs_malloc(size as usize);
        while matches!(handle, Err(PoolError::NoFrame(..))) && self.reclaim(SWAP_CLUSTER_MAX) > 0 {
            handle = self.pool.zs_malloc(size as usize);
        }
        let handle = match handle {
            Ok(h) => h,
            Err(PoolError::NoFrame(..)) => {
                self.cur.order0_failed += 1;
                return Ok(false);
            }
            Err(e) => return Err(e.to_string()),
        };
        let tag = (self.next_size % 251) as u8;
        self.buf[..size as usize].fill(tag);
        self.pool.zs_obj_write(handle, &self.buf[..size as usize], 0).map_err(|e| e.to_string())?;
        self.objects.push(Object { handle, size, tag });
        Ok(true)
    }

    fn order0_anon(&mut self, set: &PageSet, target: usize, churn: f64) {
        let n = (set.len() as f64 * churn) as usize;
        for _ in 0..n {
            if let Some(pfn) = set.take_random(&mut self.rng) {
                self.mem.reset_page(pfn);
                let _ = self.mem.put_page(pfn);
            }
        }
        let id = *set.ops_id.lock();
        while set.len() < target {
            match self.alloc0(MigrateType::Movable) {
                Some(pfn) => {
                    let _ = self.mem.set_pages_movable(&[pfn], id);
                    set.push(pfn);
                }
                None => break,
            }
        }
    }

    fn order0_plain(&mut self, pages: &mut Vec<u32>, mt: MigrateType, target: usize, churn: f64) {
        let n = (pages.len() as f64 * churn) as usize;
        for _ in 0..n {
            let i = self.rng.below(pages.len());
            let _ = self.mem.put_page(pages.swap_remove(i));
        }
        while pages.len() < target {
            match self.alloc0(mt) {
                Some(pfn) => pages.push(pfn),
                None => break,
            }
        }
    }

    /// An order-0 page at the min watermark; direct reclaim and the
    /// allocation again while reclaim makes progress (the slowpath's
    /// retries, `should_reclaim_retry`).
    fn alloc0(&mut self, mt: MigrateType) -> Option<u32> {
        let min = self.watermarks().min;
        loop {
            if let Ok(pfn) = self.mem.alloc_block(0, mt, min) {
                return Some(pfn);
            }
            if self.reclaim(SWAP_CLUSTER_MAX) == 0 {
                self.cur.order0_failed += 1;
                return None;
            }
        }
    }

    fn watermarks(&self) -> Watermarks {
        self.mem.with_zone(|z| z.watermarks()).expect("a zoned Memory")
    }

    fn nr_free(&self) -> usize {
        self.mem.with_zone(|z| z.nr_free_pages()).expect("a zoned Memory")
    }

    /// Drop up to `n` cache pages, picked at random; how many went.
    fn reclaim(&mut self, n: usize) -> usize {
        let mut done = 0;
        while done < n {
            let Some(pfn) = self.cache.take_random(&mut self.rng) else { break };
            self.mem.reset_page(pfn);
            let _ = self.mem.put_page(pfn);
            done += 1;
        }
        self.cur.reclaimed += done as u64;
        done
    }

    /// kswapd (`balance_pgdat` at order 0): woken below the low watermark,
    /// or by an allocation that found the watermark boosted
    /// (ZONE_BOOSTED_WATERMARK, `wakeup_kswapd`).  Below the high watermark
    /// it reclaims up to it (an unbalanced node: the boosted reclaim gives
    /// way to the normal one); above it, the boost's pages
    /// (`nr_boost_reclaim`).  A boost it found is then dropped and
    /// kcompactd woken at pageblock order: true if it was.
    fn kswapd(&mut self) -> bool {
        let woken = self.mem.with_zone_mut(|z| z.take_boosted_watermark()).expect("a zoned Memory");
        let (w, free) = (self.watermarks(), self.nr_free());
        if free >= w.low && !woken {
            return false;
        }
        let boost = self.mem.with_zone(|z| z.watermark_boost()).expect("a zoned Memory");
        if free < w.high {
            self.reclaim(w.high - free);
        } else {
            self.reclaim(boost);
        }
        if boost == 0 {
            return false;
        }
        self.mem.with_zone_mut(|z| z.lower_watermark_boost(boost)).expect("a zoned Memory");
        self.cur.boosts_reclaimed += 1;
        self.kcompactd_order = Some(self.kcompactd_order.map_or(PAGEBLOCK_ORDER, |o| o.max(PAGEBLOCK_ORDER)));
        true
    }

    /// kswapd between the users' turns, if an allocation has found the
    /// watermark boosted: it does not wait for the tick's end, as the
    /// boost raises every mark until it has run.
    fn kswapd_if_boosted(&mut self) {
        if self.mem.with_zone(|z| z.watermark_boosted()).expect("a zoned Memory") {
            self.kswapd();
        }
    }

    /// The page cache takes what is free above the high watermark: the
    /// memory of a machine that has run a while is full of cache.
    fn grow_cache(&mut self) {
        let high = self.watermarks().high;
        let id = *self.cache.ops_id.lock();
        while let Ok(pfn) = self.mem.alloc_block(0, MigrateType::Movable, high) {
            let _ = self.mem.set_pages_movable(&[pfn], id);
            self.cache.push(pfn);
        }
    }

    fn expire_held(&mut self, tick: usize) {
        let mem = &self.mem;
        self.held.retain(|h| {
            if h.until > tick {
                return true;
            }
            let _ = mem.put_page(h.pfn);
            false
        });
    }

    fn requests(&mut self, tick: usize) {
        for k in 0..self.sc.requests.len() {
            self.owed[k] += self.sc.requests[k].per_tick;
            while self.owed[k] >= 1.0 {
                self.owed[k] -= 1.0;
                let r = self.sc.requests[k].clone();
                self.cur.requests[r.order] += 1;
                if let Some(pfn) = self.alloc_high_order(&r) {
                    self.cur.served[r.order] += 1;
                    self.held.push(Held { pfn, order: r.order, until: tick + r.lifetime });
                }
            }
        }
    }

    /// The allocator's way with a high-order request: the fast path at
    /// the low watermark; on failure kcompactd is woken, and direct
    /// compaction runs if the request allows it and the deferral does not
    /// hold it back (`__alloc_pages_direct_compact`).
    fn alloc_high_order(&mut self, r: &Request) -> Option<u32> {
        let (low, min) =
            self.mem.with_zone(|z| (z.watermarks().low, z.watermarks().min)).expect("a zoned Memory");
        if let Ok(pfn) = self.mem.alloc_block(r.order, r.migratetype, low) {
            return Some(pfn);
        }
        self.kcompactd_order = Some(self.kcompactd_order.map_or(r.order, |o| o.max(r.order)));
        if !r.direct_compaction {
            return None;
        }
        // too few free pages to compact into: direct reclaim first
        let (w, free) = (self.watermarks(), self.nr_free());
        let room = w.low + (2 << r.order) + SWAP_CLUSTER_MAX;
        if free < room {
            self.reclaim(room - free);
        }
        if self.mem.with_zone_mut(|z| z.compaction_deferred(r.order)).expect("a zoned Memory") {
            self.cur.compact_deferred += 1;
            return None;
        }
        self.cur.compact_stall += 1;
        let status = self.compact(r.order, r.migratetype, MigrateMode::Async);
        let got = self.mem.alloc_block(r.order, r.migratetype, min).ok();
        self.mem.with_zone_mut(|z| {
            if got.is_some() {
                z.compaction_defer_reset(r.order, true);
            } else if status == CompactStatus::Complete {
                z.defer_compaction(r.order);
            }
        });
        if got.is_some() {
            self.cur.compact_success += 1;
        } else {
            self.cur.compact_fail += 1;
        }
        got
    }

    /// kcompactd_do_work for the highest order that failed since its last run.
    fn kcompactd(&mut self) {
        let Some(order) = self.kcompactd_order.take() else {
            return;
        };
        if self.mem.with_zone_mut(|z| z.compaction_deferred(order)).expect("a zoned Memory") {
            return;
        }
        self.cur.kcompactd_runs += 1;
        let status = self.compact(order, MigrateType::Unmovable, MigrateMode::SyncLight);
        self.mem.with_zone_mut(|z| match status {
            CompactStatus::Success => z.compaction_defer_reset(order, false),
            CompactStatus::Complete => z.defer_compaction(order),
            CompactStatus::Skipped => {}
        });
    }

    fn compact(&mut self, order: usize, mt: MigrateType, mode: MigrateMode) -> CompactStatus {
        match self.mem.compact_zone(order, mt, mode) {
            Ok(r) => {
                self.cur.pages_migrated += r.migrate.succeeded as u64;
                self.cur.zspages_migrated +=
                    r.migrate.moved.iter().filter(|(_, dst)| self.pool.page_is_ours(&self.mem, *dst)).count()
                        as u64;
                self.cur.migrate_scanned += r.migrate_scanned as u64;
                self.cur.free_scanned += r.free_scanned as u64;
                r.status
            }
            Err(_) => CompactStatus::Skipped,
        }
    }

    fn close_interval(&mut self, tick: usize) -> Interval {
        let mut iv = std::mem::take(&mut self.cur);
        iv.tick = tick;
        iv.pool_pages = self.pool.total_pages();
        iv.anon_pages = self.anon.len();
        iv.kernel_pages = self.plain[0].len();
        iv.reclaimable_pages = self.plain[1].len();
        iv.cache_pages = self.cache.len();
        iv.held_blocks_pages = self.held.iter().map(|h| 1usize << h.order).sum();
        let ev = self.mem.with_zone(|z| z.events()).expect("a zoned Memory");
        iv.alloc_fallbacks = ev.alloc_fallback - self.zone_events.alloc_fallback;
        iv.blocks_claimed = ev.blocks_claimed - self.zone_events.blocks_claimed;
        iv.watermark_boosts = ev.watermark_boosts - self.zone_events.watermark_boosts;
        self.zone_events = ev;
        self.mem.with_zone(|z| {
            iv.free_pages = z.nr_free_pages();
            for o in 0..NR_PAGE_ORDERS {
                iv.unusable_index[o] = z.unusable_free_index(o);
                iv.fragmentation_index[o] = z.fragmentation_index(o);
                for mt in MIGRATE_TYPES {
                    iv.free_blocks[mt as usize][o] = z.nr_free(o, mt);
                }
            }
            iv.pageblocks = z.pageblock_counts();
        });
        iv
    }

    fn block_map(&self, tick: usize) -> BlockMap {
        self.mem.with_zone(|z| zone_block_map(z, tick)).expect("a zoned Memory")
    }

    /// Every live object reads back as written; the pool's pages and the
    /// zone agree.
    fn verify(&mut self) -> Result<usize, String> {
        for o in &self.objects {
            let n = o.size as usize;
            let r = self.pool.zs_obj_read_begin(o.handle, 0, None, "fragsim").map_err(|e| e.to_string())?;
            r.copy_to(&mut self.buf[..n]);
            drop(r);
            if self.buf[..n].iter().any(|&b| b != o.tag) {
                return Err(format!("object {:#x} of {n} bytes came back changed", o.handle));
            }
        }
        Ok(self.objects.len())
    }
}

/// The pageblock map of a zone at `tick`.
pub fn zone_block_map(z: &Zone, tick: usize) -> BlockMap {
    let n = z.nr_pageblocks();
    let mut map =
        BlockMap { tick, migratetype: Vec::with_capacity(n), free: vec![0; n], foreign: vec![0; n] };
    for (b, mt) in z.pageblock_types().into_iter().enumerate() {
        map.migratetype.push(mt as u8);
        let start = b * PAGEBLOCK_NR_PAGES;
        let end = (start + PAGEBLOCK_NR_PAGES).min(z.nr_pages());
        let mut p = start;
        while p < end {
            if let Some(o) = z.buddy_order(p as u32) {
                map.free[b] += (1usize << o).min(end - p) as u16;
                p += 1 << o;
            } else if let Some((o, amt)) = z.allocated_block(p as u32) {
                if amt != mt {
                    map.foreign[b] += (1usize << o).min(end - p) as u16;
                }
                p += 1 << o;
            } else {
                p += 1;
            }
        }
    }
    map
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::zone::WATERMARK_BOOST_FACTOR;

    fn small() -> Scenario {
        Scenario {
            zone_pages: 32 * PAGEBLOCK_NR_PAGES,
            seed: 7,
            zram: Level { share: 0.40, churn: 0.01 },
            anon: Level { share: 0.30, churn: 0.03 },
            kernel: Level { share: 0.05, churn: 0.01 },
            reclaimable: Level { share: 0.03, churn: 0.01 },
            requests: vec![
                Request {
                    order: 3,
                    migratetype: MigrateType::Unmovable,
                    per_tick: 2.0,
                    lifetime: 3,
                    direct_compaction: true,
                },
                Request {
                    order: 9,
                    migratetype: MigrateType::Movable,
                    per_tick: 0.2,
                    lifetime: 10,
                    direct_compaction: true,
                },
            ],
            page_cache: true,
            fill_ticks: 20,
            churn_ticks: 60,
            pool_compact_every: 10,
            report_every: 10,
            maps_at: vec![20, 80],
            chain_size: 8,
            watermark_boost_factor: WATERMARK_BOOST_FACTOR,
        }
    }

    fn sizes() -> Vec<u16> {
        let mut rng = Rng(99);
        (0..5000).map(|_| [4096, 1700, 1200, 2400, 420, 900][rng.below(6)] as u16).collect()
    }

    #[test]
    fn every_mode_runs_and_keeps_the_objects() {
        let sc = small();
        let mut results = Vec::new();
        for mode in [Mode::Mainline, Mode::Seed2016, Mode::Placed, Mode::Unmovable] {
            let mut ticks = 0;
            let out = run(&sc, mode, &sizes(), &mut |t| {
                ticks = t;
                true
            })
            .unwrap();
            assert_eq!(ticks, 80);
            assert_eq!(out.intervals.len(), 8);
            assert_eq!(out.maps.len(), 2);
            assert!(out.objects_checked > 0);
            let last = out.intervals.last().unwrap();
            // the users reached their levels
            assert!(last.pool_pages as f64 >= 0.35 * sc.zone_pages as f64, "{mode:?}: {last:?}");
            assert!(last.anon_pages > 0 && last.kernel_pages > 0 && last.reclaimable_pages > 0);
            let migrated_zs: u64 = out.intervals.iter().map(|i| i.zspages_migrated).sum();
            if matches!(mode, Mode::Placed | Mode::Unmovable) {
                assert_eq!(migrated_zs, 0, "{mode:?} never migrates zsmalloc's pages");
            }
            let requests: u64 = out.intervals.iter().map(|i| i.requests[9]).sum();
            assert_eq!(requests, 16);
            // unmovable pages in a zone of movable pageblocks are fallbacks that claim blocks
            let claimed: u64 = out.intervals.iter().map(|i| i.blocks_claimed).sum();
            let fallbacks: u64 = out.intervals.iter().map(|i| i.alloc_fallbacks).sum();
            assert!(claimed > 0 && fallbacks > 0, "{mode:?}: {claimed} claimed, {fallbacks} fallbacks");
            // some of those fallbacks boosted the watermarks, and kswapd dropped the boosts
            let boosts: u64 = out.intervals.iter().map(|i| i.watermark_boosts).sum();
            let dropped: u64 = out.intervals.iter().map(|i| i.boosts_reclaimed).sum();
            assert!(
                boosts > 0 && dropped > 0 && dropped <= boosts,
                "{mode:?}: {boosts} boosts, {dropped} dropped"
            );
            results.push(out);
        }
        // the same seed gives the same run
        let again = run(&sc, Mode::Mainline, &sizes(), &mut |_| true).unwrap();
        assert_eq!(again, results[0]);
    }

    #[test]
    fn a_boost_factor_of_zero_turns_boosting_off() {
        let boosted = run(&small(), Mode::Unmovable, &sizes(), &mut |_| true).unwrap();
        let sc = Scenario { watermark_boost_factor: 0, ..small() };
        let off = run(&sc, Mode::Unmovable, &sizes(), &mut |_| true).unwrap();
        let total = |o: &Outcome, f: fn(&Interval) -> u64| o.intervals.iter().map(f).sum::<u64>();
        assert_eq!(total(&off, |i| i.watermark_boosts), 0);
        assert_eq!(total(&off, |i| i.boosts_reclaimed), 0);
        assert!(total(&boosted, |i| i.watermark_boosts) > 0);
        // kswapd's boosted reclaim: more pages reclaimed
        assert!(total(&boosted, |i| i.reclaimed) > total(&off, |i| i.reclaimed));
    }

    #[test]
    fn bad_scenarios_are_refused() {
        let mut sc = small();
        sc.zone_pages = 100;
        assert!(run(&sc, Mode::Mainline, &sizes(), &mut |_| true).is_err());
        sc.zone_pages = usize::MAX / 2;
        assert!(run(&sc, Mode::Mainline, &sizes(), &mut |_| true).is_err());
        let mut sc = small();
        sc.anon.share = 0.9;
        assert!(run(&sc, Mode::Mainline, &sizes(), &mut |_| true).is_err());
        let mut sc = small();
        sc.requests[0].order = 11;
        assert!(run(&sc, Mode::Mainline, &sizes(), &mut |_| true).is_err());
        assert!(run(&small(), Mode::Mainline, &[0, 5], &mut |_| true).is_err());
        assert!(run(&small(), Mode::Mainline, &[], &mut |_| true).is_err());
        // a progress callback that answers false stops the run
        let err = run(&small(), Mode::Mainline, &sizes(), &mut |t| t < 5).unwrap_err();
        assert!(err.contains("interrupted at tick 5"), "{err}");
        assert_eq!(Mode::from_name("2016"), Some(Mode::Seed2016));
        assert_eq!(Mode::from_name("bogus"), None);
    }
}
