"""Pool statistics as data, and as the kernel's debugfs text.

``format_classes`` prints what ``cat /sys/kernel/debug/zsmalloc/<pool>/classes``
prints on 6.4 and later (``zs_stats_size_show``): a header, one row per
canonical class, a blank line and a Total row, with the kernel's column widths,
so the two can be compared line by line.  The 10%..100% columns count the
zspages in fullness groups 1..11; group 0 (empty zspages awaiting a deferred
free) is not printed, as in the kernel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

_RATIO_COLUMNS = ("10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "99%", "100%")


@dataclass(frozen=True)
class ClassStats:
    """One canonical class, as one row of debugfs ``classes``."""

    index: int
    size: int
    inuse_ratio: tuple[int, ...]  # zspages in groups 10%..100% (11 values)
    obj_allocated: int
    obj_used: int
    pages_per_zspage: int
    objs_per_zspage: int
    freeable: int
    empty_zspages: int = 0  # group 0, not printed by the kernel

    @property
    def pages_used(self) -> int:
        return self.obj_allocated // self.objs_per_zspage * self.pages_per_zspage

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inuse_ratio"] = dict(zip(_RATIO_COLUMNS, self.inuse_ratio, strict=True))
        d["pages_used"] = self.pages_used
        return d


@dataclass(frozen=True)
class PoolStats:
    """Pool totals."""

    name: str
    pages_allocated: int
    pages_compacted: int
    objs_allocated: int
    objs_inuse: int
    bytes_requested: int
    freeable_pages: int
    objs_compacted: int
    compactions: int
    deferred_frees: int
    chain_size: int
    huge_class_size: int

    @property
    def overhead(self) -> float:
        """Pool bytes per byte the callers asked for (1.0 is perfect packing)."""
        if not self.bytes_requested:
            return 0.0
        return self.pages_allocated * 4096 / self.bytes_requested

    def to_dict(self) -> dict:
        d = asdict(self)
        d["overhead"] = self.overhead
        return d


def format_classes(rows: list[ClassStats]) -> str:
    """Render rows the way ``zs_stats_size_show`` does."""
    out = [
        " %5s %5s " % ("class", "size")
        + "".join("%9s " % c for c in _RATIO_COLUMNS)
        + "%13s %10s %10s %16s %8s"
        % ("obj_allocated", "obj_used", "pages_used", "pages_per_zspage", "freeable")
    ]
    totals = [0] * len(_RATIO_COLUMNS)
    total_objs = total_used = total_pages = total_freeable = 0
    for r in rows:
        for i, v in enumerate(r.inuse_ratio):
            totals[i] += v
        out.append(
            " %5u %5u " % (r.index, r.size)
            + "".join("%9u " % v for v in r.inuse_ratio)
            + "%13u %10u %10u %16d %8u"
            % (r.obj_allocated, r.obj_used, r.pages_used, r.pages_per_zspage, r.freeable)
        )
        total_objs += r.obj_allocated
        total_used += r.obj_used
        total_pages += r.pages_used
        total_freeable += r.freeable
    out.append("")
    out.append(
        " %5s %5s " % ("Total", "")
        + "".join("%9u " % v for v in totals)
        + "%13u %10u %10u %16s %8u" % (total_objs, total_used, total_pages, "", total_freeable)
    )
    return "\n".join(out) + "\n"
