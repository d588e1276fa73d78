"""What both implementations of ``Pool`` share in Python: truth, handle membership, pickling.

The model's ``Pool`` and the engine's (``zsmalloc.engine.Pool``) both derive
from :class:`PoolProtocols`; each provides ``handle_size``.
"""

from __future__ import annotations

import operator
from typing import NoReturn, Protocol

from zsmalloc.errors import InvalidHandleError, PoolClosedError


class _KnowsHandles(Protocol):
    def handle_size(self, handle: int) -> int: ...


class PoolProtocols:
    """``bool(pool)``, ``handle in pool``, and a clear refusal to pickle."""

    def __bool__(self) -> bool:
        """A pool is true even when it holds nothing (``len`` counts its objects)."""
        return True

    def __contains__(self: _KnowsHandles, handle: object) -> bool:
        """Is ``handle`` a live handle of this pool?"""
        try:
            self.handle_size(operator.index(handle))  # type: ignore[arg-type]
        except (InvalidHandleError, PoolClosedError, TypeError):
            return False
        return True

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a Pool cannot be pickled: its objects live in this process's memory; "
            "zsmalloc.Store is a mapping that pickles with its contents"
        )
