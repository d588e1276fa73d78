"""Event counters kept in an array, not in Python int attributes.

A counter that only grows (pages allocated so far, pages migrated) would be a
new Python int object after every update, made wherever the small-object
allocator had room at that moment: after a large fill, those last few ints
keep otherwise empty 1 MiB arenas of Python's allocator resident.  Kept in an
``array('q')``, a counter is 8 bytes in a buffer made once, and the process's
memory goes back to where it was when the pool empties.

``c["name"] += n`` reads and writes one slot; ``dict(c.items())`` or
``c.to_dict()`` gives a snapshot.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator


class Counters:
    """Named event counters, each 8 bytes in one array."""

    __slots__ = ("_index", "_values")

    def __init__(self, names: Iterable[str]) -> None:
        self._index = {name: i for i, name in enumerate(names)}
        self._values = array("q", bytes(8 * len(self._index)))

    def __getitem__(self, name: str) -> int:
        return self._values[self._index[name]]

    def __setitem__(self, name: str, value: int) -> None:
        self._values[self._index[name]] = value

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def items(self) -> Iterator[tuple[str, int]]:
        values = self._values
        return ((name, values[i]) for name, i in self._index.items())

    def to_dict(self) -> dict[str, int]:
        return dict(self.items())

    def clear(self) -> None:
        for i in range(len(self._values)):
            self._values[i] = 0

    def __repr__(self) -> str:
        return f"Counters({self.to_dict()})"
