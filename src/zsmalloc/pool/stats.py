"""Pool statistics as data, and as the kernel's debugfs text.

``format_classes`` prints what ``cat /sys/kernel/debug/zsmalloc/<pool>/classes``
prints on 6.4 and later (``zs_stats_size_show``): a header, one row per
canonical class, a blank line and a Total row, with the kernel's column widths,
so the two can be compared line by line.  The 10%..100% columns count the
zspages in fullness groups 1..11; group 0 (empty zspages awaiting a deferred
free) is not printed, as in the kernel.  Rows of a pool with the legacy
grouping print as 4.8 to 6.3 print them: ``almost_full`` and
``almost_empty`` columns in place of the ten ratios (full zspages are not
printed either).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

_RATIO_COLUMNS = ("10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "99%", "100%")
#: the legacy grouping's groups above empty, in group order (pool/legacy.py)
_LEGACY_GROUPS = ("almost_empty", "almost_full", "full")


@dataclass(frozen=True)
class ClassStats:
    """One canonical class, as one row of debugfs ``classes``."""

    index: int
    size: int
    #: zspages per group above empty: 10%..100% (11 values), or with the legacy
    #: grouping almost empty, almost full and full (3 values)
    inuse_ratio: tuple[int, ...]
    obj_allocated: int
    obj_used: int
    pages_per_zspage: int
    objs_per_zspage: int
    freeable: int
    empty_zspages: int = 0  # group 0, not printed by the kernel
    fullness: str = "ratio"  # the pool's grouping

    @property
    def pages_used(self) -> int:
        return self.obj_allocated // self.objs_per_zspage * self.pages_per_zspage

    def to_dict(self) -> dict:
        d = asdict(self)
        names = _LEGACY_GROUPS if self.fullness == "legacy" else _RATIO_COLUMNS
        d["inuse_ratio"] = dict(zip(names, self.inuse_ratio, strict=True))
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
    """Render rows the way ``zs_stats_size_show`` does (before 6.4 for legacy rows)."""
    if rows and rows[0].fullness == "legacy":
        return _format_legacy(rows)
    out = [" %5s %5s " % ("class", "size") + "".join("%9s " % c for c in _RATIO_COLUMNS) + _TAIL_HEADER]
    totals = [0] * len(_RATIO_COLUMNS)
    for r in rows:
        for i, v in enumerate(r.inuse_ratio):
            totals[i] += v
        out.append(" %5u %5u " % (r.index, r.size) + "".join("%9u " % v for v in r.inuse_ratio) + _tail(r))
    out.append("")
    out.append(" %5s %5s " % ("Total", "") + "".join("%9u " % v for v in totals) + _total_tail(rows))
    return "\n".join(out) + "\n"


_TAIL_HEADER = "%13s %10s %10s %16s %8s" % (
    "obj_allocated",
    "obj_used",
    "pages_used",
    "pages_per_zspage",
    "freeable",
)


def _tail(r: ClassStats) -> str:
    return "%13u %10u %10u %16d %8u" % (
        r.obj_allocated,
        r.obj_used,
        r.pages_used,
        r.pages_per_zspage,
        r.freeable,
    )


def _total_tail(rows: list[ClassStats]) -> str:
    return "%13u %10u %10u %16s %8u" % (
        sum(r.obj_allocated for r in rows),
        sum(r.obj_used for r in rows),
        sum(r.pages_used for r in rows),
        "",
        sum(r.freeable for r in rows),
    )


def _format_legacy(rows: list[ClassStats]) -> str:
    """6.1's columns: almost_full and almost_empty (groups 2 and 1), then as after 6.4."""
    out = [" %5s %5s %11s %12s " % ("class", "size", "almost_full", "almost_empty") + _TAIL_HEADER]
    for r in rows:
        almost_empty, almost_full, _ = r.inuse_ratio
        out.append(" %5u %5u %11u %12u " % (r.index, r.size, almost_full, almost_empty) + _tail(r))
    out.append("")
    full = sum(r.inuse_ratio[1] for r in rows)
    empty = sum(r.inuse_ratio[0] for r in rows)
    out.append(" %5s %5s %11u %12u " % ("Total", "", full, empty) + _total_tail(rows))
    return "\n".join(out) + "\n"
