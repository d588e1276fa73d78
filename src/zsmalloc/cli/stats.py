"""``zsmalloc stats``: what zram would report for a workload or a disk image, in the kernel's formats.

Loads the pages into a fresh ``ZramDevice`` (optionally discards a share, or
the runs of pages ``--discard-ranges`` names as ``blkdiscard`` would, and
compacts), then prints the files a zram user reads, under their sysfs and
debugfs names: ``disksize``, ``comp_algorithm``, ``mm_stat``, ``io_stat``,
``bd_stat`` and zsmalloc's ``classes``.  With ``--json``, the same as numbers.
Useful to compare algorithms and chain sizes on one's own data::

    zsmalloc stats --image disk.img --algorithm zstd --chain-size 16
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from zsmalloc.cli.app import SHARE, console, device_shape_options, main
from zsmalloc.workloads import PAGE_SOURCES, get_page_source
from zsmalloc.zram import KERNELS, ZramDevice, library_versions
from zsmalloc.zram.codecs import available_codecs
from zsmalloc.zram.zstdlib import KernelZstdError, KernelZstdWarning

PAGE = 4096


MM_STAT_MEANING = {
    "orig_data_size": "bytes of the pages stored, uncompressed",
    "compr_data_size": "bytes of their compressed objects",
    "mem_used_total": "bytes of the pool's pages, fragmentation included",
    "mem_limit": "the pool's limit in bytes, 0 for none",
    "mem_used_max": "the high-water mark of mem_used_total",
    "same_pages": "pages of one repeated word, stored without memory",
    "pages_compacted": "pool pages freed by compaction",
    "huge_pages": "pages stored whole (incompressible)",
    "huge_pages_since": "huge pages ever stored",
}


def mm_stat_table(mm_stat: dict[str, int]) -> Table:
    """The nine mm_stat fields, one per row in the kernel's order, with what each counts."""
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_column("meaning", style="dim")
    for key, value in mm_stat.items():
        table.add_row(key, f"{value:,}", MM_STAT_MEANING[key])
    return table


def _image_pages(path: Path) -> Iterator[bytes]:
    """The file's 4 KiB pages, the last one zero-padded."""
    with path.open("rb") as f:
        while page := f.read(PAGE):
            yield page.ljust(PAGE, b"\0")


class PageRanges(click.ParamType):
    """``FIRST:COUNT[,FIRST:COUNT...]``: runs of pages, as ``blkdiscard -o FIRST*4096 -l COUNT*4096``."""

    name = "page ranges"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> list[tuple[int, int]]:
        if isinstance(value, list):
            return value
        ranges = []
        for part in str(value).split(","):
            first, sep, count = part.strip().partition(":")
            if not sep or not first.isdigit() or not count.isdigit():
                self.fail(f"{part!r} is not FIRST:COUNT (two whole numbers of pages)", param, ctx)
            ranges.append((int(first), int(count)))
        return ranges


def _comp_algorithm_line(selected: str) -> str:
    """``comp_algorithm``'s text: every algorithm, the selected one in brackets."""
    return " ".join(f"[{a}]" if a == selected else a for a in available_codecs())


def _compressor(codec: str, libraries: dict[str, str]) -> str:
    """What made the compressed bytes: a library and its version, or the kernel's own lz4."""
    if codec == "lz4-kernel":
        return "the kernel's lib/lz4 compressor (lz4-kernel)"
    if codec in ("lz4", "lz4hc"):
        return f"liblz4 {libraries['lz4']}"
    if codec == "zstd":
        return f"libzstd {libraries.get('zstd_library', libraries['zstd'])}"
    return "zlib" if codec == "deflate" else codec


@main.command()
@click.option(
    "--workload", type=click.Choice(sorted(PAGE_SOURCES)), default="kernel-build", show_default=True
)
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="store this file's pages instead of a workload",
)
@click.option("--pages", "n_pages", default=16384, show_default=True, type=click.IntRange(1))
@click.option("--algorithm", type=click.Choice(available_codecs()), default="lz4", show_default=True)
@device_shape_options
@click.option("--discard", default=0.0, show_default=True, type=SHARE, help="share discarded")
@click.option(
    "--discard-ranges",
    type=PageRanges(),
    default=None,
    help="discard these pages instead of a random share: FIRST:COUNT[,FIRST:COUNT...] (in 4 KiB pages)",
)
@click.option("--compact", is_flag=True, help="run zram's compact after the discards")
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
def stats(
    workload: str,
    image: Path | None,
    n_pages: int,
    algorithm: str,
    chain_size: int | None,
    kernel: str | None,
    discard: float,
    discard_ranges: list[tuple[int, int]] | None,
    compact: bool,
    seed: int,
    as_json: bool,
) -> None:
    """Store a workload (or a file) in a zram device and print its stats in the kernel's formats."""
    if image is not None:
        n_pages = max(1, -(-image.stat().st_size // PAGE))
        pages: Iterator[bytes] = _image_pages(image)
        label = str(image)
    else:
        pages = iter(get_page_source(workload)(n_pages, seed))
        label = workload
    if discard_ranges is not None:
        if discard:
            raise click.UsageError("--discard and --discard-ranges exclude each other")
        for first, count in discard_ranges:
            if first + count > n_pages:
                raise click.BadParameter(
                    f"pages [{first}, {first + count}) are outside the device's {n_pages} pages",
                    param_hint="--discard-ranges",
                )
    try:
        with warnings.catch_warnings():  # a missing libzstd is said below, beside the figures
            warnings.simplefilter("ignore", KernelZstdWarning)
            dev = ZramDevice(n_pages * PAGE, algorithm=algorithm, chain_size=chain_size, kernel=kernel)
    except (ValueError, KernelZstdError) as exc:
        raise click.UsageError(str(exc)) from None
    libraries = library_versions()
    loaded = dev.zstd_library
    if loaded is not None:  # the preset's zstd compresses through another libzstd
        libraries["zstd"] = loaded.version
        libraries["zstd_library"] = loaded.describe()
    with dev:
        for i, page in enumerate(pages):
            dev.write_page(i, page)
        if discard_ranges is not None:
            for first, count in discard_ranges:
                dev.discard(first, count)
        else:
            for i in random.Random(seed).sample(range(n_pages), int(n_pages * discard)):
                dev.discard(i)
        pages_compacted = dev.compact() if compact else 0
        dev.check()
        if as_json:
            out = {
                "source": label,
                "disksize": dev.disksize,
                "comp_algorithm": algorithm,
                "kernel": kernel,
                "chain_size": dev.pool.chain_size,
                "codec": dev.algorithm,
                "class_rule": dev.pool.class_rule,
                "fullness": dev.pool.fullness,
                "libraries": libraries,
                "discarded_share": discard,
                "discard_ranges": discard_ranges,
                "compact_pages_freed": pages_compacted,
                "mm_stat": dev.mm_stat().to_dict(),
                "io_stat": dev.io_stat().to_dict(),
                "bd_stat": dev.bd_stat().to_dict(),
                "classes": [c.to_dict() for c in dev.pool.class_stats() if c.obj_allocated],
                "pool": dev.pool.stats().to_dict(),
            }
            click.echo(json.dumps(out, indent=2))
            return
        sysfs = "/sys/block/zram0"
        for name, text in (
            ("disksize", f"{dev.disksize}\n"),
            ("comp_algorithm", _comp_algorithm_line(algorithm) + "\n"),
            ("mm_stat", dev.format_mm_stat()),
            ("io_stat", dev.format_io_stat()),
            ("bd_stat", dev.format_bd_stat()),
        ):
            console.print(f"{sysfs}/{name}", style="bold", highlight=False)
            console.print(text, end="", highlight=False)
        console.print(mm_stat_table(dev.mm_stat().to_dict()))
        preset = f"kernel {kernel} preset" if kernel else "no kernel preset"
        console.print(f"({preset}; compressed by {_compressor(dev.algorithm, libraries)})", highlight=False)
        if kernel and dev.algorithm == "zstd" and libraries["zstd"] not in KERNELS[kernel].zstd_versions:
            console.print(
                f"(kernel {kernel}'s lib/zstd is {KERNELS[kernel].zstd_library}, whose output libzstd "
                f"{libraries['zstd']} does not reproduce: its pages may compress a few bytes apart)",
                highlight=False,
            )
        pool = dev.pool
        console.print(
            Text.assemble(
                ("/sys/kernel/debug/zsmalloc/zram0/classes", "bold"),
                f"  ({label}, chain {pool.chain_size}, {pool.class_rule}, {pool.fullness} groups)",
            )
        )
        console.print(dev.pool.format_classes(), highlight=False)
