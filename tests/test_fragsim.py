"""zsmalloc fragsim: scenarios, the engine's runs, and the command line.

The zone's own invariants (buddy lists, coalescing, compaction making a free
block of the order asked) are the engine's tests, in engine/core/src/mm/zone.rs
and compaction.rs; here: what the Python side promises.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from zsmalloc import fragsim
from zsmalloc.cli import main
from zsmalloc.fragsim import (
    MODES,
    SCENARIOS,
    Level,
    Request,
    ScenarioError,
    load_scenario,
    scenario_from_dict,
)

#: a scenario that runs in a tenth of a second per mode; without watermark boosting (the factor at
#: 0, a setting machines use), for which its figures below hold: with it, the order-9 requests
#: are served in this small zone and take the room the pool needs, and their compaction turns
#: pageblocks back to movable, to be claimed again (test_watermark_boosting_serves_huge_pages)
TINY = replace(
    SCENARIOS["small"],
    name="tiny",
    zone_mib=16,
    fill_ticks=20,
    churn_ticks=40,
    report_every=10,
    pool_compact_every=10,
    maps_at=(20, 60),
    requests=(Request(3, "unmovable", 1.0, 5), Request(9, "movable", 0.2, 10)),
    watermark_boost_factor=0,
)


@pytest.fixture(scope="module")
def tiny_result() -> fragsim.FragsimResult:
    return fragsim.run_scenario(TINY)


def test_every_mode_runs_and_reads_its_objects_back(tiny_result: fragsim.FragsimResult) -> None:
    assert list(tiny_result.runs) == list(MODES)
    for mode, run in tiny_result.runs.items():
        assert run.objects_checked > 0, mode
        assert [iv["tick"] for iv in run.intervals] == list(range(10, 61, 10))
        assert [m["tick"] for m in run.maps] == [20, 60]
        assert len(run.maps[0]["migratetype"]) == TINY.zone_pages // fragsim.PAGEBLOCK_PAGES
        last = run.intervals[-1]
        # the users reached their levels, and the zone's pages add up
        assert last["pool_pages"] >= 0.35 * TINY.zone_pages
        used = sum(
            last[k] for k in ("pool_pages", "anon_pages", "kernel_pages", "reclaimable_pages", "cache_pages")
        )
        assert used + last["free_pages"] + last["held_blocks_pages"] <= TINY.zone_pages
        assert sum(last["pageblocks"].values()) == TINY.zone_pages // fragsim.PAGEBLOCK_PAGES
    summary = tiny_result.summary()
    for mode in ("placed", "unmovable"):
        assert summary[mode]["zspages_migrated"] == 0, "their pages never move"
    for mode in ("mainline", "2016"):
        assert summary[mode]["pages_migrated"] >= summary[mode]["zspages_migrated"]


def test_unmovable_pages_claim_pageblocks_of_their_own(tiny_result: fragsim.FragsimResult) -> None:
    summary = tiny_result.summary()
    assert (
        summary["unmovable"]["pageblocks"]["Unmovable"] > 2 * summary["mainline"]["pageblocks"]["Unmovable"]
    )
    # by falling back to movable pageblocks and claiming them, as the zone counts it (over the whole run)
    unmovable, mainline = (tiny_result.runs[m].totals() for m in ("unmovable", "mainline"))
    assert unmovable["blocks_claimed"] > mainline["blocks_claimed"] > 0
    assert unmovable["alloc_fallbacks"] >= unmovable["blocks_claimed"]


def test_watermark_boosting_serves_huge_pages(tiny_result: fragsim.FragsimResult) -> None:
    assert fragsim.SCENARIOS["standard"].watermark_boost_factor == 15_000
    boosted = fragsim.run_scenario(replace(TINY, watermark_boost_factor=15_000))
    for mode, run in boosted.runs.items():
        totals, off = run.totals(), tiny_result.runs[mode].totals()
        # claims a fallback tries of a small block's pageblock boost (one request may try several
        # orders); kswapd drops the boost it finds, at most after each user's turn and at the tick's end
        assert totals["alloc_fallbacks"] > 0 and totals["watermark_boosts"] > 0, (mode, totals)
        dropped = totals["boosts_reclaimed"]
        assert 0 < dropped <= min(totals["watermark_boosts"], 4 * TINY.ticks), (mode, totals)
        assert off["watermark_boosts"] == off["boosts_reclaimed"] == 0
        assert run.objects_checked > 0
    # with migration, the order-9 requests that fail without boosting are served
    summary, before = boosted.summary(), tiny_result.summary()
    for mode in ("mainline", "2016"):
        assert before[mode]["success"][9] == 0.0
        assert summary[mode]["success"][9] == 1.0, summary[mode]


def test_the_same_seed_gives_the_same_run(tiny_result: fragsim.FragsimResult) -> None:
    again = fragsim.run_mode(TINY, "mainline", fragsim.object_sizes(TINY))
    assert again.intervals == tiny_result.runs["mainline"].intervals
    other = fragsim.run_mode(replace(TINY, seed=99), "mainline", fragsim.object_sizes(replace(TINY, seed=99)))
    assert other.intervals != again.intervals


def test_result_serialises_to_json(tiny_result: fragsim.FragsimResult) -> None:
    doc = json.loads(json.dumps(tiny_result.to_dict()))
    assert doc["scenario"]["name"] == "tiny"
    assert set(doc["runs"]) == set(MODES)
    assert isinstance(doc["runs"]["mainline"]["maps"][0]["migratetype"], list)


def test_progress_is_called_every_tick_and_can_stop_the_run() -> None:
    ticks: list[int] = []
    fragsim.run_mode(TINY, "mainline", fragsim.object_sizes(TINY), ticks.append)
    assert ticks == list(range(1, TINY.ticks + 1))

    def stop(t: int) -> None:
        if t == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fragsim.run_mode(TINY, "mainline", fragsim.object_sizes(TINY), stop)


def test_the_engine_refuses_what_cannot_run() -> None:
    with pytest.raises(ScenarioError):
        fragsim.run_mode(TINY, "bogus", [100])
    with pytest.raises(ValueError, match="sizes"):
        fragsim.run_mode(TINY, "mainline", [0, 5000])
    with pytest.raises(OverflowError):
        fragsim.run_mode(TINY, "mainline", [70000])
    with pytest.raises(ValueError, match="zone"):
        fragsim.run_mode(replace(TINY, zone_mib=1), "mainline", [100])
    with pytest.raises(ValueError, match="migratetype"):
        fragsim.run_mode(replace(TINY, requests=(Request(3, "sideways", 1.0, 5),)), "mainline", [100])
    with pytest.raises(ValueError, match="request"):
        fragsim.run_mode(replace(TINY, requests=(Request(11, "movable", 1.0, 5),)), "mainline", [100])
    # a zone too large for its tables is refused before anything is allocated
    with pytest.raises(ValueError, match="zone needs"):
        fragsim.run_mode(replace(TINY, zone_mib=1 << 20), "mainline", [100])


def test_scenarios_from_dicts_fill_in_and_refuse() -> None:
    sc = scenario_from_dict({"zone_mib": 32, "zram": {"share": 0.3, "churn": 0.01}}, name="mine")
    assert (sc.name, sc.zone_mib, sc.zram) == ("mine", 32, Level(0.3, 0.01))
    assert sc.requests == SCENARIOS["standard"].requests
    assert sc.watermark_boost_factor == 15_000
    assert scenario_from_dict({"watermark_boost_factor": 0}).watermark_boost_factor == 0
    bad = [
        {"watermark_boost_factor": -1},
        {"watermark_boost_factor": 1.5},
        {"zone_mb": 32},
        {"zone_mib": 2},
        {"zone_mib": True},
        {"zram": {"share": 0.3}},
        {"zram": {"share": 1.5, "churn": 0}},
        {"anon": {"share": 0.6, "churn": 0}},
        {"requests": [{"order": 3, "migratetype": "movable", "per_tick": 1}]},
        {"requests": [{"order": 0, "migratetype": "movable", "per_tick": 1, "lifetime": 1}]},
        {"requests": [{"order": 3, "migratetype": "x", "per_tick": 1, "lifetime": 1}]},
        {"requests": {"order": 3}},
        {"mix": "nope"},
        {"maps_at": 5},
        {"page_cache": "yes"},
    ]
    for d in bad:
        with pytest.raises(ScenarioError):
            scenario_from_dict(d)


def test_the_standard_scenario_file_is_the_standard_scenario() -> None:
    path = Path(__file__).parent.parent / "benchmarks" / "fragsim_standard.toml"
    assert replace(load_scenario(path), name="standard") == SCENARIOS["standard"]


def test_a_file_that_is_no_toml_is_a_scenario_error(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text("zone_mib = = 3")
    with pytest.raises(ScenarioError, match="TOML"):
        load_scenario(p)
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(ScenarioError):
        load_scenario(p)


def _tiny_toml(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(
        """
zone_mib = 16
fill_ticks = 20
churn_ticks = 40
report_every = 10
pool_compact_every = 10
maps_at = [20, 60]
[[requests]]
order = 3
migratetype = "unmovable"
per_tick = 1.0
lifetime = 5
[[requests]]
order = 9
migratetype = "movable"
per_tick = 0.2
lifetime = 10
direct_compaction = false
"""
    )
    return p


def test_cli_table_details_and_png(tmp_path: Path) -> None:
    png = tmp_path / "f.png"
    r = CliRunner().invoke(
        main,
        [
            "fragsim",
            "--config",
            str(_tiny_toml(tmp_path)),
            "--mode",
            "mainline",
            "--mode",
            "unmovable",
            "--png",
            str(png),
            "--details",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "order 3" in r.output and "order 9" in r.output
    assert "mainline / unmovable: order 3" in r.output
    assert "Number of blocks type" in r.output and "extfrag_index" in r.output
    assert "read back intact" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_json(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        main, ["fragsim", "--config", str(_tiny_toml(tmp_path)), "--mode", "placed", "--json"]
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert list(doc["runs"]) == ["placed"]
    assert doc["scenario"]["requests"][1]["direct_compaction"] is False


def test_cli_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("zone_mib = 3\n")
    r = CliRunner().invoke(main, ["fragsim", "--config", str(p)])
    assert r.exit_code == 2
    assert "zone_mib" in r.output and "Traceback" not in r.output
