"""The comparison itself: images, the initramfs, the boot, our side, and the table of differences.

::

    host                                   guest (qemu-system-x86_64 -accel tcg)
    ----                                   -----
    make_image(kind) -> <work>/KIND.img
    debian.fetch_kernel / fetch_busybox
    build_initramfs: busybox, *.ko, /init,  --> /init: insmod; per run: comp_algorithm,
                     /images/*.img                 disksize, dd, blkdiscard..., compact,
    boot(): qemu, console on stdout         <--    cat mm_stat io_stat bd_stat at each stage
    guest.parse_console -> kernel figures
    our_stats(): zsmalloc stats --image IMG --algorithm ALG --kernel PRESET (the series' model)
                 [--discard-ranges R] [--compact] --json, once per stage
    compare() -> Row per (run, stage, file, field): kernel, ours, difference

Nothing here is imported by the library's lower layers: it drives the
``zsmalloc stats`` command as a user would, in a subprocess, so the figures
compared are exactly those the command prints.  Image kinds:

``files``         pages of this machine's shared libraries (real files, seeded order)
``kernel-build``  the kernel-build page source of :mod:`zsmalloc.workloads`
``same-filled``   the same mix with 60% same-filled pages (zeros and repeated words)

With ``ZSMALLOC_KERNEL_VM_KEEP=1`` the work directory (images, initramfs,
console log, traces) is copied to ``<cache>/last-run`` for a look afterwards.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zsmalloc.kernelvm import debian
from zsmalloc.kernelvm.cpio import CpioWriter
from zsmalloc.kernelvm.guest import PAGE, STAGES, STAT_FIELDS, ConsoleReport, Run, init_script, parse_console
from zsmalloc.workloads import file_pages, mix_pages
from zsmalloc.zram import ZramDevice
from zsmalloc.zram.kernels import KERNELS

#: image kind -> a page source (n, seed)
IMAGE_KINDS: dict[str, Callable[[int, int], Iterator[bytes]]] = {
    "files": lambda n, seed: file_pages("shared-libs", n * PAGE, seed),
    "kernel-build": lambda n, seed: mix_pages("kernel-build", n, seed),
    "same-filled": lambda n, seed: mix_pages("kernel-build", n, seed, same_filled=0.6),
}
#: the fields that do not depend on the codec's output: equal to the kernel's whatever the codec
CODEC_FREE_FIELDS = (
    ("mm_stat", "orig_data_size"),
    ("mm_stat", "mem_limit"),
    ("mm_stat", "same_pages"),
    *(("io_stat", f) for f in STAT_FIELDS["io_stat"]),
    *(("bd_stat", f) for f in STAT_FIELDS["bd_stat"]),
)
APPEND = "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init"
#: each series booted -> the kernel preset (zsmalloc.zram.kernels) our side runs with.  6.16 is
#: modelled by 6.17's: chain 8 (its CONFIG_ZSMALLOC_CHAIN_SIZE), the least-waste rule (6.3) and
#: the groups by tenths (6.4), zram's own backends (6.12: the page frame, levels), lib/zstd 1.5.7
#: (6.15; the version string in its vmlinux), and zram.ko calling zsmalloc through the same
#: symbols as 6.17's (zs_malloc, zs_free, zs_obj_write, zs_obj_read_begin/end, zs_compact).
#: 7.2 (Debian's sid) by 6.17's as well, on the same evidence from its packages (config,
#: zram.ko's imports, lib/zstd 1.5.7), and checked by the boot itself: see benchmarks/RESULTS.md.
MODELS = {"6.1": "6.1", "6.12": "6.12", "6.16": "6.17", "7.2": "6.17"}


class BootError(RuntimeError):
    """qemu failed, timed out, or the guest did not report every figure; ``console`` is what it printed."""

    def __init__(self, message: str, console: str = "") -> None:
        super().__init__(message)
        self.console = console


def make_image(kind: str, n_pages: int, seed: int, path: Path) -> int:
    """Write at most ``n_pages`` pages of ``kind`` to ``path``; return how many were written."""
    try:
        source = IMAGE_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown image kind {kind!r}; known: {', '.join(IMAGE_KINDS)}") from None
    written = 0
    with path.open("wb") as f:
        for page in source(n_pages, seed):
            f.write(page)
            written += 1
    if not written:
        raise ValueError(f"the {kind} source gave no page")
    return written


def discard_ranges(n_pages: int, seed: int) -> tuple[tuple[int, int], ...]:
    """A seeded set of page runs to discard, about 40% of the device: runs of 1-64 pages, gaps of 0-96."""
    rng = random.Random(seed)
    ranges = []
    pos = rng.randint(0, 8)
    while True:
        count = rng.randint(1, 64)
        if pos + count > n_pages:
            break
        ranges.append((pos, count))
        pos += count + rng.randint(1, 96)
    return tuple(ranges)


def build_initramfs(
    out: Path, busybox: Path, modules: dict[str, bytes], init: str, images: dict[str, Path]
) -> None:
    """A newc archive: /bin/busybox, /lib/modules/NAME.ko, /init, /dev/console and the images."""
    with out.open("wb") as f:
        cpio = CpioWriter(f)
        for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules", "images"):
            cpio.directory(d)
        cpio.char_device("dev/console", 5, 1)
        cpio.file("bin/busybox", busybox, perm=0o755)
        cpio.symlink("bin/sh", "busybox")
        for name, elf in modules.items():
            cpio.file(f"lib/modules/{name}.ko", elf)
        cpio.file("init", init.encode(), perm=0o755)
        for guest_path, host_path in images.items():
            cpio.file(guest_path, host_path)
        cpio.close()


def boot(
    vmlinuz: Path, initrd: Path, *, memory: str = "1G", timeout: float = 900, append: str = APPEND
) -> str:
    """Boot under TCG with the console on the serial line; return the console text once it powers off."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise BootError("qemu-system-x86_64 is not installed (Debian: qemu-system-x86)")
    cmd = [
        qemu, "-accel", "tcg", "-nodefaults", "-nographic", "-no-reboot", "-serial", "stdio",
        "-monitor", "none", "-m", memory, "-smp", "1",
        "-kernel", str(vmlinuz), "-initrd", str(initrd), "-append", append,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        raise BootError(f"the guest did not power off within {timeout:.0f} s", out) from None
    console = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        raise BootError(
            f"qemu exited {done.returncode}: {done.stderr.decode(errors='replace')[-500:]}", console
        )
    return console


def model_of(series: str, chain_size: int) -> str:
    """The preset that models ``series`` (:data:`MODELS`), checked against the kernel's chain size.

    A ValueError for a series without one: our side without a preset would
    compress lz4 with liblz4, not the kernel's compressor, and compare nothing.
    """
    try:
        preset = MODELS[series]
    except KeyError:
        raise ValueError(f"no kernel preset models {series}; known: {', '.join(MODELS)}") from None
    if KERNELS[preset].chain_size != chain_size:
        raise ValueError(
            f"{series} has CONFIG_ZSMALLOC_CHAIN_SIZE={chain_size}, its preset {preset} "
            f"chain size {KERNELS[preset].chain_size}"
        )
    return preset


def our_stats(
    image: Path, algorithm: str, preset: str, ranges: Iterable[tuple[int, int]], stage: str
) -> dict[str, dict[str, int]]:
    """``zsmalloc stats --kernel PRESET --json`` for ``image`` at ``stage``: its mm_stat, io_stat, bd_stat."""
    cmd = [
        sys.executable, "-c", "from zsmalloc.cli import main; main(prog_name='zsmalloc')",
        "stats", "--image", str(image), "--algorithm", algorithm, "--kernel", preset, "--json",
    ]  # fmt: skip
    spec = ",".join(f"{first}:{count}" for first, count in ranges)
    if stage in ("discard", "compact") and spec:
        cmd += ["--discard-ranges", spec]
    if stage == "compact":
        cmd.append("--compact")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"zsmalloc stats failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    out = json.loads(done.stdout)
    return {f: out[f] for f in STAT_FIELDS}


def sample_pages(n_pages: int, count: int, seed: int) -> tuple[int, ...]:
    """``count`` seeded page indexes of a device of ``n_pages``, in increasing order."""
    return tuple(sorted(random.Random(seed).sample(range(n_pages), min(count, n_pages))))


def our_objects(image: Path, algorithm: str, preset: str, samples: Iterable[int]) -> list[bytes]:
    """The objects our device stores for the sampled pages that the kernel would decompress.

    Each page goes into a device configured as ``zsmalloc stats --kernel
    PRESET`` configures it; same-filled and huge pages, which are not stored
    compressed, are left out, as the kernel's decompressor never sees them.
    """
    objects = []
    with image.open("rb") as f, ZramDevice(PAGE, algorithm=algorithm, kernel=preset) as dev:
        for index in samples:
            f.seek(index * PAGE)
            dev.write_page(0, f.read(PAGE).ljust(PAGE, b"\0"))
            info = dev.slot_info(0)
            if info.size and not info.huge:
                objects.append(dev.pool.read(info.handle, info.size))
    return objects


#: the figures compared when our pool is fed the kernel's own object sizes (the replay rows)
REPLAY_FIELDS = ("objects", "mem_used_total", "mem_used_max", "pages_compacted")


def replay_preset(release: str) -> tuple[str, str]:
    """The class rule and fullness grouping of a kernel release, for ``zsmalloc replay``.

    The chain-size rule came with 6.3 (before it: the highest used
    percentage over 1-4 pages), the fullness-ratio groups and their
    compaction with 6.4.
    """
    major, minor = (int(x) for x in release.split(".")[:2])
    rule = "min-waste" if (major, minor) >= (6, 3) else "used-percentage"
    fullness = "ratio" if (major, minor) >= (6, 4) else "legacy"
    return rule, fullness


def stage_traces(stages: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each stage's whole trace from the device's setup: the fill, + the discards' frees, + ``c``."""
    fill = stages.get("fill", [])
    discard = fill + stages.get("discard", [])
    return {"fill": fill, "discard": discard, "compact": [*discard, "c"]}


def replay_stats(trace: Path, chain_size: int, rule: str, fullness: str) -> dict[str, int]:
    """``zsmalloc replay TRACE --json`` on one configuration: the figures of :data:`REPLAY_FIELDS`."""
    cmd = [
        sys.executable, "-c", "from zsmalloc.cli import main; main(prog_name='zsmalloc')",
        "replay", str(trace), "--chain-size", str(chain_size), "--rule", rule, "--fullness", fullness,
        "--json",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"zsmalloc replay failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    run = json.loads(done.stdout)["runs"][0]
    return {
        "objects": run["final"]["objects"],
        "mem_used_total": run["final"]["pages"] * PAGE,
        "mem_used_max": run["pages_peak"] * PAGE,
        "pages_compacted": run["pages_compacted"],
    }


@dataclass(frozen=True)
class Row:
    """One field of one stat file at one stage of one run: the kernel's value and ours."""

    kind: str
    algorithm: str
    stage: str
    file: str
    field: str
    kernel: int
    ours: int

    @property
    def diff(self) -> int:
        return self.ours - self.kernel

    @property
    def relative(self) -> float | None:
        """The difference as a share of the kernel's value; None where the kernel's is 0."""
        return self.diff / self.kernel if self.kernel else None


@dataclass
class Comparison:
    """A boot of one kernel and our side of the same runs."""

    package: str
    release: str
    chain_size: int
    #: the kernel preset our side ran with (:data:`MODELS`)
    preset: str
    pages: dict[str, int]
    discards: dict[str, int]
    rows: list[Row] = field(default_factory=list)
    boot_seconds: float = 0.0
    ours_seconds: float = 0.0
    #: the class rule and fullness grouping the replay rows ran with ("" without a trace)
    replay_rule: str = ""
    replay_fullness: str = ""

    def unequal(self, fields: Iterable[tuple[str, str]] | None = None) -> list[Row]:
        """The rows whose values differ, among ``fields`` (file, field) if given."""
        wanted = set(fields) if fields is not None else None
        return [r for r in self.rows if r.diff and (wanted is None or (r.file, r.field) in wanted)]

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["rows"] = [{**asdict(r), "diff": r.diff} for r in self.rows]
        return d


def compare(
    report: ConsoleReport, ours: dict[str, dict[str, dict[str, dict[str, int]]]], runs: dict[str, Run]
) -> list[Row]:
    """Rows for every run, stage, file and field, in the kernel's field order."""
    rows = []
    for name, run in runs.items():
        kind = name.rsplit("-", 1)[0]
        for stage in STAGES:
            for stat_file, fields in STAT_FIELDS.items():
                kernel = report.runs[name][stage][stat_file]
                mine = ours[name][stage][stat_file]
                rows += [Row(kind, run.algorithm, stage, stat_file, f, kernel[f], mine[f]) for f in fields]
    return rows


def run_comparison(
    series: str = "6.12",
    kinds: Iterable[str] = ("files", "kernel-build", "same-filled"),
    algorithms: Iterable[str] = ("lz4", "zstd"),
    *,
    pages: int = 4096,
    seed: int = 1,
    timeout: float = 900,
    trace: bool = True,
    samples: int = 0,
    workdir: Path | None = None,
    images: dict[str, Path] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> Comparison:
    """Boot Debian's ``series`` kernel on the images and compare its zram figures with ours.

    With ``trace``, kprobes record the kernel's zs_malloc sizes and zs_free
    calls, and ``zsmalloc replay`` runs them on our pool with the kernel's
    chain size, class rule and fullness grouping: rows of file ``replay``,
    independent of the codec.  With ``samples`` (and ``trace``), that many
    seeded pages of each run are read back after the fill while kprobes
    capture the objects the kernel decompresses: rows of file ``objects``,
    how many it decompressed against how many we store compressed
    (``count``) and how many of ours are byte-identical to its (``identical``).
    ``images`` (kind -> file) are used as they are instead of being made, so
    that several kernels see the same bytes (the ``files`` kind reads this
    machine's libraries, which change when packages are installed).
    """
    kinds = list(images) if images is not None else list(kinds)
    algorithms = list(algorithms)
    kernel = debian.fetch_kernel(series)
    preset = model_of(series, kernel.chain_size())
    busybox = debian.fetch_busybox()
    wanted = ["zram", *(a for a in algorithms if a in kernel.modules)]  # crypto/ALG.ko before 6.12
    order = kernel.module_order(wanted)
    with tempfile.TemporaryDirectory(prefix="zsmalloc-kvm-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if images is None:
            images = {kind: work / f"{kind}.img" for kind in kinds}
            n_pages = {kind: make_image(kind, pages, seed, path) for kind, path in images.items()}
        else:
            n_pages = {kind: -(-path.stat().st_size // PAGE) for kind, path in images.items()}
            for kind, path in images.items():
                if path.stat().st_size != n_pages[kind] * PAGE:
                    raise ValueError(f"{path} is not a whole number of 4 KiB pages")
        runs = {
            f"{kind}-{alg}": Run(
                f"{kind}-{alg}",
                f"/images/{kind}.img",
                alg,
                n_pages[kind] * PAGE,
                discard_ranges(n_pages[kind], seed),
                sample_pages(n_pages[kind], samples, seed) if trace else (),
            )
            for kind in kinds
            for alg in algorithms
        }
        initrd = work / "initramfs.cpio"
        build_initramfs(
            initrd,
            busybox,
            {m: debian.module_bytes(kernel.modules[m]) for m in order},
            init_script(order, list(runs.values()), trace=trace),
            {f"images/{kind}.img": path for kind, path in images.items()},
        )
        log(
            f"booting {kernel.package} ({kernel.release}), modules {', '.join(order)}, runs {', '.join(runs)}"
        )
        start = time.monotonic()
        console = boot(kernel.vmlinuz, initrd, timeout=timeout)
        boot_seconds = time.monotonic() - start
        (work / "console.log").write_text(console)
        report = parse_console(console)
        gaps = report.missing(list(runs))
        if report.errors or gaps or not report.ended:
            problems = [*report.errors, *(f"missing {g}" for g in gaps[:10])]
            if not report.ended:
                problems.append("no end marker")
            raise BootError(f"the guest's report is incomplete: {'; '.join(problems)}", console)
        log(f"the guest ran {len(runs)} runs in {boot_seconds:.0f} s; now our side")
        start = time.monotonic()
        ours = {
            name: {
                stage: our_stats(images[name.rsplit("-", 1)[0]], run.algorithm, preset, run.discards, stage)
                for stage in STAGES
            }
            for name, run in runs.items()
        }
        rows = compare(report, ours, runs)
        rule, fullness = replay_preset(report.release or kernel.release) if trace else ("", "")
        if trace:
            for name, run in runs.items():
                for stage, lines in stage_traces(report.traces.get(name, {})).items():
                    path = work / f"{name}-{stage}.trace"
                    path.write_text("".join(line + "\n" for line in lines))
                    mine = replay_stats(path, kernel.chain_size(), rule, fullness)
                    mm = report.runs[name][stage]["mm_stat"]
                    theirs = {
                        "objects": mm["orig_data_size"] // PAGE - mm["same_pages"],
                        "mem_used_total": mm["mem_used_total"],
                        "mem_used_max": mm["mem_used_max"],
                        "pages_compacted": mm["pages_compacted"],
                    }
                    kind = name.rsplit("-", 1)[0]
                    rows += [
                        Row(kind, run.algorithm, stage, "replay", f, theirs[f], mine[f])
                        for f in REPLAY_FIELDS
                    ]
        for name, run in runs.items():
            if not run.samples:
                continue
            kind = name.rsplit("-", 1)[0]
            captured = report.objects(name)
            stored = our_objects(images[kind], run.algorithm, preset, run.samples)
            same = sum(a == b for a, b in zip(captured, stored, strict=False))
            rows += [
                Row(kind, run.algorithm, "fill", "objects", "count", len(captured), len(stored)),
                Row(kind, run.algorithm, "fill", "objects", "identical", len(captured), same),
            ]
        comparison = Comparison(
            kernel.package,
            report.release or kernel.release,
            kernel.chain_size(),
            preset,
            n_pages,
            {kind: sum(c for _, c in discard_ranges(n, seed)) for kind, n in n_pages.items()},
            rows,
            boot_seconds,
            time.monotonic() - start,
            rule,
            fullness,
        )
        if os.environ.get("ZSMALLOC_KERNEL_VM_KEEP") and workdir is None:
            shutil.copytree(work, debian.cache_dir() / "last-run", dirs_exist_ok=True)
    return comparison


def mm_stat_table(comparison: Comparison) -> list[list[str]]:
    """The mm_stat rows as a table: per run and field, kernel / ours / difference at each stage."""
    header = ["image", "alg", "field"]
    for stage in STAGES:
        header += [f"{stage} kernel", f"{stage} ours", "diff"]
    table = [header]
    by_key: dict[tuple[str, str, str], dict[str, Row]] = {}
    for r in comparison.rows:
        if r.file == "mm_stat":
            by_key.setdefault((r.kind, r.algorithm, r.field), {})[r.stage] = r
    for (kind, alg, fld), stages in by_key.items():
        line = [kind, alg, fld]
        for stage in STAGES:
            r = stages[stage]
            rel = f" ({r.relative:+.2%})" if r.diff and r.relative is not None else ""
            line += [f"{r.kernel:,}", f"{r.ours:,}", f"{r.diff:+,}{rel}" if r.diff else "="]
        table.append(line)
    return table


def other_stats_summary(comparison: Comparison) -> list[str]:
    """io_stat and bd_stat in one line each per run: equal everywhere, or the differing fields."""
    lines = []
    for stat_file in ("io_stat", "bd_stat", "objects"):
        rows = [r for r in comparison.rows if r.file == stat_file]
        if not rows:
            continue
        bad = [r for r in rows if r.diff]
        if not bad:
            notify = {r.kernel for r in rows if r.field == "notify_free" and r.stage != "fill"}
            extra = f" (notify_free after discards: {', '.join(map(str, sorted(notify)))})" if notify else ""
            lines.append(f"{stat_file}: all {len(rows)} values equal{extra}")
        else:
            lines += [
                f"{stat_file}: {r.kind}-{r.algorithm}/{r.stage} {r.field} kernel {r.kernel} ours {r.ours}"
                for r in bad
            ]
    return lines


def format_markdown(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)
