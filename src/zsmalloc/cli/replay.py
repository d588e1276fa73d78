"""``zsmalloc replay``: an allocation trace replayed under one or more configurations, side by side.

::

    zsmalloc replay trace.txt --chain-size 4 --chain-size 8 --chain-size 16
    zsmalloc replay --mix android-zstd --live 200000 --ops 200000 --save trace.txt

The trace format, and how to record one on a kernel with bpftrace, are in
:mod:`zsmalloc.replay`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, BinaryIO, TextIO, TypeVar

import click
from rich.table import Table

from zsmalloc.cli.app import console, main, print_rule
from zsmalloc.pool import RULE_MIN_WASTE, RULE_USED_PERCENTAGE
from zsmalloc.pool.kernels import POOL_KERNELS, pool_shape
from zsmalloc.replay import TraceError, parse_trace, replay, synthetic_trace
from zsmalloc.workloads import MIXES

F = TypeVar("F", bound=Callable[..., Any])


def _text_lines(trace: BinaryIO) -> list[str]:
    """The trace file's lines as text; a line that is not UTF-8 is a usage error naming it."""
    lines = []
    for n, raw in enumerate(trace, 1):
        try:
            lines.append(raw.decode())
        except UnicodeDecodeError as exc:
            raise click.BadParameter(
                f"line {n} is not UTF-8 text ({exc.reason})", param_hint="TRACE"
            ) from None
    return lines


def _synthetic_count(name: str, help: str) -> Callable[[F], F]:
    """A count of the synthetic trace: an int >= 0, 100,000 by default."""
    return click.option(name, default=100_000, show_default=True, type=click.IntRange(0), help=help)


@main.command("replay")
@click.argument("trace", type=click.File("rb"), required=False)
@click.option("--mix", type=click.Choice(sorted(MIXES)), help="no TRACE: make a synthetic one from this mix")
@_synthetic_count("--live", "synthetic: objects allocated first")
@_synthetic_count("--ops", "synthetic: then this many free+malloc steps")
@click.option("--seed", default=0, show_default=True)
@click.option("--save", type=click.File("w"), help="synthetic: write the trace to this file too")
@click.option(
    "--chain-size",
    "chain_sizes",
    multiple=True,
    type=click.IntRange(4, 16),
    help="repeat for several (default: 8, or the kernel's)",
)
@click.option(
    "--rule",
    type=click.Choice([RULE_MIN_WASTE, RULE_USED_PERCENTAGE]),
    help=f"the class rule (default: {RULE_MIN_WASTE}, or the kernel's)",
)
@click.option(
    "--fullness",
    "--policy",
    "fullness",
    type=click.Choice(["ratio", "legacy"]),
    help="fullness groups and compaction: 6.4 on (ratio, the default) or before (legacy), or the "
    "kernel's; --policy is its old name",
)
@click.option(
    "--kernel",
    type=click.Choice(list(POOL_KERNELS)),
    help="the pool as this kernel's zsmalloc is: chain size, class rule, grouping (pool/kernels.py)",
)
@click.option(
    "--compact-every",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="zs_compact after every N operations (0: never)",
)
@click.option("--write", is_flag=True, help="fill every object with bytes (slower; same layout)")
@click.option("--classes", "show_classes", is_flag=True, help="print each run's classes table")
@click.option("--json", "as_json", is_flag=True, help="print the reports as JSON")
def replay_cmd(
    trace: BinaryIO | None,
    mix: str | None,
    live: int,
    ops: int,
    seed: int,
    save: TextIO | None,
    chain_sizes: tuple[int, ...],
    rule: str | None,
    fullness: str | None,
    kernel: str | None,
    compact_every: int,
    write: bool,
    show_classes: bool,
    as_json: bool,
) -> None:
    """Replay a zs_malloc/zs_free trace on fresh pools and compare what each configuration costs."""
    if trace is not None and mix is None:
        lines = _text_lines(trace)
        source = trace.name
    elif mix is not None and trace is None:
        lines = list(synthetic_trace(mix, live, ops, seed))
        source = f"synthetic {mix}"
        if save is not None:
            save.writelines(line + "\n" for line in lines)
    else:  # both or neither
        raise click.UsageError("give a TRACE file (or - for stdin), or --mix for a synthetic trace")
    try:
        operations = list(parse_trace(lines))
    except TraceError as exc:
        raise click.BadParameter(str(exc), param_hint="TRACE") from None
    try:
        shapes = [pool_shape(kernel, chain, rule, fullness) for chain in chain_sizes or (None,)]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    rule, fullness = shapes[0].class_rule, shapes[0].fullness
    reports = [
        replay(
            operations,
            chain_size=shape.chain_size,
            class_rule=shape.class_rule,
            fullness=shape.fullness,
            compact_every=compact_every,
            write=write,
        )
        for shape in shapes
    ]
    if as_json:
        click.echo(
            json.dumps(
                {"trace": source, "operations": len(operations), "runs": [r.to_dict() for r in reports]}
            )
        )
        return
    table = Table(title=f"{source}: {len(operations):,} operations, rule {rule}, fullness {fullness}")
    for col in (
        "chain",
        "mallocs",
        "frees",
        "peak pages",
        "final pages",
        "pages / bytes live",
        "compacted",
        "s",
    ):
        table.add_column(col, justify="right")
    for r in reports:
        f = r.final
        if f is None:  # replay() sets it on every report it returns
            raise RuntimeError(f"the replay with chain size {r.chain_size} has no final snapshot")
        table.add_row(
            str(r.chain_size),
            f"{r.mallocs:,}",
            f"{r.frees:,}",
            f"{r.pages_peak:,}",
            f"{f.pages:,}",
            f"{f.overhead:.4f}",
            f"{r.pages_compacted:,}",
            f"{r.seconds:.1f}",
        )
    console.print(table)
    console.print("overhead: pool pages x 4096 / bytes of the objects live at the end", style="dim")
    skipped = reports[0].failed_mallocs_skipped + reports[0].unknown_frees_skipped
    if skipped:
        console.print(
            f"skipped: {reports[0].failed_mallocs_skipped:,} failed allocations, "
            f"{reports[0].unknown_frees_skipped:,} frees of objects allocated before the trace began"
        )
    if show_classes:
        for r in reports:
            print_rule(f"classes, chain {r.chain_size}")
            console.print(r.classes, highlight=False)
