"""The model: the Python implementation of the allocator and its VM.

``zsmalloc.model.Pool``, ``zsmalloc.model.Memory`` and ``zsmalloc.model.Zone``
(a zone's buddy allocator) are the executable reference, written to be read
beside mm/zsmalloc.c, mm/migrate.c and mm/page_alloc.c, and the oracle that
the engine (``zsmalloc.engine``, Rust) is tested against step by step.  They
live in ``zsmalloc.pool`` and ``zsmalloc.mm``; this package is the name the
rest of the library and the tests use for them.
"""

from zsmalloc.mm import Memory, Zone
from zsmalloc.pool import Pool

__all__ = ["Memory", "Pool", "Zone"]
