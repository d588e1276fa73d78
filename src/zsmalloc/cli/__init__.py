"""The ``zsmalloc`` command line (click + rich): the top of the layer stack.

It may use every package below; nothing uses it.  One module per command
family, each registering on the group in :mod:`zsmalloc.cli.app`:

``demo``       ``zsmalloc demo``: the main job, a zram device end to end (``plot`` draws its PNG)
``stats``      ``zsmalloc stats``: zram's and zsmalloc's stats files for a workload or an image
``bench``      ``zsmalloc bench``: throughput against a dict of lz4 bytes and zict
``pool_demo``  ``zsmalloc pool-demo``: the allocator alone
``classes``    ``zsmalloc classes``: the size-class table
``replay``     ``zsmalloc replay``: an allocation trace under several configurations
``checks``     ``zsmalloc stress`` and ``zsmalloc protocheck``
``fragsim``    ``zsmalloc fragsim``: what page migration buys the VM (``fragsim_plot`` draws its PNG)
``serve``      ``zsmalloc serve``: a zram device exported over NBD
``kernelvm``   ``zsmalloc kernel-vm``: zram on Debian's kernel under QEMU against ``zsmalloc stats``
``zstdlib``    ``zsmalloc zstd-library``: the libzstd of each kernel preset's zstd, and fetching it
"""

try:
    import click  # noqa: F401
    import rich  # noqa: F401
except ImportError as exc:  # the library is installed without its command line
    need = "pip install 'zsmalloc[cli]'"
    raise ImportError(f"the zsmalloc command line needs its extra: {need} ({exc})") from exc

from zsmalloc.cli import (
    bench,
    checks,
    classes,
    demo,
    fragsim,
    kernelvm,
    pool_demo,
    replay,
    serve,
    stats,
    zstdlib,
)
from zsmalloc.cli.app import main

__all__ = [
    "bench",
    "checks",
    "classes",
    "demo",
    "fragsim",
    "kernelvm",
    "main",
    "pool_demo",
    "replay",
    "serve",
    "stats",
    "zstdlib",
]
