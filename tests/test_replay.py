"""zsmalloc.replay: allocation traces parsed, replayed on fresh pools, and the CLI around them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from zsmalloc import Pool
from zsmalloc.cli import main
from zsmalloc.replay import TraceError, parse_trace, replay, synthetic_trace

TRACE = """\
# a recorded trace: handles in hex, as bpftrace prints them
m ffff8881 100
m ffff8882 3000
m 0 2000          # zs_malloc failed (older kernels): skipped
m fffffffffffffff4 3000   # ERR_PTR(-ENOMEM) (newer kernels): skipped
f dead            # allocated before recording began: skipped
m ffff8883 4096
f ffff8881
m ffff8881 700    # the kernel reused the handle
c
f ffff8882
"""


def test_parse_reads_every_kind_and_skips_comments():
    ops = list(parse_trace(TRACE.splitlines()))
    assert ops[0] == ("m", "ffff8881", 100)
    assert ops[4] == ("f", "dead", 0)
    assert ("c", "", 0) in ops
    assert len(ops) == 10


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("m 1 0", "size 0 is outside 1..4096"),
        ("m 1 4097", "size 4097 is outside"),
        ("m 1 big", "not an integer"),
        ("f", "expected 'm ID SIZE'"),
        ("x 1 2", "expected 'm ID SIZE'"),
        ("c now", "expected"),
    ],
)
def test_a_bad_line_is_named(line, message):
    with pytest.raises(TraceError, match=f"line 3: .*{message}"):
        list(parse_trace(["m 1 10", "", line]))


def test_replay_matches_the_same_operations_done_by_hand():
    report = replay(parse_trace(TRACE.splitlines()), chain_size=8)
    assert (report.mallocs, report.frees, report.compactions) == (4, 2, 1)
    assert report.failed_mallocs_skipped == 2 and report.unknown_frees_skipped == 1
    assert report.final.objects == 2 and report.final.bytes_requested == 4096 + 700
    with Pool(chain_size=8) as pool:
        a, b = pool.malloc(100), pool.malloc(3000)
        pool.malloc(4096)
        pool.free(a)
        pool.malloc(700)
        pool.compact()
        pool.free(b)
        assert report.final.pages == pool.total_pages
        assert report.pages_peak >= pool.total_pages
    assert "obj_allocated" in report.classes


def test_synthetic_trace_keeps_its_live_set():
    lines = list(synthetic_trace("android-zstd", live=2000, ops=3000, seed=4))
    assert lines == list(synthetic_trace("android-zstd", live=2000, ops=3000, seed=4))
    report = replay(parse_trace(lines), chain_size=4, snapshot_every=1000, compact_every=2500, write=True)
    assert report.mallocs == 5000 and report.frees == 3000
    assert report.final.objects == 2000 and report.unknown_frees_skipped == 0
    assert [s.op for s in report.snapshots] == list(range(1000, 8001, 1000))
    assert report.compactions == 3
    assert report.final.overhead > 1.0


def test_cli_compares_chain_sizes_on_a_trace_file(tmp_path):
    trace = tmp_path / "trace.txt"
    trace.write_text("\n".join(synthetic_trace("kernel-build", live=1500, ops=1500, seed=2)) + "\n")
    result = CliRunner().invoke(
        main,
        ["replay", str(trace), "--chain-size", "4", "--chain-size", "16", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [r["chain_size"] for r in doc["runs"]] == [4, 16]
    assert all(r["final"]["objects"] == 1500 for r in doc["runs"])
    assert doc["operations"] == 4500


def test_cli_replays_on_a_kernels_pool(tmp_path):
    trace = tmp_path / "trace.txt"
    trace.write_text("\n".join(synthetic_trace("kernel-build", live=800, ops=800, seed=3)) + "\n")
    result = CliRunner().invoke(main, ["replay", str(trace), "--kernel", "6.1", "--json"])
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.output)["runs"]
    ops = list(parse_trace(trace.read_text().splitlines()))
    by_hand = replay(ops, chain_size=4, class_rule="used-percentage", fullness="legacy").to_dict()
    assert run["chain_size"] == 4 and run["final"] == by_hand["final"]
    refused = CliRunner().invoke(main, ["replay", str(trace), "--kernel", "6.1", "--fullness", "ratio"])
    assert refused.exit_code == 2 and "fullness grouping legacy" in refused.output


def test_cli_synthetic_save_and_text_table(tmp_path):
    saved = tmp_path / "t.txt"
    result = CliRunner().invoke(
        main,
        ["replay", "--mix", "uniform", "--live", "500", "--ops", "100", "--save", str(saved), "--classes"],
    )
    assert result.exit_code == 0, result.output
    assert "overhead" in result.output and "classes, chain 8" in result.output
    assert len(saved.read_text().splitlines()) == 1 + 500 + 2 * 100


def test_cli_refuses_a_bad_trace_and_a_missing_source(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("m 1 10\nm 2 99999\n")
    result = CliRunner().invoke(main, ["replay", str(bad)])
    assert result.exit_code == 2 and "line 2" in result.output
    result = CliRunner().invoke(main, ["replay"])
    assert result.exit_code == 2 and "--mix" in result.output


def test_failed_allocation_is_zero_or_an_error_pointer():
    from zsmalloc.replay import failed_allocation

    assert failed_allocation("0") and failed_allocation("fffffffffffff001")
    assert failed_allocation("ffffffffffffffff")
    assert not failed_allocation("fffffffffffff000")  # a handle, however unlikely
    assert not failed_allocation("ffff888104a3c000") and not failed_allocation("obj-7")


def test_a_trace_that_allocates_a_live_id_again_is_refused():
    """Issue 10, item 12: the second malloc of a live id names both lines; a freed id may come back."""
    with pytest.raises(TraceError, match="line 4: 'a' is allocated again, live since line 1"):
        list(parse_trace(["m a 100", "m b 10", "# a comment", "m a 200"]))
    ops = list(parse_trace(["m a 100", "f a", "m a 200", "m 0 10", "m 0 10"]))  # failed ones (0) repeat
    assert [op[0] for op in ops] == ["m", "f", "m", "m", "m"]


def test_replay_refuses_a_malloc_of_a_live_id():
    with pytest.raises(TraceError, match="operation 2: 'a' is allocated again while live"):
        replay([("m", "a", 100), ("m", "a", 200)])


@pytest.mark.parametrize("kwargs", [{"compact_every": -1}, {"snapshot_every": -2}])
def test_replay_refuses_negative_intervals(kwargs):
    with pytest.raises(ValueError, match="must be >= 0"):
        replay([("m", "a", 100)], **kwargs)
