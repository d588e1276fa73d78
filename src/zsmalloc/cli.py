"""The ``zsmalloc`` command line: ``demo`` (what ``make run`` runs), ``classes``, ``stress``.

Top of the layer stack: it may use every package below, nothing uses it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from contextlib import nullcontext as _nullctx

import click
import psutil
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from zsmalloc.pool import RULE_MIN_WASTE, RULE_USED_PERCENTAGE, Pool, size_classes
from zsmalloc.stress import run_stress
from zsmalloc.workloads import MIXES, get_mix

console = Console()


def _rss() -> int:
    return psutil.Process().memory_info().rss


@click.group()
@click.version_option(package_name="zsmalloc")
def main() -> None:
    """zsmalloc: the kernel's compressed-memory allocator, in Python, on real memory."""


@main.command()
@click.option("--objects", default=150_000, show_default=True, help="objects to allocate")
@click.option("--mix", type=click.Choice(sorted(MIXES)), default="kernel-build", show_default=True)
@click.option("--free-share", default=0.5, show_default=True, help="share of objects freed")
@click.option("--chain-size", default=8, show_default=True, type=click.IntRange(4, 16))
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
def demo(objects: int, mix: str, free_share: float, chain_size: int, seed: int, as_json: bool) -> None:
    """Fill a pool with a realistic size mix, free part of it, show the kernel's view."""
    size_mix = get_mix(mix)
    sizes = size_mix.sizes(objects, seed)
    rng = random.Random(seed)
    rss0 = _rss()
    pool = Pool(name="demo", chain_size=chain_size)
    handles: list[int] = []
    payload = 0
    t0 = time.perf_counter()
    with Progress(console=console, transient=True, disable=as_json) as progress:
        task = progress.add_task(f"fill ({size_mix.name})", total=objects)
        for i, size in enumerate(sizes):
            h = pool.malloc(size)
            pool.write(h, rng.randbytes(16) * (size // 16) + bytes(size % 16))
            handles.append(h)
            payload += size
            if i % 4096 == 0:
                progress.update(task, completed=i)
    t_fill = time.perf_counter() - t0
    filled = {"pages": pool.total_pages, "payload": payload, "rss_growth": _rss() - rss0}

    rng.shuffle(handles)
    n_free = int(len(handles) * free_share)
    for h in handles[:n_free]:
        payload -= pool.handle_size(h)
        pool.free(h)
    kept = handles[n_free:]
    pool.check()
    churned = {"pages": pool.total_pages, "payload": payload, "rss_growth": _rss() - rss0}
    classes = pool.format_classes()
    stats = pool.stats()
    for h in kept:
        pool.free(h)
    pool.flush_deferred()
    emptied = {"pages": pool.total_pages, "rss_growth": _rss() - rss0}
    pool.check()
    pool.close()

    figures = {
        "mix": size_mix.name,
        "objects": objects,
        "chain_size": chain_size,
        "fill_seconds": round(t_fill, 3),
        "us_per_malloc_write": round(t_fill / objects * 1e6, 3),
        "after_fill": filled,
        "after_free": churned,
        "after_free_all": emptied,
        "pool": stats.to_dict(),
    }
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    console.rule(f"zsmalloc/{pool.name}/classes after freeing {free_share:.0%}")
    console.print(classes, highlight=False, markup=False, soft_wrap=True)
    table = Table(title=f"pool figures ({size_mix.description})")
    for col in ("stage", "pages", "pool bytes / payload", "RSS growth / payload"):
        table.add_column(col, justify="right")
    for stage, f in (("after fill", filled), (f"after freeing {free_share:.0%}", churned)):
        table.add_row(
            stage,
            f"{f['pages']:,}",
            f"{f['pages'] * 4096 / f['payload']:.3f}",
            f"{f['rss_growth'] / f['payload']:.3f}",
        )
    table.add_row("after freeing all", f"{emptied['pages']:,}", "-", f"{emptied['rss_growth']:,} B")
    console.print(table)
    console.print(
        f"fill: {objects:,} objects in {t_fill:.2f} s "
        f"({figures['us_per_malloc_write']} µs per malloc+write, data generation included); "
        f"freeable after the free: {stats.freeable_pages:,} pages (zs_can_compact)"
    )


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
            str(s.index), str(s.size), str(s.pages_per_zspage), str(s.objs_per_zspage),
            str(waste), "yes" if s.huge else "",
        )
    console.print(table)


@main.command()
@click.option("--seconds", default=10.0, show_default=True, help="run time per protocol")
@click.option("--threads", default=4, show_default=True, help="allocator threads (plus VM threads)")
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
        rows = [{**dataclasses.asdict(r), "ok": r.ok} for r in reports]
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        for r in reports:
            console.print(r.summary(), highlight=False)
    if not all(r.ok for r in reports):
        raise SystemExit(1)
