"""Pages cut from real files on this machine: what a page cache or a tmpfs on zram would hold.

Two kinds of file, named for :func:`file_pages`:

``stdlib``
    The ``.py`` files of the Python standard library
    (``sysconfig.get_paths()["stdlib"]``, every level below it, without the
    ``site-packages`` and ``dist-packages`` trees): source text, which
    compresses well.
``shared-libs``
    Shared libraries (``*.so*``, regular files, the top level only) in
    ``/usr/lib/<multiarch>`` and ``/lib/<multiarch>`` (``x86_64-linux-gnu``
    here), and the interpreter's own libpython: machine code and tables, which
    compress less.

A list of paths may be given instead.  Paths are resolved (a library reached
through several symbolic links is read once) and sorted, then put in an order
shuffled by the seed; each file is read in 4096-byte pages, in file order, its
last partial page padded with zeros, until the cap on the total bytes
(``max_bytes``, rounded down to whole pages; a padded page counts whole).
Files that cannot be read are skipped.  The same seed gives the same pages as
long as the files are the same: the bytes depend on the machine, not on
directory listing order.
"""

from __future__ import annotations

import os
import random
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from zsmalloc.workloads.sizes import PAGE_SIZE

FILE_KINDS = ("stdlib", "shared-libs")
_NOT_STDLIB = {"site-packages", "dist-packages"}

StrPath = str | os.PathLike[str]


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, resolved and sorted."""
    root = sysconfig.get_paths()["stdlib"]
    found: list[str] = []
    for top, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _NOT_STDLIB]
        found.extend(os.path.join(top, name) for name in names if name.endswith(".py"))
    return _resolved(found)


def shared_library_files() -> list[Path]:
    """Shared libraries of the multiarch library directories and libpython, resolved and sorted."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    found: list[Path] = []
    for libdir in (Path("/usr/lib") / multiarch, Path("/lib") / multiarch):
        if multiarch and libdir.is_dir():
            found.extend(libdir.glob("*.so*"))
    for var in ("INSTSONAME", "LDLIBRARY"):
        name = sysconfig.get_config_var(var)
        if name:
            found.append(Path(sysconfig.get_config_var("LIBDIR") or "/") / name)
    return _resolved(found)


def _resolved(paths: Iterable[StrPath]) -> list[Path]:
    """Existing regular files among ``paths``, symbolic links resolved, each once, sorted."""
    return sorted({p for p in (Path(path).resolve() for path in paths) if p.is_file()})


def file_pages(source: str | Iterable[StrPath], max_bytes: int, seed: int = 0) -> Iterator[bytes]:
    """Pages of 4096 bytes from ``source`` (a kind of :data:`FILE_KINDS`, or paths), files in seeded order.

    At most ``max_bytes // 4096`` pages.  Raises :class:`FileNotFoundError`
    at the call when there is no file to read.
    """
    if isinstance(source, str):
        if source == "stdlib":
            files = stdlib_files()
        elif source == "shared-libs":
            files = shared_library_files()
        else:
            raise ValueError(f"unknown kind of file {source!r}; known: {', '.join(FILE_KINDS)}")
    else:
        files = _resolved(source)
    if not files:
        raise FileNotFoundError(f"no file to read pages from ({source!r})")
    random.Random(seed).shuffle(files)
    return _read_pages(files, max_bytes // PAGE_SIZE)


def _read_pages(files: list[Path], n_pages: int) -> Iterator[bytes]:
    for path in files:
        if n_pages <= 0:
            return
        try:
            with path.open("rb") as f:
                data = f.read(n_pages * PAGE_SIZE)
        except OSError:
            continue
        for at in range(0, len(data), PAGE_SIZE):
            yield data[at : at + PAGE_SIZE].ljust(PAGE_SIZE, b"\0")
            n_pages -= 1
