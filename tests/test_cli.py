"""The ``zsmalloc`` console script, driven through click's runner on small inputs."""

from __future__ import annotations

import json

import lz4.block
import pytest
from click.testing import CliRunner

from zsmalloc.cli import main
from zsmalloc.zram import ZramDevice
from zsmalloc.zram.zstdlib import find_library

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_demo_json_reports_an_intact_device_and_the_peer(tmp_path):
    png = tmp_path / "demo.png"
    out = json.loads(run("demo", "--pages", "600", "--png", str(png), "--json"))
    dev, peer = out["device"], out["peer"]
    assert dev["pages_verified"] == 600 and dev["pages_corrupt"] == 0
    assert peer["pages_corrupt"] == 0
    assert dev["churn_ops"] == int(600 * 0.3) + int(600 * 0.4)
    # compaction does not add pool pages, and the arena's high-water mark does not rise
    assert dev["after_compaction"]["pool_pages"] <= dev["before_compaction"]["pool_pages"]
    assert dev["arena_compaction"]["hwm_after"] <= dev["arena_compaction"]["hwm_before"]
    # mm_stat after the churn: 30% rewritten, 40% discarded -> 60% of the pages stored
    assert dev["mm_stat"]["orig_data_size"] == (600 - int(600 * 0.4)) * 4096
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_demo_takes_a_kernel_preset():
    out = json.loads(run("demo", "--pages", "300", "--no-png", "--kernel", "6.12", "--json"))
    assert (out["kernel"], out["chain_size"]) == ("6.12", 8)
    assert out["device"]["pages_corrupt"] == 0
    refused = CliRunner().invoke(
        main, ["demo", "--pages", "64", "--no-png", "--kernel", "6.12", "--chain-size", "4"]
    )
    assert refused.exit_code == 2 and "chain size 8" in refused.output


def test_demo_text_prints_the_kernel_files(tmp_path):
    out = run("demo", "--pages", "400", "--no-png", "--workload", "android-zstd")
    assert "/sys/kernel/debug/zsmalloc/zram0/classes" in out
    assert "obj_allocated" in out and "pages_per_zspage" in out
    assert "mm_stat:" in out and "dict of lz4" in out
    assert "verified 400 pages byte for byte, 0 wrong" in out


def test_stats_of_an_image_match_a_device_fed_by_hand(tmp_path):
    image = tmp_path / "disk.img"
    text = b"the quick brown fox jumps over the lazy dog\n" * 300
    image.write_bytes(text + bytes(4096 * 3) + b"tail")  # partial last page
    out = json.loads(run("stats", "--image", str(image), "--json"))
    pages = -(-image.stat().st_size // 4096)
    assert out["disksize"] == pages * 4096
    data = image.read_bytes().ljust(pages * 4096, b"\0")
    with ZramDevice(pages * 4096) as dev:
        for i in range(pages):
            dev.write_page(i, data[i * 4096 : (i + 1) * 4096])
        assert out["mm_stat"] == dev.mm_stat().to_dict()
    assert out["mm_stat"]["same_pages"] >= 2  # the zero pages in the middle


@pytest.mark.parametrize(
    ("kernel", "warned"),
    # 6.17's lib/zstd is 1.5.7, 6.1's 1.4.10: reproduced when that library is here (make zstd-library)
    [
        ("6.12", False),
        ("6.6", False),
        ("6.17", find_library("1.5.7") is None),
        ("6.1", find_library("1.4.10") is None),
    ],
)
def test_stats_warn_where_the_kernels_lib_zstd_compresses_otherwise(tmp_path, kernel, warned):
    image = tmp_path / "disk.img"
    image.write_bytes(b"pages of text, compressed by zstd\n" * 500)
    out = run("stats", "--image", str(image), "--algorithm", "zstd", "--kernel", kernel)
    assert ("does not reproduce" in out) is warned, out
    if warned:
        assert f"kernel {kernel}'s lib/zstd is " in out


def test_stats_discard_ranges_free_those_pages_as_blkdiscard_would(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(b"".join(bytes([i % 251 + 1]) * 2048 + bytes(range(256)) * 8 for i in range(40)))
    out = json.loads(
        run("stats", "--image", str(image), "--discard-ranges", "3:5,20:1", "--compact", "--json")
    )
    assert out["discard_ranges"] == [[3, 5], [20, 1]]
    with ZramDevice(40 * 4096) as dev:
        data = image.read_bytes()
        for i in range(40):
            dev.write_page(i, data[i * 4096 : (i + 1) * 4096])
        dev.discard(3, 5)
        dev.discard(20, 1)
        dev.compact()
        assert out["mm_stat"] == dev.mm_stat().to_dict()
    assert out["mm_stat"]["orig_data_size"] == (40 - 6) * 4096
    assert out["io_stat"]["notify_free"] == 6


@pytest.mark.parametrize(
    ("ranges", "message"),
    [("3-5", "is not FIRST:COUNT"), ("3:x", "is not FIRST:COUNT"), ("38:3", "outside the device")],
)
def test_stats_discard_ranges_refuse_bad_ranges(tmp_path, ranges, message):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(40 * 4096))
    result = CliRunner().invoke(main, ["stats", "--image", str(image), "--discard-ranges", ranges])
    assert result.exit_code == 2 and message in result.output


def test_stats_discard_ranges_and_a_share_exclude_each_other(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(8 * 4096))
    args = ["stats", "--image", str(image), "--discard-ranges", "0:1", "--discard", "0.5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "exclude each other" in result.output


def test_stats_text_has_the_sysfs_files():
    out = run("stats", "--pages", "300", "--discard", "0.5", "--compact", "--algorithm", "zstd")
    for name in ("disksize", "comp_algorithm", "mm_stat", "io_stat", "bd_stat"):
        assert f"/sys/block/zram0/{name}" in out
    assert "[zstd]" in out


def test_bench_json_compares_the_same_pages():
    out = json.loads(run("bench", "--pages", "300", "--rounds", "1", "--json"))
    stores = out["stores"]
    assert "dict of lz4 bytes" in stores and len(stores) >= 2
    assert all(s["pages_wrong"] == 0 and s["write_pages_per_s"] > 0 for s in stores.values())
    ours = next(iter(stores.values()))
    assert ours["ours_over_this_write"] == pytest.approx(1.0)


def test_bench_lz4_dict_peer_stores_lz4_blocks():
    from zsmalloc.cli.bench import time_lz4_dict

    pages = [bytes([i]) * 4096 for i in range(5)]
    d, (_, _, bad) = time_lz4_dict(pages, [4, 3, 2, 1, 0])
    assert bad == 0
    assert lz4.block.decompress(d[3], uncompressed_size=4096) == pages[3]


def test_pool_demo_and_classes_json():
    out = json.loads(run("pool-demo", "--objects", "3000", "--json"))
    assert out["objects_corrupt"] == 0 and out["stages"]["after freeing all"]["pages"] == 0
    classes = json.loads(run("classes", "--json"))
    assert classes[-1]["size"] == 4096


def test_protocheck_finds_the_2016_race():
    result = CliRunner().invoke(main, ["protocheck", "seed-race", "--protocol", "2016-v3"])
    assert result.exit_code != 0
    assert "CorruptionError" in result.output


def test_protocheck_json_names_the_minimal_sequence():
    result = CliRunner().invoke(main, ["protocheck", "seed-race", "--protocol", "2016-v3", "--json"])
    assert result.exit_code == 1
    reports = json.loads(result.output)
    assert [r["backend"] for r in reports] == ["model", "engine"]  # both, by default
    for report in reports:
        assert report["scenario"] == "seed-race" and not report["ok"]
        assert report["failing"] == 36 and report["interleavings"] == 90
        seq = report["minimal_failing_sequence"]
        assert seq["where"] == "pool.check()" and "free zspage" in seq["message"]
    assert reports[0]["minimal_failing_sequence"] == reports[1]["minimal_failing_sequence"]
    ok = json.loads(run("protocheck", "seed-race", "--json", "--backend", "engine"))
    assert [r["backend"] for r in ok] == ["engine"]
    assert ok[0]["ok"] and ok[0]["failing"] == 0


def test_stress_json_reports_each_protocol():
    rows = json.loads(run("stress", "--seconds", "1", "--threads", "2", "--json"))
    assert [r["protocol"] for r in rows] == ["mainline", "2016"]
    for r in rows:
        assert r["ok"] and r["leaked_frames"] == 0
        assert all(isinstance(k, str) and isinstance(v, int) for k, v in r["ops"].items())
        assert r["ops"]["malloc"] > 0
