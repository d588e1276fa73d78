"""zram's statistics, as dataclasses, and the one-line texts of its sysfs files.

The format strings are those of drivers/block/zram/zram_drv.c: each field
right-aligned in 8 columns (``%8llu``, ``%8lu`` and ``%8ld`` all print a
decimal integer here), separated by one space, ending in a newline.

``mm_stat``  (mm_stat_show)
    orig_data_size   pages stored * 4096 (same-filled and written-back pages included)
    compr_data_size  sum of the stored objects' sizes (4096 for a huge page; 0 for a
                     same-filled or written-back page)
    mem_used_total   the pool's pages * 4096, fragmentation included
    mem_limit        the limit in bytes, 0 for none
    mem_used_max     the high-water mark of mem_used_total, in bytes
    same_pages       pages filled with one repeated 8-byte word (no pool memory)
    pages_compacted  pages freed by the pool's compaction
    huge_pages       pages stored uncompressed (4096 bytes each)
    huge_pages_since huge pages ever stored since the device was set up

``io_stat``  (io_stat_show): failed_reads failed_writes invalid_io notify_free

``bd_stat``  (bd_stat_show, in 4 KiB units): bd_count bd_reads bd_writes

``recomp_stat`` is ours (the kernel keeps no such file): the counters of
``recompress`` in the same one-line style.
"""

from __future__ import annotations

from dataclasses import asdict, astuple, dataclass

# mm_stat_show: "%8llu %8llu %8llu %8lu %8ld %8llu %8lu %8llu %8llu\n"
MM_STAT_FORMAT = "%8d %8d %8d %8d %8d %8d %8d %8d %8d\n"
# io_stat_show: "%8llu %8llu %8llu %8llu\n"
IO_STAT_FORMAT = "%8d %8d %8d %8d\n"
# bd_stat_show: "%8llu %8llu %8llu\n"
BD_STAT_FORMAT = "%8d %8d %8d\n"
RECOMP_STAT_FORMAT = "%8d %8d %8d %8d %8d %8d %8d\n"


class _Stat:
    def to_dict(self) -> dict[str, int]:
        return asdict(self)  # type: ignore[call-overload]

    def values(self) -> tuple[int, ...]:
        return astuple(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class MmStat(_Stat):
    """``/sys/block/zram<id>/mm_stat``: all sizes in bytes except the page counts."""

    orig_data_size: int
    compr_data_size: int
    mem_used_total: int
    mem_limit: int
    mem_used_max: int
    same_pages: int
    pages_compacted: int
    huge_pages: int
    huge_pages_since: int

    def format(self) -> str:
        return MM_STAT_FORMAT % self.values()  # the kernel's format string


@dataclass(frozen=True)
class IoStat(_Stat):
    """``/sys/block/zram<id>/io_stat``: counts of requests."""

    failed_reads: int
    failed_writes: int
    invalid_io: int
    notify_free: int

    def format(self) -> str:
        return IO_STAT_FORMAT % self.values()


@dataclass(frozen=True)
class BdStat(_Stat):
    """``/sys/block/zram<id>/bd_stat``: backing-device pages in use, read, written (4 KiB units)."""

    bd_count: int
    bd_reads: int
    bd_writes: int

    def format(self) -> str:
        return BD_STAT_FORMAT % self.values()


@dataclass(frozen=True)
class RecompStat(_Stat):
    """What ``recompress`` did, cumulative.

    attempted         pages a secondary algorithm was run on
    recompressed      pages whose new object landed in a smaller size class (kept)
    failed            pages where no algorithm found a smaller class (old object kept)
    incompressible    pages marked INCOMPRESSIBLE (the last algorithm failed too)
    huge_recompressed huge pages that became compressed objects
    bytes_before      old object sizes of the recompressed pages
    bytes_after       new object sizes of the recompressed pages
    """

    attempted: int
    recompressed: int
    failed: int
    incompressible: int
    huge_recompressed: int
    bytes_before: int
    bytes_after: int

    def format(self) -> str:
        return RECOMP_STAT_FORMAT % self.values()


__all__ = ["BdStat", "IoStat", "MmStat", "RecompStat"]
