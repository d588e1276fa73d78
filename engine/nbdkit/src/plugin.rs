//! The nbdkit callbacks (`nbdkit::Server`) and the plugin's global state:
//! the configuration while nbdkit parses it, then the device, its stats
//! directory, the signal pipe (SIGUSR1: rewrite the statistics; SIGUSR2:
//! end every connection, which nbdkit waits for at its stop) and the
//! background threads.  Compiled into
//! the cdylib only: its symbols are nbdkit's, absent from a test binary.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nbdkit::{
    plugin, CacheFlags, Error as NbdError, ExtentHandle, ExtentType, Flags, FuaFlags, Result as NbdResult,
    Server, ThreadModel,
};
use zsmalloc_core::mm::memory::{PCP_BATCH, PCP_HIGH};
use zsmalloc_core::mm::{Memory, MigrateMode};
use zsmalloc_core::pool::{Pool, PoolConfig};
use zsmalloc_core::zram::{CodecSpec, Zram, ZramConfig, ZramError, PAGE_SIZE};

use crate::config::{Config, HELP};
use crate::extents::{extents, is_hole, MAX_EXTENTS, MAX_SCAN, MIN_HOLE};
use crate::stats::{Counters, Op, StatsDir};
use crate::watchdog::{close_all_connections, widen_send_buffers, Watchdog};

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);
static STATE: OnceLock<State> = OnceLock::new();
/// The write end of the signal pipe (-1: none), for the signal handler.
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

/// The server's one device and what runs beside it.
struct State {
    config: Config,
    zram: Zram,
    counters: Counters,
    started: Instant,
    stats: Option<StatsDir>,
    watchdog: Option<Watchdog>,
    /// the read end of the signal pipe
    signal_rx: i32,
    stop: (Mutex<bool>, Condvar),
    threads: Mutex<Vec<JoinHandle<()>>>,
    unloaded: AtomicBool,
}

impl State {
    /// Wait up to `d`, or until unload; whether to stop.
    fn wait_stop(&self, d: Duration) -> bool {
        let (lock, cv) = &self.stop;
        let stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (stopped, _) = cv.wait_timeout_while(stopped, d, |s| !*s).unwrap_or_else(|p| p.into_inner());
        *stopped
    }

    fn write_stats(&self) {
        if let Some(dir) = &self.stats {
            if let Err(e) = dir.write(&self.zram, &self.counters, self.started) {
                eprintln!("nbdkit-zsmalloc: writing the stats directory: {e}");
            }
        }
    }

    /// One round of what runs under the server: the pool's compaction, then
    /// the arena's (which migrates in-use pages down and gives free frames back).
    fn maintain(&self) {
        match self.zram.compact() {
            Ok(freed) => {
                self.counters.maintenance_pages_freed.fetch_add(freed, Relaxed);
            }
            Err(e) => eprintln!("nbdkit-zsmalloc: compaction: {e}"),
        }
        match self.zram.pool().memory().compact(MigrateMode::Async) {
            Ok(r) => {
                self.counters.maintenance_pages_migrated.fetch_add(r.migrate.succeeded as u64, Relaxed);
            }
            Err(e) => eprintln!("nbdkit-zsmalloc: migration: {e}"),
        }
        self.counters.maintenance_runs.fetch_add(1, Relaxed);
    }
}

fn state() -> NbdResult<&'static State> {
    STATE.get().ok_or_else(|| NbdError::new(libc::EIO, "the device is not set up"))
}

/// A callback's body with no panic leaving it: a panic is an EIO reply.
fn guard<T>(what: &str, f: impl FnOnce() -> NbdResult<T>) -> NbdResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(NbdError::new(libc::EIO, format!("{what}: internal error: {}", clean(&msg))))
        }
    }
}

/// The same for the callbacks that return nothing.
fn guard_unit(what: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        eprintln!("nbdkit-zsmalloc: {what}: internal error");
    }
}

/// A message nbdkit can take as a C string.
fn clean(msg: &str) -> String {
    msg.replace('\0', "")
}

fn zram_error(s: &State, e: ZramError) -> NbdError {
    let errno = e.errno();
    s.counters.error(errno);
    NbdError::new(errno, clean(&e.to_string()))
}

fn config_error(msg: String) -> NbdError {
    NbdError::new(libc::EINVAL, clean(&msg))
}

/// SIGUSR1: rewrite the statistics; SIGUSR2: end every connection (the stop).
extern "C" fn on_signal(signum: libc::c_int) {
    let fd = SIGNAL_FD.load(Relaxed);
    if fd >= 0 {
        let b = if signum == libc::SIGUSR2 { b'd' } else { b's' };
        // SAFETY: write(2) is async-signal-safe; the buffer is one live byte.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// A pipe whose write end the signal handler uses; (read, write).
fn signal_pipe() -> NbdResult<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok((fds[0], fds[1]))
}

/// SIGUSR1 and SIGUSR2 to `handler` (or SIG_IGN).
fn set_signals(handler: libc::sighandler_t) {
    for signum in [libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: a zeroed sigaction with a handler (or SIG_IGN) and an empty mask
        // is valid; the handler only calls write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signum, &sa, std::ptr::null_mut());
        }
    }
}

/// The device of `config`: its own arena (as large as the machine, backed
/// only where used) and pool.
fn make_device(config: &Config) -> NbdResult<Zram> {
    let frames = {
        // SAFETY: sysconf has no preconditions.
        let (pages, size) =
            unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        if pages > 0 && size > 0 {
            (pages as usize).saturating_mul(size as usize) / PAGE_SIZE
        } else {
            1 << 20
        }
    };
    let memory = Memory::new(frames, PCP_HIGH, PCP_BATCH)
        .map_err(|e| NbdError::new(libc::ENOMEM, clean(&format!("no arena: {e}"))))?
        .with_sleep_on_page_lock(true);
    let pool = Pool::new(PoolConfig::new(&config.name), Arc::new(memory), true)
        .map_err(|e| NbdError::new(libc::ENOMEM, clean(&format!("no pool: {e}"))))?;
    let mut zc = ZramConfig::new(config.size().map_err(config_error)?);
    zc.name = config.name.clone();
    zc.algorithm = CodecSpec::new(config.algorithm);
    zc.mem_limit = config.mem_limit;
    Zram::new(pool, zc).map_err(|e| NbdError::new(e.errno(), clean(&e.to_string())))
}

fn spawn(s: &'static State, name: &str, body: impl FnOnce(&'static State) + Send + 'static) -> NbdResult<()> {
    let what = name.to_string();
    let h = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || guard_unit(&what, || body(s)))
        .map_err(NbdError::from)?;
    s.threads.lock().unwrap_or_else(|p| p.into_inner()).push(h);
    Ok(())
}

/// One connection's handle: the device is the server's.
struct Handle {
    s: &'static State,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.s.counters.active.fetch_sub(1, Relaxed);
    }
}

impl Handle {
    fn run(&self, op: Op, what: &str, f: impl FnOnce(&State) -> Result<(), ZramError>) -> NbdResult<()> {
        guard(what, || {
            self.s.counters.request(op);
            f(self.s).map_err(|e| zram_error(self.s, e))
        })
    }
}

#[derive(Default)]
struct ZsmallocPlugin;

impl Server for ZsmallocPlugin {
    fn name() -> &'static str {
        "zsmalloc"
    }

    fn description() -> Option<&'static str> {
        Some("a zram device (zsmalloc-core) in RAM: compressed pages in a zsmalloc pool")
    }

    fn config_help() -> Option<&'static str> {
        Some(HELP)
    }

    fn thread_model() -> NbdResult<ThreadModel> {
        Ok(ThreadModel::Parallel)
    }

    fn config(key: &str, value: &str) -> NbdResult<()> {
        guard("config", || {
            let mut c = CONFIG.lock().unwrap_or_else(|p| p.into_inner());
            c.get_or_insert_with(Config::default).set(key, value).map_err(config_error)
        })
    }

    fn config_complete() -> NbdResult<()> {
        guard("config_complete", || {
            let c = CONFIG.lock().unwrap_or_else(|p| p.into_inner());
            c.as_ref()
                .ok_or_else(|| config_error("size=<BYTES> is required".into()))?
                .size()
                .map_err(config_error)?;
            Ok(())
        })
    }

    fn get_ready() -> NbdResult<()> {
        guard("get_ready", || {
            let config = CONFIG.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
            let zram = make_device(&config)?;
            let stats = match &config.stats_dir {
                Some(dir) => Some(StatsDir::create(dir, &config.name).map_err(|e| {
                    NbdError::new(
                        e.raw_os_error().unwrap_or(libc::EIO),
                        clean(&format!("stats-dir {}: {e}", dir.display())),
                    )
                })?),
                None => None,
            };
            let watchdog = (config.handshake_timeout.is_some() || config.idle_timeout.is_some())
                .then(|| Watchdog::new(config.handshake_timeout, config.idle_timeout));
            let (rx, tx) = signal_pipe()?;
            let s = State {
                config,
                zram,
                counters: Counters::default(),
                started: Instant::now(),
                stats,
                watchdog,
                signal_rx: rx,
                stop: (Mutex::new(false), Condvar::new()),
                threads: Mutex::new(Vec::new()),
                unloaded: AtomicBool::new(false),
            };
            s.write_stats();
            if STATE.set(s).is_err() {
                return Err(NbdError::new(libc::EIO, "get_ready ran twice"));
            }
            SIGNAL_FD.store(tx, Relaxed);
            set_signals(on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
            Ok(())
        })
    }

    fn after_fork() -> NbdResult<()> {
        guard("after_fork", || {
            let s = state()?;
            spawn(s, "zs-stats", |s| {
                while !s.wait_stop(s.config.stats_interval) {
                    s.write_stats();
                }
            })?;
            spawn(s, "zs-signals", |s| loop {
                let mut b = 0u8;
                // SAFETY: read of one byte into a live local from the pipe we own.
                let n = unsafe { libc::read(s.signal_rx, (&mut b as *mut u8).cast(), 1) };
                match (n, b) {
                    (1, b's') => s.write_stats(),
                    (1, b'd') => {
                        close_all_connections();
                    }
                    (-1, _) if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
                    _ => break,
                }
            })?;
            if let Some(every) = s.config.maintain_interval {
                spawn(s, "zs-maintain", move |s| {
                    while !s.wait_stop(every) {
                        s.maintain();
                    }
                })?;
            }
            if s.watchdog.is_some() {
                spawn(s, "zs-watchdog", |s| {
                    let Some(w) = &s.watchdog else { return };
                    while !s.wait_stop(w.tick) {
                        let (timeouts, idle) = w.sweep();
                        s.counters.handshake_timeouts.fetch_add(timeouts, Relaxed);
                        s.counters.idle_disconnects.fetch_add(idle, Relaxed);
                    }
                })?;
            }
            Ok(())
        })
    }

    fn preconnect(_readonly: bool) -> NbdResult<()> {
        guard("preconnect", || {
            if let Some(w) = &state()?.watchdog {
                w.handshake_begins();
            }
            Ok(())
        })
    }

    fn open(_readonly: bool) -> NbdResult<Box<dyn Server>> {
        guard("open", || {
            let s = state()?;
            if let Some(w) = &s.watchdog {
                w.handshake_done();
            }
            widen_send_buffers();
            s.counters.connections.fetch_add(1, Relaxed);
            s.counters.active.fetch_add(1, Relaxed);
            Ok(Box::new(Handle { s }) as Box<dyn Server>)
        })
    }

    fn unload() {
        guard_unit("unload", || {
            // from here to the exit (and after dlclose) no signal may find a handler of ours
            set_signals(libc::SIG_IGN);
            let Some(s) = STATE.get() else { return };
            if s.unloaded.swap(true, Relaxed) {
                return;
            }
            *s.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
            s.stop.1.notify_all();
            let tx = SIGNAL_FD.swap(-1, Relaxed);
            if tx >= 0 {
                let q = b'q';
                // SAFETY: one byte from a live local into the pipe we own, then its close.
                unsafe {
                    libc::write(tx, (&q as *const u8).cast(), 1);
                    libc::close(tx);
                }
            }
            for h in s.threads.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
                let _ = h.join();
            }
            let check = match s.zram.check() {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("FAILED: {e}"),
            };
            s.write_stats();
            match &s.stats {
                Some(dir) => {
                    if let Err(e) = dir.write_summary(&s.zram, &s.counters, s.started, &check) {
                        eprintln!("nbdkit-zsmalloc: writing the summary: {e}");
                    }
                }
                None => eprintln!(
                    "nbdkit-zsmalloc: summary: {}",
                    crate::stats::report(&s.zram, &s.counters, s.started, Some(&check))
                ),
            }
            if let Err(e) = s.zram.close() {
                eprintln!("nbdkit-zsmalloc: closing the device: {e}");
            }
            if let Err(e) = s.zram.pool().close() {
                eprintln!("nbdkit-zsmalloc: closing the pool: {e}");
            }
        })
    }

    // per connection (never called on the plugin type itself)

    fn get_size(&self) -> NbdResult<i64> {
        unreachable_handle()
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> NbdResult<()> {
        unreachable_handle()
    }
}

fn unreachable_handle<T>() -> NbdResult<T> {
    Err(NbdError::new(libc::EIO, "a callback on the plugin rather than a connection"))
}

impl Server for Handle {
    fn name() -> &'static str {
        "zsmalloc"
    }

    fn open(_readonly: bool) -> NbdResult<Box<dyn Server>> {
        unreachable_handle()
    }

    fn get_size(&self) -> NbdResult<i64> {
        guard("get_size", || {
            i64::try_from(self.s.zram.disksize())
                .map_err(|_| NbdError::new(libc::EFBIG, "the device is too large"))
        })
    }

    fn can_write(&self) -> NbdResult<bool> {
        Ok(true)
    }
    fn can_flush(&self) -> NbdResult<bool> {
        Ok(true)
    }
    fn can_trim(&self) -> NbdResult<bool> {
        Ok(true)
    }
    fn can_zero(&self) -> NbdResult<bool> {
        Ok(true)
    }
    fn can_fast_zero(&self) -> NbdResult<bool> {
        Ok(true)
    }
    fn can_fua(&self) -> NbdResult<FuaFlags> {
        Ok(FuaFlags::Native)
    }
    fn can_multi_conn(&self) -> NbdResult<bool> {
        Ok(true)
    }
    fn can_extents(&self) -> NbdResult<bool> {
        Ok(true)
    }
    fn can_cache(&self) -> NbdResult<CacheFlags> {
        Ok(CacheFlags::Native)
    }
    fn is_rotational(&self) -> NbdResult<bool> {
        Ok(false)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> NbdResult<()> {
        self.run(Op::Read, "pread", |s| {
            s.zram.pread(offset, buf)?;
            s.counters.bytes_read.fetch_add(buf.len() as u64, Relaxed);
            Ok(())
        })
    }

    /// FUA needs nothing more: the data is in the device when pwrite returns.
    fn write_at(&self, buf: &[u8], offset: u64, _flags: Flags) -> NbdResult<()> {
        self.run(Op::Write, "pwrite", |s| {
            s.zram.pwrite(offset, buf)?;
            s.counters.bytes_written.fetch_add(buf.len() as u64, Relaxed);
            Ok(())
        })
    }

    /// Every write is complete in RAM when it returns: nothing to flush.
    fn flush(&self) -> NbdResult<()> {
        self.run(Op::Flush, "flush", |_| Ok(()))
    }

    /// The whole pages inside the range are freed; partial pages keep their bytes (discard is a hint).
    fn trim(&self, count: u32, offset: u64, _flags: Flags) -> NbdResult<()> {
        self.run(Op::Trim, "trim", |s| {
            s.zram.check_range(offset, u64::from(count))?;
            let page = PAGE_SIZE as u64;
            let first = offset.div_ceil(page);
            let end = (offset + u64::from(count)) / page;
            if end > first {
                s.zram.discard(first as usize, (end - first) as usize)?;
            }
            Ok(())
        })
    }

    /// Zeroing frees whole pages and rewrites partial ones: always fast, so FAST_ZERO is honoured.
    fn zero(&self, count: u32, offset: u64, _flags: Flags) -> NbdResult<()> {
        self.run(Op::WriteZeroes, "zero", |s| s.zram.write_zeroes(offset, u64::from(count)))
    }

    /// Everything is in RAM already.
    fn cache(&self, count: u32, offset: u64) -> NbdResult<()> {
        self.run(Op::Cache, "cache", |s| s.zram.check_range(offset, u64::from(count)))
    }

    fn extents(&self, count: u32, offset: u64, flags: Flags, eh: &mut ExtentHandle) -> NbdResult<()> {
        guard("extents", || {
            let s = self.s;
            s.counters.request(Op::BlockStatus);
            s.zram.check_range(offset, u64::from(count)).map_err(|e| zram_error(s, e))?;
            if count == 0 {
                return Ok(());
            }
            let zram = &s.zram;
            let list = extents(
                offset,
                u64::from(count),
                flags.contains(Flags::REQ_ONE),
                MAX_EXTENTS,
                MAX_SCAN,
                MIN_HOLE,
                |i| is_hole(zram.page_state(i)),
            );
            for e in list {
                let kind = if e.hole { ExtentType::HoleZero } else { ExtentType::Allocated };
                eh.add(e.offset, e.length, kind)?;
            }
            Ok(())
        })
    }
}

plugin!(ZsmallocPlugin {
    config,
    config_complete,
    config_help,
    get_ready,
    after_fork,
    preconnect,
    thread_model,
    unload,
    write_at,
    flush,
    trim,
    zero,
    cache,
    extents,
    can_write,
    can_flush,
    can_trim,
    can_zero,
    can_fast_zero,
    can_fua,
    can_multi_conn,
    can_extents,
    can_cache,
    is_rotational
});
