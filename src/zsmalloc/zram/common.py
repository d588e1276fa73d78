"""What both zram devices share: the slot flags, ``SlotInfo``, and the checks of the constructor's arguments.

``zsmalloc.zram.device.ZramDevice`` (Python, the model's device) and
``zsmalloc.zram.engine.ZramDevice`` (the engine's, ``zsmalloc._engine.Zram``)
take the same arguments and describe a slot the same way; the flag bits are
the same numbers in both (see the slot table drawn in
:mod:`zsmalloc.zram.device` and in the engine's ``zram/mod.rs``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zsmalloc.zram.codecs import ZSTD_FRAMES
from zsmalloc.zram.stats import BdStat, IoStat, MmStat, RecompStat

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

# slot flags (enum zram_pageflags)
ZRAM_SAME = 1 << 0  # same-filled: the handle word holds the fill word
ZRAM_WB = 1 << 1  # written back: the handle word holds the backing block
ZRAM_HUGE = 1 << 2  # stored uncompressed, 4096 bytes
ZRAM_IDLE = 1 << 3  # not accessed since the last mark_idle()
ZRAM_INCOMPRESSIBLE = 1 << 4  # no secondary algorithm could shrink it
ZRAM_COMP_PRIORITY_SHIFT = 5  # bits 5-6: which algorithm compressed it
ZRAM_COMP_PRIORITY_MASK = 3 << ZRAM_COMP_PRIORITY_SHIFT
ZRAM_MAX_COMPS = 4  # the primary algorithm and up to three for recompression
#: the keys ``algorithm_params`` takes (``frame``, zstd's framing, and ``library``, a libzstd to
#: load for it, are this project's own)
ALGORITHM_PARAMS = frozenset({"level", "dictionary", "frame", "library"})


@dataclass(frozen=True)
class SlotInfo:
    """One slot's state, decoded (for tests, tools and debugging)."""

    index: int
    allocated: bool
    same: bool
    written_back: bool
    huge: bool
    idle: bool
    incompressible: bool
    priority: int
    algorithm: str | None
    #: stored object size: compressed length, 4096 if huge, 0 if same-filled, written back or empty
    size: int
    #: pool handle, fill word (same-filled) or backing block (written back)
    handle: int


def slot_info(index: int, flags: int, handle: int, size: int, algorithms: Sequence[str]) -> SlotInfo:
    """A slot's words, decoded; ``algorithms`` by priority."""
    prio = (flags & ZRAM_COMP_PRIORITY_MASK) >> ZRAM_COMP_PRIORITY_SHIFT
    allocated = bool(handle or flags)
    compressed = allocated and not flags & (ZRAM_SAME | ZRAM_WB)
    return SlotInfo(
        index=index,
        allocated=allocated,
        same=bool(flags & ZRAM_SAME),
        written_back=bool(flags & ZRAM_WB),
        huge=bool(flags & ZRAM_HUGE),
        idle=bool(flags & ZRAM_IDLE),
        incompressible=bool(flags & ZRAM_INCOMPRESSIBLE),
        priority=prio,
        algorithm=algorithms[prio] if compressed and not flags & ZRAM_HUGE else None,
        size=size,
        handle=handle,
    )


def check_device_args(
    disksize: int,
    mem_limit: int,
    backing_file: str | os.PathLike[str] | None,
    backing_blocks: int | None,
) -> None:
    """The checks of ``ZramDevice(...)``'s sizes, before anything is made."""
    if disksize <= 0:
        raise ValueError(f"disksize must be positive, not {disksize}")
    if mem_limit < 0:
        raise ValueError(f"mem_limit must be >= 0, not {mem_limit}")
    if backing_blocks is not None:
        if backing_file is None:
            raise ValueError("backing_blocks sizes a backing_file: give one")
        if not isinstance(backing_blocks, int) or isinstance(backing_blocks, bool) or backing_blocks < 1:
            raise ValueError(f"backing_blocks must be a positive int, not {backing_blocks!r}")


def secondary_algorithms(recompress_algorithm: Any) -> list[Any]:
    """``recompress_algorithm`` (None, one, or a sequence) as a list, at most three."""
    if recompress_algorithm is None:
        secondary: list[Any] = []
    elif isinstance(recompress_algorithm, str) or not isinstance(recompress_algorithm, Sequence):
        secondary = [recompress_algorithm]
    else:
        secondary = list(recompress_algorithm)
    if len(secondary) >= ZRAM_MAX_COMPS:
        raise ValueError(f"at most {ZRAM_MAX_COMPS - 1} recompression algorithms")
    return secondary


def algorithm_params(params: dict | None) -> tuple[int | None, bytes | None, str | None, str | None]:
    """``algorithm_params``, checked: (level, dictionary, zstd frame, zstd library path)."""
    params = params or {}
    unknown = sorted(map(repr, set(params) - ALGORITHM_PARAMS))
    if unknown:
        raise ValueError(f"unknown algorithm_params {', '.join(unknown)}; known: {sorted(ALGORITHM_PARAMS)}")
    level = params.get("level")
    if level is not None and (not isinstance(level, int) or isinstance(level, bool)):
        raise TypeError(f"algorithm_params level must be an int, not {level!r}")
    dictionary = params.get("dictionary")
    frame = params.get("frame")
    if frame is not None and frame not in ZSTD_FRAMES:
        raise ValueError(f"algorithm_params frame must be one of {ZSTD_FRAMES}, not {frame!r}")
    library = params.get("library")
    if library is not None:
        library = os.fspath(library)
    return level, None if dictionary is None else bytes(dictionary), frame, library


class DeviceText:
    """What both devices derive from their stats and configuration: the kernel's text, the
    context-manager protocol and the repr.  A device provides ``algorithms``, the
    ``*_stat()`` calls, ``close()``, ``name``, ``nr_pages``, ``pages_stored``, ``pool``
    and ``_closed``."""

    #: after the name in the repr: which implementation
    _label = ""
    name: str
    nr_pages: int
    _closed: bool
    pool: Any

    if TYPE_CHECKING:  # what each device provides

        @property
        def algorithms(self) -> tuple[str, ...]: ...
        @property
        def pages_stored(self) -> int: ...
        def mm_stat(self) -> MmStat: ...
        def io_stat(self) -> IoStat: ...
        def bd_stat(self) -> BdStat: ...
        def recomp_stat(self) -> RecompStat: ...
        def close(self) -> None: ...

    @property
    def algorithm(self) -> str:
        """The primary compression algorithm (``comp_algorithm``)."""
        return self.algorithms[0]

    def format_mm_stat(self) -> str:
        """``cat /sys/block/zram0/mm_stat``."""
        return self.mm_stat().format()

    def format_io_stat(self) -> str:
        return self.io_stat().format()

    def format_bd_stat(self) -> str:
        return self.bd_stat().format()

    def format_recomp_stat(self) -> str:
        return self.recomp_stat().format()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"<ZramDevice {self.name!r}{self._label}: closed>"
        return (
            f"<ZramDevice {self.name!r}{self._label}: {self.nr_pages} pages, {self.algorithm}, "
            f"{self.pages_stored} stored, pool {self.pool.total_pages} pages>"
        )
