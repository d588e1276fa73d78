//! The synchronisation primitives of the core, in one place: parking_lot's
//! locks and std's atomics in a normal build, loom's under `--cfg loom`, so
//! that the loom models in `tests/loom.rs` explore the engine's own code.
//!
//! Every module of the core takes its locks and atomics from here, never from
//! `std::sync` or `parking_lot` directly.
//!
//! ```text
//!                normal build                     --cfg loom
//!   Mutex        parking_lot::Mutex               loom::sync::Mutex, parking_lot's API
//!   RwLock       parking_lot::RwLock              loom::sync::RwLock, parking_lot's API
//!   Condvar      parking_lot::Condvar             loom::sync::Condvar, parking_lot's API;
//!                                                 wait_until does not time out
//!   Atomic*      std::sync::atomic                loom::sync::atomic
//!   thread       std::thread                      loom::thread
//!   Arc, Weak    std::sync                        std::sync (not modelled: refcounts of
//!                                                 the shared structures, not a protocol)
//!   ArenaWord    std AtomicU64                    std AtomicU64 (raw arena memory)
//! ```
//!
//! Under loom the lock newtypes give parking_lot's shape (`lock()`, `read()`
//! and `write()` return the guard itself; a `Condvar` waits on `&mut guard`),
//! so no caller changes with the cfg.  A timed wait is an untimed one under
//! loom: the model has no clock, and every wait in a model must be woken by
//! another thread (a missing wake-up is then reported as a deadlock, which is
//! what we want to find).
//!
//! The in-page words of the arena (object headers, free links) are raw
//! memory reinterpreted as atomics: they are `ArenaWord`, std's `AtomicU64` in
//! both builds, invisible to loom; the locks that order them are modelled.

#[cfg(not(loom))]
pub use parking_lot::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(not(loom))]
pub use std::thread;

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicI32, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};
#[cfg(loom)]
pub use loom::thread;
#[cfg(loom)]
pub use loom_locks::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use std::sync::atomic::Ordering;
pub use std::sync::{Arc, Weak};

/// One 8-byte word of arena memory used atomically (object headers): std's
/// `AtomicU64` in every build, since it lives in the mmap'd arena.
pub type ArenaWord = std::sync::atomic::AtomicU64;

/// loom's std-shaped locks behind parking_lot's API.
#[cfg(loom)]
mod loom_locks {
    use std::ops::{Deref, DerefMut};
    use std::time::Instant;

    /// A mutex with parking_lot's API over `loom::sync::Mutex`.
    #[derive(Debug, Default)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);

    /// The guard of [`Mutex`]; it holds loom's guard in an Option so that a
    /// [`Condvar`] can wait on `&mut guard` (it takes the guard out and puts
    /// the relocked one back).
    pub struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

    impl<T> Mutex<T> {
        pub fn new(value: T) -> Mutex<T> {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub fn lock(&self) -> MutexGuard<'_, T> {
            // no poisoning in parking_lot; a panic ends the loom execution anyway
            MutexGuard(Some(self.0.lock().unwrap_or_else(|e| e.into_inner())))
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0.as_ref().expect("guard held")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0.as_mut().expect("guard held")
        }
    }

    /// A reader/writer lock with parking_lot's API over `loom::sync::RwLock`.
    #[derive(Debug, Default)]
    pub struct RwLock<T>(loom::sync::RwLock<T>);

    pub struct RwLockReadGuard<'a, T>(loom::sync::RwLockReadGuard<'a, T>);
    pub struct RwLockWriteGuard<'a, T>(loom::sync::RwLockWriteGuard<'a, T>);

    impl<T> RwLock<T> {
        pub fn new(value: T) -> RwLock<T> {
            RwLock(loom::sync::RwLock::new(value))
        }

        pub fn read(&self) -> RwLockReadGuard<'_, T> {
            RwLockReadGuard(self.0.read().unwrap_or_else(|e| e.into_inner()))
        }

        pub fn write(&self) -> RwLockWriteGuard<'_, T> {
            RwLockWriteGuard(self.0.write().unwrap_or_else(|e| e.into_inner()))
        }
    }

    impl<T> Deref for RwLockReadGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.0
        }
    }

    impl<T> Deref for RwLockWriteGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.0
        }
    }

    impl<T> DerefMut for RwLockWriteGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            &mut self.0
        }
    }

    /// What a timed wait returns; under loom a wait never times out.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct WaitTimeoutResult(bool);

    impl WaitTimeoutResult {
        pub fn timed_out(&self) -> bool {
            self.0
        }
    }

    /// A condition variable with parking_lot's API over `loom::sync::Condvar`.
    #[derive(Debug, Default)]
    pub struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub fn new() -> Condvar {
            Condvar(loom::sync::Condvar::new())
        }

        pub fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let inner = guard.0.take().expect("guard held");
            guard.0 = Some(self.0.wait(inner).unwrap_or_else(|e| e.into_inner()));
        }

        /// Untimed under loom: the model has no clock (see the module docs).
        pub fn wait_until<T>(&self, guard: &mut MutexGuard<'_, T>, _deadline: Instant) -> WaitTimeoutResult {
            self.wait(guard);
            WaitTimeoutResult(false)
        }

        pub fn notify_one(&self) {
            self.0.notify_one();
        }

        pub fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}
