"""The NBD export as a child process: Debian's nbdkit serving the engine's plugin.

This module owns what ``zsmalloc serve`` and :class:`NbdServer` do around
nbdkit: the listening sockets, nbdkit's command line, its start and stop, and
reading the statistics its plugin (``engine/nbdkit``) writes.  The protocol,
the connections and the request threads are nbdkit's; the device and its
counters are the plugin's.

The sockets are made here and handed to nbdkit by socket activation
(``LISTEN_FDS``), so that the rules on them are ours:

- a Unix socket is bound in a private directory (mode 0700) with umask 177,
  and renamed onto its path only then: nobody but the owner can connect at
  any moment;
- a path where another server answers is refused, and so is a path that is
  not a socket; a stale socket (nobody answers) is replaced;
- at the end the socket is removed only while the path is still ours;
- a TCP port 0 is bound here, and the port the kernel chose is reported.

The limits (:class:`Limits`) map onto nbdkit's own means: ``-t`` threads
per connection, ``nbdkit-limit-filter`` for connections,
``nbdkit-blocksize-policy-filter`` for the largest request, and the
plugin's watchdog for the handshake and idle time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from zsmalloc.zram.engine import ALGORITHMS

#: nbdkit's own ceiling on a read or write (MAX_REQUEST_SIZE): a request up to
#: it is read into a thread's buffer before any filter sees it
NBDKIT_MAX_REQUEST = 64 << 20
PLUGIN_NAME = "nbdkit-zsmalloc-plugin.so"
#: ``ZSMALLOC_NBDKIT_PLUGIN=/path/to/plugin.so`` overrides where the plugin is looked for
PLUGIN_ENV = "ZSMALLOC_NBDKIT_PLUGIN"


@dataclass(frozen=True)
class Limits:
    """What one client, and all of them, may hold of the server.

    - ``max_request``: the largest read or write advertised (block size
      maximum) and accepted; larger ones are answered EINVAL.  Zeroing and
      trimming take any length within the export.
    - ``threads``: requests served at once per connection (nbdkit ``-t``).
      The default is 1: nbdkit before 1.33.10 (Debian bookworm has 1.32)
      aborts, ending every connection, when a client hangs up while replies
      of two of its requests are queued (nbdkit commit 9d82aa4f); several
      connections are still served in parallel.
    - ``max_connections``: connections past their handshake at once
      (``nbdkit-limit-filter``); later ones are refused.
    - ``handshake_timeout``: seconds from accept to the end of the handshake.
    - ``idle_timeout``: seconds a connection may go with nothing arriving and
      nothing drained (a client that neither asks nor reads its replies).

    Memory: nbdkit reads a request into a buffer per request thread, before
    the size policy sees it, so a connection holds at most
    ``threads * 64 MiB`` (nbdkit's own ceiling; ``threads * max_request`` for
    a client that keeps to the advertised maximum; 64 MiB and 32 MiB with
    the defaults), replies included (a read is answered from the same
    buffer), and the server at most ``max_connections`` times that
    (:meth:`memory_bound`: 1 GiB with the defaults).  Connections still
    in their handshake hold no request buffer.
    """

    max_request: int = 32 << 20
    threads: int = 1
    max_connections: int = 16
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0

    def __post_init__(self) -> None:
        if not 4096 <= self.max_request <= NBDKIT_MAX_REQUEST:
            raise ValueError(f"max_request must be within 4 KiB..64 MiB, not {self.max_request}")
        if not 1 <= self.threads <= 64:
            raise ValueError(f"threads must be within 1..64, not {self.threads}")
        if not 1 <= self.max_connections <= 1024:
            raise ValueError(f"max_connections must be within 1..1024, not {self.max_connections}")
        for name in ("handshake_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not 0 <= value <= 1e6:  # also refuses nan
                raise ValueError(f"{name} must be a number of seconds within 0..1e6 (0: none), not {value}")

    def memory_bound(self) -> tuple[int, int]:
        """(per connection, whole server) bytes of request buffers at most."""
        per_connection = self.threads * NBDKIT_MAX_REQUEST
        return per_connection, per_connection * self.max_connections


#: the first nbdkit that survives a client hanging up with replies queued on several threads
SAFE_THREADS_VERSION = (1, 33, 10)


def nbdkit_version() -> tuple[int, ...]:
    """``nbdkit --version`` as numbers, e.g. (1, 32, 5)."""
    out = subprocess.run(
        ["nbdkit", "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    if m is None:
        raise RuntimeError(f"cannot read nbdkit's version from {out!r}")
    return tuple(int(g) for g in m.groups())


def plugin_path() -> Path:
    """The plugin nbdkit loads: ``$ZSMALLOC_NBDKIT_PLUGIN``, or the one ``make`` put beside this module."""
    override = os.environ.get(PLUGIN_ENV)
    path = Path(override) if override else Path(__file__).with_name(PLUGIN_NAME)
    if not path.is_file():
        raise FileNotFoundError(
            errno.ENOENT,
            f"the nbdkit plugin is not built (make .venv/.engine builds it), or {PLUGIN_ENV} names no file",
            str(path),
        )
    return path


def refuse_live_socket(path: str) -> None:
    """FileExistsError if ``path`` is a socket another server answers on, or no socket at all."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return  # stale: nobody listens there any more
    raise FileExistsError(errno.EEXIST, "another server listens on this socket", path)


def listen_unix(path: str) -> tuple[socket.socket, tuple[int, int]]:
    """A listening Unix socket at ``path`` that only its owner can reach; it and its (st_dev, st_ino)."""
    refuse_live_socket(path)
    private = tempfile.mkdtemp(prefix=".zsmalloc-nbd-", dir=os.path.dirname(os.path.abspath(path)))
    bound = os.path.join(private, "socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(bound)  # born 0600 (umask 177) in a 0700 directory
        sock.listen(128)
        os.rename(bound, path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(bound)
        os.rmdir(private)
    st = os.lstat(path)
    return sock, (st.st_dev, st.st_ino)


def listen_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _tcp_uri(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"nbd://{shown}:{port}"


class NbdServer:
    """A zram device of ``size`` bytes exported by an nbdkit child process (a context manager).

    ::

        with NbdServer(1 << 30, unix_path="/tmp/zram.sock") as srv:
            ...   # nbdcopy disk.img "nbd+unix:///?socket=/tmp/zram.sock"
            print(srv.stats()["mm_stat"])
        print(srv.summary["check"])   # "ok"

    Without ``unix_path`` it listens on ``host``:``port`` (127.0.0.1:10809);
    with it, on TCP too only when ``host`` or ``port`` is given.  The device
    lives in nbdkit: :meth:`stats` and :meth:`read_stat` read what the plugin
    writes to its stats directory, :meth:`stop` ends the server and returns
    the final summary (the device's check included).
    """

    def __init__(
        self,
        size: int,
        *,
        algorithm: str = "lz4",
        mem_limit: int = 0,
        name: str = "zram0",
        unix_path: str | os.PathLike[str] | None = None,
        host: str | None = None,
        port: int | None = None,
        limits: Limits | None = None,
        maintain_interval: float = 0.0,
        stats_interval: float = 1.0,
        stats_dir: str | os.PathLike[str] | None = None,
        verbose: bool = False,
        stderr: IO[str] | int | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, not {size}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, not {algorithm!r}")
        if mem_limit < 0:
            raise ValueError(f"mem_limit must be >= 0 bytes (0: none), not {mem_limit}")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ValueError(f"name must be 1 to 64 of [A-Za-z0-9_-], not {name!r}")
        for what, value in (("maintain_interval", maintain_interval), ("stats_interval", stats_interval)):
            if not 0 <= value <= 1e6:
                raise ValueError(f"{what} must be a number of seconds within 0..1e6, not {value}")
        if stats_interval == 0:
            raise ValueError("stats_interval must be more than 0 seconds")
        self.size = size
        self.algorithm = algorithm
        self.mem_limit = mem_limit
        self.name = name
        self.unix_path = os.fspath(unix_path) if unix_path is not None else None
        self.host = host
        self.port = port
        self.limits = limits or Limits()
        self.maintain_interval = maintain_interval
        self.stats_interval = stats_interval
        self.verbose = verbose
        self.stderr = stderr
        self._own_stats_dir = stats_dir is None
        self.stats_dir = Path(stats_dir) if stats_dir is not None else None
        self.addresses: list[str] = []
        self.summary: dict[str, Any] | None = None
        self.proc: subprocess.Popen[str] | None = None
        self._ours: tuple[int, int] | None = None  # (st_dev, st_ino) of our Unix socket

    # ------------------------------------------------------------------
    # life cycle

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the server is not running")
        return self.proc.pid

    @property
    def socket_path(self) -> str | None:
        return self.unix_path

    def command(self, plugin: Path, stats_dir: Path) -> list[str]:
        """nbdkit's command line (the sockets come by socket activation)."""
        lim = self.limits
        cmd = ["nbdkit", "--foreground", "--exit-with-parent", "--log=stderr", "-t", str(lim.threads)]
        cmd += ["--filter=limit", "--filter=blocksize-policy"]
        if self.verbose:
            cmd.append("--verbose")
        cmd += [
            str(plugin),
            f"size={self.size}",
            f"algorithm={self.algorithm}",
            f"mem-limit={self.mem_limit}",
            f"name={self.name}",
            f"stats-dir={stats_dir}",
            f"stats-interval={self.stats_interval}",
            f"maintain-interval={self.maintain_interval}",
            f"handshake-timeout={lim.handshake_timeout}",
            f"idle-timeout={lim.idle_timeout}",
            f"limit={lim.max_connections}",
            "blocksize-minimum=1",
            "blocksize-preferred=4096",
            f"blocksize-maximum={lim.max_request}",
            "blocksize-error-policy=error",
        ]
        return cmd

    def start(self, timeout: float = 30.0) -> NbdServer:
        """Listen, start nbdkit on the sockets, and return once the device is ready."""
        if self.proc is not None:
            raise RuntimeError("the server is already running")
        nbdkit, bash = shutil.which("nbdkit"), shutil.which("bash")
        if nbdkit is None or bash is None:
            raise FileNotFoundError(
                errno.ENOENT, "nbdkit (Debian: apt install nbdkit) and bash are needed", "nbdkit"
            )
        plugin = plugin_path()
        if self.limits.threads > 1 and nbdkit_version() < SAFE_THREADS_VERSION:
            warnings.warn(
                f"threads={self.limits.threads} on nbdkit {'.'.join(map(str, nbdkit_version()))}: a client "
                "hanging up with replies queued aborts nbdkit before 1.33.10 (every connection ends)",
                RuntimeWarning,
                stacklevel=2,
            )
        socks: list[socket.socket] = []
        try:
            if self.unix_path is not None:
                sock, self._ours = listen_unix(self.unix_path)
                socks.append(sock)
                self.addresses.append(f"nbd+unix:///?socket={self.unix_path}")
            if self.unix_path is None or self.host is not None or self.port is not None:
                sock = listen_tcp(self.host or "127.0.0.1", 10809 if self.port is None else self.port)
                socks.append(sock)
                self.addresses.append(_tcp_uri(sock))
            if self.stats_dir is None:
                self.stats_dir = Path(tempfile.mkdtemp(prefix="zsmalloc-nbd-stats-"))
            else:  # a directory of the caller's: what an earlier server left there must not be read as ours
                self.stats_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                for stale in ("generation", "summary.json", "nbd.json"):
                    with contextlib.suppress(FileNotFoundError):
                        (self.stats_dir / stale).unlink()
            self._spawn(bash, plugin, socks)
        except BaseException:
            self._remove_socket()
            self._drop_stats_dir()
            raise
        finally:
            for sock in socks:
                sock.close()  # nbdkit has its own copies
        self._wait_ready(timeout)
        return self

    def _spawn(self, bash: str, plugin: Path, socks: list[socket.socket]) -> None:
        # nbdkit takes activated sockets from fd 3 on, and only when LISTEN_PID is its pid:
        # bash moves them there and execs nbdkit in its own process
        fds = [socket_fd(s) for s in socks]
        moves = " ".join(f"{3 + i}<&{fd} {fd}<&-" for i, fd in enumerate(fds))
        script = f'export LISTEN_PID=$$ LISTEN_FDS={len(fds)}; exec "$@" {moves}'
        assert self.stats_dir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        # nbdkit's messages go to a file (never a pipe nobody reads, which would stall it when full)
        log = open(self.stats_dir / "nbdkit.log", "w", encoding="utf-8")  # noqa: SIM115 (closed below)
        try:
            self.proc = subprocess.Popen(
                [bash, "-c", script, "nbdkit", *self.command(plugin, self.stats_dir)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self.stderr if self.stderr is not None else log,
                text=True,
                env=env,
            )
        finally:
            log.close()  # nbdkit has its own descriptor
            for fd in fds:
                os.close(fd)

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None and self.stats_dir is not None
        marker = self.stats_dir / "generation"
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if self.proc.poll() is not None:
                err = self._log()
                self.proc = None
                self._remove_socket()
                self._drop_stats_dir()
                raise RuntimeError(f"nbdkit did not start: {err or 'see its output'}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"nbdkit did not set up the device within {timeout} s")
            time.sleep(0.01)

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """Stop nbdkit: connections end, the plugin checks the device; the summary (``.summary``).

        SIGTERM stops nbdkit's accepting, SIGUSR2 has the plugin end the
        connections (nbdkit waits for them, idle ones included), and nbdkit
        then unloads the plugin, which checks the device and writes
        ``summary.json``.
        """
        if self.proc is None:
            return self.summary or {}
        proc, self.proc = self.proc, None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # nbdkit accepts no more connections ...
        deadline = time.monotonic() + timeout
        while True:
            # ... and waits for those it has: SIGUSR2 has the plugin end them (again, for
            # one accepted before the SIGTERM was seen)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR2)
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    break
        self._remove_socket()
        assert self.stats_dir is not None
        try:
            self.summary = json.loads((self.stats_dir / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            err = self._log()
            self.summary = {"check": f"FAILED: nbdkit ended ({proc.returncode}) without a summary: {err}"}
        self.summary["exit_status"] = proc.returncode
        self._drop_stats_dir()
        return self.summary

    def _log(self) -> str:
        """The end of nbdkit's messages (when they went to the stats directory's ``nbdkit.log``)."""
        if self.stats_dir is None:
            return ""
        try:
            return (
                (self.stats_dir / "nbdkit.log").read_text(encoding="utf-8", errors="replace")[-4000:].strip()
            )
        except OSError:
            return ""

    def _remove_socket(self) -> None:
        if self.unix_path is None or self._ours is None:
            return
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.unix_path)
            if (st.st_dev, st.st_ino) == self._ours:  # still ours, not a later server's
                os.unlink(self.unix_path)
        self._ours = None

    def _drop_stats_dir(self) -> None:
        if self._own_stats_dir and self.stats_dir is not None:
            shutil.rmtree(self.stats_dir, ignore_errors=True)
            self.stats_dir = None

    def __enter__(self) -> NbdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------
    # statistics

    def refresh(self, timeout: float = 5.0) -> None:
        """Have the plugin rewrite its stats directory now (SIGUSR1), and wait until it has."""
        if self.proc is None or self.stats_dir is None:
            raise RuntimeError("the server is not running")
        before = self._generation()
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while self._generation() == before:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError("the plugin did not rewrite its statistics")
            time.sleep(0.005)

    def _generation(self) -> int:
        assert self.stats_dir is not None
        try:
            return int((self.stats_dir / "generation").read_text(encoding="ascii") or 0)
        except (OSError, ValueError):
            return 0

    def stats(self, fresh: bool = True) -> dict[str, Any]:
        """The device's ``mm_stat``/``io_stat``/``bd_stat`` and the server's counters, from the plugin."""
        if fresh:
            self.refresh()
        assert self.stats_dir is not None
        report: dict[str, Any] = json.loads((self.stats_dir / "nbd.json").read_text(encoding="utf-8"))
        report["addresses"] = list(self.addresses)
        return report

    def read_stat(self, relpath: str) -> str:
        """A file of the stats directory, e.g. ``sys/block/zram0/mm_stat`` (see :func:`stat_paths`)."""
        if self.stats_dir is None:
            raise RuntimeError("the server is not running")
        return (self.stats_dir / relpath).read_text(encoding="utf-8")

    def stat_paths(self) -> dict[str, str]:
        """The kernel-format files: ``/sys/block/<name>/...`` and the debugfs ``classes``, by role."""
        block = f"sys/block/{self.name}"
        return {
            "mm_stat": f"{block}/mm_stat",
            "io_stat": f"{block}/io_stat",
            "bd_stat": f"{block}/bd_stat",
            "disksize": f"{block}/disksize",
            "comp_algorithm": f"{block}/comp_algorithm",
            "classes": f"sys/kernel/debug/zsmalloc/{self.name}/classes",
        }


def socket_fd(sock: socket.socket) -> int:
    """A duplicate of ``sock``'s descriptor above 9 (bash moves it onto 3, 4, ...)."""
    return fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)


#: the name programs embedding a server used: it runs nbdkit now, not a thread
ServerThread = NbdServer
