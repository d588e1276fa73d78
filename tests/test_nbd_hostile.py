"""Hostile and broken clients: the server answers with an NBD error or closes that connection only.

Each test fills the device with known data, plays one bad client, and then
checks that the server still serves the next client and that every byte of
the device is as it was (``pread`` of the whole export against the model,
then ``ZramDevice.check()`` when the server stops).
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import time

import pytest

from helpers import wait_until
from nbd_helpers import served
from zsmalloc.nbd import Limits, NbdClient
from zsmalloc.nbd import protocol as p
from zsmalloc.zram import ZramDevice

pytestmark = pytest.mark.timeout(60)

SIZE = 4 << 20
MODEL = random.Random(77).randbytes(SIZE // 2) + bytes(SIZE // 2)


@contextlib.contextmanager
def filled(limits: Limits | None = None, device: ZramDevice | None = None):
    """A served device holding MODEL; on exit, a fresh client must find MODEL intact."""
    with served(SIZE, limits=limits, device=device) as st:
        st.server.device.pwrite(0, MODEL)
        yield st
        with NbdClient.open(st.socket_path, structured=True) as c:
            step = 1 << 20
            for at in range(0, SIZE, step):
                assert c.read(at, step) == MODEL[at : at + step], f"the device changed in [{at}, {at + step})"


def in_transmission(st, structured: bool = False) -> NbdClient:
    return NbdClient.open(st.socket_path, structured=structured)


def header(cmd: int, offset: int = 0, length: int = 0, flags: int = 0, cookie: int = 1) -> bytes:
    return p.REQUEST.pack(p.NBD_REQUEST_MAGIC, flags, cmd, cookie, offset, length)


def hard_disconnects(st) -> int:
    return st.call(st.server.snapshot)["hard_disconnects"]


# ----------------------------------------------------------------------
# handshake


@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(lambda c: c.send_raw(b"\xff" * 4), id="unknown-client-flags"),
        pytest.param(lambda c: (c.start(), c.send_raw(b"NOTMAGIC" + bytes(8))), id="bad-option-magic"),
        pytest.param(
            lambda c: (c.start(), c.send_raw(p.OPTION_HEADER.pack(p.IHAVEOPT, p.NBD_OPT_GO, 0xFFFFFFFF))),
            id="4-GiB-option",
        ),
        pytest.param(lambda c: c.send_raw(random.Random(1).randbytes(1000)), id="garbage"),
    ],
)
def test_broken_handshakes_close_the_connection(attack) -> None:
    with filled() as st:
        c = NbdClient.connect(st.socket_path)
        attack(c)
        assert c.closed_by_server()
        assert wait_until(lambda: hard_disconnects(st) == 1)


def test_client_hanging_up_mid_handshake() -> None:
    with filled() as st:
        c = NbdClient.connect(st.socket_path)
        c.start()
        c.send_raw(p.OPTION_HEADER.pack(p.IHAVEOPT, p.NBD_OPT_GO, 100)[:10])
        c.close()
        c = NbdClient.connect(st.socket_path)
        c.start()
        c.send_raw(p.OPTION_HEADER.pack(p.IHAVEOPT, p.NBD_OPT_GO, 100) + b"abc")
        c.close()
        assert wait_until(lambda: st.call(st.server.snapshot)["active"] == 0)


def test_slow_or_endless_handshakes_are_cut_off() -> None:
    with filled(Limits(handshake_timeout=0.5, max_options=3)) as st:
        idle = NbdClient.connect(st.socket_path)
        t0 = time.monotonic()
        assert idle.closed_by_server(timeout=10)
        assert time.monotonic() - t0 < 5
        chatty = NbdClient.connect(st.socket_path)
        chatty.start()
        for _ in range(3):
            assert chatty.list_exports() == [("zram0", "")]
        assert chatty.closed_by_server()  # three options were all it could send
        assert hard_disconnects(st) == 2


def test_connections_beyond_the_limit_are_refused() -> None:
    with filled(Limits(max_connections=2)) as st:
        a, b = in_transmission(st), in_transmission(st)
        c = NbdClient.connect(st.socket_path)
        assert c.closed_by_server()
        assert st.call(st.server.snapshot)["refused"] == 1
        a.disconnect()
        assert wait_until(lambda: st.call(st.server.snapshot)["active"] == 1)
        in_transmission(st).disconnect()  # room again
        b.disconnect()


# ----------------------------------------------------------------------
# transmission: answered with an error, the connection goes on


@pytest.mark.parametrize(
    ("cmd", "offset", "length", "flags", "payload", "error"),
    [
        (p.NBD_CMD_READ, SIZE - 100, 4096, 0, b"", p.NBD_EINVAL),  # past the end
        (p.NBD_CMD_READ, 2**64 - 1, 1, 0, b"", p.NBD_EINVAL),  # offset + length overflows 64 bits
        (p.NBD_CMD_READ, 0, (32 << 20) + 1, 0, b"", p.NBD_EINVAL),  # larger than the maximum
        (p.NBD_CMD_READ, 0, 10, 1 << 9, b"", p.NBD_EINVAL),  # unknown flag
        (p.NBD_CMD_WRITE, SIZE - 2, 4, 0, b"evil", p.NBD_ENOSPC),  # past the end: payload skipped
        (p.NBD_CMD_WRITE, 0, 4, p.NBD_CMD_FLAG_NO_HOLE, b"evil", p.NBD_EINVAL),  # flag of another command
        (p.NBD_CMD_WRITE_ZEROES, SIZE - 4096, 8192, 0, b"", p.NBD_ENOSPC),
        (p.NBD_CMD_WRITE_ZEROES, 0, 64 << 20, 0, b"", p.NBD_ENOSPC),  # past the end (any length within: fine)
        (p.NBD_CMD_WRITE_ZEROES, 0, 4096, p.NBD_CMD_FLAG_FAST_ZERO, b"", p.NBD_EINVAL),  # not advertised
        (p.NBD_CMD_TRIM, 4096, SIZE, 0, b"", p.NBD_EINVAL),
        (p.NBD_CMD_FLUSH, 4096, 0, 0, b"", p.NBD_EINVAL),  # reserved fields must be zero
        (p.NBD_CMD_CACHE, 0, 4096, 0, b"", p.NBD_EINVAL),  # not advertised
        (p.NBD_CMD_BLOCK_STATUS, 0, 4096, 0, b"", p.NBD_EINVAL),  # no metadata context
        (42, 0, 4096, 0, b"", p.NBD_EINVAL),  # unknown command
    ],
)
@pytest.mark.parametrize("structured", [False, True])
def test_bad_requests_get_errors(cmd, offset, length, flags, payload, error, structured) -> None:
    with filled() as st:
        c = in_transmission(st, structured)
        c.send_request(cmd, offset, length, flags, payload)
        reply = c.receive_reply()
        assert reply.error == error and reply.data is None
        if structured:
            assert reply.message  # a human-readable reason
        assert c.read(0, 4096) == MODEL[:4096]  # the same connection goes on
        c.disconnect()


def test_df_flag_needs_structured_replies() -> None:
    with filled() as st:
        simple, structured = in_transmission(st), in_transmission(st, structured=True)
        simple.send_request(p.NBD_CMD_READ, 0, 10, p.NBD_CMD_FLAG_DF)
        assert simple.receive_reply().error == p.NBD_EINVAL  # SEND_DF was not advertised to it
        assert structured.read(0, 10, p.NBD_CMD_FLAG_DF) == MODEL[:10]
        simple.disconnect()
        structured.disconnect()


def test_zero_length_requests_succeed() -> None:
    with filled() as st:
        c = in_transmission(st)
        assert c.read(100, 0) == b""
        c.write(100, b"")
        c.trim(100, 0)
        c.write_zeroes(SIZE, 0)
        c.disconnect()


def test_random_request_headers_are_all_answered() -> None:
    rng = random.Random(2024)
    with filled() as st:
        c = in_transmission(st, structured=True)
        cmds = [p.NBD_CMD_READ, p.NBD_CMD_FLUSH, p.NBD_CMD_CACHE, p.NBD_CMD_BLOCK_STATUS, 9, 200, 0xFFFF]
        for i in range(300):
            offset = rng.choice((0, rng.randrange(SIZE), rng.randrange(2**64)))
            length = rng.choice((0, rng.randrange(1 << 16), rng.randrange(2**32)))
            cookie = c.send_request(rng.choice(cmds), offset, length, rng.randrange(1 << 16), cookie=i)
            reply = c.receive_reply()
            assert reply.cookie == cookie
        assert hard_disconnects(st) == 0
        c.disconnect()


def test_a_full_device_refuses_writes_and_keeps_its_data() -> None:
    dev = ZramDevice(SIZE, mem_limit=SIZE // 2 + (256 << 10))
    with filled(device=dev) as st:
        c = in_transmission(st)
        noise = random.Random(4).randbytes(SIZE // 2)
        c.send_request(p.NBD_CMD_WRITE, SIZE // 2, len(noise), payload=noise)
        assert c.receive_reply().error == p.NBD_ENOSPC
        assert dev.io_stat().failed_writes == 1
        c.write_zeroes(SIZE // 2, SIZE // 2)  # give the pages written before the refusal back
        c.disconnect()


def test_a_device_bug_is_answered_eio_and_logged(monkeypatch, caplog) -> None:
    with filled() as st:
        c = in_transmission(st)

        def broken(*args):
            raise RuntimeError("simulated bug")

        monkeypatch.setattr(st.server.device, "write_zeroes", broken)
        c.send_request(p.NBD_CMD_WRITE_ZEROES, 0, 4096)
        assert c.receive_reply().error == p.NBD_EIO
        monkeypatch.undo()
        assert c.read(0, 4096) == MODEL[:4096]
        c.disconnect()
        assert "simulated bug" in caplog.text


# ----------------------------------------------------------------------
# transmission: the connection is closed, nothing else changes


def test_bad_request_magic_closes_the_connection() -> None:
    with filled() as st:
        c = in_transmission(st)
        c.send_raw(struct.pack(">I", 0x12345678) + header(p.NBD_CMD_READ, 0, 10)[4:])
        assert c.closed_by_server()
        assert hard_disconnects(st) == 1


def test_oversized_write_closes_the_connection_and_writes_nothing() -> None:
    with filled() as st:
        c = in_transmission(st)
        c.send_raw(header(p.NBD_CMD_WRITE, 0, (32 << 20) + 1) + b"\xee" * 65536)
        assert c.closed_by_server()
        assert hard_disconnects(st) == 1


def test_client_gone_in_the_middle_of_a_write_payload() -> None:
    with filled() as st:
        c = in_transmission(st)
        c.send_raw(header(p.NBD_CMD_WRITE, 0, 65536) + b"\xee" * 40000)
        c.close()
        assert wait_until(lambda: st.call(st.server.snapshot)["active"] == 0)


def test_client_gone_with_requests_in_flight() -> None:
    with filled() as st:
        c = in_transmission(st)
        for i in range(40):
            c.send_request(p.NBD_CMD_READ, 0, 1 << 20, cookie=i)
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        assert wait_until(lambda: st.call(st.server.snapshot)["active"] == 0)


def test_a_client_that_never_reads_replies_is_bounded() -> None:
    limits = Limits(max_request=1 << 20, max_inflight_bytes=2 << 20, max_inflight_requests=8)
    with filled(limits) as st:
        hog = in_transmission(st)
        hog.sock.setblocking(False)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            for i in range(400):  # 400 MiB of reads asked for, none of the replies read
                hog.sock.send(header(p.NBD_CMD_READ, 0, 1 << 20, cookie=i))
                sent += 1
        time.sleep(0.5)
        stats = st.call(st.server.snapshot)
        assert stats["inflight_bytes_max"] <= limits.max_inflight_bytes
        assert stats["requests"]["NBD_CMD_READ"] < sent  # it stopped reading from the hog
        with in_transmission(st) as other:  # and serves others meanwhile
            assert other.read(4096, 100) == MODEL[4096:4196]
        hog.close()
