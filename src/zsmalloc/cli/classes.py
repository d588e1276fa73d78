"""``zsmalloc classes``: the canonical size-class table for a chain limit and rule."""

from __future__ import annotations

import json

import click
from rich.table import Table

from zsmalloc.cli.app import console, main
from zsmalloc.pool import RULE_MIN_WASTE, RULE_USED_PERCENTAGE, size_classes


@main.command()
@click.option("--chain-size", default=8, show_default=True, type=click.IntRange(4, 16))
@click.option(
    "--rule",
    type=click.Choice([RULE_MIN_WASTE, RULE_USED_PERCENTAGE]),
    default=RULE_MIN_WASTE,
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True)
def classes(chain_size: int, rule: str, as_json: bool) -> None:
    """Print the canonical size-class table for a chain limit and selection rule."""
    specs = size_classes(chain_size, rule)
    if as_json:
        click.echo(json.dumps([s.__dict__ for s in specs], indent=2))
        return
    table = Table(title=f"{len(specs)} canonical classes, chain limit {chain_size}, rule {rule}")
    for col in ("class", "size", "pages_per_zspage", "objs_per_zspage", "waste/zspage", "huge"):
        table.add_column(col, justify="right")
    for s in specs:
        waste = s.pages_per_zspage * 4096 - s.objs_per_zspage * s.size
        table.add_row(
            str(s.index),
            str(s.size),
            str(s.pages_per_zspage),
            str(s.objs_per_zspage),
            str(waste),
            "yes" if s.huge else "",
        )
    console.print(table)
