//! The allocator: mm/zsmalloc.c function for function, on the frames of a
//! [`Memory`].  The model's counterpart is `zsmalloc/pool/zsmalloc.py`; both
//! follow one deterministic algorithm, so that the same calls give the same
//! handles, locations and lists (the differential test compares them).
//! Fullness groups and compaction are 6.4's, or with [`Fullness::Legacy`]
//! those of 4.8 to 6.3 (`legacy.rs`).
//!
//! What lives where
//! ----------------
//! - Object bytes, in-page object headers and free-list links: in the frames,
//!   where the kernel keeps them.
//! - Per page (zspage id, next page of the chain, first object offset, the
//!   handle of a huge object, movable/locked/isolated): the page descriptors.
//! - Per zspage: [`ZsPage`] entries of a lazily backed table indexed by
//!   zspage id (the kernel's struct zspage), the fullness-list links
//!   included.
//! - Per handle: [`HandleEntry`] entries indexed by handle slot.
//! - Per class: [`SizeClass`], its fullness-list heads and counters behind
//!   the class lock.
//!
//! A zspage of class size 1568 (5 pages, 13 objects) over its frames:
//!
//! ```text
//!       page 0 (pfn 17)      page 1 (pfn 3)       page 2 (pfn 40)  ...  page 4
//!     +------+------+----+ +-+------+------+---+ +----+------+---+    +--+------+--+
//!     | obj0 | obj1 |obj2| |2| obj3 | obj4 |ob5| |obj5| obj6 |ob7|    |o1| obj12|//|
//!     +------+------+----+ +-+------+------+---+ +----+------+---+    +--+------+--+
//!     first_obj_offset 0      608                  ...                      tail waste 96
//! ```
//!
//! Every slot of a non-huge class starts with one 8-byte word: the handle
//! with OBJ_ALLOCATED_TAG when allocated, `next_free_index << 1` when free
//! (FREE_LIST_END ends the list).  A huge zspage keeps its object's handle
//! in its zspage entry (`handle`) instead: the kernel's page->index of its
//! one page, kept out of the page descriptors so that they are 16 bytes.
//!
//! A handle is `slot << 32 | tag << 20 | generation << 1`: the pool's tag
//! makes every other pool refuse it.  Its table entry, one 8-byte
//! [`HandleEntry`] (the kernel's zs_handle slot), holds obj_to_location's
//! word while the handle lives, and the slot's last generation while it is
//! free:
//!
//! ```text
//!       63 61 60      48 47                    12 11     0
//!      +-----+----------+------------------------+-------+
//! live |  0  |size asked|  pfn                   |obj_idx|   obj_to_location's word
//!      +-----+----------+------------------------+-------+
//!       63 62                        20 19        1   0
//!      +--+----------------------------+----------+----+
//! free | 1|  0                         |generation|  0 |   ENTRY_FREE, no live word has it
//!      +--+----------------------------+----------+----+
//! ```
//!
//! (pfn: the page the object starts in; the size asked is 1..4096.)  The
//! handle itself lives with its object, as in the kernel: in the in-page
//! header above, or a huge object's zspage entry
//! (`obj_to_head`).  So a handle is valid when its slot is in the table,
//! the entry is live and the word at the object's location is the handle
//! with OBJ_ALLOCATED_TAG: a stale handle (its slot reused, another
//! generation) or another pool's (another tag) finds another word there.
//! The object's zspage is the one its page descriptor names (`private`,
//! the kernel's page->private).  Moving an object rewrites only its entry
//! (and its header, which moves with it).  A freed entry keeps the
//! generation, and the next handle of that slot is one generation on.
//!
//! Locking
//! -------
//! Lock order: page lock -> pool lock -> class lock -> zspage lock, and the
//! cache lock and the Memory's allocator lock are leaves.
//!
//! - `lock` (pool->lock), a reader/writer lock: zs_free and object access
//!   read; compaction, migration and trim write.
//! - `SizeClass::state` (class->lock): the class's lists and counters, and
//!   every zspage's inuse, freeobj, fullness group and list links, and the
//!   in-page headers of its zspages.
//! - the zspage lock (`ZsPage::lock`): readers > 0 while objects are mapped;
//!   compaction and migration only try it for writing (-1).
//! - `cache` (the kmem caches' own lock): free handle slots and zspage ids,
//!   table lengths, the page count.
//! - `pinned` (the mapped objects' pins) is a leaf too.
//!
//! A handle entry becomes live in zs_malloc and free in zs_free, both under
//! the class lock of its object's class, and moves only under the pool lock
//! held for writing.  The header is written before the entry is stored
//! (Release), and a lookup reads the entry (Acquire) before the header.
//! zs_free and zs_map_object check the handle again under the class lock,
//! where neither can change: of two frees of one handle, the second finds
//! the entry free (or another object's header, if the slot was taken again
//! meanwhile) and gets InvalidHandle; a mapping pins under that lock, where
//! zs_free looks for pins.  Object access checks it under the pool lock
//! (reading) alone: exact but against a free of the same slot racing it,
//! where, as with any handle used while it is freed, the caller's race
//! decides what it reads.

use std::collections::HashMap;
#[cfg(all(test, not(loom)))]
use std::time::Duration;

use crate::mm::migrate::MovableOps;
use crate::mm::table::{Table, Zeroable};
use crate::mm::zone::MigrateType;
use crate::mm::{trim_process_heap, Memory, MmError, NO_PAGE, PAGE_SHIFT, PAGE_SIZE, PG_ISOLATED};
use crate::sync::Ordering::{Acquire, Relaxed, Release, SeqCst};
use crate::sync::{
    thread, Arc, AtomicBool, AtomicI32, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Mutex,
    MutexGuard, RwLock, RwLockReadGuard, Weak,
};

use super::legacy::{self, Fullness};
use super::migrate::Protocol;

use super::size_class::{
    build_class_table, get_size_class_index, ClassRule, ClassSpec, ZS_HANDLE_SIZE, ZS_MAX_ALLOC_SIZE,
    ZS_MAX_CHAIN_SIZE, ZS_MIN_ALLOC_SIZE, ZS_SIZE_CLASSES,
};

pub const OBJ_ALLOCATED_TAG: u64 = 1;
pub const OBJ_TAG_BITS: u32 = 1;
pub const OBJ_INDEX_BITS: u32 = PAGE_SHIFT;
pub const OBJ_INDEX_MASK: u64 = (1 << OBJ_INDEX_BITS) - 1;
pub const FREE_LIST_END: u64 = !OBJ_ALLOCATED_TAG;

pub const HANDLE_SLOT_SHIFT: u32 = 32;
pub const HANDLE_SLOT_MASK: u64 = (1 << 31) - 1;
pub const HANDLE_GEN_SHIFT: u32 = 1;
/// The pool's tag, in every handle (zsmalloc/pool/handles.py hands them out).
pub const HANDLE_TAG_SHIFT: u32 = 20;
pub const NR_HANDLE_TAGS: u16 = 1 << 12;
/// The generation: 19 bits, below the tag.
pub const HANDLE_GEN_MASK: u64 = (1 << (HANDLE_TAG_SHIFT - HANDLE_GEN_SHIFT)) - 1;
/// A free slot's entry: bit 63, which no live entry has (the size asked,
/// at most 4096, ends at bit 60), beside the slot's last generation.
const ENTRY_FREE: u64 = 1 << 63;

pub const NR_FULLNESS_GROUPS: usize = 12;
pub const ZS_INUSE_RATIO_0: usize = 0;
pub const ZS_INUSE_RATIO_10: usize = 1;
pub const ZS_INUSE_RATIO_99: usize = 10;
pub const ZS_INUSE_RATIO_100: usize = 11;
/// A zspage on no fullness list (being built, isolated, or taken by the deferred free).
pub const FG_NONE: u8 = u8::MAX;
pub(super) const NO_ZSPAGE: u32 = u32::MAX;
const FREE_CLASS: u16 = u16::MAX;

const AUTO_COMPACT_INTERVAL: u32 = 1024;
const TRIM_MIN: usize = 256;
const TABLE_MIN: usize = 1024;
const SIZE_SHIFT: u32 = 48;
pub(super) const LOC_MASK: u64 = (1 << SIZE_SHIFT) - 1;
/// Most objects that start in one page: 4096 / 32, and one that began before.
pub(super) const MAX_OBJS_PER_PAGE: usize = PAGE_SIZE / ZS_MIN_ALLOC_SIZE + 1;

/// The errors of pool calls; each leaves the pool as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    InvalidSize(String),
    InvalidHandle(String),
    /// an offset or length outside the object, or another bad argument
    Value(String),
    PoolFull(String),
    /// no page to be had from the page allocator: the message, and the
    /// allocator's own error as its cause
    NoFrame(String, MmError),
    PoolClosed(String),
    /// a free of an object that is mapped (zs_map_object without its unmap)
    Mapped(String),
    Mm(MmError),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::InvalidSize(m)
            | PoolError::InvalidHandle(m)
            | PoolError::Value(m)
            | PoolError::PoolFull(m)
            | PoolError::PoolClosed(m)
            | PoolError::Mapped(m)
            | PoolError::NoFrame(m, _) => f.write_str(m),
            PoolError::Mm(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PoolError {}

impl From<MmError> for PoolError {
    fn from(e: MmError) -> Self {
        PoolError::Mm(e)
    }
}

/// `get_fullness_group`: 0 empty, 1..10 by tenths of use, 11 full.
pub fn get_fullness_group(inuse: usize, objs_per_zspage: usize) -> usize {
    if inuse == 0 {
        ZS_INUSE_RATIO_0
    } else if inuse == objs_per_zspage {
        ZS_INUSE_RATIO_100
    } else {
        (100 * inuse / objs_per_zspage) / 10 + 1
    }
}

/// A live handle's table entry: what `lookup` found.
struct Found {
    slot: usize,
    /// location and size
    packed: u64,
}

/// The entry of a free slot whose last handle was `handle`: its generation.
#[inline]
fn free_entry(handle: u64) -> u64 {
    ENTRY_FREE | (handle & (HANDLE_GEN_MASK << HANDLE_GEN_SHIFT))
}

/// Whether an entry is a live handle's (not ENTRY_FREE).
#[inline]
fn entry_is_live(obj: u64) -> bool {
    obj & ENTRY_FREE == 0
}

/// Whether `head`, the word at an object's location (`obj_to_head`), says
/// that the object is allocated to `handle`: the handle with
/// OBJ_ALLOCATED_TAG, a bit no handle has.
#[inline]
fn head_is(head: u64, handle: u64) -> bool {
    head ^ handle == OBJ_ALLOCATED_TAG
}

/// One handle slot (the kernel's zs_handle cache slot): the object's
/// location in the low 48 bits and the size asked for above while the
/// handle lives; ENTRY_FREE and the slot's last generation while it is free.
#[derive(Default)]
pub struct HandleEntry {
    pub(super) obj: AtomicU64,
}

// One word an object: the table's whole cost (loom's atomics are larger).
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<HandleEntry>() == 8);

// SAFETY: atomics only; zero is an unused slot.
unsafe impl Zeroable for HandleEntry {}

/// One zspage (struct zspage); fields change under its class lock.
#[derive(Default)]
pub struct ZsPage {
    class: AtomicU16,
    fg: AtomicU8,
    deferred: AtomicBool,
    pub(super) inuse: AtomicU16,
    /// pages of it the VM holds isolated (the 2016 protocols)
    pub(super) isolated: AtomicI32,
    freeobj: AtomicI32,
    first: AtomicU32,
    prev: AtomicU32,
    next: AtomicU32,
    /// the zspage lock: readers > 0, -1 write-locked
    lock: AtomicI32,
    /// a huge zspage's object: its handle with OBJ_ALLOCATED_TAG, 0 while
    /// free (the kernel keeps it in its one page's page->index)
    handle: AtomicU64,
}

// SAFETY: atomics only; entries are initialised before use (cache_alloc_zspage).
unsafe impl Zeroable for ZsPage {}

/// One class's lists and counters (under the class lock).
pub struct ClassState {
    pub(super) head: [u32; NR_FULLNESS_GROUPS],
    count: [u32; NR_FULLNESS_GROUPS],
    pub objs_allocated: u64,
    pub objs_inuse: u64,
}

/// Where the objects of one page of a zspage lie.
#[derive(Clone, Copy, Default)]
struct PageLayout {
    first_obj_offset: u16,
    /// objects starting in this page, and the index of the first
    count: u16,
    first_idx: u16,
}

/// One canonical size class.
pub struct SizeClass {
    pub spec: ClassSpec,
    /// bytes before the caller's data: the handle header, none when huge
    hdr: usize,
    layout: [PageLayout; ZS_MAX_CHAIN_SIZE],
    /// the fullness group of each inuse count, in the pool's grouping
    pub(super) fg_of_inuse: Vec<u8>,
    pub(super) state: Mutex<ClassState>,
}

impl SizeClass {
    fn new(spec: ClassSpec, fullness: Fullness) -> SizeClass {
        let mut layout = [PageLayout::default(); ZS_MAX_CHAIN_SIZE];
        let mut idx = 0;
        for (k, l) in layout.iter_mut().enumerate().take(spec.pages_per_zspage) {
            let first = (spec.size - (k * PAGE_SIZE) % spec.size) % spec.size;
            let fits = (PAGE_SIZE - first).div_ceil(spec.size);
            let count = fits.min(spec.objs_per_zspage - idx);
            *l = PageLayout { first_obj_offset: first as u16, count: count as u16, first_idx: idx as u16 };
            idx += count;
        }
        let n = spec.objs_per_zspage;
        let group_of = match fullness {
            Fullness::Ratio => get_fullness_group,
            Fullness::Legacy => legacy::get_fullness_group,
        };
        SizeClass {
            spec,
            hdr: if spec.huge { 0 } else { ZS_HANDLE_SIZE },
            layout,
            fg_of_inuse: (0..=n).map(|i| group_of(i, n) as u8).collect(),
            state: Mutex::new(ClassState {
                head: [NO_ZSPAGE; NR_FULLNESS_GROUPS],
                count: [0; NR_FULLNESS_GROUPS],
                objs_allocated: 0,
                objs_inuse: 0,
            }),
        }
    }

    /// Offset in the chain of object `idx`'s slot.
    #[inline]
    fn obj_offset(&self, idx: usize) -> usize {
        idx * self.spec.size
    }
}

/// A zspage's chain of pages, head first.
#[derive(Clone, Copy)]
pub struct Chain {
    pages: [u32; ZS_MAX_CHAIN_SIZE],
    len: usize,
}

impl Chain {
    pub fn as_slice(&self) -> &[u32] {
        &self.pages[..self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [u32] {
        &mut self.pages[..self.len]
    }
}

/// Where an object's bytes lie: one run in one page, or two runs.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    first: (usize, usize),
    second: (usize, usize),
}

impl Span {
    pub fn len(&self) -> usize {
        self.first.1 + self.second.1
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The arena address of the bytes when they lie in one page.
    pub fn contiguous(&self) -> Option<usize> {
        (self.second.1 == 0).then_some(self.first.0)
    }
}

/// An object's bytes, located under the pool lock held for reading: no
/// compaction or migration moves them while this lives.
pub struct ObjectRef<'a> {
    pool: &'a Pool,
    _guard: RwLockReadGuard<'a, ()>,
    pub span: Span,
}

impl ObjectRef<'_> {
    pub fn len(&self) -> usize {
        self.span.len()
    }
    pub fn is_empty(&self) -> bool {
        self.span.is_empty()
    }
    /// Copy the bytes out; `out` must be `len()` long.
    pub fn copy_to(&self, out: &mut [u8]) {
        self.pool.copy_span_out(&self.span, out);
    }
}

/// A pinned object: its zspage read-locked and its handle pinned until
/// `Pool::unmap_object`.
#[derive(Clone, Copy, Debug)]
pub struct Mapped {
    zid: u32,
    slot: u32,
    pub span: Span,
}

/// The pool's configuration.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub name: String,
    pub chain_size: usize,
    pub class_rule: ClassRule,
    /// how zspages are grouped, allocated from and compacted
    pub fullness: Fullness,
    pub max_pages: Option<usize>,
    pub auto_compact_pages: Option<usize>,
    pub migration: Protocol,
    /// the tag in every handle (below NR_HANDLE_TAGS)
    pub handle_tag: u16,
    /// false: no worker thread; requests wait in `pending_work` until the
    /// caller runs them (`run_pending_work`, `flush_deferred`)
    pub background_work: bool,
    /// true: the pool's pages are __GFP_MOVABLE (placed in movable
    /// pageblocks of a zone); false: unmovable, as before 4.8
    pub movable: bool,
    /// true: the pool marks its pages movable for the VM to migrate
    /// (SetZsPageMovable, since 4.8); false: the VM can never move them
    pub migratable: bool,
}

impl PoolConfig {
    /// A pool named `name` with the defaults: chain size 8, the min-waste
    /// rule, 6.4's fullness groups, no page cap, the mainline protocol, tag
    /// 1, background work on.
    pub fn new(name: &str) -> PoolConfig {
        PoolConfig {
            name: name.into(),
            chain_size: 8,
            class_rule: ClassRule::MinWaste,
            fullness: Fullness::Ratio,
            max_pages: None,
            auto_compact_pages: None,
            migration: Protocol::Mainline,
            handle_tag: 1,
            background_work: true,
            movable: true,
            migratable: true,
        }
    }
}

struct Cache {
    h_free: Vec<u32>,
    gen_base: u64,
    zs_free: Vec<u32>,
    zs_len: usize,
    pages_allocated: usize,
    events: PoolEvents,
}

/// Compaction and deferred-free counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolEvents {
    pub pages_compacted: u64,
    pub objs_compacted: u64,
    pub compactions: u64,
    pub deferred_frees: u64,
}

#[derive(Default)]
struct Work {
    free: bool,
    compact: bool,
    running: bool,
    /// requests, in order, while background work is off
    pending: Vec<&'static str>,
}

pub struct Pool {
    pub config: PoolConfig,
    pub(super) mem: Arc<Memory>,
    own_memory: bool,
    huge_class_size: usize,
    pub(super) ops_id: u8,
    /// the group of full zspages (ZS_INUSE_RATIO_100, or legacy ZS_FULL):
    /// find_get_zspage looks below it
    zs_full: usize,
    /// canonical classes, largest index first (the order compaction walks)
    classes: Vec<SizeClass>,
    /// class index (0..255) -> position in `classes`
    class_pos: [u8; ZS_SIZE_CLASSES],
    /// size asked for (1..4096) -> position in `classes`
    class_for_size: Vec<u8>,
    pub(super) lock: RwLock<()>,
    cache: Mutex<Cache>,
    /// the page cap, usize::MAX for none (config.max_pages at first)
    max_pages: AtomicUsize,
    /// `Cache::pages_allocated`, stored under the cache lock whenever it
    /// changes: read without the lock (zram's mem_used_max, on every write)
    pages_total: AtomicUsize,
    handles: Table<HandleEntry>,
    /// the handle table's length: grows under the cache lock, shrinks under
    /// the pool lock held for writing (trim)
    h_len: AtomicUsize,
    zspages: Table<ZsPage>,
    pub(super) pinned: Mutex<HashMap<u32, u32>>,
    deferred_worker: Mutex<()>,
    work: Mutex<Work>,
    auto_countdown: AtomicU32,
    closed: AtomicBool,
    me: Weak<Pool>,
}

/// What `Pool::snapshot` reads: plain data, taken under every lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub pages_allocated: usize,
    pub events: PoolEvents,
    /// per class, largest first: (objs_allocated, objs_inuse, lists head first)
    pub classes: Vec<(u64, u64, Vec<Vec<u32>>)>,
    pub zspages: Vec<ZsPageSnap>,
    pub free_zspage_ids: Vec<u32>,
    pub nr_zspage_ids: usize,
    /// (slot, handle, pfn, idx, size) of every live handle
    pub handles: Vec<(u32, u64, u32, u32, u32)>,
    pub free_handle_slots: Vec<u32>,
    pub nr_handle_slots: usize,
    pub pinned: Vec<(u32, u32)>,
    pub pages: Vec<PageSnap>,
    pub hwm: usize,
    pub nr_used: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZsPageSnap {
    pub zid: u32,
    pub class: usize,
    pub inuse: usize,
    pub freeobj: i64,
    pub fg: i64,
    pub lock: i64,
    pub isolated: i64,
    pub deferred: bool,
    pub pages: Vec<i64>,
    pub headers: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSnap {
    pub pfn: u32,
    pub flags: u8,
    pub refcount: i32,
    pub movable_ops: u8,
    pub private: u32,
    pub index: u64,
    pub next: i64,
    pub first_obj_offset: u16,
}

/// One row of debugfs `classes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassRow {
    pub spec: ClassSpec,
    pub zspages_per_group: [u32; NR_FULLNESS_GROUPS],
    pub objs_allocated: u64,
    pub objs_inuse: u64,
    pub freeable: u64,
    /// the pool's grouping, which says what `zspages_per_group` holds
    pub fullness: Fullness,
}

#[inline]
fn zs_can_compact(spec: &ClassSpec, st: &ClassState) -> u64 {
    let wasted = st.objs_allocated.saturating_sub(st.objs_inuse);
    (wasted / spec.objs_per_zspage as u64) * spec.pages_per_zspage as u64
}

impl Pool {
    /// `zs_create_pool`, on `memory`; `own_memory`: the pool closes it.
    pub fn new(config: PoolConfig, mem: Arc<Memory>, own_memory: bool) -> Result<Arc<Pool>, PoolError> {
        if config.handle_tag >= NR_HANDLE_TAGS {
            return Err(PoolError::Value(format!(
                "handle_tag must be within 0..{}, not {}",
                NR_HANDLE_TAGS - 1,
                config.handle_tag
            )));
        }
        let table = build_class_table(config.chain_size, config.class_rule).map_err(PoolError::Value)?;
        let classes: Vec<SizeClass> =
            table.specs.iter().map(|&s| SizeClass::new(s, config.fullness)).collect();
        let zs_full = match config.fullness {
            Fullness::Ratio => ZS_INUSE_RATIO_100,
            Fullness::Legacy => legacy::ZS_FULL,
        };
        let mut class_pos = [0u8; ZS_SIZE_CLASSES];
        for (i, slot) in class_pos.iter_mut().enumerate() {
            let canonical = table.canonical[i];
            *slot = classes.iter().position(|c| c.spec.index == canonical).expect("canonical class") as u8;
        }
        let mut class_for_size = vec![0u8; ZS_MAX_ALLOC_SIZE + 1];
        for (s, slot) in class_for_size.iter_mut().enumerate().skip(1) {
            *slot = class_pos[get_size_class_index(s + ZS_HANDLE_SIZE)];
        }
        let frames = mem.capacity();
        let os_err = |e: std::io::Error| PoolError::Value(format!("cannot reserve the pool's tables: {e}"));
        let max_handles = (frames * (PAGE_SIZE / ZS_MIN_ALLOC_SIZE) + 1).min(HANDLE_SLOT_MASK as usize + 1);
        let handles: Table<HandleEntry> = Table::new(max_handles).map_err(os_err)?;
        let zspages: Table<ZsPage> = Table::new(frames + 1).map_err(os_err)?;
        handles.as_slice()[0].obj.store(ENTRY_FREE, Relaxed);
        let max_pages = config.max_pages.unwrap_or(usize::MAX);
        let mut registered = Ok(0);
        let pool = Arc::new_cyclic(|me: &Weak<Pool>| {
            let ops: Weak<dyn MovableOps> = me.clone();
            registered = mem.register_movable_ops(ops);
            Pool {
                auto_countdown: AtomicU32::new(AUTO_COMPACT_INTERVAL),
                config,
                mem,
                own_memory,
                huge_class_size: table.huge_class_size,
                zs_full,
                classes,
                class_pos,
                class_for_size,
                lock: RwLock::new(()),
                cache: Mutex::new(Cache {
                    h_free: Vec::new(),
                    gen_base: 0,
                    zs_free: Vec::new(),
                    zs_len: 0,
                    pages_allocated: 0,
                    events: PoolEvents::default(),
                }),
                handles,
                h_len: AtomicUsize::new(1),
                max_pages: AtomicUsize::new(max_pages),
                pages_total: AtomicUsize::new(0),
                zspages,
                pinned: Mutex::new(HashMap::new()),
                deferred_worker: Mutex::new(()),
                work: Mutex::new(Work::default()),
                closed: AtomicBool::new(false),
                me: me.clone(),
                ops_id: *registered.as_ref().unwrap_or(&0),
            }
        });
        registered?;
        Ok(pool)
    }

    pub fn memory(&self) -> &Arc<Memory> {
        &self.mem
    }
    pub fn owns_memory(&self) -> bool {
        self.own_memory
    }
    pub fn ops_id(&self) -> u8 {
        self.ops_id
    }
    pub fn huge_class_size(&self) -> usize {
        self.huge_class_size
    }
    pub fn is_closed(&self) -> bool {
        self.closed.load(Acquire)
    }
    /// Canonical classes, largest index first.
    pub fn specs(&self) -> impl Iterator<Item = &ClassSpec> {
        self.classes.iter().map(|c| &c.spec)
    }
    /// The canonical class index `malloc(size)` uses.
    pub fn class_index_for_size(&self, size: usize) -> Result<usize, PoolError> {
        check_size(size)?;
        Ok(self.classes[self.class_for_size[size] as usize].spec.index)
    }

    /// `zs_lookup_class_index`: the canonical class serving objects of
    /// `size` bytes, the handle header not added (zram's question).
    pub fn zs_lookup_class_index(&self, size: usize) -> Result<usize, PoolError> {
        check_size(size)?;
        Ok(self.classes[self.class_pos[get_size_class_index(size)] as usize].spec.index)
    }

    /// The page cap (`max_pages`), or None.
    pub fn max_pages(&self) -> Option<usize> {
        let m = self.max_pages.load(Relaxed);
        (m != usize::MAX).then_some(m)
    }

    /// Change the page cap: new zspages are refused past it (zram's mem_limit).
    pub fn set_max_pages(&self, max: Option<usize>) {
        self.max_pages.store(max.unwrap_or(usize::MAX), Relaxed);
    }
    /// `zs_get_total_pages`.
    pub fn total_pages(&self) -> usize {
        self.pages_total.load(Relaxed)
    }
    pub fn events(&self) -> PoolEvents {
        self.cache.lock().events
    }

    #[inline]
    pub(super) fn zs(&self, zid: u32) -> &ZsPage {
        &self.zspages.as_slice()[zid as usize]
    }
    #[inline]
    pub(super) fn entry(&self, slot: usize) -> &HandleEntry {
        &self.handles.as_slice()[slot]
    }
    #[inline]
    pub(super) fn class_of_zspage(&self, zid: u32) -> &SizeClass {
        &self.classes[self.class_pos[self.zs(zid).class.load(Relaxed) as usize] as usize]
    }

    /// The class of zspage `zid`, or of class slot `fallback` if it is free.
    pub(super) fn class_of_zspage_or(&self, zid: u32, fallback: usize) -> &SizeClass {
        let class = self.zs(zid).class.load(Relaxed);
        let index = if class == FREE_CLASS { fallback } else { class as usize };
        &self.classes[self.class_pos[index] as usize]
    }

    fn closed_error(&self) -> PoolError {
        PoolError::PoolClosed(format!("pool '{}' is closed", self.config.name))
    }

    fn bad_handle(&self, handle: u64) -> PoolError {
        if self.is_closed() {
            return self.closed_error();
        }
        PoolError::InvalidHandle(format!("invalid handle {handle}: unknown, freed or stale"))
    }

    fn check_open(&self) -> Result<(), PoolError> {
        if self.is_closed() {
            Err(self.closed_error())
        } else {
            Ok(())
        }
    }

    /// The slot of a live handle and its packed location and size, or an
    /// error.  Caller holds the pool lock (either side): no object moves.
    /// The entry says where the slot's object is, and the word there says
    /// whose it is: a stale handle (its slot reused) or another pool's
    /// finds another handle there.
    #[inline]
    fn lookup(&self, handle: u64, h_len: usize) -> Result<Found, PoolError> {
        let slot = (handle >> HANDLE_SLOT_SHIFT) as usize;
        if slot >= h_len {
            return Err(self.bad_handle(handle));
        }
        // Acquire: the header zs_malloc wrote before it stored the entry
        let packed = self.entry(slot).obj.load(Acquire);
        if !entry_is_live(packed) || !head_is(self.obj_to_head(self.class_of(packed), packed), handle) {
            return Err(self.bad_handle(handle));
        }
        Ok(Found { slot, packed })
    }

    /// The class of a live entry's object: the class of the size asked
    /// (the one malloc took).
    #[inline]
    fn class_of(&self, packed: u64) -> &SizeClass {
        &self.classes[self.class_for_size[(packed >> SIZE_SHIFT) as usize] as usize]
    }

    /// `obj_to_head`: the word at the object's location, its handle with
    /// OBJ_ALLOCATED_TAG while it is allocated: the in-page header, or a
    /// huge object's zspage entry's `handle` (the kernel's page->index).
    #[inline]
    fn obj_to_head(&self, cls: &SizeClass, obj: u64) -> u64 {
        let (pfn, idx) = obj_to_location_parts(obj & LOC_MASK);
        if cls.spec.huge {
            self.zs(self.mem.desc(pfn).private.load(Relaxed)).handle.load(Relaxed)
        } else {
            self.mem.word(Self::header_addr(cls, pfn, idx)).load(Relaxed)
        }
    }

    /// `get_zspage`: the zspage of the page an object starts in, which its
    /// descriptor names (`private`).
    #[inline]
    fn get_zspage(&self, obj: u64) -> u32 {
        self.mem.desc(obj_to_location_parts(obj & LOC_MASK).0).private.load(Relaxed)
    }

    #[inline]
    fn tag_bits(&self) -> u64 {
        (self.config.handle_tag as u64) << HANDLE_TAG_SHIFT
    }

    #[inline]
    fn h_len(&self) -> usize {
        self.h_len.load(Acquire)
    }

    // ------------------------------------------------------------------
    // handle and zspage caches

    /// `cache_alloc_handle`: a free slot (caller holds the class lock).
    fn cache_alloc_handle(&self) -> Result<u32, PoolError> {
        let mut c = self.cache.lock();
        if let Some(slot) = c.h_free.pop() {
            return Ok(slot);
        }
        let old = self.h_len();
        let new = (HANDLE_SLOT_MASK as usize + 1).min(1024.max(old + old / 4)).min(self.handles.capacity());
        if new <= old {
            return Err(PoolError::PoolFull("handle table is full".into()));
        }
        let fresh = ENTRY_FREE | (c.gen_base << HANDLE_GEN_SHIFT);
        for slot in old..new {
            self.entry(slot).obj.store(fresh, Relaxed);
        }
        c.h_free.extend((old as u32..new as u32).rev());
        self.h_len.store(new, Release);
        Ok(c.h_free.pop().expect("just grown"))
    }

    fn cache_free_handle(&self, slot: u32) {
        self.cache.lock().h_free.push(slot);
    }

    fn cache_alloc_zspage(&self) -> u32 {
        let mut c = self.cache.lock();
        if let Some(zid) = c.zs_free.pop() {
            return zid;
        }
        let zid = c.zs_len as u32;
        c.zs_len += 1;
        zid
    }

    // ------------------------------------------------------------------
    // fullness lists (caller holds the class lock)

    /// `insert_zspage`: at the head of the group's list; before 6.4, just
    /// after the head instead when the head holds more objects.
    pub(super) fn insert_zspage(&self, st: &mut ClassState, zid: u32, fg: usize) {
        let z = self.zs(zid);
        let head = st.head[fg];
        if self.config.fullness == Fullness::Legacy
            && head != NO_ZSPAGE
            && z.inuse.load(Relaxed) < self.zs(head).inuse.load(Relaxed)
        {
            let h = self.zs(head);
            let after = h.next.load(Relaxed);
            z.prev.store(head, Relaxed);
            z.next.store(after, Relaxed);
            if after != NO_ZSPAGE {
                self.zs(after).prev.store(zid, Relaxed);
            }
            h.next.store(zid, Relaxed);
        } else {
            z.prev.store(NO_ZSPAGE, Relaxed);
            z.next.store(head, Relaxed);
            if head != NO_ZSPAGE {
                self.zs(head).prev.store(zid, Relaxed);
            }
            st.head[fg] = zid;
        }
        st.count[fg] += 1;
        z.fg.store(fg as u8, Relaxed);
    }

    pub(super) fn remove_zspage(&self, st: &mut ClassState, zid: u32) {
        let z = self.zs(zid);
        let fg = z.fg.load(Relaxed) as usize;
        let (prev, next) = (z.prev.load(Relaxed), z.next.load(Relaxed));
        if prev == NO_ZSPAGE {
            st.head[fg] = next;
        } else {
            self.zs(prev).next.store(next, Relaxed);
        }
        if next != NO_ZSPAGE {
            self.zs(next).prev.store(prev, Relaxed);
        }
        st.count[fg] -= 1;
        z.fg.store(FG_NONE, Relaxed);
    }

    /// A fullness list, head (most recently inserted) first.
    fn list_zspages(&self, st: &ClassState, fg: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(st.count[fg] as usize);
        let mut zid = st.head[fg];
        while zid != NO_ZSPAGE {
            out.push(zid);
            zid = self.zs(zid).next.load(Relaxed);
        }
        out
    }

    /// `fix_fullness_group`: move the zspage to the list its inuse calls
    /// for; returns the new group.
    fn fix_fullness_group(&self, cls: &SizeClass, st: &mut ClassState, zid: u32) -> usize {
        let z = self.zs(zid);
        let newfg = cls.fg_of_inuse[z.inuse.load(Relaxed) as usize] as usize;
        if newfg != z.fg.load(Relaxed) as usize {
            self.remove_zspage(st, zid);
            self.insert_zspage(st, zid, newfg);
        }
        newfg
    }

    /// `find_get_zspage`: the head of the fullest group that has room
    /// (legacy: almost full, almost empty, empty).
    fn find_get_zspage(&self, st: &ClassState) -> Option<u32> {
        (ZS_INUSE_RATIO_0..self.zs_full).rev().map(|fg| st.head[fg]).find(|&z| z != NO_ZSPAGE)
    }

    // ------------------------------------------------------------------
    // objects inside a zspage (caller holds the class lock)

    /// The pfn of chain page `k` of a zspage.
    fn chain_page(&self, zid: u32, k: usize) -> u32 {
        let mut pfn = self.zs(zid).first.load(Relaxed);
        for _ in 0..k {
            pfn = self.mem.desc(pfn).next.load(Relaxed);
        }
        pfn
    }

    /// Arena address of object `idx`'s header, the object starting in `pfn`.
    #[inline]
    fn header_addr(cls: &SizeClass, pfn: u32, idx: usize) -> usize {
        ((pfn as usize) << PAGE_SHIFT) + (cls.obj_offset(idx) & (PAGE_SIZE - 1))
    }

    /// `obj_malloc`: pop the zspage's first free slot, tag it with `handle`;
    /// returns the location.
    fn obj_malloc(&self, cls: &SizeClass, zid: u32, handle: u64) -> u64 {
        let z = self.zs(zid);
        let idx = z.freeobj.load(Relaxed) as usize;
        let pfn = self.chain_page(zid, cls.obj_offset(idx) >> PAGE_SHIFT);
        if cls.spec.huge {
            z.freeobj.store(-1, Relaxed);
            z.handle.store(handle | OBJ_ALLOCATED_TAG, Relaxed);
        } else {
            let word = self.mem.word(Self::header_addr(cls, pfn, idx));
            let link = word.load(Relaxed);
            z.freeobj.store(if link == FREE_LIST_END { -1 } else { (link >> OBJ_TAG_BITS) as i32 }, Relaxed);
            word.store(handle | OBJ_ALLOCATED_TAG, Relaxed);
        }
        z.inuse.store(z.inuse.load(Relaxed) + 1, Relaxed);
        obj_to_location(pfn, idx)
    }

    /// `obj_free`: push the slot at the head of its zspage's free list.
    fn obj_free(&self, cls: &SizeClass, zid: u32, obj: u64) {
        let z = self.zs(zid);
        let (pfn, idx) = obj_to_location_parts(obj);
        if cls.spec.huge {
            z.handle.store(0, Relaxed);
        } else {
            let head = z.freeobj.load(Relaxed);
            let link = if head < 0 { FREE_LIST_END } else { (head as u64) << OBJ_TAG_BITS };
            self.mem.word(Self::header_addr(cls, pfn, idx)).store(link, Relaxed);
        }
        z.freeobj.store(idx as i32, Relaxed);
        z.inuse.store(z.inuse.load(Relaxed) - 1, Relaxed);
    }

    /// Arena address of byte `offset` of the caller's data in the object at
    /// `obj`; the bytes run to the end of that page at most.
    fn obj_addr(&self, cls: &SizeClass, obj: u64, offset: usize) -> usize {
        let (pfn, idx) = obj_to_location_parts(obj);
        let off = cls.obj_offset(idx) & (PAGE_SIZE - 1);
        let room = PAGE_SIZE - off - cls.hdr;
        if offset < room {
            ((pfn as usize) << PAGE_SHIFT) + off + cls.hdr + offset
        } else {
            ((self.mem.desc(pfn).next.load(Relaxed) as usize) << PAGE_SHIFT) + offset - room
        }
    }

    /// Fetch the cache lines of the first page of a new object's bytes: the
    /// caller's write follows.
    #[inline]
    fn prefetch_object(&self, cls: &SizeClass, obj: u64, size: usize) {
        let start = self.obj_addr(cls, obj, 0);
        let page_end = (start | (PAGE_SIZE - 1)) + 1;
        self.mem.prefetch_write(start, size.min(page_end - start));
    }

    /// The span of `n` bytes from arena address `start`, across a page boundary.
    fn span_at(&self, start: usize, n: usize) -> Span {
        let page_end = (start | (PAGE_SIZE - 1)) + 1;
        if start + n <= page_end {
            return Span { first: (start, n), second: (0, 0) };
        }
        let rest = (self.mem.desc((start >> PAGE_SHIFT) as u32).next.load(Relaxed) as usize) << PAGE_SHIFT;
        Span { first: (start, page_end - start), second: (rest, start + n - page_end) }
    }

    fn copy_span_out(&self, span: &Span, out: &mut [u8]) {
        let (a, b) = out.split_at_mut(span.first.1);
        self.mem.copy_out(span.first.0, a);
        if span.second.1 > 0 {
            self.mem.copy_out(span.second.0, b);
        }
    }

    fn copy_span_in(&self, span: &Span, data: &[u8]) {
        let (a, b) = data.split_at(span.first.1);
        self.mem.copy_in(span.first.0, a);
        if span.second.1 > 0 {
            self.mem.copy_in(span.second.0, b);
        }
    }

    /// `zs_object_copy`: an object's data between two locations of its class.
    fn zs_object_copy(&self, cls: &SizeClass, dst: u64, src: u64) {
        let n = cls.spec.size - cls.hdr;
        let mut buf = [0u8; PAGE_SIZE];
        let from = self.span_at(self.obj_addr(cls, src, 0), n);
        self.copy_span_out(&from, &mut buf[..n]);
        let to = self.span_at(self.obj_addr(cls, dst, 0), n);
        self.copy_span_in(&to, &buf[..n]);
    }

    // ------------------------------------------------------------------
    // building and destroying zspages

    /// `alloc_zspage`: take the frames and build an empty zspage on them.
    fn alloc_zspage(&self, cls: &SizeClass) -> Result<u32, PoolError> {
        let n = cls.spec.pages_per_zspage;
        {
            let mut c = self.cache.lock();
            if let Some(max) = self.max_pages() {
                if c.pages_allocated + n > max {
                    return Err(PoolError::PoolFull(format!(
                        "pool '{}' would pass max_pages={max} ({} in use, {n} more needed)",
                        self.config.name, c.pages_allocated
                    )));
                }
            }
            c.pages_allocated += n;
            self.pages_total.store(c.pages_allocated, Relaxed);
        }
        let mut pages = [0u32; ZS_MAX_CHAIN_SIZE];
        let mt = if self.config.movable { MigrateType::Movable } else { MigrateType::Unmovable };
        if let Err(e) = self.mem.alloc_pages_mt(&mut pages[..n], mt) {
            let mut c = self.cache.lock();
            c.pages_allocated -= n;
            self.pages_total.store(c.pages_allocated, Relaxed);
            drop(c);
            let msg = format!("no page for a new zspage of class {}: {e}", cls.spec.index);
            return Err(PoolError::NoFrame(msg, e));
        }
        let zid = self.cache_alloc_zspage();
        let z = self.zs(zid);
        z.class.store(cls.spec.index as u16, Relaxed);
        z.inuse.store(0, Relaxed);
        z.freeobj.store(0, Relaxed);
        z.fg.store(FG_NONE, Relaxed);
        z.lock.store(0, Relaxed);
        z.isolated.store(0, Relaxed);
        z.deferred.store(false, Relaxed);
        z.handle.store(0, Relaxed);
        self.create_page_chain(cls, zid, &pages[..n]);
        self.init_zspage(cls, &pages[..n]);
        Ok(zid)
    }

    /// Link the frames into a chain, each with its first object offset.
    pub(super) fn create_page_chain(&self, cls: &SizeClass, zid: u32, pages: &[u32]) {
        self.zs(zid).first.store(pages[0], Relaxed);
        for (k, &pfn) in pages.iter().enumerate() {
            let d = self.mem.desc(pfn);
            d.private.store(zid, Relaxed);
            d.first_obj_offset.store(cls.layout[k].first_obj_offset, Relaxed);
            d.next.store(pages.get(k + 1).copied().unwrap_or(NO_PAGE), Relaxed);
        }
    }

    /// Write the free list into the empty slots: 0 -> 1 -> ... -> N-1 -> end.
    fn init_zspage(&self, cls: &SizeClass, pages: &[u32]) {
        let nobjs = cls.spec.objs_per_zspage;
        for (k, &pfn) in pages.iter().enumerate() {
            let l = cls.layout[k];
            for j in 0..l.count as usize {
                let idx = l.first_idx as usize + j;
                let addr = ((pfn as usize) << PAGE_SHIFT) + l.first_obj_offset as usize + j * cls.spec.size;
                let link = if idx + 1 == nobjs { FREE_LIST_END } else { ((idx + 1) as u64) << OBJ_TAG_BITS };
                self.mem.word(addr).store(link, Relaxed);
            }
        }
    }

    /// The pfns of a zspage's chain, head first.
    pub fn zspage_pages(&self, zid: u32) -> Chain {
        let mut chain = Chain { pages: [0; ZS_MAX_CHAIN_SIZE], len: 0 };
        let mut pfn = self.zs(zid).first.load(Relaxed);
        while pfn != NO_PAGE && chain.len < ZS_MAX_CHAIN_SIZE {
            chain.pages[chain.len] = pfn;
            chain.len += 1;
            pfn = self.mem.desc(pfn).next.load(Relaxed);
        }
        chain
    }

    /// `SetZsPageMovable`: from now on the VM may take the zspage's pages
    /// (unless the pool's pages are not to be migrated).
    fn set_zspage_movable(&self, zid: u32) -> Result<(), PoolError> {
        if !self.config.migratable {
            return Ok(());
        }
        Ok(self.mem.set_pages_movable(self.zspage_pages(zid).as_slice(), self.ops_id)?)
    }

    fn trylock_zspage(&self, zid: u32) -> bool {
        self.mem.trylock_pages(self.zspage_pages(zid).as_slice())
    }

    /// `lock_zspage`: every page lock of the zspage, sleeping, safe against
    /// migration: a page is looked up and trylocked under the pool lock; to
    /// sleep, pin it, drop the pool lock, wait, look again (the 2022 fix).
    fn lock_zspage(&self, zid: u32) -> Result<(), PoolError> {
        let mut guard = self.lock.read();
        let mut pfn = self.zs(zid).first.load(Relaxed);
        while !self.mem.trylock_page(pfn) {
            self.mem.get_page(pfn)?;
            drop(guard);
            let waited = self.mem.wait_on_page_locked(pfn, None);
            self.mem.put_page(pfn)?;
            waited?;
            guard = self.lock.read();
            pfn = self.zs(zid).first.load(Relaxed);
        }
        loop {
            let nxt = self.mem.desc(pfn).next.load(Relaxed);
            if nxt == NO_PAGE {
                break;
            }
            if self.mem.trylock_page(nxt) {
                pfn = nxt;
                continue;
            }
            self.mem.get_page(nxt)?;
            drop(guard);
            let waited = self.mem.wait_on_page_locked(nxt, None);
            self.mem.put_page(nxt)?;
            waited?;
            guard = self.lock.read();
        }
        drop(guard);
        Ok(())
    }

    /// `__free_zspage`: give an empty zspage's frames back; every page lock
    /// is held by the caller and dropped here.
    pub(super) fn __free_zspage(
        &self,
        cls: &SizeClass,
        st: &mut ClassState,
        zid: u32,
    ) -> Result<(), PoolError> {
        let chain = self.zspage_pages(zid);
        let mut keep = [0u32; ZS_MAX_CHAIN_SIZE];
        let mut nkeep = 0;
        if self.config.migration.keeps_isolated_descriptor() {
            for &pfn in chain.as_slice() {
                if self.mem.page_flags(pfn) & PG_ISOLATED != 0 {
                    keep[nkeep] = pfn;
                    nkeep += 1;
                }
            }
        }
        self.mem.unlock_and_free_pages(chain.as_slice(), &keep[..nkeep])?;
        let z = self.zs(zid);
        z.isolated.store(0, Relaxed);
        z.class.store(FREE_CLASS, Relaxed);
        z.first.store(NO_PAGE, Relaxed);
        st.objs_allocated -= cls.spec.objs_per_zspage as u64;
        let mut c = self.cache.lock();
        c.zs_free.push(zid);
        c.pages_allocated -= cls.spec.pages_per_zspage;
        self.pages_total.store(c.pages_allocated, Relaxed);
        Ok(())
    }

    /// An object of an isolated zspage was freed (2016 protocols): the
    /// zspage stays off the lists and the last putback or migrate of its
    /// pages frees it; the broken v3 protocol destroys it here and now,
    /// isolated pages and all.
    fn free_in_isolated_zspage(
        &self,
        cls: &SizeClass,
        st: &mut ClassState,
        zid: u32,
    ) -> Result<(), PoolError> {
        if self.zs(zid).inuse.load(Relaxed) == 0
            && self.config.migration.free_destroys_isolated()
            && self.trylock_zspage(zid)
        {
            return self.__free_zspage(cls, st, zid);
        }
        Ok(())
    }

    /// `free_zspage`: now if every page lock can be had, else deferred.
    pub(super) fn free_zspage(
        &self,
        cls: &SizeClass,
        st: &mut ClassState,
        zid: u32,
    ) -> Result<(), PoolError> {
        if !self.trylock_zspage(zid) {
            self.kick_deferred_free();
            return Ok(());
        }
        self.remove_zspage(st, zid);
        self.__free_zspage(cls, st, zid)
    }

    // ------------------------------------------------------------------
    // the deferred free and the background worker

    /// `schedule_work(&pool->free_work)`.
    pub(super) fn kick_deferred_free(&self) {
        self.schedule_work("free");
    }

    /// Queue background work ("free" or "compact") for the pool's worker
    /// thread, or record it when background work is off.
    fn schedule_work(&self, name: &'static str) {
        let mut w = self.work.lock();
        if !self.config.background_work {
            w.pending.push(name);
            return;
        }
        if name == "free" {
            w.free = true;
        } else {
            w.compact = true;
        }
        if w.running {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        w.running = true;
        let spawned =
            thread::Builder::new().name(format!("zs-work-{}", self.config.name)).spawn(move || me.worker());
        if spawned.is_err() {
            w.running = false; // no thread to be had: flush_deferred and compact still work
        }
    }

    fn worker(&self) {
        loop {
            let (free, compact) = {
                let mut w = self.work.lock();
                if (!w.free && !w.compact) || self.is_closed() {
                    w.running = false;
                    return;
                }
                let r = (w.free, w.compact);
                w.free = false;
                w.compact = false;
                r
            };
            // an error here means a page descriptor was damaged under us; check() reports it
            if free {
                let _ = self.run_work("free");
            }
            if compact {
                let _ = self.run_work("compact");
            }
        }
    }

    fn run_work(&self, name: &str) -> Result<(), PoolError> {
        if name == "free" {
            self.async_free_zspage()?;
        } else if self.shrinker_count() >= self.config.auto_compact_pages.unwrap_or(0) as u64 {
            self.zs_compact()?;
        }
        Ok(())
    }

    /// Whether the background worker (deferred free, auto compaction) is running now.
    pub fn worker_running(&self) -> bool {
        self.work.lock().running
    }

    /// Work asked for and not yet run, with background work off: one entry per request.
    pub fn pending_work(&self) -> Vec<&'static str> {
        self.work.lock().pending.clone()
    }

    /// Run the work `pending_work` lists, in the caller; returns what was run.
    pub fn run_pending_work(&self) -> Result<Vec<&'static str>, PoolError> {
        let work = std::mem::take(&mut self.work.lock().pending);
        let mut seen: Vec<&str> = Vec::new();
        for &name in &work {
            if !seen.contains(&name) {
                seen.push(name);
                self.run_work(name)?;
            }
        }
        Ok(work)
    }

    /// `async_free_zspage`: free every empty zspage left on a group-0 list;
    /// returns how many.  The kernel splices each class's list, from class
    /// 0 up, at the front of its batch: the highest class is freed first
    /// (as `classes` runs), each list from its head.
    pub fn async_free_zspage(&self) -> Result<usize, PoolError> {
        let _one_run = self.deferred_worker.lock();
        let mut taken = Vec::new();
        for cls in &self.classes {
            let mut st = cls.state.lock();
            for zid in self.list_zspages(&st, ZS_INUSE_RATIO_0) {
                self.remove_zspage(&mut st, zid);
                self.zs(zid).deferred.store(true, Relaxed);
                taken.push(zid);
            }
        }
        for &zid in &taken {
            self.lock_zspage(zid)?;
            let cls = self.class_of_zspage(zid);
            let mut st = cls.state.lock();
            self.zs(zid).deferred.store(false, Relaxed);
            self.__free_zspage(cls, &mut st, zid)?;
        }
        self.cache.lock().events.deferred_frees += taken.len() as u64;
        Ok(taken.len())
    }

    /// Run the deferred free now, in the caller, then trim the tables.
    /// It answers every pending request for it (`pending_work`).
    pub fn flush_deferred(&self) -> Result<usize, PoolError> {
        self.check_open()?;
        self.work.lock().pending.retain(|&w| w != "free");
        let freed = self.async_free_zspage()?;
        self.trim();
        Ok(freed)
    }

    // ------------------------------------------------------------------
    // the public API

    /// `zs_malloc`: `size` bytes (1..4096); a handle, never 0.
    pub fn zs_malloc(&self, size: usize) -> Result<u64, PoolError> {
        check_size(size)?;
        self.check_open()?;
        let cls = &self.classes[self.class_for_size[size] as usize];
        let (slot, handle) = {
            let mut st = cls.state.lock();
            // a close that began since check_open has emptied this class or
            // will: under the class lock, no object is made after it
            self.check_open()?;
            let slot = self.cache_alloc_handle()?;
            let e = self.entry(slot as usize);
            // one generation on, wrapping below the tag
            let generation = ((e.obj.load(Relaxed) >> HANDLE_GEN_SHIFT) + 1) & HANDLE_GEN_MASK;
            let handle =
                ((slot as u64) << HANDLE_SLOT_SHIFT) | self.tag_bits() | (generation << HANDLE_GEN_SHIFT);
            if let Some(zid) = self.find_get_zspage(&st) {
                let obj = self.obj_malloc(cls, zid, handle);
                self.fix_fullness_group(cls, &mut st, zid);
                st.objs_inuse += 1;
                // Release: a lookup that reads the entry reads the header too
                e.obj.store(obj | ((size as u64) << SIZE_SHIFT), Release);
                self.prefetch_object(cls, obj, size);
                return Ok(handle);
            }
            (slot, handle)
        };
        self.malloc_new_zspage(cls, handle, slot, size)
    }

    fn malloc_new_zspage(
        &self,
        cls: &SizeClass,
        handle: u64,
        slot: u32,
        size: usize,
    ) -> Result<u64, PoolError> {
        let zid = match self.alloc_zspage(cls) {
            Ok(zid) => zid,
            Err(e) => {
                self.cache_free_handle(slot);
                return Err(if self.is_closed() { self.closed_error() } else { e });
            }
        };
        let mut st = cls.state.lock();
        if self.is_closed() {
            // the pool closed while the frames were taken: they go back
            // (nobody else knows the fresh zspage: its page locks are free;
            // a Memory closed with the pool has nothing left to give back to)
            st.objs_allocated += cls.spec.objs_per_zspage as u64;
            let locked = self.trylock_zspage(zid);
            debug_assert!(locked);
            let _ = self.__free_zspage(cls, &mut st, zid);
            drop(st);
            self.cache_free_handle(slot);
            return Err(self.closed_error());
        }
        let obj = self.obj_malloc(cls, zid, handle);
        self.insert_zspage(&mut st, zid, cls.fg_of_inuse[1] as usize);
        st.objs_allocated += cls.spec.objs_per_zspage as u64;
        st.objs_inuse += 1;
        // Release, as in zs_malloc
        self.entry(slot as usize).obj.store(obj | ((size as u64) << SIZE_SHIFT), Release);
        // only now, fully set up, may the VM see its pages
        self.set_zspage_movable(zid)?;
        Ok(handle)
    }

    /// `zs_free`: the handle becomes invalid.
    pub fn zs_free(&self, handle: u64) -> Result<(), PoolError> {
        let guard = self.lock.read();
        let h_len = self.h_len();
        let slot = (handle >> HANDLE_SLOT_SHIFT) as usize;
        if slot >= h_len {
            return Err(self.bad_handle(handle));
        }
        let e = self.entry(slot);
        let packed = e.obj.load(Relaxed);
        if !entry_is_live(packed) {
            return Err(self.bad_handle(handle));
        }
        let obj = packed & LOC_MASK;
        let (pfn, idx) = obj_to_location_parts(obj);
        let cls = self.class_of(packed);
        // the header that says whose the object is, and that obj_free
        // rewrites, and the page descriptor that names the zspage: their
        // cache lines come in while the class lock is taken
        self.mem.prefetch_write(Self::header_addr(cls, pfn, idx), 8);
        self.mem.prefetch_desc(pfn);
        let mut st = cls.state.lock();
        // a second free of the handle, racing us, waits for this lock and
        // then finds the slot free, or another object's header there
        if !self.still_holds(cls, slot, packed, handle) {
            return Err(self.bad_handle(handle));
        }
        let zid = self.get_zspage(obj);
        // a mapping pins under this lock too: it has, or it will find the slot free
        if self.is_mapped(slot, zid) {
            return Err(PoolError::Mapped(format!(
                "handle {handle} is mapped: free it once the mapping and every view of it are released"
            )));
        }
        e.obj.store(free_entry(handle), Relaxed);
        drop(guard);
        st.objs_inuse -= 1;
        self.obj_free(cls, zid, obj);
        let result = if self.zs(zid).isolated.load(Relaxed) != 0 {
            // 2016 protocols: off the lists while isolated
            self.free_in_isolated_zspage(cls, &mut st, zid)
        } else if self.fix_fullness_group(cls, &mut st, zid) == ZS_INUSE_RATIO_0 {
            self.free_zspage(cls, &mut st, zid)
        } else {
            Ok(())
        };
        self.cache_free_handle(slot as u32);
        drop(st);
        if let Some(threshold) = self.config.auto_compact_pages {
            if self.auto_countdown.fetch_sub(1, Relaxed) <= 1 {
                self.auto_countdown.store(AUTO_COMPACT_INTERVAL, Relaxed);
                if self.shrinker_count() >= threshold as u64 {
                    self.schedule_work("compact");
                }
            }
        }
        result
    }

    /// Locate `length` bytes (default: to the end) of the object from
    /// `offset`, under the pool lock held for reading.
    pub fn zs_obj_read_begin(
        &self,
        handle: u64,
        offset: i64,
        length: Option<i64>,
        op: &str,
    ) -> Result<ObjectRef<'_>, PoolError> {
        let guard = self.lock.read();
        let packed = self.lookup(handle, self.h_len())?.packed;
        let span = self.object_span(handle, packed, offset, length, op)?;
        // the caller allocates the destination (a bytes object) before it
        // copies: the object's cache lines come in meanwhile
        self.mem.prefetch_read(span.first.0, span.first.1);
        self.mem.prefetch_read(span.second.0, span.second.1);
        Ok(ObjectRef { pool: self, _guard: guard, span })
    }

    /// The span of `length` bytes (default: to the end) from `offset` of
    /// the object `packed` describes, or the model's range error.
    fn object_span(
        &self,
        handle: u64,
        packed: u64,
        offset: i64,
        length: Option<i64>,
        op: &str,
    ) -> Result<Span, PoolError> {
        let size = (packed >> SIZE_SHIFT) as usize;
        let length = length.unwrap_or(size as i64 - offset);
        if offset < 0 || length < 0 || offset + length > size as i64 {
            return Err(bad_range(op, handle, offset, length, size));
        }
        if length == 0 {
            // nothing to reach: an offset at the very end of an object may
            // name the page after its last one, which need not exist
            return Ok(Span { first: (0, 0), second: (0, 0) });
        }
        let cls = &self.classes[self.class_for_size[size] as usize];
        let start = self.obj_addr(cls, packed & LOC_MASK, offset as usize);
        Ok(self.span_at(start, length as usize))
    }

    /// `zs_obj_read_begin` .. `zs_obj_read_end` as zram uses them: `f`
    /// gets the whole object's bytes, in place when they lie in one page,
    /// else copied into a local buffer (the kernel's per-CPU copy), with the
    /// pool lock held for reading throughout.
    ///
    /// # Safety
    /// No write to this object may run while `f` does: the caller owns the
    /// handle's writes (zram holds the slot lock).
    pub unsafe fn zs_obj_read_with<R>(
        &self,
        handle: u64,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, PoolError> {
        let _guard = self.lock.read();
        let packed = self.lookup(handle, self.h_len())?.packed;
        let span = self.object_span(handle, packed, 0, None, "read")?;
        Ok(match span.contiguous() {
            // SAFETY: the object's bytes, which nobody writes while f runs
            // (the caller's contract) and nobody moves (the pool lock)
            Some(addr) => f(unsafe { self.mem.bytes(addr, span.len()) }),
            None => {
                let mut buf = [0u8; PAGE_SIZE];
                self.copy_span_out(&span, &mut buf[..span.len()]);
                f(&buf[..span.len()])
            }
        })
    }

    /// `zs_obj_write`: copy `data` into the object at `offset`.
    pub fn zs_obj_write(&self, handle: u64, data: &[u8], offset: i64) -> Result<(), PoolError> {
        let _guard = self.lock.read();
        let packed = self.lookup(handle, self.h_len())?.packed;
        let span = self.object_span(handle, packed, offset, Some(data.len() as i64), "write")?;
        self.copy_span_in(&span, data);
        Ok(())
    }

    /// `zs_map_object`: pin the object (its zspage read-locked, its handle
    /// pinned) and locate its bytes; `unmap_object` ends it.
    pub fn zs_map_object(&self, handle: u64, offset: i64, length: Option<i64>) -> Result<Mapped, PoolError> {
        let _guard = self.lock.read();
        let Found { slot, packed } = self.lookup(handle, self.h_len())?;
        let span = self.object_span(handle, packed, offset, length, "map")?;
        // pinned under the class lock, where zs_free looks for the pin: a
        // free of the handle racing us has freed it (we find the slot free
        // now) or will find the pin
        let cls = self.class_of(packed);
        let _st = cls.state.lock();
        if !self.still_holds(cls, slot, packed, handle) {
            return Err(self.bad_handle(handle));
        }
        let zid = self.get_zspage(packed);
        // writers of the zspage lock hold the pool lock for writing: under
        // our read side it is never write-locked, so this only counts up
        self.zs(zid).lock.fetch_add(1, SeqCst);
        *self.pinned.lock().entry(slot as u32).or_insert(0) += 1;
        Ok(Mapped { zid, slot: slot as u32, span })
    }

    /// Whether slot `slot` still holds `handle`, whose object `packed`
    /// located; caller holds the class lock of that object's class `cls`.
    /// Under that lock the entry and the header hold still: only zs_free
    /// (under it: the object is of this class), zs_malloc (once the slot is
    /// free) and, under the pool lock held for writing, compaction,
    /// migration and close change them.  If the entry changed since
    /// `packed` was read, its object was freed meanwhile (and the slot
    /// perhaps taken again), which refuses the handle as of that read.
    fn still_holds(&self, cls: &SizeClass, slot: usize, packed: u64, handle: u64) -> bool {
        self.entry(slot).obj.load(Relaxed) == packed && head_is(self.obj_to_head(cls, packed), handle)
    }

    /// Whether the object in handle slot `slot`, in zspage `zid`, is mapped
    /// (caller holds its class lock, under which mappings pin).
    fn is_mapped(&self, slot: usize, zid: u32) -> bool {
        // no mapping in the zspage (its read count), no need to look further
        self.zs(zid).lock.load(SeqCst) > 0 && self.pinned.lock().contains_key(&(slot as u32))
    }

    /// Copy a mapped object's bytes out (`len()` of its span).
    pub fn copy_mapped(&self, m: &Mapped, out: &mut [u8]) {
        self.copy_span_out(&m.span, out);
    }

    /// `zs_unmap_object`.
    /// No pool lock: the counts are atomics, and a buffer release may run
    /// it from inside another call of this pool (the GC, during a read).
    pub fn zs_unmap_object(&self, m: Mapped) {
        self.zs(m.zid).lock.fetch_sub(1, Release);
        let mut pinned = self.pinned.lock();
        if let Some(n) = pinned.get_mut(&m.slot) {
            *n -= 1;
            if *n == 0 {
                pinned.remove(&m.slot);
            }
        }
    }

    /// The size `malloc` was asked for.
    pub fn handle_size(&self, handle: u64) -> Result<usize, PoolError> {
        let _guard = self.lock.read();
        Ok((self.lookup(handle, self.h_len())?.packed >> SIZE_SHIFT) as usize)
    }

    /// `obj_to_location` of a live handle: (pfn, obj_idx).
    pub fn locate(&self, handle: u64) -> Result<(u32, usize), PoolError> {
        let _guard = self.lock.read();
        Ok(obj_to_location_parts(self.lookup(handle, self.h_len())?.packed & LOC_MASK))
    }

    /// The pfns of the object's zspage, head first.
    pub fn zspage_pfns(&self, handle: u64) -> Result<Vec<u32>, PoolError> {
        let _guard = self.lock.read();
        let packed = self.lookup(handle, self.h_len())?.packed;
        Ok(self.zspage_pages(self.get_zspage(packed)).as_slice().to_vec())
    }

    /// Live objects.
    pub fn len(&self) -> usize {
        self.classes.iter().map(|c| c.state.lock().objs_inuse as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the callers asked for, over every live handle.
    pub fn bytes_requested(&self) -> u64 {
        let _guard = self.lock.read();
        let h_len = self.h_len();
        (1..h_len)
            .map(|s| self.entry(s))
            .map(|e| e.obj.load(Relaxed))
            .filter(|&obj| entry_is_live(obj))
            .map(|obj| obj >> SIZE_SHIFT)
            .sum()
    }

    // ------------------------------------------------------------------
    // statistics

    /// One row per canonical class, smallest first.
    pub fn class_stats(&self) -> Vec<ClassRow> {
        self.classes
            .iter()
            .rev()
            .map(|cls| {
                let st = cls.state.lock();
                ClassRow {
                    spec: cls.spec,
                    zspages_per_group: st.count,
                    objs_allocated: st.objs_allocated,
                    objs_inuse: st.objs_inuse,
                    freeable: zs_can_compact(&cls.spec, &st),
                    fullness: self.config.fullness,
                }
            })
            .collect()
    }

    /// `zs_shrinker_count`: pages compaction could free now.
    pub fn shrinker_count(&self) -> u64 {
        self.classes.iter().map(|c| zs_can_compact(&c.spec, &c.state.lock())).sum()
    }

    // ------------------------------------------------------------------
    // compaction (zs_compact)

    /// The head of the first non-empty list of `groups`, off its list.
    fn take_zspage(&self, st: &mut ClassState, groups: &[usize]) -> Option<u32> {
        let zid = groups.iter().map(|&fg| st.head[fg]).find(|&z| z != NO_ZSPAGE)?;
        self.remove_zspage(st, zid);
        Some(zid)
    }

    /// `isolate_src_zspage`: the emptiest partial zspage.
    fn isolate_src_zspage(&self, st: &mut ClassState) -> Option<u32> {
        self.take_zspage(st, &RATIO_ASCENDING)
    }

    /// `isolate_dst_zspage`: the fullest partial zspage.
    fn isolate_dst_zspage(&self, st: &mut ClassState) -> Option<u32> {
        self.take_zspage(st, &RATIO_DESCENDING)
    }

    /// `putback_zspage`: onto the list its inuse calls for; returns that group.
    pub(super) fn putback_zspage(&self, cls: &SizeClass, st: &mut ClassState, zid: u32) -> usize {
        let fg = cls.fg_of_inuse[self.zs(zid).inuse.load(Relaxed) as usize] as usize;
        self.insert_zspage(st, zid, fg);
        fg
    }

    /// `zs_can_compact` (caller holds the class lock).
    pub(super) fn zs_can_compact(&self, cls: &SizeClass, st: &ClassState) -> u64 {
        zs_can_compact(&cls.spec, st)
    }

    pub(super) fn zspage_write_trylock(&self, zid: u32) -> bool {
        self.zs(zid).lock.compare_exchange(0, -1, Acquire, Relaxed).is_ok()
    }

    pub(super) fn zspage_write_unlock(&self, zid: u32) {
        self.zs(zid).lock.store(0, Release);
    }

    /// (handle slot, object index) of every allocated object that starts in
    /// `pfn`, the `k`-th page of its zspage.
    pub(super) fn objs_in_page(
        &self,
        cls: &SizeClass,
        k: usize,
        pfn: u32,
        out: &mut [(u32, u16); MAX_OBJS_PER_PAGE],
    ) -> usize {
        if cls.spec.huge {
            let tag = self.zs(self.mem.desc(pfn).private.load(Relaxed)).handle.load(Relaxed);
            if tag & OBJ_ALLOCATED_TAG != 0 {
                out[0] = ((tag >> HANDLE_SLOT_SHIFT) as u32, 0);
                return 1;
            }
            return 0;
        }
        let size = cls.spec.size;
        let first = (k * PAGE_SIZE).div_ceil(size);
        let last = cls.spec.objs_per_zspage.min(((k + 1) * PAGE_SIZE).div_ceil(size));
        let mut n = 0;
        for idx in first..last {
            let header = self.mem.word(Self::header_addr(cls, pfn, idx)).load(Relaxed);
            if header & OBJ_ALLOCATED_TAG != 0 {
                out[n] = ((header >> HANDLE_SLOT_SHIFT) as u32, idx as u16);
                n += 1;
            }
        }
        n
    }

    /// Move the object of handle slot `slot` from src into dst: the step of
    /// either `migrate_zspage`.
    pub(super) fn migrate_obj(&self, cls: &SizeClass, src: u32, dst: u32, slot: u32) {
        let e = self.entry(slot as usize);
        let packed = e.obj.load(Relaxed);
        let old = packed & LOC_MASK;
        let handle = self.obj_to_head(cls, old) & !OBJ_ALLOCATED_TAG;
        let new = self.obj_malloc(cls, dst, handle);
        self.zs_object_copy(cls, new, old);
        self.obj_free(cls, src, old);
        e.obj.store(new | (packed & !LOC_MASK), Relaxed);
    }

    /// The handle slot of each allocated object of zspage `zid`, in index
    /// order (`find_alloced_obj` page by page), to `f` until it returns false.
    pub(super) fn for_each_obj(&self, cls: &SizeClass, zid: u32, mut f: impl FnMut(u32) -> bool) {
        let mut objs = [(0u32, 0u16); MAX_OBJS_PER_PAGE];
        let chain = self.zspage_pages(zid);
        for (k, &page) in chain.as_slice().iter().enumerate() {
            let count = self.objs_in_page(cls, k, page, &mut objs);
            for &(slot, _) in &objs[..count] {
                if !f(slot) {
                    return;
                }
            }
        }
    }

    /// `migrate_zspage`: move src's objects into dst until dst is full or
    /// src empty; returns how many moved.
    fn migrate_zspage(&self, cls: &SizeClass, src: u32, dst: u32) -> u64 {
        let n = cls.spec.objs_per_zspage as u16;
        let mut moved = 0;
        self.for_each_obj(cls, src, |slot| {
            self.migrate_obj(cls, src, dst, slot);
            moved += 1;
            self.zs(dst).inuse.load(Relaxed) != n && self.zs(src).inuse.load(Relaxed) != 0
        });
        moved
    }

    /// Compact one class as 6.4 does; (pages freed, objects moved).
    fn __zs_compact(&self, cls: &SizeClass) -> Result<(u64, u64), PoolError> {
        let _guard = self.lock.write();
        let mut st = cls.state.lock();
        let (mut freed, mut moved) = (0, 0);
        let mut dst: Option<u32> = None;
        let mut src: Option<u32> = None;
        while zs_can_compact(&cls.spec, &st) > 0 {
            let d = match dst {
                Some(d) => d,
                None => match self.isolate_dst_zspage(&mut st) {
                    Some(d) => {
                        dst = Some(d);
                        d
                    }
                    None => break,
                },
            };
            let Some(s) = self.isolate_src_zspage(&mut st) else {
                break;
            };
            src = Some(s);
            if !self.zspage_write_trylock(s) {
                break;
            }
            moved += self.migrate_zspage(cls, s, d);
            self.zspage_write_unlock(s);
            if self.putback_zspage(cls, &mut st, s) == ZS_INUSE_RATIO_0 {
                self.free_zspage(cls, &mut st, s)?;
                freed += cls.spec.pages_per_zspage as u64;
            }
            src = None;
            if self.zs(d).inuse.load(Relaxed) as usize == cls.spec.objs_per_zspage {
                self.putback_zspage(cls, &mut st, d);
                dst = None;
            }
        }
        if let Some(s) = src {
            self.putback_zspage(cls, &mut st, s);
        }
        if let Some(d) = dst {
            self.putback_zspage(cls, &mut st, d);
        }
        Ok((freed, moved))
    }

    /// `zs_compact`: every canonical class, largest first, as the pool's
    /// grouping compacts; pages freed.
    pub fn zs_compact(&self) -> Result<u64, PoolError> {
        let (mut freed, mut moved) = (0, 0);
        let mut result = Ok(());
        for cls in &self.classes {
            let compacted = match self.config.fullness {
                Fullness::Ratio => self.__zs_compact(cls),
                Fullness::Legacy => legacy::__zs_compact(self, cls),
            };
            match compacted {
                Ok((f, m)) => {
                    freed += f;
                    moved += m;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let mut c = self.cache.lock();
        c.events.pages_compacted += freed;
        c.events.objs_compacted += moved;
        c.events.compactions += 1;
        result.map(|()| freed)
    }

    // ------------------------------------------------------------------
    // trimming the tables, life cycle

    /// Give back the table space of free handle slots and zspage ids at the
    /// top of their tables.  Stops the world (pool lock, every class lock,
    /// the cache lock).  Returns whether anything was given back.
    pub fn trim(&self) -> bool {
        let _guard = self.lock.write();
        let _states: Vec<MutexGuard<'_, ClassState>> = self.classes.iter().map(|c| c.state.lock()).collect();
        let mut c = self.cache.lock();
        let trimmed = self.trim_handles(&mut c) + self.trim_zspages(&mut c);
        if trimmed > 0 {
            trim_process_heap();
        }
        trimmed > 0
    }

    fn trim_handles(&self, c: &mut Cache) -> usize {
        let old = self.h_len();
        let keep = top_free_run(&c.h_free, old);
        if old - keep < TRIM_MIN {
            return 0;
        }
        let top = (keep..old)
            .map(|s| (self.entry(s).obj.load(Relaxed) >> HANDLE_GEN_SHIFT) & HANDLE_GEN_MASK)
            .max()
            .unwrap_or(0);
        c.gen_base = c.gen_base.max(top);
        self.h_len.store(keep, Release);
        c.h_free.retain(|&s| (s as usize) < keep);
        c.h_free.shrink_to_fit();
        self.handles.release_from(keep);
        old - keep
    }

    fn trim_zspages(&self, c: &mut Cache) -> usize {
        let old = c.zs_len;
        let keep = top_free_run(&c.zs_free, old);
        if old - keep < TRIM_MIN {
            return 0;
        }
        c.zs_len = keep;
        c.zs_free.retain(|&z| (z as usize) < keep);
        c.zs_free.shrink_to_fit();
        self.zspages.release_from(keep);
        old - keep
    }

    /// Free every page of the pool; handles become invalid.
    pub fn close(&self) -> Result<(), PoolError> {
        if self.is_closed() {
            return Ok(());
        }
        self.flush_deferred()?;
        {
            let _guard = self.lock.write();
            self.closed.store(true, Release);
            // every class lock: a malloc either made its handle live before
            // (and it is freed here) or finds the pool closed under its lock
            let mut states: Vec<MutexGuard<'_, ClassState>> =
                self.classes.iter().map(|c| c.state.lock()).collect();
            // every handle invalid, its generation kept: read from its
            // object's header, before the frames go
            for s in 1..self.h_len() {
                let e = self.entry(s);
                let packed = e.obj.load(Relaxed);
                if entry_is_live(packed) {
                    e.obj.store(free_entry(self.obj_to_head(self.class_of(packed), packed)), Relaxed);
                }
            }
            for (cls, st) in self.classes.iter().zip(states.iter_mut()) {
                for fg in 0..NR_FULLNESS_GROUPS {
                    let mut zids = self.list_zspages(st, fg);
                    zids.reverse();
                    for zid in zids {
                        self.remove_zspage(st, zid);
                        if !self.trylock_zspage(zid) {
                            return Err(PoolError::Mm(MmError::PageState(format!(
                                "zspage {zid} has a page locked while its pool closes"
                            ))));
                        }
                        self.__free_zspage(cls, st, zid)?;
                    }
                }
                st.objs_inuse = 0;
            }
        }
        if self.ops_id != 0 {
            self.mem.unregister_movable_ops(self.ops_id);
        }
        if self.own_memory {
            self.mem.close();
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // introspection (zsmalloc.debug)

    /// Everything `zsmalloc.debug.snapshot` reports, under every lock.
    pub fn snapshot(&self) -> Snapshot {
        let _guard = self.lock.write();
        let states: Vec<MutexGuard<'_, ClassState>> = self.classes.iter().map(|c| c.state.lock()).collect();
        let c = self.cache.lock();
        let hold = self.mem.hold();
        let classes = states
            .iter()
            .map(|st| {
                (
                    st.objs_allocated,
                    st.objs_inuse,
                    (0..NR_FULLNESS_GROUPS).map(|fg| self.list_zspages(st, fg)).collect(),
                )
            })
            .collect();
        let mut zspages = Vec::new();
        // the page->index the model keeps in a huge zspage's page descriptor
        let mut huge_heads = HashMap::new();
        for zid in 0..c.zs_len as u32 {
            let z = self.zs(zid);
            let class = z.class.load(Relaxed);
            if class == FREE_CLASS {
                continue;
            }
            let cls = &self.classes[self.class_pos[class as usize] as usize];
            let mut pages = Vec::new();
            let mut pfn = z.first.load(Relaxed);
            while pfn != NO_PAGE && pages.len() <= cls.spec.pages_per_zspage && (pfn as usize) < hold.hwm() {
                pages.push(pfn as i64);
                pfn = self.mem.desc(pfn).next.load(Relaxed);
            }
            let headers = if cls.spec.huge || pages.len() != cls.spec.pages_per_zspage {
                Vec::new()
            } else {
                (0..cls.spec.objs_per_zspage)
                    .map(|idx| {
                        let off = cls.obj_offset(idx);
                        let pfn = pages[off >> PAGE_SHIFT] as usize;
                        self.mem.word((pfn << PAGE_SHIFT) + (off & (PAGE_SIZE - 1))).load(Relaxed)
                    })
                    .collect()
            };
            if let (true, Some(&first)) = (cls.spec.huge, pages.first()) {
                huge_heads.insert(first as u32, z.handle.load(Relaxed));
            }
            let fg = z.fg.load(Relaxed);
            zspages.push(ZsPageSnap {
                zid,
                class: class as usize,
                inuse: z.inuse.load(Relaxed) as usize,
                freeobj: z.freeobj.load(Relaxed) as i64,
                fg: if fg == FG_NONE { -1 } else { fg as i64 },
                lock: z.lock.load(Relaxed) as i64,
                isolated: z.isolated.load(Relaxed) as i64,
                deferred: z.deferred.load(Relaxed),
                pages,
                headers,
            });
        }
        let handles = (1..self.h_len())
            .filter_map(|s| {
                let packed = self.entry(s).obj.load(Relaxed);
                entry_is_live(packed).then(|| {
                    let (pfn, idx) = obj_to_location_parts(packed & LOC_MASK);
                    let handle = self.obj_to_head(self.class_of(packed), packed) & !OBJ_ALLOCATED_TAG;
                    (s as u32, handle, pfn, idx as u32, (packed >> SIZE_SHIFT) as u32)
                })
            })
            .collect();
        let mut pinned: Vec<(u32, u32)> = self.pinned.lock().iter().map(|(&s, &n)| (s, n)).collect();
        pinned.sort_unstable();
        let pages = (0..hold.hwm() as u32)
            .filter_map(|pfn| {
                let d = self.mem.desc(pfn);
                let refcount = d.refcount.load(Relaxed);
                (refcount > 0).then(|| {
                    let next = d.next.load(Relaxed);
                    PageSnap {
                        pfn,
                        flags: d.flags.load(Relaxed),
                        refcount,
                        movable_ops: d.movable_ops.load(Relaxed),
                        private: d.private.load(Relaxed),
                        index: huge_heads.get(&pfn).copied().unwrap_or(0),
                        next: if next == NO_PAGE { -1 } else { next as i64 },
                        first_obj_offset: d.first_obj_offset.load(Relaxed),
                    }
                })
            })
            .collect();
        Snapshot {
            pages_allocated: c.pages_allocated,
            events: c.events,
            classes,
            zspages,
            free_zspage_ids: c.zs_free.clone(),
            nr_zspage_ids: c.zs_len,
            handles,
            free_handle_slots: c.h_free.clone(),
            nr_handle_slots: self.h_len(),
            pinned,
            pages,
            hwm: hold.hwm(),
            nr_used: hold.nr_used(),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.is_closed() {
            // the last reference went without close(): give the frames back
            // so that a shared Memory does not leak them
            let _ = self.close();
        }
    }
}

const RATIO_ASCENDING: [usize; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
const RATIO_DESCENDING: [usize; 10] = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1];

#[inline]
fn check_size(size: usize) -> Result<(), PoolError> {
    if size == 0 || size > ZS_MAX_ALLOC_SIZE {
        return Err(PoolError::InvalidSize(format!(
            "size must be within 1..{ZS_MAX_ALLOC_SIZE}, not {size}"
        )));
    }
    Ok(())
}

/// `location_to_obj`.
#[inline]
fn obj_to_location(pfn: u32, idx: usize) -> u64 {
    ((pfn as u64) << OBJ_INDEX_BITS) | idx as u64
}

/// `obj_to_location`: (pfn, obj_idx).
#[inline]
fn obj_to_location_parts(obj: u64) -> (u32, usize) {
    ((obj >> OBJ_INDEX_BITS) as u32, (obj & OBJ_INDEX_MASK) as usize)
}

fn bad_range(op: &str, handle: u64, offset: i64, length: i64, size: usize) -> PoolError {
    PoolError::Value(format!(
        "{op} of {length} bytes at offset {offset} is outside the {size} bytes allocated for handle {handle:#x}"
    ))
}

/// Where the run of free entries at the top of a table of `n` begins (not below TABLE_MIN).
fn top_free_run(free: &[u32], n: usize) -> usize {
    let mut mark = vec![false; n];
    for &i in free {
        mark[i as usize] = true;
    }
    let mut keep = n;
    while keep > TABLE_MIN && mark[keep - 1] {
        keep -= 1;
    }
    keep
}

/// glibc's `malloc_trim(0)`: the C heap's free memory back to the OS.
// the unit tests run real threads on std's atomics: not under loom (tests/loom.rs)
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::compaction::CompactStatus;

    fn pool() -> Arc<Pool> {
        let config = PoolConfig {
            name: "t".into(),
            chain_size: 8,
            class_rule: ClassRule::MinWaste,
            fullness: Fullness::Ratio,
            max_pages: None,
            auto_compact_pages: None,
            migration: Protocol::Mainline,
            background_work: true,
            handle_tag: 0,
            movable: true,
            migratable: true,
        };
        let mem = Arc::new(
            Memory::new(1 << 16, crate::mm::memory::PCP_HIGH, crate::mm::memory::PCP_BATCH).unwrap(),
        );
        Pool::new(config, mem, true).unwrap()
    }

    fn read(p: &Pool, h: u64) -> Vec<u8> {
        let r = p.zs_obj_read_begin(h, 0, None, "read").unwrap();
        let mut out = vec![0; r.len()];
        r.copy_to(&mut out);
        out
    }

    #[test]
    fn on_a_zone_only_a_movable_pool_moves() {
        use crate::mm::migrate::MigrateMode;
        use crate::mm::zone::{PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER};
        for movable in [true, false] {
            let mem = Arc::new(Memory::new_zoned(8 * PAGEBLOCK_NR_PAGES).unwrap());
            let config = PoolConfig {
                background_work: false,
                movable,
                migratable: movable,
                ..PoolConfig::new("zoned")
            };
            let p = Pool::new(config, mem.clone(), true).unwrap();
            // the pool's pages interleaved with other movable pages that
            // fill the zone, then those pages freed
            let (mut live, mut others) = (Vec::new(), Vec::new());
            'fill: loop {
                for _ in 0..6 {
                    let Ok(h) = p.zs_malloc(700) else { break 'fill };
                    let tag = (live.len() % 251) as u8;
                    p.zs_obj_write(h, &[tag; 700], 0).unwrap();
                    live.push((h, tag));
                }
                match mem.alloc_block(0, MigrateType::Movable, mem.with_zone(|z| z.watermarks().low).unwrap())
                {
                    Ok(pfn) => others.push(pfn),
                    Err(_) => break,
                }
            }
            for pfn in others {
                mem.put_page(pfn).unwrap();
            }
            let (blocks, free_9) =
                mem.with_zone(|z| (z.pageblock_counts(), z.contig_page_info(PAGEBLOCK_ORDER))).unwrap();
            let r = mem.compact_zone(PAGEBLOCK_ORDER, MigrateType::Movable, MigrateMode::Sync).unwrap();
            mem.with_zone(|z| z.check().unwrap());
            if movable {
                // spread over every pageblock: compaction moves them out of one
                assert_eq!(blocks[0], 0);
                assert_eq!(free_9.free_blocks_suitable, 0);
                assert_eq!(r.status, CompactStatus::Success, "{r:?}");
                assert!(r.migrate.succeeded > 0);
            } else {
                // unmovable pages claim pageblocks of their own and never move
                assert!(blocks[0] > 0);
                assert_eq!(r.migrate.succeeded, 0);
            }
            for (h, tag) in &live {
                assert_eq!(read(&p, *h), vec![*tag; 700]);
            }
        }
    }

    #[test]
    fn round_trip_every_size() {
        let p = pool();
        let mut live = Vec::new();
        for size in (1..=4096).step_by(37) {
            let h = p.zs_malloc(size).unwrap();
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
            p.zs_obj_write(h, &data, 0).unwrap();
            live.push((h, data));
        }
        for (h, data) in &live {
            assert_eq!(&read(&p, *h), data);
        }
        for (h, _) in &live {
            p.zs_free(*h).unwrap();
        }
        assert_eq!(p.total_pages(), 0);
        assert!(p.zs_free(live[0].0).is_err());
    }

    #[test]
    fn stale_handle_is_refused() {
        let p = pool();
        let h = p.zs_malloc(100).unwrap();
        p.zs_free(h).unwrap();
        let h2 = p.zs_malloc(100).unwrap();
        assert_eq!(h2 >> HANDLE_SLOT_SHIFT, h >> HANDLE_SLOT_SHIFT);
        assert_ne!(h2, h);
        assert!(matches!(p.zs_free(h), Err(PoolError::InvalidHandle(_))));
        assert!(matches!(p.zs_free(0), Err(PoolError::InvalidHandle(_))));
        assert!(matches!(p.zs_free(u64::MAX), Err(PoolError::InvalidHandle(_))));
    }

    #[test]
    fn compaction_frees_pages_and_keeps_bytes() {
        let p = pool();
        let hs: Vec<u64> = (0..2000)
            .map(|i| {
                let h = p.zs_malloc(200).unwrap();
                p.zs_obj_write(h, &[(i % 251) as u8; 200], 0).unwrap();
                h
            })
            .collect();
        for h in hs.iter().step_by(2) {
            p.zs_free(*h).unwrap();
        }
        let before = p.total_pages();
        let freed = p.zs_compact().unwrap();
        assert!(freed > 0);
        assert_eq!(p.total_pages(), before - freed as usize);
        for (i, h) in hs.iter().enumerate().skip(1).step_by(2) {
            assert_eq!(read(&p, *h), vec![(i % 251) as u8; 200]);
        }
    }

    #[test]
    fn threads_churn_without_loss() {
        let p = pool();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut live: Vec<(u64, u8)> = Vec::new();
                    for i in 0..20_000usize {
                        if live.len() > 300 || (i % 3 == 0 && !live.is_empty()) {
                            let (h, b) = live.swap_remove(i % live.len());
                            assert_eq!(read(&p, h), vec![b; 1 + (b as usize * 13) % 3000]);
                            p.zs_free(h).unwrap();
                        } else {
                            let b = ((i * 31 + t) % 256) as u8;
                            let size = 1 + (b as usize * 13) % 3000;
                            let h = p.zs_malloc(size).unwrap();
                            p.zs_obj_write(h, &vec![b; size], 0).unwrap();
                            live.push((h, b));
                        }
                    }
                    for (h, _) in live {
                        p.zs_free(h).unwrap();
                    }
                })
            })
            .collect();
        let compactor = {
            let p = p.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    p.zs_compact().unwrap();
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        for t in threads {
            t.join().unwrap();
        }
        compactor.join().unwrap();
        p.async_free_zspage().unwrap();
        assert_eq!(p.len(), 0);
        assert_eq!(p.total_pages(), 0);
    }
}
