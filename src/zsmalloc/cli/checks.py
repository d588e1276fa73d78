"""``zsmalloc stress`` and ``zsmalloc protocheck``: the race hunters.

``stress`` runs threads that allocate, verify and free against VM threads that
migrate, evacuate and compact; ``protocheck`` runs the migration-protocol
scenarios over every interleaving (zsmalloc.protocheck).
"""

from __future__ import annotations

import json
from contextlib import nullcontext as _nullctx

import click

from zsmalloc.cli.app import SECONDS, console, main
from zsmalloc.protocheck import SCENARIOS, run_named
from zsmalloc.stress import MAX_MUTATORS, run_stress


@main.command()
@click.option("--seconds", default=10.0, show_default=True, type=SECONDS, help="run time per protocol")
@click.option(
    "--threads",
    default=4,
    show_default=True,
    type=click.IntRange(1, MAX_MUTATORS),
    help="allocator threads (plus VM threads)",
)
@click.option(
    "--protocol",
    type=click.Choice(["mainline", "2016", "both"]),
    default="both",
    show_default=True,
)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def stress(seconds: float, threads: int, protocol: str, seed: int, as_json: bool) -> None:
    """Threads allocate, write, verify and free while others migrate, evacuate and compact."""
    protocols = ["mainline", "2016"] if protocol == "both" else [protocol]
    reports = []
    for proto in protocols:
        status = console.status(f"stress: {proto}, {seconds:g} s") if not as_json else _nullctx()
        with status:
            reports.append(run_stress(seconds=seconds, threads=threads, protocol=proto, seed=seed))
    if as_json:
        rows = [r.to_dict() for r in reports]
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        for r in reports:
            console.print(r.summary(), highlight=False)
    if not all(r.ok for r in reports):
        raise SystemExit(1)


@main.command()
@click.argument("scenario", default="all")
@click.option(
    "--protocol",
    type=click.Choice(["mainline", "2016", "2016-v3"]),
    default="mainline",
    show_default=True,
    help="2016-v3 is the reviewed patch with the race: the checker should find it",
)
@click.option(
    "--random",
    "random_runs",
    type=click.IntRange(0),
    default=0,
    help="random interleavings instead of all",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the reports as JSON")
@click.option(
    "--backend",
    type=click.Choice(["both", "model", "engine"]),
    default="both",
    show_default=True,
    help="run each scenario on the model, the engine, or both",
)
def protocheck(
    scenario: str, protocol: str, random_runs: int, seed: int, as_json: bool, backend: str
) -> None:
    """Run a migration-protocol scenario over every interleaving of its actors' steps.

    SCENARIO is one of the built-in scenarios (zsmalloc.protocheck.SCENARIOS) or "all".
    """
    if scenario != "all" and scenario not in SCENARIOS:
        raise click.BadParameter(f"known scenarios: {', '.join(SCENARIOS)}, all", param_hint="SCENARIO")
    status = run_named(
        scenario,
        protocol,
        exhaustive=not random_runs,
        n=random_runs or 200,
        seed=seed,
        echo=click.echo if as_json else console.print,
        as_json=as_json,
        backend=backend,
    )
    raise SystemExit(status)
