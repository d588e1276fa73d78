"""zsmalloc: the Linux kernel's compressed-memory allocator, on real memory.

Two implementations of one API: the engine (``zsmalloc.engine``, Rust, built
into ``zsmalloc._engine``) and the model (``zsmalloc.model``, Python, the
readable reference).  ``zsmalloc.backend`` says which one ``zsmalloc.Pool``
and ``zsmalloc.Memory`` are; ``ZSMALLOC_BACKEND=engine`` or ``=model``
chooses, for the whole library (zram, the NBD export, the CLI and the tools
build their pools from these names).  The default is the engine.

Layers, each a package, data flowing down (nothing below imports above)::

    zsmalloc.cli    command line (demo, serve, stats, bench, replay, pool-demo, classes,
                    stress, protocheck)
    zsmalloc.store  Store: a compressed mapping of bytes on a pool
    zsmalloc.nbd    the NBD export: nbdkit serving the engine's zram device
    zsmalloc.zram   ZramDevice: a compressed RAM block store on the pool
    zsmalloc.pool   the allocator: size classes, zspages, handles, stats,
                    compaction, the movable-page callbacks
    zsmalloc.mm     the VM: page frames in an mmap arena, descriptors, page
                    locks, the migration core, arena compaction

Beside them, above the pool: ``zsmalloc.protocheck`` (every interleaving of a
migration scenario), ``zsmalloc.stress`` (threads), ``zsmalloc.replay``
(allocation traces) and ``zsmalloc.workloads`` (sizes and page contents, a
leaf that anything may use).

Quick start::

    import zsmalloc
    with zsmalloc.Pool() as pool:
        h = pool.malloc(100)
        pool.write(h, b"x" * 100)
        assert pool.read(h) == b"x" * 100
        pool.free(h)
"""

import os as _os
from importlib.metadata import PackageNotFoundError as _NotFound
from importlib.metadata import version as _version
from typing import TYPE_CHECKING

from zsmalloc.errors import (
    CorruptionError,
    InvalidHandleError,
    InvalidSizeError,
    ObjectMappedError,
    OutOfFramesError,
    PageStateError,
    PoolClosedError,
    PoolFullError,
    WouldSleepError,
    ZoneError,
    ZsmallocError,
)
from zsmalloc.pool import (
    FULLNESS_LEGACY,
    FULLNESS_RATIO,
    RULE_MIN_WASTE,
    RULE_USED_PERCENTAGE,
    ClassSpec,
    ClassStats,
    PoolStats,
    huge_class_size,
    size_classes,
)

BACKENDS = ("engine", "model")
#: which implementation ``Pool`` and ``Memory`` are: "engine" or "model"
backend: str = _os.environ.get("ZSMALLOC_BACKEND", "engine")
if TYPE_CHECKING:  # one static type for both: they share the API (tests/test_backend.py)
    from zsmalloc.model import Memory, Pool
elif backend == "engine":
    from zsmalloc.engine import Memory, Pool
elif backend == "model":
    from zsmalloc.model import Memory, Pool
else:
    raise ImportError(f"ZSMALLOC_BACKEND must be one of {BACKENDS}, not {backend!r}")

from zsmalloc.store import Store  # noqa: E402  (it builds on Pool, chosen above)

try:
    __version__ = _version("zsmalloc")
except _NotFound:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BACKENDS",
    "FULLNESS_LEGACY",
    "FULLNESS_RATIO",
    "RULE_MIN_WASTE",
    "RULE_USED_PERCENTAGE",
    "ClassSpec",
    "ClassStats",
    "CorruptionError",
    "InvalidHandleError",
    "InvalidSizeError",
    "Memory",
    "ObjectMappedError",
    "OutOfFramesError",
    "PageStateError",
    "Pool",
    "PoolClosedError",
    "PoolFullError",
    "PoolStats",
    "Store",
    "WouldSleepError",
    "ZoneError",
    "ZsmallocError",
    "__version__",
    "backend",
    "huge_class_size",
    "size_classes",
]
