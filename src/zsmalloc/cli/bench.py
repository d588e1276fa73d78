"""``zsmalloc bench``: page write and read throughput of a ZramDevice against its peers, here and now.

A quick, in-process measurement for a user deciding whether the store suits
their data (``benchmarks/bench_zram.py`` is the careful one: fresh
subprocesses, memory, more rounds).  Each round writes every page of the
workload into a fresh store, then reads every page back in a shuffled order
and compares it; the stores take turns going first.  Reported: median
pages/s over the rounds, and ours / peer.

The peers, written inline so that no wrapper call is charged to them:

``dict``  ``d[i] = lz4.block.compress(page, store_size=False)``; read with
          ``lz4.block.decompress(d[i], uncompressed_size=4096)``
``zict``  ``zict.Func(compress, decompress, {})`` with the same lz4 calls
          (only when zict is installed: the benchmark extra has it)
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import click
import lz4.block
from rich.table import Table

from zsmalloc.cli.app import console, main
from zsmalloc.workloads import PAGE_SOURCES, get_page_source
from zsmalloc.zram import ZramDevice
from zsmalloc.zram.codecs import available_codecs

PAGE = 4096

#: (write seconds, read seconds, pages read back wrong)
Timing = tuple[float, float, int]


def time_lz4_dict(pages: list[bytes], order: list[int]) -> tuple[dict[int, bytes], Timing]:
    """Fill a dict of lz4 bytes with ``pages``, read them back in ``order``; the dict stays."""
    compress, decompress = lz4.block.compress, lz4.block.decompress
    d: dict[int, bytes] = {}
    t0 = time.perf_counter()
    for i, page in enumerate(pages):
        d[i] = compress(page, store_size=False)
    t1 = time.perf_counter()
    bad = 0
    for i in order:
        bad += decompress(d[i], uncompressed_size=PAGE) != pages[i]
    return d, (t1 - t0, time.perf_counter() - t1, bad)


def _time_zict(pages: list[bytes], order: list[int]) -> Timing:
    import zict  # optional: installed with the bench extra

    def dump(page: bytes) -> bytes:
        return lz4.block.compress(page, store_size=False)

    def load(blob: bytes) -> bytes:
        return lz4.block.decompress(blob, uncompressed_size=PAGE)

    m: zict.Func[int, bytes, bytes] = zict.Func(dump, load, {})
    t0 = time.perf_counter()
    for i, page in enumerate(pages):
        m[i] = page
    t1 = time.perf_counter()
    bad = 0
    for i in order:
        bad += m[i] != pages[i]
    return t1 - t0, time.perf_counter() - t1, bad


def _time_device(algorithm: str, chain_size: int) -> Callable[[list[bytes], list[int]], Timing]:
    def run(pages: list[bytes], order: list[int]) -> Timing:
        dev = ZramDevice(len(pages) * PAGE, algorithm=algorithm, chain_size=chain_size)
        write, read = dev.write_page, dev.read_page
        t0 = time.perf_counter()
        for i, page in enumerate(pages):
            write(i, page)
        t1 = time.perf_counter()
        bad = 0
        for i in order:
            bad += read(i) != pages[i]
        t2 = time.perf_counter()
        dev.close()
        return t1 - t0, t2 - t1, bad

    return run


def _zict_installed() -> bool:
    try:
        import zict  # noqa: F401
    except ImportError:
        return False
    return True


@main.command()
@click.option(
    "--workload", type=click.Choice(sorted(PAGE_SOURCES)), default="kernel-build", show_default=True
)
@click.option("--pages", "n_pages", default=20000, show_default=True, type=click.IntRange(1))
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1))
@click.option("--algorithm", type=click.Choice(available_codecs()), default="lz4", show_default=True)
@click.option("--chain-size", default=8, show_default=True, type=click.IntRange(4, 16))
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
def bench(
    workload: str, n_pages: int, rounds: int, algorithm: str, chain_size: int, seed: int, as_json: bool
) -> None:
    """Write and read throughput of a ZramDevice against a dict of lz4 bytes (and zict), same pages."""
    pages = list(get_page_source(workload)(n_pages, seed))
    order = list(range(n_pages))
    random.Random(seed).shuffle(order)
    stores: dict[str, Callable[[list[bytes], list[int]], Timing]] = {
        f"ZramDevice ({algorithm})": _time_device(algorithm, chain_size),
        "dict of lz4 bytes": lambda p, o: time_lz4_dict(p, o)[1],
    }
    if _zict_installed():
        stores["zict Func(lz4)"] = _time_zict
    runs: dict[str, list[Timing]] = {name: [] for name in stores}
    names = list(stores)
    with console.status("bench", spinner="dots") if not as_json else nullcontext():
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                gc.collect()
                gc.disable()
                try:
                    runs[name].append(stores[name](pages, order))
                finally:
                    gc.enable()
    results = {
        name: {
            "write_pages_per_s": n_pages / statistics.median(t[0] for t in timings),
            "read_pages_per_s": n_pages / statistics.median(t[1] for t in timings),
            "pages_wrong": sum(t[2] for t in timings),
        }
        for name, timings in runs.items()
    }
    ours = results[names[0]]
    for res in results.values():
        res["ours_over_this_write"] = ours["write_pages_per_s"] / res["write_pages_per_s"]
        res["ours_over_this_read"] = ours["read_pages_per_s"] / res["read_pages_per_s"]
    if as_json:
        out = {"workload": workload, "pages": n_pages, "rounds": rounds, "stores": results}
        click.echo(json.dumps(out, indent=2))
    else:
        table = Table(title=f"{n_pages:,} pages of {workload}, median of {rounds} rounds")
        for col in (
            "store",
            "write pages/s",
            "read pages/s",
            "ours / this, write",
            "ours / this, read",
            "wrong",
        ):
            table.add_column(col, justify="right")
        for name, res in results.items():
            table.add_row(
                name,
                f"{res['write_pages_per_s']:,.0f}",
                f"{res['read_pages_per_s']:,.0f}",
                f"{res['ours_over_this_write']:.2f}",
                f"{res['ours_over_this_read']:.2f}",
                str(res["pages_wrong"]),
            )
        console.print(table)
    if any(res["pages_wrong"] for res in results.values()):
        raise SystemExit("pages read back wrong")
