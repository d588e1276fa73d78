"""The NBD server, byte by byte, with the pure-Python client (zsmalloc.nbd.client).

Handshake: the greeting, NBD_OPT_LIST / INFO / GO / EXPORT_NAME / ABORT /
STRUCTURED_REPLY, unsupported and malformed options.  Transmission: every
command at unaligned offsets against a model, simple and structured replies
(data and hole chunks, NBD_CMD_FLAG_DF), pipelining, requests served
concurrently, several connections, NBD_CMD_DISC and server shutdown with
requests in flight.
"""

from __future__ import annotations

import random
import threading

import pytest

from nbd_helpers import served
from zsmalloc.nbd import NbdClient, NbdError, NbdProtocolError
from zsmalloc.nbd import protocol as p
from zsmalloc.zram import ZramDevice

pytestmark = pytest.mark.timeout(60)

SIZE = 4 << 20


def connect(st) -> NbdClient:
    return NbdClient.connect(st.socket_path)


# ----------------------------------------------------------------------
# handshake


def test_greeting_list_info_and_go() -> None:
    with served(SIZE, description="a test disk") as st:
        c = connect(st)
        assert c.start() == p.NBD_FLAG_FIXED_NEWSTYLE | p.NBD_FLAG_NO_ZEROES
        assert c.list_exports() == [("zram0", "a test disk")]
        info = c.info("zram0", requests=(p.NBD_INFO_NAME, p.NBD_INFO_DESCRIPTION, p.NBD_INFO_BLOCK_SIZE))
        assert info.size == SIZE and info.name == "zram0" and info.description == "a test disk"
        assert info.block_size == (1, 4096, 32 << 20)
        expected = (
            p.NBD_FLAG_HAS_FLAGS
            | p.NBD_FLAG_SEND_FLUSH
            | p.NBD_FLAG_SEND_FUA
            | p.NBD_FLAG_SEND_TRIM
            | p.NBD_FLAG_SEND_WRITE_ZEROES
            | p.NBD_FLAG_CAN_MULTI_CONN
        )
        assert info.flags == expected  # no SEND_DF without structured replies
        assert c.structured_reply()
        assert c.info("").flags == expected | p.NBD_FLAG_SEND_DF  # the default name selects it too
        with c:
            c.go("zram0")
            c.write(0, b"x")
            assert c.read(0, 1) == b"x"


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name_enters_transmission(no_zeroes: bool) -> None:
    with served(SIZE) as st, connect(st) as c:
        c.start(p.NBD_FLAG_C_FIXED_NEWSTYLE | (p.NBD_FLAG_C_NO_ZEROES if no_zeroes else 0))
        export = c.export_name("")
        assert export.size == SIZE and export.flags & p.NBD_FLAG_SEND_TRIM
        assert not export.flags & p.NBD_FLAG_SEND_DF  # no structured replies asked for
        c.write(4090, b"0123456789")
        assert c.read(4088, 14) == b"\0\x000123456789\0\0"


def test_unknown_export() -> None:
    with served(SIZE) as st:
        c = connect(st)
        c.start()
        with pytest.raises(NbdError) as err:
            c.info("nosuch")
        assert err.value.error == p.NBD_REP_ERR_UNKNOWN
        with pytest.raises(NbdError):
            c.go("nosuch")
        c.go("")  # the session goes on after the errors
        c.disconnect()
        c = connect(st)
        c.start()
        c.send_option(p.NBD_OPT_EXPORT_NAME, b"nosuch")  # cannot be answered: the session ends
        assert c.closed_by_server()


def test_abort() -> None:
    with served(SIZE) as st:
        c = connect(st)
        c.start()
        c.send_option(p.NBD_OPT_ABORT)
        assert c.option_reply(p.NBD_OPT_ABORT) == (p.NBD_REP_ACK, b"")
        assert c.closed_by_server()


@pytest.mark.parametrize(
    ("option", "data", "reply"),
    [
        (p.NBD_OPT_STARTTLS, b"", p.NBD_REP_ERR_UNSUP),
        (p.NBD_OPT_SET_META_CONTEXT, b"\0\0\0\0\0\0\0\0", p.NBD_REP_ERR_UNSUP),
        (p.NBD_OPT_EXTENDED_HEADERS, b"", p.NBD_REP_ERR_UNSUP),
        (99, b"whatever", p.NBD_REP_ERR_UNSUP),
        (p.NBD_OPT_LIST, b"x", p.NBD_REP_ERR_INVALID),
        (p.NBD_OPT_STRUCTURED_REPLY, b"x", p.NBD_REP_ERR_INVALID),
        (p.NBD_OPT_GO, b"\0\0", p.NBD_REP_ERR_INVALID),  # shorter than the fixed fields
        (p.NBD_OPT_GO, b"\0\0\0\x09\0\0", p.NBD_REP_ERR_INVALID),  # name longer than the data
        (p.NBD_OPT_INFO, b"\0\0\0\0\0\x02\0\0", p.NBD_REP_ERR_INVALID),  # 2 requests announced, 1 sent
    ],
)
def test_unsupported_and_malformed_options_are_answered(option: int, data: bytes, reply: int) -> None:
    with served(SIZE) as st:
        c = connect(st)
        c.start()
        c.send_option(option, data)
        reply_type, message = c.option_reply(option)
        assert reply_type == reply and message  # an error with a message for a human
        with c:
            c.go()  # and the handshake goes on
            assert c.read(0, 10) == bytes(10)


# ----------------------------------------------------------------------
# transmission


@pytest.mark.parametrize("structured", [False, True])
def test_commands_against_a_model(structured: bool) -> None:
    rng = random.Random(5)
    model = bytearray(SIZE)
    with served(SIZE) as st, NbdClient.open(st.socket_path, structured=structured) as c:
        dev = st.server.device
        for _ in range(150):
            op = rng.random()
            off = rng.randrange(SIZE - 1)
            n = rng.randint(1, min(3 * 4096 + 17, SIZE - off))
            if op < 0.45:
                data = rng.randbytes(n) if rng.random() < 0.5 else bytes([rng.randrange(256)]) * n
                c.write(off, data, flags=rng.choice((0, p.NBD_CMD_FLAG_FUA)))
                model[off : off + n] = data
            elif op < 0.6:
                c.write_zeroes(off, n, flags=rng.choice((0, p.NBD_CMD_FLAG_NO_HOLE, p.NBD_CMD_FLAG_FUA)))
                model[off : off + n] = bytes(n)
            elif op < 0.7:
                c.trim(off, n)  # whole pages inside the range read as zeros afterwards
                first, end = -(-off // 4096), (off + n) // 4096
                if end > first:
                    model[first * 4096 : end * 4096] = bytes((end - first) * 4096)
            elif op < 0.75:
                c.flush()
            else:
                assert c.read(off, n) == model[off : off + n]
        assert c.read(0, SIZE) == model
        dev.check()


def test_write_zeroes_no_hole_stores_zero_pages_and_plain_frees_them() -> None:
    with served(SIZE) as st, NbdClient.open(st.socket_path) as c:
        dev = st.server.device
        c.write(0, b"\xff" * 5 * 4096)
        c.write_zeroes(0, 2 * 4096, flags=p.NBD_CMD_FLAG_NO_HOLE)
        assert dev.slot_info(0).same and dev.slot_info(1).same  # provisioned: a same-filled slot
        c.write_zeroes(2 * 4096, 2 * 4096)
        assert not dev.slot_info(2).allocated and not dev.slot_info(3).allocated  # freed
        c.write_zeroes(4 * 4096 + 100, 10)  # a partial page is rewritten
        assert c.read(0, 5 * 4096) == bytes(4 * 4096) + b"\xff" * 100 + bytes(10) + b"\xff" * 3986


def test_structured_read_sends_hole_and_data_chunks() -> None:
    with served(SIZE) as st, NbdClient.open(st.socket_path, structured=True) as c:
        c.write(4096, b"a" * 4096)
        c.write(4 * 4096, b"b" * 100)
        reply = c.request(p.NBD_CMD_READ, 1000, 6 * 4096)
        data, hole = p.NBD_REPLY_TYPE_OFFSET_DATA, p.NBD_REPLY_TYPE_OFFSET_HOLE
        assert reply.chunks == [
            (hole, 1000, 3096),
            (data, 4096, 4096),
            (hole, 8192, 8192),
            (data, 16384, 4096),
            (hole, 20480, 5096),
        ]
        assert reply.data == bytes(3096) + b"a" * 4096 + bytes(8192) + b"b" * 100 + bytes(3996 + 5096)
        reply = c.request(p.NBD_CMD_READ, 1000, 6 * 4096, flags=p.NBD_CMD_FLAG_DF)
        assert reply.chunks == [(data, 1000, 6 * 4096)]  # don't fragment: one data chunk
        assert c.request(p.NBD_CMD_READ, 0, 0).chunks == []  # NBD_REPLY_TYPE_NONE alone
        reply = c.send_request(p.NBD_CMD_READ, SIZE - 10, 20)
        reply = c.receive_reply()
        assert reply.error == p.NBD_EINVAL and "outside the export" in reply.message
        assert reply.chunks == [(p.NBD_REPLY_TYPE_ERROR, 0, 0)]


@pytest.mark.parametrize("structured", [False, True])
def test_pipelined_requests_are_all_answered(structured: bool) -> None:
    rng = random.Random(9)
    with served(SIZE) as st, NbdClient.open(st.socket_path, structured=structured) as c:
        pages = {i: rng.randbytes(4096) for i in range(0, 64)}
        writes = {c.send_request(p.NBD_CMD_WRITE, i * 4096, 4096, payload=d): i for i, d in pages.items()}
        replies = [c.receive_reply() for _ in writes]
        assert sorted(r.cookie for r in replies) == sorted(writes) and not any(r.error for r in replies)
        reads = {c.send_request(p.NBD_CMD_READ, i * 4096, 4096): i for i in pages}
        for _ in reads:
            r = c.receive_reply()
            assert r.data == pages[reads[r.cookie]]


class _GatedDevice(ZramDevice):
    """A device whose reads of page 0 wait for a gate: shows whether other requests overtake them."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def pread(self, offset: int, length: int) -> bytes:
        if offset == 0:
            self.waiting.set()
            assert self.gate.wait(20)
        return super().pread(offset, length)


@pytest.mark.parametrize(
    ("slow_length", "server_args"),
    [(2 << 20, {}), (4096, {"inline_max": 0})],
    ids=["a-long-request-in-the-pool", "every-request-in-the-pool"],
)
def test_requests_to_other_pages_are_served_while_one_waits(slow_length: int, server_args: dict) -> None:
    """A request in the thread pool (longer than inline_max, or any with inline_max=0) that waits
    does not hold up a short request to other pages, whose reply overtakes it."""
    dev = _GatedDevice(SIZE)
    with served(device=dev, **server_args) as st, NbdClient.open(st.socket_path) as c:
        c.write(3 << 20, b"z" * 10)
        slow = c.send_request(p.NBD_CMD_READ, 0, slow_length)
        assert dev.waiting.wait(10)
        fast = c.send_request(p.NBD_CMD_READ, 3 << 20, 10)
        first = c.receive_reply()
        assert first.cookie == fast and first.data == b"z" * 10  # out of order: it did not wait
        dev.gate.set()
        second = c.receive_reply()
        assert second.cookie == slow and second.data == bytes(slow_length)


def test_connections_share_the_device() -> None:
    with served(SIZE) as st:
        a = NbdClient.open(st.socket_path)
        b = NbdClient.open(st.socket_path, structured=True)
        a.write(12345, b"from a")
        b.flush()
        assert b.read(12345, 6) == b"from a"
        b.write(0, b"from b", flags=p.NBD_CMD_FLAG_FUA)
        assert a.read(0, 6) == b"from b"
        assert st.call(st.server.snapshot)["active"] == 2
        a.disconnect()
        b.disconnect()


def test_disc_answers_requests_in_flight_first() -> None:
    with served(SIZE) as st:
        c = NbdClient.open(st.socket_path)
        data = random.Random(3).randbytes(1 << 20)
        c.send_request(p.NBD_CMD_WRITE, 4096, len(data), payload=data)
        c.send_request(p.NBD_CMD_DISC)
        assert c.receive_reply().error == 0
        assert c.closed_by_server()
        assert st.server.device.pread(4096, len(data)) == data


def test_server_shutdown_answers_requests_in_flight_then_closes() -> None:
    dev = _GatedDevice(SIZE)
    with served(device=dev) as st:
        c = NbdClient.open(st.socket_path)
        cookie = c.send_request(p.NBD_CMD_READ, 0, 4096)
        assert dev.waiting.wait(10)
        stopper = threading.Thread(target=st.stop)
        stopper.start()
        dev.gate.set()
        reply = c.receive_reply()
        assert reply.cookie == cookie and reply.error == 0
        assert c.closed_by_server()
        stopper.join(10)
        with pytest.raises(OSError):
            NbdClient.open(st.socket_path, timeout=2)


def test_client_raises_on_server_error_replies() -> None:
    with served(SIZE) as st, NbdClient.open(st.socket_path) as c:
        with pytest.raises(NbdError) as err:
            c.read(SIZE, 1)
        assert err.value.error == p.NBD_EINVAL
        with pytest.raises(NbdError) as err:
            c.write(SIZE - 1, b"ab")
        assert err.value.error == p.NBD_ENOSPC
        assert c.read(SIZE - 1, 1) == b"\0"  # nothing of the refused write landed


def test_client_rejects_a_non_nbd_server() -> None:
    import socket

    a, b = socket.socketpair()
    b.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(NbdProtocolError):
        NbdClient(a).start()
    a.close()
    b.close()
