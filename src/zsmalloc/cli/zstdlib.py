"""``zsmalloc zstd-library``: which libzstd each kernel preset's zstd compresses with, and fetching it.

A preset's zstd is that kernel's lib/zstd version; the bundled libzstd
(1.5.5) stands in for 6.6's and 6.12's, and another is loaded at run time
(:mod:`zsmalloc.zram.zstdlib`).  ``--fetch`` puts them into the cache:
a release Debian packages (:mod:`zsmalloc.kernelvm.libzstd`: 1.5.7 for
6.17), or the kernel's own lib/zstd built from its source package
(:mod:`zsmalloc.kernelvm.kernel_zstd`: 6.1's 1.4.10, never released)::

    zsmalloc zstd-library            # per preset: its lib/zstd, the library used, from where
    zsmalloc zstd-library --fetch    # download, verify and install what is missing
"""

from __future__ import annotations

import json

import click
from rich.table import Table

from zsmalloc.cli.app import console, main
from zsmalloc.kernelvm.kernel_zstd import KERNEL_ZSTD, build_kernel_zstd
from zsmalloc.kernelvm.libzstd import LIBZSTD_SUITES, fetch_libzstd
from zsmalloc.kernelvm.mirror import PackageError
from zsmalloc.zram.kernels import KERNELS
from zsmalloc.zram.zstdlib import BUNDLED, KernelZstdError, find_any


def _rows() -> list[dict]:
    rows = []
    for version, preset in KERNELS.items():
        wanted = preset.zstd_versions
        row = {"kernel": version, "lib_zstd": preset.zstd_library, "reproduced_by": list(wanted)}
        if BUNDLED in wanted:
            row.update(library=BUNDLED, path=None, source="bundled (zstd-sys, python-zstandard)")
        else:
            found = find_any(wanted)
            if found is None:
                row.update(library=None, path=None, source=f"missing: the bundled {BUNDLED} stands in")
            else:
                row.update(library=found.version, path=str(found.path), source=found.source)
        rows.append(row)
    return rows


@main.command("zstd-library")
@click.option(
    "--fetch",
    is_flag=True,
    help="download (or build from the kernel's source), verify and install what is missing",
)
@click.option("--json", "as_json", is_flag=True, help="the table as JSON")
def zstd_library(fetch: bool, as_json: bool) -> None:
    """Which libzstd each kernel preset's zstd compresses with; --fetch what is missing."""
    try:
        if fetch:
            for series, preset in KERNELS.items():
                if BUNDLED in preset.zstd_versions or find_any(preset.zstd_versions):
                    continue
                version = preset.zstd_versions[0]
                if version in LIBZSTD_SUITES:
                    lib = fetch_libzstd(version)
                elif series in KERNEL_ZSTD:
                    lib = build_kernel_zstd(series)
                else:
                    continue
                if not as_json:
                    console.print(f"libzstd {lib.version}: {lib.path} ({lib.source})")
        rows = _rows()
    except (PackageError, KernelZstdError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("kernel", "lib/zstd", "compressed by", "from")
    for r in rows:
        where = r["source"] if r["path"] is None else f"{r['path']}\n{r['source']}"
        table.add_row(r["kernel"], r["lib_zstd"] or "-", r["library"] or "-", where)
    console.print(table)
    missing = [r["kernel"] for r in rows if r["library"] is None]
    if missing:
        fetchable = [
            r["kernel"]
            for r in rows
            if r["library"] is None
            and (set(r["reproduced_by"]) & set(LIBZSTD_SUITES) or r["kernel"] in KERNEL_ZSTD)
        ]
        hint = f"; `zsmalloc zstd-library --fetch` gets {', '.join(fetchable)}'s" if fetchable else ""
        console.print(f"no libzstd of its lib/zstd's version for {', '.join(missing)}{hint}")
