"""Smoke test of ``benchmarks/bench_nbd.py --quick``: every server measured, every copy intact.

The quick run copies an 8 MiB image through nbdcopy and qemu-img and runs
fio's nbd engine (2 MiB of 4 KiB random reads and as many writes) against
``zsmalloc serve`` (lz4 and zstd) and ``nbdkit memory`` (malloc and zstd);
a few seconds.  It writes into a temporary directory.  Its figures are not
checked, only that every server was measured and that the copies came back
intact.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nbd_helpers import need_tools

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_bench_nbd_quick(tmp_path: Path) -> None:
    need_tools("nbdcopy", "qemu-img", "nbdkit", "nbdinfo", "fio")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_nbd.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=85,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "## NBD (`bench_nbd.py`)" in proc.stdout
    doc = json.loads((tmp_path / "results" / "nbd.json").read_text(encoding="utf-8"))
    assert doc["quick"] is True and doc["intact"] is True
    servers = ("ours_lz4", "ours_zstd", "nbdkit_malloc", "nbdkit_zstd")
    for key in ("nbdcopy_write_s", "nbdcopy_read_s", "qemu_img_write_s", "fio_randread_s", "fio_randwrite_s"):
        row = doc["throughput"][key]
        assert all(row[s]["mb_per_s"] > 0 for s in servers), row
    assert all(doc["memory"][s]["rss_image"] > 0 for s in servers)
    assert all(run["ours_lz4"]["check"] == "ok" for run in doc["runs"])
