"""``zsmalloc serve``: a zram device exported over NBD by nbdkit until SIGINT or SIGTERM.

nbdkit (Debian's) serves the engine's device through the plugin built from
``engine/nbdkit``, in nbdkit's parallel thread model; this command owns the
options, the sockets and the output (:mod:`zsmalloc.nbd.server` does the
work).  Under ``ZSMALLOC_BACKEND=model`` the export is still the engine's
device (the model has no nbdkit plugin), and the output says so.

The device lives as long as the command: it starts empty and its contents go
when the server stops.  By default the server listens on 127.0.0.1:10809
only; ``--socket PATH`` listens on a Unix socket (mode 0600, never reachable
with a wider mode) instead, and ``--host``/``--port`` name another TCP
address (with ``--socket``, both).  NBD has no authentication: a ``--host``
that is not a loopback address (``0.0.0.0``, ``::``, a LAN address, a host
name) exports a writable disk to the network, and is refused without
``--allow-remote``.

``--size`` is refused when the machine cannot back it: when the slot table
(16 bytes a page) does not fit in the memory available, or when what the pool
may grow to -- ``--mem-limit``, or without one half of ``--size`` (zram's 2:1,
the kernel's guidance) -- is more than the machine's memory.

Limits, with their defaults: ``--max-request`` 32M (the largest read or
write; zeroing and trimming take any length), ``--threads`` 1 request at
once per connection (more are unsafe on nbdkit before 1.33.10: a client
hanging up with replies queued aborts it; connections are served in
parallel all the same), ``--max-connections`` 16, ``--handshake-timeout``
10 s, ``--idle-timeout`` 300 s (0 turns either off).  Memory for requests is
at most threads x 64 MiB per connection (nbdkit reads a request into a
thread's buffer before its size is checked; threads x max-request for
clients that keep to the advertised maximum), replies included, and
max-connections times that for the server: 1 GiB with the defaults.

While it serves, ``kill -USR1 <pid>`` prints the live statistics: the
device's ``mm_stat`` and ``io_stat``, the server's counters and the pool's
``classes`` table; the plugin also keeps them, in the kernel's formats, in a
directory laid out like ``/sys/block/<name>`` and debugfs
``zsmalloc/<name>/classes`` (``--stats-dir``, or a temporary one).
SIGINT or SIGTERM stops it: nbdkit ends the connections, the plugin checks the
device and writes a summary, which is printed.  ``--json`` prints each of
these as one JSON object per line (``"event"``: ``listening``, ``stats``,
``summary``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import select
import signal
import socket
import sys

import click
import psutil
from rich.table import Table

import zsmalloc
from zsmalloc.cli.app import console, main
from zsmalloc.nbd import Limits, NbdServer
from zsmalloc.zram.engine import ALGORITHMS, SLOT_BYTES

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


class ByteSize(click.ParamType):
    """A byte count: ``4096``, ``64K``, ``512M``, ``1G``, ``1.5GiB`` (binary units)."""

    name = "size"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE_RE.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a size (examples: 4096, 64K, 512M, 1G)", param, ctx)
        return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _gib(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):,.1f} GiB"


def check_backable(size: int, mem_limit: int) -> None:
    """Refuse (``click.UsageError``) a device this machine cannot back, before allocating it.

    Its slot table must fit in the memory available now, and what its pool
    may grow to -- ``mem_limit``, or half of ``size`` without one (zram's
    expected 2:1) -- in the machine's memory.
    """
    memory = psutil.virtual_memory()
    table = -(-size // 4096) * SLOT_BYTES
    if table > memory.available:
        raise click.UsageError(
            f"--size {size:,} needs {_gib(table)} of slot table alone; "
            f"this machine has {_gib(memory.available)} available"
        )
    if mem_limit > memory.total:
        raise click.UsageError(
            f"--mem-limit {mem_limit:,} is more than this machine's memory ({_gib(memory.total)})"
        )
    pool = -(-size // 2)
    if not mem_limit and pool > memory.total:
        raise click.UsageError(
            f"--size {size:,} would hold about {_gib(pool)} in memory at zram's 2:1, more than this "
            f"machine's {_gib(memory.total)}; give a smaller --size, or a --mem-limit to cap the pool"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only: ``localhost`` or a loopback address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" (every interface)
        return False


def _stats_tables(report: dict) -> list[Table]:
    dev = Table(title="device (mm_stat, io_stat)", title_justify="left", show_header=False)
    dev.add_column("", justify="left")
    dev.add_column("", justify="right")
    for name, value in (*report["mm_stat"].items(), *report["io_stat"].items()):
        dev.add_row(name, f"{value:,}")
    srv = report["server"]
    nbd = Table(title="NBD server (nbdkit)", title_justify="left", show_header=False)
    nbd.add_column("", justify="left")
    nbd.add_column("", justify="right")
    nbd.add_row("connections (active)", f"{srv['connections']:,} ({srv['active']})")
    nbd.add_row(
        "closed: handshake timeout / idle", f"{srv['handshake_timeouts']:,} / {srv['idle_disconnects']:,}"
    )
    for cmd, n in sorted(srv["requests"].items()):
        nbd.add_row(cmd, f"{n:,}")
    for err, n in sorted(srv["errors"].items()):
        nbd.add_row(f"error replies {err}", f"{n:,}")
    nbd.add_row("bytes read / written", f"{srv['bytes_read']:,} / {srv['bytes_written']:,}")
    if srv["maintenance_runs"]:
        nbd.add_row(
            "maintenance runs (pages freed / migrated)",
            f"{srv['maintenance_runs']:,} ({srv['maintenance_pages_freed']:,} / "
            f"{srv['maintenance_pages_migrated']:,})",
        )
    return [dev, nbd]


def _print_stats(server: NbdServer, as_json: bool) -> None:
    """SIGUSR1: the live statistics and the classes table, fresh from the plugin."""
    try:
        report = server.stats()
    except (OSError, TimeoutError, RuntimeError, ValueError) as exc:
        click.echo(f"zsmalloc serve: no statistics: {exc}", err=True)
        return
    classes = server.read_stat(server.stat_paths()["classes"])
    if as_json:
        _emit({"event": "stats", **report, "classes": parse_classes(classes)})
        return
    for table in _stats_tables(report):
        console.print(table)
    click.echo(classes, nl=False)  # the kernel's layout, never wrapped
    sys.stdout.flush()


def parse_classes(text: str) -> list[dict[str, int]]:
    """The rows of a debugfs ``classes`` text (the Total row left out), each a dict by column."""
    lines = text.splitlines()
    names = lines[0].split()
    return [
        dict(zip(names, map(int, line.split()), strict=True))
        for line in lines[1:]
        if line.strip() and line.split()[0] != "Total"
    ]


def _print_summary(report: dict, as_json: bool) -> None:
    if as_json:
        _emit({"event": "summary", **report})
        return
    mm = report["mm_stat"]
    ratio = mm["orig_data_size"] / mm["compr_data_size"] if mm["compr_data_size"] else 0.0
    head = Table(title="zsmalloc serve: summary", show_header=False, title_justify="left")
    head.add_column("", justify="left")
    head.add_column("", justify="right")
    head.add_row("export", f"{report['export']!r}, {report['size']:,} bytes, {report['algorithm']}")
    head.add_row("served for", f"{report['uptime_s']:.1f} s")
    head.add_row("compression ratio (orig / compr)", f"{ratio:.2f}")
    head.add_row("device check", report["check"])
    console.print(head)
    for table in _stats_tables(report):
        console.print(table)


def _emit(obj: dict) -> None:
    click.echo(json.dumps(obj))
    sys.stdout.flush()


def _announce(server: NbdServer, as_json: bool) -> None:
    model = zsmalloc.backend == "model"
    note = (
        "ZSMALLOC_BACKEND=model: nbdkit serves the engine's device (the model has no nbdkit plugin)"
        if model
        else ""
    )
    if as_json:
        event = {
            "event": "listening",
            "pid": os.getpid(),
            "nbdkit_pid": server.pid,
            "addresses": server.addresses,
            "size": server.size,
            "algorithm": server.algorithm,
            "device": "engine",
        }
        if note:
            event["note"] = note
        _emit(event)
        return
    console.print(
        f"serving {server.name!r} ({server.size:,} bytes, {server.algorithm}) with nbdkit on "
        f"{', '.join(server.addresses)}; pid {os.getpid()}: SIGUSR1 prints statistics, SIGINT/SIGTERM stops",
        highlight=False,
    )
    if note:
        console.print(note, highlight=False)
    sys.stdout.flush()


def _serve(server: NbdServer, as_json: bool) -> dict:
    """Serve until SIGINT/SIGTERM (or nbdkit ends); the summary.

    The handlers only set flags: a handler runs between two bytecodes of the
    main thread, which may be inside a lock of its own (an Event's), so a
    handler that took one could deadlock it.  The C-level handler writes the
    signal to a wakeup socket, and the loop waits on that socket.
    """
    pending = {"stop": False, "usr1": False}

    def on_stop(signum: int, frame: object) -> None:
        pending["stop"] = True

    def on_usr1(signum: int, frame: object) -> None:
        pending["usr1"] = True

    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    earlier_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    try:
        # handlers first: a signal from the moment the server exists is ours, never the default action
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGUSR1, on_usr1)
        try:
            server.start()
        except FileExistsError as exc:
            raise click.ClickException(f"cannot listen: {exc}") from exc
        except OSError as exc:
            raise click.ClickException(f"cannot listen: {exc}") from exc
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc
        _announce(server, as_json)
        assert server.proc is not None
        while not pending["stop"] and server.proc.poll() is None:
            select.select([wake_r], [], [], 0.5)
            with contextlib.suppress(BlockingIOError):
                wake_r.recv(4096)
            if pending["usr1"] and not pending["stop"]:
                pending["usr1"] = False
                _print_stats(server, as_json)
        # until the process exits (the check, the summary and the interpreter's own exit are
        # still to come) SIGUSR1 does nothing: its default action would kill
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    finally:
        signal.set_wakeup_fd(earlier_fd)
        wake_r.close()
        wake_w.close()
    return server.stop()


@main.command()
@click.option("--size", required=True, type=ByteSize(), help="device size, e.g. 1G (rounded up to 4 KiB)")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default="lz4", show_default=True)
@click.option("--mem-limit", type=ByteSize(), default=0, help="cap on the pool's memory (0: none)")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), help="listen on this Unix socket")
@click.option("--host", help="TCP address to listen on [default: 127.0.0.1]")
@click.option(
    "--allow-remote",
    is_flag=True,
    help="allow a --host that is not a loopback address: NBD has no authentication, "
    "anyone who reaches it can read and write the disk",
)
@click.option("--port", type=click.IntRange(0, 65535), help="TCP port, 0 for any free one [default: 10809]")
@click.option(
    "--name",
    default="zram0",
    show_default=True,
    help="the device's and pool's name (any export name selects it)",
)
@click.option(
    "--max-request", type=ByteSize(), default="32M", show_default=True, help="largest read or write"
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="requests at once per connection (more than 1 is unsafe on nbdkit before 1.33.10)",
)
@click.option("--max-connections", type=click.IntRange(1, 1024), default=16, show_default=True)
@click.option(
    "--handshake-timeout",
    type=click.FloatRange(0, 1e6),
    default=10.0,
    show_default=True,
    help="seconds a client has to finish its handshake (0: no limit)",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(0, 1e6),
    default=300.0,
    show_default=True,
    help="seconds a connection may send nothing and drain nothing before it is closed (0: no limit)",
)
@click.option(
    "--maintain-interval",
    type=click.FloatRange(0, 1e6),
    default=0.0,
    show_default=True,
    help="compact the pool and migrate its pages this often while serving, in seconds (0: never)",
)
@click.option(
    "--stats-dir",
    type=click.Path(file_okay=False),
    help="keep the live statistics there (sys/block/<name>/..., sys/kernel/debug/zsmalloc/<name>/classes)",
)
@click.option("-v", "--verbose", is_flag=True, help="nbdkit's verbose log (connections, requests) on stderr")
@click.option("--json", "as_json", is_flag=True, help="print events and statistics as JSON lines")
def serve(
    size: int,
    algorithm: str,
    mem_limit: int,
    socket_path: str | None,
    host: str | None,
    allow_remote: bool,
    port: int | None,
    name: str,
    max_request: int,
    threads: int,
    max_connections: int,
    handshake_timeout: float,
    idle_timeout: float,
    maintain_interval: float,
    stats_dir: str | None,
    verbose: bool,
    as_json: bool,
) -> None:
    """Serve a compressed RAM disk (a zram device) over NBD with nbdkit until SIGINT or SIGTERM."""
    if host is not None and not is_loopback(host) and not allow_remote:
        raise click.BadParameter(
            f"{host!r} is not a loopback address: the disk would be writable, without authentication, "
            "by anyone who reaches it; add --allow-remote to mean it",
            param_hint="--host",
        )
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise click.BadParameter(f"{name!r}: 1 to 64 of [A-Za-z0-9_-]", param_hint="--name")
    check_backable(size, mem_limit)
    try:
        limits = Limits(
            max_request=max_request,
            threads=threads,
            max_connections=max_connections,
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
        )
        server = NbdServer(
            size,
            algorithm=algorithm,
            mem_limit=mem_limit,
            name=name,
            unix_path=socket_path,
            host=host,
            port=port,
            limits=limits,
            maintain_interval=maintain_interval,
            stats_dir=stats_dir,
            verbose=verbose,
            stderr=sys.stderr,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    report = _serve(server, as_json)
    _print_summary(report, as_json)
    if report.get("check") != "ok":
        raise SystemExit(1)
