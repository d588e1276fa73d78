"""The model: the Python implementation of the allocator and its VM.

``zsmalloc.model.Pool`` and ``zsmalloc.model.Memory`` are the executable
reference, written to be read beside mm/zsmalloc.c and mm/migrate.c, and the
oracle that the engine (``zsmalloc.engine``, Rust) is tested against step by
step.  They live in ``zsmalloc.pool`` and ``zsmalloc.mm``; this package is
the name the rest of the library and the tests use for them.
"""

from zsmalloc.mm import Memory
from zsmalloc.pool import Pool

__all__ = ["Memory", "Pool"]
