"""``zsmalloc demo``: the main job (``make run``) -- a userspace zram at work, end to end.

The stages, each timed and measured::

    pages      a seeded workload (zsmalloc.workloads), held in memory as the reference
      |
    fill       ZramDevice.write_page for every page              (progress bar)
    read       every page read back and compared                 -> write / read MB/s
      |
    churn      rewrite a share of the pages with new contents and discard another,
               while BackgroundMigration moves random pool pages
               and evacuates random ranges of the arena underneath
      |
    snapshot   classes, fullness, frames in use                  "before compaction"
    compact    zram's compact (zs_compact), then the arena's compaction
    snapshot                                                      "after compaction"
      |
    verify     every page byte for byte against the reference; device and pool check()
      |
    peer       the same fill, read and churn on a dict of lz4-compressed bytes,
               written inline (zsmalloc.cli.bench.time_lz4_dict)
      |
    report     the classes table, mm_stat and io_stat in the kernel's formats,
               the VM's counters, the side-by-side line, and a PNG of the pool
               before and after compaction (zsmalloc.cli.plot)

RSS figures are process RSS growth from a baseline read just before each
store is created (psutil), after the workload's pages exist.  The device is
measured and closed before the peer runs, so neither store's heap leftovers
count for the other.
"""

from __future__ import annotations

import gc
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import click
import lz4.block
from rich.table import Table
from rich.text import Text

from zsmalloc.cli.app import SHARE, console, device_shape_options, main, print_rule, progress_bars, rss
from zsmalloc.cli.bench import time_lz4_dict
from zsmalloc.cli.stats import mm_stat_table
from zsmalloc.mm import BackgroundMigration
from zsmalloc.mm.heap import trim_process_heap
from zsmalloc.workloads import PAGE_SOURCES, get_page_source
from zsmalloc.zram import ZramDevice
from zsmalloc.zram.codecs import available_codecs

PAGE = 4096
MB = 1e6
_ZERO = bytes(PAGE)


def _pool_snapshot(dev: ZramDevice) -> dict:
    """What the plot and the report need of the pool at one moment."""
    pool = dev.pool
    mem = pool.memory
    return {
        "classes": [
            {
                "size": c.size,
                "inuse_ratio": list(c.inuse_ratio),
                "empty": c.empty_zspages,
                "pages_used": c.pages_used,
                "obj_used": c.obj_used,
                "obj_allocated": c.obj_allocated,
            }
            for c in pool.class_stats()
            if c.obj_allocated
        ],
        "used_pfns": mem.used_pfns(),
        "hwm": mem.hwm,
        "pool_pages": pool.total_pages,
        "mm_stat": dev.mm_stat().to_dict(),
        "rss_growth": 0,
    }


def _plan_churn(n: int, rewrite: float, discard: float, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint random page indexes to rewrite and to discard."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_rewrite = int(n * rewrite)
    n_discard = min(n - n_rewrite, int(n * discard))
    return order[:n_rewrite], order[n_rewrite : n_rewrite + n_discard]


def _run_device(
    pages: list[bytes],
    new_pages: list[bytes],
    rewrites: list[int],
    discards: list[int],
    algorithm: str,
    chain_size: int | None,
    kernel: str | None,
    seed: int,
    quiet: bool,
) -> dict:
    n = len(pages)
    expected = list(pages)
    gc.collect()
    rss0 = rss()
    try:
        dev = ZramDevice(n * PAGE, algorithm=algorithm, chain_size=chain_size, name="zram0", kernel=kernel)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    write, read = dev.write_page, dev.read_page
    with progress_bars(quiet) as progress:
        task = progress.add_task(f"fill ({algorithm})", total=n)
        t0 = time.perf_counter()
        for i, page in enumerate(pages):
            write(i, page)
            if not i & 1023:
                progress.update(task, completed=i)
        t_write = time.perf_counter() - t0
    rss_fill = rss() - rss0
    mm_fill = dev.mm_stat().to_dict()

    t0 = time.perf_counter()
    bad_after_fill = sum(read(i) != page for i, page in enumerate(pages))
    t_read = time.perf_counter() - t0

    # churn, with the VM moving the pool's pages underneath
    vm = BackgroundMigration(dev.pool.memory, seed)
    ops: list[tuple[int, bytes | None]] = [(i, new_pages[k]) for k, i in enumerate(rewrites)]
    ops += [(i, None) for i in discards]
    random.Random(seed + 1).shuffle(ops)
    vm.start()
    try:
        with progress_bars(quiet) as progress:
            task = progress.add_task("churn (VM migrating)", total=len(ops))
            t0 = time.perf_counter()
            for k, (i, new_page) in enumerate(ops):
                if new_page is None:
                    dev.discard(i)
                    expected[i] = _ZERO
                else:
                    write(i, new_page)
                    expected[i] = new_page
                if not k & 1023:
                    progress.update(task, completed=k)
            t_churn = time.perf_counter() - t0
    finally:
        vm.stop()
    dev.pool.flush_deferred()
    before = _pool_snapshot(dev)
    before["rss_growth"] = rss() - rss0

    t0 = time.perf_counter()
    zs_compacted = dev.compact()
    arena = dev.pool.memory.compact()
    dev.pool.flush_deferred()
    dev.pool.memory.drain_pages()
    t_compact = time.perf_counter() - t0
    gc.collect()
    after = _pool_snapshot(dev)
    after["rss_growth"] = rss() - rss0

    bad = [i for i in range(n) if read(i) != expected[i]]
    dev.check()
    report = {
        "disksize": dev.disksize,
        "chain_size": dev.pool.chain_size,
        "write_seconds": t_write,
        "read_seconds": t_read,
        "churn_seconds": t_churn,
        "churn_ops": len(ops),
        "compact_seconds": t_compact,
        "rss_after_fill": rss_fill,
        "mm_stat_after_fill": mm_fill,
        "bad_after_fill": bad_after_fill,
        "before_compaction": before,
        "after_compaction": after,
        "zs_compact_pages_freed": zs_compacted,
        "arena_compaction": {
            "frames_moved": arena.succeeded,
            "hwm_before": arena.hwm_before,
            "hwm_after": arena.hwm_after,
            "frames_released": arena.released,
        },
        "background_vm": vm.to_dict(),
        "vmstat": dict(dev.pool.memory.vmstat.items()),
        "pages_verified": n,
        "pages_corrupt": len(bad) + bad_after_fill,
        "mm_stat": dev.mm_stat().to_dict(),
        "io_stat": dev.io_stat().to_dict(),
        "text": {
            "classes": dev.pool.format_classes(),
            "mm_stat": dev.format_mm_stat(),
            "io_stat": dev.format_io_stat(),
        },
    }
    dev.close()
    return report


def _run_peer(pages: list[bytes], new_pages: list[bytes], rewrites: list[int], discards: list[int]) -> dict:
    """The same fill, read and churn on a dict of lz4-compressed bytes."""
    gc.collect()
    trim_process_heap()
    rss0 = rss()
    d, (t_write, t_read, bad) = time_lz4_dict(pages, list(range(len(pages))))
    rss_fill = rss() - rss0
    for k, i in enumerate(rewrites):
        d[i] = lz4.block.compress(new_pages[k], store_size=False)
    for i in discards:
        del d[i]
    gc.collect()
    rss_churn = rss() - rss0
    d.clear()
    return {
        "name": "dict of lz4 bytes",
        "write_seconds": t_write,
        "read_seconds": t_read,
        "rss_after_fill": rss_fill,
        "rss_after_churn": rss_churn,
        "pages_corrupt": bad,
    }


def _generate(source: Callable, n: int, seed: int, label: str, quiet: bool) -> list[bytes]:
    out: list[bytes] = []
    with progress_bars(quiet) as progress:
        task = progress.add_task(label, total=n)
        for page in source(n, seed):
            out.append(page)
            if not len(out) & 1023:
                progress.update(task, completed=len(out))
    return out


@main.command()
@click.option(
    "--workload",
    type=click.Choice(sorted(PAGE_SOURCES)),
    default="kernel-build",
    show_default=True,
    help="where the pages come from (zsmalloc.workloads)",
)
@click.option("--pages", "n_pages", default=32768, show_default=True, type=click.IntRange(16), help="pages")
@click.option("--algorithm", type=click.Choice(available_codecs()), default="lz4", show_default=True)
@device_shape_options
@click.option("--rewrite", default=0.3, show_default=True, type=SHARE, help="share rewritten")
@click.option("--discard", default=0.4, show_default=True, type=SHARE, help="share discarded")
@click.option("--seed", default=1, show_default=True)
@click.option(
    "--png",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("zsmalloc-demo.png"),
    show_default=True,
    help="where to write the before/after plot",
)
@click.option("--no-png", is_flag=True, help="skip the plot")
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
def demo(
    workload: str,
    n_pages: int,
    algorithm: str,
    chain_size: int | None,
    kernel: str | None,
    rewrite: float,
    discard: float,
    seed: int,
    png: Path,
    no_png: bool,
    as_json: bool,
) -> None:
    """A zram device on the pool, end to end: fill, churn under migration, compact, verify, report."""
    source = get_page_source(workload)
    pages = _generate(source, n_pages, seed, f"pages ({workload})", as_json)
    rewrites, discards = _plan_churn(n_pages, rewrite, discard, seed)
    new_pages = _generate(source, len(rewrites), seed + 1000, "pages for the rewrites", as_json)
    dev = _run_device(pages, new_pages, rewrites, discards, algorithm, chain_size, kernel, seed, as_json)
    peer = _run_peer(pages, new_pages, rewrites, discards)
    figures = {
        "workload": workload,
        "pages": n_pages,
        "algorithm": algorithm,
        "kernel": kernel,
        "chain_size": dev["chain_size"],
        "rewrite_share": rewrite,
        "discard_share": discard,
        "seed": seed,
        "device": dev,
        "peer": peer,
    }
    if not no_png:
        from zsmalloc.cli.plot import plot_before_after  # matplotlib loads only when plotting

        plot_before_after(dev["before_compaction"], dev["after_compaction"], png, title=_title(figures))
        figures["png"] = str(png)
    if as_json:
        text = dev.pop("text")
        for snap in (dev["before_compaction"], dev["after_compaction"]):
            snap["frames_in_use"] = len(snap.pop("used_pfns"))
        click.echo(json.dumps(figures, indent=2))
        dev["text"] = text
    else:
        _print_report(figures)
    if dev["pages_corrupt"] or peer["pages_corrupt"]:
        raise SystemExit(f"{dev['pages_corrupt']} pages read back wrong")


def _title(f: dict) -> str:
    kernel = f", kernel {f['kernel']} preset" if f["kernel"] else ""
    shape = f"{f['algorithm']}, chain {f['chain_size']}{kernel}"
    return f"zram0: {f['pages']:,} pages of {f['workload']}, {shape}"


def _mbs(pages: int, seconds: float) -> str:
    return f"{pages * PAGE / MB / seconds:,.0f} MB/s" if seconds else "-"


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def _print_report(f: dict) -> None:
    dev, peer, n = f["device"], f["peer"], f["pages"]
    print_rule("/sys/kernel/debug/zsmalloc/zram0/classes (after compaction)")
    console.print(dev["text"]["classes"], highlight=False)
    print_rule("/sys/block/zram0/mm_stat and io_stat")
    mm = dev["mm_stat"]
    console.print(mm_stat_table(mm))
    console.print(f"mm_stat: {dev['text']['mm_stat'].rstrip()}", highlight=False)
    console.print(f"io_stat: {dev['text']['io_stat'].rstrip()}", highlight=False)

    vm, ac = dev["background_vm"], dev["arena_compaction"]
    bfr, aft = dev["before_compaction"], dev["after_compaction"]
    vmtab = Table(title="the VM underneath, and compaction")
    vmtab.add_column("what")
    vmtab.add_column("count", justify="right")
    for label, value in (
        ("pages migrated by the background VM during churn", vm["pages_moved"]),
        ("  moves refused or busy (isolated, pinned, locked)", vm["moves_refused_or_failed"]),
        ("ranges evacuated (memory offlining)", vm["evacuations"]),
        ("  frames moved out of them", vm["pages_evacuated"]),
        ("vmstat pgmigrate_success", dev["vmstat"]["pgmigrate_success"]),
        ("vmstat pgmigrate_fail", dev["vmstat"]["pgmigrate_fail"]),
        ("zs_compact: pool pages freed", dev["zs_compact_pages_freed"]),
        ("arena compaction: frames moved down", ac["frames_moved"]),
        ("arena high-water mark before -> after", f"{ac['hwm_before']:,} -> {ac['hwm_after']:,}"),
        ("pool pages before -> after compaction", f"{bfr['pool_pages']:,} -> {aft['pool_pages']:,}"),
    ):
        vmtab.add_row(label, f"{value:,}" if isinstance(value, int) else value)
    console.print(vmtab)

    side = Table(title=f"side by side, the same {n:,} pages ({_mib(n * PAGE)})")
    for col in ("store", "write", "read", "RSS after fill", "RSS after churn"):
        side.add_column(col, justify="right")
    side.add_row(
        "ZramDevice (zsmalloc)",
        _mbs(n, dev["write_seconds"]),
        _mbs(n, dev["read_seconds"]),
        _mib(dev["rss_after_fill"]),
        _mib(aft["rss_growth"]) + " (compacted)",
    )
    side.add_row(
        peer["name"],
        _mbs(n, peer["write_seconds"]),
        _mbs(n, peer["read_seconds"]),
        _mib(peer["rss_after_fill"]),
        _mib(peer["rss_after_churn"]) + " (after del)",
    )
    console.print(side)
    fill = dev["mm_stat_after_fill"]
    compr = max(1, fill["compr_data_size"])
    console.print(
        f"compression {fill['orig_data_size'] / compr:.2f}:1 after the fill; device RSS growth / "
        f"compr_data_size {dev['rss_after_fill'] / compr:.3f}; after churn and compaction the device "
        f"holds {aft['rss_growth'] / max(1, peer['rss_after_churn']):.2f}x the dict's RSS. "
        f"Churn: {dev['churn_ops']:,} rewrites and discards in {dev['churn_seconds']:.2f} s; "
        f"compaction {dev['compact_seconds']:.2f} s.",
        highlight=False,
    )
    verdict = ("all intact", "green") if not dev["pages_corrupt"] else ("CORRUPT", "red")
    console.print(
        Text.assemble(
            f"verified {dev['pages_verified']:,} pages byte for byte, {dev['pages_corrupt']} wrong: ",
            verdict,
            "; device and pool check() clean.",
        )
    )
    if "png" in f:
        console.print(f"plot: {f['png']}")
