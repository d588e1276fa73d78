//! The zram device (drivers/block/zram/zram_drv.c) on a pool: the slot
//! table, the write and read paths, discard, writeback, recompression, idle
//! marking and the statistics.  The model's counterpart, function for
//! function, is `zsmalloc/zram/device.py`; the layout and the paths are
//! drawn in this module's parent (`zram/mod.rs`).

use std::path::PathBuf;

use super::backing::BackingFile;
use super::codec::{Codec, CodecSpec, COMPRESS_BOUND, PAGE_SIZE};
use crate::mm::table::{Table, Zeroable};
use crate::pool::{Pool, PoolError};
use crate::sync::{thread, Arc, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering::*};

const PAGE_SHIFT: u32 = 12;

// the slot's flags word (enum zram_pageflags), numbered as the model's
pub const ZRAM_SAME: u32 = 1 << 0;
pub const ZRAM_WB: u32 = 1 << 1;
pub const ZRAM_HUGE: u32 = 1 << 2;
pub const ZRAM_IDLE: u32 = 1 << 3;
pub const ZRAM_INCOMPRESSIBLE: u32 = 1 << 4;
pub const ZRAM_COMP_PRIORITY_SHIFT: u32 = 5;
pub const ZRAM_COMP_PRIORITY_MASK: u32 = 3 << ZRAM_COMP_PRIORITY_SHIFT;
/// the slot lock (ZRAM_LOCK)
const ZRAM_LOCK: u32 = 1 << 7;
/// spins on a held slot lock before its waiter yields (under loom, none:
/// the model must see every wait as a yield)
#[cfg(not(loom))]
const SLOT_LOCK_SPINS: u32 = 64;
#[cfg(loom)]
const SLOT_LOCK_SPINS: u32 = 0;
/// the stored object's size, above the flags (the kernel keeps it below them)
const SIZE_SHIFT: u32 = 16;
const FLAG_MASK: u32 = (1 << SIZE_SHIFT) - 1 - ZRAM_LOCK;
/// the primary algorithm and up to three for recompression
pub const ZRAM_MAX_COMPS: usize = 4;

/// One slot (struct zram_table_entry): 16 bytes.
#[derive(Default)]
pub struct Slot {
    /// a pool handle, the fill word (SAME) or the backing block (WB)
    handle: AtomicU64,
    /// flags, the lock bit, and the object's size above them
    flags: AtomicU32,
}

// SAFETY: atomics only; zero is an empty slot.
unsafe impl Zeroable for Slot {}

/// The errors of device calls; each leaves the device as it was, but for
/// the pages a multi-page call had already done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZramError {
    /// outside the device, or a buffer of the wrong length (invalid_io)
    Invalid(String),
    /// mem_limit reached or no frame (failed_writes)
    Full(String),
    /// stored data that does not decompress, or backing-file I/O (failed_reads)
    Io(String),
    /// writeback without a backing file
    NoBackingDevice(String),
    /// a bad argument
    Value(String),
    /// a call the device is not set up for (recompress without a second algorithm)
    Unsupported(String),
    /// the pool is closed
    Closed(String),
    /// the slot table, the counters and the pool disagree (`check`)
    Corrupt(String),
    /// the backing file could not be opened: its errno
    Os(i32, String),
    Pool(PoolError),
}

impl ZramError {
    /// The errno a block device reports for it.
    pub fn errno(&self) -> i32 {
        match self {
            ZramError::Invalid(_) | ZramError::Value(_) => libc::EINVAL,
            ZramError::Full(_) => libc::ENOSPC,
            ZramError::Io(_) | ZramError::Pool(_) | ZramError::Corrupt(_) => libc::EIO,
            ZramError::NoBackingDevice(_) => libc::ENODEV,
            ZramError::Os(errno, _) => *errno,
            ZramError::Unsupported(_) => libc::EOPNOTSUPP,
            ZramError::Closed(_) => libc::ESHUTDOWN,
        }
    }
}

impl std::fmt::Display for ZramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZramError::Invalid(m)
            | ZramError::Full(m)
            | ZramError::Io(m)
            | ZramError::NoBackingDevice(m)
            | ZramError::Value(m)
            | ZramError::Unsupported(m)
            | ZramError::Corrupt(m)
            | ZramError::Os(_, m)
            | ZramError::Closed(m) => f.write_str(m),
            ZramError::Pool(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ZramError {}

impl From<PoolError> for ZramError {
    fn from(e: PoolError) -> ZramError {
        match e {
            PoolError::PoolClosed(m) => ZramError::Closed(m),
            e => ZramError::Pool(e),
        }
    }
}

/// What a device is made with.
#[derive(Clone, Debug)]
pub struct ZramConfig {
    pub name: String,
    /// bytes, rounded up to whole pages
    pub disksize: u64,
    /// priority 0
    pub algorithm: CodecSpec,
    /// priorities 1.. (at most three)
    pub recompress: Vec<CodecSpec>,
    /// bytes, 0 for none: the pool's max_pages
    pub mem_limit: u64,
    pub backing_file: Option<PathBuf>,
    /// default: as many blocks as the device has pages
    pub backing_blocks: Option<u64>,
}

impl ZramConfig {
    /// `disksize` bytes, lz4, no limit, no backing file.
    pub fn new(disksize: u64) -> ZramConfig {
        ZramConfig {
            name: "zram0".into(),
            disksize,
            algorithm: CodecSpec::new(super::Algorithm::Lz4),
            recompress: Vec::new(),
            mem_limit: 0,
            backing_file: None,
            backing_blocks: None,
        }
    }
}

/// What a slot holds, as block status sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// never written, or discarded: reads as zeros
    Empty,
    /// one 8-byte word repeated
    Same(u64),
    Stored,
    WrittenBack,
}

/// One slot, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotView {
    pub flags: u32,
    pub handle: u64,
    pub size: usize,
}

/// `mm_stat`: sizes in bytes but for the page counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmStat {
    pub orig_data_size: u64,
    pub compr_data_size: u64,
    pub mem_used_total: u64,
    pub mem_limit: u64,
    pub mem_used_max: u64,
    pub same_pages: u64,
    pub pages_compacted: u64,
    pub huge_pages: u64,
    pub huge_pages_since: u64,
}

/// `io_stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStat {
    pub failed_reads: u64,
    pub failed_writes: u64,
    pub invalid_io: u64,
    pub notify_free: u64,
}

/// `bd_stat`, in 4 KiB units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BdStat {
    pub bd_count: u64,
    pub bd_reads: u64,
    pub bd_writes: u64,
}

/// What `recompress` did, cumulative (ours: the kernel keeps no such file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecompStat {
    pub attempted: u64,
    pub recompressed: u64,
    pub failed: u64,
    pub incompressible: u64,
    pub huge_recompressed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// One line of `%8llu` fields, as the kernel's *_stat_show print them.
fn stat_line(fields: &[u64]) -> String {
    let cols: Vec<String> = fields.iter().map(|v| format!("{v:>8}")).collect();
    cols.join(" ") + "\n"
}

impl MmStat {
    pub fn format(&self) -> String {
        stat_line(&[
            self.orig_data_size,
            self.compr_data_size,
            self.mem_used_total,
            self.mem_limit,
            self.mem_used_max,
            self.same_pages,
            self.pages_compacted,
            self.huge_pages,
            self.huge_pages_since,
        ])
    }
}

impl IoStat {
    pub fn format(&self) -> String {
        stat_line(&[self.failed_reads, self.failed_writes, self.invalid_io, self.notify_free])
    }
}

impl BdStat {
    pub fn format(&self) -> String {
        stat_line(&[self.bd_count, self.bd_reads, self.bd_writes])
    }
}

/// The counters of `struct zram_stats`.
#[derive(Default)]
struct Stats {
    pages_stored: AtomicU64,
    compr_data_size: AtomicU64,
    same_pages: AtomicU64,
    huge_pages: AtomicU64,
    huge_pages_since: AtomicU64,
    notify_free: AtomicU64,
    failed_reads: AtomicU64,
    failed_writes: AtomicU64,
    invalid_io: AtomicU64,
    bd_reads: AtomicU64,
    bd_writes: AtomicU64,
    max_used_pages: AtomicUsize,
}

/// Changes to the shared counters, gathered over a call and added once at
/// its end (a batch of pages touches the shared cache lines once).
#[derive(Default)]
struct Delta {
    stored: i64,
    compr: i64,
    same: i64,
    huge: i64,
    huge_since: u64,
    notify_free: u64,
}

/// A locked slot: the lock bit is ours until this drops.
struct SlotGuard<'a> {
    slot: &'a Slot,
}

impl SlotGuard<'_> {
    fn flags(&self) -> u32 {
        self.slot.flags.load(Relaxed) & FLAG_MASK
    }
    fn size(&self) -> usize {
        (self.slot.flags.load(Relaxed) >> SIZE_SHIFT) as usize
    }
    fn handle(&self) -> u64 {
        self.slot.handle.load(Relaxed)
    }
    fn set(&self, handle: u64, size: usize, flags: u32) {
        self.slot.handle.store(handle, Relaxed);
        self.slot.flags.store(((size as u32) << SIZE_SHIFT) | flags | ZRAM_LOCK, Relaxed);
    }
    fn set_flags(&self, flags: u32) {
        self.set(self.handle(), self.size(), flags);
    }
    fn is_empty(&self) -> bool {
        self.flags() == 0 && self.handle() == 0
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.slot.flags.fetch_and(!ZRAM_LOCK, Release);
    }
}

/// A page made ready for its slot before the slot lock is taken.
enum Prepared {
    Same(u64),
    Stored { handle: u64, size: usize, flags: u32 },
}

/// `page_same_filled`: the 8-byte word the page repeats, if it does.
fn page_same_filled(page: &[u8]) -> Option<u64> {
    let word = u64::from_ne_bytes(page[..8].try_into().expect("a page"));
    // the last word first, which rejects most pages; then every byte equals
    // the one 8 bytes on (a shifted compare of the page with itself)
    (page[PAGE_SIZE - 8..] == page[..8] && page[..PAGE_SIZE - 8] == page[8..]).then_some(word)
}

fn fill_word(out: &mut [u8], word: u64) {
    for chunk in out.chunks_exact_mut(8) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
}

/// The writeback modes (`writeback_store`) and the flags each needs.
fn writeback_mode(mode: &str) -> Result<u32, ZramError> {
    Ok(match mode {
        "idle" => ZRAM_IDLE,
        "huge" => ZRAM_HUGE,
        "huge_idle" => ZRAM_HUGE | ZRAM_IDLE,
        "incompressible" => ZRAM_INCOMPRESSIBLE,
        "all" => 0,
        _ => {
            return Err(ZramError::Value(format!(
                "writeback mode must be one of ['all', 'huge', 'huge_idle', 'idle', 'incompressible'], not {mode:?}"
            )))
        }
    })
}

pub struct Zram {
    pub name: String,
    pool: Arc<Pool>,
    disksize: u64,
    nr_pages: usize,
    table: Table<Slot>,
    /// by priority: 0 the primary algorithm
    comps: Vec<Codec>,
    huge_class_size: usize,
    limit_pages: AtomicUsize,
    backing: Option<BackingFile>,
    stats: Stats,
    /// pages_compacted of the pool when the device was set up or reset
    compacted_base: AtomicU64,
    /// post-processing (writeback, recompress, reset) one at a time, and
    /// recompression's counters (`pp_in_progress`)
    pp: Mutex<RecompStat>,
    closed: AtomicBool,
}

impl Zram {
    /// A device of `config` on `pool`, which it shares with whoever else holds it.
    pub fn new(pool: Arc<Pool>, config: ZramConfig) -> Result<Zram, ZramError> {
        if config.disksize == 0 {
            return Err(ZramError::Value("disksize must be positive, not 0".into()));
        }
        if config.recompress.len() >= ZRAM_MAX_COMPS {
            return Err(ZramError::Value(format!("at most {} recompression algorithms", ZRAM_MAX_COMPS - 1)));
        }
        let disksize = config.disksize.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64;
        let nr_pages = usize::try_from(disksize >> PAGE_SHIFT)
            .map_err(|_| ZramError::Value(format!("disksize {disksize} is too large")))?;
        let comps = std::iter::once(&config.algorithm)
            .chain(&config.recompress)
            .map(Codec::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ZramError::Value)?;
        let table = Table::new(nr_pages)
            .map_err(|e| ZramError::Value(format!("no room for a slot table of {nr_pages} pages: {e}")))?;
        let backing = match &config.backing_file {
            None if config.backing_blocks.is_some() => {
                return Err(ZramError::Value("backing_blocks sizes a backing_file: give one".into()))
            }
            None => None,
            Some(path) => {
                let blocks = config.backing_blocks.unwrap_or(nr_pages as u64);
                Some(
                    BackingFile::open(path, blocks)
                        .map_err(|e| ZramError::Value(format!("backing file {path:?}: {e}")))?,
                )
            }
        };
        let zram = Zram {
            name: config.name,
            huge_class_size: pool.huge_class_size(),
            compacted_base: AtomicU64::new(pool.events().pages_compacted),
            pool,
            disksize,
            nr_pages,
            table,
            comps,
            limit_pages: AtomicUsize::new(0),
            backing,
            stats: Stats::default(),
            pp: Mutex::new(RecompStat::default()),
            closed: AtomicBool::new(false),
        };
        if config.mem_limit > 0 {
            zram.set_mem_limit(config.mem_limit);
        }
        Ok(zram)
    }

    // ------------------------------------------------------------------
    // configuration

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
    pub fn disksize(&self) -> u64 {
        self.disksize
    }
    pub fn nr_pages(&self) -> usize {
        self.nr_pages
    }
    /// The algorithms by priority.
    pub fn comps(&self) -> &[Codec] {
        &self.comps
    }
    pub fn backing_file(&self) -> Option<&std::path::Path> {
        self.backing.as_ref().map(|b| b.path.as_path())
    }
    /// Bytes, 0 for none.
    pub fn mem_limit(&self) -> u64 {
        (self.limit_pages.load(Relaxed) as u64) << PAGE_SHIFT
    }
    /// `mem_limit_store`: rounded up to whole pages; 0 lifts the limit.
    pub fn set_mem_limit(&self, bytes: u64) {
        let pages = bytes.div_ceil(PAGE_SIZE as u64) as usize;
        self.limit_pages.store(pages, Relaxed);
        self.pool.set_max_pages((pages > 0).then_some(pages));
    }
    pub fn pages_stored(&self) -> u64 {
        self.stats.pages_stored.load(Relaxed)
    }

    // ------------------------------------------------------------------
    // slots

    #[inline]
    fn slot(&self, index: usize) -> &Slot {
        &self.table.as_slice()[index]
    }

    /// `zram_slot_lock`: a bit spin lock; a waiter gives its CPU away after
    /// a short spin, so that a holder preempted or doing backing-file I/O
    /// can run.
    #[inline]
    fn zram_slot_lock(&self, index: usize) -> SlotGuard<'_> {
        let slot = self.slot(index);
        let mut spins = 0u32;
        loop {
            let f = slot.flags.load(Relaxed);
            if f & ZRAM_LOCK == 0
                && slot.flags.compare_exchange_weak(f, f | ZRAM_LOCK, Acquire, Relaxed).is_ok()
            {
                return SlotGuard { slot };
            }
            spins += 1;
            if spins < SLOT_LOCK_SPINS {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
    }

    /// What the slot holds, without its lock (block status: a write racing
    /// the look may be seen before or after).
    pub fn page_state(&self, index: usize) -> PageState {
        let slot = self.slot(index);
        let f = slot.flags.load(Acquire);
        let h = slot.handle.load(Relaxed);
        if f & ZRAM_SAME != 0 {
            PageState::Same(h)
        } else if f & ZRAM_WB != 0 {
            PageState::WrittenBack
        } else if h == 0 {
            PageState::Empty
        } else {
            PageState::Stored
        }
    }

    /// Slot `index`, decoded, under its lock.
    pub fn slot_view(&self, index: usize) -> Result<SlotView, ZramError> {
        self.check_index(index)?;
        let g = self.zram_slot_lock(index);
        Ok(SlotView { flags: g.flags(), handle: g.handle(), size: g.size() })
    }

    // ------------------------------------------------------------------
    // argument checks and the rare counters

    fn check_open(&self) -> Result<(), ZramError> {
        if self.closed.load(Acquire) {
            return Err(ZramError::Closed(format!("zram device {:?} is closed", self.name)));
        }
        if self.pool.is_closed() {
            return Err(ZramError::Closed(format!("zram device {:?}: its pool is closed", self.name)));
        }
        Ok(())
    }

    /// An invalid request of a caller's own making (a negative index, say):
    /// PoolClosed once closed, else `msg`, counted in `invalid_io`.
    pub fn refuse(&self, msg: String) -> ZramError {
        match self.check_open() {
            Err(e) => e,
            Ok(()) => self.invalid(msg),
        }
    }

    /// An invalid request, counted in `invalid_io`.
    fn invalid(&self, msg: String) -> ZramError {
        self.stats.invalid_io.fetch_add(1, Relaxed);
        ZramError::Invalid(msg)
    }

    fn check_index(&self, index: usize) -> Result<(), ZramError> {
        self.check_open()?;
        if index >= self.nr_pages {
            return Err(self.invalid(format!(
                "page index {index} is outside {} (0..{})",
                self.name,
                self.nr_pages - 1
            )));
        }
        Ok(())
    }

    /// Pages `index .. index + buf_len / 4096`, of a buffer of whole pages.
    fn check_pages(&self, index: usize, buf_len: usize, op: &str) -> Result<usize, ZramError> {
        self.check_open()?;
        if buf_len % PAGE_SIZE != 0 {
            return Err(
                self.invalid(format!("{op} takes whole pages of {PAGE_SIZE} bytes, not {buf_len} bytes"))
            );
        }
        self.check_page_range(index, buf_len / PAGE_SIZE)?;
        Ok(buf_len / PAGE_SIZE)
    }

    /// Pages `index .. index + count` lie in the device (else counted in invalid_io).
    pub fn check_page_range(&self, index: usize, count: usize) -> Result<(), ZramError> {
        self.check_open()?;
        if index > self.nr_pages || count > self.nr_pages - index {
            return Err(self.invalid(format!(
                "pages [{index}, {}) are outside {} (0..{})",
                index.saturating_add(count),
                self.name,
                self.nr_pages
            )));
        }
        Ok(())
    }

    /// Bytes `offset .. offset + len` lie in the device (else counted in invalid_io).
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), ZramError> {
        self.check_open()?;
        if offset > self.disksize || len > self.disksize - offset {
            return Err(self.invalid(format!(
                "byte range [{offset}, {}) is outside {} (0..{})",
                offset.saturating_add(len),
                self.name,
                self.disksize
            )));
        }
        Ok(())
    }

    fn write_failed(&self, index: usize, e: PoolError) -> ZramError {
        let why = match &e {
            PoolError::PoolFull(_) if self.limit_pages.load(Relaxed) > 0 => {
                format!("mem_limit of {} bytes reached", self.mem_limit())
            }
            PoolError::PoolFull(_) => "the pool's max_pages reached".to_string(),
            PoolError::NoFrame(..) => "the pool could not get a page".to_string(),
            _ => return e.into(),
        };
        self.stats.failed_writes.fetch_add(1, Relaxed);
        ZramError::Full(format!("{}: write of page {index} refused: {why} ({e})", self.name))
    }

    fn read_failed(&self, index: usize, why: String) -> ZramError {
        self.stats.failed_reads.fetch_add(1, Relaxed);
        ZramError::Io(format!("{}: page {index} {why}", self.name))
    }

    /// `update_used_max`.
    #[inline]
    fn update_used_max(&self) {
        // a plain load first: the read-modify-write (a cache line taken from
        // the other cores) only when the mark moves
        let total = self.pool.total_pages();
        if total > self.stats.max_used_pages.load(Relaxed) {
            self.stats.max_used_pages.fetch_max(total, Relaxed);
        }
    }

    fn apply(&self, d: &Delta) {
        let s = &self.stats;
        let add = |c: &AtomicU64, v: i64| {
            if v != 0 {
                c.fetch_add(v as u64, Relaxed);
            }
        };
        add(&s.pages_stored, d.stored);
        add(&s.compr_data_size, d.compr);
        add(&s.same_pages, d.same);
        add(&s.huge_pages, d.huge);
        add(&s.huge_pages_since, d.huge_since as i64);
        add(&s.notify_free, d.notify_free as i64);
    }

    /// Run `f` with a fresh delta, and count what it changed even if it failed.
    #[inline]
    fn counted<R>(&self, f: impl FnOnce(&mut Delta) -> R) -> R {
        let mut d = Delta::default();
        let r = f(&mut d);
        self.apply(&d);
        r
    }

    // ------------------------------------------------------------------
    // the slot's contents (the caller holds the slot lock)

    /// `zram_free_page`: release whatever the slot holds.
    fn zram_free_page(&self, index: usize, g: &SlotGuard<'_>, d: &mut Delta) -> Result<(), ZramError> {
        let flags = g.flags();
        let handle = g.handle();
        if flags & ZRAM_WB != 0 {
            let backing = self.backing_of(index)?;
            backing.free_block(handle).map_err(ZramError::Io)?;
        } else if flags & ZRAM_SAME != 0 {
            d.same -= 1;
        } else if handle != 0 {
            self.pool.zs_free(handle)?;
            d.compr -= g.size() as i64;
            if flags & ZRAM_HUGE != 0 {
                d.huge -= 1;
            }
        } else {
            return Ok(());
        }
        d.stored -= 1;
        g.set(0, 0, 0);
        Ok(())
    }

    fn backing_of(&self, index: usize) -> Result<&BackingFile, ZramError> {
        self.backing.as_ref().ok_or_else(|| {
            ZramError::Pool(PoolError::Value(format!(
                "{}: slot {index} is written back, but there is no backing file",
                self.name
            )))
        })
    }

    /// Compress and store the page in the pool, before any slot lock (the
    /// first half of `zram_write_page`).
    fn prepare(&self, index: usize, page: &[u8]) -> Result<Prepared, ZramError> {
        if let Some(word) = page_same_filled(page) {
            return Ok(Prepared::Same(word));
        }
        let mut buf = [0u8; COMPRESS_BOUND];
        let (src, size, flags) = match self.comps[0].compress(page, &mut buf, self.huge_class_size) {
            Some(n) => (&buf[..n], n, 0),
            None => (page, PAGE_SIZE, ZRAM_HUGE),
        };
        let handle = self.pool.zs_malloc(size).map_err(|e| self.write_failed(index, e))?;
        if let Err(e) = self.pool.zs_obj_write(handle, src, 0) {
            let _ = self.pool.zs_free(handle);
            return Err(e.into());
        }
        self.update_used_max();
        Ok(Prepared::Stored { handle, size, flags })
    }

    /// Put a prepared page in its slot, freeing the old contents (the
    /// second half of `zram_write_page`).
    fn commit(&self, index: usize, g: &SlotGuard<'_>, p: Prepared, d: &mut Delta) -> Result<(), ZramError> {
        let freed = self.zram_free_page(index, g, d);
        if let Err(e) = freed {
            if let Prepared::Stored { handle, .. } = p {
                let _ = self.pool.zs_free(handle);
            }
            return Err(e);
        }
        match p {
            Prepared::Same(word) => {
                g.set(word, 0, ZRAM_SAME);
                d.same += 1;
            }
            Prepared::Stored { handle, size, flags } => {
                g.set(handle, size, flags);
                d.compr += size as i64;
                if flags & ZRAM_HUGE != 0 {
                    d.huge += 1;
                    d.huge_since += 1;
                }
            }
        }
        d.stored += 1;
        Ok(())
    }

    /// The page of a locked slot into `out`; `access` clears IDLE (zram_accessed).
    fn read_locked(
        &self,
        index: usize,
        g: &SlotGuard<'_>,
        out: &mut [u8],
        access: bool,
    ) -> Result<(), ZramError> {
        let flags = g.flags();
        if access && flags & ZRAM_IDLE != 0 {
            g.set_flags(flags & !ZRAM_IDLE);
        }
        let handle = g.handle();
        if flags & ZRAM_SAME != 0 {
            fill_word(out, handle);
        } else if flags & ZRAM_WB != 0 {
            let backing = self.backing_of(index)?;
            if let Err(e) = backing.read_block(handle, out) {
                self.stats.failed_reads.fetch_add(1, Relaxed);
                return Err(ZramError::Io(e));
            }
            self.stats.bd_reads.fetch_add(1, Relaxed);
        } else if handle == 0 {
            out.fill(0);
        } else if flags & ZRAM_HUGE != 0 {
            // SAFETY: the slot lock is held: nobody writes the object
            unsafe { self.pool.zs_obj_read_with(handle, |src| out.copy_from_slice(src)) }?;
        } else {
            let codec = &self.comps[((flags & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT) as usize];
            // SAFETY: as above
            unsafe { self.pool.zs_obj_read_with(handle, |src| codec.decompress(src, out)) }?
                .map_err(|why| self.read_failed(index, why))?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // whole pages

    /// `zram_write_page`: store one 4096-byte page at page `index`.
    pub fn write_page(&self, index: usize, page: &[u8]) -> Result<(), ZramError> {
        self.check_index(index)?;
        if page.len() != PAGE_SIZE {
            return Err(self.invalid(format!("a page write takes {PAGE_SIZE} bytes, not {}", page.len())));
        }
        self.write_pages(index, page)
    }

    /// `zram_read_page`: page `index` into the 4096-byte `out`.
    pub fn read_page(&self, index: usize, out: &mut [u8]) -> Result<(), ZramError> {
        self.check_index(index)?;
        if out.len() != PAGE_SIZE {
            return Err(self.invalid(format!("a page read takes {PAGE_SIZE} bytes, not {}", out.len())));
        }
        self.read_pages(index, out)
    }

    /// Pages `index ..` from `data`, a whole number of pages; on an error
    /// the pages before the failed one stay written.
    pub fn write_pages(&self, index: usize, data: &[u8]) -> Result<(), ZramError> {
        self.check_pages(index, data.len(), "write_pages")?;
        self.counted(|d| {
            for (i, page) in data.chunks_exact(PAGE_SIZE).enumerate() {
                let p = self.prepare(index + i, page)?;
                let g = self.zram_slot_lock(index + i);
                self.commit(index + i, &g, p, d)?;
            }
            Ok(())
        })
    }

    /// Pages `index ..` into `out`, a whole number of pages.
    pub fn read_pages(&self, index: usize, out: &mut [u8]) -> Result<(), ZramError> {
        self.check_pages(index, out.len(), "read_pages")?;
        for (i, page) in out.chunks_exact_mut(PAGE_SIZE).enumerate() {
            let g = self.zram_slot_lock(index + i);
            self.read_locked(index + i, &g, page, true)?;
        }
        Ok(())
    }

    /// Part of a page, read, patched and stored again under its slot lock,
    /// so two partial writes of one page never lose each other's bytes.
    fn write_partial(
        &self,
        index: usize,
        offset: usize,
        chunk: Option<&[u8]>,
        len: usize,
        d: &mut Delta,
    ) -> Result<(), ZramError> {
        let g = self.zram_slot_lock(index);
        if chunk.is_none() && g.is_empty() {
            return Ok(()); // zeroing an empty page: zeros already
        }
        let mut page = [0u8; PAGE_SIZE];
        self.read_locked(index, &g, &mut page, false)?;
        match chunk {
            Some(bytes) => page[offset..offset + len].copy_from_slice(bytes),
            None => page[offset..offset + len].fill(0),
        }
        let p = self.prepare(index, &page)?;
        self.commit(index, &g, p, d)
    }

    /// Walk `[offset, offset + len)` page by page: `whole(index, pos)` for
    /// each page it covers, `part(index, in_page, pos, n)` for the others.
    fn walk(
        &self,
        offset: u64,
        len: u64,
        mut whole: impl FnMut(usize, usize) -> Result<(), ZramError>,
        mut part: impl FnMut(usize, usize, usize, usize) -> Result<(), ZramError>,
    ) -> Result<(), ZramError> {
        self.check_range(offset, len)?;
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let index = (at >> PAGE_SHIFT) as usize;
            let in_page = (at as usize) & (PAGE_SIZE - 1);
            let n = (PAGE_SIZE - in_page).min((end - at) as usize);
            let pos = (at - offset) as usize;
            if n == PAGE_SIZE {
                whole(index, pos)?;
            } else {
                part(index, in_page, pos, n)?;
            }
            at += n as u64;
        }
        Ok(())
    }

    /// Write `data` at byte `offset`, any alignment; on an error the pages
    /// before the failed one stay written.
    pub fn pwrite(&self, offset: u64, data: &[u8]) -> Result<(), ZramError> {
        self.counted(|d| {
            let d = std::cell::RefCell::new(d);
            self.walk(
                offset,
                data.len() as u64,
                |index, pos| {
                    let p = self.prepare(index, &data[pos..pos + PAGE_SIZE])?;
                    let g = self.zram_slot_lock(index);
                    self.commit(index, &g, p, &mut d.borrow_mut())
                },
                |index, in_page, pos, n| {
                    self.write_partial(index, in_page, Some(&data[pos..pos + n]), n, &mut d.borrow_mut())
                },
            )
        })
    }

    /// `out.len()` bytes from byte `offset`, any alignment.
    pub fn pread(&self, offset: u64, out: &mut [u8]) -> Result<(), ZramError> {
        let len = out.len() as u64;
        let out = std::cell::RefCell::new(out);
        self.walk(
            offset,
            len,
            |index, pos| {
                let g = self.zram_slot_lock(index);
                self.read_locked(index, &g, &mut out.borrow_mut()[pos..pos + PAGE_SIZE], true)
            },
            |index, in_page, pos, n| {
                let mut page = [0u8; PAGE_SIZE];
                let g = self.zram_slot_lock(index);
                self.read_locked(index, &g, &mut page, true)?;
                drop(g);
                out.borrow_mut()[pos..pos + n].copy_from_slice(&page[in_page..in_page + n]);
                Ok(())
            },
        )
    }

    /// Zero `len` bytes at `offset`: whole pages are freed (as discard),
    /// partial ones rewritten.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), ZramError> {
        self.counted(|d| {
            let d = std::cell::RefCell::new(d);
            self.walk(
                offset,
                len,
                |index, _| self.discard_one(index, &mut d.borrow_mut()),
                |index, in_page, _, n| self.write_partial(index, in_page, None, n, &mut d.borrow_mut()),
            )
        })
    }

    /// Free pages `index .. index + count` (REQ_OP_DISCARD); they read as zeros.
    pub fn discard(&self, index: usize, count: usize) -> Result<(), ZramError> {
        self.check_open()?;
        if index > self.nr_pages || count > self.nr_pages - index {
            return Err(self.invalid(format!(
                "discard of pages [{index}, {}) is outside {}",
                index.saturating_add(count),
                self.name
            )));
        }
        self.counted(|d| (index..index + count).try_for_each(|i| self.discard_one(i, d)))
    }

    fn discard_one(&self, index: usize, d: &mut Delta) -> Result<(), ZramError> {
        let g = self.zram_slot_lock(index);
        self.zram_free_page(index, &g, d)?;
        d.notify_free += 1;
        Ok(())
    }

    // ------------------------------------------------------------------
    // idle pages, writeback, recompression

    /// `echo all > idle`: mark every page in the pool IDLE; how many.
    pub fn mark_idle(&self) -> Result<u64, ZramError> {
        self.check_open()?;
        let mut marked = 0;
        for index in 0..self.nr_pages {
            if self.page_state(index) != PageState::Stored {
                continue; // a first look without the lock
            }
            let g = self.zram_slot_lock(index);
            let f = g.flags();
            if g.handle() != 0 && f & (ZRAM_SAME | ZRAM_WB) == 0 {
                g.set_flags(f | ZRAM_IDLE);
                marked += 1;
            }
        }
        Ok(marked)
    }

    /// `writeback_store`: pages out to the backing file, uncompressed, one
    /// per block, their pool memory freed.  `indices` limits the candidates;
    /// `max_pages` the pages written.  Stops early when the file is full.
    pub fn writeback(
        &self,
        mode: &str,
        max_pages: Option<u64>,
        indices: Option<&[usize]>,
    ) -> Result<u64, ZramError> {
        self.check_open()?;
        let backing = self
            .backing
            .as_ref()
            .ok_or_else(|| ZramError::NoBackingDevice(format!("{} has no backing file", self.name)))?;
        let need = writeback_mode(mode)?;
        let _pp = self.pp.lock();
        let candidates: Box<dyn Iterator<Item = usize> + '_> = match indices {
            Some(list) => Box::new(list.iter().copied()),
            None => Box::new(0..self.nr_pages),
        };
        let mut written = 0u64;
        for index in candidates {
            if max_pages.is_some_and(|m| written >= m) {
                break;
            }
            self.check_index(index)?;
            if self.slot(index).flags.load(Relaxed) & need != need {
                continue; // a first look without the lock
            }
            let g = self.zram_slot_lock(index);
            let f = g.flags();
            if f & need != need || f & (ZRAM_SAME | ZRAM_WB) != 0 || g.handle() == 0 {
                continue;
            }
            let mut page = [0u8; PAGE_SIZE];
            self.read_locked(index, &g, &mut page, false)?;
            let Some(block) = backing.alloc_block() else {
                break; // the file is full (-ENOSPC)
            };
            if let Err(e) = backing.write_block(block, &page) {
                backing.free_block(block).map_err(ZramError::Io)?;
                return Err(ZramError::Io(e));
            }
            self.counted(|d| -> Result<(), ZramError> {
                self.zram_free_page(index, &g, d)?;
                g.set(block, 0, ZRAM_WB);
                d.stored += 1;
                Ok(())
            })?;
            drop(g);
            self.stats.bd_writes.fetch_add(1, Relaxed);
            written += 1;
        }
        Ok(written)
    }

    /// `recompress_store`: pages in the pool compressed again with the
    /// secondary algorithms (only `algorithm` if named); the pages kept.
    ///
    /// A candidate is a page in the pool (not same-filled, written back or
    /// INCOMPRESSIBLE), HUGE only if `only_huge`, IDLE only if `only_idle`,
    /// of at least `threshold` bytes, not compressed by the last algorithm
    /// in use already.  The first algorithm that lands it in a smaller class
    /// (and below the huge size and `threshold`) wins; if the last one fails
    /// too, the page is marked INCOMPRESSIBLE.
    pub fn recompress(
        &self,
        algorithm: Option<&str>,
        only_huge: bool,
        only_idle: bool,
        threshold: usize,
        max_pages: Option<u64>,
    ) -> Result<u64, ZramError> {
        self.check_open()?;
        let nr_comps = self.comps.len();
        if nr_comps < 2 {
            return Err(ZramError::Unsupported(format!("{} has no recompression algorithm", self.name)));
        }
        let (mut prio, mut prio_max) = (1, nr_comps);
        if let Some(name) = algorithm {
            let names: Vec<&str> = self.comps.iter().map(|c| c.algorithm.name()).collect();
            let Some(p) = names[1..].iter().position(|n| *n == name) else {
                return Err(ZramError::Value(format!(
                    "{name:?} is not a recompression algorithm of {}: {names:?}",
                    self.name
                )));
            };
            prio = p + 1;
            prio_max = prio + 1;
        }
        if threshold >= self.huge_class_size {
            return Err(ZramError::Value(format!(
                "threshold must be within 0..{}, not {threshold}",
                self.huge_class_size - 1
            )));
        }
        let need = if only_huge { ZRAM_HUGE } else { 0 } | if only_idle { ZRAM_IDLE } else { 0 };
        let skip = ZRAM_SAME | ZRAM_WB | ZRAM_INCOMPRESSIBLE;
        let mut st = self.pp.lock();
        let mut budget = max_pages;
        let mut kept = 0;
        for index in 0..self.nr_pages {
            if budget == Some(0) {
                break;
            }
            let peek = self.slot(index).flags.load(Relaxed);
            if peek & need != need || peek & skip != 0 {
                continue;
            }
            let g = self.zram_slot_lock(index);
            let f = g.flags();
            if f & need != need || f & skip != 0 || g.handle() == 0 {
                continue;
            }
            if ((f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT) as usize + 1 >= prio_max {
                continue; // already compressed with this or a later algorithm
            }
            if let Some(r) = self.recompress_slot(index, &g, threshold, prio, prio_max, &mut st)? {
                budget = budget.map(|b| b - 1);
                kept += r;
            }
        }
        Ok(kept)
    }

    /// `recompress_slot`, slot locked: Some(1) if a new object was kept,
    /// Some(0) if not, None if the page was not tried.
    fn recompress_slot(
        &self,
        index: usize,
        g: &SlotGuard<'_>,
        threshold: usize,
        prio: usize,
        prio_max: usize,
        st: &mut RecompStat,
    ) -> Result<Option<u64>, ZramError> {
        let old_size = g.size();
        if old_size < threshold {
            return Ok(None);
        }
        let mut page = [0u8; PAGE_SIZE];
        self.read_locked(index, g, &mut page, false)?;
        let flags = g.flags() & !ZRAM_IDLE; // touched: no longer idle
        g.set_flags(flags);
        let class_old = self.pool.zs_lookup_class_index(old_size)?;
        let prio = prio.max(((flags & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT) as usize + 1);
        if prio >= prio_max {
            return Ok(None);
        }
        st.attempted += 1;
        let mut buf = [0u8; COMPRESS_BOUND];
        let mut chosen = None;
        for p in prio..prio_max {
            let Some(n) = self.comps[p].compress(&page, &mut buf, self.huge_class_size) else {
                continue;
            };
            if self.pool.zs_lookup_class_index(n)? >= class_old || (threshold > 0 && n >= threshold) {
                continue;
            }
            chosen = Some((p, n));
            break;
        }
        let Some((p, new_size)) = chosen else {
            st.failed += 1;
            if prio_max == self.comps.len() {
                g.set_flags(flags | ZRAM_INCOMPRESSIBLE);
                st.incompressible += 1;
            }
            return Ok(Some(0));
        };
        let handle = self.pool.zs_malloc(new_size).map_err(|e| match e {
            PoolError::PoolFull(_) | PoolError::NoFrame(..) => {
                ZramError::Full(format!("{}: recompression of page {index}: {e}", self.name))
            }
            e => e.into(),
        })?;
        self.pool.zs_obj_write(handle, &buf[..new_size], 0)?;
        self.update_used_max();
        self.counted(|d| -> Result<(), ZramError> {
            self.zram_free_page(index, g, d)?;
            g.set(handle, new_size, (p as u32) << ZRAM_COMP_PRIORITY_SHIFT);
            d.compr += new_size as i64;
            d.stored += 1;
            Ok(())
        })?;
        st.recompressed += 1;
        st.bytes_before += old_size as u64;
        st.bytes_after += new_size as u64;
        if flags & ZRAM_HUGE != 0 {
            st.huge_recompressed += 1;
        }
        Ok(Some(1))
    }

    // ------------------------------------------------------------------
    // statistics

    pub fn mm_stat(&self) -> MmStat {
        let s = &self.stats;
        MmStat {
            orig_data_size: s.pages_stored.load(Relaxed) << PAGE_SHIFT,
            compr_data_size: s.compr_data_size.load(Relaxed),
            mem_used_total: (self.pool.total_pages() as u64) << PAGE_SHIFT,
            mem_limit: self.mem_limit(),
            mem_used_max: (s.max_used_pages.load(Relaxed) as u64) << PAGE_SHIFT,
            same_pages: s.same_pages.load(Relaxed),
            pages_compacted: self.pool.events().pages_compacted - self.compacted_base.load(Relaxed),
            huge_pages: s.huge_pages.load(Relaxed),
            huge_pages_since: s.huge_pages_since.load(Relaxed),
        }
    }

    pub fn io_stat(&self) -> IoStat {
        let s = &self.stats;
        IoStat {
            failed_reads: s.failed_reads.load(Relaxed),
            failed_writes: s.failed_writes.load(Relaxed),
            invalid_io: s.invalid_io.load(Relaxed),
            notify_free: s.notify_free.load(Relaxed),
        }
    }

    pub fn bd_stat(&self) -> BdStat {
        BdStat {
            bd_count: self.backing.as_ref().map_or(0, |b| b.nr_used()),
            bd_reads: self.stats.bd_reads.load(Relaxed),
            bd_writes: self.stats.bd_writes.load(Relaxed),
        }
    }

    pub fn recomp_stat(&self) -> RecompStat {
        *self.pp.lock()
    }

    /// `echo 0 > mem_used_max`: restart the high-water mark from the pool's size.
    pub fn reset_mem_used_max(&self) -> Result<(), ZramError> {
        self.check_open()?;
        self.stats.max_used_pages.store(self.pool.total_pages(), Relaxed);
        Ok(())
    }

    // ------------------------------------------------------------------
    // maintenance

    /// `echo 1 > compact`: the pool's compaction; the pages it freed.
    pub fn compact(&self) -> Result<u64, ZramError> {
        self.check_open()?;
        Ok(self.pool.zs_compact()?)
    }

    /// `echo 1 > reset`: free every page, clear the statistics; the
    /// configuration stays.
    pub fn reset(&self) -> Result<(), ZramError> {
        self.check_open()?;
        let mut st = self.pp.lock();
        self.free_all()?;
        let s = &self.stats;
        for c in [
            &s.pages_stored,
            &s.compr_data_size,
            &s.same_pages,
            &s.huge_pages,
            &s.huge_pages_since,
            &s.notify_free,
            &s.failed_reads,
            &s.failed_writes,
            &s.invalid_io,
            &s.bd_reads,
            &s.bd_writes,
        ] {
            c.store(0, Relaxed);
        }
        s.max_used_pages.store(0, Relaxed);
        self.compacted_base.store(self.pool.events().pages_compacted, Relaxed);
        *st = RecompStat::default();
        if let Some(b) = &self.backing {
            b.clear();
        }
        Ok(())
    }

    /// Free every page and refuse every later call; the statistics stay
    /// readable.  A second close does nothing.
    pub fn close(&self) -> Result<(), ZramError> {
        if self.closed.load(Acquire) || self.pool.is_closed() {
            self.closed.store(true, Release);
            return Ok(());
        }
        let _pp = self.pp.lock();
        let freed = self.free_all();
        self.closed.store(true, Release);
        freed
    }

    /// `zram_free_page` of every slot (the caller holds `pp`).
    fn free_all(&self) -> Result<(), ZramError> {
        self.counted(|d| {
            (0..self.nr_pages).try_for_each(|i| self.zram_free_page(i, &self.zram_slot_lock(i), d))
        })
    }

    /// Recompute every counter from the slot table and compare, and look up
    /// every stored handle in the pool.  Run it with no I/O in flight.
    pub fn check(&self) -> Result<(), ZramError> {
        self.check_open()?;
        self.check_slots().map_err(ZramError::Corrupt)
    }

    fn check_slots(&self) -> Result<(), String> {
        let (mut stored, mut compr, mut same, mut huge, mut wb) = (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut blocks = std::collections::HashSet::new();
        for i in 0..self.nr_pages {
            let g = self.zram_slot_lock(i);
            let (f, h, size) = (g.flags(), g.handle(), g.size());
            if f == 0 && h == 0 {
                if size != 0 {
                    return Err(format!("slot {i}: empty but size {size}"));
                }
                continue;
            }
            stored += 1;
            if f & ZRAM_SAME != 0 {
                same += 1;
                if f & !ZRAM_SAME != 0 || size != 0 {
                    return Err(format!("slot {i}: same-filled with flags {f:#x}, size {size}"));
                }
            } else if f & ZRAM_WB != 0 {
                wb += 1;
                if f & !ZRAM_WB != 0 || size != 0 {
                    return Err(format!("slot {i}: written back with flags {f:#x}, size {size}"));
                }
                let used = self.backing.as_ref().is_some_and(|b| b.block_used(h));
                if !used || !blocks.insert(h) {
                    return Err(format!("slot {i}: backing block {h} not allocated or shared"));
                }
            } else {
                compr += size as u64;
                let prio = ((f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT) as usize;
                if prio >= self.comps.len() {
                    return Err(format!("slot {i}: algorithm priority {prio} not configured"));
                }
                if f & ZRAM_HUGE != 0 {
                    huge += 1;
                    if size != PAGE_SIZE {
                        return Err(format!("slot {i}: huge with size {size}"));
                    }
                } else if !(1..self.huge_class_size).contains(&size) {
                    return Err(format!("slot {i}: compressed size {size} out of range"));
                }
                match self.pool.handle_size(h) {
                    Err(e) => return Err(format!("slot {i}: handle {h:#x} is not live in the pool: {e}")),
                    Ok(n) if n != size => {
                        return Err(format!("slot {i}: pool object of {n} bytes, slot says {size}"))
                    }
                    Ok(_) => {}
                }
            }
        }
        let s = &self.stats;
        for (name, counted, kept) in [
            ("pages_stored", stored, s.pages_stored.load(Relaxed)),
            ("compr_data_size", compr, s.compr_data_size.load(Relaxed)),
            ("same_pages", same, s.same_pages.load(Relaxed)),
            ("huge_pages", huge, s.huge_pages.load(Relaxed)),
            ("bd_count", wb, self.backing.as_ref().map_or(0, |b| b.nr_used())),
        ] {
            if counted != kept {
                return Err(format!("{name}: the slot table says {counted}, the counter {kept}"));
            }
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::memory::{PCP_BATCH, PCP_HIGH};
    use crate::mm::Memory;
    use crate::pool::PoolConfig;

    fn test_pool_config() -> PoolConfig {
        PoolConfig { background_work: false, ..PoolConfig::new("zram-test") }
    }

    fn device(pages: u64, frames: usize) -> Zram {
        let mem = Arc::new(Memory::new(frames, PCP_HIGH, PCP_BATCH).unwrap());
        let pool = Pool::new(test_pool_config(), mem, true).unwrap();
        Zram::new(pool, ZramConfig::new(pages * PAGE_SIZE as u64)).unwrap()
    }

    fn page(seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2654435761).max(1);
        (0..PAGE_SIZE)
            .map(|i| {
                if i % 64 < 40 {
                    b"zsmalloc zram page "[(i + seed as usize) % 19]
                } else {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                }
            })
            .collect()
    }

    #[test]
    fn pages_come_back_and_the_counters_agree() {
        let z = device(64, 256);
        let mut out = vec![0u8; PAGE_SIZE];
        for i in 0..64 {
            z.write_page(i, &page(i as u32)).unwrap();
        }
        z.write_page(5, &[0u8; PAGE_SIZE]).unwrap();
        for i in 0..64 {
            z.read_page(i, &mut out).unwrap();
            assert_eq!(out, if i == 5 { vec![0; PAGE_SIZE] } else { page(i as u32) }, "page {i}");
        }
        let mm = z.mm_stat();
        assert_eq!(mm.orig_data_size, 64 * PAGE_SIZE as u64);
        assert_eq!(mm.same_pages, 1);
        assert!(mm.compr_data_size < 40 * PAGE_SIZE as u64);
        assert_eq!(z.page_state(5), PageState::Same(0));
        assert_eq!(z.page_state(6), PageState::Stored);
        z.discard(6, 2).unwrap();
        assert_eq!(z.page_state(6), PageState::Empty);
        assert_eq!(z.io_stat().notify_free, 2);
        z.check().unwrap();
        z.reset().unwrap();
        assert_eq!(z.mm_stat().orig_data_size, 0);
        assert_eq!(z.pool().len(), 0);
        z.check().unwrap();
    }

    #[test]
    fn check_catches_damage() {
        let z = device(32, 128);
        for i in 0..20 {
            z.write_page(i, &page(i as u32)).unwrap();
        }
        z.check().unwrap();
        z.stats.compr_data_size.fetch_add(1, Relaxed);
        assert!(matches!(z.check(), Err(ZramError::Corrupt(m)) if m.contains("compr_data_size")));
        z.stats.compr_data_size.fetch_sub(1, Relaxed);
        z.check().unwrap();
        let slot = z.slot(3);
        let (flags, handle) = (slot.flags.load(Relaxed), slot.handle.load(Relaxed));
        slot.flags.store(flags + (1 << SIZE_SHIFT), Relaxed);
        assert!(matches!(z.check(), Err(ZramError::Corrupt(m)) if m.contains("slot 3")));
        slot.flags.store(flags, Relaxed);
        slot.handle.store(handle + 2, Relaxed); // a handle that is not live
        assert!(matches!(z.check(), Err(ZramError::Corrupt(m)) if m.contains("not live")));
        slot.handle.store(handle, Relaxed);
        z.check().unwrap();
    }

    #[test]
    fn check_catches_a_lost_backing_block() {
        let path = std::env::temp_dir().join(format!("zs-zram-check-{}", std::process::id()));
        let mem = Arc::new(Memory::new(64, PCP_HIGH, PCP_BATCH).unwrap());
        let pool = Pool::new(test_pool_config(), mem, true).unwrap();
        let mut config = ZramConfig::new(8 * PAGE_SIZE as u64);
        config.backing_file = Some(path.clone());
        let z = Zram::new(pool, config).unwrap();
        for i in 0..4 {
            z.write_page(i, &page(i as u32)).unwrap();
        }
        assert_eq!(z.writeback("all", None, None).unwrap(), 4);
        z.check().unwrap();
        let block = z.slot(1).handle.load(Relaxed);
        z.backing.as_ref().unwrap().free_block(block).unwrap(); // the bitmap forgets a block in use
        assert!(matches!(z.check(), Err(ZramError::Corrupt(m)) if m.contains("backing block")));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn byte_io_at_any_alignment() {
        let z = device(8, 64);
        let data: Vec<u8> = (0..3 * PAGE_SIZE + 100).map(|i| (i * 31 % 251) as u8).collect();
        z.pwrite(1000, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        z.pread(1000, &mut back).unwrap();
        assert_eq!(back, data);
        z.write_zeroes(1500, 2 * PAGE_SIZE as u64).unwrap();
        let mut all = vec![0u8; 8 * PAGE_SIZE];
        z.pread(0, &mut all).unwrap();
        assert!(all[1500..1500 + 2 * PAGE_SIZE].iter().all(|&b| b == 0));
        assert_eq!(&all[1000..1500], &data[..500]);
        assert!(z.pwrite(8 * PAGE_SIZE as u64 - 1, b"xy").is_err());
        assert_eq!(z.io_stat().invalid_io, 1);
        z.check().unwrap();
    }

    #[test]
    fn a_full_pool_refuses_and_keeps_the_old_page() {
        let z = device(64, 256);
        z.write_page(0, &page(1)).unwrap();
        z.set_mem_limit(PAGE_SIZE as u64);
        let mut refused = 0;
        for i in 1..64 {
            match z.write_page(i, &page(i as u32 + 100)) {
                Err(ZramError::Full(_)) => refused += 1,
                r => r.unwrap(),
            }
        }
        assert!(refused > 0);
        assert_eq!(z.io_stat().failed_writes, refused);
        let mut out = vec![0u8; PAGE_SIZE];
        z.read_page(0, &mut out).unwrap();
        assert_eq!(out, page(1));
        z.check().unwrap();
    }

    #[test]
    fn partial_writes_to_one_page_do_not_lose_each_other() {
        let z = Arc::new(device(4, 64));
        z.write_page(1, &page(9)).unwrap();
        let workers: Vec<_> = (0..2u8)
            .map(|t| {
                let z = Arc::clone(&z);
                std::thread::spawn(move || {
                    // thread t owns the bytes at 16 * k + 8 * t of page 1
                    for round in 0..200u32 {
                        for k in (0..PAGE_SIZE / 16).step_by(37) {
                            let at = PAGE_SIZE + 16 * k + 8 * t as usize;
                            z.pwrite(at as u64, &[t + 1 + (round % 7) as u8; 8]).unwrap();
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let mut out = vec![0u8; PAGE_SIZE];
        z.read_page(1, &mut out).unwrap();
        for k in (0..PAGE_SIZE / 16).step_by(37) {
            for t in 0..2u8 {
                let at = 16 * k + 8 * t as usize;
                assert_eq!(out[at..at + 8], [t + 1 + (199 % 7) as u8; 8], "a lost update at {at}");
            }
        }
        z.check().unwrap();
    }

    #[test]
    fn threads_write_and_read_their_own_pages() {
        let z = Arc::new(device(512, 1024));
        let workers: Vec<_> = (0..2)
            .map(|t| {
                let z = Arc::clone(&z);
                std::thread::spawn(move || {
                    let mut out = vec![0u8; PAGE_SIZE];
                    for round in 0..20u32 {
                        for i in (t..512).step_by(2) {
                            z.write_page(i, &page(i as u32 * 7 + round)).unwrap();
                        }
                        for i in (t..512).step_by(2) {
                            z.read_page(i, &mut out).unwrap();
                            assert_eq!(out, page(i as u32 * 7 + round));
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        z.check().unwrap();
    }
}
