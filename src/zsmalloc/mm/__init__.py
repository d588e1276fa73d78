"""The model's VM: page frames in one mmap arena, page descriptors, page locks.

Nothing here knows that zsmalloc exists; owners talk to it through frames,
descriptor words and registered movable-page callbacks.
"""

from zsmalloc.mm.memory import (
    PAGE_SHIFT,
    PAGE_SIZE,
    Memory,
    PG_isolated,
    PG_locked,
    PG_movable,
)

__all__ = ["PAGE_SHIFT", "PAGE_SIZE", "Memory", "PG_isolated", "PG_locked", "PG_movable"]
