"""The export's NBD features, through nbdkit, byte by byte with the test client (tests/nbd_client.py).

What the plugin advertises and does: the transmission flags (FLUSH, FUA,
TRIM, WRITE_ZEROES, FAST_ZERO, CACHE, MULTI_CONN), every command at unaligned
offsets against a model, FAST_ZERO and CACHE of any length within the
export, FUA writes and flush, pipelining, several connections sharing one
device (multi-conn), the block-status extents nbdsh sees (REQ_ONE
included), and the stats directory matching the device.  The protocol
itself is nbdkit's.
"""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest

import nbd_protocol as p
from nbd_client import NbdClient, NbdError
from nbd_helpers import need_tools, read_back, served

pytestmark = pytest.mark.timeout(60)

SIZE = 4 << 20

EXPECTED_FLAGS = (
    p.NBD_FLAG_HAS_FLAGS
    | p.NBD_FLAG_SEND_FLUSH
    | p.NBD_FLAG_SEND_FUA
    | p.NBD_FLAG_SEND_TRIM
    | p.NBD_FLAG_SEND_WRITE_ZEROES
    | p.NBD_FLAG_CAN_MULTI_CONN
    | p.NBD_FLAG_SEND_CACHE
    | p.NBD_FLAG_SEND_FAST_ZERO
)


def test_the_export_advertises_its_commands() -> None:
    with served(SIZE) as st:
        c = NbdClient.connect(st.socket_path)
        c.start()
        info = c.info("", requests=(p.NBD_INFO_BLOCK_SIZE,))
        assert info.size == SIZE
        assert info.flags & EXPECTED_FLAGS == EXPECTED_FLAGS
        assert not info.flags & (p.NBD_FLAG_READ_ONLY | p.NBD_FLAG_ROTATIONAL)
        assert info.block_size == (1, 4096, 32 << 20)
        with c:
            c.go("any name selects the device")
            c.write(0, b"x")
            assert c.read(0, 1) == b"x"


@pytest.mark.parametrize("structured", [False, True])
def test_commands_against_a_model(structured: bool) -> None:
    rng = random.Random(5)
    model = bytearray(SIZE)
    with served(SIZE) as st, NbdClient.open(st.socket_path, structured=structured) as c:
        for _ in range(150):
            op = rng.random()
            off = rng.randrange(SIZE - 1)
            n = rng.randint(1, min(3 * 4096 + 17, SIZE - off))
            if op < 0.45:
                data = rng.randbytes(n) if rng.random() < 0.5 else bytes([rng.randrange(256)]) * n
                c.write(off, data, flags=rng.choice((0, p.NBD_CMD_FLAG_FUA)))
                model[off : off + n] = data
            elif op < 0.6:
                flags = rng.choice((0, p.NBD_CMD_FLAG_NO_HOLE, p.NBD_CMD_FLAG_FUA, p.NBD_CMD_FLAG_FAST_ZERO))
                c.write_zeroes(off, n, flags=flags)
                model[off : off + n] = bytes(n)
            elif op < 0.7:
                c.trim(off, n)  # whole pages inside the range read as zeros afterwards
                first, end = -(-off // 4096), (off + n) // 4096
                if end > first:
                    model[first * 4096 : end * 4096] = bytes((end - first) * 4096)
            elif op < 0.75:
                c.flush()
            elif op < 0.8:
                c.request(p.NBD_CMD_CACHE, off, n)
            else:
                assert c.read(off, n) == model[off : off + n]
        assert c.read(0, SIZE) == model


def test_fast_zero_and_cache_of_the_whole_export() -> None:
    size = 96 << 20  # more than nbdkit's 64 MiB request ceiling for reads and writes
    with served(size) as st, NbdClient.open(st.socket_path) as c:
        c.write(size - 4096, b"\xaa" * 4096)
        c.request(p.NBD_CMD_CACHE, 0, size)
        c.write_zeroes(0, size, flags=p.NBD_CMD_FLAG_FAST_ZERO)  # fast: zeroing frees pages
        assert c.read(size - 4096, 4096) == bytes(4096)
        stats = st.stats()
        assert stats["mm_stat"]["orig_data_size"] == 0
        assert stats["server"]["requests"]["NBD_CMD_CACHE"] == 1
        assert stats["server"]["requests"]["NBD_CMD_WRITE_ZEROES"] == 1


def test_fua_writes_and_flush_are_in_the_device_at_the_reply() -> None:
    """Everything is in RAM: FUA and flush need nothing beyond ordering; another connection sees the bytes."""
    with served(SIZE) as st:
        a = NbdClient.open(st.socket_path)
        b = NbdClient.open(st.socket_path, structured=True)
        a.write(12345, b"from a", flags=p.NBD_CMD_FLAG_FUA)
        assert b.read(12345, 6) == b"from a"
        b.write(0, b"from b")
        b.flush()
        assert a.read(0, 6) == b"from b"
        assert st.stats()["server"]["requests"]["NBD_CMD_FLUSH"] == 1
        a.disconnect()
        b.disconnect()


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


def test_disc_answers_requests_in_flight_first() -> None:
    with served(SIZE) as st:
        c = NbdClient.open(st.socket_path)
        data = random.Random(3).randbytes(1 << 20)
        c.send_request(p.NBD_CMD_WRITE, 4096, len(data), payload=data)
        c.send_request(p.NBD_CMD_DISC)
        assert c.receive_reply().error == 0
        assert c.closed_by_server()
        assert read_back(st, 4096, len(data)) == data


def test_error_replies_carry_the_device_errno() -> None:
    with served(SIZE, mem_limit=64 << 10) as st, NbdClient.open(st.socket_path) as c:
        with pytest.raises(NbdError) as err:
            c.read(SIZE, 1)
        assert err.value.error == p.NBD_EINVAL
        with pytest.raises(NbdError) as err:
            c.write(0, random.Random(1).randbytes(1 << 20))  # past mem_limit: ZramError Full
        assert err.value.error == p.NBD_ENOSPC
        assert st.stats()["server"]["errors"] == {"ENOSPC": 1}


def _nbdsh(uri: str, script: str) -> str:
    # nbdsh runs "python3 -m nbd": the Debian python3 that python3-libnbd installs into
    env = {**os.environ, "PATH": "/usr/bin:" + os.environ.get("PATH", "")}
    cmd = ["nbdsh", "--base-allocation", "-u", uri, "-c", script]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_block_status_through_libnbd_with_req_one() -> None:
    need_tools("nbdsh")
    with served(SIZE) as st:
        script = "\n".join(
            [
                "import json",
                "h.pwrite(b'd' * 8192, 0)",  # pages 0 and 1
                "h.pwrite(bytes([7]) * 4096, 40 * 4096)",  # same-filled but not with zeros: data
                "h.pwrite(b'e' * 4096, 42 * 4096)",  # page 41 between them: a lone zero page
                "out = []",
                "def cb(ctx, off, ents, err):",
                "    out.append(list(ents))",
                "    return 0",
                "h.block_status(2 * 4096 - 100, 100, cb)",
                "h.block_status(43 * 4096, 0, cb)",
                "h.block_status(43 * 4096, 0, cb, nbd.CMD_FLAG_REQ_ONE)",
                "h.block_status(4096, 41 * 4096, cb)",
                "print(json.dumps(out))",
                "print(h.can_meta_context('base:allocation'), h.can_multi_conn(),",
                "      h.can_fast_zero(), h.can_cache())",
            ]
        )
        lines = _nbdsh(st.addresses[0], script).splitlines()
        tail, whole, req_one, lone = json.loads(lines[0])
        assert tail == [8092, 0]  # from byte 100 to the end of page 1: data
        # data, a hole+zero (3) run of 38 pages, then data: the lone zero page among data is
        # reported as data (runs below 64 KiB are), which a client may always be told
        assert whole == [8192, 0, 38 * 4096, 3, 3 * 4096, 0]
        assert req_one == [8192, 0]  # the first extent only
        assert lone == [4096, 3]  # asked about alone, the zero page is a hole
        assert lines[1].split() == ["True"] * 4


def test_the_stats_directory_matches_the_device() -> None:
    with served(SIZE, algorithm="zstd", name="zram7") as st, NbdClient.open(st.socket_path) as c:
        c.write(0, b"compressible " * 3000)
        c.write(1 << 20, bytes([9]) * 8192)  # two same-filled pages
        report = st.stats()
        paths = st.stat_paths()
        mm = [int(v) for v in st.read_stat(paths["mm_stat"]).split()]
        names = list(report["mm_stat"])
        assert dict(zip(names, mm, strict=True)) == report["mm_stat"]
        assert report["mm_stat"]["same_pages"] == 2
        assert report["mm_stat"]["orig_data_size"] == 12 * 4096
        io = [int(v) for v in st.read_stat(paths["io_stat"]).split()]
        assert io == list(report["io_stat"].values())
        assert [int(v) for v in st.read_stat(paths["bd_stat"]).split()] == [0, 0, 0]
        assert st.read_stat(paths["disksize"]) == f"{SIZE}\n"
        assert st.read_stat(paths["comp_algorithm"]) == "lz4 lz4hc [zstd] deflate lz4-kernel\n"
        classes = st.read_stat(paths["classes"])
        assert classes.startswith(" class  size ") and "\n Total " in classes
        used = sum(
            int(line.split()[14]) for line in classes.splitlines()[1:] if line.strip() and "Total" not in line
        )
        assert used == 10  # ten compressed pages, the two same-filled ones hold no object
        assert st.read_stat("sys/block/zram7/size") == f"{SIZE // 512}\n"


def test_compaction_and_migration_run_underneath_the_clients() -> None:
    """maintain_interval: the pool is compacted and its pages migrated while clients read and write."""
    rng = random.Random(11)
    pages = [b"text %d " % i * 400 + rng.randbytes(600) for i in range(1024)]
    model = bytearray(b"".join(p[:4096].ljust(4096, b"-") for p in pages))
    with served(SIZE, maintain_interval=0.05) as st, NbdClient.open(st.socket_path) as c:
        c.write(0, bytes(model))
        for i in range(0, 1024, 2):  # every other page freed: half-empty zspages to compact
            c.trim(i * 4096, 4096)
            model[i * 4096 : (i + 1) * 4096] = bytes(4096)
        deadline = 200
        while st.stats()["server"]["maintenance_pages_freed"] == 0 and deadline:
            for _ in range(20):  # clients keep going meanwhile
                at = rng.randrange(1024) * 4096
                assert c.read(at, 4096) == model[at : at + 4096]
            deadline -= 1
        stats = st.stats()
        assert stats["server"]["maintenance_runs"] > 0
        assert stats["server"]["maintenance_pages_freed"] > 0
        assert stats["mm_stat"]["pages_compacted"] == stats["server"]["maintenance_pages_freed"]
        assert c.read(0, SIZE) == model
