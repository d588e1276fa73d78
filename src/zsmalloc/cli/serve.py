"""``zsmalloc serve``: a zram device exported over NBD until SIGINT or SIGTERM.

The device lives as long as the command: it starts empty and its contents go
when the server stops.  By default the server listens on 127.0.0.1:10809
only; ``--socket PATH`` listens on a Unix socket (mode 0600) instead, and
``--host``/``--port`` name another TCP address (with ``--socket``, both).
NBD has no authentication: a ``--host`` that is not a loopback address
(``0.0.0.0``, ``::``, a LAN address, a host name) exports a writable disk to
the network, and is refused without ``--allow-remote``.

``--size`` is refused when the machine cannot back it: when the slot table
(11 bytes a page) does not fit in the memory available, or when what the pool
may grow to -- ``--mem-limit``, or without one half of ``--size`` (zram's 2:1,
the kernel's guidance) -- is more than the machine's memory.

While it serves, ``kill -USR1 <pid>`` prints the live statistics: the
device's ``mm_stat`` and ``io_stat``, the server's counters and the pool's
``classes`` table.  SIGINT or SIGTERM stops it: no new connection is
accepted, requests in flight are answered, the device is checked
(``ZramDevice.check``) and a summary is printed.  ``--json`` prints each of
these as one JSON object per line (``"event"``: ``listening``, ``stats``,
``summary``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import signal
import sys
import time

import click
import psutil
from rich.table import Table

from zsmalloc.cli.app import console, main
from zsmalloc.errors import CorruptionError
from zsmalloc.mm.heap import fix_mmap_threshold
from zsmalloc.nbd import Limits, NbdServer
from zsmalloc.zram import SLOT_BYTES, ZramDevice, available_codecs

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


def _report(server: NbdServer, started: float) -> dict:
    dev = server.device
    return {
        "export": server.name,
        "addresses": server.addresses,
        "size": dev.disksize,
        "algorithm": dev.algorithm,
        "uptime_s": round(time.monotonic() - started, 3),
        "mm_stat": dev.mm_stat().to_dict(),
        "io_stat": dev.io_stat().to_dict(),
        "server": server.snapshot(),
    }


def _stats_tables(report: dict) -> list[Table]:
    dev = Table(title="device (mm_stat, io_stat)", title_justify="left", show_header=False)
    dev.add_column("", justify="left")
    dev.add_column("", justify="right")
    for name, value in (*report["mm_stat"].items(), *report["io_stat"].items()):
        dev.add_row(name, f"{value:,}")
    srv = report["server"]
    nbd = Table(title="NBD server", title_justify="left", show_header=False)
    nbd.add_column("", justify="left")
    nbd.add_column("", justify="right")
    nbd.add_row("connections (active)", f"{srv['connections']:,} ({srv['active']})")
    nbd.add_row("refused / hard disconnects", f"{srv['refused']:,} / {srv['hard_disconnects']:,}")
    for cmd, n in sorted(srv["requests"].items()):
        nbd.add_row(cmd, f"{n:,}")
    for err, n in sorted(srv["errors"].items()):
        nbd.add_row(f"error replies {err}", f"{n:,}")
    nbd.add_row("bytes read / written", f"{srv['bytes_read']:,} / {srv['bytes_written']:,}")
    return [dev, nbd]


def _print_stats(server: NbdServer, started: float, as_json: bool) -> None:
    """SIGUSR1: the live statistics and the classes table."""
    report = _report(server, started)
    classes = server.device.pool.class_stats()
    if as_json:
        report["classes"] = [c.to_dict() for c in classes]
        _emit({"event": "stats", **report})
        return
    for table in _stats_tables(report):
        console.print(table)
    click.echo(server.device.pool.format_classes(), nl=False)  # the kernel's layout, never wrapped
    sys.stdout.flush()


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


async def _serve(
    server: NbdServer, socket_path: str | None, host: str | None, port: int | None, as_json: bool
) -> dict:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    started = time.monotonic()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _print_stats, server, started, as_json)
    try:
        try:
            if socket_path is not None:
                await server.listen_unix(socket_path)
            if socket_path is None or host is not None or port is not None:
                await server.listen_tcp(host or "127.0.0.1", 10809 if port is None else port)
        except OSError as exc:
            await server.close()
            raise click.ClickException(f"cannot listen: {exc}") from exc
        if as_json:
            pid = os.getpid()
            _emit({"event": "listening", "pid": pid, "addresses": server.addresses, "size": server.size})
        else:
            console.print(
                f"serving {server.name!r} ({server.size:,} bytes, {server.device.algorithm}) on "
                f"{', '.join(server.addresses)}; pid {os.getpid()}: SIGUSR1 prints statistics, "
                "SIGINT/SIGTERM stops",
                highlight=False,
            )
            sys.stdout.flush()
        await stop.wait()
        await server.close()
        return _report(server, started)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        # until the process exits (the device check, the summary and the interpreter's
        # own exit are still to come), SIGUSR1 must not take its default action, which kills
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


@main.command()
@click.option("--size", required=True, type=ByteSize(), help="device size, e.g. 1G (rounded up to 4 KiB)")
@click.option("--algorithm", type=click.Choice(available_codecs()), default="lz4", show_default=True)
@click.option("--mem-limit", type=ByteSize(), default=0, help="cap on the pool's memory (0: none)")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), help="listen on this Unix socket")
@click.option("--host", help="TCP address to listen on [default: 127.0.0.1]")
@click.option(
    "--allow-remote",
    is_flag=True,
    help="allow a --host that is not a loopback address: NBD has no authentication, "
    "anyone who reaches it can read and write the disk",
)
@click.option("--port", type=click.IntRange(0, 65535), help="TCP port [default: 10809]")
@click.option("--name", default="zram0", show_default=True, help='export name ("" selects it too)')
@click.option("--max-request", type=ByteSize(), default="32M", show_default=True, help="largest request")
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=4,
    show_default=True,
    help="threads for requests longer than --inline-max; 0: every request on the event loop",
)
@click.option(
    "--inline-max",
    type=ByteSize(),
    default="1M",
    show_default=True,
    help="requests up to this size make their device calls on the event loop (faster under the GIL)",
)
@click.option("--max-connections", type=click.IntRange(1, 1024), default=16, show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="log connections and protocol errors to stderr")
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
    workers: int,
    inline_max: int,
    max_connections: int,
    verbose: bool,
    as_json: bool,
) -> None:
    """Serve a compressed RAM disk (a zram device) over NBD until SIGINT or SIGTERM."""
    if host is not None and not is_loopback(host) and not allow_remote:
        raise click.BadParameter(
            f"{host!r} is not a loopback address: the disk would be writable, without authentication, "
            "by anyone who reaches it; add --allow-remote to mean it",
            param_hint="--host",
        )
    check_backable(size, mem_limit)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        limits = Limits(
            max_request=max_request,
            max_inflight_bytes=max(2 * max_request, Limits.max_inflight_bytes),
            max_connections=max_connections,
        )
        fix_mmap_threshold()  # read replies are big transient buffers: give them back when sent
        device = ZramDevice(size, algorithm=algorithm, mem_limit=mem_limit)
        server = NbdServer(device, name=name, limits=limits, workers=workers, inline_max=inline_max)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except MemoryError as exc:
        raise click.ClickException(f"out of memory making a device of {size:,} bytes") from exc
    try:
        report = asyncio.run(_serve(server, socket_path, host, port, as_json))
        try:
            device.check()
            report["check"] = "ok"
        except CorruptionError as exc:
            report["check"] = f"FAILED: {exc}"
        _print_summary(report, as_json)
    finally:
        device.close()
    if report["check"] != "ok":
        raise SystemExit(1)
