"""Workloads: seeded object sizes and realistic page contents for zsmalloc and zram.

``sizes``
    Object-size mixes fitted to published zram figures (KERNEL.md section 8):
    :data:`MIXES`, :func:`get_mix`.  What the pool benchmarks allocate.
``pages``
    Synthetic 4 KiB pages whose lz4 sizes follow a mix, with a share of
    same-filled pages: :func:`mix_pages`, :func:`page_of_size`.
``files``
    Pages cut from real files, the standard library's sources or the shared
    libraries: :func:`file_pages`.
``process``
    A snapshot of a live process's anonymous memory through ``/proc``, of a
    child Python that builds a heap by default: :func:`process_pages`.

:data:`PAGE_SOURCES` names them all for a ``--workload NAME`` option: each
:class:`PageSource` is a callable ``(n, seed)`` that makes at most ``n`` pages
of 4096 bytes.  The mix and file sources give the same bytes for the same seed
(on the same machine, for files); ``process`` cannot (addresses, allocator
state) and raises :class:`SnapshotNotPermitted` where the kernel forbids
reading another process's memory, for the caller to fall back to another
source.

The package is a leaf: it imports nothing from the allocator, zram or the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from zsmalloc.workloads.files import FILE_KINDS, file_pages
from zsmalloc.workloads.pages import SAME_FILLED_SHARE, lz4_compress, mix_pages, page_of_size, tolerance
from zsmalloc.workloads.process import SnapshotNotPermitted, process_pages, snapshot_pages
from zsmalloc.workloads.sizes import MAX_SIZE, MIXES, PAGE_SIZE, SizeMix, get_mix


@dataclass(frozen=True)
class PageSource:
    """A named source of pages: ``source(n, seed)`` iterates over at most ``n`` pages of 4096 bytes."""

    name: str
    description: str
    pages: Callable[[int, int], Iterator[bytes]]

    def __call__(self, n: int, seed: int) -> Iterator[bytes]:
        return self.pages(n, seed)


def _file_source(kind: str, n: int, seed: int) -> Iterator[bytes]:
    return file_pages(kind, n * PAGE_SIZE, seed)


def _process_source(n: int, seed: int) -> Iterator[bytes]:
    return iter(process_pages(None, n * PAGE_SIZE, seed))


PAGE_SOURCES: dict[str, PageSource] = {
    s.name: s
    for s in (
        *(
            PageSource(m.name, f"synthetic, lz4 sizes of: {m.description}", partial(mix_pages, m))
            for m in MIXES.values()
        ),
        PageSource("stdlib", "the Python standard library's .py files", partial(_file_source, "stdlib")),
        PageSource("shared-libs", "shared libraries and libpython", partial(_file_source, "shared-libs")),
        PageSource("process", "anonymous memory of a child Python with a built heap", _process_source),
    )
}


def get_page_source(name: str) -> PageSource:
    try:
        return PAGE_SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown page source {name!r}; known: {', '.join(PAGE_SOURCES)}") from None


__all__ = [
    "FILE_KINDS",
    "MAX_SIZE",
    "MIXES",
    "PAGE_SIZE",
    "PAGE_SOURCES",
    "SAME_FILLED_SHARE",
    "PageSource",
    "SizeMix",
    "SnapshotNotPermitted",
    "file_pages",
    "get_mix",
    "get_page_source",
    "lz4_compress",
    "mix_pages",
    "page_of_size",
    "process_pages",
    "snapshot_pages",
    "tolerance",
]
