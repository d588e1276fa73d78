"""``zsmalloc.dask``: a compressed memory tier for Dask workers.

What it owns
------------
The worker side of Dask's memory: a mapping that keeps more of a worker's
data in RAM, compressed in a ``zsmalloc.Store``, before anything goes to
disk; and the ways to give it to workers::

      Worker.data = TieredBuffer  (a distributed SpillBuffer)
    +---------------------------+
    | fast: live objects        |  sizeof() <= target
    +---------------------------+
                | evict: serialize once
    +---------------------------+
    | compressed: Store (zstd)  |  pool pages <= compressed_target
    +---------------------------+
                | demote: zstd frame
    +---------------------------+
    | disk: the spill directory |  <= max_spill
    +---------------------------+

- :mod:`zsmalloc.dask.tier`: :class:`TieredBuffer`, the mapping;
- :mod:`zsmalloc.dask.worker`: :func:`worker_data` for ``data=`` of
  ``distributed.Worker`` and ``LocalCluster``, and :class:`Worker` for
  ``dask worker --worker-class zsmalloc.dask.Worker``.

It needs the ``dask`` extra (``pip install 'zsmalloc[dask]'``); nothing
else in the package imports it.
"""

from zsmalloc.dask.tier import CompressedLayer, TieredBuffer
from zsmalloc.dask.worker import Worker, make_tiered_buffer, worker_data

__all__ = ["CompressedLayer", "TieredBuffer", "Worker", "make_tiered_buffer", "worker_data"]
