"""``zsmalloc.Store``: a compressed mapping of bytes, on a pool.

What it owns
------------
An index (key -> entry) and the pool objects that hold the values.  A value
is compressed (lz4 by default, zstd, or none), then split into pool objects
(``_pieces``)::

    value (any bytes-like) --compress--> payload --split--> [4096][4096] ... [2040][504][56][24]
                                                              h0    h1        the tail's pieces

    lz4, a value of more than LZ4_BLOCK (256 KiB): its 256 KiB blocks, each
    compressed with the 64 KiB before it as its dictionary, after its length
    [u32 LE len][block 0][len][block 1] ... [len][last block]

Full 4096-byte chunks land in the pool's huge class, a page each and no
waste.  A payload of one chunk or less is one object of its size; the tail
of a longer one is cut into pieces of the classes that fill a page exactly
(2048, 1024, ..., 32 bytes, less the object's 8-byte handle header), the
last one padded: a tail in a class of its own leaves that class a part-used
zspage per few values (a thousand 64 KiB values held 9.4% more pages than
payload that way, 0.5% with the pieces).  As zram does with pages: a value
whose bytes are all equal (``same``) takes no pool object, and one that
does not compress (its payload would be no smaller) is kept as it is
(``raw``), so reading it decompresses nothing.  The blocks of a large lz4
value let the engine write its payload to its chunks as it compresses and
read it back a block at a time, with no buffer the size of the value (the
dictionary lets matches reach across the seams as far as in one block:
0.01% more payload than one block on kernel-build pages, where independent
blocks cost 0.95%).

Two implementations, as ``heapq`` and ``_heapq`` are, chosen by the pool:
``Store`` itself is the readable one (the model): a dict of ``_Entry``
tuples, the codecs of python-lz4 and python-zstandard, one pool call per
chunk.  On an engine pool ``Store(...)`` makes an ``EngineStore``, which
subclasses ``_engine.StoreIndex``
(``engine/python/src/store.rs``), which keeps the index in Rust (a table
keyed by the Python keys, each value's entry 48 bytes: no Python object
per value besides its key) and does each value's work in one call: a set
or a get is a single call from Python into the engine, and
``set_many``/``get_many`` cross once for a whole batch with the GIL
released.  The payloads are the same formats either way.

Locking (both): one lock guards the index.  A ``set`` compresses and writes
the new chunks before it takes the lock, swaps the entry under it, and frees
the old chunks after it; a ``get`` reads its chunks under the lock, so no
``set`` or ``del`` frees them meanwhile.  The pool is thread-safe by itself.

    >>> from zsmalloc import Store
    >>> with Store() as s:
    ...     s["page"] = b"zsmalloc " * 1000
    ...     s["zeros"] = bytes(100_000)
    ...     (len(s), s["page"][:8], s.nbytes, s.compressed_nbytes < 1000)
    (2, b'zsmalloc', 109000, True)
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, NamedTuple, TypeVar

import lz4.block
import zstandard

import zsmalloc
from zsmalloc import _engine
from zsmalloc.errors import PoolClosedError
from zsmalloc.pool.size_class import ZS_HANDLE_SIZE

K = TypeVar("K", bound=Hashable)

CHUNK = 4096  # the largest pool object
#: the tail's pieces, largest first: the classes of 2048, 1024, ..., 32 bytes less the handle header
TAIL_PIECES = tuple((2048 >> i) - ZS_HANDLE_SIZE for i in range(7))
COMPRESSIONS = ("lz4", "zstd", "none")
ZSTD_LEVEL = 3
#: an lz4 value longer than this is compressed in blocks of this size
LZ4_BLOCK = 256 << 10
#: each block after the first is compressed with the bytes this far before it as its dictionary
LZ4_DICT = 64 << 10


class _Entry(NamedTuple):
    kind: str  # "same", "raw", or the codec of the payload
    nbytes: int  # the value's length
    stored: int  # the payload's length (0 for "same")
    handles: tuple[int, ...]
    fill: int  # the byte of a "same" value


class _Codecs(threading.local):
    """Per thread: the zstd contexts (a context serves one thread at a time), and the
    buffer a payload of several chunks is gathered in before it is decompressed."""

    def __init__(self) -> None:
        self.zc = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self.zd = zstandard.ZstdDecompressor()
        self.gather = bytearray()

    def gather_buffer(self, n: int) -> memoryview:
        """``n`` bytes of this thread's gathering buffer (grown, never shrunk below its peak)."""
        if len(self.gather) < n:
            self.gather = bytearray(n)
        return memoryview(self.gather)[:n]


def _pieces(stored: int) -> Iterator[tuple[int, int]]:
    """The objects a payload of ``stored`` bytes is split into: ``(size, used)`` each, in order
    (``used`` is less than ``size`` only in the padded last piece of a tail)."""
    left = stored
    while left >= CHUNK:
        yield CHUNK, CHUNK
        left -= CHUNK
    if left and stored <= CHUNK:
        yield left, left
        return
    while left:
        size = next((p for p in TAIL_PIECES if p <= left), TAIL_PIECES[-1])
        yield size, min(size, left)
        left -= min(size, left)


def _lz4_compress(mv: memoryview) -> bytes:
    """lz4's payload of a value: one block (no size prefix), or for more than LZ4_BLOCK bytes
    each block of LZ4_BLOCK compressed with the LZ4_DICT bytes before as its dictionary,
    after its length."""
    if len(mv) <= LZ4_BLOCK:
        return lz4.block.compress(mv, store_size=False)
    parts = []
    for at in range(0, len(mv), LZ4_BLOCK):
        before = mv[at - LZ4_DICT : at] if at else None
        block = lz4.block.compress(mv[at : at + LZ4_BLOCK], store_size=False, dict=before)
        parts += [len(block).to_bytes(4, "little"), block]
    return b"".join(parts)


def _lz4_decompress(payload: bytes | bytearray | memoryview, out: memoryview) -> None:
    """Decompress lz4's ``payload`` into ``out`` (its value's length); ValueError if it does not fit."""
    nbytes = len(out)
    src = memoryview(payload)
    try:
        if nbytes <= LZ4_BLOCK:
            out[:] = lz4.block.decompress(src, uncompressed_size=nbytes)
            return
        at = 0
        for start in range(0, nbytes, LZ4_BLOCK):
            n = int.from_bytes(src[at : at + 4], "little")
            want = min(LZ4_BLOCK, nbytes - start)
            if at + 4 + n > len(src):
                raise ValueError(f"an lz4 payload of {len(src)} bytes is shorter than its blocks say")
            before = out[start - LZ4_DICT : start] if start else None
            block = src[at + 4 : at + 4 + n]
            out[start : start + want] = lz4.block.decompress(block, uncompressed_size=want, dict=before)
            at += 4 + n
    except lz4.block.LZ4BlockError as e:
        raise ValueError(f"an lz4 payload does not decompress to {nbytes} bytes: {e}") from e
    if at != len(src):
        raise ValueError(f"an lz4 payload has {len(src) - at} bytes past its blocks")


def decompress(kind: str, nbytes: int, payload: bytes | bytearray | memoryview) -> bytearray:
    """The value that ``(kind, nbytes, payload)`` of ``Store.get_compressed`` stands for, writable.

    >>> with Store() as s:
    ...     s["v"] = b"blocks " * 50_000
    ...     decompress(*s.get_compressed("v")) == s["v"]
    True
    """
    if kind == "same":
        return bytearray(payload) * nbytes
    if kind == "raw":
        return bytearray(payload)
    out = bytearray(nbytes)
    view = memoryview(out)
    if kind == "lz4":
        _lz4_decompress(payload, view)
        return out
    got = 0
    with zstandard.ZstdDecompressor().stream_reader(payload) as reader:
        while got < nbytes:
            n = reader.readinto(view[got:])
            if not n:
                raise ValueError(f"a zstd payload holds {got} bytes of the {nbytes} it should")
            got += n
    return out


def _same_byte(mv: memoryview) -> int | None:
    """The byte every position of ``mv`` holds, or None."""
    n = len(mv)
    if not n or mv[0] != mv[n - 1] or mv[0] != mv[n // 2]:
        return None
    return mv[0] if mv == bytes((mv[0],)) * n else None


class Store(MutableMapping[K, bytes]):
    """A ``MutableMapping`` of hashable keys to bytes, compressed, in a zsmalloc pool.

    ``compression`` is "lz4" (the default), "zstd" or "none".  ``pool`` is the
    pool to keep the values in (by default a new one, closed with the store).
    Values may be any bytes-like object of any size; ``get`` returns
    ``bytes``.  The store is thread-safe, picklable (the pickle carries the
    contents, decompressed) and a context manager.

    This class is the model, in Python (a dict of ``_Entry``); on an engine
    pool ``Store(...)`` makes an ``EngineStore``, whose index and hot path
    are the engine's.
    """

    compression: str
    pool: zsmalloc.Pool
    _own_pool: bool
    # the model's own state (an EngineStore keeps its index in the engine)
    _index: dict[K, _Entry]
    _lock: threading.Lock
    _codecs: _Codecs
    _closed: bool
    _nbytes: int
    _stored: int

    def __new__(cls, compression: str = "lz4", pool: zsmalloc.Pool | None = None) -> Store[K]:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
        own = pool is None
        pool = zsmalloc.Pool(name="store") if pool is None else pool
        if cls is Store and isinstance(pool, _engine.Pool):
            cls = EngineStore
        try:
            self = cls._make(pool, compression)
        except BaseException:
            if own:
                pool.close()
            raise
        self.compression = compression
        self.pool = pool
        self._own_pool = own
        return self

    @classmethod
    def _make(cls, pool: zsmalloc.Pool, compression: str) -> Store[K]:
        """A new, empty store of this class on ``pool``."""
        self: Store[K] = object.__new__(cls)
        self._index = {}
        self._lock = threading.Lock()
        self._codecs = _Codecs()
        self._closed = False
        self._nbytes = 0
        self._stored = 0
        return self

    # ------------------------------------------------------------------
    # values in and out of the pool

    def _encode(self, value: object) -> tuple[str, memoryview, int, int]:
        """(kind, payload, fill byte, length) of a bytes-like ``value``; TypeError for anything else."""
        mv = memoryview(value).cast("B")  # type: ignore[arg-type]
        fill = _same_byte(mv)
        if fill is not None:
            return "same", mv[:0], fill, len(mv)
        if self.compression == "lz4":
            packed = _lz4_compress(mv)
        elif self.compression == "zstd":
            packed = self._codecs.zc.compress(mv)
        else:
            return "raw", mv, 0, len(mv)
        if len(packed) >= len(mv):
            return "raw", mv, 0, len(mv)
        return self.compression, memoryview(packed), 0, len(mv)

    def _put(self, value: object) -> _Entry:
        """The entry of ``value`` with its chunks written; nothing left behind if it fails."""
        kind, payload, fill, nbytes = self._encode(value)
        handles: list[int] = []
        at = 0
        try:
            for size, used in _pieces(len(payload)):
                h = self.pool.malloc(size)
                handles.append(h)
                self.pool.write(h, payload[at : at + used])
                at += used
        except BaseException:
            self._free(handles)
            raise
        return _Entry(kind, nbytes, len(payload), tuple(handles), fill)

    def _free(self, handles: Iterable[int]) -> None:
        for h in handles:
            self.pool.free(h)

    def _payload(self, e: _Entry) -> bytes | memoryview:
        """The entry's objects, joined (caller holds the lock; a view valid until the next call)."""
        if len(e.handles) == 1:
            return self.pool.read(e.handles[0])
        out = self._codecs.gather_buffer(e.stored)
        self._read_chunks(e, out)
        return out

    def _read_chunks(self, e: _Entry, out: memoryview) -> None:
        """Copy the entry's objects, in order, into ``out`` (caller holds the lock)."""
        at = 0
        for h, (_, used) in zip(e.handles, _pieces(e.stored), strict=True):
            self.pool.read_into(h, out[at : at + used])
            at += used

    def _decode(self, e: _Entry) -> bytes:
        """The value of ``e`` (caller holds the lock)."""
        if e.kind == "same":
            return bytes((e.fill,)) * e.nbytes
        payload = self._payload(e)
        if e.kind == "raw":
            return bytes(payload)
        if e.kind == "lz4":
            out = bytearray(e.nbytes)
            _lz4_decompress(payload, memoryview(out))
            return bytes(out)
        return self._codecs.zd.decompress(payload, max_output_size=e.nbytes)

    def _account(self, e: _Entry, sign: int) -> None:
        self._nbytes += sign * e.nbytes
        self._stored += sign * e.stored

    # ------------------------------------------------------------------
    # the mapping protocol

    def __setitem__(self, key: K, value: bytes | bytearray | memoryview) -> None:
        self._check_open()
        hash(key)  # an unhashable key fails before any work
        entry = self._put(value)
        with self._lock:
            if self._closed:
                self._free(entry.handles)
                raise PoolClosedError("the store is closed")
            old = self._index.get(key)
            self._index[key] = entry
            self._account(entry, +1)
            if old is not None:
                self._account(old, -1)
        if old is not None:
            self._free(old.handles)

    def __getitem__(self, key: K) -> bytes:
        self._check_open()
        with self._lock:
            return self._decode(self._index[key])

    def __delitem__(self, key: K) -> None:
        self._check_open()
        with self._lock:
            entry = self._index.pop(key)
            self._account(entry, -1)
        self._free(entry.handles)

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._index
        except TypeError:  # unhashable: not a key of ours
            return False

    def __iter__(self) -> Iterator[K]:
        with self._lock:
            keys = list(self._index)
        return iter(keys)

    def __len__(self) -> int:
        return len(self._index)

    def clear(self) -> None:
        self._check_open()
        with self._lock:
            entries = list(self._index.values())
            self._index.clear()
            self._nbytes = self._stored = 0
        for e in entries:
            self._free(e.handles)

    # ------------------------------------------------------------------
    # beyond the mapping

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has run."""
        return self._closed

    @property
    def nbytes(self) -> int:
        """Bytes of the values stored, as given."""
        return self._nbytes

    @property
    def compressed_nbytes(self) -> int:
        """Bytes of their payloads in the pool (a same-filled value has none)."""
        return self._stored

    def get_into(self, key: K, buf: Any) -> int:
        """Write the value of ``key`` into the writable buffer ``buf``; return its length.

        ``buf`` must hold at least the value.  A value kept raw goes straight
        from the pool into ``buf``; a compressed one is decompressed into it.
        """
        self._check_open()
        out = memoryview(buf).cast("B")
        with self._lock:
            e = self._index[key]
            if len(out) < e.nbytes:
                raise ValueError(f"a buffer of {len(out)} bytes cannot hold the {e.nbytes} bytes of {key!r}")
            if e.kind == "same":
                out[: e.nbytes] = bytes((e.fill,)) * e.nbytes
            elif e.kind == "raw":
                self._read_chunks(e, out)
            else:
                out[: e.nbytes] = self._decode(e)
            return e.nbytes

    def get_compressed(self, key: K) -> tuple[str, int, bytearray]:
        """How the value of ``key`` is stored: ``(kind, nbytes, payload)``, the payload copied out.

        ``kind`` is "lz4" (a block without a size prefix, or the blocks of a
        value of more than ``LZ4_BLOCK`` bytes: see the module's header) or
        "zstd" (a standard frame), whose payload decompresses to the value's
        ``nbytes`` bytes (``zsmalloc.store.decompress`` does it); "raw",
        whose payload is the value; or "same", whose payload is the one byte
        the value repeats ``nbytes`` times.  For moving a
        value elsewhere (to disk) without decompressing and compressing it
        again.

            >>> with Store("zstd") as s:
            ...     s["a"], s["z"] = b"ab" * 500, bytes(10)
            ...     kind, n, payload = s.get_compressed("a")
            ...     (kind, n, len(payload) < 100, s.get_compressed("z"))
            ('zstd', 1000, True, ('same', 10, bytearray(b'\\x00')))
        """
        self._check_open()
        with self._lock:
            e = self._index[key]
            if e.kind == "same":
                return "same", e.nbytes, bytearray((e.fill,))
            out = bytearray(e.stored)
            self._read_chunks(e, memoryview(out))
            return e.kind, e.nbytes, out

    @staticmethod
    def decompress(kind: str, nbytes: int, payload: bytes | bytearray | memoryview) -> bytearray:
        """The value of ``(kind, nbytes, payload)`` as ``get_compressed`` gave it
        (``zsmalloc.store.decompress``)."""
        return decompress(kind, nbytes, payload)

    def set_many(self, items: Mapping[K, bytes] | Iterable[tuple[K, bytes]]) -> None:
        """Store every (key, value) of ``items``, as ``update`` does.

        Every value is stored before any key changes: if one fails, none is.
        On an engine pool the values cross into the engine in one call, with
        the GIL released for all of them.
        """
        pairs = _pairs(items)
        self._check_open()
        for key, _ in pairs:
            hash(key)  # an unhashable key fails before any work
        entries: list[_Entry] = []
        try:
            for _, value in pairs:
                entries.append(self._put(value))
        except BaseException:
            for e in entries:
                self._free(e.handles)
            raise
        olds = []
        with self._lock:
            for (key, _), entry in zip(pairs, entries, strict=True):
                old = self._index.get(key)
                self._index[key] = entry
                self._account(entry, +1)
                if old is not None:
                    self._account(old, -1)
                    olds.append(old)
        for old in olds:
            self._free(old.handles)

    def get_many(self, keys: Iterable[K]) -> list[bytes]:
        """The values of ``keys``, in order (KeyError for a missing one).

        On an engine pool they come out of the engine in one call, the GIL
        released for all of them.
        """
        return [self[key] for key in keys]

    def _items(self) -> list[tuple[K, bytes]]:
        """Every (key, value), read under one lock."""
        with self._lock:
            return [(k, self._decode(e)) for k, e in self._index.items()]

    def _close(self) -> None:
        """Refuse further use; free every value unless the pool is closed."""
        with self._lock:
            self._closed = True
            entries = list(self._index.values())
            self._index.clear()
            self._nbytes = self._stored = 0
        if not self._own_pool:  # a shared pool keeps going: give its objects back (an own one is closed)
            for e in entries:
                self._free(e.handles)

    def _check_open(self) -> None:
        if self.closed:
            raise PoolClosedError("the store is closed")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self)} values, {self.nbytes:,} bytes"
        return f"<{type(self).__name__} {self.compression}: {state}>"

    @property
    def memory_used(self) -> int:
        """Bytes of the pool's pages."""
        return self.pool.total_pages * 4096

    def compact(self) -> int:
        """Compact the pool (objects move; the handles stay): the pages freed."""
        self._check_open()
        return self.pool.compact()

    def close(self) -> None:
        """Free every value; a store made with its own pool closes it (and frees nothing one by one)."""
        if self._own_pool:
            self.pool.close()
        self._close()

    def __enter__(self) -> Store[K]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.compression, self._items()))


def _pairs(items: Mapping[K, bytes] | Iterable[tuple[K, bytes]]) -> list[tuple[K, bytes]]:
    return list(items.items() if isinstance(items, Mapping) else items)


class EngineStore(_engine.StoreIndex, Store[K]):
    """A Store on an engine pool: the index and every value's work in the engine.

    The mapping's methods, ``get_into``, ``get_compressed``, ``clear``,
    ``close``'s work and the statistics are ``_engine.StoreIndex``'s own
    (``engine/python/src/store.rs``), found before ``Store``'s in the MRO;
    none of ``Store``'s state (``_index``, ``_lock``, ...) exists here.
    """

    @classmethod
    def _make(cls, pool: zsmalloc.Pool, compression: str) -> Store[K]:
        assert isinstance(pool, _engine.Pool)  # Store.__new__ chose this class for it
        return _engine.StoreIndex.__new__(cls, pool, compression)

    def set_many(self, items: Mapping[K, bytes] | Iterable[tuple[K, bytes]]) -> None:
        pairs = _pairs(items)
        self._set_many([k for k, _ in pairs], [v for _, v in pairs])

    def get_many(self, keys: Iterable[K]) -> list[bytes]:
        return self._get_many(list(keys))

    def compact(self) -> int:
        freed = super().compact()
        self._compact_index()  # the slots of deleted keys, and spare room
        return freed


def _rebuild(compression: str, items: list[tuple[Hashable, bytes]]) -> Store[Hashable]:
    store: Store[Hashable] = Store(compression)
    store.set_many(items)
    return store
