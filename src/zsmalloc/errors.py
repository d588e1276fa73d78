"""The exceptions every layer raises.

Each error derives from :class:`ZsmallocError` and from the builtin a Python
caller would already catch for the same mistake, so ``except ValueError`` and
``except ZsmallocError`` both work.  This module imports nothing and sits
beside the layers, not above them.

A call that raises leaves the pool exactly as it was before the call.
"""


class ZsmallocError(Exception):
    """Base class of every error raised by this package."""


class InvalidSizeError(ZsmallocError, ValueError):
    """An allocation size outside 1..4096 bytes."""


class InvalidHandleError(ZsmallocError, KeyError):
    """A handle that is unknown, already freed, or stale (from an earlier generation)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "invalid handle"


class PoolFullError(ZsmallocError, MemoryError):
    """No page could be had: the pool's ``max_pages`` is reached or the page allocator failed."""


class OutOfFramesError(ZsmallocError, MemoryError):
    """The page allocator of :class:`zsmalloc.mm.Memory` has no frame to give (or was told to fail)."""


class PageStateError(ZsmallocError, RuntimeError):
    """A page-descriptor operation that the page's state does not allow (double free, bad unlock)."""


class WouldSleepError(ZsmallocError, RuntimeError):
    """A page-lock wait on a ``Memory(sleep_on_page_lock=False)``: the page is locked, and
    the caller (a single-threaded checker) asked to be told instead of sleeping."""


class ObjectMappedError(ZsmallocError, RuntimeError):
    """``free()`` of an object that is mapped: a ``with pool.map(h)`` block, or a view
    derived from one, still reads it.  The object stays allocated; free it once the
    last view is released."""


class PoolClosedError(ZsmallocError, RuntimeError):
    """The pool was closed; its memory is gone."""


class ZoneError(ZsmallocError, RuntimeError):
    """A call that a zone's buddy allocator (:mod:`zsmalloc.mm.zone`, ``_engine.Zone``) refuses:
    an order outside 0..10, a pfn outside the zone, an unknown migratetype, a free of what
    is not an allocated block's head or of another order, or an allocation that the
    watermark or the free lists cannot serve.  The zone is left as it was."""


class CorruptionError(ZsmallocError, AssertionError):
    """``check()`` found state that contradicts the allocator's invariants."""
