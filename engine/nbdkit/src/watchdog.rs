//! The connection limits nbdkit 1.32 does not have: a bounded handshake, and
//! an idle limit, so that clients that connect and say nothing (or stop
//! reading) cannot hold the connection slots of `nbdkit-limit-filter`
//! forever (issue 10, item 7); and the connections' send buffers
//! (`widen_send_buffers`), the other thing done to nbdkit's sockets from
//! outside.
//!
//! nbdkit gives a plugin no handle on a connection's socket, and its reads
//! retry on EAGAIN (a receive timeout would spin), so the watchdog watches
//! the server's threads from the outside, in `/proc/self/task`:
//!
//! - a thread blocked in `read`/`recvfrom`/`write`/`sendto` on a connected
//!   stream socket is waiting on that connection (`syscall` names the call
//!   and the descriptor);
//! - while its voluntary context switch count stays the same, it has not
//!   woken: nothing arrived, nothing drained;
//! - a connection is idle when one of its threads waited on it for
//!   `idle-timeout`, and over its handshake deadline when the thread that
//!   called `.preconnect` has not reached `.open` within `handshake-timeout`
//!   and is waiting on its socket.
//!
//! Either is ended with `shutdown(fd, SHUT_RDWR)`: nbdkit's next read sees
//! end of file and closes the connection the ordinary way.  Before the
//! shutdown the descriptor's inode is checked again, so a descriptor closed
//! and reused meanwhile is left alone but for a window of microseconds.

use std::collections::HashMap;
use std::fs;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One thread's blocking call, from `/proc/self/task/<tid>/syscall`:
/// the call's number and its first argument.
pub fn parse_syscall(line: &str) -> Option<(i64, i64)> {
    let mut it = line.split_ascii_whitespace();
    let nr: i64 = it.next()?.parse().ok()?;
    let arg0 = it.next()?.strip_prefix("0x")?;
    Some((nr, i64::from_str_radix(arg0, 16).ok()?))
}

/// Whether `nr` moves bytes through a descriptor given as its first argument.
pub fn is_socket_io(nr: i64) -> bool {
    [libc::SYS_read, libc::SYS_write, libc::SYS_recvfrom, libc::SYS_sendto].contains(&nr)
}

/// `voluntary_ctxt_switches` from a `/proc/.../status` text.
pub fn parse_nvcsw(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
}

/// What a thread was waiting on at the last look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Wait {
    fd: i32,
    ino: u64,
    nvcsw: u64,
    since: Instant,
}

/// Why a connection is to be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    HandshakeTimeout,
    Idle,
}

/// The decision, apart from `/proc`: given what a thread waits on now, the
/// last look, and when its handshake began (if it is in one).
pub struct Tracker {
    handshake: Option<Duration>,
    idle: Option<Duration>,
    waits: HashMap<i32, Wait>,
}

impl Tracker {
    pub fn new(handshake: Option<Duration>, idle: Option<Duration>) -> Tracker {
        Tracker { handshake, idle, waits: HashMap::new() }
    }

    /// Thread `tid` waits on socket `(fd, ino)` with `nvcsw` switches so far, at `now`.
    pub fn observe(
        &mut self,
        tid: i32,
        fd: i32,
        ino: u64,
        nvcsw: u64,
        handshake_began: Option<Instant>,
        now: Instant,
    ) -> Verdict {
        let same = |w: &Wait| w.fd == fd && w.ino == ino && w.nvcsw == nvcsw;
        let w = match self.waits.get(&tid) {
            Some(w) if same(w) => *w,
            _ => {
                let w = Wait { fd, ino, nvcsw, since: now };
                self.waits.insert(tid, w);
                w
            }
        };
        if let (Some(limit), Some(began)) = (self.handshake, handshake_began) {
            if now.duration_since(began) >= limit {
                self.waits.remove(&tid);
                return Verdict::HandshakeTimeout;
            }
        }
        if let Some(limit) = self.idle {
            if now.duration_since(w.since) >= limit {
                self.waits.remove(&tid);
                return Verdict::Idle;
            }
        }
        Verdict::Keep
    }

    /// The thread is not waiting on a socket (or is gone).
    pub fn forget(&mut self, tid: i32) {
        self.waits.remove(&tid);
    }

    pub fn tids(&self) -> Vec<i32> {
        self.waits.keys().copied().collect()
    }
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// `(inode)` of `fd` if it is a connected (not listening) stream socket.
fn connected_socket(fd: i32) -> Option<u64> {
    // SAFETY: all-zero bytes are a valid `struct stat` (plain integers).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the stat buffer we own; a bad fd gives -1.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    (sockopt(fd, libc::SO_TYPE)? == libc::SOCK_STREAM && sockopt(fd, libc::SO_ACCEPTCONN)? == 0)
        .then_some(st.st_ino)
}

/// An integer `SOL_SOCKET` option of `fd`.
fn sockopt(fd: i32, name: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, which is that large.
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, name, (&mut v as *mut libc::c_int).cast(), &mut len)
    };
    (r == 0).then_some(v)
}

/// The process's descriptors, from `/proc/self/fd`.
fn descriptors() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else { return Vec::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// What a connection's socket may hold of replies not yet read by the
/// client (`SO_SNDBUF`; the kernel doubles it and caps it at
/// `net.core.wmem_max`).
pub const SEND_BUFFER: libc::c_int = 1 << 20;

/// Raise the send buffer of every connected Unix stream socket of the process
/// that has less than `SEND_BUFFER` (`.open` calls it: nbdkit gives a plugin
/// no handle on the connection's socket).  An accepted Unix socket starts
/// with `net.core.wmem_default` (208 KiB), less than a 256 KiB read reply:
/// nbdkit, serving a connection's requests one at a time, then waits in
/// every such reply until the client has read part of it.  TCP sockets are
/// left to the kernel's autotuning, which a fixed size would turn off.
/// Returns how many were raised.
pub fn widen_send_buffers() -> usize {
    let mut widened = 0;
    for fd in descriptors() {
        let unix = sockopt(fd, libc::SO_DOMAIN) == Some(libc::AF_UNIX);
        if unix
            && connected_socket(fd).is_some()
            && sockopt(fd, libc::SO_SNDBUF).is_some_and(|v| v < SEND_BUFFER)
        {
            let v = SEND_BUFFER;
            let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: setsockopt reads `len` bytes from `v`, an int of that size;
            // a descriptor closed meanwhile gives -1 and is skipped.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&v as *const libc::c_int).cast(),
                    len,
                )
            };
            widened += usize::from(r == 0);
        }
    }
    widened
}

/// `shutdown(SHUT_RDWR)` of every connected stream socket of the process: at
/// the server's stop, nbdkit waits for its connections to end, and an idle
/// client would never end its own.  Returns how many.
pub fn close_all_connections() -> u64 {
    let mut closed = 0;
    for fd in descriptors() {
        if connected_socket(fd).is_some() {
            // SAFETY: shutdown of a connected socket closes no descriptor; nbdkit
            // sees end of file and closes the connection itself.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            closed += 1;
        }
    }
    closed
}

/// The watchdog's shared state: threads in their handshake, and the tracker.
pub struct Watchdog {
    pub tick: Duration,
    handshakes: Mutex<HashMap<i32, Instant>>,
    tracker: Mutex<Tracker>,
}

impl Watchdog {
    pub fn new(handshake: Option<Duration>, idle: Option<Duration>) -> Watchdog {
        let shortest = [handshake, idle].into_iter().flatten().min().unwrap_or(Duration::from_secs(1));
        Watchdog {
            tick: (shortest / 5).clamp(Duration::from_millis(20), Duration::from_millis(500)),
            handshakes: Mutex::new(HashMap::new()),
            tracker: Mutex::new(Tracker::new(handshake, idle)),
        }
    }

    /// `.preconnect`, on the connection's thread: its handshake begins.
    pub fn handshake_begins(&self) {
        self.handshakes.lock().unwrap_or_else(|p| p.into_inner()).insert(gettid(), Instant::now());
    }

    /// `.open`, on the same thread: the handshake is done.
    pub fn handshake_done(&self) {
        self.handshakes.lock().unwrap_or_else(|p| p.into_inner()).remove(&gettid());
    }

    /// One look at every thread; the verdicts carried out.  Returns (handshake timeouts, idle closes).
    pub fn sweep(&self) -> (u64, u64) {
        let now = Instant::now();
        let Ok(dir) = fs::read_dir("/proc/self/task") else { return (0, 0) };
        let tids: Vec<i32> = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
        let mut handshakes = self.handshakes.lock().unwrap_or_else(|p| p.into_inner());
        handshakes.retain(|tid, _| tids.contains(tid));
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        for gone in tracker.tids().into_iter().filter(|t| !tids.contains(t)) {
            tracker.forget(gone);
        }
        let (mut timeouts, mut idle) = (0, 0);
        for tid in tids {
            let task = format!("/proc/self/task/{tid}");
            let waiting = fs::read_to_string(format!("{task}/syscall"))
                .ok()
                .and_then(|l| parse_syscall(&l))
                .filter(|&(nr, _)| is_socket_io(nr))
                .and_then(|(_, fd)| i32::try_from(fd).ok())
                .and_then(|fd| Some((fd, connected_socket(fd)?)));
            let nvcsw = fs::read_to_string(format!("{task}/status")).ok().and_then(|s| parse_nvcsw(&s));
            let (Some((fd, ino)), Some(nvcsw)) = (waiting, nvcsw) else {
                tracker.forget(tid);
                continue;
            };
            let verdict = tracker.observe(tid, fd, ino, nvcsw, handshakes.get(&tid).copied(), now);
            if verdict != Verdict::Keep && connected_socket(fd) == Some(ino) {
                // SAFETY: shutdown on a descriptor we just checked is the same
                // socket; it closes nothing, nbdkit still owns and closes the fd.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                match verdict {
                    Verdict::HandshakeTimeout => {
                        handshakes.remove(&tid);
                        timeouts += 1
                    }
                    _ => idle += 1,
                }
            }
        }
        (timeouts, idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_lines() {
        assert_eq!(parse_syscall("0 0x5 0x55591658dfd0 0x2000 0x1000 0x0 0x0 0x7ffc 0x7f"), Some((0, 5)));
        assert_eq!(parse_syscall("45 0x1f 0x7f75 0xa 0x0 0x0 0x0 0x7f 0x7f"), Some((45, 31)));
        assert_eq!(parse_syscall("running"), None);
        assert_eq!(parse_syscall("-1 0x7ffc 0x7f"), Some((-1, 0x7ffc))); // blocked outside a call
        assert!(!is_socket_io(-1));
        assert!(is_socket_io(libc::SYS_read) && is_socket_io(libc::SYS_sendto));
        assert!(!is_socket_io(libc::SYS_futex));
    }

    #[test]
    fn status_switches() {
        assert_eq!(
            parse_nvcsw("Name:\tx\nvoluntary_ctxt_switches:\t42\nnonvoluntary_ctxt_switches:\t3\n"),
            Some(42)
        );
        assert_eq!(parse_nvcsw("Name:\tx\n"), None);
    }

    #[test]
    fn a_wait_that_never_wakes_is_idle() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut tr = Tracker::new(None, Some(3 * s));
        assert_eq!(tr.observe(7, 5, 99, 10, None, t0), Verdict::Keep);
        assert_eq!(tr.observe(7, 5, 99, 10, None, t0 + 2 * s), Verdict::Keep);
        assert_eq!(tr.observe(7, 5, 99, 10, None, t0 + 3 * s), Verdict::Idle);
    }

    #[test]
    fn a_wakeup_or_another_socket_restarts_the_clock() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut tr = Tracker::new(None, Some(3 * s));
        tr.observe(7, 5, 99, 10, None, t0);
        assert_eq!(tr.observe(7, 5, 99, 11, None, t0 + 2 * s), Verdict::Keep); // woke: bytes moved
        assert_eq!(tr.observe(7, 5, 99, 11, None, t0 + 4 * s), Verdict::Keep);
        assert_eq!(tr.observe(7, 5, 100, 11, None, t0 + 6 * s), Verdict::Keep); // the fd was reused
        assert_eq!(tr.observe(7, 5, 100, 11, None, t0 + 9 * s), Verdict::Idle);
    }

    #[test]
    fn the_handshake_deadline_holds_even_for_a_trickling_client() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut tr = Tracker::new(Some(5 * s), Some(3 * s));
        for i in 0..5 {
            assert_eq!(tr.observe(7, 5, 99, i, Some(t0), t0 + s * i as u32), Verdict::Keep);
        }
        assert_eq!(tr.observe(7, 5, 99, 6, Some(t0), t0 + 5 * s), Verdict::HandshakeTimeout);
    }

    #[test]
    fn unix_send_buffers_are_widened_and_tcp_ones_left_alone() {
        use std::os::fd::AsRawFd;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let sndbuf = |fd: i32| sockopt(fd, libc::SO_SNDBUF).unwrap();
        let (unix_before, tcp_before) = (sndbuf(a.as_raw_fd()), sndbuf(tcp.as_raw_fd()));
        assert!(unix_before < SEND_BUFFER, "{unix_before}");
        assert!(widen_send_buffers() >= 2);
        // the kernel doubles the request, capped at net.core.wmem_max
        assert!(sndbuf(a.as_raw_fd()) > unix_before && sndbuf(b.as_raw_fd()) > unix_before);
        assert_eq!(sndbuf(tcp.as_raw_fd()), tcp_before);
    }
}
