//! nbdkit-zsmalloc-plugin: a zsmalloc-core zram device served by nbdkit.
//!
//! The plugin owns the device (one for the server, shared by every
//! connection: multi-conn is consistent), the mapping of NBD commands onto
//! it, the background threads (stats, maintenance, the connection
//! watchdog) and the final check.  `zsmalloc serve` starts nbdkit with it;
//! the protocol, the sockets, the thread pool and the block-size policy are
//! nbdkit's.
//!
//! - thread model PARALLEL: the device takes per-slot locks;
//! - pread/pwrite at any offset, trim (whole pages inside the range),
//!   zero of any length (fast: zeroing frees pages), cache (a no-op: every
//!   byte is in RAM already);
//! - FUA and flush: a write is in the device when the call returns and the
//!   device is RAM, so there is nothing more to make durable; both are
//!   accepted and only order;
//! - extents for `base:allocation` (`extents.rs`);
//! - errors carry `ZramError::errno()`; no panic leaves a callback
//!   (`guard`): it becomes EIO.

pub mod config;
pub mod extents;
pub mod stats;
pub mod watchdog;

#[cfg(not(test))]
mod plugin;
