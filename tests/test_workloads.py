"""The workload page sources: mix-shaped synthetic pages, pages of real files, process snapshots."""

from __future__ import annotations

import bisect
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import textwrap

import lz4.block
import psutil
import pytest
import zstandard

import zsmalloc.workloads.sizes
from zsmalloc.workloads import (
    MIXES,
    PAGE_SIZE,
    PAGE_SOURCES,
    file_pages,
    get_mix,
    get_page_source,
    mix_pages,
    page_of_size,
    process_pages,
    snapshot_pages,
    tolerance,
)
from zsmalloc.workloads.process import _anonymous_regions, heap_child


def lz4_size(page: bytes) -> int:
    """An independent call of the library, as the device makes it."""
    return len(lz4.block.compress(page, store_size=False))


def is_same_filled(page: bytes) -> bool:
    return page[:8] * (PAGE_SIZE // 8) == page


def ks_distance(a: list[int], b: list[int]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = sorted(a), sorted(b)
    return max(abs(bisect.bisect_right(a, x) / len(a) - bisect.bisect_right(b, x) / len(b)) for x in {*a, *b})


def no_children_left() -> bool:
    """No live child but multiprocessing's resource tracker, which a spawn-based test run
    earlier in this process (tests/test_dask_cluster.py's LocalCluster) leaves for the
    process's lifetime."""
    return all(
        c.status() == psutil.STATUS_ZOMBIE or "multiprocessing.resource_tracker" in " ".join(c.cmdline())
        for c in psutil.Process().children(recursive=True)
    )


# ----------------------------------------------------------------------
# size mixes: the package keeps what the module exported


def test_size_mixes_are_still_exported_by_the_package():
    assert MIXES is zsmalloc.workloads.sizes.MIXES
    assert get_mix("kernel-build") is MIXES["kernel-build"]
    sizes = get_mix("kernel-build").sizes(20000, seed=1)
    assert 1400 < statistics.mean(sizes) < 1650


# ----------------------------------------------------------------------
# mix pages


def test_page_of_size_compresses_to_its_target():
    rng = random.Random(5)
    for target in range(32, PAGE_SIZE, 11):
        page = page_of_size(target, rng)
        assert len(page) == PAGE_SIZE and not is_same_filled(page)
        assert abs(lz4_size(page) - target) <= tolerance(target), target
    assert lz4_size(page_of_size(PAGE_SIZE, rng)) > PAGE_SIZE  # huge: random bytes
    sparsest = page_of_size(1, rng)  # out of reach: the sparsest page, still not same-filled
    assert not is_same_filled(sparsest) and lz4_size(sparsest) < 40


def test_page_of_size_calibrates_against_another_codec():
    cctx = zstandard.ZstdCompressor(level=3)
    rng = random.Random(6)
    for target in range(40, 3600, 97):
        page = page_of_size(target, rng, cctx.compress)
        assert abs(len(cctx.compress(page)) - target) <= tolerance(target), target


@pytest.mark.parametrize("name", ["kernel-build", "android-zstd"])
def test_mix_pages_follow_the_mix(name):
    n = 5000
    pages = list(mix_pages(name, n, seed=11))
    assert len(pages) == n and all(len(p) == PAGE_SIZE for p in pages)
    same = [p for p in pages if is_same_filled(p)]
    assert 0.12 < len(same) / n < 0.18  # 15% same-filled
    assert 0.8 < sum(p == bytes(PAGE_SIZE) for p in same) / len(same) < 0.97  # 90% of them zero
    stored = [min(PAGE_SIZE, lz4_size(p)) for p in pages if not is_same_filled(p)]
    expected = get_mix(name).sizes(100_000, seed=12)
    assert statistics.mean(stored) == pytest.approx(statistics.mean(expected), rel=0.03)
    # the KS critical value at alpha 0.001 for these sample sizes is about 0.03; a 4% shift of the
    # kernel-build sizes moves the CDF by about 0.05
    assert ks_distance(stored, expected) < 0.03
    huge = sum(s == PAGE_SIZE for s in stored) / len(stored)
    assert huge == pytest.approx(sum(s == PAGE_SIZE for s in expected) / len(expected), abs=0.015)


def test_mix_pages_same_filled_share_is_a_parameter():
    assert not any(is_same_filled(p) for p in mix_pages("uniform", 300, seed=1))
    assert all(is_same_filled(p) for p in mix_pages("kernel-build", 50, seed=1, same_filled=1.0))
    with pytest.raises(ValueError, match="same_filled"):
        mix_pages("kernel-build", 10, same_filled=1.5)
    with pytest.raises(ValueError, match="unknown size mix"):
        mix_pages("no-such-mix", 10)


def test_mix_pages_are_determined_by_the_seed():
    first = list(mix_pages("kernel-build", 400, seed=3))
    assert list(mix_pages("kernel-build", 400, seed=3)) == first
    assert list(mix_pages("kernel-build", 400, seed=4)) != first
    assert list(mix_pages("kernel-build", 100, seed=3)) == first[:100]


def _digest(pages) -> str:
    h = hashlib.sha256()
    for page in pages:
        h.update(page)
    return h.hexdigest()


def test_pages_are_the_same_in_another_process():
    """No dependence on hash randomisation or on anything but the seed (and, for files, the files)."""
    code = textwrap.dedent(
        """
        import hashlib
        from zsmalloc.workloads import file_pages, mix_pages
        for pages in (mix_pages("android-zstd", 500, seed=9), file_pages("stdlib", 64 * 4096, seed=9)):
            h = hashlib.sha256()
            for page in pages:
                h.update(page)
            print(h.hexdigest())
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        _digest(mix_pages("android-zstd", 500, seed=9)),
        _digest(file_pages("stdlib", 64 * PAGE_SIZE, seed=9)),
    ]


# ----------------------------------------------------------------------
# file pages


def test_file_pages_cut_pad_and_cap(tmp_path):
    sizes = {"a": 0, "b": 10, "c": 4096, "d": 5000, "e": 9000}
    contents = {name: random.Random(name).randbytes(size) for name, size in sizes.items()}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "link-to-e").symlink_to(tmp_path / "e")
    paths = [tmp_path / name for name in (*contents, "link-to-e", "missing")]

    def padded(data: bytes) -> list[bytes]:
        return [data[at : at + PAGE_SIZE].ljust(PAGE_SIZE, b"\0") for at in range(0, len(data), PAGE_SIZE)]

    every = sorted(page for data in contents.values() for page in padded(data))
    orders = set()
    for seed in range(8):
        pages = list(file_pages(paths, 1 << 20, seed))
        assert sorted(pages) == every  # 0 + 1 + 1 + 2 + 3 pages: e once, through its link too
        orders.add(tuple(pages))
        assert list(file_pages(paths, 1 << 20, seed)) == pages
        assert list(file_pages(paths, 3 * PAGE_SIZE + 100, seed)) == pages[:3]
    assert len(orders) > 1
    with pytest.raises(FileNotFoundError):
        file_pages([tmp_path / "missing"], 1 << 20)
    with pytest.raises(ValueError, match="unknown kind"):
        file_pages("no-such-kind", 1 << 20)


def test_stdlib_pages_are_python_source():
    pages = list(file_pages("stdlib", 200 * PAGE_SIZE, seed=2))
    assert len(pages) == 200 and all(len(p) == PAGE_SIZE for p in pages)
    assert sum(b"def " in p or b"import " in p for p in pages) > 100
    assert list(file_pages("stdlib", 200 * PAGE_SIZE, seed=3)) != pages


def test_shared_library_pages_are_elf():
    pages = list(file_pages("shared-libs", 300 * PAGE_SIZE, seed=2))
    assert len(pages) == 300
    assert any(p.startswith(b"\x7fELF") for p in pages)
    assert 1500 < statistics.mean(min(PAGE_SIZE, lz4_size(p)) for p in pages) < PAGE_SIZE


# ----------------------------------------------------------------------
# process snapshots


def test_snapshot_reads_the_private_writable_anonymous_mappings():
    maps = textwrap.dedent(
        """\
        55d000-55e000 rw-p 00000000 00:00 0                          [heap]
        7f0000-7f1000 rw-p 00000000 00:00 0
        7f1000-7f2000 rw-p 00001000 08:01 123                        /usr/lib/libc.so.6
        7f2000-7f3000 rw-p 00000000 00:00 0                          [anon:arena]
        7f3000-7f4000 r--p 00000000 00:00 0
        7f4000-7f5000 rw-s 00000000 00:01 77                         /dev/zero (deleted)
        7ffd00-7ffe00 rw-p 00000000 00:00 0                          [stack]
        """
    )
    expected = [(0x55D000, 0x55E000), (0x7F0000, 0x7F1000), (0x7F2000, 0x7F3000)]
    assert list(_anonymous_regions(maps)) == expected


def test_process_pages_read_a_child_heap_and_kill_it():
    pages = process_pages(max_bytes=2 << 20, seed=1, timeout=30)
    assert 0 < len(pages) <= 512 and all(len(p) == PAGE_SIZE for p in pages)
    assert any(b"zsmalloc-heap-" in p for p in pages)  # the child's dict keys
    assert no_children_left()


def test_heap_child_is_killed_when_it_is_not_ready_in_time():
    with pytest.raises(TimeoutError), heap_child(heap_bytes=1 << 40, timeout=0.2):
        pytest.fail("the child cannot have built a terabyte")
    assert no_children_left()


def test_snapshot_of_no_process():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    with pytest.raises(ProcessLookupError):
        snapshot_pages(proc.pid, 1 << 20)


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root, and no setpriv")
def test_snapshot_refused_by_the_kernel_raises_snapshot_not_permitted():
    """A non-dumpable target (PR_SET_DUMPABLE 0), read without CAP_SYS_PTRACE (setpriv drops it from root)."""
    non_dumpable = "import ctypes, sys; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); sys.stdin.read()"
    target = subprocess.Popen([sys.executable, "-c", non_dumpable], stdin=subprocess.PIPE)
    code = textwrap.dedent(
        f"""
        from zsmalloc.workloads import SnapshotNotPermitted, snapshot_pages
        try:
            snapshot_pages({target.pid}, 1 << 20)
        except SnapshotNotPermitted as e:
            assert isinstance(e, PermissionError) and "ptrace" in str(e)
            print("refused")
        """
    )
    reader = [sys.executable, "-c", code]
    if os.geteuid() == 0:  # root: drop CAP_SYS_PTRACE
        reader[:0] = ["setpriv", "--bounding-set=-sys_ptrace"]
    try:
        out = subprocess.run(reader, capture_output=True, text=True, timeout=60)
    finally:
        target.kill()
        target.communicate(timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused"


# ----------------------------------------------------------------------
# the registry


def test_page_sources_make_at_most_n_pages():
    assert set(MIXES) <= set(PAGE_SOURCES)
    assert {"stdlib", "shared-libs", "process"} <= set(PAGE_SOURCES)
    for name, source in PAGE_SOURCES.items():
        assert get_page_source(name) is source
        pages = list(source(5, 1))
        assert 0 < len(pages) <= 5 and all(len(p) == PAGE_SIZE for p in pages), name
    assert list(get_page_source("kernel-build")(20, 3)) == list(mix_pages("kernel-build", 20, seed=3))
    with pytest.raises(ValueError, match="unknown page source"):
        get_page_source("no-such-source")
