"""The Dask worker tier: a ``SpillBuffer`` with a compressed ``Store`` in front of the disk.

What it owns
------------
``TieredBuffer`` is a worker's ``data``: every key the worker holds, in one
of three places, oldest evicted first::

      Worker.data = TieredBuffer
    +----------------------------------------------------------+
    | fast: dict of live objects    (LRU, sizeof() <= target)  |
    +----------------------------------------------------------+
        | evict the oldest (or the memory monitor's evict()):
        v serialize_bytelist(compression=False), one buffer
    +----------------------------------------------------------+
    | compressed: Store, zstd in the pool  (LRU, pool pages    |
    |   <= compressed_target; compacted before demoting)       |
    +----------------------------------------------------------+
        | demote the oldest: its payload as stored, not recompressed
        v
    +----------------------------------------------------------+
    | disk: zict.File in the spill directory  (<= max_spill)   |
    +----------------------------------------------------------+

``_Tiers`` is the slow side (compressed, then disk) behind the
``zict.Buffer`` that ``SpillBuffer`` is; it owns the serialized form, the
per-key weights and the demotion from the Store to the disk.

Choices, measured on kernel-build pages (``zsmalloc.workloads``) in a numpy
array of 8 MiB:

- distributed's own spill serialization compresses each frame with lz4
  (3.9x, about 20 ms); serializing without compression and letting the Store
  compress with zstd gives 7.7x in about 11 ms.  Frames that distributed had
  already compressed would not compress again, so the tier serializes with
  ``compression=False`` and the Store compresses once.
- A read decompresses straight into a ``bytearray`` (``Store.get_into``):
  distributed then deserializes numpy frames in place (0.5 ms for 64 MiB)
  where ``bytes`` would be copied (about 190 ms for 64 MiB).
- A read does **not** promote the value back to ``fast`` (``SpillBuffer``
  does, by zict.Buffer's rule).  A spilled dask key is read by the tasks
  that depend on it and by peers that fetch it; promoting it makes room in
  ``fast`` by evicting another key, a serialization, a compression and
  perhaps a disk write per read.  Over a working set larger than RAM, each
  pass of a reduction over a persisted array reads the keys oldest first:
  with promotion every read evicts the key the next read wants, so every
  read misses and the whole working set is written again per pass.  Left
  where it is, a read from the Store is one decompression; while a task
  holds the object, a weak cache (as in ``SpillBuffer``) hands the same
  object to any other reader instead of a second copy.
- The disk is reached only from the Store: a value goes there as the Store
  holds it (``Store.get_compressed``: the zstd frame, copied out of the pool,
  neither decompressed nor compressed again; ``Store.decompress`` reads it
  back), so the disk sees fewer bytes
  than distributed's lz4 spill, for the cost of a copy.  When the disk is
  full (``max_spill``) or fails, the value stays in the Store, over its
  budget, and that is logged: compressed in RAM is still smaller than the
  object ``fast`` would have to keep.

What the worker's memory manager and dashboard read:

- ``fast`` and ``evict()`` (``SpillBuffer``'s), for eviction under memory
  pressure: ``evict()`` moves the oldest value of ``fast`` to the Store;
- ``spilled_total``: ``(memory, disk)``, where ``memory`` is the sizeof of
  the values not in ``fast`` less the pool pages the Store holds for them,
  and ``disk`` the bytes on disk.  The scheduler's "managed" memory is the
  worker's sizeof of every key less ``memory``: the objects in ``fast`` plus
  the Store's real pages; its "spilled" is what is on disk;
- ``cumulative_metrics`` with distributed's ``disk-write``/``disk-read``
  labels, and ``compress``/``decompress`` for the Store;
- ``slow`` (zict.Buffer's): the keys out of ``fast``, in the Store or on
  disk, which distributed's Prometheus metrics count as spilled tasks;
  ``compressed`` and ``disk`` tell the two apart.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Hashable, Iterator, Mapping, MutableMapping
from typing import Literal, NamedTuple, Protocol, cast

import zict
from dask.typing import Key
from distributed.metrics import context_meter
from distributed.protocol import deserialize_bytes, serialize_bytelist
from distributed.sizeof import safe_sizeof
from distributed.spill import AnyKeyFile, PickleError, SpillBuffer, SpilledSize
from distributed.utils import RateLimiterFilter

import zsmalloc

logger = logging.getLogger(__name__)
# as distributed.spill does: a full or failing disk is said once in a while, not per value
logger.addFilter(RateLimiterFilter("Spill file on disk reached capacity"))
logger.addFilter(RateLimiterFilter("Spill to disk failed"))

#: the Store's codecs (the disk copies are the Store's payloads)
COMPRESSIONS = ("zstd", "lz4", "none")
#: the Store is compacted before a demotion when its pages exceed its payloads by this share
COMPACT_SLACK = 0.25


class CompressedLayer(Protocol):
    """What the tier needs of its in-RAM compressed mapping (``zsmalloc.Store`` is one)."""

    def __setitem__(self, key: Key, value: bytes | bytearray | memoryview) -> None: ...
    def __delitem__(self, key: Key) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...

    def get_into(self, key: Key, buf: bytearray) -> int:
        """Write the value of ``key`` into ``buf``; return its length."""
        ...

    def get_compressed(self, key: Key) -> tuple[str, int, bytearray]:
        """``(kind, nbytes, payload)`` as ``zsmalloc.Store.get_compressed`` gives it."""
        ...

    def decompress(self, kind: str, nbytes: int, payload: bytes | bytearray | memoryview) -> bytearray:
        """The value of a payload ``get_compressed`` gave (once on disk), writable."""
        ...

    @property
    def memory_used(self) -> int:
        """Bytes of RAM the layer holds."""
        ...

    @property
    def compressed_nbytes(self) -> int:
        """Bytes of the compressed payloads it holds."""
        ...

    def compact(self) -> int:
        """Give back what fragmentation holds; the pages freed."""
        ...

    def close(self) -> None: ...


class _Weight(NamedTuple):
    sizeof: int  # distributed's sizeof() of the object
    nbytes: int  # its serialized length


class _Tiers(MutableMapping[Key, object]):
    """The slow side of the tier: the compressed Store, then the disk.

    A new key goes to the Store; the Store's oldest keys go to disk while
    its pages exceed ``compressed_target``.  Raises only ``PickleError`` (a
    value that does not serialize, which then stays where it was).
    """

    def __init__(
        self,
        spill_directory: str,
        compressed_target: int,
        max_spill: int | Literal[False],
        layer: CompressedLayer,
    ) -> None:
        self.layer = layer
        self._file = AnyKeyFile(spill_directory)
        #: the spill files by dask key (AnyKeyFile names a file for any key; zict.File types them str)
        self.disk = cast(MutableMapping[Key, bytes | bytearray | memoryview], self._file)
        self.compressed_target = compressed_target
        self.max_spill = max_spill
        self._lock = threading.RLock()
        #: keys in the Store, oldest first, and their weights
        self._in_layer: dict[Key, _Weight] = {}
        #: keys on disk: their weights, and the kind and length of their payloads there
        self._on_disk: dict[Key, tuple[_Weight, str, int]] = {}
        self.layer_sizeof = 0
        self.disk_total = SpilledSize(0, 0)

    # -- the mapping -----------------------------------------------------

    def __setitem__(self, key: Key, value: object) -> None:
        try:
            frames = serialize_bytelist(value, compression=False, on_error="raise")
        except Exception as e:
            raise PickleError(key) from e
        payload = b"".join(frames) if len(frames) != 1 else frames[0]
        weight = _Weight(safe_sizeof(value), len(payload))
        with self._lock:
            if key in self:
                del self[key]
            with context_meter.meter("compress", "seconds"):
                self.layer[key] = payload
            context_meter.digest_metric("compress", weight.nbytes, "bytes")
            self._in_layer[key] = weight
            self.layer_sizeof += weight.sizeof
            self._demote_over_budget()

    def __getitem__(self, key: Key) -> object:
        buf: bytearray | memoryview
        with self._lock:
            if key in self._in_layer:
                buf = bytearray(self._in_layer[key].nbytes)
                with context_meter.meter("decompress", "seconds"):
                    self.layer.get_into(key, buf)
                context_meter.digest_metric("decompress", len(buf), "bytes")
            else:
                weight, kind, _ = self._on_disk[key]
                with context_meter.meter("disk-read", "seconds"):
                    payload = self.disk[key]
                context_meter.digest_metric("disk-read", 1, "count")
                context_meter.digest_metric("disk-read", len(payload), "bytes")
                with context_meter.meter("decompress", "seconds"):
                    buf = self._decode(kind, weight.nbytes, payload)
        return deserialize_bytes(buf)

    def _decode(self, kind: str, nbytes: int, payload: bytes | bytearray | memoryview) -> bytearray:
        """The serialized value of a spill file, writable (distributed deserializes numpy frames in place)."""
        if kind == "raw" and isinstance(payload, bytearray):
            return payload
        return self.layer.decompress(kind, nbytes, payload)

    def __delitem__(self, key: Key) -> None:
        with self._lock:
            if key in self._in_layer:
                del self.layer[key]
                self.layer_sizeof -= self._in_layer.pop(key).sizeof
            else:
                weight, _, on_disk = self._on_disk.pop(key)
                del self.disk[key]
                self.disk_total -= SpilledSize(weight.sizeof, on_disk)

    def __contains__(self, key: object) -> bool:
        return key in self._in_layer or key in self._on_disk

    def __iter__(self) -> Iterator[Key]:
        with self._lock:
            return iter([*self._in_layer, *self._on_disk])

    def __len__(self) -> int:
        return len(self._in_layer) + len(self._on_disk)

    # -- the Store to the disk -------------------------------------------

    def _demote_over_budget(self) -> None:
        """Move the Store's oldest keys to disk until its pages fit ``compressed_target``."""
        if self.layer.memory_used <= self.compressed_target:
            return
        if self.layer.memory_used > (1 + COMPACT_SLACK) * self.layer.compressed_nbytes:
            self.layer.compact()
        while self._in_layer and self.layer.memory_used > self.compressed_target:
            if not self._demote(next(iter(self._in_layer))):
                return

    def _demote(self, key: Key) -> bool:
        """Write ``key``'s value from the Store to disk; False (logged) if the disk cannot take it."""
        weight = self._in_layer[key]
        kind, _, frame = self.layer.get_compressed(key)
        if self.max_spill is not False and self.disk_total.disk + len(frame) > self.max_spill:
            logger.warning("Spill file on disk reached capacity; keeping data compressed in memory")
            return False
        try:
            with context_meter.meter("disk-write", "seconds"):
                self.disk[key] = frame
        except OSError:
            logger.error("Spill to disk failed; keeping data compressed in memory", exc_info=True)
            return False
        context_meter.digest_metric("disk-write", 1, "count")
        context_meter.digest_metric("disk-write", len(frame), "bytes")
        del self.layer[key]
        del self._in_layer[key]
        self.layer_sizeof -= weight.sizeof
        self._on_disk[key] = (weight, kind, len(frame))
        self.disk_total += SpilledSize(weight.sizeof, len(frame))
        return True

    def close(self) -> None:
        """Close the Store and the spill files."""
        self.layer.close()
        self._file.close()


class _TierView(Mapping[Key, object]):
    """A read-only view of the keys one tier holds (for inspection, as ``SpillBuffer.disk`` is)."""

    def __init__(self, tiers: _Tiers, keys: Mapping[Key, object]) -> None:
        self._tiers = tiers
        self._keys = keys

    def __getitem__(self, key: Key) -> object:
        if key not in self._keys:
            raise KeyError(key)
        return self._tiers[key]

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys


class TieredBuffer(SpillBuffer):
    """A worker's data: live objects, then a compressed ``zsmalloc.Store``, then disk.

    ``target`` is the sizeof() bytes ``fast`` holds before its oldest values
    go to the Store (``SpillBuffer``'s ``target``); ``compressed_target`` the
    bytes of pool pages the Store holds before its oldest values go to disk
    under ``spill_directory``; ``max_spill`` caps the disk (False: no cap).
    ``compression`` is the Store's codec ("zstd", "lz4" or "none");
    ``layer``, instead, is any :class:`CompressedLayer` to use in its place
    (the benchmark's ``zict.Func(lz4)`` peer).  ``pool`` is the zsmalloc pool
    for the Store (by default its own).

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     buf = TieredBuffer(d, target=1000, compressed_target=1 << 20)
        ...     buf["small"] = b"a" * 100
        ...     buf["big"] = bytes(range(256)) * 40  # heavier than target: straight to the Store
        ...     (list(buf.fast), list(buf.compressed), buf["big"][:3], len(buf.disk))
        (['small'], ['big'], b'\\x00\\x01\\x02', 0)
    """

    def __init__(
        self,
        spill_directory: str,
        target: int,
        compressed_target: int,
        max_spill: int | Literal[False] = False,
        compression: str = "zstd",
        layer: CompressedLayer | None = None,
        pool: zsmalloc.Pool | None = None,
    ) -> None:
        for name, n in (("target", target), ("compressed_target", compressed_target)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"{name} must be a number of bytes >= 0, not {n!r}")
        if max_spill is not False and (isinstance(max_spill, bool) or not isinstance(max_spill, int)):
            raise ValueError(f"max_spill must be a number of bytes or False, not {max_spill!r}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
        if layer is None:
            layer = zsmalloc.Store(compression, pool=pool)
        self.tiers = _Tiers(spill_directory, compressed_target, max_spill, layer)
        # SpillBuffer.__init__ would build its own slow side: set up its state here instead
        zict.Buffer.__init__(
            self,
            fast={},
            slow=zict.Cache(self.tiers, zict.WeakValueMapping()),
            n=target,
            weight=_in_memory_weight,
        )
        self.logged_pickle_errors = set()
        self.cumulative_metrics = defaultdict(float)

    def slow_to_fast(self, key: Key) -> object:
        """A value out of ``fast``, read where it is: not moved back (see the module's header)."""
        with self.unlock():
            return self.slow[key]

    @property
    def compressed(self) -> Mapping[Key, object]:
        """The key/value pairs in the compressed Store (inspection only)."""
        return _TierView(self.tiers, self.tiers._in_layer)

    @property
    def disk(self) -> Mapping[Key, object]:
        """The key/value pairs on disk (inspection only)."""
        return _TierView(self.tiers, self.tiers._on_disk)

    @property
    def spilled_total(self) -> SpilledSize:
        """``(memory, disk)`` as the scheduler reads it: see the module's header.

        ``memory`` is the sizeof() of every value out of ``fast`` less the
        Store's pages, so that managed memory counts the compressed tier at
        what it costs in RAM; ``disk`` is the bytes on disk.
        """
        t = self.tiers
        saved_in_ram = max(0, t.layer_sizeof - t.layer.memory_used)
        return SpilledSize(t.disk_total.memory + saved_in_ram, t.disk_total.disk)

    @property
    def compressed_memory(self) -> int:
        """Bytes of RAM the compressed tier holds (the Store's pool pages)."""
        return self.tiers.layer.memory_used

    @property
    def compressed_sizeof(self) -> int:
        """sizeof() of the values the compressed tier holds: the data it keeps in RAM."""
        return self.tiers.layer_sizeof

    def close(self) -> None:
        """Release the Store's pool and the spill files."""
        tiers = getattr(self, "tiers", None)  # None when __init__ refused its arguments
        if tiers is not None:
            tiers.close()


def _in_memory_weight(key: Hashable, value: object) -> int:
    return cast(int, safe_sizeof(value))
