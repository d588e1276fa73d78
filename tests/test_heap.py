"""mm.heap: the glibc calls that make the process's C heap give memory back.

What they do to RSS is measured where it matters, in ``benchmarks/bench_nbd.py``
(the server's RSS after the copies); here, that the calls exist and succeed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from zsmalloc.mm import heap

pytestmark = pytest.mark.skipif(heap._mallopt is None, reason="not glibc")


def test_fix_mmap_threshold_is_accepted_by_glibc():
    # process-wide, so in a process of its own
    probe = "from zsmalloc.mm.heap import fix_mmap_threshold as f; print(f(), f(256 << 10))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["True", "True"]


def test_trim_process_heap_is_there():
    assert heap.trim_process_heap()
