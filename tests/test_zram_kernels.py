"""Kernel presets (zsmalloc.zram.kernels) and zstd as zram stores it, on both devices."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner
from tests.zram_pages import text_page

from zsmalloc.cli import main
from zsmalloc.zram import KERNELS, ZramDevice, library_versions
from zsmalloc.zram.codecs import get_codec
from zsmalloc.zram.kernels import apply_kernel, kernel_preset

pytestmark = pytest.mark.usefixtures("each_backend")

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PAGE = 4096


def _stored(dev: ZramDevice, index: int) -> bytes:
    info = dev.slot_info(index)
    return dev.pool.read(info.handle, info.size)


@pytest.mark.parametrize("kernel", ["6.1", "6.6", "6.12", "6.17"])
def test_a_kernel_preset_stores_zstd_in_the_kernels_frame(kernel: str) -> None:
    page = text_page(random.Random(3))
    with (
        ZramDevice(16 * PAGE, algorithm="zstd", kernel=kernel) as dev,
        ZramDevice(16 * PAGE, algorithm="zstd") as own,
    ):
        dev.write_page(0, page)
        own.write_page(0, page)
        assert dev.read_page(0) == page
        kernels = _stored(dev, 0)
        assert kernels[:4] == ZSTD_MAGIC
        assert _stored(own, 0)[:4] != ZSTD_MAGIC
        # the magic number and the content size: a few bytes more a page
        assert 4 <= len(kernels) - len(_stored(own, 0)) <= 12
        assert dev.pool.chain_size == KERNELS[kernel].chain_size
        dev.check()


def test_each_frame_is_what_zstd_makes_with_the_kernels_parameters() -> None:
    page = text_page(random.Random(5))
    page_tuned = get_codec("zstd", frame="page").compress(page)
    crypto = get_codec("zstd", frame="crypto").compress(page)
    assert page_tuned[:4] == crypto[:4] == ZSTD_MAGIC
    for frame in ("page", "crypto", "magicless"):
        codec = get_codec("zstd", frame=frame)
        assert codec.decompress(codec.compress(page)) == page
    with pytest.raises(ValueError, match="level 3"):
        get_codec("zstd", level=5, frame="crypto")
    with pytest.raises(ValueError, match="only zstd"):
        get_codec("lz4", frame="page")
    with pytest.raises(ValueError, match="frame"):
        get_codec("zstd", frame="kernel")


def test_presets_refuse_what_that_kernel_does_not_do() -> None:
    with pytest.raises(ValueError, match="unknown kernel"):
        ZramDevice(16 * PAGE, kernel="5.4")
    with pytest.raises(ValueError, match="chain size 4"):
        ZramDevice(16 * PAGE, kernel="6.1", chain_size=8)
    with pytest.raises(ValueError, match="no recompression"):
        ZramDevice(16 * PAGE, kernel="6.1", recompress_algorithm="zstd")
    with ZramDevice(16 * PAGE, kernel="6.6", recompress_algorithm="lz4") as dev:
        assert dev.algorithms == ("lz4-kernel", "lz4-kernel")
    with pytest.raises(ValueError, match="takes no level"):
        ZramDevice(16 * PAGE, algorithm="zstd", kernel="6.1", algorithm_params={"level": 1})
    with pytest.raises(ValueError, match="chain size 8"):
        ZramDevice(16 * PAGE, kernel="6.12", chain_size=4)
    with pytest.raises(ValueError, match="takes no level"):
        ZramDevice(16 * PAGE, algorithm="zstd", kernel="6.6", algorithm_params={"level": 5})
    with pytest.raises(ValueError, match="frames zstd as"):
        ZramDevice(16 * PAGE, algorithm="zstd", kernel="6.12", algorithm_params={"frame": "magicless"})
    with pytest.raises(ValueError, match="frame must be one of"):
        ZramDevice(16 * PAGE, algorithm="zstd", algorithm_params={"frame": "bogus"})
    # 6.12's zram takes a level; lz4 under a preset keeps its own params
    with ZramDevice(16 * PAGE, algorithm="zstd", kernel="6.12", algorithm_params={"level": 7}) as dev:
        dev.write_page(0, text_page(random.Random(1)))
        assert dev.read_page(0) == text_page(random.Random(1))
    setup = apply_kernel("6.12", "lz4", None, {"level": 2})
    assert (setup.chain_size, setup.params) == (8, {"level": 2})
    assert kernel_preset("6.17").zstd_frame == "page"


def test_the_library_versions_are_named() -> None:
    versions = library_versions()
    assert set(versions) == {"lz4", "zstd"}
    assert all(v.count(".") == 2 for v in versions.values())


def test_stats_takes_a_kernel_and_says_what_compressed() -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["stats", "--pages", "64", "--algorithm", "zstd", "--kernel", "6.12", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["kernel"] == "6.12" and doc["chain_size"] == 8
    assert set(doc["libraries"]) == {"lz4", "zstd"}
    r = runner.invoke(main, ["stats", "--pages", "64", "--algorithm", "zstd", "--kernel", "6.6"])
    assert r.exit_code == 0, r.output
    assert "kernel 6.6 preset" in r.output and "libzstd" in r.output
    r = runner.invoke(main, ["stats", "--pages", "64", "--kernel", "6.12", "--chain-size", "4"])
    assert r.exit_code == 2 and "chain size 8" in r.output


def test_the_61_preset_is_61s_zsmalloc() -> None:
    """6.1: at most 4 pages a zspage by the used-percentage rule, huge from 3257 bytes, legacy groups."""
    with ZramDevice(64 * PAGE, kernel="6.1") as dev:
        pool = dev.pool
        assert (pool.chain_size, pool.class_rule, pool.fullness) == (4, "used-percentage", "legacy")
        assert pool.huge_class_size == 3257  # class 3264 (4 pages, 5 objects) - 7
        assert max(r.pages_per_zspage for r in pool.class_stats()) == 4
        rng = random.Random(7)
        pages = [text_page(rng) for _ in range(48)]
        for i, page in enumerate(pages):
            dev.write_page(i, page)
        dev.write_page(48, bytes(PAGE))  # same-filled: no object
        dev.discard(0, 24)
        dev.compact()
        assert all(dev.read_page(i) == pages[i] for i in range(24, 48))
        stat = dev.mm_stat()
        assert stat.same_pages == 1 and stat.mem_used_total == pool.total_pages * PAGE
        assert "almost_full" in pool.format_classes().splitlines()[0]
        dev.check()


def test_a_pool_given_under_a_preset_must_be_that_kernels(each_backend) -> None:
    pool_class = each_backend.Pool
    with (
        pool_class(name="wrong") as pool,
        pytest.raises(ValueError, match="chain size 4, the used-percentage"),
    ):
        ZramDevice(16 * PAGE, kernel="6.1", pool=pool)
    shape = {"chain_size": 4, "class_rule": "used-percentage", "fullness": "legacy"}
    with pool_class(name="right", **shape) as pool, ZramDevice(16 * PAGE, kernel="6.1", pool=pool) as dev:
        dev.write_page(0, text_page(random.Random(2)))
        assert dev.pool is pool


def test_stats_takes_the_61_preset() -> None:
    runner = CliRunner()
    r = runner.invoke(
        main, ["stats", "--pages", "64", "--kernel", "6.1", "--discard", "0.5", "--compact", "--json"]
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert (doc["kernel"], doc["chain_size"], doc["class_rule"], doc["fullness"]) == (
        "6.1",
        4,
        "used-percentage",
        "legacy",
    )
    r = runner.invoke(main, ["stats", "--pages", "64", "--kernel", "6.1"])
    assert r.exit_code == 0, r.output
    assert "almost_full" in r.output and "kernel 6.1 preset" in r.output
