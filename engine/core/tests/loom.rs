//! loom models of the locking protocol, on the engine's own code.
//!
//! Run with
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p zsmalloc-core --release --test loom
//! ```
//!
//! (best with `CARGO_TARGET_DIR=target/loom`, so that the loom build does not
//! overwrite the normal one).  Under `--cfg loom` the core takes its locks and
//! atomics from loom (src/sync.rs), and every scenario below is a small pool
//! (a Memory of a few frames, background work off, one or two zspages of a
//! one- or two-page class) driven by two threads.  `loom::model::Builder`
//! explores every interleaving of their lock and atomic operations with at
//! most `LOOM_MAX_PREEMPTIONS` preemptions (default 2 here: the short form
//! for CI; 3 is the long form, opt-in through that environment variable,
//! which is loom's own knob).  After the threads join, `check` verifies the
//! pool against its snapshot and the Memory; then `teardown` puts back what
//! is isolated, flushes the deferred free, frees every object and checks
//! that the pool holds no page and the Memory no frame.
//!
//! Scenarios, each for the protocols that must pass (mainline, 2016):
//!
//! - `seed_race_*`: the VM isolates a page of a zspage and then migrates it
//!   or puts it back, while another thread frees both objects of that
//!   zspage (destroying it) and allocates again (reusing the zspage id);
//! - `migrate_vs_malloc_free_*`: the VM moves the second page of a two-page
//!   zspage while another thread allocates into it, reads the object that
//!   spans both pages and frees the first object;
//! - `deferred_free_vs_migration_*`: the VM isolates and migrates (page
//!   lock held, sleeping) a page of a zspage whose last object another thread
//!   frees and then flushes the deferred free (`lock_zspage` sleeping on the
//!   VM's page lock, the page migrating under it);
//! - `compaction_vs_migration_*`: `zs_compact` against the VM moving a page
//!   of compaction's source zspage, then of its destination zspage;
//! - `migrate_vs_map_*`: a mapping of the object that spans two pages
//!   against the VM moving the second page (no page may move while mapped;
//!   the 2016 variant found that the 2016 migrate honoured only the pins of
//!   the objects starting in the page: see its comment);
//! - `free_vs_free_*`: two frees of one handle, one of them succeeds, the
//!   other gets InvalidHandle; in `_then_reuse` the winner allocates again at
//!   once, into the same slot and the same place (the entry word it had
//!   before the free: only the object's header tells the handles apart);
//! - `map_vs_free_same_handle`: a mapping against a free of the object:
//!   no free while it is mapped;
//! - `close_vs_malloc_*`: `close` against a malloc into a class with room
//!   and into one that must build a zspage: the malloc completes (and the
//!   close frees its object) or is refused, and nothing outlives the close;
//! - `zram_slot_*`: zram's slot lock (the ZRAM_LOCK bit): a write of a
//!   slot against another write of it, a discard of it, or a read of it; the
//!   slot ends holding a page that some order of the two calls leaves, the
//!   reader sees a whole page (the old or the new), and the device's
//!   counters and its pool agree;
//! - `mm_*`: the page lock alone, the two engine bugs these models found,
//!   minimised: `trylock_pages` against `trylock_page` (both could own the
//!   lock), and a sleeper on a page lock against the unlock (a lost wake-up).
//!
//! And the mutant: `broken_v3_seed_race_fails` runs the seed race (put back)
//! under Protocol::BrokenV3 and asserts that loom finds an interleaving that
//! breaks an invariant.
//!
//! Each model prints its iteration count and time, and how its executions
//! ended (`--nocapture` shows it).  A failing interleaving is reported with
//! the test's own event log (which thread did what; an entry is written when
//! its call returns) in the panic message; `LOOM_LOG=trace` adds loom's own
//! trace of every execution, and `LOOM_LOCATION=1` the source locations in
//! loom's messages.  Other loom knobs: LOOM_MAX_BRANCHES (default here
//! 1,000,000), LOOM_MAX_PERMUTATIONS, LOOM_MAX_DURATION.

#![cfg(loom)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use loom::thread;
use zsmalloc_core::mm::memory::{PCP_BATCH, PCP_HIGH};
use zsmalloc_core::mm::{Memory, MigrateMode, Target, PG_ISOLATED, PG_LOCKED, PG_MOVABLE};
use zsmalloc_core::pool::zsmalloc::get_fullness_group;
use zsmalloc_core::pool::{ClassRule, Fullness, Pool, PoolConfig, PoolError, Protocol};
use zsmalloc_core::zram::{Zram, ZramConfig};

/// The preemption bound when `LOOM_MAX_PREEMPTIONS` is not set.
const DEFAULT_PREEMPTIONS: usize = 2;
/// Branch points one execution may have (loom's default of 1000 is far too
/// few: every atomic and lock operation of the engine is one).
const MAX_BRANCHES: usize = 1_000_000;

const PAGE_SIZE: usize = 4096;
/// Class 2048: one page, two objects.
const ONE_PAGE: usize = 2040;
/// Class 2720: two pages, three objects; object 1 spans the two pages.
const TWO_PAGES: usize = 2712;

// ----------------------------------------------------------------------
// running a model

struct Outcome {
    iterations: usize,
    elapsed: Duration,
}

/// Explore `f` with loom, preemption-bounded; panics as loom does when an
/// interleaving fails.
fn explore<F>(name: &str, f: F) -> Outcome
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        builder.max_branches = MAX_BRANCHES;
    }
    let bound = builder.preemption_bound;
    OUTCOMES.with(|o| o.borrow_mut().clear());
    let iterations = Arc::new(AtomicUsize::new(0));
    let counter = iterations.clone();
    let start = Instant::now();
    let run = move || {
        builder.check(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            f();
        })
    };
    if std::env::var_os("LOOM_LOG").is_some() {
        // what loom::model does: loom's trace (thread switches, operations) to the test's output
        let subscriber = tracing_subscriber::fmt::Subscriber::builder()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("LOOM_LOG"))
            .with_test_writer()
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, run);
    } else {
        run();
    }
    let outcome = Outcome { iterations: iterations.load(Ordering::Relaxed), elapsed: start.elapsed() };
    let outcomes = OUTCOMES.with(|o| std::mem::take(&mut *o.borrow_mut()));
    let mut report = format!(
        "loom {name}: preemption bound {}, {} iterations, {:.2?}",
        bound.map_or("none".to_string(), |b| b.to_string()),
        outcome.iterations,
        outcome.elapsed
    );
    for (what, n) in &outcomes {
        report += &format!("\n    {n:>6} x {what}");
    }
    println!("{report}");
    outcome
}

std::thread_local! {
    /// What the executions of the model being explored ended with (the
    /// VM's and the pool's event counters): which paths loom reached.
    /// loom runs a model's threads as coroutines on the test's thread.
    static OUTCOMES: RefCell<BTreeMap<String, usize>> = RefCell::default();
}

/// Record how this execution went, from the Memory's migration events and
/// the pool's counters, before the test's own clean-up adds to them.
fn note_outcome(fx: &Fixture) {
    let v = fx.mem.vmstat.values();
    let e = fx.pool.events();
    let mut what = format!(
        "isolated {} refused {} put back {} migrated {} released {}",
        v[0],
        v[1],
        v[2],
        v[3] - v[6],
        v[6]
    );
    if e.deferred_frees > 0 {
        what += &format!(", deferred frees {}", e.deferred_frees);
    }
    if e.compactions > 0 {
        what += &format!(", compaction freed {} pages", e.pages_compacted);
    }
    OUTCOMES.with(|o| *o.borrow_mut().entry(what).or_default() += 1);
}

// ----------------------------------------------------------------------
// the fixture

/// What the threads did, in order: the interleaving, for a failure report.
#[derive(Clone, Default)]
struct Log(Arc<StdMutex<Vec<String>>>);

impl Log {
    fn push(&self, who: &str, what: String) {
        // a std lock, not modelled: held for the push only, no loom operation inside
        self.0.lock().unwrap().push(format!("{who}: {what}"));
    }
    fn dump(&self) -> String {
        self.0.lock().unwrap().join("\n  ")
    }
    /// Unwrap a result of the engine, or fail with the interleaving so far.
    fn ok<T, E: std::fmt::Debug>(&self, who: &str, what: &str, r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{who}: {what} failed: {e:?}\n  interleaving:\n  {}", self.dump()))
    }
}

struct Fixture {
    mem: Arc<Memory>,
    pool: Arc<Pool>,
    log: Log,
}

fn fixture(protocol: Protocol, frames: usize) -> Fixture {
    fixture_on(protocol, frames, true)
}

/// A pool on a Memory of `frames` frames, which it closes with itself if
/// it `owns_memory`.
fn fixture_on(protocol: Protocol, frames: usize, owns_memory: bool) -> Fixture {
    let mem = Arc::new(Memory::new(frames, PCP_HIGH, PCP_BATCH).unwrap());
    let config = PoolConfig {
        name: "loom".into(),
        chain_size: 4,
        class_rule: ClassRule::MinWaste,
        fullness: Fullness::Ratio,
        max_pages: None,
        auto_compact_pages: None,
        migration: protocol,
        background_work: false,
        handle_tag: 0,
        movable: true,
        migratable: true,
    };
    let pool = Pool::new(config, mem.clone(), owns_memory).unwrap();
    Fixture { mem, pool, log: Log::default() }
}

fn pattern(size: usize, tag: u8) -> Vec<u8> {
    (0..size).map(|i| tag ^ (i as u8).wrapping_mul(31)).collect()
}

/// malloc and fill; returns the handle and the bytes it holds.
fn malloc_fill(pool: &Pool, size: usize, tag: u8) -> (u64, Vec<u8>) {
    let h = pool.zs_malloc(size).unwrap();
    let data = pattern(size, tag);
    pool.zs_obj_write(h, &data, 0).unwrap();
    (h, data)
}

fn read(pool: &Pool, h: u64) -> Vec<u8> {
    let r = pool.zs_obj_read_begin(h, 0, None, "read").unwrap();
    let mut out = vec![0; r.len()];
    r.copy_to(&mut out);
    out
}

/// Isolate `pfn`; then migrate it (what cannot move is put back) or put it back.
fn vm_isolate_then(mem: &Memory, log: &Log, pfn: u32, migrate: bool) {
    let ok = mem.isolate_movable_page(pfn, MigrateMode::Sync);
    log.push("vm", format!("isolate({pfn}) -> {ok}"));
    if !ok {
        return;
    }
    if migrate {
        let r = mem.migrate_pages(&[pfn], MigrateMode::Sync, Target::Anywhere, 2, true, None);
        let r = log.ok("vm", "migrate_pages", r);
        log.push("vm", format!("migrate({pfn}) -> moved {:?}, failed {:?}", r.moved, r.failed_pfns));
    } else {
        log.ok("vm", "putback_movable_page", mem.putback_movable_page(pfn));
        log.push("vm", format!("putback({pfn})"));
    }
}

/// isolate + migrate + put back what could not move, in one call.
fn vm_move(mem: &Memory, log: &Log, pfn: u32) {
    let r = log.ok("vm", "move_pages", mem.move_pages(&[pfn], MigrateMode::Sync, Target::Anywhere, 2));
    log.push("vm", format!("move_pages({pfn}) -> moved {:?}, failed {:?}", r.moved, r.failed_pfns));
}

// ----------------------------------------------------------------------
// the invariants, over Pool::snapshot() and the Memory

macro_rules! ensure {
    ($fx:expr, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            panic!(
                "invariant violated: {}\n  interleaving:\n  {}",
                format!($($msg)+),
                $fx.log.dump()
            );
        }
    };
}

/// The pool at rest (every thread joined): its structures agree with each
/// other, with the Memory, and with `live`, the objects the test expects
/// (handle -> bytes).
fn check(fx: &Fixture, live: &HashMap<u64, Vec<u8>>) {
    let pool = &*fx.pool;
    let snap = pool.snapshot();
    let ops = pool.ops_id();
    let specs: Vec<_> = pool.specs().copied().collect();
    let spec_of = |index: usize| specs.iter().find(|s| s.index == index).copied().expect("a canonical class");
    let pages: HashMap<u32, _> = snap.pages.iter().map(|p| (p.pfn, p)).collect();
    let zspages: HashMap<u32, _> = snap.zspages.iter().map(|z| (z.zid, z)).collect();

    // every frame in use is a page of exactly one live zspage; nothing is
    // isolated or locked at rest, and only the pool holds a reference
    let mut owner: HashMap<u32, u32> = HashMap::new();
    let mut pool_pages = 0;
    for z in &snap.zspages {
        let spec = spec_of(z.class);
        ensure!(fx, z.isolated >= 0, "zspage {} has isolated count {}", z.zid, z.isolated);
        ensure!(fx, z.lock == 0, "zspage {} has lock {} at rest", z.zid, z.lock);
        ensure!(fx, !z.deferred, "zspage {} is still taken by the deferred free", z.zid);
        ensure!(
            fx,
            z.pages.len() == spec.pages_per_zspage,
            "zspage {} has chain {:?}, class {} needs {} pages",
            z.zid,
            z.pages,
            spec.index,
            spec.pages_per_zspage
        );
        // at rest no page is isolated (checked per page below): the count is 0
        ensure!(fx, z.isolated == 0, "zspage {} has a stale isolated count {} at rest", z.zid, z.isolated);
        for (k, &p) in z.pages.iter().enumerate() {
            let p = p as u32;
            ensure!(fx, owner.insert(p, z.zid).is_none(), "frame {p} is in two zspages' chains");
            let Some(d) = pages.get(&p) else {
                panic!(
                    "invariant violated: frame {p} of zspage {} is free\n  interleaving:\n  {}",
                    z.zid,
                    fx.log.dump()
                );
            };
            ensure!(
                fx,
                d.private == z.zid,
                "frame {p} names zspage {}, it is in zspage {}'s chain",
                d.private,
                z.zid
            );
            ensure!(fx, d.refcount == 1, "frame {p} of zspage {} has refcount {} at rest", z.zid, d.refcount);
            ensure!(
                fx,
                d.flags & (PG_LOCKED | PG_ISOLATED) == 0,
                "frame {p} has flags {:#x} at rest",
                d.flags
            );
            ensure!(
                fx,
                d.flags & PG_MOVABLE != 0 && d.movable_ops == ops,
                "frame {p} of zspage {} is not the pool's movable page (flags {:#x}, ops {})",
                z.zid,
                d.flags,
                d.movable_ops
            );
            let next = z.pages.get(k + 1).copied().unwrap_or(-1);
            ensure!(fx, d.next == next, "frame {p}: next {} but the chain continues with {next}", d.next);
        }
        pool_pages += z.pages.len();
    }
    for d in &snap.pages {
        ensure!(
            fx,
            owner.contains_key(&d.pfn),
            "frame {} is in use (flags {:#x}, refcount {}) but in no live zspage",
            d.pfn,
            d.flags,
            d.refcount
        );
        if d.flags & PG_MOVABLE != 0 && d.movable_ops == ops {
            ensure!(
                fx,
                zspages.contains_key(&d.private),
                "movable frame {} names zspage {}, which is not live",
                d.pfn,
                d.private
            );
        }
    }
    ensure!(
        fx,
        snap.pages_allocated == pool_pages,
        "pages_allocated {} but the live zspages hold {pool_pages}",
        snap.pages_allocated
    );
    ensure!(
        fx,
        snap.nr_used == pool_pages,
        "the Memory has {} frames in use, the pool {pool_pages}",
        snap.nr_used
    );

    // the fullness lists: each live zspage once, in the group its use calls for
    let mut listed: HashSet<u32> = HashSet::new();
    for (spec, (objs_allocated, objs_inuse, lists)) in specs.iter().zip(&snap.classes) {
        let of_class: Vec<_> = snap.zspages.iter().filter(|z| z.class == spec.index).collect();
        for (fg, list) in lists.iter().enumerate() {
            for &zid in list {
                ensure!(fx, listed.insert(zid), "zspage {zid} is on two fullness lists (or twice on one)");
                let Some(z) = zspages.get(&zid) else {
                    panic!("invariant violated: zspage {zid}, not live, is on a fullness list of class {}\n  interleaving:\n  {}", spec.index, fx.log.dump());
                };
                ensure!(
                    fx,
                    z.class == spec.index,
                    "zspage {zid} of class {} is on class {}'s list",
                    z.class,
                    spec.index
                );
                ensure!(fx, z.fg == fg as i64, "zspage {zid} is on list {fg} but says group {}", z.fg);
                let want = get_fullness_group(z.inuse, spec.objs_per_zspage);
                ensure!(fx, want == fg, "zspage {zid} with {} objects is on list {fg}, not {want}", z.inuse);
            }
        }
        let allocated = (of_class.len() * spec.objs_per_zspage) as u64;
        let inuse: usize = of_class.iter().map(|z| z.inuse).sum();
        ensure!(
            fx,
            *objs_allocated == allocated,
            "class {}: objs_allocated {objs_allocated}, its zspages hold {allocated}",
            spec.index
        );
        ensure!(
            fx,
            *objs_inuse == inuse as u64,
            "class {}: objs_inuse {objs_inuse}, its zspages use {inuse}",
            spec.index
        );
    }
    for z in &snap.zspages {
        ensure!(
            fx,
            listed.contains(&z.zid),
            "zspage {} (inuse {}, isolated {}) is on no fullness list at rest",
            z.zid,
            z.inuse,
            z.isolated
        );
    }

    // every handle: expected, in a live zspage of its class, where its header says
    let mut per_zspage: HashMap<u32, usize> = HashMap::new();
    let handles: HashSet<u64> = snap.handles.iter().map(|h| h.1).collect();
    let want: HashSet<u64> = live.keys().copied().collect();
    ensure!(fx, handles == want, "live handles {handles:x?}, expected {want:x?}");
    for &(_, handle, pfn, idx, size) in &snap.handles {
        let class = pool.class_index_for_size(size as usize).unwrap();
        let spec = spec_of(class);
        let Some(&zid) = owner.get(&pfn) else {
            panic!("invariant violated: handle {handle:#x} lies in frame {pfn}, in no live zspage\n  interleaving:\n  {}", fx.log.dump());
        };
        let z = zspages[&zid];
        ensure!(
            fx,
            z.class == class,
            "handle {handle:#x} of class {class} lies in zspage {zid} of class {}",
            z.class
        );
        let start = idx as usize * spec.size / PAGE_SIZE;
        ensure!(
            fx,
            z.pages.get(start) == Some(&(pfn as i64)),
            "handle {handle:#x}: object {idx} starts in page {start} of {:?}, not in frame {pfn}",
            z.pages
        );
        let tag = if spec.huge { pages[&pfn].index } else { z.headers[idx as usize] };
        ensure!(fx, tag == handle | 1, "handle {handle:#x}: its slot's header reads {tag:#x}");
        *per_zspage.entry(zid).or_default() += 1;
    }
    for z in &snap.zspages {
        let n = per_zspage.get(&z.zid).copied().unwrap_or(0);
        ensure!(fx, z.inuse == n, "zspage {} says {} objects, {n} handles lie in it", z.zid, z.inuse);
    }

    // and the bytes read back
    for (&h, data) in live {
        ensure!(fx, &read(pool, h) == data, "handle {h:#x} reads back other bytes than were written");
    }
}

/// Put back every isolated page, flush the deferred free, free every
/// object: then the pool holds no page and the Memory no frame.
fn teardown(fx: &Fixture, live: HashMap<u64, Vec<u8>>) {
    let (pool, mem) = (&*fx.pool, &*fx.mem);
    for pfn in mem.used_pfns() {
        if mem.page_flags(pfn) & PG_ISOLATED != 0 {
            mem.putback_movable_page(pfn).unwrap();
        }
    }
    pool.flush_deferred().unwrap();
    for &h in live.keys() {
        pool.zs_free(h).unwrap();
    }
    pool.flush_deferred().unwrap();
    ensure!(
        fx,
        pool.total_pages() == 0,
        "the pool holds {} pages after freeing everything",
        pool.total_pages()
    );
    let used = mem.stats().nr_used;
    ensure!(
        fx,
        used == 0,
        "the Memory has {used} frames in use after freeing everything: {:?}",
        mem.used_pfns()
    );
    pool.close().unwrap();
}

// ----------------------------------------------------------------------
// the scenarios

/// A malloc against `close` (issue 10, item 3): the malloc either completes
/// before the close empties its class, and the close frees its object, or
/// fails with PoolClosed; either way, once both have returned the pool
/// holds no page and its Memory (which stays open) no frame.  `room`: the
/// class has a zspage with a free slot (the malloc's fast path), or none
/// (it builds a zspage, taking frames while the close may run).
fn close_vs_malloc(room: bool) {
    let fx = fixture_on(Protocol::Mainline, 8, false);
    let (h0, _) = malloc_fill(&fx.pool, if room { ONE_PAGE } else { TWO_PAGES }, 0x11);
    let size = if room { ONE_PAGE } else { ONE_PAGE / 2 };
    let mutator = {
        let (pool, log) = (fx.pool.clone(), fx.log.clone());
        thread::spawn(move || {
            let r = pool.zs_malloc(size);
            log.push("mut", format!("zs_malloc -> {r:?}"));
            r
        })
    };
    let r = fx.pool.close();
    fx.log.push("main", format!("close -> {r:?}"));
    fx.log.ok("main", "close", r);
    let got = mutator.join().unwrap();
    ensure!(
        fx,
        matches!(got, Ok(_) | Err(PoolError::PoolClosed(_))),
        "a malloc racing close failed otherwise: {got:?}"
    );
    for h in [Some(h0), got.as_ref().ok().copied()].into_iter().flatten() {
        let freed = fx.pool.zs_free(h);
        ensure!(fx, matches!(freed, Err(PoolError::PoolClosed(_))), "free({h:#x}) after close: {freed:?}");
    }
    ensure!(fx, fx.pool.total_pages() == 0, "the closed pool holds {} pages", fx.pool.total_pages());
    let used = fx.mem.stats().nr_used;
    ensure!(fx, used == 0, "{used} frames in use after the pool closed: {:?}", fx.mem.used_pfns());
    OUTCOMES.with(|o| {
        *o.borrow_mut()
            .entry(format!("malloc {}", if got.is_ok() { "completed" } else { "refused" }))
            .or_default() += 1
    });
}

/// The 2016 race: the VM isolates a page of a zspage, then migrates it or
/// puts it back; meanwhile the zspage's objects are freed (destroying it)
/// and a new object is allocated (reusing the zspage id).
fn seed_race(protocol: Protocol, migrate: bool) {
    let fx = fixture(protocol, 4);
    let (h1, _) = malloc_fill(&fx.pool, ONE_PAGE, 0x11);
    let (h2, _) = malloc_fill(&fx.pool, ONE_PAGE, 0x22);
    let pfn = fx.pool.locate(h1).unwrap().0;
    assert_eq!(fx.pool.locate(h2).unwrap().0, pfn, "both objects in one zspage");

    let vm = {
        let (mem, log) = (fx.mem.clone(), fx.log.clone());
        thread::spawn(move || vm_isolate_then(&mem, &log, pfn, migrate))
    };
    let freer = {
        let (pool, log) = (fx.pool.clone(), fx.log.clone());
        thread::spawn(move || {
            log.ok("free", "zs_free", pool.zs_free(h1));
            log.push("free", format!("zs_free({h1:#x})"));
            log.ok("free", "zs_free", pool.zs_free(h2));
            log.push("free", format!("zs_free({h2:#x}): the zspage is empty"));
            let (h3, data) = malloc_fill(&pool, ONE_PAGE, 0x33);
            log.push("free", format!("zs_malloc -> {h3:#x} at {:?}", pool.locate(h3).unwrap()));
            (h3, data)
        })
    };
    vm.join().unwrap();
    let (h3, data) = freer.join().unwrap();
    note_outcome(&fx);
    let live = HashMap::from([(h3, data)]);
    check(&fx, &live);
    teardown(&fx, live);
}

/// The VM moves the second page of a two-page zspage while another thread
/// allocates into it (the new object's header lies in that page), reads the
/// object that spans both pages, and frees the first object.
fn migrate_vs_malloc_free(protocol: Protocol) {
    let fx = fixture(protocol, 6);
    let (h1, _) = malloc_fill(&fx.pool, TWO_PAGES, 0x11);
    let (h2, d2) = malloc_fill(&fx.pool, TWO_PAGES, 0x22);
    let chain = fx.pool.zspage_pfns(h1).unwrap();
    assert_eq!(chain.len(), 2);
    let second = chain[1];

    let vm = {
        let (mem, log) = (fx.mem.clone(), fx.log.clone());
        thread::spawn(move || vm_move(&mem, &log, second))
    };
    let mutator = {
        let (pool, log) = (fx.pool.clone(), fx.log.clone());
        let d2 = d2.clone();
        thread::spawn(move || {
            let (h3, d3) = malloc_fill(&pool, TWO_PAGES, 0x33);
            log.push("mut", format!("zs_malloc -> {h3:#x} at {:?}", pool.locate(h3).unwrap()));
            assert_eq!(read(&pool, h2), d2, "the object spanning both pages reads back");
            log.push("mut", format!("read({h2:#x})"));
            log.ok("free", "zs_free", pool.zs_free(h1));
            log.push("mut", format!("zs_free({h1:#x})"));
            (h3, d3)
        })
    };
    vm.join().unwrap();
    let (h3, d3) = mutator.join().unwrap();
    note_outcome(&fx);
    let live = HashMap::from([(h2, d2), (h3, d3)]);
    check(&fx, &live);
    teardown(&fx, live);
}

/// A mapping against migration: one thread maps the object that spans the
/// two pages of a zspage, reads it and unmaps it; the VM moves the second
/// page meanwhile.  While the object is mapped no page of its zspage may
/// move (mainline: the zspage lock, which migrate only trylocks), so the
/// chain seen just after mapping is the chain seen just before unmapping.
fn migrate_vs_map(protocol: Protocol) {
    let fx = fixture(protocol, 6);
    let (h0, d0) = malloc_fill(&fx.pool, TWO_PAGES, 0x11);
    let (h1, d1) = malloc_fill(&fx.pool, TWO_PAGES, 0x22);
    let second = fx.pool.zspage_pfns(h1).unwrap()[1];

    let vm = {
        let (mem, log) = (fx.mem.clone(), fx.log.clone());
        thread::spawn(move || vm_move(&mem, &log, second))
    };
    let reader = {
        let (pool, log) = (fx.pool.clone(), fx.log.clone());
        let d1 = d1.clone();
        thread::spawn(move || {
            let m = log.ok("map", "zs_map_object", pool.zs_map_object(h1, 0, None));
            let before = pool.zspage_pfns(h1).unwrap();
            log.push("map", format!("zs_map_object({h1:#x}): chain {before:?}"));
            let mut out = vec![0; m.span.len()];
            pool.copy_mapped(&m, &mut out);
            let after = pool.zspage_pfns(h1).unwrap();
            pool.zs_unmap_object(m);
            log.push("map", format!("zs_unmap_object({h1:#x}): chain {after:?}"));
            (before, after, out == d1)
        })
    };
    vm.join().unwrap();
    let (before, after, same) = reader.join().unwrap();
    note_outcome(&fx);
    ensure!(fx, before == after, "a page of zspage {before:?} moved to {after:?} while an object was mapped");
    ensure!(fx, same, "the mapped object read other bytes than were written");
    let live = HashMap::from([(h0, d0), (h1, d1)]);
    check(&fx, &live);
    teardown(&fx, live);
}

/// Two frees of one handle: one succeeds, the other gets InvalidHandle.
/// The handle's entry holds its object's location, not the handle: with
/// `reuse` the winner takes the slot again at once, for an object at the
/// same place, so that the entry reads as it did before the free and only
/// the object's header tells the new handle from the freed one.
fn free_vs_free(reuse: bool) {
    let fx = fixture(Protocol::Mainline, 4);
    let (keep, dk) = malloc_fill(&fx.pool, ONE_PAGE, 0x11); // the zspage stays
    let (h, _) = malloc_fill(&fx.pool, ONE_PAGE, 0x22);
    let free_then_reuse = move |pool: &Pool, log: &Log, who: &str, tag: u8| {
        let r = pool.zs_free(h);
        log.push(who, format!("zs_free({h:#x}) -> {r:?}"));
        let again = (reuse && r.is_ok()).then(|| {
            let (h2, d2) = malloc_fill(pool, ONE_PAGE, tag);
            log.push(who, format!("zs_malloc -> {h2:#x}, at {:?}", pool.locate(h2)));
            (h2, d2)
        });
        (r, again)
    };
    let rival = {
        let (pool, log) = (fx.pool.clone(), fx.log.clone());
        thread::spawn(move || free_then_reuse(&pool, &log, "rival", 0x33))
    };
    let (mine, mine_again) = free_then_reuse(&fx.pool, &fx.log, "main", 0x44);
    let (theirs, theirs_again) = rival.join().unwrap();
    let oks = [&mine, &theirs].iter().filter(|r| r.is_ok()).count();
    ensure!(fx, oks == 1, "two frees of {h:#x}: {mine:?} and {theirs:?}");
    for r in [&mine, &theirs] {
        ensure!(fx, matches!(r, Ok(()) | Err(PoolError::InvalidHandle(_))), "a second free of {h:#x}: {r:?}");
    }
    let mut live = HashMap::from([(keep, dk)]);
    live.extend(mine_again.into_iter().chain(theirs_again));
    OUTCOMES.with(|o| *o.borrow_mut().entry(format!("{} live", live.len())).or_default() += 1);
    check(&fx, &live);
    teardown(&fx, live);
}

/// A mapping against a free of the object: while it is mapped, the object
/// stays allocated (the free is refused with Mapped, or waits for no
/// mapping: it comes before the map, which is then refused, or after the
/// unmap); a refused free leaves the object allocated and whole.
fn map_vs_free() {
    let fx = fixture(Protocol::Mainline, 4);
    let (keep, dk) = malloc_fill(&fx.pool, ONE_PAGE, 0x11);
    let (h, dh) = malloc_fill(&fx.pool, ONE_PAGE, 0x22);
    let mapper = {
        let (pool, log) = (fx.pool.clone(), fx.log.clone());
        let dh = dh.clone();
        thread::spawn(move || {
            let m = pool.zs_map_object(h, 0, None);
            log.push(
                "map",
                format!("zs_map_object({h:#x}) -> {}", if m.is_ok() { "mapped" } else { "refused" }),
            );
            m.map(|m| {
                let mut out = vec![0; m.span.len()];
                pool.copy_mapped(&m, &mut out);
                let live = pool.handle_size(h).is_ok();
                pool.zs_unmap_object(m);
                log.push("map", format!("zs_unmap_object({h:#x}), allocated until then: {live}"));
                (live, out == dh)
            })
        })
    };
    let freed = fx.pool.zs_free(h);
    fx.log.push("free", format!("zs_free({h:#x}) -> {freed:?}"));
    let mapped = mapper.join().unwrap();
    if let Ok((live, same)) = mapped {
        ensure!(fx, live, "{h:#x} was freed while it was mapped");
        ensure!(fx, same, "the mapped object read other bytes than were written");
    }
    ensure!(
        fx,
        matches!(freed, Ok(()) | Err(PoolError::Mapped(_))),
        "the free of {h:#x} failed otherwise: {freed:?}"
    );
    ensure!(
        fx,
        mapped.as_ref().is_ok() || matches!(mapped, Err(PoolError::InvalidHandle(_))),
        "the mapping of {h:#x} failed otherwise: {mapped:?}"
    );
    let what = match (&freed, &mapped) {
        (Ok(()), Ok(_)) => "mapped, then freed",
        (Ok(()), Err(_)) => "freed, mapping refused",
        (Err(_), Ok(_)) => "mapped, free refused",
        (Err(_), Err(_)) => "both refused",
    };
    OUTCOMES.with(|o| *o.borrow_mut().entry(what.to_string()).or_default() += 1);
    let mut live = HashMap::from([(keep, dk)]);
    if freed.is_err() {
        live.insert(h, dh);
    }
    check(&fx, &live);
    teardown(&fx, live);
}

/// The deferred free against migration: the VM isolates page `k` of a
/// two-page zspage and migrates it (sleeping for its page lock, holding it
/// while the owner moves it); another thread frees the zspage's only object
/// (the zspage empties: freed now if its page locks can be had, else left
/// for the deferred free) and then flushes the deferred free, whose
/// `lock_zspage` sleeps on the VM's page lock while the page migrates.
fn deferred_free_vs_migration(protocol: Protocol, k: usize) {
    let fx = fixture(protocol, 6);
    let (h1, _) = malloc_fill(&fx.pool, TWO_PAGES, 0x11);
    let pfn = fx.pool.zspage_pfns(h1).unwrap()[k];

    let vm = {
        let (mem, log) = (fx.mem.clone(), fx.log.clone());
        thread::spawn(move || vm_isolate_then(&mem, &log, pfn, true))
    };
    let freer = {
        let (pool, log) = (fx.pool.clone(), fx.log.clone());
        thread::spawn(move || {
            log.ok("free", "zs_free", pool.zs_free(h1));
            log.push("free", format!("zs_free({h1:#x}): pending {:?}", pool.pending_work()));
            let n = log.ok("free", "flush_deferred", pool.flush_deferred());
            log.push("free", format!("flush_deferred -> {n} freed"));
        })
    };
    vm.join().unwrap();
    freer.join().unwrap();
    note_outcome(&fx);
    let live = HashMap::new();
    check_after_deferred(&fx);
    check(&fx, &live);
    teardown(&fx, live);
}

/// The deferred free may have been left pending (the 2016 protocols put an
/// emptied zspage back only when its last isolated page returns): run it,
/// so that `check` sees the pool at rest.
fn check_after_deferred(fx: &Fixture) {
    fx.pool.flush_deferred().unwrap();
}

/// zs_compact against migration: two one-page zspages of one object each;
/// compaction moves one object over and frees the emptied zspage while the
/// VM moves a page of zspage `which` (0: the first allocated, 1: the second).
fn compaction_vs_migration(protocol: Protocol, which: usize) {
    let fx = fixture(protocol, 6);
    // a and b fill the first zspage, c starts the second; freeing b leaves
    // two zspages of one object each: one page compaction can free
    let (a, da) = malloc_fill(&fx.pool, ONE_PAGE, 0x11);
    let (b, _) = malloc_fill(&fx.pool, ONE_PAGE, 0x22);
    let (c, dc) = malloc_fill(&fx.pool, ONE_PAGE, 0x33);
    fx.pool.zs_free(b).unwrap();
    let pfns = [fx.pool.locate(a).unwrap().0, fx.pool.locate(c).unwrap().0];
    assert_ne!(pfns[0], pfns[1]);
    let pfn = pfns[which];

    let vm = {
        let (mem, log) = (fx.mem.clone(), fx.log.clone());
        thread::spawn(move || vm_move(&mem, &log, pfn))
    };
    let compactor = {
        let (pool, log) = (fx.pool.clone(), fx.log.clone());
        thread::spawn(move || {
            let freed = log.ok("compact", "zs_compact", pool.zs_compact());
            log.push("compact", format!("zs_compact -> {freed} pages freed"));
        })
    };
    vm.join().unwrap();
    compactor.join().unwrap();
    note_outcome(&fx);
    let live = HashMap::from([(a, da), (c, dc)]);
    check_after_deferred(&fx);
    check(&fx, &live);
    teardown(&fx, live);
}

// ----------------------------------------------------------------------
// the page lock alone (the two bugs the pool models found, minimised)

/// `trylock_pages` (the pool's trylock_zspage, under the allocator lock)
/// against `trylock_page` (the VM's, lock-free): never both owners.
fn trylock_pages_vs_trylock_page() {
    let mem = Arc::new(Memory::new(2, PCP_HIGH, PCP_BATCH).unwrap());
    let (p0, p1) = (mem.alloc_page().unwrap(), mem.alloc_page().unwrap());
    let inside = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
    let owner = move |inside: &loom::sync::atomic::AtomicUsize, who: &str| {
        let was = inside.fetch_add(1, Ordering::SeqCst);
        assert_eq!(was, 0, "invariant violated: {who} holds page {p1}'s lock, and so does the other thread");
        inside.fetch_sub(1, Ordering::SeqCst);
    };
    let vm = {
        let (mem, inside) = (mem.clone(), inside.clone());
        thread::spawn(move || {
            if mem.trylock_page(p1) {
                owner(&inside, "trylock_page");
                mem.unlock_page(p1).unwrap();
            }
        })
    };
    if mem.trylock_pages(&[p0, p1]) {
        owner(&inside, "trylock_pages");
        mem.unlock_page(p1).unwrap();
        mem.unlock_page(p0).unwrap();
    }
    vm.join().unwrap();
    assert_eq!(mem.page_flags(p0) & PG_LOCKED, 0);
    assert_eq!(mem.page_flags(p1) & PG_LOCKED, 0);
    mem.put_page(p0).unwrap();
    mem.put_page(p1).unwrap();
}

/// A sleeper on a page lock is woken by the unlock (`lock_page`, or
/// `wait_on_page_locked` when `take` is false): loom reports a lost wake-up
/// as a deadlock.
fn page_lock_wakes_sleeper(take: bool) {
    let mem = Arc::new(Memory::new(1, PCP_HIGH, PCP_BATCH).unwrap());
    let p = mem.alloc_page().unwrap();
    assert!(mem.trylock_page(p));
    let sleeper = {
        let mem = mem.clone();
        thread::spawn(move || {
            if take {
                assert!(mem.lock_page(p, None).unwrap());
                mem.unlock_page(p).unwrap();
            } else {
                assert!(mem.wait_on_page_locked(p, None).unwrap());
            }
        })
    };
    mem.unlock_page(p).unwrap();
    sleeper.join().unwrap();
    mem.put_page(p).unwrap();
}

/// What the other thread does to slot 0 while the main thread writes page `b` there.
#[derive(Clone, Copy, PartialEq)]
enum SlotRival {
    Write,
    Discard,
    Read,
}

/// zram's slot lock: slot 0 holds page `a`; the main thread writes `b`
/// into it while another thread writes `c`, discards it, or reads it.
fn zram_slot(rival: SlotRival) {
    let fx = fixture(Protocol::Mainline, 16);
    let z = Arc::new(Zram::new(fx.pool.clone(), ZramConfig::new(PAGE_SIZE as u64)).unwrap());
    let (a, b, c) = (pattern(PAGE_SIZE, 0x11), pattern(PAGE_SIZE, 0x22), pattern(PAGE_SIZE, 0x33));
    z.write_page(0, &a).unwrap();
    let other = {
        let (z, c, log) = (z.clone(), c.clone(), fx.log.clone());
        thread::spawn(move || {
            let mut seen = vec![0u8; PAGE_SIZE];
            match rival {
                SlotRival::Write => z.write_page(0, &c).unwrap(),
                SlotRival::Discard => z.discard(0, 1).unwrap(),
                SlotRival::Read => z.read_page(0, &mut seen).unwrap(),
            }
            log.push("other", "done".to_string());
            seen
        })
    };
    z.write_page(0, &b).unwrap();
    fx.log.push("main", "write_page(0, b)".to_string());
    let seen = other.join().unwrap();
    if rival == SlotRival::Read {
        ensure!(fx, seen == a || seen == b, "the reader saw a torn or foreign page");
    }
    let mut now = vec![0u8; PAGE_SIZE];
    z.read_page(0, &mut now).unwrap();
    let zero = vec![0u8; PAGE_SIZE];
    let last = if now == b {
        "b"
    } else if now == c {
        "c"
    } else if now == zero {
        "nothing"
    } else {
        "?"
    };
    let allowed = match rival {
        SlotRival::Write => now == b || now == c,
        SlotRival::Discard => now == b || now == zero,
        SlotRival::Read => now == b,
    };
    ensure!(fx, allowed, "slot 0 holds {last}, which no order of the two calls leaves");
    let stored = z.pages_stored();
    ensure!(fx, stored == u64::from(now != zero), "pages_stored {stored} for a slot holding {last}");
    let check = z.check();
    ensure!(fx, check.is_ok(), "zram check: {check:?}");
    z.reset().unwrap();
    ensure!(fx, fx.pool.total_pages() == 0, "the reset device left {} pages", fx.pool.total_pages());
    OUTCOMES.with(|o| *o.borrow_mut().entry(format!("slot ends with {last}")).or_default() += 1);
}

// ----------------------------------------------------------------------
// the tests

#[test]
fn zram_slot_write_vs_write() {
    explore("zram_slot_write_vs_write", || zram_slot(SlotRival::Write));
}

#[test]
fn zram_slot_write_vs_discard() {
    explore("zram_slot_write_vs_discard", || zram_slot(SlotRival::Discard));
}

#[test]
fn zram_slot_write_vs_read() {
    explore("zram_slot_write_vs_read", || zram_slot(SlotRival::Read));
}

#[test]
fn mm_trylock_pages_vs_trylock_page() {
    explore("mm_trylock_pages_vs_trylock_page", trylock_pages_vs_trylock_page);
}

#[test]
fn mm_lock_page_wakes_sleeper() {
    explore("mm_lock_page_wakes_sleeper", || page_lock_wakes_sleeper(true));
}

#[test]
fn mm_wait_on_page_locked_wakes_sleeper() {
    explore("mm_wait_on_page_locked_wakes_sleeper", || page_lock_wakes_sleeper(false));
}

#[test]
fn close_vs_malloc_with_room() {
    explore("close_vs_malloc_with_room", || close_vs_malloc(true));
}

#[test]
fn close_vs_malloc_new_zspage() {
    explore("close_vs_malloc_new_zspage", || close_vs_malloc(false));
}

#[test]
fn seed_race_putback_mainline() {
    explore("seed_race_putback_mainline", || seed_race(Protocol::Mainline, false));
}

#[test]
fn seed_race_migrate_mainline() {
    explore("seed_race_migrate_mainline", || seed_race(Protocol::Mainline, true));
}

#[test]
fn seed_race_putback_2016() {
    explore("seed_race_putback_2016", || seed_race(Protocol::Seed2016, false));
}

#[test]
fn seed_race_migrate_2016() {
    explore("seed_race_migrate_2016", || seed_race(Protocol::Seed2016, true));
}

#[test]
fn migrate_vs_malloc_free_mainline() {
    explore("migrate_vs_malloc_free_mainline", || migrate_vs_malloc_free(Protocol::Mainline));
}

#[test]
fn migrate_vs_malloc_free_2016() {
    explore("migrate_vs_malloc_free_2016", || migrate_vs_malloc_free(Protocol::Seed2016));
}

#[test]
fn migrate_vs_map_mainline() {
    explore("migrate_vs_map_mainline", || migrate_vs_map(Protocol::Mainline));
}

/// This model found that the 2016 protocol moved the second page of a
/// spanning object under a live mapping: its migrate checked only the pins
/// of the objects that start in the page.  4.8's zs_map_object took the
/// zspage's migrate lock for reading (KERNEL.md section 5), and the 2016
/// migrate, in the model and the engine, now trylocks it for writing.
#[test]
fn migrate_vs_map_2016() {
    explore("migrate_vs_map_2016", || migrate_vs_map(Protocol::Seed2016));
}

#[test]
fn free_vs_free_same_handle() {
    explore("free_vs_free_same_handle", || free_vs_free(false));
}

/// The winner of the two frees takes the slot and the place again: the
/// entry is what it was, the header is not.
#[test]
fn free_vs_free_then_reuse() {
    explore("free_vs_free_then_reuse", || free_vs_free(true));
}

#[test]
fn map_vs_free_same_handle() {
    explore("map_vs_free_same_handle", map_vs_free);
}

#[test]
fn deferred_free_vs_migration_mainline() {
    explore("deferred_free_vs_migration_mainline/page0", || {
        deferred_free_vs_migration(Protocol::Mainline, 0)
    });
    explore("deferred_free_vs_migration_mainline/page1", || {
        deferred_free_vs_migration(Protocol::Mainline, 1)
    });
}

#[test]
fn deferred_free_vs_migration_2016() {
    explore("deferred_free_vs_migration_2016/page0", || deferred_free_vs_migration(Protocol::Seed2016, 0));
    explore("deferred_free_vs_migration_2016/page1", || deferred_free_vs_migration(Protocol::Seed2016, 1));
}

#[test]
fn compaction_vs_migration_mainline() {
    explore("compaction_vs_migration_mainline/src", || compaction_vs_migration(Protocol::Mainline, 0));
    explore("compaction_vs_migration_mainline/dst", || compaction_vs_migration(Protocol::Mainline, 1));
}

#[test]
fn compaction_vs_migration_2016() {
    explore("compaction_vs_migration_2016/src", || compaction_vs_migration(Protocol::Seed2016, 0));
    explore("compaction_vs_migration_2016/dst", || compaction_vs_migration(Protocol::Seed2016, 1));
}

/// The mutant: under 2016-v3, zs_free destroys the zspage while its page is
/// isolated, the page keeps its stale descriptor, and the putback works on
/// whatever zspage now has that id.  loom must find it.
#[test]
fn broken_v3_seed_race_fails() {
    let found = catch_unwind(AssertUnwindSafe(|| {
        explore("broken_v3_seed_race (expected to fail)", || seed_race(Protocol::BrokenV3, false));
    }));
    let Err(panic) = found else {
        panic!("loom explored the 2016-v3 seed race and found no failing interleaving");
    };
    let msg = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains("invariant violated"), "the v3 model failed, but not on an invariant: {msg}");
    println!("loom found the 2016-v3 race:\n{msg}");
}
