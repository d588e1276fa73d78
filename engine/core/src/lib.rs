//! zsmalloc-core: the Linux kernel's zsmalloc allocator and the VM it lives
//! in, on real memory, with no Python in it.
//!
//! ```text
//!   store  a value of any size in and out of pool objects (zsmalloc.Store's codec)
//!   zram   the block device (drivers/block/zram): slots, codecs, writeback,
//!     |    recompression, the stats
//!   pool   the allocator (mm/zsmalloc.c): classes, zspages, handles,
//!     |    fullness groups, object access, compaction, deferred free
//!   mm     the VM: frames in one arena, page descriptors, page locks,
//!          the page allocator
//! ```
//!
//! Nothing below knows what is above it: `mm` never sees `pool`, `pool`
//! never sees `zram` or `store`.  All take their locks and atomics from `sync`: parking_lot and std normally, loom under `--cfg loom`.

pub mod fragsim;
mod lz4;
pub mod mm;
pub mod pool;
pub mod store;
pub mod sync;
pub mod zram;
