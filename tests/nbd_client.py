"""A small blocking NBD client for the tests: the handshake, every command, simple and structured replies.

It owns nothing but its socket.  It exists to drive the server (nbdkit with
the plugin) byte by byte in tests (including requests a well-behaved client never sends: see
:meth:`NbdClient.send_request` and :meth:`NbdClient.send_raw`) and to script
an export from Python without libnbd::

    with NbdClient.open("/tmp/zram.sock", structured=True) as c:
        c.write(4096, b"hello")
        assert c.read(4096, 5) == b"hello"

Requests may be pipelined: :meth:`send_request` returns the cookie,
:meth:`receive_reply` returns the next reply, whichever request it answers.
"""

from __future__ import annotations

import itertools
import socket
import struct
from dataclasses import dataclass, field

import nbd_protocol as p


class NbdProtocolError(Exception):
    """The server sent something the protocol does not allow, or closed the connection."""


class NbdError(OSError):
    """The server answered a request or an option with an error."""

    def __init__(self, error: int, message: str = "") -> None:
        super().__init__(error, message or f"NBD error {error}")
        self.error = error


@dataclass(frozen=True)
class ExportInfo:
    """What NBD_OPT_INFO / NBD_OPT_GO (or NBD_OPT_EXPORT_NAME) told about an export."""

    size: int
    flags: int
    name: str | None = None
    description: str | None = None
    #: NBD_INFO_BLOCK_SIZE: minimum, preferred, maximum (None if not sent)
    block_size: tuple[int, int, int] | None = None


@dataclass
class Reply:
    """One whole reply: its error (0: success), the data of a read, the structured chunks' types."""

    cookie: int
    error: int = 0
    message: str = ""
    data: bytes | None = None
    chunks: list[tuple[int, int, int]] = field(default_factory=list)  # (type, offset, length)


class NbdClient:
    """One connection to an NBD server; see the module docstring."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.structured = False
        self.export: ExportInfo | None = None
        self._no_zeroes = False
        self._cookies = itertools.count(1)
        self._pending: dict[int, tuple[int, int, int]] = {}  # cookie -> (command, offset, length)

    @classmethod
    def connect(cls, address: str | tuple[str, int], timeout: float = 10.0) -> NbdClient:
        """Connect to a Unix socket path or a (host, port) pair; nothing is exchanged yet."""
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return cls(sock)

    @classmethod
    def open(
        cls, address: str | tuple[str, int], name: str = "", structured: bool = False, timeout: float = 10.0
    ) -> NbdClient:
        """Connect, negotiate (structured replies if asked) and enter transmission with NBD_OPT_GO."""
        client = cls.connect(address, timeout)
        try:
            client.start()
            if structured and not client.structured_reply():
                raise NbdProtocolError("the server refused structured replies")
            client.go(name)
        except BaseException:
            client.close()
            raise
        return client

    # ------------------------------------------------------------------
    # bytes

    def recv_exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            part = self.sock.recv(min(n - len(buf), 1 << 20))
            if not part:
                raise NbdProtocolError(f"the server closed the connection ({len(buf)} of {n} bytes read)")
            buf += part
        return bytes(buf)

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (for tests of malformed input)."""
        self.sock.sendall(data)

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the connection within ``timeout`` (reading and dropping what comes)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(1 << 16):
                pass
        except (TimeoutError, BlockingIOError):
            return False
        except ConnectionError:
            return True
        return True

    # ------------------------------------------------------------------
    # handshake

    def start(self, client_flags: int = p.NBD_FLAG_C_FIXED_NEWSTYLE | p.NBD_FLAG_C_NO_ZEROES) -> int:
        """Read the server's greeting, send the client flags; return the handshake flags."""
        magic, opt_magic, flags = p.HANDSHAKE.unpack(self.recv_exactly(p.HANDSHAKE.size))
        if magic != p.NBDMAGIC or opt_magic != p.IHAVEOPT:
            raise NbdProtocolError(f"not a newstyle NBD server: {magic:#x} {opt_magic:#x}")
        self.send_raw(p.CLIENT_FLAGS.pack(client_flags))
        self._no_zeroes = bool(client_flags & p.NBD_FLAG_C_NO_ZEROES)
        return flags

    def send_option(self, option: int, data: bytes = b"") -> None:
        self.send_raw(p.OPTION_HEADER.pack(p.IHAVEOPT, option, len(data)) + data)

    def option_reply(self, option: int) -> tuple[int, bytes]:
        """The next option reply to ``option``: (reply type, data)."""
        magic, opt, reply_type, length = p.OPTION_REPLY.unpack(self.recv_exactly(p.OPTION_REPLY.size))
        if magic != p.NBD_REP_MAGIC or opt != option:
            raise NbdProtocolError(f"bad option reply: magic {magic:#x}, option {opt} (sent {option})")
        return reply_type, self.recv_exactly(length)

    def _option_error(self, reply_type: int, data: bytes) -> None:
        if reply_type & p.NBD_REP_FLAG_ERROR:
            raise NbdError(reply_type, data.decode("utf-8", "replace"))
        raise NbdProtocolError(f"unexpected option reply type {reply_type}")

    def simple_option(self, option: int, data: bytes = b"") -> None:
        """An option answered by one NBD_REP_ACK; raise :class:`NbdError` on an error reply."""
        self.send_option(option, data)
        reply_type, reply = self.option_reply(option)
        if reply_type != p.NBD_REP_ACK:
            self._option_error(reply_type, reply)

    def structured_reply(self) -> bool:
        """NBD_OPT_STRUCTURED_REPLY; True if the server agreed."""
        try:
            self.simple_option(p.NBD_OPT_STRUCTURED_REPLY)
        except NbdError as exc:
            if exc.error == p.NBD_REP_ERR_UNSUP:
                return False
            raise
        self.structured = True
        return True

    def list_exports(self) -> list[tuple[str, str]]:
        """NBD_OPT_LIST: (name, description) of every export."""
        self.send_option(p.NBD_OPT_LIST)
        exports: list[tuple[str, str]] = []
        while True:
            reply_type, data = self.option_reply(p.NBD_OPT_LIST)
            if reply_type == p.NBD_REP_ACK:
                return exports
            if reply_type != p.NBD_REP_SERVER:
                self._option_error(reply_type, data)
            (n,) = p.U32.unpack_from(data)
            exports.append((data[4 : 4 + n].decode(), data[4 + n :].decode()))

    def info(
        self, name: str = "", option: int = p.NBD_OPT_INFO, requests: tuple[int, ...] = ()
    ) -> ExportInfo:
        """NBD_OPT_INFO (or NBD_OPT_GO with ``option``), asking for the information types ``requests``."""
        raw = name.encode()
        data = p.U32.pack(len(raw)) + raw + p.U16.pack(len(requests))
        data += b"".join(p.U16.pack(r) for r in requests)
        self.send_option(option, data)
        found: dict = {}
        while True:
            reply_type, reply = self.option_reply(option)
            if reply_type == p.NBD_REP_ACK:
                break
            if reply_type != p.NBD_REP_INFO:
                self._option_error(reply_type, reply)
            (info,) = p.U16.unpack_from(reply)
            if info == p.NBD_INFO_EXPORT:
                _, found["size"], found["flags"] = p.INFO_EXPORT.unpack(reply)
            elif info == p.NBD_INFO_NAME:
                found["name"] = reply[2:].decode()
            elif info == p.NBD_INFO_DESCRIPTION:
                found["description"] = reply[2:].decode()
            elif info == p.NBD_INFO_BLOCK_SIZE:
                found["block_size"] = p.INFO_BLOCK_SIZE.unpack(reply)[1:]
        if "size" not in found:
            raise NbdProtocolError("NBD_REP_ACK without NBD_INFO_EXPORT")
        return ExportInfo(**found)

    def go(self, name: str = "", requests: tuple[int, ...] = (p.NBD_INFO_BLOCK_SIZE,)) -> ExportInfo:
        """NBD_OPT_GO: enter transmission with export ``name``."""
        self.export = self.info(name, p.NBD_OPT_GO, requests)
        return self.export

    def export_name(self, name: str = "") -> ExportInfo:
        """NBD_OPT_EXPORT_NAME: the old way into transmission (no error reply possible)."""
        self.send_option(p.NBD_OPT_EXPORT_NAME, name.encode())
        size, flags = p.EXPORT_NAME_REPLY.unpack(self.recv_exactly(p.EXPORT_NAME_REPLY.size))
        if not self._no_zeroes:
            self.recv_exactly(p.EXPORT_NAME_PADDING)
        self.export = ExportInfo(size, flags)
        return self.export

    def abort(self) -> None:
        """NBD_OPT_ABORT, then close."""
        self.simple_option(p.NBD_OPT_ABORT)
        self.close()

    # ------------------------------------------------------------------
    # transmission

    def send_request(
        self,
        cmd: int,
        offset: int = 0,
        length: int = 0,
        flags: int = 0,
        payload: bytes = b"",
        cookie: int | None = None,
    ) -> int:
        """Send one request (any fields, for tests); return its cookie."""
        cookie = next(self._cookies) if cookie is None else cookie
        self._pending[cookie] = (cmd, offset, length)
        self.send_raw(p.REQUEST.pack(p.NBD_REQUEST_MAGIC, flags, cmd, cookie, offset, length) + payload)
        return cookie

    def receive_reply(self) -> Reply:
        """The next whole reply (all chunks of a structured one)."""
        (magic,) = p.U32.unpack(self.recv_exactly(4))
        if magic == p.NBD_SIMPLE_REPLY_MAGIC:
            error, cookie = struct.unpack(">IQ", self.recv_exactly(12))
            cmd, _, length = self._take(cookie)
            data = self.recv_exactly(length) if cmd == p.NBD_CMD_READ and not error else None
            return Reply(cookie, error, data=data)
        if magic != p.NBD_STRUCTURED_REPLY_MAGIC:
            raise NbdProtocolError(f"bad reply magic {magic:#x}")
        return self._structured()

    def _take(self, cookie: int) -> tuple[int, int, int]:
        try:
            return self._pending.pop(cookie)
        except KeyError:
            raise NbdProtocolError(f"a reply for unknown cookie {cookie:#x}") from None

    def _structured(self) -> Reply:
        """The chunks of one structured reply, its first magic number already read."""
        cookie = None
        reply: Reply | None = None
        pieces: list[tuple[int, bytes]] = []  # the data chunks, placed once the reply is complete
        while True:
            if reply is not None:
                (magic,) = p.U32.unpack(self.recv_exactly(4))
                if magic != p.NBD_STRUCTURED_REPLY_MAGIC:
                    raise NbdProtocolError(f"bad chunk magic {magic:#x}")
            flags, ctype, chunk_cookie, length = struct.unpack(">HHQI", self.recv_exactly(16))
            payload = self.recv_exactly(length)
            if reply is None:
                cookie = chunk_cookie
                cmd, req_offset, req_length = self._pending[cookie]
                reply = Reply(cookie)
            elif chunk_cookie != cookie:
                raise NbdProtocolError("chunks of two replies interleaved (this client does not merge them)")
            if ctype == p.NBD_REPLY_TYPE_OFFSET_DATA:
                (at,) = p.OFFSET_DATA.unpack_from(payload)
                data = payload[8:]
                self._check_chunk(req_offset, req_length, at, len(data))
                pieces.append((at - req_offset, data))
                reply.chunks.append((ctype, at, len(data)))
            elif ctype == p.NBD_REPLY_TYPE_OFFSET_HOLE:
                at, size = p.OFFSET_HOLE.unpack(payload)
                self._check_chunk(req_offset, req_length, at, size)
                reply.chunks.append((ctype, at, size))
            elif ctype & (1 << 15):
                reply.error, n = p.ERROR_CHUNK.unpack_from(payload)
                reply.message = payload[6 : 6 + n].decode("utf-8", "replace")
                reply.chunks.append((ctype, 0, 0))
            elif ctype != p.NBD_REPLY_TYPE_NONE:
                raise NbdProtocolError(f"unknown chunk type {ctype}")
            if flags & p.NBD_REPLY_FLAG_DONE:
                break
        del self._pending[cookie]
        if cmd == p.NBD_CMD_READ and not reply.error:
            covered = sum(n for t, _, n in reply.chunks if t in (1, 2))
            if covered != req_length:
                raise NbdProtocolError(f"read reply covers {covered} of {req_length} bytes")
            buf = bytearray(req_length)  # holes read as zeros
            for at, data in pieces:
                buf[at : at + len(data)] = data
            reply.data = bytes(buf)
        return reply

    @staticmethod
    def _check_chunk(req_offset: int, req_length: int, at: int, n: int) -> None:
        if n == 0 or at < req_offset or at + n > req_offset + req_length:
            raise NbdProtocolError(f"a chunk of [{at}, {at + n}) outside the request or empty")

    def request(
        self, cmd: int, offset: int = 0, length: int = 0, flags: int = 0, payload: bytes = b""
    ) -> Reply:
        """Send a request and wait for its reply; raise :class:`NbdError` if it failed."""
        cookie = self.send_request(cmd, offset, length, flags, payload)
        reply = self.receive_reply()
        if reply.cookie != cookie:
            raise NbdProtocolError(f"reply for cookie {reply.cookie}, expected {cookie}")
        if reply.error:
            raise NbdError(reply.error, reply.message)
        return reply

    def read(self, offset: int, length: int, flags: int = 0) -> bytes:
        data = self.request(p.NBD_CMD_READ, offset, length, flags).data
        assert data is not None
        return data

    def write(self, offset: int, data: bytes, flags: int = 0) -> None:
        self.request(p.NBD_CMD_WRITE, offset, len(data), flags, data)

    def flush(self) -> None:
        self.request(p.NBD_CMD_FLUSH)

    def trim(self, offset: int, length: int, flags: int = 0) -> None:
        self.request(p.NBD_CMD_TRIM, offset, length, flags)

    def write_zeroes(self, offset: int, length: int, flags: int = 0) -> None:
        self.request(p.NBD_CMD_WRITE_ZEROES, offset, length, flags)

    def disconnect(self) -> None:
        """NBD_CMD_DISC, then close."""
        self.send_request(p.NBD_CMD_DISC)
        self.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NbdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sock.fileno() >= 0 and self.export is not None:
            try:
                self.disconnect()
            except OSError:
                self.close()
        else:
            self.close()


__all__ = ["ExportInfo", "NbdClient", "NbdError", "NbdProtocolError", "Reply"]
