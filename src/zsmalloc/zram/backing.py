"""The backing device of zram's writeback: a fixed-size file of 4 KiB blocks and a block bitmap.

The kernel's ``backing_dev`` is a block device or a file; written-back pages
are stored there uncompressed, one per block, and a bitmap
(``zram->bitmap``, one bit per block) says which blocks are taken.
``alloc_block_bdev`` finds the first clear bit, ``free_block_bdev`` clears it.
Here::

    file (sparse, nr_blocks * 4096 bytes)
    +---------+---------+---------+---------+-- ... --+
    | block 0 | block 1 | block 2 | block 3 |         |
    +---------+---------+---------+---------+-- ... --+
    bitmap     1         0         1         1           (bit b of byte b // 8)

The slot of a written-back page keeps the block number in its handle word
(with the WB flag).  I/O is ``os.pread``/``os.pwrite`` at ``block * 4096``:
positional, so threads never share a file offset.  ``_lock`` guards the
bitmap and the counters; the block I/O itself runs under the caller's slot
lock only.
"""

from __future__ import annotations

import os
import re
import threading

from zsmalloc.zram.errors import ZramIOError

BLOCK_SIZE = 4096
_BLOCK_SHIFT = 12
_NOT_FULL = re.compile(b"[^\xff]")  # a bitmap byte with a clear bit


class BackingFile:
    """``nr_blocks`` blocks of 4096 bytes in the file at ``path`` (created, or grown, if needed)."""

    def __init__(self, path: str | os.PathLike[str], nr_blocks: int) -> None:
        if nr_blocks < 1:
            raise ValueError(f"a backing file needs at least one block, not {nr_blocks}")
        self.path = os.fspath(path)
        self.nr_blocks = nr_blocks
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(self._fd).st_size < nr_blocks * BLOCK_SIZE:
                os.ftruncate(self._fd, nr_blocks * BLOCK_SIZE)
        except OSError:
            os.close(self._fd)
            raise
        nbytes = (nr_blocks + 7) >> 3
        self.bitmap = bytearray(nbytes)
        if nr_blocks & 7:  # the bits past the last block are never free
            self.bitmap[-1] = 0xFF & ~((1 << (nr_blocks & 7)) - 1)
        self._hint = 0  # no clear bit in bitmap bytes below this one
        self._lock = threading.Lock()
        #: blocks in use (zram's bd_count)
        self.nr_used = 0

    # ------------------------------------------------------------------
    # the bitmap

    def alloc_block(self) -> int:
        """Take the lowest free block (``alloc_block_bdev``); -1 if the file is full."""
        with self._lock:
            bitmap = self.bitmap
            m = _NOT_FULL.search(bitmap, self._hint)
            if m is None:
                self._hint = len(bitmap)
                return -1
            pos = m.start()
            byte = bitmap[pos]
            bit = (~byte & (byte + 1)).bit_length() - 1  # lowest clear bit
            bitmap[pos] = byte | (1 << bit)
            self._hint = pos
            self.nr_used += 1
            return (pos << 3) | bit

    def free_block(self, block: int) -> None:
        """Give a block back (``free_block_bdev``)."""
        with self._lock:
            pos, bit = block >> 3, 1 << (block & 7)
            if not 0 <= block < self.nr_blocks or not self.bitmap[pos] & bit:
                raise ValueError(f"backing block {block} is not in use")
            self.bitmap[pos] &= ~bit
            if pos < self._hint:
                self._hint = pos
            self.nr_used -= 1

    def block_used(self, block: int) -> bool:
        return 0 <= block < self.nr_blocks and bool(self.bitmap[block >> 3] & (1 << (block & 7)))

    def clear(self) -> None:
        """Mark every block free (device reset)."""
        with self._lock:
            tail = self.bitmap[-1] if self.nr_blocks & 7 else 0
            self.bitmap[:] = bytes(len(self.bitmap))
            if self.nr_blocks & 7:
                self.bitmap[-1] = tail & ~((1 << (self.nr_blocks & 7)) - 1)
            self._hint = 0
            self.nr_used = 0

    # ------------------------------------------------------------------
    # block I/O

    def write_block(self, block: int, data: bytes) -> None:
        try:
            n = os.pwrite(self._fd, data, block << _BLOCK_SHIFT)
        except OSError as exc:
            raise ZramIOError(f"backing file {self.path!r}: write of block {block} failed: {exc}") from exc
        if n != BLOCK_SIZE:
            raise ZramIOError(f"backing file {self.path!r}: short write of block {block} ({n} bytes)")

    def read_block(self, block: int) -> bytes:
        try:
            data = os.pread(self._fd, BLOCK_SIZE, block << _BLOCK_SHIFT)
        except OSError as exc:
            raise ZramIOError(f"backing file {self.path!r}: read of block {block} failed: {exc}") from exc
        if len(data) != BLOCK_SIZE:
            raise ZramIOError(f"backing file {self.path!r}: short read of block {block} ({len(data)} bytes)")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return f"<BackingFile {self.path!r}: {self.nr_used}/{self.nr_blocks} blocks>"
