"""Giving the C heap's free memory back to the OS.

Python objects and the arrays that hold page descriptors and handle tables
live in the C heap.  When a big table shrinks, glibc keeps the freed memory
resident until ``malloc_trim`` is called; the pool and the arena call it after
they shrink a table by a lot, so that the process RSS follows what is in use.

A server that builds large transient buffers (the NBD export's read replies)
has a second problem: glibc serves blocks of 128 KiB and more with their own
``mmap`` and unmaps them on free, but each such free raises its threshold
(up to 32 MiB), so later buffers come from the heaps of the threads that
made them and stay resident there.  :func:`fix_mmap_threshold` pins the
threshold, which turns the dynamic rise off.
"""

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def _find_libc_call(name: str):
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _find_libc_call("malloc_trim")
_mallopt = _find_libc_call("mallopt")


def trim_process_heap() -> bool:
    """Ask the C heap to give its free memory back to the OS (glibc ``malloc_trim(0)``).

    Large tables that shrink (a pool's handle table after most objects are
    freed) leave free memory inside the C heap, which glibc keeps resident
    until trimmed.  Returns False where there is no such call.
    """
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def fix_mmap_threshold(nbytes: int = 128 << 10) -> bool:
    """Serve every C heap block of ``nbytes`` or more by its own mmap, for good (``mallopt``).

    Process-wide: meant for a process that is a server (``zsmalloc serve``),
    whose large transient buffers should leave RSS when freed.  Returns False
    where there is no such call.
    """
    if _mallopt is None:
        return False
    return bool(_mallopt(M_MMAP_THRESHOLD, nbytes))
