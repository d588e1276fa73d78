"""Smoke test of the benchmark suite: ``benchmarks/run_all.py --quick`` runs and reports.

The quick run shrinks every size (20k objects for density, 1e3..1e5 live
objects for speed, 10k objects for migration and churn, 5k for the compaction
sweep, 2k pages for zram, 2k objects a thread for threads, 8 MiB for store,
an in-process cluster of two 16 MiB workers for dask) so that it takes well
under a minute and a half; it writes into a temporary directory (``--out``),
never over ``benchmarks/RESULTS.md``.  Its figures are not checked, only that the
run finishes and writes every section.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN_ALL = REPO / "benchmarks" / "run_all.py"


@pytest.mark.timeout(90)
def test_run_all_quick(tmp_path: Path) -> None:
    real_results = REPO / "benchmarks" / "RESULTS.md"
    before = real_results.stat().st_mtime_ns if real_results.exists() else None

    proc = subprocess.run(
        [sys.executable, str(RUN_ALL), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=85,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    text = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    for section in (
        "# Benchmark results",
        "## Machine",
        "## Method",
        "## Targets",
        "## Density (`bench_density.py`)",
        "### Pages",
        "### Process memory (RSS)",
        "## Speed (`bench_speed.py`)",
        "## Migration (`bench_migration.py`)",
        "### Throughput, random in-use pages of a filled pool",
        "### µs per page against objects per page",
        "## Churn (`bench_churn.py`)",
        "## Compaction work (`bench_compaction_work.py`)",
        "## zram (`bench_zram.py`)",
        "## Threads and the GIL (`bench_threads.py`)",
        "## Store (`bench_store.py`)",
        "## Fragmentation simulation (`bench_fragsim.py`)",
        "## Dask (`bench_dask.py`)",
        "CPU model",
        "gc.disable()",
        "--quick",
    ):
        assert section in text, f"RESULTS.md lacks {section!r}"
    assert "PASS" in text or "FAIL" in text
    assert "CRASHED" not in text

    names = ("density", "speed", "migration", "churn", "compaction_work")
    for name in (*names, "zram", "threads", "store", "fragsim", "dask"):
        doc = json.loads((tmp_path / "results" / f"{name}.json").read_text(encoding="utf-8"))
        assert doc["name"] == name and doc["quick"] is True
        assert doc["targets"], f"{name}.json has no targets"
    # the exact page count is deterministic: it must match even in a quick run
    density = json.loads((tmp_path / "results" / "density.json").read_text(encoding="utf-8"))
    assert all(row["pages_match"] for row in density["pools"])

    after = real_results.stat().st_mtime_ns if real_results.exists() else None
    assert after == before, "a --out run must leave benchmarks/RESULTS.md alone"
