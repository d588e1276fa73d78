"""mm.heap: the glibc call that makes the process's C heap give memory back.

What it does to RSS is measured where it matters, in the benchmarks (RSS
after frees); here, that the call exists and succeeds.
"""

from __future__ import annotations

import pytest

from zsmalloc.mm import heap

pytestmark = pytest.mark.skipif(heap._malloc_trim is None, reason="not glibc")


def test_trim_process_heap_is_there():
    assert heap.trim_process_heap()
