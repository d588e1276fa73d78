"""``zsmalloc fragsim``: what page migration buys the VM, mode against mode on one seeded run.

::

    zsmalloc fragsim                          # the standard scenario, every mode
    zsmalloc fragsim --scenario small --png fragsim.png
    zsmalloc fragsim --config my.toml --mode mainline --mode unmovable --json

The scenario, its modes and the figures are described in :mod:`zsmalloc.fragsim`;
``benchmarks/fragsim_standard.toml`` spells the standard scenario out key by
key, as a starting point for a file of one's own.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import click
from rich.progress import TaskID
from rich.table import Table

from zsmalloc import backend
from zsmalloc.cli.app import console, main, print_rule, progress_bars
from zsmalloc.fragsim import (
    MIGRATETYPES,
    MODES,
    SCENARIOS,
    FragsimResult,
    Scenario,
    ScenarioError,
    load_scenario,
    object_sizes,
    run_mode,
)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "-"
    return "inf" if b == 0 else f"{a / b:.2f}x"


def _summary_table(result: FragsimResult) -> Table:
    sc = result.scenario
    summary = result.summary()
    t = Table(
        title=f"{sc.name}: high-order requests served, churn phase (ticks {sc.fill_ticks + 1}-{sc.ticks})"
    )
    t.add_column("mode")
    for o in sc.orders():
        t.add_column(f"order {o}", justify="right")
    for col in (
        "compact stall",
        "success",
        "kcompactd",
        "pages migrated",
        "of them zsmalloc's",
        "unusable(9)",
    ):
        t.add_column(col, justify="right")
    t.add_column("pageblocks U/M/R", justify="right")
    for mode, s in summary.items():
        blocks = "/".join(str(s["pageblocks"][m.capitalize()]) for m in MIGRATETYPES)
        unusable = s["unusable_index"].get(9)
        t.add_row(
            mode,
            *[_pct(s["success"][o]) for o in sc.orders()],
            f"{s['compact_stall']:,}",
            f"{s['compact_success']:,}",
            f"{s['kcompactd_runs']:,}",
            f"{s['pages_migrated']:,}",
            f"{s['zspages_migrated']:,}",
            "-" if unusable is None else f"{unusable:.3f}",
            blocks,
        )
    return t


def _details(result: FragsimResult) -> None:
    """The final zone of each mode as /proc/pagetypeinfo and extfrag's debugfs files print it."""
    for mode, run in result.runs.items():
        last = run.intervals[-1]
        print_rule(f"{mode}: the zone at tick {last['tick']}")
        console.print(
            "Free pages count per migrate type at order       " + "".join(f"{o:>7}" for o in range(11))
        )
        for m in MIGRATETYPES:
            counts = last["free_blocks"][m.capitalize()]
            console.print(
                f"Node    0, zone   Normal, type {m.capitalize():>12} " + "".join(f"{c:>7}" for c in counts)
            )
        console.print("Number of blocks type     " + "".join(f"{m.capitalize():>13}" for m in MIGRATETYPES))
        console.print(
            "Node 0, zone   Normal     "
            + "".join(f"{last['pageblocks'][m.capitalize()]:>13}" for m in MIGRATETYPES)
        )
        console.print(
            "unusable_index:   Node 0, zone   Normal "
            + " ".join(f"{v / 1000:.3f}" for v in last["unusable_index"])
        )
        console.print(
            "extfrag_index:    Node 0, zone   Normal "
            + " ".join(f"{v / 1000:.3f}" for v in last["fragmentation_index"])
        )


def _comparison(result: FragsimResult) -> None:
    """Each migrating mode's success rate over the unmovable mode's, per order."""
    summary = result.summary()
    if "unmovable" not in summary:
        return
    base = summary["unmovable"]["success"]
    for mode in ("mainline", "2016", "placed"):
        if mode in summary:
            parts = [
                f"order {o} {_ratio(summary[mode]['success'][o], base[o])}" for o in result.scenario.orders()
            ]
            console.print(f"{mode} / unmovable: " + ", ".join(parts))


@main.command("fragsim")
@click.option(
    "--scenario", "name", type=click.Choice(sorted(SCENARIOS)), default="standard", show_default=True
)
@click.option(
    "--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="a scenario in a TOML file"
)
@click.option(
    "--mode", "modes", multiple=True, type=click.Choice(MODES), help="repeat for several (default: all)"
)
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), help="instead of the scenario's seed")
@click.option(
    "--png", type=click.Path(dir_okay=False, path_type=Path), help="write pageblock maps and success curves"
)
@click.option("--details", is_flag=True, help="print each mode's final pagetypeinfo and extfrag indices")
@click.option("--json", "as_json", is_flag=True, help="print the whole result as JSON")
@click.option("--quiet", is_flag=True, help="no progress bars")
def fragsim_cmd(
    name: str,
    config: Path | None,
    modes: tuple[str, ...],
    seed: int | None,
    png: Path | None,
    details: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Run a fragmentation scenario with zsmalloc's pages in each mode, and compare."""
    try:
        sc: Scenario = load_scenario(config) if config else SCENARIOS[name]
    except ScenarioError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from None
    if seed is not None:
        sc = replace(sc, seed=seed)
    if backend != "engine" and not as_json:
        console.print(f"(the simulation runs on the engine; ZSMALLOC_BACKEND={backend} has no model of it)")
    modes = modes or MODES
    sizes = object_sizes(sc)
    result = FragsimResult(sc)
    with progress_bars(quiet or as_json) as bars:
        for mode in modes:
            task = bars.add_task(f"{sc.name}: {mode}", total=sc.ticks)

            def tick(t: int, task: TaskID = task) -> None:
                bars.update(task, completed=t)

            try:
                result.runs[mode] = run_mode(sc, mode, sizes, tick)
            except ValueError as exc:
                raise click.ClickException(str(exc)) from None
    if png:
        from zsmalloc.cli.fragsim_plot import plot_fragsim

        plot_fragsim(result, png)
    if as_json:
        json.dump(result.to_dict(), sys.stdout)
        sys.stdout.write("\n")
        return
    console.print(sc.description or sc.name)
    console.print(_summary_table(result))
    _comparison(result)
    if details:
        _details(result)
    for mode, run in result.runs.items():
        console.print(
            f"{mode}: {run.objects_checked:,} zsmalloc objects read back intact, {run.seconds:.1f} s"
        )
    if png:
        console.print(f"wrote {png}")
