"""Replay an allocation trace on a pool: one zs_malloc/zs_free sequence under any configuration.

A kernel engineer records the allocations of a real zsmalloc pool once, then
replays them here under other chain sizes, class rules or compaction
policies, and compares what each would cost, page for page, with the
kernel's own ``classes`` table.

The trace format
----------------
Text, one operation per line; blank lines and ``#`` comments are skipped::

    m ID SIZE      zs_malloc(SIZE) returned the object called ID
    f ID           zs_free(ID)
    c              zs_compact

``ID`` is any token without blanks (the kernel's handle, in hex, say); an ID
may come back once it is freed, as handles do, but an allocation of an ID
that is still live is an error.  An allocation that failed is
skipped: ID ``0`` (older kernels' zs_malloc returns 0) or an error pointer
in hex, ``fffffffffffff001`` to ``ffffffffffffffff`` (newer ones return
``ERR_PTR(-ENOMEM)``).  A free of an
ID the trace never allocated (the object was live when recording began) is
counted and skipped.  Anything else is a :class:`TraceError` that names the
line.

Recording one (bpftrace, on the machine whose pool is of interest; with
several pools, zram0 and zswap say, filter on ``arg0``, the pool)::

    bpftrace -e '
      kprobe:zs_malloc { @size[tid] = arg1; }
      kretprobe:zs_malloc /@size[tid]/ { printf("m %lx %d\\n", retval, @size[tid]); delete(@size[tid]); }
      kprobe:zs_free { printf("f %lx\\n", arg1); }' > trace.txt

:func:`synthetic_trace` writes a trace from a size mix of
:mod:`zsmalloc.workloads` (fill to a live set, then churn), for trying the
tool without a kernel at hand.

A leaf above ``zsmalloc.pool``: nothing below imports it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import zsmalloc
from zsmalloc.errors import ZsmallocError
from zsmalloc.pool import RULE_MIN_WASTE
from zsmalloc.pool.size_class import ZS_MAX_ALLOC_SIZE
from zsmalloc.workloads import get_mix

MALLOC, FREE, COMPACT = "m", "f", "c"
_MAX_ERRNO = 4095  # IS_ERR_VALUE: the top 4095 values of an unsigned long are error pointers

#: one operation: (kind, id, size); id is "" and size 0 where the kind has none
Op = tuple[str, str, int]


class TraceError(ZsmallocError, ValueError):
    """A trace line that is not an operation of the format."""


def failed_allocation(ident: str) -> bool:
    """Whether a traced zs_malloc result is a failure: 0, or an error pointer in hex."""
    if ident == "0":
        return True
    try:
        value = int(ident, 16)
    except ValueError:
        return False
    return (1 << 64) - _MAX_ERRNO <= value < 1 << 64


def parse_trace(lines: Iterable[str]) -> Iterator[Op]:
    """The operations of a trace, checked line by line (:class:`TraceError` names a bad one)."""
    live: dict[str, int] = {}  # id -> the line that allocated it
    for n, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        kind = fields[0]
        if kind == MALLOC and len(fields) == 3:
            try:
                size = int(fields[2])
            except ValueError:
                raise TraceError(f"line {n}: size {fields[2]!r} is not an integer") from None
            if not 1 <= size <= ZS_MAX_ALLOC_SIZE:
                raise TraceError(f"line {n}: size {size} is outside 1..{ZS_MAX_ALLOC_SIZE}")
            ident = fields[1]
            if ident in live:
                raise TraceError(f"line {n}: {ident!r} is allocated again, live since line {live[ident]}")
            if not failed_allocation(ident):
                live[ident] = n
            yield MALLOC, ident, size
        elif kind == FREE and len(fields) == 2:
            live.pop(fields[1], None)
            yield FREE, fields[1], 0
        elif kind == COMPACT and len(fields) == 1:
            yield COMPACT, "", 0
        else:
            raise TraceError(f"line {n}: expected 'm ID SIZE', 'f ID' or 'c', got {line.strip()!r}")


def synthetic_trace(mix: str, live: int, ops: int, seed: int = 0) -> Iterator[str]:
    """Trace lines: ``live`` allocations of the mix, then ``ops`` steps of free-one, allocate-one."""
    sizes = get_mix(mix)
    rng = random.Random(seed)
    draw = sizes.draw
    ids: list[int] = []
    next_id = 1
    yield f"# synthetic: {mix}, {live} live objects, then {ops} frees and allocations (seed {seed})"
    for _ in range(live):
        yield f"m {next_id:x} {draw(rng)}"
        ids.append(next_id)
        next_id += 1
    for _ in range(ops):
        k = rng.randrange(len(ids)) if ids else -1
        if k >= 0:
            ids[k], ids[-1] = ids[-1], ids[k]
            yield f"f {ids.pop():x}"
        yield f"m {next_id:x} {draw(rng)}"
        ids.append(next_id)
        next_id += 1


@dataclass
class Snapshot:
    """The pool after ``op`` operations."""

    op: int
    pages: int
    objects: int
    bytes_requested: int

    @property
    def overhead(self) -> float:
        return self.pages * 4096 / self.bytes_requested if self.bytes_requested else 0.0


@dataclass
class ReplayReport:
    """What one replay did and what the pool looked like."""

    chain_size: int
    class_rule: str
    #: the pool's fullness grouping, which its compaction follows
    fullness: str
    compact_every: int
    mallocs: int = 0
    frees: int = 0
    compactions: int = 0
    failed_mallocs_skipped: int = 0
    unknown_frees_skipped: int = 0
    pages_peak: int = 0
    pages_compacted: int = 0
    seconds: float = 0.0
    final: Snapshot | None = None
    snapshots: list[Snapshot] = field(default_factory=list)
    classes: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["final_overhead"] = self.final.overhead if self.final else 0.0
        return d


def replay(
    ops: Iterable[Op],
    *,
    chain_size: int = 8,
    class_rule: str = RULE_MIN_WASTE,
    fullness: str = "ratio",
    compact_every: int = 0,
    snapshot_every: int = 0,
    write: bool = False,
) -> ReplayReport:
    """Run the operations on a fresh pool and report.

    The pool groups its zspages as ``fullness`` says ("ratio", 6.4 on, or
    "legacy", before), and compacts accordingly.  ``compact_every`` runs
    ``zs_compact`` after every so many
    operations, besides the trace's own ``c`` lines; ``snapshot_every``
    records the pool's size as it goes; ``write`` fills each object with
    bytes (the layout does not depend on it; the run takes longer).  A
    malloc of an id that is still live raises :class:`TraceError`.
    """
    if compact_every < 0 or snapshot_every < 0:
        raise ValueError(
            f"compact_every and snapshot_every must be >= 0, not {compact_every}, {snapshot_every}"
        )
    report = ReplayReport(chain_size, class_rule, fullness, compact_every)
    live: dict[str, tuple[int, int]] = {}  # trace id -> (handle, size)
    payload = bytes(range(256)) * (ZS_MAX_ALLOC_SIZE // 256)
    requested = 0
    t0 = time.perf_counter()
    with zsmalloc.Pool(
        name="replay", chain_size=chain_size, class_rule=class_rule, fullness=fullness
    ) as pool:
        malloc, free, pool_write = pool.malloc, pool.free, pool.write
        n = 0
        for kind, ident, size in ops:
            n += 1
            if kind == MALLOC:
                if failed_allocation(ident):
                    report.failed_mallocs_skipped += 1
                    continue
                if ident in live:
                    raise TraceError(f"operation {n}: {ident!r} is allocated again while live")
                h = malloc(size)
                if write:
                    pool_write(h, payload[:size])
                live[ident] = (h, size)
                requested += size
                report.mallocs += 1
            elif kind == FREE:
                entry = live.pop(ident, None)
                if entry is None:
                    report.unknown_frees_skipped += 1
                    continue
                requested -= entry[1]
                free(entry[0])
                report.frees += 1
            else:
                report.pages_compacted += pool.compact()
                report.compactions += 1
            pages = pool.total_pages
            if pages > report.pages_peak:
                report.pages_peak = pages
            if compact_every and n % compact_every == 0:
                report.pages_compacted += pool.compact()
                report.compactions += 1
            if snapshot_every and n % snapshot_every == 0:
                report.snapshots.append(Snapshot(n, pool.total_pages, len(live), requested))
        pool.flush_deferred()
        report.final = Snapshot(n, pool.total_pages, len(live), requested)
        report.classes = pool.format_classes()
        pool.check()
    report.seconds = time.perf_counter() - t0
    return report
