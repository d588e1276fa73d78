"""The NBD server: one :class:`~zsmalloc.zram.ZramDevice` exported over fixed-newstyle NBD (asyncio).

This module owns the listening sockets, the handshake of each connection
(option haggling), its transmission phase, the thread pool that runs the
device's calls, the per-connection limits and the server's counters.  The
wire formats are in :mod:`zsmalloc.nbd.protocol`.

What it speaks
--------------
Handshake: NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_EXPORT_NAME, NBD_OPT_LIST,
NBD_OPT_ABORT and NBD_OPT_STRUCTURED_REPLY; every other option is answered
NBD_REP_ERR_UNSUP (TLS, metadata contexts and extended headers are not
implemented).  There is one export, the device; it is listed under its name,
and the empty (default) name selects it too.  NBD_INFO_BLOCK_SIZE is always
sent: minimum 1, preferred 4096 (the device's page), maximum
``Limits.max_request``.

Transmission: NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_FLUSH, NBD_CMD_TRIM,
NBD_CMD_WRITE_ZEROES (with NBD_CMD_FLAG_NO_HOLE) and NBD_CMD_DISC.  Flags:
HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES,
CAN_MULTI_CONN, and SEND_DF once structured replies are negotiated.  A
request's effect is in the device (in memory, visible to every connection)
before its reply is sent, so FUA and FLUSH need no further work and several
connections may share the export (CAN_MULTI_CONN).  With structured replies,
a read is answered by NBD_REPLY_TYPE_OFFSET_DATA chunks for data and
NBD_REPLY_TYPE_OFFSET_HOLE chunks for all-zero stretches (split at page
boundaries; one data chunk under NBD_CMD_FLAG_DF), the last flagged
NBD_REPLY_FLAG_DONE; errors are NBD_REPLY_TYPE_ERROR chunks with a message.
NBD_CMD_TRIM frees the whole pages in its range (a partial page is left
alone, as the protocol allows); NBD_CMD_WRITE_ZEROES frees whole pages and
zeroes partial ones, or with NO_HOLE stores zero pages (same-filled slots).

Concurrency and memory
----------------------
One asyncio task per connection reads requests in order; each valid request
becomes a task that makes its device call and writes its reply when done,
so replies may come out of order, as the protocol allows.  A request of up
to ``inline_max`` bytes (1 MiB) makes its device call on the event loop; a
longer one in the server's thread pool (``workers`` threads), so that it is
served concurrently with the others and does not hold them up.  The device
is thread-safe per slot.

Why not the pool for every request: under the GIL the threads add little
parallelism (only the codecs' C calls run outside it) and cost a hand-off
per request, plus a wait for the GIL each time a codec call gives it up
while the loop holds it.  Measured with nbdcopy (256 KiB requests) on a
kernel-build image, device calls on the loop copied in about 2x faster and
out about 1.9x faster than with every call in a pool of 4 threads, and
random 4 KiB I/O through libnbd was 2.5x faster.  ``workers=0`` runs every
call on the loop.

A connection holds at most ``max_inflight_requests`` requests and
``max_inflight_bytes`` of write payloads and read results at once (one
request of any allowed size always fits); past that it stops reading from
its socket until replies have been sent, so a client that never reads its
replies stalls only itself.

Bad input
---------
Every request is checked before the device sees it: command, flags, offset
and length against the export size and ``max_request`` (TRIM and
WRITE_ZEROES carry no payload and may cover any length within the export).  A bad request is
answered with the protocol's error (NBD_EINVAL, NBD_ENOSPC for writes past
the end) and the connection goes on.  What cannot be answered in step is a
hard disconnect of that connection only: a wrong magic number, an unknown
client flag, an option longer than 64 KiB, a write payload larger than
``max_request``, an unknown name in NBD_OPT_EXPORT_NAME, a handshake that
takes longer than ``handshake_timeout`` or sends more than ``max_options``
options.  A write is applied only once its whole payload has arrived, so a
client that disconnects in the middle of one changes nothing.  A device error
becomes an error reply (NBD_ENOSPC when ``mem_limit`` is reached, NBD_EIO
when a page cannot be read back); an unexpected exception is logged with its
traceback and answered NBD_EIO.  The server itself never stops on a client's
account.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar, TypeVarTuple

from zsmalloc.errors import PoolClosedError
from zsmalloc.nbd import protocol as p
from zsmalloc.zram import InvalidIOError, ZramDevice, ZramFullError, ZramIOError
from zsmalloc.zram.device import PAGE_SIZE

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

#: the longest option data accepted in the handshake; longer is a hard disconnect
MAX_OPTION_DATA = 64 << 10
_ZERO_PAGE = bytes(PAGE_SIZE)
_ZERO_CHUNK = memoryview(bytes(1 << 20))  # the source of NO_HOLE zero writes

_ERROR_NAMES = {
    p.NBD_EPERM: "NBD_EPERM",
    p.NBD_EIO: "NBD_EIO",
    p.NBD_ENOMEM: "NBD_ENOMEM",
    p.NBD_EINVAL: "NBD_EINVAL",
    p.NBD_ENOSPC: "NBD_ENOSPC",
    p.NBD_EOVERFLOW: "NBD_EOVERFLOW",
    p.NBD_ENOTSUP: "NBD_ENOTSUP",
    p.NBD_ESHUTDOWN: "NBD_ESHUTDOWN",
}
# the command flags each command accepts (FUA is valid on all of them once advertised)
_ALLOWED_FLAGS = {
    p.NBD_CMD_READ: p.NBD_CMD_FLAG_FUA,
    p.NBD_CMD_WRITE: p.NBD_CMD_FLAG_FUA,
    p.NBD_CMD_FLUSH: p.NBD_CMD_FLAG_FUA,
    p.NBD_CMD_TRIM: p.NBD_CMD_FLAG_FUA,
    p.NBD_CMD_WRITE_ZEROES: p.NBD_CMD_FLAG_FUA | p.NBD_CMD_FLAG_NO_HOLE,
}


@dataclass(frozen=True)
class Limits:
    """What one client may ask of the server."""

    #: the largest NBD_CMD_READ, NBD_CMD_WRITE or NBD_CMD_WRITE_ZEROES (NBD_INFO_BLOCK_SIZE maximum)
    max_request: int = 32 << 20
    #: requests a connection may have in flight
    max_inflight_requests: int = 64
    #: write payloads and read results a connection may hold at once
    max_inflight_bytes: int = 64 << 20
    #: connections served at once; more are closed on arrival (with max_inflight_bytes: a memory bound)
    max_connections: int = 16
    #: options one handshake may send
    max_options: int = 64
    #: seconds a handshake may take
    handshake_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not PAGE_SIZE <= self.max_request <= 1 << 31:
            raise ValueError(f"max_request must be within {PAGE_SIZE}..{1 << 31}, not {self.max_request}")
        if self.max_inflight_bytes < self.max_request:
            raise ValueError("max_inflight_bytes must be at least max_request")
        for name in ("max_inflight_requests", "max_connections", "max_options"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")


@dataclass
class ServerStats:
    """The server's counters (changed only on the event loop's thread)."""

    connections: int = 0  # accepted since the start
    active: int = 0  # connected now
    refused: int = 0  # closed on arrival: max_connections reached
    hard_disconnects: int = 0  # connections closed for a protocol violation
    requests: Counter = field(default_factory=Counter)  # by command name
    errors: Counter = field(default_factory=Counter)  # error replies by error name
    bytes_read: int = 0
    bytes_written: int = 0  # NBD_CMD_WRITE payload bytes stored
    inflight_bytes_max: int = 0  # the most bytes one connection held at once

    def to_dict(self) -> dict:
        return {
            "connections": self.connections,
            "active": self.active,
            "refused": self.refused,
            "hard_disconnects": self.hard_disconnects,
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "inflight_bytes_max": self.inflight_bytes_max,
        }


class _HardDisconnect(Exception):
    """The client broke the protocol in a way that cannot be answered: close its connection."""


class _RequestError(Exception):
    """A request the device must not see: answered with ``error`` and ``message``."""

    def __init__(self, error: int, message: str) -> None:
        super().__init__(message)
        self.error = error


def nbd_error(exc: BaseException) -> int:
    """The NBD error value for an exception raised by a device call."""
    if isinstance(exc, ZramFullError):
        return p.NBD_ENOSPC
    if isinstance(exc, InvalidIOError):
        return p.NBD_EINVAL
    if isinstance(exc, PoolClosedError):
        return p.NBD_ESHUTDOWN
    return p.NBD_EIO


class NbdServer:
    """Serve ``device`` over NBD: ``await listen_unix(path)`` / ``await listen_tcp(host, port)``, then
    ``await close()``.

    ``name`` is the export's name (the empty name selects it as well),
    ``description`` its NBD_INFO_DESCRIPTION; ``workers`` threads run the
    device's calls for requests longer than ``inline_max`` bytes, the event
    loop those up to it (all of them with ``workers=0``).  The server
    does not own the device: closing the server leaves it open.  All methods
    but :meth:`snapshot` run on the event loop.
    """

    def __init__(
        self,
        device: ZramDevice,
        name: str | None = None,
        description: str = "",
        *,
        limits: Limits | None = None,
        workers: int = 4,
        inline_max: int = 1 << 20,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be at least 0, not {workers}")
        self.device = device
        self.name = device.name if name is None else name
        self.description = description
        for what, text in (("name", self.name), ("description", description)):
            if len(text.encode()) > p.NBD_MAX_STRING or "\0" in text:
                raise ValueError(f"the export {what} must be at most {p.NBD_MAX_STRING} bytes, without NUL")
        self.limits = limits or Limits()
        self.inline_max = inline_max
        self.size = device.disksize
        self.stats = ServerStats()
        self.addresses: list[str] = []  # NBD URIs of the listening sockets
        self._executor = (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nbd-io") if workers else None
        )
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[tuple[str, int, int]] = []  # (path, st_dev, st_ino) of our sockets
        self._connections: dict[asyncio.Task, _Connection] = {}
        self._closing = False

    # ------------------------------------------------------------------
    # listening

    async def listen_unix(self, path: str | os.PathLike[str]) -> str:
        """Listen on a Unix socket that no other user can connect to at any moment; return its URI.

        The socket is bound in a private directory (mode 0700) beside ``path``,
        set to mode 0600 there, and only then renamed onto ``path``: it is
        never reachable with the umask's mode.  A path where another server
        answers is refused (FileExistsError), and so is a path that is not a
        socket; a stale socket (nobody answers) is replaced.  ``close()``
        removes the socket only while ``path`` is still this one.
        """
        path = os.fspath(path)
        _refuse_live_socket(path)
        private = tempfile.mkdtemp(prefix=".zsmalloc-nbd-", dir=os.path.dirname(os.path.abspath(path)))
        bound = os.path.join(private, "socket")
        try:
            server = await asyncio.start_unix_server(self._accept, bound)
            try:
                os.chmod(bound, 0o600)
                os.rename(bound, path)
            except OSError:
                server.close()
                raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(bound)
            os.rmdir(private)
        st = os.lstat(path)
        self._servers.append(server)
        self._unix_paths.append((path, st.st_dev, st.st_ino))
        uri = f"nbd+unix:///?socket={path}"
        self.addresses.append(uri)
        log.info("listening on %s", uri)
        return uri

    async def listen_tcp(self, host: str = "127.0.0.1", port: int = 10809) -> tuple[str, int]:
        """Listen on TCP ``host``:``port`` (0: any free port); return the address bound."""
        server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()[:2]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        uri = f"nbd://{shown}:{bound[1]}"
        self.addresses.append(uri)
        log.info("listening on %s", uri)
        return bound[0], bound[1]

    async def close(self, timeout: float = 10.0) -> None:
        """Stop listening, let every connection finish its requests in flight, then close them."""
        self._closing = True
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        for path, dev, ino in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):  # still ours, not a later server's
                    os.unlink(path)
        tasks = list(self._connections)
        for conn in self._connections.values():
            conn.stop()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def snapshot(self) -> dict:
        """The server's counters, as a dict (call on the event loop's thread)."""
        return self.stats.to_dict()

    # ------------------------------------------------------------------

    def transmission_flags(self, structured: bool) -> int:
        """The transmission flags of the export for a connection (SEND_DF only with structured replies)."""
        flags = (
            p.NBD_FLAG_HAS_FLAGS
            | p.NBD_FLAG_SEND_FLUSH
            | p.NBD_FLAG_SEND_FUA
            | p.NBD_FLAG_SEND_TRIM
            | p.NBD_FLAG_SEND_WRITE_ZEROES
            | p.NBD_FLAG_CAN_MULTI_CONN
        )
        return flags | p.NBD_FLAG_SEND_DF if structured else flags

    def export_matches(self, name: bytes) -> bool:
        """Whether ``name`` (as sent) selects the export: its name, or the empty default name."""
        return name in (b"", self.name.encode())

    async def device_call(self, length: int, fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        """Run a device call for a request of ``length`` bytes: on the event loop, or in the pool.

        Requests of at most ``inline_max`` bytes (all of them with ``workers=0``)
        run on the loop; longer ones in the thread pool, so that they do not
        hold up the other requests while they run.
        """
        if self._executor is None or length <= self.inline_max:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats = self.stats
        if self._closing or len(self._connections) >= self.limits.max_connections:
            stats.refused += 1
            log.warning("refusing a connection: %d connections already", len(self._connections))
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(self, reader, writer)
        self._connections[task] = conn
        stats.connections += 1
        stats.active += 1
        try:
            await conn.run()
        finally:
            stats.active -= 1
            del self._connections[task]


class _Connection:
    """One client: its handshake, then its requests, each served by its own task."""

    def __init__(self, server: NbdServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.limits = server.limits
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = str(peer) if peer else "unix socket client"
        self.structured = False
        self._tasks: set[asyncio.Task] = set()
        self._inflight = 0
        self._inflight_bytes = 0
        self._freed = asyncio.Event()
        self._task = asyncio.current_task()
        self._reading = True
        self._stopping = False

    def stop(self) -> None:
        """Server shutdown: read no further request (those in flight are still answered)."""
        self._stopping = True
        if self._reading and self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        try:
            async with asyncio.timeout(self.limits.handshake_timeout):
                go = await self._handshake()
            if go:
                log.info("%s: transmission (structured replies: %s)", self.peer, self.structured)
                await self._transmission()
        except _HardDisconnect as exc:
            self.server.stats.hard_disconnects += 1
            log.warning("%s: closing the connection: %s", self.peer, exc)
        except TimeoutError:
            self.server.stats.hard_disconnects += 1
            log.warning("%s: closing the connection: handshake not done in time", self.peer)
        except asyncio.IncompleteReadError:
            log.info("%s: the client went away in the middle of a message", self.peer)
        except ConnectionError as exc:
            log.info("%s: connection lost: %s", self.peer, exc)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            log.info("%s: closing the connection: the server shuts down", self.peer)
        finally:
            self._reading = False
            if self._tasks:
                await asyncio.wait(self._tasks)
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()

    async def _read(self, n: int) -> bytes:
        return await self.reader.readexactly(n) if n else b""

    async def _send(self, *parts: bytes | memoryview) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.writer.writelines(parts)
        await self.writer.drain()

    # ------------------------------------------------------------------
    # handshake

    async def _handshake(self) -> bool:
        """Option haggling; True to enter transmission, False when the client ends the session."""
        flags = p.NBD_FLAG_FIXED_NEWSTYLE | p.NBD_FLAG_NO_ZEROES
        await self._send(p.HANDSHAKE.pack(p.NBDMAGIC, p.IHAVEOPT, flags))
        (client_flags,) = p.CLIENT_FLAGS.unpack(await self._read(p.CLIENT_FLAGS.size))
        if client_flags & ~(p.NBD_FLAG_C_FIXED_NEWSTYLE | p.NBD_FLAG_C_NO_ZEROES):
            raise _HardDisconnect(f"unknown client flags {client_flags:#x}")
        no_zeroes = bool(client_flags & p.NBD_FLAG_C_NO_ZEROES)
        for _ in range(self.limits.max_options):
            try:
                header = await self._read(p.OPTION_HEADER.size)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
                return False  # the client hung up between options
            magic, option, length = p.OPTION_HEADER.unpack(header)
            if magic != p.IHAVEOPT:
                raise _HardDisconnect(f"bad option magic {magic:#x}")
            if length > MAX_OPTION_DATA:
                raise _HardDisconnect(f"option {option} with {length} bytes of data")
            data = await self._read(length)
            name = p.OPTION_NAMES.get(option, f"option {option}")
            log.debug("%s: %s, %d bytes", self.peer, name, length)
            if option == p.NBD_OPT_EXPORT_NAME:
                if not self.server.export_matches(data):
                    raise _HardDisconnect(f"NBD_OPT_EXPORT_NAME of unknown export {data[:64]!r}")
                tflags = self.server.transmission_flags(self.structured)
                reply = p.EXPORT_NAME_REPLY.pack(self.server.size, tflags)
                await self._send(reply if no_zeroes else reply + bytes(p.EXPORT_NAME_PADDING))
                return True
            if option == p.NBD_OPT_ABORT:
                await self._send(p.option_reply(option, p.NBD_REP_ACK))
                return False
            if option == p.NBD_OPT_LIST:
                await self._opt_list(data)
            elif option in (p.NBD_OPT_INFO, p.NBD_OPT_GO):
                if await self._opt_info(option, data) and option == p.NBD_OPT_GO:
                    return True
            elif option == p.NBD_OPT_STRUCTURED_REPLY:
                if data:
                    await self._opt_error(option, p.NBD_REP_ERR_INVALID, f"{name} takes no data")
                else:
                    self.structured = True
                    await self._send(p.option_reply(option, p.NBD_REP_ACK))
            else:
                await self._opt_error(option, p.NBD_REP_ERR_UNSUP, f"{name} is not supported")
        raise _HardDisconnect(f"more than {self.limits.max_options} options")

    async def _opt_error(self, option: int, reply_type: int, message: str) -> None:
        await self._send(p.option_reply(option, reply_type, message.encode()))

    async def _opt_list(self, data: bytes) -> None:
        if data:
            await self._opt_error(p.NBD_OPT_LIST, p.NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
            return
        name = self.server.name.encode()
        entry = p.U32.pack(len(name)) + name + self.server.description.encode()
        opt = p.NBD_OPT_LIST
        await self._send(p.option_reply(opt, p.NBD_REP_SERVER, entry), p.option_reply(opt, p.NBD_REP_ACK))

    async def _opt_info(self, option: int, data: bytes) -> bool:
        """NBD_OPT_INFO or NBD_OPT_GO: the NBD_REP_INFO replies and NBD_REP_ACK; False after an error."""
        invalid = "the name length, name and information requests do not add up to the option length"
        if len(data) < 6:
            await self._opt_error(option, p.NBD_REP_ERR_INVALID, invalid)
            return False
        (name_len,) = p.U32.unpack_from(data)
        if name_len > len(data) - 6:
            await self._opt_error(option, p.NBD_REP_ERR_INVALID, invalid)
            return False
        name = data[4 : 4 + name_len]
        (n_info,) = p.U16.unpack_from(data, 4 + name_len)
        if len(data) != 6 + name_len + 2 * n_info:
            await self._opt_error(option, p.NBD_REP_ERR_INVALID, invalid)
            return False
        wanted = set(struct.unpack_from(f">{n_info}H", data, 6 + name_len))
        server = self.server
        if not server.export_matches(name):
            await self._opt_error(option, p.NBD_REP_ERR_UNKNOWN, f"no export named {name[:64]!r}")
            return False
        replies = [
            p.INFO_EXPORT.pack(p.NBD_INFO_EXPORT, server.size, server.transmission_flags(self.structured)),
            p.INFO_BLOCK_SIZE.pack(p.NBD_INFO_BLOCK_SIZE, 1, PAGE_SIZE, self.limits.max_request),
        ]
        if p.NBD_INFO_NAME in wanted:
            replies.append(p.U16.pack(p.NBD_INFO_NAME) + server.name.encode())
        if p.NBD_INFO_DESCRIPTION in wanted and server.description:
            replies.append(p.U16.pack(p.NBD_INFO_DESCRIPTION) + server.description.encode())
        infos = [p.option_reply(option, p.NBD_REP_INFO, r) for r in replies]
        await self._send(*infos, p.option_reply(option, p.NBD_REP_ACK))
        return True

    # ------------------------------------------------------------------
    # transmission

    async def _transmission(self) -> None:
        stats = self.server.stats
        max_request = self.limits.max_request
        while True:
            try:
                header = await self._read(p.REQUEST.size)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
                log.info("%s: the client closed the connection", self.peer)
                return
            magic, flags, cmd, cookie, offset, length = p.REQUEST.unpack(header)
            if magic != p.NBD_REQUEST_MAGIC:
                raise _HardDisconnect(f"bad request magic {magic:#x}")
            req = p.Request(flags, cmd, cookie, offset, length)
            stats.requests[p.COMMAND_NAMES.get(cmd, f"command {cmd}")] += 1
            if cmd == p.NBD_CMD_DISC:
                log.info("%s: NBD_CMD_DISC", self.peer)
                return
            if cmd == p.NBD_CMD_WRITE and length > max_request:
                raise _HardDisconnect(f"NBD_CMD_WRITE of {length} bytes (maximum {max_request})")
            cost = length if cmd in (p.NBD_CMD_READ, p.NBD_CMD_WRITE) and length <= max_request else 0
            await self._acquire(cost)
            try:
                payload = await self._read(length) if cmd == p.NBD_CMD_WRITE else b""
                self._check(req)
            except _RequestError as exc:
                await self._reply_error(req, exc.error, str(exc))
                self._release(cost)
                continue
            except BaseException:
                self._release(cost)
                raise
            task = asyncio.create_task(self._serve(req, payload, cost))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _acquire(self, cost: int) -> None:
        """Wait for room in this connection's budget of requests and bytes in flight."""
        limits = self.limits
        while self._inflight and (
            self._inflight >= limits.max_inflight_requests
            or self._inflight_bytes + cost > limits.max_inflight_bytes
        ):
            self._freed.clear()
            await self._freed.wait()
        self._inflight += 1
        self._inflight_bytes += cost
        stats = self.server.stats
        stats.inflight_bytes_max = max(stats.inflight_bytes_max, self._inflight_bytes)

    def _release(self, cost: int) -> None:
        self._inflight -= 1
        self._inflight_bytes -= cost
        self._freed.set()

    def _check(self, req: p.Request) -> None:
        """Raise :class:`_RequestError` unless the device may serve ``req`` as it is."""
        cmd, flags, offset, length = req.type, req.flags, req.offset, req.length
        name = p.COMMAND_NAMES.get(cmd, f"command {cmd}")
        if cmd not in _ALLOWED_FLAGS:
            raise _RequestError(p.NBD_EINVAL, f"{name} is not supported")
        allowed = _ALLOWED_FLAGS[cmd]
        if cmd == p.NBD_CMD_READ and self.structured:
            allowed |= p.NBD_CMD_FLAG_DF
        if flags & ~allowed:
            raise _RequestError(p.NBD_EINVAL, f"{name} with unsupported flags {flags & ~allowed:#x}")
        if cmd == p.NBD_CMD_FLUSH:
            if offset or length:
                raise _RequestError(p.NBD_EINVAL, "NBD_CMD_FLUSH with a nonzero offset or length")
            return
        # TRIM and WRITE_ZEROES carry no payload and cost nothing per byte: any length in the export
        if cmd not in (p.NBD_CMD_TRIM, p.NBD_CMD_WRITE_ZEROES) and length > self.limits.max_request:
            raise _RequestError(p.NBD_EINVAL, f"{name} of {length} bytes (maximum {self.limits.max_request})")
        if offset + length > self.server.size:
            error = p.NBD_ENOSPC if cmd in (p.NBD_CMD_WRITE, p.NBD_CMD_WRITE_ZEROES) else p.NBD_EINVAL
            where = f"[{offset}, {offset + length})"
            raise _RequestError(error, f"{name} of {where} is outside the export (size {self.server.size})")

    async def _serve(self, req: p.Request, payload: bytes, cost: int) -> None:
        server, stats = self.server, self.server.stats
        cmd = req.type
        try:
            try:
                if cmd == p.NBD_CMD_READ:
                    parts = await server.device_call(req.length, self._read_reply, req)
                    stats.bytes_read += req.length
                elif cmd == p.NBD_CMD_FLUSH:
                    parts = [p.simple_reply(req.cookie)]  # every write replied to is in the device already
                else:
                    await server.device_call(req.length, self._apply, req, payload)
                    if cmd == p.NBD_CMD_WRITE:
                        stats.bytes_written += req.length
                    parts = [p.simple_reply(req.cookie)]
            except Exception as exc:
                error = nbd_error(exc)
                if error == p.NBD_EIO and not isinstance(exc, ZramIOError):
                    log.exception("%s: %s failed", self.peer, p.COMMAND_NAMES[cmd])
                else:
                    log.warning("%s: %s failed: %s", self.peer, p.COMMAND_NAMES[cmd], exc)
                await self._reply_error(req, error, str(exc))
            else:
                await self._send(*parts)
        except ConnectionError:
            pass  # the client is gone; the connection's task notices on its next read
        finally:
            self._release(cost)

    async def _reply_error(self, req: p.Request, error: int, message: str) -> None:
        self.server.stats.errors[_ERROR_NAMES.get(error, str(error))] += 1
        log.debug("%s: %s: %s", self.peer, _ERROR_NAMES.get(error), message)
        if self.structured:
            await self._send(p.error_chunk(req.cookie, error, message))
        else:
            await self._send(p.simple_reply(req.cookie, error))

    # ------------------------------------------------------------------
    # device calls (in the thread pool)

    def _apply(self, req: p.Request, payload: bytes) -> None:
        """NBD_CMD_WRITE, NBD_CMD_TRIM or NBD_CMD_WRITE_ZEROES on the device."""
        dev, offset, length = self.server.device, req.offset, req.length
        if req.type == p.NBD_CMD_WRITE:
            dev.pwrite(offset, payload)
        elif req.type == p.NBD_CMD_TRIM:
            first = -(-offset // PAGE_SIZE)  # whole pages only
            end = (offset + length) // PAGE_SIZE
            if end > first:
                dev.discard(first, end - first)
        elif req.flags & p.NBD_CMD_FLAG_NO_HOLE:
            step = len(_ZERO_CHUNK)
            for pos in range(0, length, step):
                dev.pwrite(offset + pos, _ZERO_CHUNK[: min(step, length - pos)])
        else:
            dev.write_zeroes(offset, length)

    def _read_reply(self, req: p.Request) -> list[bytes | memoryview]:
        """The whole reply to a valid NBD_CMD_READ: simple, or structured data and hole chunks."""
        offset, length, cookie = req.offset, req.length, req.cookie
        data = self.server.device.pread(offset, length)
        if not self.structured:
            return [p.simple_reply(cookie), data]
        if not length:
            return [p.chunk_header(cookie, p.NBD_REPLY_TYPE_NONE, 0, True)]
        runs = [(0, length, False)] if req.flags & p.NBD_CMD_FLAG_DF else _zero_runs(data, offset)
        view = memoryview(data)
        parts: list[bytes | memoryview] = []
        for i, (start, end, zero) in enumerate(runs):
            last = i == len(runs) - 1
            if zero:
                hole = p.OFFSET_HOLE.pack(offset + start, end - start)
                parts += [p.chunk_header(cookie, p.NBD_REPLY_TYPE_OFFSET_HOLE, len(hole), last), hole]
            else:
                n = p.OFFSET_DATA.size + end - start
                parts += [
                    p.chunk_header(cookie, p.NBD_REPLY_TYPE_OFFSET_DATA, n, last),
                    p.OFFSET_DATA.pack(offset + start),
                    view[start:end],
                ]
        return parts


def _refuse_live_socket(path: str) -> None:
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


def _zero_runs(data: bytes, offset: int) -> list[tuple[int, int, bool]]:
    """Split ``data`` (read at ``offset``) at page boundaries into runs: (start, end, all zeros)."""
    runs: list[tuple[int, int, bool]] = []
    pos, length = 0, len(data)
    while pos < length:
        end = min(length, (offset + pos) // PAGE_SIZE * PAGE_SIZE + PAGE_SIZE - offset)
        zero = data[pos:end] == _ZERO_PAGE[: end - pos]
        if runs and runs[-1][2] == zero:
            runs[-1] = (runs[-1][0], end, zero)
        else:
            runs.append((pos, end, zero))
        pos = end
    return runs


class ServerThread:
    """An :class:`NbdServer` on its own event loop in a daemon thread.

    For tests, and for programs that keep using the device while it is
    exported::

        with ServerThread(NbdServer(dev), unix_path="/tmp/zram.sock") as st:
            print(st.addresses)        # ["nbd+unix:///?socket=/tmp/zram.sock"]

    ``host``/``port`` add a TCP listener (port 0: a free one; ``st.tcp_port``
    tells which).  :meth:`start` returns once the server listens and raises
    what made it fail; :meth:`stop` closes it and joins the thread.
    """

    def __init__(
        self,
        server: NbdServer,
        *,
        unix_path: str | os.PathLike[str] | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        if unix_path is None and host is None and port is None:
            raise ValueError("give a unix_path, a TCP host/port, or both")
        self.server = server
        self.unix_path = unix_path
        self.host = host
        self.port = port
        self.tcp_port: int | None = None
        self._thread = threading.Thread(target=self._run, name="nbd-server", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def addresses(self) -> list[str]:
        return self.server.addresses

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the NBD server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the NBD server did not stop in time")

    def call(self, fn: Callable[[], object], timeout: float = 10.0) -> object:
        """Run ``fn()`` on the server's event loop (e.g. ``server.snapshot``) and return its result."""
        assert self._loop is not None

        async def wrapper() -> object:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start() if it happened there
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            if self.unix_path is not None:
                await self.server.listen_unix(self.unix_path)
            if self.host is not None or self.port is not None:
                _, self.tcp_port = await self.server.listen_tcp(self.host or "127.0.0.1", self.port or 0)
        except BaseException:
            await self.server.close()
            raise
        self._ready.set()
        await self._stop.wait()
        await self.server.close()


__all__ = ["MAX_OPTION_DATA", "Limits", "NbdServer", "ServerStats", "ServerThread", "nbd_error"]
