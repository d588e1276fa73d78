"""ZramDevice: a compressed RAM block store on a zsmalloc pool (drivers/block/zram/zram_drv.c).

A device of ``disksize`` bytes is an array of 4 KiB slots.  A slot holds
nothing (reads as zeros), a fill word (same-filled page), a pool handle (a
compressed page, or a whole page when it does not compress: huge), or the
number of a block in the backing file (written back).

The slot table
--------------
The kernel's ``zram->table[]`` is an array of ``struct zram_table_entry``
(a handle/element word and a flags word that also packs the object size and
the lock bit).  Here it is three compact arrays indexed by page number, 11
bytes a slot, plus striped slot locks::

    index   _handle array('Q')   _size array('H')  _flags bytearray
           +--------------------+ +------+          +---+---+---+---+---+----+
       0   | 0                  | |    0 |          |   |   |   |   |   |    |  never written / discarded
       1   | 0x10000031e        | |  642 |          |   |   |   |   |   | 0  |  lz4 object in the pool
       2   | 0x0000000000000000 | |    0 |          | S |   |   |   |   |    |  same-filled: the fill word
       3   | 0x10000047c        | | 4096 |          |   |   | H | I |   | 0  |  huge (stored whole), idle
       4   | 17                 | |    0 |          |   | W |   |   |   |    |  written back: block 17
       5   | 0x2000004c2        | | 1210 |          |   |   |   |   |   | 1  |  recompressed (algorithm 1)
           +--------------------+ +------+          +---+---+---+---+---+----+
                                                      0   1   2   3   4  5-6   (bit)
    flag bits: 0 SAME, 1 WB (written back), 2 HUGE, 3 IDLE, 4 INCOMPRESSIBLE,
               5-6 the priority of the algorithm that compressed the page (0: primary)

    _locks[index & (stripes - 1)]     zram_slot_lock: one lock per stripe of slots
    _st_*[index & (stripes - 1)]      per-stripe counters, changed under that same lock

A slot is allocated when its handle word or its flags are non-zero (a pool
handle is never 0; a same-filled or written-back slot has its flag set).

The write path (``write_page``, the kernel's zram_write_page)::

    page (4096 bytes)
      |
      +-- one 8-byte word repeated? (page_same_filled) --yes--> lock slot, free the old
      |                                                         contents, record the word,
      |                                                         flags = SAME           (no pool memory)
      no
      |
    compress (algorithm priority 0)
      |
      +-- compressed size >= pool.huge_class_size?  --yes--> store the page itself,
      |                                                      4096 bytes, flags = HUGE
      |
    handle = pool.malloc(size)        PoolFullError (mem_limit reached) -> ZramFullError,
    pool.write(handle, bytes)         failed_writes + 1; the slot keeps its old contents
    update mem_used_max
      |
    lock slot -> zram_free_page(old contents) -> handle, size, flags -> counters -> unlock

Compression, allocation and the copy run before the slot lock is taken, as
in the kernel; the lock covers only the swap of the slot's contents, so a
reader of the same page sees the old page or the new one, never a mix.

The read path (``read_page``, zram_read_page)::

    lock slot
      flags == 0 and handle == 0  ->  zeros
      flags == 0                  ->  src = pool.read(handle, size)      (the common case)
      IDLE                        ->  clear it (an access)
      SAME                        ->  the fill word * 512
      WB                          ->  read block from the backing file   (bd_reads + 1)
      HUGE                        ->  pool.read(handle, 4096)
      priority p                  ->  decompress with algorithm p
    unlock
    decompress src (algorithm 0) outside the lock: the bytes are already copied out

``zram_free_page`` (``_free_slot``), with the slot locked: WB -> give the block
back; SAME -> same_pages - 1; else ``pool.free(handle)``, compr_data_size -
size, HUGE -> huge_pages - 1; then pages_stored - 1 and the slot is cleared.

Locking
-------
Lock order: slot lock -> the pool's locks (page lock -> pool lock -> class
lock -> zspage lock) -> ``_stat_lock`` / the backing file's bitmap lock.
The pool never calls back into the device, so the pool's migration and
compaction run concurrently with slot I/O without any slot lock.  Several
slots are never locked at once.  ``_pp_lock`` keeps post-processing
(``writeback``, ``recompress``) to one at a time, as the kernel's
``pp_in_progress``; it is taken before any slot lock.

Differences from the kernel, on purpose
---------------------------------------
- ``mem_limit`` is enforced by the pool (``max_pages``) before the allocation,
  where the kernel allocates, looks at the total and frees again; the effect
  (no write passes the limit, the slot keeps its old page) is the same.
- ``write_zeroes`` zeroes partial pages (read-modify-write); the kernel's
  handler, shared with discard, skips them.  Whole pages are freed and
  counted in ``notify_free``, as the kernel does for both.
- A partial write (``pwrite`` not covering a whole page) holds the slot lock
  across its read-modify-write, so two partial writes to one page never lose
  each other's bytes.
- ``reset()`` frees every slot and clears the statistics but keeps the
  configuration (disksize, algorithms, mem_limit, backing file).
"""

from __future__ import annotations

import os
import threading
from array import array
from collections.abc import Iterable, Sequence

import zsmalloc
from zsmalloc.errors import CorruptionError, OutOfFramesError, PoolClosedError, PoolFullError
from zsmalloc.zram.backing import BackingFile
from zsmalloc.zram.codecs import Codec, get_codec
from zsmalloc.zram.common import (
    ALGORITHM_PARAMS,
    PAGE_SHIFT,
    PAGE_SIZE,
    ZRAM_COMP_PRIORITY_MASK,
    ZRAM_COMP_PRIORITY_SHIFT,
    ZRAM_HUGE,
    ZRAM_IDLE,
    ZRAM_INCOMPRESSIBLE,
    ZRAM_SAME,
    ZRAM_WB,
    DeviceText,
    SlotInfo,
    algorithm_params,
    check_device_args,
    secondary_algorithms,
    slot_info,
)
from zsmalloc.zram.errors import (
    InvalidIOError,
    NoBackingDeviceError,
    ZramError,
    ZramFullError,
    ZramIOError,
)
from zsmalloc.zram.kernels import apply_kernel, preset_secondary
from zsmalloc.zram.stats import BdStat, IoStat, MmStat, RecompStat

_PAGE_MASK = PAGE_SIZE - 1
#: bytes of slot table per page of disksize: the handle word, the object size, the flags
SLOT_BYTES = 8 + 2 + 1

_ZERO_PAGE = bytes(PAGE_SIZE)
_WRITEBACK_MODES = {
    "idle": ZRAM_IDLE,
    "huge": ZRAM_HUGE,
    "huge_idle": ZRAM_HUGE | ZRAM_IDLE,
    "incompressible": ZRAM_INCOMPRESSIBLE,
    "all": 0,
}


def _resolve_codec(spec: str | Codec, params: dict | None = None) -> Codec:
    if isinstance(spec, Codec):
        if params:
            raise ValueError(f"algorithm_params configure a named algorithm, not the codec {spec!r}")
        return spec
    return get_codec(spec, *algorithm_params(params))


def _pool_class(memory: object) -> type[zsmalloc.Pool]:
    """The Pool of the implementation that ``memory`` belongs to (the backend's, without one)."""
    from zsmalloc import engine, model

    if memory is None:
        return zsmalloc.Pool
    if isinstance(memory, engine.Memory):
        return engine.Pool  # type: ignore[return-value]  # one static type (the model's) names both Pools
    return model.Pool


class ZramDevice(DeviceText):
    """A zram device: ``disksize`` bytes in 4 KiB pages, stored compressed in a zsmalloc pool.

    ``algorithm`` is the primary compressor (a registered name or a
    :class:`~zsmalloc.zram.codecs.Codec`; ``algorithm_params`` may give
    ``level`` and, for zstd, ``dictionary``); ``recompress_algorithm`` one or
    up to three secondary ones for :meth:`recompress`, in priority order.
    ``mem_limit`` caps the pool's memory in bytes (0: none); ``chain_size``
    (default 8) and ``memory`` shape the pool the device creates, unless
    ``pool`` is given.  ``kernel`` ("6.1", "6.6", "6.12", "6.17") configures the
    device as that kernel's zram: :mod:`zsmalloc.zram.kernels` (its pool made
    as that kernel's zsmalloc is; a ``pool`` given must be so already).
    ``backing_file`` is a path for :meth:`writeback`, sized
    ``backing_blocks`` 4 KiB blocks (default: as many as the device has
    pages).  ``slot_lock_stripes`` (a power of two) is the number of slot locks.
    """

    def __init__(
        self,
        disksize: int,
        algorithm: str | Codec = "lz4",
        mem_limit: int = 0,
        chain_size: int | None = None,
        recompress_algorithm: str | Codec | Sequence[str | Codec] | None = None,
        backing_file: str | os.PathLike[str] | None = None,
        *,
        backing_blocks: int | None = None,
        pool: zsmalloc.Pool | None = None,
        memory=None,
        algorithm_params: dict | None = None,
        name: str = "zram0",
        slot_lock_stripes: int = 256,
        kernel: str | None = None,
    ) -> None:
        check_device_args(disksize, mem_limit, backing_file, backing_blocks)
        if slot_lock_stripes < 1 or slot_lock_stripes & (slot_lock_stripes - 1):
            raise ValueError(f"slot_lock_stripes must be a power of two, not {slot_lock_stripes}")
        self.name = name
        #: bytes, rounded up to whole pages (disksize_store's PAGE_ALIGN)
        self.disksize = (disksize + _PAGE_MASK) & ~_PAGE_MASK
        self.nr_pages = self.disksize >> PAGE_SHIFT

        # algorithms by priority: 0 is the primary one (zram->comps[])
        secondary = secondary_algorithms(recompress_algorithm)
        setup = apply_kernel(kernel, algorithm, chain_size, algorithm_params)
        self._codecs: list[Codec] = [_resolve_codec(setup.algorithm, setup.params)]
        self._codecs += [_resolve_codec(spec, params) for spec, params in preset_secondary(kernel, secondary)]
        #: the libzstd its preset's zstd loaded (None: the bundled one)
        self.zstd_library = setup.zstd_library
        self._compress = self._codecs[0].compress

        self._own_pool = pool is None
        if pool is None:
            pool = _pool_class(memory)(
                name=name,
                chain_size=setup.chain_size,
                class_rule=setup.class_rule,
                fullness=setup.fullness,
                memory=memory,
            )
        else:
            setup.check_pool(pool, kernel)
        self.pool = pool
        self._huge_size = self.pool.huge_class_size
        self._limit_pages = 0
        if mem_limit or self._own_pool:
            self.mem_limit = mem_limit

        # the slot table
        n = self.nr_pages
        self._handle = array("Q", [0]) * n  # (no transient zero bytes the size of the table)
        self._size = array("H", [0]) * n
        self._flags = bytearray(n)

        # slot locks and per-stripe counters (each changed under its stripe's lock)
        self._stripes = slot_lock_stripes
        self._mask = slot_lock_stripes - 1
        self._locks = [threading.Lock() for _ in range(slot_lock_stripes)]
        zeros = bytes(8 * slot_lock_stripes)
        self._st_stored = array("q", zeros)  # pages_stored
        self._st_compr = array("q", zeros)  # compr_data_size
        self._st_same = array("q", zeros)  # same_pages
        self._st_huge = array("q", zeros)  # huge_pages
        self._st_huge_since = array("q", zeros)  # huge_pages_since
        self._st_notify_free = array("q", zeros)  # notify_free

        # rarer counters, under _stat_lock
        self._stat_lock = threading.Lock()
        self._max_used_pages = 0
        self._failed_reads = 0
        self._failed_writes = 0
        self._invalid_io = 0
        self._bd_reads = 0
        self._bd_writes = 0
        self._compacted_base = self.pool.pages_compacted
        # recompression counters, under _pp_lock
        self._recomp = dict.fromkeys(RecompStat.__dataclass_fields__, 0)
        self._pp_lock = threading.Lock()

        self._backing: BackingFile | None = None
        if backing_file is not None:
            try:
                self._backing = BackingFile(backing_file, n if backing_blocks is None else backing_blocks)
            except BaseException:
                if self._own_pool:  # a failed constructor leaves no pool behind
                    self.pool.close()
                raise
        self._closed = False

    # ------------------------------------------------------------------
    # configuration

    @property
    def algorithms(self) -> tuple[str, ...]:
        """Every algorithm by priority: the primary one, then the recompression ones."""
        return tuple(c.name for c in self._codecs)

    @property
    def mem_limit(self) -> int:
        """The pool's memory limit in bytes, 0 for none (``mem_limit``)."""
        return self._limit_pages << PAGE_SHIFT

    @mem_limit.setter
    def mem_limit(self, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError(f"mem_limit must be >= 0, not {nbytes}")
        pages = (nbytes + _PAGE_MASK) >> PAGE_SHIFT  # mem_limit_store: PAGE_ALIGN
        self._limit_pages = pages
        self.pool.max_pages = pages or None

    @property
    def backing_file(self) -> str | None:
        return None if self._backing is None else self._backing.path

    @property
    def pages_stored(self) -> int:
        return sum(self._st_stored)

    def slot_lock(self, index: int) -> threading.Lock:
        """The lock guarding slot ``index`` (zram_slot_lock), shared by its stripe."""
        return self._locks[index & self._mask]

    # ------------------------------------------------------------------
    # the hot paths

    def write_page(self, index: int, data: bytes) -> None:
        """Store one 4096-byte page at page ``index`` (zram_write_page)."""
        if data.__class__ is not bytes and data.__class__ is not bytearray:
            data = self._page_bytes(data)
        if len(data) != PAGE_SIZE or not 0 <= index < self.nr_pages:
            self._bad_page_io(index, len(data))
        s = index & self._mask  # (before any allocation: a non-integer index fails here)
        # page_same_filled: one 8-byte word, 512 times (the cheap byte test rejects most pages)
        if data[7] == data[_PAGE_MASK] and data[:8] * 512 == data:
            self._write_same(index, int.from_bytes(data[:8], "little"))
            return
        comp = self._compress(data)
        clen = len(comp)
        if clen >= self._huge_size:
            comp = data
            clen = PAGE_SIZE
            new_flags = ZRAM_HUGE
        else:
            new_flags = 0
        pool = self.pool
        try:
            handle = pool.malloc(clen)
        except PoolFullError as exc:
            self._write_failed(index, exc)
        pool.write(handle, comp)
        if pool.pages_allocated > self._max_used_pages:
            self._update_used_max()
        lock = self._locks[s]
        lock.acquire()
        try:
            old = self._handle[index]
            old_flags = self._flags[index]
            if old_flags:
                self._free_slot(index, s)
            elif old:  # zram_free_page of a plain compressed page, inline
                pool.free(old)
                self._st_compr[s] -= self._size[index]
                self._st_stored[s] -= 1
            self._store_slot(index, s, handle, clen, new_flags)
        finally:
            lock.release()

    def read_page(self, index: int) -> bytes:
        """The 4096 bytes of page ``index`` (zram_read_page); zeros if never written or discarded."""
        if not 0 <= index < self.nr_pages:
            self._bad_index(index)
        lock = self._locks[index & self._mask]
        lock.acquire()
        try:
            flags = self._flags[index]
            if flags:
                return self._read_slot(index, flags, True)
            handle = self._handle[index]
            if not handle:
                return _ZERO_PAGE
            src = self.pool.read(handle)  # the whole object: its size is the slot's
        finally:
            lock.release()
        return self._decompress_page(index, src, self._codecs[0])

    def read_page_into(self, index: int, buf) -> None:
        """Fill the writable 4096-byte buffer ``buf`` with page ``index``."""
        out = memoryview(buf)
        if out.nbytes != PAGE_SIZE:
            self._count_invalid()
            raise InvalidIOError(f"read_page_into needs a buffer of {PAGE_SIZE} bytes, not {out.nbytes}")
        if out.format != "B":
            out = out.cast("B")
        out[:] = self.read_page(index)

    # ------------------------------------------------------------------
    # slot internals (the caller holds the slot lock unless said otherwise)

    def _backing_of(self, index: int) -> BackingFile:
        """The backing file that written-back slot ``index`` has its page in."""
        backing = self._backing
        if backing is None:  # writeback() needs a backing file: a ZRAM_WB slot implies one
            raise CorruptionError(f"{self.name}: slot {index} is written back, but there is no backing file")
        return backing

    def _free_slot(self, index: int, s: int) -> bool:
        """``zram_free_page``: release whatever the slot holds; False if it held nothing."""
        flags = self._flags[index]
        handle = self._handle[index]
        if flags & ZRAM_WB:
            self._backing_of(index).free_block(handle)
        elif flags & ZRAM_SAME:
            self._st_same[s] -= 1
        elif handle:
            self.pool.free(handle)
            self._st_compr[s] -= self._size[index]
            if flags & ZRAM_HUGE:
                self._st_huge[s] -= 1
        else:
            return False
        self._st_stored[s] -= 1
        self._handle[index] = 0
        self._size[index] = 0
        self._flags[index] = 0
        return True

    def _read_slot(self, index: int, flags: int, access: bool) -> bytes:
        """The page of a slot with flags set; ``access`` clears IDLE (zram_accessed)."""
        if access and flags & ZRAM_IDLE:
            self._flags[index] = flags & ~ZRAM_IDLE
        handle = self._handle[index]
        if flags & ZRAM_SAME:
            return handle.to_bytes(8, "little") * 512
        if flags & ZRAM_WB:
            try:
                page = self._backing_of(index).read_block(handle)
            except ZramIOError:
                with self._stat_lock:
                    self._failed_reads += 1
                raise
            with self._stat_lock:
                self._bd_reads += 1
            return page
        if flags & ZRAM_HUGE:
            return self.pool.read(handle, PAGE_SIZE)
        codec = self._codecs[(flags & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT]
        return self._decompress_page(index, self.pool.read(handle), codec)

    def _decompress_page(self, index: int, src: bytes, codec: Codec) -> bytes:
        """Page ``index`` from its stored object ``src``; ZramIOError if it does not come back whole."""
        try:
            page = codec.decompress(src)
        except codec.errors as exc:
            self._read_failed(index, f"does not decompress with {codec.name}: {exc}")
        if len(page) != PAGE_SIZE:
            self._read_failed(index, f"decompressed to {len(page)} bytes with {codec.name}")
        return page

    def _write_same(self, index: int, element: int) -> None:
        s = index & self._mask
        lock = self._locks[s]
        lock.acquire()
        try:
            if self._handle[index] or self._flags[index]:
                self._free_slot(index, s)
            self._handle[index] = element
            self._flags[index] = ZRAM_SAME
            self._st_same[s] += 1
            self._st_stored[s] += 1
        finally:
            lock.release()

    def _store_locked(self, index: int, s: int, data: bytes | bytearray) -> None:
        """zram_write_page with the slot lock already held (partial writes)."""
        if data[:8] * 512 == data:
            self._free_slot(index, s)
            self._handle[index] = int.from_bytes(data[:8], "little")
            self._flags[index] = ZRAM_SAME
            self._st_same[s] += 1
            self._st_stored[s] += 1
            return
        comp = self._compress(data)
        clen = len(comp)
        new_flags = 0
        if clen >= self._huge_size:
            comp, clen, new_flags = bytes(data), PAGE_SIZE, ZRAM_HUGE
        try:
            handle = self.pool.malloc(clen)
        except PoolFullError as exc:
            self._write_failed(index, exc)
        self.pool.write(handle, comp)
        if self.pool.pages_allocated > self._max_used_pages:
            self._update_used_max()
        self._free_slot(index, s)
        self._store_slot(index, s, handle, clen, new_flags)

    def _store_slot(self, index: int, s: int, handle: int, clen: int, new_flags: int) -> None:
        """Record a stored page in its (empty) slot and count it; caller holds the slot lock."""
        self._handle[index] = handle
        self._size[index] = clen
        self._flags[index] = new_flags
        self._st_compr[s] += clen
        self._st_stored[s] += 1
        if new_flags:
            self._st_huge[s] += 1
            self._st_huge_since[s] += 1

    def _write_partial(self, index: int, offset: int, chunk, zeroing: bool = False) -> None:
        """Read-modify-write of part of a page, atomic under the slot lock."""
        s = index & self._mask
        with self._locks[s]:
            flags = self._flags[index]
            handle = self._handle[index]
            if not flags and not handle:
                if zeroing:
                    return  # an empty page is zeros already
                page = bytearray(PAGE_SIZE)
            elif flags:
                page = bytearray(self._read_slot(index, flags, False))
            else:
                page = bytearray(self._decompress_page(index, self.pool.read(handle), self._codecs[0]))
            page[offset : offset + len(chunk)] = chunk
            self._store_locked(index, s, page)

    # ------------------------------------------------------------------
    # errors and rare counters

    @staticmethod
    def _page_bytes(data) -> bytes:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        return view.tobytes()

    def _count_invalid(self) -> None:
        with self._stat_lock:
            self._invalid_io += 1

    def _require_open(self) -> None:
        if self._closed:
            raise PoolClosedError(f"zram device {self.name!r} is closed")

    def _bad_index(self, index: int) -> None:
        self._require_open()
        self._count_invalid()
        raise InvalidIOError(f"page index {index} is outside {self.name} (0..{self.nr_pages - 1})")

    def _bad_page_io(self, index: int, length: int) -> None:
        if not 0 <= index < self.nr_pages:
            self._bad_index(index)
        self._count_invalid()
        raise InvalidIOError(f"a page write takes {PAGE_SIZE} bytes, not {length}")

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.disksize:
            self._require_open()
            self._count_invalid()
            raise InvalidIOError(
                f"byte range [{offset}, {offset + length}) is outside {self.name} (0..{self.disksize})"
            )

    def _write_failed(self, index: int, exc: PoolFullError) -> None:
        with self._stat_lock:
            self._failed_writes += 1
        if isinstance(exc.__cause__, OutOfFramesError):
            why = "the pool could not get a page"
        elif self._limit_pages:
            why = f"mem_limit of {self._limit_pages << PAGE_SHIFT} bytes reached"
        else:
            why = "the pool's max_pages reached"
        raise ZramFullError(f"{self.name}: write of page {index} refused: {why} ({exc})") from exc

    def _read_failed(self, index: int, why: str) -> None:
        with self._stat_lock:
            self._failed_reads += 1
        raise ZramIOError(f"{self.name}: page {index} {why}")

    def _update_used_max(self) -> None:
        """update_used_max: raise mem_used_max to the pool's current size."""
        with self._stat_lock:
            total = self.pool.pages_allocated
            if total > self._max_used_pages:
                self._max_used_pages = total

    # ------------------------------------------------------------------
    # byte-level I/O

    def pwrite(self, offset: int, data) -> int:
        """Write ``data`` at byte ``offset``, any alignment; return the bytes written.

        Whole pages go through :meth:`write_page`; a page written in part is
        read, patched and stored again under its slot lock.  If a page cannot
        be stored (:class:`ZramFullError`), the pages before it stay written.
        """
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        n = len(view)
        self._check_range(offset, n)
        pos = 0
        while pos < n:
            at = offset + pos
            index, off = at >> PAGE_SHIFT, at & _PAGE_MASK
            chunk = min(PAGE_SIZE - off, n - pos)
            if chunk == PAGE_SIZE:
                self.write_page(index, view[pos : pos + PAGE_SIZE].tobytes())
            else:
                self._write_partial(index, off, view[pos : pos + chunk])
            pos += chunk
        return n

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes from byte ``offset``, any alignment."""
        self._check_range(offset, length)
        parts = []
        pos, end = offset, offset + length
        while pos < end:
            off = pos & _PAGE_MASK
            chunk = min(PAGE_SIZE - off, end - pos)
            page = self.read_page(pos >> PAGE_SHIFT)
            parts.append(page if chunk == PAGE_SIZE else memoryview(page)[off : off + chunk])
            pos += chunk
        return b"".join(parts)

    def write_zeroes(self, offset: int, length: int) -> None:
        """Zero ``length`` bytes at ``offset``: whole pages are freed (as discard), partial ones rewritten."""
        self._check_range(offset, length)
        pos, end = offset, offset + length
        while pos < end:
            index, off = pos >> PAGE_SHIFT, pos & _PAGE_MASK
            chunk = min(PAGE_SIZE - off, end - pos)
            if chunk == PAGE_SIZE:
                self._discard_one(index)
            else:
                self._write_partial(index, off, bytes(chunk), zeroing=True)
            pos += chunk

    def discard(self, index: int, count: int = 1) -> None:
        """Free pages ``index .. index+count-1`` (REQ_OP_DISCARD); they read as zeros."""
        if count < 0 or index < 0 or index + count > self.nr_pages:
            self._require_open()
            self._count_invalid()
            raise InvalidIOError(f"discard of pages [{index}, {index + count}) is outside {self.name}")
        for i in range(index, index + count):
            self._discard_one(i)

    def slot_free_notify(self, index: int) -> None:
        """The swap layer's notice that a swap slot is free (zram_slot_free_notify)."""
        if not 0 <= index < self.nr_pages:
            self._bad_index(index)
        self._discard_one(index)

    def _discard_one(self, index: int) -> None:
        s = index & self._mask
        with self._locks[s]:
            self._free_slot(index, s)
            self._st_notify_free[s] += 1

    # ------------------------------------------------------------------
    # idle pages, writeback, recompression

    def mark_idle(self) -> int:
        """Mark every stored page IDLE (``echo all > idle``); return how many.

        Same-filled and written-back pages are left alone, as in the kernel.
        Any read or write of a page clears its IDLE flag.
        """
        self._require_open()
        flags, handles = self._flags, self._handle
        n, stripes = self.nr_pages, self._stripes
        marked = 0
        for s in range(min(stripes, n)):
            with self._locks[s]:
                for i in range(s, n, stripes):
                    f = flags[i]
                    if handles[i] and not f & (ZRAM_SAME | ZRAM_WB):
                        flags[i] = f | ZRAM_IDLE
                        marked += 1
        return marked

    def writeback(
        self,
        mode: str = "idle",
        *,
        max_pages: int | None = None,
        indices: Iterable[int] | None = None,
    ) -> int:
        """Write pages out to the backing file and free their pool memory (``writeback``).

        ``mode``: "idle", "huge", "huge_idle" (both flags), "incompressible",
        or "all" (ours: every stored page); same-filled and already written-back
        pages are never written.  ``indices`` limits the candidates (the
        kernel's ``page_index=``); ``max_pages`` the number written.  Pages go
        out uncompressed, one per block; reads of them are served from the file.
        Stops early when the file is full.  Returns the pages written.
        """
        self._require_open()
        backing = self._backing
        if backing is None:
            raise NoBackingDeviceError(f"{self.name} has no backing file")
        try:
            need = _WRITEBACK_MODES[mode]
        except KeyError:
            modes = sorted(_WRITEBACK_MODES)
            raise ValueError(f"writeback mode must be one of {modes}, not {mode!r}") from None
        candidates = range(self.nr_pages) if indices is None else indices
        flags, handles = self._flags, self._handle
        written = 0
        with self._pp_lock:
            for index in candidates:
                if max_pages is not None and written >= max_pages:
                    break
                if not 0 <= index < self.nr_pages:
                    self._bad_index(index)
                if flags[index] & need != need:  # a first look without the lock
                    continue
                s = index & self._mask
                with self._locks[s]:
                    f = flags[index]
                    if f & need != need or f & (ZRAM_SAME | ZRAM_WB) or not handles[index]:
                        continue
                    page = self._read_slot(index, f, False)
                    block = backing.alloc_block()
                    if block < 0:
                        break  # the backing file is full (-ENOSPC)
                    try:
                        backing.write_block(block, page)
                    except ZramIOError:
                        backing.free_block(block)
                        raise
                    self._free_slot(index, s)
                    handles[index] = block
                    flags[index] = ZRAM_WB
                    self._st_stored[s] += 1
                with self._stat_lock:
                    self._bd_writes += 1
                written += 1
        return written

    def recompress(
        self,
        algorithm: str | None = None,
        only_huge: bool = False,
        only_idle: bool = False,
        *,
        threshold: int = 0,
        max_pages: int | None = None,
    ) -> int:
        """Recompress stored pages with the secondary algorithms (``recompress``); return pages kept.

        Candidates: pages in the pool (not same-filled, written back or marked
        INCOMPRESSIBLE), HUGE ones only if ``only_huge``, IDLE ones only if
        ``only_idle``, whose object is at least ``threshold`` bytes, and not
        already compressed by the last algorithm in use.  Each candidate is
        compressed with the next algorithms in priority order (only
        ``algorithm`` if named) until one yields an object in a smaller size
        class (``pool.class_index``) and below the huge size (and below
        ``threshold`` if set); that object replaces the old one.  If the last
        algorithm fails too, the page is marked INCOMPRESSIBLE.  ``max_pages``
        caps the pages tried.  Counters: :meth:`recomp_stat`.
        """
        self._require_open()
        nr_comps = len(self._codecs)
        if nr_comps < 2:
            raise ZramError(f"{self.name} has no recompression algorithm")
        prio, prio_max = 1, nr_comps
        if algorithm is not None:
            names = [c.name for c in self._codecs]
            if algorithm not in names[1:]:
                raise ValueError(f"{algorithm!r} is not a recompression algorithm of {self.name}: {names}")
            prio = names.index(algorithm, 1)
            prio_max = prio + 1
        if not 0 <= threshold < self._huge_size:
            raise ValueError(f"threshold must be within 0..{self._huge_size - 1}, not {threshold}")
        need = (ZRAM_HUGE if only_huge else 0) | (ZRAM_IDLE if only_idle else 0)
        skip = ZRAM_SAME | ZRAM_WB | ZRAM_INCOMPRESSIBLE
        flags, handles = self._flags, self._handle
        budget = -1 if max_pages is None else max_pages
        kept = 0
        with self._pp_lock:
            for index in range(self.nr_pages):
                if budget == 0:
                    break
                f = flags[index]
                if f & need != need or f & skip:
                    continue
                s = index & self._mask
                with self._locks[s]:
                    f = flags[index]
                    if f & need != need or f & skip or not handles[index]:
                        continue
                    if ((f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT) + 1 >= prio_max:
                        continue  # already compressed with this or a later algorithm
                    result = self._recompress_slot(index, s, threshold, prio, prio_max, nr_comps)
                if result is not None:
                    budget -= 1
                    kept += result
        return kept

    def _recompress_slot(
        self, index: int, s: int, threshold: int, prio: int, prio_max: int, nr_comps: int
    ) -> int | None:
        """recompress_slot, slot locked: 1 if a new object was kept, 0 if not, None if not tried."""
        flags = self._flags[index]
        old_size = self._size[index]
        if old_size < threshold:
            return None
        page = self._read_slot(index, flags, False)
        flags &= ~ZRAM_IDLE  # touched: no longer a candidate for idle writeback
        self._flags[index] = flags
        pool = self.pool
        class_old = pool.class_index(old_size)
        prio = max(prio, ((flags & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT) + 1)
        if prio >= prio_max:
            return None
        st = self._recomp
        st["attempted"] += 1
        comp = b""
        chosen = -1
        for p in range(prio, prio_max):
            comp = self._codecs[p].compress(page)
            n = len(comp)
            if n >= self._huge_size or pool.class_index(n) >= class_old or (threshold and n >= threshold):
                continue
            chosen = p
            break
        if chosen < 0:
            st["failed"] += 1
            if prio_max == nr_comps:  # the last algorithm could not do it either
                self._flags[index] = flags | ZRAM_INCOMPRESSIBLE
                st["incompressible"] += 1
            return 0
        new_size = len(comp)
        try:
            handle = pool.malloc(new_size)
        except PoolFullError as exc:
            raise ZramFullError(f"{self.name}: recompression of page {index}: {exc}") from exc
        pool.write(handle, comp)
        if pool.pages_allocated > self._max_used_pages:
            self._update_used_max()
        was_huge = flags & ZRAM_HUGE
        self._free_slot(index, s)
        self._handle[index] = handle
        self._size[index] = new_size
        self._flags[index] = chosen << ZRAM_COMP_PRIORITY_SHIFT
        self._st_compr[s] += new_size
        self._st_stored[s] += 1
        st["recompressed"] += 1
        st["bytes_before"] += old_size
        st["bytes_after"] += new_size
        if was_huge:
            st["huge_recompressed"] += 1
        return 1

    # ------------------------------------------------------------------
    # statistics

    def mm_stat(self) -> MmStat:
        """``mm_stat``: the nine memory figures (see :mod:`zsmalloc.zram.stats`)."""
        return MmStat(
            orig_data_size=sum(self._st_stored) << PAGE_SHIFT,
            compr_data_size=sum(self._st_compr),
            mem_used_total=self.pool.total_pages << PAGE_SHIFT,
            mem_limit=self._limit_pages << PAGE_SHIFT,
            mem_used_max=self._max_used_pages << PAGE_SHIFT,
            same_pages=sum(self._st_same),
            pages_compacted=self.pool.pages_compacted - self._compacted_base,
            huge_pages=sum(self._st_huge),
            huge_pages_since=sum(self._st_huge_since),
        )

    def io_stat(self) -> IoStat:
        """``io_stat``: failed reads and writes, invalid requests, freed slots."""
        with self._stat_lock:
            return IoStat(
                failed_reads=self._failed_reads,
                failed_writes=self._failed_writes,
                invalid_io=self._invalid_io,
                notify_free=sum(self._st_notify_free),
            )

    def bd_stat(self) -> BdStat:
        """``bd_stat``: backing-file pages in use, pages read from it, pages written to it."""
        with self._stat_lock:
            return BdStat(
                bd_count=0 if self._backing is None else self._backing.nr_used,
                bd_reads=self._bd_reads,
                bd_writes=self._bd_writes,
            )

    def recomp_stat(self) -> RecompStat:
        """What :meth:`recompress` has done so far."""
        with self._pp_lock:
            return RecompStat(**self._recomp)

    def reset_mem_used_max(self) -> None:
        """``echo 0 > mem_used_max``: restart the high-water mark from the pool's current size."""
        self._require_open()
        with self._stat_lock:
            self._max_used_pages = self.pool.total_pages

    def slot_info(self, index: int) -> SlotInfo:
        """Slot ``index`` decoded."""
        if not 0 <= index < self.nr_pages:
            self._bad_index(index)
        with self._locks[index & self._mask]:
            flags, handle, size = self._flags[index], self._handle[index], self._size[index]
        return slot_info(index, flags, handle, size, self.algorithms)

    # ------------------------------------------------------------------
    # maintenance

    def compact(self) -> int:
        """``echo 1 > compact``: run the pool's compaction; return the pages it freed."""
        return self.pool.compact()

    def reset(self) -> None:
        """Free every page and clear the statistics (``echo 1 > reset``); the configuration stays."""
        self._require_open()
        with self._pp_lock:
            n, stripes = self.nr_pages, self._stripes
            for s in range(stripes):
                with self._locks[s]:
                    for i in range(s, n, stripes):
                        if self._handle[i] or self._flags[i]:
                            self._free_slot(i, s)
                    for counter in (
                        self._st_stored,
                        self._st_compr,
                        self._st_same,
                        self._st_huge,
                        self._st_huge_since,
                        self._st_notify_free,
                    ):
                        counter[s] = 0
            with self._stat_lock:
                self._max_used_pages = 0
                self._failed_reads = self._failed_writes = self._invalid_io = 0
                self._bd_reads = self._bd_writes = 0
                self._compacted_base = self.pool.pages_compacted
            self._recomp = dict.fromkeys(self._recomp, 0)
            if self._backing is not None:
                self._backing.clear()
        if self._own_pool:
            self.pool.flush_deferred()

    def check(self) -> None:
        """Recompute every counter from the slot table and compare; then ``pool.check()``.

        Raises :class:`~zsmalloc.CorruptionError`, or :class:`~zsmalloc.PoolClosedError`
        once the device is closed.  Run it when no I/O is in flight.
        """
        self._require_open()
        stored = compr = same = huge = wb = 0
        flags_arr, handles, sizes = self._flags, self._handle, self._size
        seen: set[int] = set()
        for i in range(self.nr_pages):
            f, h, size = flags_arr[i], handles[i], sizes[i]
            if not f and not h:
                if size:
                    raise CorruptionError(f"slot {i}: empty but size {size}")
                continue
            stored += 1
            if f & ZRAM_SAME:
                same += 1
                if f & ~ZRAM_SAME or size:
                    raise CorruptionError(f"slot {i}: same-filled with flags {f:#x}, size {size}")
            elif f & ZRAM_WB:
                wb += 1
                if f & ~ZRAM_WB or size:
                    raise CorruptionError(f"slot {i}: written back with flags {f:#x}, size {size}")
                if self._backing is None or not self._backing.block_used(h) or h in seen:
                    raise CorruptionError(f"slot {i}: backing block {h} not allocated or shared")
                seen.add(h)
            else:
                compr += size
                prio = (f & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT
                if prio >= len(self._codecs):
                    raise CorruptionError(f"slot {i}: algorithm priority {prio} not configured")
                if f & ZRAM_HUGE:
                    huge += 1
                    if size != PAGE_SIZE:
                        raise CorruptionError(f"slot {i}: huge with size {size}")
                elif not 0 < size < self._huge_size:
                    raise CorruptionError(f"slot {i}: compressed size {size} out of range")
                try:
                    hsize = self.pool.handle_size(h)
                except KeyError as exc:
                    raise CorruptionError(f"slot {i}: handle {h:#x} is not live in the pool") from exc
                if hsize != size:
                    raise CorruptionError(f"slot {i}: pool object of {hsize} bytes, slot says {size}")
        expect = {
            "pages_stored": (stored, sum(self._st_stored)),
            "compr_data_size": (compr, sum(self._st_compr)),
            "same_pages": (same, sum(self._st_same)),
            "huge_pages": (huge, sum(self._st_huge)),
            "bd_count": (wb, 0 if self._backing is None else self._backing.nr_used),
        }
        for name, (counted, kept) in expect.items():
            if counted != kept:
                raise CorruptionError(f"{name}: the slot table says {counted}, the counter {kept}")
        if self._own_pool:
            self.pool.check()

    def close(self) -> None:
        """Free everything; close the backing file, and the pool if the device made it."""
        if self._closed:
            return
        if self._own_pool:
            self.pool.close()
        else:
            self.reset()
        if self._backing is not None:
            self._backing.close()
        self._closed = True
        self.nr_pages = 0
        self.disksize = 0


__all__ = [
    "ALGORITHM_PARAMS",
    "PAGE_SIZE",
    "SLOT_BYTES",
    "ZRAM_COMP_PRIORITY_MASK",
    "ZRAM_COMP_PRIORITY_SHIFT",
    "ZRAM_HUGE",
    "ZRAM_IDLE",
    "ZRAM_INCOMPRESSIBLE",
    "ZRAM_SAME",
    "ZRAM_WB",
    "SlotInfo",
    "ZramDevice",
]
