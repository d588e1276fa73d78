"""What runs inside the guest, and what the host reads back from its serial console.

This module owns the guest's side of the protocol: :func:`init_script`
writes the busybox ``/init`` that loads the modules and performs each
:class:`Run`, and :func:`parse_console` turns the console text back into
numbers.  Every line meant for the host starts with ``@@ZSVM``::

    @@ZSVM begin <uname -r>
    @@ZSVM run <name>                        for each run:
    @@ZSVM stat <name> fill mm_stat <9 numbers>      comp_algorithm, disksize, dd the image
    @@ZSVM stat <name> fill io_stat <4 numbers>
    @@ZSVM stat <name> fill bd_stat <3 numbers>
    @@ZSVM stat <name> discard ...                   after blkdiscard of each range
    @@ZSVM stat <name> compact ...                   after echo 1 > compact
    @@ZSVM trace <name> fill m <handle> <size>       with kprobes: zs_malloc after the fill,
    @@ZSVM trace <name> discard f <handle>           zs_free after the discards
    @@ZSVM bytes <name> <event> <len> <word>...      with samples: a sampled page read back
                                                     after the fill, a part of the compressed
                                                     object the kernel decompressed (64-bit
                                                     words, hex; four events per object)
    @@ZSVM overrun <name> <stage> overrun: <n>       events the trace buffer lost (0)
    @@ZSVM error <what failed>                       (any step; the run goes on)
    @@ZSVM end                                       then poweroff -f

Lines the kernel interleaves are ignored; a ``\\r`` from the serial line is
stripped.  Field names are those of :mod:`zsmalloc.zram.stats`, so a guest's
figures and ``zsmalloc stats --json`` have the same keys.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field

from zsmalloc.zram.stats import BdStat, IoStat, MmStat

PAGE = 4096
MARK = "@@ZSVM"
STAGES = ("fill", "discard", "compact")
#: the sysfs files read at each stage, with their fields in the kernel's order
STAT_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(f.name for f in dataclasses.fields(cls))
    for name, cls in (("mm_stat", MmStat), ("io_stat", IoStat), ("bd_stat", BdStat))
}
_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class Run:
    """One device lifetime in the guest: algorithm, image, discards (FIRST, COUNT pages), compaction."""

    name: str
    image: str  # the image's path inside the guest
    algorithm: str
    disksize: int
    discards: tuple[tuple[int, int], ...]
    #: pages read back after the fill, with their compressed bytes captured (with ``trace``)
    samples: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for text in (self.name, self.algorithm):
            if not _NAME.fullmatch(text):
                raise ValueError(f"{text!r} is not a plain name (letters, digits, _.+-)")
        if self.disksize <= 0 or self.disksize % PAGE:
            raise ValueError(f"disksize {self.disksize} is not a positive multiple of {PAGE}")
        for first, count in self.discards:
            if first < 0 or count <= 0 or (first + count) * PAGE > self.disksize:
                raise ValueError(f"discard of pages [{first}, {first + count}) is outside the device")
        if any(not 0 <= i < self.disksize // PAGE for i in self.samples):
            raise ValueError("a sampled page is outside the device")


#: kprobe events (tracefs kprobe_events syntax, x86-64 registers): zs_malloc(pool, size) and its
#: return value, the handle; zs_free(pool, handle)
KPROBES = (
    "p:zsm zs_malloc size=%si:u64",
    "r:zsmr zs_malloc ret=$retval:x64",
    "p:zsf zs_free handle=%si:x64",
)
#: the compressed object each decompression reads, whichever codec's: LZ4_decompress_safe(src,
#: dst, src_len, cap) and zstd_decompress_dctx(dctx, dst, cap, src, src_len).  A probe fetches
#: arrays of at most 64 elements, an event holds less than 3 KiB, and 6.1 prints at most a
#: page of text a line, so four probes on each function of at most two arrays: words 0-447
#: (3584 bytes, past the largest object zram decompresses, below the huge class size of 3264
#: bytes and less).  What lies after the object is read too, and cut off on the host.
CAPTURE_PARTS = ((0, 2), (2, 4), (4, 6), (6, 7))
BYTE_EVENTS = tuple(f"{codec}{part}" for codec in ("lz4d", "zstdd") for part in range(len(CAPTURE_PARTS)))
BYTE_PROBES = tuple(
    f"p:{event}{part} {func} len={length}:u32 "
    + " ".join(f"b{k}=+{512 * k}({src}):x64[64]" for k in range(first, last))
    for event, func, src, length in (
        ("lz4d", "LZ4_decompress_safe", "%di", "%dx"),
        ("zstdd", "zstd_decompress_dctx", "%cx", "%r8"),
    )
    for part, (first, last) in enumerate(CAPTURE_PARTS)
)
TRACEFS = "/sys/kernel/tracing"
# the trace buffer's zsm/zsmr/zsf events as replay lines ("m HANDLE SIZE", "f HANDLE"), one CPU
_TRACE_AWK = (
    "/ zsm: / { for (i = 1; i <= NF; i++) if ($i ~ /^size=/) s = substr($i, 6) } "
    '/ zsmr: / { for (i = 1; i <= NF; i++) if ($i ~ /^ret=0x/) print p, "m", substr($i, 7), s } '
    '/ zsf: / { for (i = 1; i <= NF; i++) if ($i ~ /^handle=0x/) print p, "f", substr($i, 10) }'
)
# the byte probes' events as "EVENT LEN WORD...": the arrays' braces and commas become spaces
_BYTES_AWK = (
    '/ (lz4d|zstdd)[0-9]: / { w = ""; for (i = 1; i <= NF; i++) { '
    "if ($i ~ /^(lz4d|zstdd)[0-9]:$/) e = substr($i, 1, length($i) - 1); "
    "else if ($i ~ /^len=/) n = substr($i, 5); "
    'else if ($i ~ /^b[0-9]+=\\{/) { v = substr($i, index($i, "{") + 1); gsub(/[},]/, " ", v); '
    'w = w " " v } } '
    "print p, e, n, w }"
)


def _probe_failure(probe: str) -> str:
    """What the guest says when a probe cannot be set: its event and the function it names."""
    event, function = probe.split()[:2]
    return f"kprobe {event} on {function} refused: no such function in this kernel, or its arguments moved"


def init_script(modules: list[str], runs: list[Run], *, dev: str = "zram0", trace: bool = False) -> str:
    """The guest's /init (busybox sh): load ``modules`` from /lib/modules/NAME.ko in order, do ``runs``.

    With ``trace``, kprobes on zs_malloc and zs_free record the pool's own
    allocations during the fill and the discards, printed as ``@@ZSVM trace
    RUN STAGE m HANDLE SIZE`` / ``... f HANDLE`` lines after each stage.
    """
    sys = f"/sys/block/{dev}"
    lines = [
        "#!/bin/busybox sh",
        "/bin/busybox mkdir -p /bin /proc /sys /dev /tmp",
        "/bin/busybox --install -s /bin",
        "export PATH=/bin",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs devtmpfs /dev",
        f'fail() {{ echo "{MARK} error $*"; }}',
        f'echo "{MARK} begin $(uname -r)"',
    ]
    lines += [f"insmod /lib/modules/{m}.ko || fail insmod {m}" for m in modules]
    lines += [
        f"i=0; while [ ! -e /dev/{dev} ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done",
        "stat_all() {",
        *(
            f'  echo "{MARK} stat $1 $2 {f} $(cat {sys}/{f} 2>/dev/null || echo missing)"'
            for f in STAT_FIELDS
        ),
        "}",
    ]
    if trace:
        t = TRACEFS
        lines += [
            f"mount -t tracefs tracefs {t} || fail tracefs",
            f"echo 16384 > {t}/buffer_size_kb",
            *(f"echo '{k}' >> {t}/kprobe_events || fail {_probe_failure(k)}" for k in KPROBES),
            *(
                f"echo '{k}' >> {t}/kprobe_events || fail {_probe_failure(k)}"
                for k in BYTE_PROBES
                if any(run.samples for run in runs)
            ),
            "dump_trace() {",
            f"  echo 0 > {t}/tracing_on",
            f'  echo "{MARK} overrun $1 $2 $(grep ^overrun: {t}/per_cpu/cpu0/stats)"',
            f"  awk -v p=\"{MARK} trace $1 $2\" '{_TRACE_AWK}' {t}/trace",
            f"  echo > {t}/trace",
            "}",
            "dump_bytes() {",
            f"  echo 0 > {t}/tracing_on",
            f'  echo "{MARK} overrun $1 bytes $(grep ^overrun: {t}/per_cpu/cpu0/stats)"',
            f"  awk -v p=\"{MARK} bytes $1\" '{_BYTES_AWK}' {t}/trace",
            f"  echo > {t}/trace",
            "}",
        ]
    for run in runs:
        image = shlex.quote(run.image)
        lines += [
            f'echo "{MARK} run {run.name}"',
            f"echo {run.algorithm} > {sys}/comp_algorithm || fail {run.name} comp_algorithm",
            f"echo {run.disksize} > {sys}/disksize || fail {run.name} disksize",
        ]
        if trace:
            lines += [
                f"echo > {TRACEFS}/trace",
                f"echo 1 > {TRACEFS}/events/kprobes/enable || fail {run.name} kprobes",
                f"echo 1 > {TRACEFS}/tracing_on",
            ]
        lines += [
            # O_DIRECT, one page a write: zram sees the pages in index order (the trace's order)
            f"dd if={image} of=/dev/{dev} bs={PAGE} oflag=direct 2>/dev/null || fail {run.name} dd",
            f"stat_all {run.name} fill",
        ]
        if trace:
            lines += [f"dump_trace {run.name} fill"]
        if trace and run.samples:
            kp = f"{TRACEFS}/events/kprobes"
            lines += [
                f"echo 0 > {kp}/enable",
                *(f"echo 1 > {kp}/{e}/enable || fail {run.name} {e}" for e in BYTE_EVENTS),
                f"echo 1 > {TRACEFS}/tracing_on",
                *(
                    f"dd if=/dev/{dev} of=/dev/null bs={PAGE} skip={i} count=1 iflag=direct 2>/dev/null"
                    f" || fail {run.name} read {i}"
                    for i in run.samples
                ),
                f"dump_bytes {run.name}",
                f"echo 0 > {kp}/enable",
                *(f"echo 1 > {kp}/{e}/enable || fail {run.name} {e}" for e in ("zsm", "zsmr", "zsf")),
            ]
        if trace:
            lines += [f"echo 1 > {TRACEFS}/tracing_on"]
        lines += [
            f"blkdiscard -o {first * PAGE} -l {count * PAGE} /dev/{dev} || fail {run.name} blkdiscard {first}"
            for first, count in run.discards
        ]
        lines += [f"stat_all {run.name} discard"]
        if trace:
            lines += [f"dump_trace {run.name} discard", f"echo 0 > {TRACEFS}/events/kprobes/enable"]
        lines += [
            f"echo 1 > {sys}/compact || fail {run.name} compact",
            f"stat_all {run.name} compact",
            f"echo 1 > {sys}/reset || fail {run.name} reset",
        ]
    lines += [f'echo "{MARK} end"', "sync", "poweroff -f", ""]
    return "\n".join(lines)


@dataclass
class ConsoleReport:
    """What the guest printed: the release, per run and stage the fields of each stat file, errors."""

    release: str | None = None
    ended: bool = False
    runs: dict[str, dict[str, dict[str, dict[str, int]]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: run -> stage -> the pool's operations in that stage, as replay trace lines ("m ID SIZE", "f ID")
    traces: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    #: run -> event -> (length, the words' bytes) of each decompression, in the order they ran
    captures: dict[str, dict[str, list[tuple[int, bytes]]]] = field(default_factory=dict)

    def objects(self, run: str) -> list[bytes]:
        """The compressed objects the kernel decompressed in ``run``, each put together from its parts."""
        objects = []
        for codec in ("lz4d", "zstdd"):
            parts = [self.captures.get(run, {}).get(f"{codec}{p}", []) for p in range(len(CAPTURE_PARTS))]
            for pieces in zip(*parts, strict=True):
                objects.append(b"".join(data for _, data in pieces)[: pieces[0][0]])
        return objects

    def missing(self, runs: list[str]) -> list[str]:
        """Every (run, stage, file) of ``runs`` whose fields were not all read: empty when complete."""
        gaps = []
        for name in runs:
            for stage in STAGES:
                got = self.runs.get(name, {}).get(stage, {})
                gaps += [f"{name}/{stage}/{f}" for f in STAT_FIELDS if f not in got]
        return gaps


def parse_console(text: str) -> ConsoleReport:
    """Read the ``@@ZSVM`` lines of a console log; a stat line with the wrong field count is an error."""
    report = ConsoleReport()
    for raw in text.splitlines():
        line = raw.strip("\r")
        at = line.find(MARK + " ")
        if at < 0:
            continue
        words = line[at + len(MARK) + 1 :].split()
        if not words:
            continue
        kind, rest = words[0], words[1:]
        if kind == "begin" and rest:
            report.release = rest[0]
        elif kind == "end":
            report.ended = True
        elif kind == "run" and rest:
            report.runs.setdefault(rest[0], {})
        elif kind == "error":
            report.errors.append(" ".join(rest))
        elif kind == "trace" and len(rest) >= 4 and rest[1] in STAGES:
            report.traces.setdefault(rest[0], {}).setdefault(rest[1], []).append(" ".join(rest[2:]))
        elif kind == "bytes" and len(rest) >= 3 and rest[2].isdigit():
            try:
                data = b"".join(int(w, 16).to_bytes(8, "little") for w in rest[3:])
            except (ValueError, OverflowError):
                report.errors.append(f"{rest[0]}: an unreadable capture of {rest[1]}: {line[at:][:120]}")
                continue
            report.captures.setdefault(rest[0], {}).setdefault(rest[1], []).append((int(rest[2]), data))
        elif kind == "overrun" and len(rest) >= 4 and rest[-1] != "0":
            report.errors.append(f"{rest[0]}/{rest[1]}: the trace buffer lost {rest[-1]} events")
        elif kind == "stat" and len(rest) >= 3:
            name, stage, stat_file, values = rest[0], rest[1], rest[2], rest[3:]
            fields = STAT_FIELDS.get(stat_file)
            if fields is None or stage not in STAGES:
                report.errors.append(f"unknown stat line: {line[at:]}")
            elif len(values) != len(fields) or not all(v.isdigit() for v in values):
                report.errors.append(f"{name}/{stage}/{stat_file}: {' '.join(values) or 'nothing'}")
            else:
                stages = report.runs.setdefault(name, {})
                stages.setdefault(stage, {})[stat_file] = dict(zip(fields, map(int, values), strict=True))
    for run, events in report.captures.items():
        for codec in ("lz4d", "zstdd"):
            counts = {len(events.get(f"{codec}{p}", [])) for p in range(len(CAPTURE_PARTS))}
            if len(counts) > 1:
                parts = sorted(counts)
                report.errors.append(f"{run}: the parts of {codec}'s captures do not pair up: {parts}")
    return report
