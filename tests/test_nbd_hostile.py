"""Hostile and broken clients against what ``zsmalloc serve`` runs (nbdkit and the plugin).

Each test fills the device with known data, plays one bad client, and then
checks that the server still serves the next client and that every byte of
the device is as it was; the plugin's final check runs when the server stops
(``served``).  Issue 10, items 7 and 8: the handshake is bounded in time,
idle clients are closed so that they cannot hold every connection slot, and
a client that never reads its replies holds no more memory than
``threads x`` its requests.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import time

import psutil
import pytest

import nbd_protocol as p
from helpers import wait_until
from nbd_client import NbdClient, NbdProtocolError
from nbd_helpers import served
from zsmalloc.nbd import Limits, NbdServer

pytestmark = pytest.mark.timeout(60)

SIZE = 4 << 20
MODEL = random.Random(77).randbytes(SIZE // 2) + bytes(SIZE // 2)


@contextlib.contextmanager
def filled(limits: Limits | None = None, **server_args: object):
    """A served device holding MODEL; on exit, a fresh client must find MODEL intact."""
    with served(SIZE, limits=limits, **server_args) as st:
        with NbdClient.open(st.socket_path) as c:
            for at in range(0, SIZE, 1 << 20):
                c.write(at, MODEL[at : at + (1 << 20)])
        yield st
        with NbdClient.open(st.socket_path, structured=True) as c:
            step = 1 << 20
            for at in range(0, SIZE, step):
                assert c.read(at, step) == MODEL[at : at + step], f"the device changed in [{at}, {at + step})"


def in_transmission(st: NbdServer, structured: bool = False) -> NbdClient:
    return NbdClient.open(st.socket_path, structured=structured)


def header(cmd: int, offset: int = 0, length: int = 0, flags: int = 0, cookie: int = 1) -> bytes:
    return p.REQUEST.pack(p.NBD_REQUEST_MAGIC, flags, cmd, cookie, offset, length)


def counters(st: NbdServer) -> dict:
    return st.stats()["server"]


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
        assert wait_until(lambda: counters(st)["active"] == 0)


def test_silent_and_trickling_handshakes_are_cut_off() -> None:
    """Item 7: the handshake is bounded in time, however the client spends it."""
    with filled(Limits(handshake_timeout=0.5, idle_timeout=0)) as st:
        silent = NbdClient.connect(st.socket_path)
        t0 = time.monotonic()
        assert silent.closed_by_server(timeout=10)
        assert time.monotonic() - t0 < 5
        trickle = NbdClient.connect(st.socket_path)
        trickle.start()
        t0 = time.monotonic()
        option = p.OPTION_HEADER.pack(p.IHAVEOPT, p.NBD_OPT_GO, 64) + bytes(48)
        with contextlib.suppress(OSError):
            for b in option:  # a byte every 50 ms: never idle, never done
                trickle.send_raw(bytes([b]))
                time.sleep(0.05)
        assert trickle.closed_by_server(timeout=10)
        assert time.monotonic() - t0 < 3
        assert counters(st)["handshake_timeouts"] == 2


def test_idle_clients_cannot_lock_others_out() -> None:
    """Item 7: with every connection slot held by idle clients, a new client gets in within the idle limit."""
    with filled(Limits(max_connections=2, idle_timeout=1.0)) as st:
        idle = [in_transmission(st), in_transmission(st)]
        t0 = time.monotonic()
        deadline = t0 + 10
        while True:  # refused while both slots are held, let in once the idle ones are gone
            try:
                with in_transmission(st) as late:
                    assert late.read(0, 4096) == MODEL[:4096]
                break
            except (OSError, NbdProtocolError):  # refused by nbdkit-limit-filter
                assert time.monotonic() < deadline, "idle clients kept the slots"
                time.sleep(0.1)
        assert 0.9 < time.monotonic() - t0 < 10
        for c in idle:
            assert c.closed_by_server(timeout=5)
        assert counters(st)["idle_disconnects"] >= 2


def test_a_busy_client_is_not_idle() -> None:
    with filled(Limits(idle_timeout=0.5)) as st, in_transmission(st) as c:
        for _ in range(15):  # 1.5 s of one request every 100 ms
            assert c.read(0, 512) == MODEL[:512]
            time.sleep(0.1)
        assert counters(st)["idle_disconnects"] == 0


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
        (p.NBD_CMD_WRITE_ZEROES, SIZE - 4096, 8192, 0, b"", p.NBD_ENOSPC),
        (p.NBD_CMD_WRITE_ZEROES, 0, 64 << 20, 0, b"", p.NBD_ENOSPC),  # past the end (any length within: fine)
        (p.NBD_CMD_TRIM, 4096, SIZE, 0, b"", p.NBD_EINVAL),
        (p.NBD_CMD_BLOCK_STATUS, 0, 4096, 0, b"", p.NBD_EINVAL),  # no metadata context
        (42, 0, 4096, 0, b"", p.NBD_EINVAL),  # unknown command
    ],
)
def test_bad_requests_get_errors(cmd, offset, length, flags, payload, error) -> None:
    with filled() as st:
        c = in_transmission(st)
        c.send_request(cmd, offset, length, flags, payload)
        reply = c.receive_reply()
        assert reply.error == error and reply.data is None
        assert c.read(0, 4096) == MODEL[:4096]  # the same connection goes on
        c.disconnect()


def test_zero_length_requests_get_an_error_and_the_connection_goes_on() -> None:
    """nbdkit refuses a zero-length request (the protocol leaves them undefined); nothing changes."""
    with filled() as st:
        c = in_transmission(st)
        for cmd in (p.NBD_CMD_READ, p.NBD_CMD_WRITE, p.NBD_CMD_TRIM, p.NBD_CMD_WRITE_ZEROES):
            c.send_request(cmd, 100, 0)
            assert c.receive_reply().error in (p.NBD_EINVAL, p.NBD_ENOSPC)
        assert c.read(0, 4096) == MODEL[:4096]
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
        c.disconnect()


def test_a_full_device_refuses_writes_and_keeps_its_data() -> None:
    with filled(mem_limit=SIZE // 2 + (256 << 10)) as st:
        c = in_transmission(st)
        noise = random.Random(4).randbytes(SIZE // 2)
        c.send_request(p.NBD_CMD_WRITE, SIZE // 2, len(noise), payload=noise)
        assert c.receive_reply().error == p.NBD_ENOSPC
        stats = st.stats()
        assert stats["io_stat"]["failed_writes"] == 1
        assert stats["server"]["errors"] == {"ENOSPC": 1}
        c.write_zeroes(SIZE // 2, SIZE // 2)  # give the pages written before the refusal back
        c.disconnect()


# ----------------------------------------------------------------------
# transmission: the connection is closed, nothing else changes


def test_bad_request_magic_closes_the_connection() -> None:
    with filled() as st:
        c = in_transmission(st)
        c.send_raw(struct.pack(">I", 0x12345678) + header(p.NBD_CMD_READ, 0, 10)[4:])
        assert c.closed_by_server()


def test_oversized_write_writes_nothing() -> None:
    with filled() as st:
        c = in_transmission(st)
        c.send_raw(header(p.NBD_CMD_WRITE, 0, (64 << 20) + 1) + b"\xee" * 65536)
        c.close()


def test_client_gone_in_the_middle_of_a_write_payload() -> None:
    with filled() as st:
        c = in_transmission(st)
        c.send_raw(header(p.NBD_CMD_WRITE, 0, 65536) + b"\xee" * 40000)
        c.close()
        assert wait_until(lambda: counters(st)["active"] == 0)


def test_client_gone_with_requests_in_flight() -> None:
    with filled() as st:
        c = in_transmission(st)
        for i in range(40):
            c.send_request(p.NBD_CMD_READ, 0, 1 << 20, cookie=i)
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        assert wait_until(lambda: counters(st)["active"] == 0)


def test_a_client_that_never_reads_replies_is_bounded() -> None:
    """Item 8: a hog pipelining reads it never collects holds at most threads x its requests, then is cut."""
    limits = Limits(max_request=1 << 20, threads=1, idle_timeout=1.5)
    with filled(limits) as st:
        server = psutil.Process(st.pid)
        before = server.memory_info().rss
        hog = in_transmission(st)
        hog.sock.setblocking(False)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            for i in range(400):  # 400 MiB of reads asked for, none of the replies read
                hog.sock.send(header(p.NBD_CMD_READ, 0, 1 << 20, cookie=i))
                sent += 1
        peak = before
        with in_transmission(st) as other:  # others are served meanwhile
            for _ in range(10):
                assert other.read(4096, 100) == MODEL[4096:4196]
                peak = max(peak, server.memory_info().rss)
                time.sleep(0.05)
        grown = peak - before
        # a request buffer of 1 MiB, plus what the socket buffers and the device take
        assert grown < limits.threads * limits.max_request + (24 << 20), f"grew {grown >> 20} MiB"
        assert counters(st)["requests"]["NBD_CMD_READ"] < sent
        assert wait_until(lambda: counters(st)["idle_disconnects"] >= 1, timeout=10)
        hog.close()


def test_memory_bound_is_documented_and_bad_limits_are_refused() -> None:
    per_conn, total = Limits().memory_bound()
    assert per_conn == Limits().threads * (64 << 20) == 64 << 20
    assert total == per_conn * Limits().max_connections == 1 << 30
    with pytest.raises(ValueError, match="idle_timeout"):
        Limits(idle_timeout=float("nan"))
    with pytest.raises(ValueError, match="max_request"):
        Limits(max_request=128 << 20)
    with pytest.raises(ValueError, match="threads"):
        Limits(threads=0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"size": 0}, "size"),
        ({"size": 1 << 20, "algorithm": "lzo"}, "algorithm"),
        ({"size": 1 << 20, "mem_limit": -1}, "mem_limit"),
        ({"size": 1 << 20, "name": "../etc"}, "name"),
        ({"size": 1 << 20, "stats_interval": 0}, "stats_interval"),
        ({"size": 1 << 20, "maintain_interval": float("inf")}, "maintain_interval"),
    ],
)
def test_a_server_of_bad_arguments_is_refused_before_it_starts(args: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NbdServer(**args)
