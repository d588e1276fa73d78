"""Giving the C heap's free memory back to the OS.

Python objects and the arrays that hold page descriptors and handle tables
live in the C heap.  When a big table shrinks, glibc keeps the freed memory
resident until ``malloc_trim`` is called; the pool and the arena call it after
they shrink a table by a lot, so that the process RSS follows what is in use.
"""

import ctypes


def _find_libc_call(name: str):
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _find_libc_call("malloc_trim")


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
