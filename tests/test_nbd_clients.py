"""What ``zsmalloc serve`` runs (nbdkit and the plugin) against the real NBD clients from Debian.

nbdinfo, nbdcopy, qemu-img, qemu-io, nbdsh and nbdfuse.  Each test serves a
fresh device on a Unix socket (an nbdkit child process), runs the tool as a
subprocess with a timeout, and checks what comes back byte for byte (SHA-256
of whole images), read back by another connection, and the plugin's own
figures (its stats directory, its final check).  Block status: holes where
nothing was written, or was discarded or zeroed, in ``nbdinfo --map`` and
``qemu-img map``.  A missing tool skips the test, or fails it when
ZSMALLOC_REQUIRE_NBD_CLIENTS=1 (CI installs them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import nbd_helpers
from nbd_helpers import image, need_tools, read_back, served
from zsmalloc.nbd import Limits
from zsmalloc.nbd.server import SAFE_THREADS_VERSION, nbdkit_version

pytestmark = pytest.mark.timeout(120)

SIZE = 16 << 20


def run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def workdir():
    with tempfile.TemporaryDirectory(prefix="nbdc") as tmp:
        yield Path(tmp)


def test_missing_tool_skips_or_fails_as_ci_requires(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nbd_helpers, "REQUIRE_CLIENTS", True)
    with pytest.raises(pytest.fail.Exception, match="ZSMALLOC_REQUIRE_NBD_CLIENTS"):
        need_tools("sh", "no-such-nbd-tool")
    monkeypatch.setattr(nbd_helpers, "REQUIRE_CLIENTS", False)
    with pytest.raises(pytest.skip.Exception, match="no-such-nbd-tool"):
        need_tools("sh", "no-such-nbd-tool")
    need_tools("sh")  # present: neither


def test_nbdinfo_reports_size_flags_and_block_sizes() -> None:
    need_tools("nbdinfo")
    with served(SIZE + 12345) as st:  # rounded up to whole pages
        uri = st.addresses[0]
        assert run("nbdinfo", "--size", uri).stdout.strip() == str(SIZE + 16384)
        doc = json.loads(run("nbdinfo", "--json", uri).stdout)
        (export,) = doc["exports"]
        assert export["export-size"] == SIZE + 16384
        for flag in (
            "can_flush",
            "can_fua",
            "can_trim",
            "can_zero",
            "can_fast_zero",
            "can_multi_conn",
            "can_cache",
        ):
            assert export[flag] is True, flag
        assert export["is_read_only"] is False
        assert export["is_rotational"] is False
        assert export["block_size_minimum"] == 1
        assert export["block_size_preferred"] == 4096
        assert export["block_size_maximum"] == Limits().max_request
        assert "base:allocation" in export["contexts"]


@pytest.mark.parametrize("threads", [1, 4], ids=["one-thread-per-connection", "four-threads"])
def test_nbdcopy_image_in_and_out(workdir: Path, threads: int) -> None:
    need_tools("nbdcopy")
    data = image(SIZE, seed=1)
    src, back = workdir / "in.img", workdir / "out.img"
    src.write_bytes(data)
    unsafe = threads > 1 and nbdkit_version() < SAFE_THREADS_VERSION
    warned = pytest.warns(RuntimeWarning, match="1.33.10") if unsafe else contextlib.nullcontext()
    with warned, served(SIZE, limits=Limits(threads=threads)) as st:
        uri = st.addresses[0]
        run("nbdcopy", "--connections=4", str(src), uri)
        assert sha256(read_back(st, 0, SIZE)) == sha256(data)
        run("nbdcopy", "--connections=4", uri, str(back))
        stats = st.stats()["server"]
        assert stats["connections"] >= 2  # several clients at once (multi-conn)
        assert stats["errors"] == {}
    assert sha256(back.read_bytes()) == sha256(data)


def test_qemu_img_convert_in_and_out(workdir: Path) -> None:
    need_tools("qemu-img")
    data = image(SIZE, seed=2)
    src, back = workdir / "in.img", workdir / "out.img"
    src.write_bytes(data)
    with served(SIZE) as st:
        uri = st.addresses[0]
        run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri)
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(back))
        run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), uri)
        mm = st.stats()["mm_stat"]
        assert 0 < mm["compr_data_size"] < mm["orig_data_size"] <= SIZE  # stored compressed
    assert sha256(back.read_bytes()) == sha256(data)


def test_qemu_io_unaligned_write_read_zero_discard() -> None:
    need_tools("qemu-io")
    model = bytearray(SIZE)
    script = [
        ("write -P 0xab 1000 5000", (1000, 5000, 0xAB)),
        ("write -P 0x5c 8190 4100", (8190, 4100, 0x5C)),
        ("write -z 3001 2222", (3001, 2222, 0)),
        ("write -P 0x11 65536 131072", (65536, 131072, 0x11)),
        ("write -z 69632 8192", (69632, 8192, 0)),
        ("write -P 0x77 16773000 4216", (16773000, 4216, 0x77)),  # up to the last byte
    ]
    with served(SIZE) as st:
        uri = st.addresses[0]
        cmds = []
        for cmd, (off, n, byte) in script:
            cmds += ["-c", cmd]
            model[off : off + n] = bytes([byte]) * n
        checks = [
            "read -P 0xab 1000 2001",
            "read -P 0 3001 2222",
            "read -P 0x5c 8190 4100",
            "read -P 0 69632 8192",
        ]
        checks += ["read -P 0x11 77824 118784", "read -P 0x77 16773000 4216", "read -P 0 12290 53246"]
        for c in checks:
            cmds += ["-c", c]
        out = run("qemu-io", "-f", "raw", *cmds, uri).stdout
        assert "verification failed" not in out.lower(), out
        assert out.count("read ") == len(checks), out
        assert read_back(st, 0, SIZE) == model
        # discard is a hint: whole pages inside the range are freed and read as zeros
        run("qemu-io", "-f", "raw", "-c", "discard 65536 131072", uri)
        assert read_back(st, 65536, 131072) == bytes(131072)
        assert st.stats()["io_stat"]["notify_free"] >= 32


def test_nbdsh_scripted_session() -> None:
    """nbdsh (libnbd's Python shell) connects, reads the size, writes, zeroes, trims and reads back."""
    need_tools("nbdsh")
    with served(SIZE) as st:
        uri = st.addresses[0]
        script = "\n".join(
            [
                "print(h.get_size())",
                "h.pwrite(b'nbdsh!' * 1000, 12345)",
                "h.zero(100, 12400)",
                "h.trim(65536, 65536)",
                "h.flush()",
                "print(h.pread(6000, 12345).hex())",
                "print(h.can_multi_conn(), h.can_trim(), h.can_zero(), h.can_fua())",
            ]
        )
        # nbdsh runs "python3 -m nbd": the Debian python3 that python3-libnbd installs into
        env = {**os.environ, "PATH": "/usr/bin:" + os.environ.get("PATH", "")}
        proc = subprocess.run(
            ["nbdsh", "-u", uri, "-c", script], capture_output=True, text=True, timeout=60, env=env
        )
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout.split()
        model = bytearray(SIZE)
        model[12345 : 12345 + 6000] = b"nbdsh!" * 1000
        model[12400 : 12400 + 100] = bytes(100)
        assert out[0] == str(SIZE)
        assert bytes.fromhex(out[1]) == bytes(model[12345 : 12345 + 6000])
        assert out[2:] == ["True"] * 4
        assert read_back(st, 0, 131072) == bytes(model[:131072])


def test_several_clients_at_once_on_separate_regions() -> None:
    need_tools("qemu-io")
    region = 1 << 20
    with served(SIZE) as st:
        uri = st.addresses[0]
        procs = [
            subprocess.Popen(
                [
                    "qemu-io",
                    "-f",
                    "raw",
                    "-c",
                    f"write -P {0x20 + i} {i * region + 512} {region - 1024}",
                    uri,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        for i in range(4):
            got = read_back(st, i * region, region)
            assert got == bytes(512) + bytes([0x20 + i]) * (region - 1024) + bytes(512)
        assert st.stats()["server"]["connections"] == 4 + 4  # the four clients, then the four read-backs


def test_nbdfuse_mkfs_ext4_and_fsck(workdir: Path) -> None:
    if not os.path.exists("/dev/fuse") or not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/fuse")
    need_tools("nbdfuse", "mkfs.ext4", "e2fsck", "umount")
    mnt = workdir / "mnt"
    mnt.mkdir()
    with served(32 << 20) as st:
        fuse = subprocess.Popen(
            ["nbdfuse", str(mnt), "--unix", st.socket_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            disk = mnt / "nbd"
            deadline = time.monotonic() + 20
            while not disk.exists() and fuse.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if not disk.exists():
                fuse.kill()
                err = fuse.communicate(timeout=10)[1].decode(errors="replace")
                if "permission" in err.lower() or "fuse" in err.lower():
                    pytest.skip(f"nbdfuse cannot mount here: {err.strip()}")
                pytest.fail(f"nbdfuse did not mount: {err}")
            run("mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(disk))
            fsck = run("e2fsck", "-fn", str(disk))
            assert "clean" in fsck.stdout or "files" in fsck.stdout
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True, timeout=20)
            try:
                fuse.wait(timeout=20)
            except subprocess.TimeoutExpired:
                fuse.kill()
                fuse.wait(timeout=10)
        mm = st.stats()["mm_stat"]
        assert mm["orig_data_size"] > 0 and mm["compr_data_size"] < mm["orig_data_size"]


def _map(uri: str) -> list[tuple[int, int, bool]]:
    """``nbdinfo --map --json``: (offset, length, hole) runs of base:allocation."""
    doc = json.loads(run("nbdinfo", "--map", "--json", uri).stdout)
    return [(e["offset"], e["length"], bool(e["type"] & 1)) for e in doc]


def _holes(runs: list[tuple[int, int, bool]], size: int) -> bytearray:
    """A byte per page: 1 where the runs say hole."""
    pages = bytearray(size // 4096)
    for off, n, hole in runs:
        if hole:
            pages[off // 4096 : (off + n) // 4096] = b"\x01" * (n // 4096)
    return pages


def test_block_status_shows_holes_for_unwritten_discarded_and_zeroed_pages(workdir: Path) -> None:
    """nbdinfo --map and qemu-img map: data where data was written, holes elsewhere."""
    need_tools("nbdinfo", "qemu-io", "qemu-img")
    with served(SIZE) as st:
        uri = st.addresses[0]
        assert _map(uri) == [(0, SIZE, True)]  # never written: one hole
        run(
            "qemu-io",
            "-f",
            "raw",
            "-c",
            "write -P 0x33 0 1M",  # data
            "-c",
            "write -P 0x44 2M 1M",  # data, then discarded
            "-c",
            "discard 2M 1M",
            "-c",
            "write -P 0x55 4M 1M",  # data, then zeroed
            "-c",
            "write -z 4M 1M",
            "-c",
            "write -P 0 6M 64k",  # written as zeros: same-filled, a hole
            "-c",
            "write -P 0x01 8M 64k",  # same-filled with another byte: data
            uri,
        )
        holes = _holes(_map(uri), SIZE)
        page = 1 << 20 >> 12
        assert holes[:page] == bytes(page)  # data
        assert holes[2 * page : 3 * page] == b"\x01" * page  # discarded
        assert holes[4 * page : 5 * page] == b"\x01" * page  # zeroed
        assert holes[6 * page : 6 * page + 16] == b"\x01" * 16  # zeros written
        assert holes[8 * page : 8 * page + 16] == bytes(16)  # another fill is data
        assert sum(holes) == len(holes) - page - 16
        doc = json.loads(run("qemu-img", "map", "--output=json", "-f", "raw", uri).stdout)
        data = [(e["start"], e["length"]) for e in doc if e["data"]]
        assert data == [(0, 1 << 20), (8 << 20, 64 << 10)]
        assert all(e["zero"] for e in doc if not e["data"])
