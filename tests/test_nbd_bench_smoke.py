"""Smoke test of ``benchmarks/bench_nbd.py --quick``: both servers measured, every copy intact.

The quick run copies an 8 MiB image through nbdcopy and qemu-img and does
512 random 4 KiB writes and reads through libnbd against ``zsmalloc serve``
and ``nbdkit memory allocator=zstd``; a few seconds.  It writes into a
temporary directory.  Its figures are not checked, only that both servers
were measured and that the copies came back intact.
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
    need_tools("nbdcopy", "qemu-img", "nbdkit", "nbdinfo")
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
    for key in ("nbdcopy_write_s", "nbdcopy_read_s", "qemu_img_write_s", "qemu_img_read_s"):
        row = doc["throughput"][key]
        assert row["ours"]["mb_per_s"] > 0 and row["nbdkit"]["mb_per_s"] > 0
    assert doc["memory"]["ours"]["rss_after"] > 0 and doc["memory"]["nbdkit"]["rss_after"] > 0
