"""The errors of the zram layer.

Each derives from :class:`zsmalloc.ZsmallocError` (through :class:`ZramError`)
and from the builtin a caller would catch for the same failure, as in
``zsmalloc.errors``.  A call that raises leaves the device as it was: the slot
it was about to change keeps its old contents.
"""

from __future__ import annotations

import errno

from zsmalloc.errors import PoolFullError, ZsmallocError


class ZramError(ZsmallocError):
    """Base class of the errors raised by :class:`~zsmalloc.zram.ZramDevice`."""


class InvalidIOError(ZramError, ValueError):
    """A page index or byte range outside the device, or a page of the wrong size.

    The kernel counts these in ``io_stat``'s ``invalid_io`` column (a bio that
    fails ``valid_io_request``); so do we.
    """


class ZramFullError(ZramError, PoolFullError, OSError):
    """A write was refused: the pool reached ``mem_limit`` (or got no page at all).

    A :class:`~zsmalloc.PoolFullError` (so a ``MemoryError``) and an
    ``OSError`` with ``errno`` ENOSPC, as a full block device reports.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC
        self.strerror = message

    def __str__(self) -> str:
        return str(self.strerror)


class ZramIOError(ZramError, OSError):
    """A page could not be read back: the backing file failed, or the stored data does not decompress."""

    def __init__(self, message: str, err: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = err
        self.strerror = message

    def __str__(self) -> str:
        return str(self.strerror)


class NoBackingDeviceError(ZramError, RuntimeError):
    """``writeback`` on a device without a backing file (the kernel's -ENODEV)."""
