"""``zsmalloc kernel-vm``: boot Debian's kernel under QEMU and compare its zram figures with ours.

Writes each image to the guest's zram with each algorithm, discards a seeded
set of page runs, compacts, and reads mm_stat, io_stat and bd_stat after
each stage; then runs ``zsmalloc stats`` on the same image and operations and
prints, per mm_stat field and stage, the kernel's value, ours and the
difference (io_stat and bd_stat in a line each, and the sampled pages'
compressed objects, the kernel's against ours, byte for byte).  Needs qemu-system-x86_64
and apt, or for 6.16 and 7.2 gpgv and the Debian archive keyring (the packages are
downloaded into ``~/.cache/zsmalloc-kernel-vm``)::

    zsmalloc kernel-vm --kernel 6.12 --image-kind files --algorithm lz4 --algorithm zstd
"""

from __future__ import annotations

import json

import click
from rich.table import Table

from zsmalloc.cli.app import console, main
from zsmalloc.kernelvm import IMAGE_KINDS, BootError, run_comparison
from zsmalloc.kernelvm.debian import SERIES, PackageError
from zsmalloc.kernelvm.harness import mm_stat_table, other_stats_summary


@main.command("kernel-vm")
@click.option(
    "--kernel",
    "series",
    type=click.Choice(SERIES),
    default="6.12",
    show_default=True,
    help="6.1 and 6.12 through the host's apt; 6.16 (trixie-backports) and 7.2 (sid) from the mirror",
)
@click.option(
    "--image-kind",
    "kinds",
    type=click.Choice(sorted(IMAGE_KINDS)),
    multiple=True,
    help="repeatable; default: every kind",
)
@click.option("--algorithm", "algorithms", multiple=True, help="repeatable; default: lz4 and zstd")
@click.option("--pages", default=4096, show_default=True, type=click.IntRange(16, 65536), help="per image")
@click.option(
    "--samples",
    default=64,
    show_default=True,
    type=click.IntRange(0, 4096),
    help="pages per run read back with their compressed bytes captured, to compare byte for byte",
)
@click.option("--seed", default=1, show_default=True)
@click.option("--timeout", default=900.0, show_default=True, type=click.FloatRange(1), help="seconds")
@click.option("--json", "as_json", is_flag=True, help="print every row as JSON")
def kernel_vm(
    series: str,
    kinds: tuple[str, ...],
    algorithms: tuple[str, ...],
    pages: int,
    samples: int,
    seed: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Boot Debian's kernel under QEMU (TCG), run zram on the images, compare with zsmalloc stats."""
    try:
        comparison = run_comparison(
            series,
            kinds or sorted(IMAGE_KINDS),
            algorithms or ("lz4", "zstd"),
            pages=pages,
            samples=samples,
            seed=seed,
            timeout=timeout,
            log=(lambda _m: None) if as_json else (lambda m: console.print(m, style="dim")),
        )
    except (BootError, PackageError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(comparison.to_dict(), indent=2))
        return
    rows = mm_stat_table(comparison)
    table = Table(
        title=f"mm_stat: {comparison.release} (chain {comparison.chain_size}) against zsmalloc stats"
    )
    for name in rows[0]:
        table.add_column(name, justify="left" if name in ("image", "alg", "field") else "right")
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
    for line in other_stats_summary(comparison):
        console.print(line, highlight=False)
