"""zsmalloc: the Linux kernel's compressed-memory allocator, in Python, on real memory.

Layers, each a package, data flowing down (nothing below imports above)::

    zsmalloc.cli    command line (demo, serve, stats, bench, replay, pool-demo, classes,
                    stress, protocheck)
    zsmalloc.nbd    the NBD server exporting a ZramDevice
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

from zsmalloc.errors import (
    CorruptionError,
    InvalidHandleError,
    InvalidSizeError,
    OutOfFramesError,
    PageStateError,
    PoolClosedError,
    PoolFullError,
    ZsmallocError,
)
from zsmalloc.mm import Memory
from zsmalloc.pool import (
    RULE_MIN_WASTE,
    RULE_USED_PERCENTAGE,
    ClassSpec,
    ClassStats,
    Pool,
    PoolStats,
    huge_class_size,
    size_classes,
)

__version__ = "0.1.0"

__all__ = [
    "RULE_MIN_WASTE",
    "RULE_USED_PERCENTAGE",
    "ClassSpec",
    "ClassStats",
    "CorruptionError",
    "InvalidHandleError",
    "InvalidSizeError",
    "Memory",
    "OutOfFramesError",
    "PageStateError",
    "Pool",
    "PoolClosedError",
    "PoolFullError",
    "PoolStats",
    "ZsmallocError",
    "__version__",
    "huge_class_size",
    "size_classes",
]
