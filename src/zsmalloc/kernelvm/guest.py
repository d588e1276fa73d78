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

    def __post_init__(self) -> None:
        for text in (self.name, self.algorithm):
            if not _NAME.fullmatch(text):
                raise ValueError(f"{text!r} is not a plain name (letters, digits, _.+-)")
        if self.disksize <= 0 or self.disksize % PAGE:
            raise ValueError(f"disksize {self.disksize} is not a positive multiple of {PAGE}")
        for first, count in self.discards:
            if first < 0 or count <= 0 or (first + count) * PAGE > self.disksize:
                raise ValueError(f"discard of pages [{first}, {first + count}) is outside the device")


def init_script(modules: list[str], runs: list[Run], *, dev: str = "zram0") -> str:
    """The guest's /init (busybox sh): load ``modules`` from /lib/modules/NAME.ko in order, do ``runs``."""
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
    for run in runs:
        image = shlex.quote(run.image)
        lines += [
            f'echo "{MARK} run {run.name}"',
            f"echo {run.algorithm} > {sys}/comp_algorithm || fail {run.name} comp_algorithm",
            f"echo {run.disksize} > {sys}/disksize || fail {run.name} disksize",
            f"dd if={image} of=/dev/{dev} bs=1M conv=fsync 2>/dev/null || fail {run.name} dd",
            f"stat_all {run.name} fill",
        ]
        lines += [
            f"blkdiscard -o {first * PAGE} -l {count * PAGE} /dev/{dev} || fail {run.name} blkdiscard {first}"
            for first, count in run.discards
        ]
        lines += [
            f"stat_all {run.name} discard",
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
    return report
