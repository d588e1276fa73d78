//! zram (drivers/block/zram): a compressed RAM block device of 4 KiB pages
//! on a zsmalloc pool.
//!
//! The slot table (`zram->table[]`) is one 16-byte [`zram_drv::Slot`] per
//! page of the disk, in a lazily backed table (a page of it costs memory
//! only once written):
//!
//! ```text
//!   index  handle (u64)            flags (u32): size << 16 | LOCK | flags
//!        +-----------------------+------+---+---+---+---+---+---+-----+
//!     0  | 0                     |    0 |   |   |   |   |   |   |     |  never written / discarded
//!     1  | 0x1_0070_0002         |  642 |   |   |   |   |   |   |  0  |  lz4 object in the pool
//!     2  | 0x0000000000000000    |    0 | L | S |   |   |   |   |     |  same-filled (locked now)
//!     3  | 0x4_0070_0008         | 4096 |   |   |   | H | I |   |  0  |  huge (stored whole), idle
//!     4  | 17                    |    0 |   |   | W |   |   |   |     |  written back: block 17
//!     5  | 0x2_0070_0004         | 1210 |   |   |   |   |   |   |  1  |  recompressed (algorithm 1)
//!        +-----------------------+------+---+---+---+---+---+---+-----+
//!                                 16-28   7   0   1   2   3   4   5-6  (bit)
//!   flags: 0 SAME, 1 WB, 2 HUGE, 3 IDLE, 4 INCOMPRESSIBLE, 5-6 the algorithm's
//!   priority (0: primary), 7 the slot lock (ZRAM_LOCK)
//! ```
//!
//! The write path (`zram_write_page`): a same-filled page records its
//! word; any other is compressed into a stack buffer, stored whole when it
//! does not compress below the pool's huge class size, copied into a new
//! pool object, and only then is the slot locked, its old contents freed
//! (`zram_free_page`) and the new ones recorded.  A reader of the same page
//! sees the old page or the new one, never a mix.  The read path
//! (`zram_read_page`) holds the slot lock while it decompresses straight
//! from the pool object (`Pool::zs_obj_read_with`, the pool lock held for
//! reading, so no migration moves it meanwhile).
//!
//! Lock order: slot lock -> the pool's locks (page lock -> pool lock ->
//! class lock -> zspage lock) -> a codec's context stack, the backing
//! file's bitmap.  Post-processing (writeback, recompress, reset) takes the
//! `pp` lock before any slot lock.  The pool never calls back into the
//! device, so its migration and compaction run beside slot I/O; a thread
//! never holds two slot locks.
//!
//! Multi-page calls (`write_pages`, `read_pages`) run the whole batch in
//! one call, so a binding can release its interpreter lock once for all of
//! it; the counters a batch changes are added up and applied once at its
//! end.

pub mod backing;
pub mod codec;
pub mod lz4_kernel;
pub mod zram_drv;
pub mod zstd_lib;

pub use codec::{library_versions, Algorithm, Codec, CodecSpec, ZstdFrame, COMPRESS_BOUND, PAGE_SIZE};
pub use zram_drv::{
    BdStat, IoStat, MmStat, PageState, RecompStat, SlotView, Zram, ZramConfig, ZramError,
    ZRAM_COMP_PRIORITY_MASK, ZRAM_COMP_PRIORITY_SHIFT, ZRAM_HUGE, ZRAM_IDLE, ZRAM_INCOMPRESSIBLE,
    ZRAM_MAX_COMPS, ZRAM_SAME, ZRAM_WB,
};
