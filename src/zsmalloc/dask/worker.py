"""Putting the tier on workers: ``worker_data`` for ``data=``, and a ``Worker`` class for ``dask worker``.

What it owns
------------
How a worker's memory limit is split between the tiers, and the two ways
distributed lets a worker be given its data mapping::

    memory_limit ---+-- fast_fraction       -> TieredBuffer.target       (live objects)
                    +-- compressed_fraction -> TieredBuffer.compressed_target (Store pages)
                    +-- the rest: the interpreter, running tasks, and the memory
                        monitor's margin (distributed.worker.memory.target/spill)

    LocalCluster(..., data=worker_data(limit))    Worker(..., data=worker_data(limit))
    dask worker --worker-class zsmalloc.dask.Worker --memory-limit 4GiB SCHEDULER

``worker_data`` returns distributed's ``(callable, kwargs)`` form: every
worker calls it with its own ``worker_local_directory``, so each spills into
its own directory.  ``Worker`` computes the same from its own
``memory_limit`` and ``nthreads``; its fractions and codec come from the
dask configuration (``zsmalloc.dask.fast-fraction``,
``zsmalloc.dask.compressed-fraction``, ``zsmalloc.dask.compression``; e.g.
``DASK_ZSMALLOC__DASK__COMPRESSION=lz4`` in the environment).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import dask.config
import distributed
from dask.utils import parse_bytes
from distributed.worker_memory import parse_memory_limit

from zsmalloc.dask.tier import COMPRESSIONS, TieredBuffer

logger = logging.getLogger(__name__)

FAST_FRACTION = 0.3
COMPRESSED_FRACTION = 0.25


def _fraction(name: str, x: float) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not 0 < x < 1:
        raise ValueError(f"{name} must be a fraction of the memory limit in (0, 1), not {x!r}")
    return float(x)


def make_tiered_buffer(
    worker_local_directory: str,
    target: int,
    compressed_target: int,
    max_spill: int | Literal[False] = False,
    compression: str = "zstd",
) -> TieredBuffer:
    """A ``TieredBuffer`` spilling into ``<worker_local_directory>/storage`` (as ``SpillBuffer`` does)."""
    return TieredBuffer(
        os.path.join(worker_local_directory, "storage"),
        target=target,
        compressed_target=compressed_target,
        max_spill=max_spill,
        compression=compression,
    )


def worker_data(
    memory_limit: int | str,
    fast_fraction: float = FAST_FRACTION,
    compressed_fraction: float = COMPRESSED_FRACTION,
    compression: str = "zstd",
    max_spill: int | str | Literal[False] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The ``data=`` argument of ``Worker``/``LocalCluster`` that gives each worker a ``TieredBuffer``.

    ``memory_limit`` is one worker's limit (bytes or a string such as
    "2 GiB"); ``fast_fraction`` of it is for live objects and
    ``compressed_fraction`` for the Store's pages (together below
    ``distributed.worker.memory.target``, 0.6 by default, so that the memory
    monitor has live objects left to evict).  ``max_spill`` caps the disk
    (None: ``distributed.worker.memory.max-spill``).

        >>> func, kwargs = worker_data("1 GiB")
        >>> func.__name__, kwargs["target"], kwargs["compressed_target"]
        ('make_tiered_buffer', 322122547, 268435456)
    """
    limit = parse_bytes(memory_limit) if isinstance(memory_limit, str) else memory_limit
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"memory_limit must be a positive number of bytes, not {memory_limit!r}")
    fast = _fraction("fast_fraction", fast_fraction)
    compressed = _fraction("compressed_fraction", compressed_fraction)
    if fast + compressed >= 1:
        raise ValueError(f"fast_fraction + compressed_fraction must be below 1, not {fast + compressed}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
    if max_spill is None:
        max_spill = dask.config.get("distributed.worker.memory.max-spill")
    spill_cap: int | Literal[False] = False if max_spill is False else parse_bytes(max_spill)
    kwargs = {
        "target": int(limit * fast),
        "compressed_target": int(limit * compressed),
        "max_spill": spill_cap,
        "compression": compression,
    }
    return make_tiered_buffer, kwargs


class Worker(distributed.Worker):
    """A ``distributed.Worker`` whose data is a ``TieredBuffer`` sized by its own memory limit.

    For ``dask worker --worker-class zsmalloc.dask.Worker`` (with or without
    a nanny).  A worker given ``data=`` explicitly keeps it; one without a
    memory limit (``--memory-limit 0``) has nothing to size the tiers by and
    keeps distributed's default.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("data") is None:
            nthreads = kwargs.get("nthreads") or os.cpu_count() or 1
            limit = parse_memory_limit(kwargs.get("memory_limit", "auto"), nthreads, logger=logger)
            if limit:
                kwargs["data"] = worker_data(
                    limit,
                    fast_fraction=dask.config.get("zsmalloc.dask.fast-fraction", FAST_FRACTION),
                    compressed_fraction=dask.config.get(
                        "zsmalloc.dask.compressed-fraction", COMPRESSED_FRACTION
                    ),
                    compression=dask.config.get("zsmalloc.dask.compression", "zstd"),
                )
        super().__init__(*args, **kwargs)
