"""Workloads: seeded object sizes and realistic page contents for zsmalloc and zram.

``sizes``
    Object-size mixes fitted to published zram figures (KERNEL.md section 8):
    :data:`MIXES`, :func:`get_mix`.  What the pool benchmarks allocate.
"""

from zsmalloc.workloads.sizes import MAX_SIZE, MIXES, SizeMix, get_mix

__all__ = ["MAX_SIZE", "MIXES", "SizeMix", "get_mix"]
