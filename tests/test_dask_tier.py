"""``zsmalloc.dask.TieredBuffer`` in one process: the mapping, the order of eviction, the memory it reports.

Each test runs on both pools (the Store is given a pool of the backend under
test); the workers of tests/test_dask_cluster.py run whichever
``ZSMALLOC_BACKEND`` names.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from distributed.sizeof import safe_sizeof

from zsmalloc import Pool
from zsmalloc.dask import TieredBuffer, worker_data
from zsmalloc.workloads import get_page_source

pytestmark = pytest.mark.usefixtures("each_backend")

PAGES = np.frombuffer(b"".join(get_page_source("kernel-build")(256, 7)), dtype=np.uint8).reshape(256, 4096)


def chunk(i: int, rows: int = 16) -> np.ndarray:
    """A compressible array of ``rows`` kernel-build pages, different for each ``i``."""
    return PAGES[np.random.default_rng(i).permutation(len(PAGES))[:rows]]


_made: list[TieredBuffer] = []


@pytest.fixture
def pool():
    p = Pool(name="tier")
    yield p
    while _made:  # the buffers give their values back before their pool closes
        _made.pop().close()
    p.close()


def make(tmp_path: Path, pool, target: int, compressed_target: int, **kw) -> TieredBuffer:
    buf = TieredBuffer(str(tmp_path / "spill"), target, compressed_target, pool=pool, **kw)
    _made.append(buf)
    return buf


def spill_files_bytes(tmp_path: Path) -> int:
    d = tmp_path / "spill"
    return sum(f.stat().st_size for f in d.iterdir()) if d.exists() else 0


def test_mapping_protocol(tmp_path: Path, pool) -> None:
    buf = make(tmp_path, pool, target=10_000, compressed_target=1 << 20)
    values = {
        "array": chunk(1),
        ("tuple", 1): b"x" * 50_000,
        "object": {"a": [1, 2, 3], "b": "text"},
        "same": np.zeros(100_000, dtype=np.uint8),
    }
    for k, v in values.items():
        buf[k] = v
    assert len(buf) == 4 and set(buf) == set(values)
    assert "array" in buf and "missing" not in buf
    assert (buf["array"] == values["array"]).all()
    assert buf[("tuple", 1)] == values[("tuple", 1)]
    assert buf["object"] == values["object"]
    assert not buf["same"].any() and buf["same"].flags.writeable
    buf["object"] = "replaced"
    assert buf["object"] == "replaced" and len(buf) == 4
    del buf[("tuple", 1)]
    assert ("tuple", 1) not in buf and len(buf) == 3
    with pytest.raises(KeyError):
        buf["missing"]
    with pytest.raises(KeyError):
        del buf["missing"]
    with pytest.raises(NotImplementedError):  # SpillBuffer's guard: use del, not pop(key, None)
        buf.pop("array", None)


def test_eviction_order_fast_then_store_then_disk(tmp_path: Path, pool) -> None:
    one = safe_sizeof(chunk(0))
    buf = make(tmp_path, pool, target=3 * one, compressed_target=96 << 10)
    keys = [f"k{i}" for i in range(40)]
    for i, k in enumerate(keys):
        buf[k] = chunk(i)
    fast, compressed, disk = list(buf.fast), list(buf.compressed), list(buf.disk)
    assert fast == keys[-3:]  # the newest in fast
    assert compressed and disk
    # oldest on disk, then the Store, then fast: a partition of the keys in insertion order
    assert disk + compressed + fast == keys
    assert buf.compressed_memory <= 96 << 10
    # reads do not move anything (no promotion) and return the right values
    for i, k in enumerate(keys):
        assert (buf[k] == chunk(i)).all()
    assert (list(buf.fast), list(buf.compressed), list(buf.disk)) == (fast, compressed, disk)


def test_evict_moves_the_oldest_fast_value_to_the_store(tmp_path: Path, pool) -> None:
    buf = make(tmp_path, pool, target=1 << 30, compressed_target=1 << 30)
    for i in range(3):
        buf[i] = chunk(i)
    assert buf.evict() == safe_sizeof(chunk(0))
    assert list(buf.fast) == [1, 2] and list(buf.compressed) == [0] and not buf.disk
    assert (buf[0] == chunk(0)).all()


def test_memory_reporting(tmp_path: Path, pool) -> None:
    one = safe_sizeof(chunk(0))
    buf = make(tmp_path, pool, target=2 * one, compressed_target=64 << 10)
    for i in range(30):
        buf[i] = chunk(i)
    total = sum(safe_sizeof(chunk(i)) for i in range(30))
    memory, disk = buf.spilled_total
    assert disk == spill_files_bytes(tmp_path) > 0
    # the scheduler's managed memory: every sizeof() less spilled memory = fast + the Store's pages
    assert total - memory == buf.fast.total_weight + min(buf.compressed_sizeof, buf.compressed_memory)
    assert buf.compressed_memory < buf.compressed_sizeof  # the Store holds compressed pages
    assert buf.compressed_sizeof == sum(safe_sizeof(chunk(i)) for i in buf.compressed)
    assert disk < sum(safe_sizeof(chunk(i)) for i in buf.disk) / 2  # the disk copies are compressed
    metrics = buf.cumulative_metrics
    assert metrics["disk-write", "count"] == len(buf.disk)
    assert metrics["disk-write", "bytes"] == disk
    for i in range(30):
        del buf[i]
    assert buf.spilled_total == (0, 0) and len(buf) == 0
    assert buf.compressed_sizeof == 0 and spill_files_bytes(tmp_path) == 0


def test_overwriting_a_spilled_key(tmp_path: Path, pool) -> None:
    buf = make(tmp_path, pool, target=safe_sizeof(chunk(0)), compressed_target=0)
    buf["a"] = chunk(1)
    buf["b"] = chunk(2)  # "a" goes through the Store to disk
    assert list(buf.disk) == ["a"]
    written = buf.spilled_total.disk
    buf["a"] = b"new"  # the old copy is dropped; "b", now the oldest, goes to disk
    assert buf["a"] == b"new" and list(buf.fast) == ["a"] and list(buf.disk) == ["b"]
    assert len(os.listdir(tmp_path / "spill")) == 1
    assert buf.spilled_total.disk == spill_files_bytes(tmp_path) != written


def test_a_value_that_does_not_pickle(tmp_path: Path, pool) -> None:
    buf = make(tmp_path, pool, target=1 << 20, compressed_target=1 << 20)
    buf["lock"] = threading.Lock()
    assert buf.evict() == -1  # logged; it stays in fast
    assert "lock" in buf.fast
    heavy = make(tmp_path / "heavy", pool, target=0, compressed_target=1 << 20)
    with pytest.raises(TypeError, match="pickle"):
        heavy["lock"] = threading.Lock()  # heavier than target: straight to slow, refused
    assert "lock" not in heavy


def test_max_spill_keeps_values_compressed_in_ram(tmp_path: Path, pool) -> None:
    buf = make(tmp_path, pool, target=0, compressed_target=0, max_spill=1)
    for i in range(4):
        buf[i] = chunk(i)  # each would go to disk; the disk may hold 1 byte: they stay in the Store
    assert not buf.disk and list(buf.compressed) == [0, 1, 2, 3]
    assert buf.spilled_total.disk == 0 and spill_files_bytes(tmp_path) == 0
    assert all((buf[i] == chunk(i)).all() for i in range(4))


def test_compression_choices(tmp_path: Path, pool) -> None:
    sizes = {}
    for codec in ("zstd", "lz4", "none"):
        buf = make(tmp_path / codec, pool, target=0, compressed_target=1 << 30, compression=codec)
        buf["x"] = chunk(3, rows=64)
        assert (buf["x"] == chunk(3, rows=64)).all()
        # the compressed bytes: the pages of a single value also depend on the zspage its tail lands in
        sizes[codec] = buf.tiers.layer.compressed_nbytes
        assert buf.compressed_memory >= sizes[codec]
        del buf["x"]
    assert sizes["zstd"] < sizes["lz4"] < sizes["none"]


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_large_values_come_back_from_disk(tmp_path: Path, pool, codec: str) -> None:
    buf = make(tmp_path, pool, target=0, compressed_target=0, compression=codec)  # straight to disk
    values = {i: chunk(i, rows=256) for i in range(3)}  # 1 MiB: an lz4 payload of several blocks
    for k, v in values.items():
        buf[k] = v
    assert spill_files_bytes(tmp_path) > 0 and not buf.tiers.layer
    assert all((buf[k] == v).all() for k, v in values.items())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": -1, "compressed_target": 0}, "target"),
        ({"target": 0, "compressed_target": 1.5}, "compressed_target"),
        ({"target": 0, "compressed_target": 0, "max_spill": "1 GiB"}, "max_spill"),
        ({"target": 0, "compressed_target": 0, "compression": "brotli"}, "compression"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TieredBuffer(str(tmp_path), **kwargs)


def test_worker_data(tmp_path: Path) -> None:
    func, kwargs = worker_data("100 MiB", fast_fraction=0.2, compressed_fraction=0.3, max_spill="1 MiB")
    assert kwargs == {
        "target": 20 << 20,
        "compressed_target": int(0.3 * (100 << 20)),
        "max_spill": 1 << 20,
        "compression": "zstd",
    }
    buf = func(worker_local_directory=str(tmp_path), **kwargs)
    assert isinstance(buf, TieredBuffer) and buf.tiers.max_spill == 1 << 20
    assert os.path.isdir(tmp_path / "storage")  # where SpillBuffer would spill
    for bad, match in (
        ({"memory_limit": 0}, "memory_limit"),
        ({"memory_limit": "1 GiB", "fast_fraction": 1.2}, "fast_fraction"),
        ({"memory_limit": "1 GiB", "fast_fraction": 0.6, "compressed_fraction": 0.5}, "below 1"),
        ({"memory_limit": "1 GiB", "compression": "gzip"}, "compression"),
    ):
        with pytest.raises(ValueError, match=match):
            worker_data(**bad)
