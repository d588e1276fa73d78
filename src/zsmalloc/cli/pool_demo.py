"""``zsmalloc pool-demo``: the allocator alone, without zram.

Fill a pool with a size mix, free part of it while a VM thread migrates its
pages, compact, verify every object, and print the kernel's classes table and
the pool's figures at each stage.
"""

from __future__ import annotations

import json
import random
import time
from array import array

import click
from rich.progress import Progress
from rich.table import Table

import zsmalloc
from zsmalloc.cli.app import SHARE, console, main, print_rule
from zsmalloc.cli.app import rss as _rss
from zsmalloc.mm import BackgroundMigration
from zsmalloc.workloads import MIXES, get_mix


def _figures(pool: zsmalloc.Pool, payload: int, rss0: int) -> dict:
    return {
        "pages": pool.total_pages,
        "payload": payload,
        "pool_per_payload": pool.total_pages * 4096 / payload if payload else 0.0,
        "rss_growth": _rss() - rss0,
        "rss_per_payload": (_rss() - rss0) / payload if payload else 0.0,
        "arena_hwm": pool.memory.hwm,
    }


@main.command("pool-demo")
@click.option(
    "--objects", default=150_000, show_default=True, type=click.IntRange(1), help="objects to allocate"
)
@click.option("--mix", type=click.Choice(sorted(MIXES)), default="kernel-build", show_default=True)
@click.option("--free-share", default=0.5, show_default=True, type=SHARE, help="share of objects freed")
@click.option("--chain-size", default=8, show_default=True, type=click.IntRange(4, 16))
@click.option("--migration", type=click.Choice(["mainline", "2016"]), default="mainline", show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
def pool_demo(
    objects: int, mix: str, free_share: float, chain_size: int, migration: str, seed: int, as_json: bool
) -> None:
    """Fill a pool, free part of it while the VM migrates its pages, compact, verify, report."""
    size_mix = get_mix(mix)
    sizes = size_mix.sizes(objects, seed)
    rng = random.Random(seed)
    source = rng.randbytes(1 << 20)
    # the demo's own bookkeeping lives in arrays made before the baseline, so
    # that the RSS figures are the pool's
    handles = array("Q", bytes(8 * objects))
    offsets = array("Q", bytes(8 * objects))
    order = array("L", range(objects))
    rss0 = _rss()
    pool = zsmalloc.Pool(name="demo", chain_size=chain_size, migration=migration)
    payload = 0
    t0 = time.perf_counter()
    with Progress(console=console, transient=True, disable=as_json or not console.is_terminal) as progress:
        task = progress.add_task(f"fill ({size_mix.name})", total=objects)
        for i, size in enumerate(sizes):
            off = rng.randrange(len(source) - size)
            h = pool.malloc(size)
            pool.write(h, source[off : off + size])
            handles[i] = h
            offsets[i] = off
            payload += size
            if i % 4096 == 0:
                progress.update(task, completed=i)
    t_fill = time.perf_counter() - t0
    stages = {"after fill": _figures(pool, payload, rss0)}

    # free a random share while the VM migrates pages underneath
    migrator = BackgroundMigration(pool.memory, seed, evacuate_every=0)
    migrator.start()
    rng.shuffle(order)
    n_free = int(objects * free_share)
    t0 = time.perf_counter()
    for i in order[:n_free]:
        payload -= sizes[i]
        pool.free(handles[i])
    t_free = time.perf_counter() - t0
    migrator.stop()
    kept = order[n_free:]
    stages[f"after freeing {free_share:.0%}"] = _figures(pool, payload, rss0)
    classes_before = pool.format_classes()

    t0 = time.perf_counter()
    pages_freed = pool.compact()
    arena = pool.memory.compact()
    pool.flush_deferred()
    pool.memory.drain_pages()
    t_compact = time.perf_counter() - t0
    stages["after compaction"] = _figures(pool, payload, rss0)

    bad = [i for i in kept if pool.read(handles[i]) != source[offsets[i] : offsets[i] + sizes[i]]]
    pool.check()
    stats = pool.stats()
    vmstat = dict(pool.memory.vmstat.items())
    for i in kept:
        pool.free(handles[i])
    pool.flush_deferred()
    pool.memory.drain_pages()
    stages["after freeing all"] = _figures(pool, 0, rss0)
    pool.check()
    pool.close()

    figures = {
        "mix": size_mix.name,
        "objects": objects,
        "chain_size": chain_size,
        "migration": migration,
        "fill_seconds": round(t_fill, 3),
        "free_seconds": round(t_free, 3),
        "compact_seconds": round(t_compact, 3),
        "pages_migrated_during_free": migrator.moved,
        "migrations_refused_or_failed": migrator.refused,
        "pool_compact_pages_freed": pages_freed,
        "arena_compact": {
            "moved": arena.succeeded,
            "hwm_before": arena.hwm_before,
            "hwm_after": arena.hwm_after,
        },
        "objects_verified": len(kept),
        "objects_corrupt": len(bad),
        "stages": stages,
        "pool": stats.to_dict(),
        "vmstat": vmstat,
    }
    if as_json:
        click.echo(json.dumps(figures, indent=2))
    else:
        _print_demo(figures, classes_before, size_mix.description, free_share)
    if bad:
        raise SystemExit(f"{len(bad)} objects read back wrong")


def _print_demo(figures: dict, classes: str, description: str, free_share: float) -> None:
    print_rule(f"/sys/kernel/debug/zsmalloc/demo/classes after freeing {free_share:.0%}")
    console.print(classes, highlight=False)
    title = f"pool ({description}), chain {figures['chain_size']}, {figures['migration']} migration"
    table = Table(title=title)
    for col in ("stage", "pages", "pool bytes / payload", "RSS growth / payload", "arena hwm"):
        table.add_column(col, justify="right")
    for stage, f in figures["stages"].items():
        table.add_row(
            stage,
            f"{f['pages']:,}",
            f"{f['pool_per_payload']:.3f}" if f["payload"] else "-",
            f"{f['rss_per_payload']:.3f}" if f["payload"] else f"{f['rss_growth'] / 2**20:.1f} MiB",
            f"{f['arena_hwm']:,}",
        )
    console.print(table)
    a = figures["arena_compact"]
    console.print(
        f"fill {figures['objects']:,} objects: {figures['fill_seconds']:.2f} s; "
        f"free: {figures['free_seconds']:.2f} s while the VM migrated "
        f"{figures['pages_migrated_during_free']:,} pages "
        f"({figures['migrations_refused_or_failed']:,} refused or busy); "
        f"zs_compact freed {figures['pool_compact_pages_freed']:,} pages, arena compaction moved "
        f"{a['moved']:,} frames (hwm {a['hwm_before']:,} -> {a['hwm_after']:,}) in "
        f"{figures['compact_seconds']:.2f} s; {figures['objects_verified']:,} objects verified, "
        f"{figures['objects_corrupt']} corrupt."
    )
