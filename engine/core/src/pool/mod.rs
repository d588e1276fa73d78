//! The allocator (mm/zsmalloc.c): size classes, zspages, handles, fullness
//! groups (6.4's, or those before 6.4 in `legacy`), object access,
//! compaction, the deferred free, and the movable-page callbacks of each
//! migration protocol.

pub mod legacy;
pub mod migrate;
pub mod size_class;
pub mod stats;
pub mod zsmalloc;

pub use legacy::Fullness;
pub use migrate::Protocol;
pub use size_class::{build_class_table, ClassRule, ClassSpec, ClassTable};
pub use zsmalloc::{ClassRow, Mapped, ObjectRef, Pool, PoolConfig, PoolError, PoolEvents, Snapshot, Span};
