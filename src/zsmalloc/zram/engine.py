"""The engine's ZramDevice: ``zsmalloc._engine.Zram`` (Rust) behind the model device's API.

The slot table, the codecs, the write and read paths, writeback and
recompression run in the engine's core (``engine/core/src/zram``, drawn in
its ``mod.rs``); this class adds what is formatting and convention: the
stats as the dataclasses of :mod:`zsmalloc.zram.stats` with the kernel's
text, :class:`~zsmalloc.zram.common.SlotInfo`, the constructor's checks and
the context-manager protocol.  The model's device
(:mod:`zsmalloc.zram.device`) is the reference it is tested against.

Beyond the model's API, multi-page calls cross into the engine once and
release the GIL for the whole batch, so that threads use every core::

    dev.write_pages(index, buffer)           # len(buffer) a multiple of 4096
    data = dev.read_pages(index, count)      # count * 4096 bytes
    dev.read_pages_into(index, buffer)       # fill a writable buffer

One-page calls keep the GIL: a page costs a few microseconds, less than
releasing and taking it again would cost two threads.

It runs on an engine pool (``zsmalloc.engine.Pool``) and the engine's
algorithms: ``lz4`` (default), ``lz4hc``, ``zstd`` and ``deflate``.  A
codec written in Python, or a model pool, runs on the model's device.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from zsmalloc import _engine
from zsmalloc.engine import Memory, Pool
from zsmalloc.zram.common import (
    PAGE_SHIFT,
    DeviceText,
    SlotInfo,
    check_device_args,
    secondary_algorithms,
    slot_info,
)
from zsmalloc.zram.common import algorithm_params as check_algorithm_params
from zsmalloc.zram.kernels import apply_kernel, preset_secondary
from zsmalloc.zram.stats import BdStat, IoStat, MmStat, RecompStat

#: bytes of slot table per page of disksize (struct zram_table_entry: a handle word, a flags word)
SLOT_BYTES = 16
#: the algorithms the engine runs
ALGORITHMS = ("lz4", "lz4hc", "zstd", "deflate", "lz4-kernel")


def _algorithm_name(spec: Any, what: str) -> str:
    if not isinstance(spec, str):
        raise TypeError(
            f"the engine's zram device takes {what} by name ({', '.join(ALGORITHMS)}), not {spec!r};"
            " a codec written in Python runs on the model's device, zsmalloc.zram.device.ZramDevice"
        )
    if spec not in ALGORITHMS:
        raise ValueError(f"unknown compression algorithm {spec!r}; available: {list(ALGORITHMS)}")
    return spec


def _codec_params(params: dict | None) -> tuple[int | None, str | None, str | None]:
    """A recompression algorithm's (level, frame, library): a preset's zstd has them."""
    level, _, frame, library = check_algorithm_params(params)
    return level, frame, library


def library_versions() -> dict[str, str]:
    """The C libraries behind the engine's codecs: their versions decide a page's compressed bytes."""
    lz4, zstd = _engine.codec_versions()
    return {"lz4": lz4, "zstd": zstd}


def compress(page: Any, algorithm: str = "lz4", level: int | None = None) -> bytes:
    """The 4096-byte ``page`` as the engine's device stores it with ``algorithm`` (any size)."""
    return _engine.compress(page, _algorithm_name(algorithm, "its algorithm"), level)


class ZramDevice(DeviceText):
    """A zram device on the engine: ``disksize`` bytes in 4 KiB pages, compressed in a zsmalloc pool.

    The arguments are the model's (:class:`zsmalloc.zram.device.ZramDevice`):
    ``algorithm`` and ``algorithm_params`` (``level``, and for zstd a
    ``dictionary``); ``recompress_algorithm``, one or up to three names;
    ``mem_limit`` in bytes (0: none); ``chain_size`` and ``memory`` shape the
    engine pool the device makes, unless ``pool`` (an engine pool, which it
    then shares) is given; ``kernel`` (a :mod:`zsmalloc.zram.kernels` preset,
    which a ``pool`` given must match);
    ``backing_file`` and ``backing_blocks`` for :meth:`writeback`.
    """

    _label = " (engine)"

    def __init__(
        self,
        disksize: int,
        algorithm: str = "lz4",
        mem_limit: int = 0,
        chain_size: int | None = None,
        recompress_algorithm: str | Sequence[str] | None = None,
        backing_file: str | os.PathLike[str] | None = None,
        *,
        backing_blocks: int | None = None,
        pool: Pool | None = None,
        memory: Memory | None = None,
        algorithm_params: dict | None = None,
        name: str = "zram0",
        kernel: str | None = None,
    ) -> None:
        check_device_args(disksize, mem_limit, backing_file, backing_blocks)
        setup = apply_kernel(kernel, algorithm, chain_size, algorithm_params)
        primary = _algorithm_name(setup.algorithm, "its algorithm")
        level, dictionary, frame, library = check_algorithm_params(setup.params)
        secondary = [
            (_algorithm_name(a, "recompression algorithms"), *_codec_params(params))
            for a, params in preset_secondary(kernel, secondary_algorithms(recompress_algorithm))
        ]
        if pool is not None and not isinstance(pool, _engine.Pool):
            raise TypeError(
                f"the engine's zram device runs on an engine pool, not {pool!r};"
                " a model pool takes the model's device, zsmalloc.zram.device.ZramDevice"
            )
        if memory is not None and not isinstance(memory, _engine.Memory):
            raise TypeError(f"the engine's zram device runs in an engine Memory, not {memory!r}")
        self.name = name
        self._own_pool = pool is None
        if pool is not None:
            setup.check_pool(pool, kernel)
        self.pool: Pool = (
            Pool(
                name=name,
                chain_size=setup.chain_size,
                class_rule=setup.class_rule,
                fullness=setup.fullness,
                memory=memory,
            )
            if pool is None
            else pool
        )
        try:
            self._dev = _engine.Zram(
                self.pool,
                disksize,
                primary,
                level,
                dictionary,
                frame,
                library,
                secondary,
                mem_limit,
                None if backing_file is None else os.fspath(backing_file),
                backing_blocks,
                name,
            )
        except BaseException:
            if self._own_pool:  # a failed constructor leaves no pool behind
                self.pool.close()
            raise
        self._closed = False
        #: the libzstd its preset's zstd loaded (None: the bundled one)
        self.zstd_library = setup.zstd_library
        #: bytes, rounded up to whole pages
        self.disksize: int = self._dev.disksize
        self.nr_pages: int = self._dev.nr_pages
        self._algorithms = tuple(a for a, _ in self._dev.algorithms)

    # ------------------------------------------------------------------
    # configuration

    @property
    def algorithms(self) -> tuple[str, ...]:
        """Every algorithm by priority: the primary one, then the recompression ones."""
        return self._algorithms

    @property
    def mem_limit(self) -> int:
        """The pool's memory limit in bytes, 0 for none (``mem_limit``)."""
        return self._dev.mem_limit

    @mem_limit.setter
    def mem_limit(self, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError(f"mem_limit must be >= 0, not {nbytes}")
        self._dev.mem_limit = nbytes

    @property
    def backing_file(self) -> str | None:
        path = self._dev.backing_file
        return None if path is None else os.fspath(path)

    @property
    def pages_stored(self) -> int:
        return self._dev.pages_stored

    # ------------------------------------------------------------------
    # pages and bytes

    def write_page(self, index: int, data: Any) -> None:
        """Store one 4096-byte page (any bytes-like object) at page ``index`` (zram_write_page)."""
        self._dev.write_page(index, data)

    def read_page(self, index: int) -> bytes:
        """The 4096 bytes of page ``index`` (zram_read_page); zeros if never written or discarded."""
        return self._dev.read_page(index)

    def read_page_into(self, index: int, buf: Any) -> None:
        """Fill the writable 4096-byte buffer ``buf`` with page ``index``."""
        self._dev.read_page_into(index, buf)

    def write_pages(self, index: int, data: Any) -> None:
        """Store pages ``index ..`` from ``data`` (a multiple of 4096 bytes), the GIL released.

        On an error the pages before the one that failed stay written.
        """
        self._dev.write_pages(index, data)

    def read_pages(self, index: int, count: int) -> bytes:
        """``count`` pages from page ``index``, as one bytes object, the GIL released."""
        return self._dev.read_pages(index, count)

    def read_pages_into(self, index: int, buf: Any) -> int:
        """Fill the writable buffer ``buf`` (a multiple of 4096 bytes) from page ``index``; pages read."""
        return self._dev.read_pages_into(index, buf)

    def pwrite(self, offset: int, data: Any) -> int:
        """Write ``data`` at byte ``offset``, any alignment; return the bytes written."""
        return self._dev.pwrite(offset, data)

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes from byte ``offset``, any alignment."""
        return self._dev.pread(offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        """Zero ``length`` bytes at ``offset``: whole pages are freed (as discard), partial ones rewritten."""
        self._dev.write_zeroes(offset, length)

    def discard(self, index: int, count: int = 1) -> None:
        """Free pages ``index .. index+count-1`` (REQ_OP_DISCARD); they read as zeros."""
        self._dev.discard(index, count)

    def slot_free_notify(self, index: int) -> None:
        """The swap layer's notice that a swap slot is free (zram_slot_free_notify)."""
        self._dev.discard(index, 1)

    # ------------------------------------------------------------------
    # idle pages, writeback, recompression

    def mark_idle(self) -> int:
        """Mark every page in the pool IDLE (``echo all > idle``); return how many."""
        return self._dev.mark_idle()

    def writeback(
        self,
        mode: str = "idle",
        *,
        max_pages: int | None = None,
        indices: Iterable[int] | None = None,
    ) -> int:
        """Write pages out to the backing file and free their pool memory (``writeback``).

        The modes, ``indices`` and ``max_pages`` are the model's; returns the pages written.
        """
        return self._dev.writeback(mode, max_pages, None if indices is None else list(indices))

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

        The candidates and the rules are the model's (:meth:`zsmalloc.zram.device.ZramDevice.recompress`).
        """
        return self._dev.recompress(algorithm, only_huge, only_idle, threshold, max_pages)

    # ------------------------------------------------------------------
    # statistics

    def mm_stat(self) -> MmStat:
        """``mm_stat``: the nine memory figures (see :mod:`zsmalloc.zram.stats`)."""
        return MmStat(*self._dev.mm_stat())

    def io_stat(self) -> IoStat:
        """``io_stat``: failed reads and writes, invalid requests, freed slots."""
        return IoStat(*self._dev.io_stat())

    def bd_stat(self) -> BdStat:
        """``bd_stat``: backing-file pages in use, pages read from it, pages written to it."""
        return BdStat(*self._dev.bd_stat())

    def recomp_stat(self) -> RecompStat:
        """What :meth:`recompress` has done so far."""
        return RecompStat(*self._dev.recomp_stat())

    def reset_mem_used_max(self) -> None:
        """``echo 0 > mem_used_max``: restart the high-water mark from the pool's current size."""
        self._dev.reset_mem_used_max()

    def slot_info(self, index: int) -> SlotInfo:
        """Slot ``index`` decoded."""
        flags, handle, size = self._dev.slot(index)
        return slot_info(index, flags, handle, size, self._algorithms)

    # ------------------------------------------------------------------
    # maintenance

    def compact(self) -> int:
        """``echo 1 > compact``: run the pool's compaction; return the pages it freed."""
        return self._dev.compact()

    def reset(self) -> None:
        """Free every page and clear the statistics (``echo 1 > reset``); the configuration stays."""
        self._dev.reset()
        if self._own_pool:
            self.pool.flush_deferred()

    def check(self) -> None:
        """The slot table against the counters and the pool, then ``pool.check()``.

        Raises :class:`~zsmalloc.CorruptionError`, or :class:`~zsmalloc.PoolClosedError`
        once the device is closed.  Run it when no I/O is in flight.
        """
        self._dev.check()
        if self._own_pool:
            self.pool.check()

    def close(self) -> None:
        """Free everything; close the pool if the device made it."""
        if self._closed:
            return
        if self._own_pool:
            self.pool.close()
        self._dev.close()
        self._closed = True
        self.nr_pages = 0
        self.disksize = 0


__all__ = ["ALGORITHMS", "PAGE_SHIFT", "SLOT_BYTES", "ZramDevice", "compress"]
