"""Real 6.1 after churn: does our pool allocate and compact as 6.1's zsmalloc does, where it matters?

What it measures
----------------
The harness's fill / discard / compact (``zsmalloc kernel-vm``) cannot tell
one fullness grouping from another: a fill leaves one partial zspage per
class, discards only free, and any compaction then reaches
``zs_can_compact``'s bound.  This boots Debian's 6.1 kernel once more with
the harness's pieces (``zsmalloc.kernelvm``: images, initramfs, kprobes,
console protocol) and, after each run's compaction, churns: ``dd`` a window
of 1536 image pages over other pages (zram allocates each new object before
it frees the slot's old one), ``blkdiscard`` a second seeded set of runs,
and compacts again.  The second part is reported as run ``NAME.2`` with the
stages ``fill`` (after the overwrite), ``discard`` and ``compact``.  The
kernel's own zs_malloc/zs_free trace of the whole lifetime is then replayed
(``zsmalloc replay``, chain 4, the used-percentage rule) on a pool of each
grouping, and ``mem_used_total``, ``mem_used_max``, ``pages_compacted`` and
the object count are compared with the kernel's mm_stat at every stage.

Target: the legacy grouping equal to the kernel everywhere.

Run: ``.venv/bin/python benchmarks/kernel_vm_churn.py [--pages N]`` (one boot,
about a minute of CPU under TCG; needs qemu-system-x86 and apt).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

from zsmalloc.kernelvm import debian
from zsmalloc.kernelvm.guest import PAGE, TRACEFS, Run, init_script, parse_console
from zsmalloc.kernelvm.harness import (
    REPLAY_FIELDS,
    boot,
    build_initramfs,
    discard_ranges,
    make_image,
    replay_stats,
)

KINDS = ("files", "kernel-build")
ALGORITHMS = ("lz4", "zstd")
WINDOW = 1536  # pages overwritten by the churn
SEED = 1


def churn_lines(run: Run, n_pages: int, rng: random.Random, dev: str = "zram0") -> list[str]:
    """The guest's churn after ``run``'s compaction, as run ``NAME.2`` of the console protocol."""
    src, dst = rng.randint(0, n_pages - WINDOW), rng.randint(0, n_pages - WINDOW)
    second = [(first + 3, max(1, count // 2)) for first, count in discard_ranges(n_pages, SEED + 8)]
    name = f"{run.name}.2"
    return [
        f"echo > {TRACEFS}/trace",
        f"echo 1 > {TRACEFS}/events/kprobes/enable",
        f"echo 1 > {TRACEFS}/tracing_on",
        f"dd if={run.image} of=/dev/{dev} bs={PAGE} skip={src} seek={dst} count={WINDOW} oflag=direct "
        f"conv=notrunc 2>/dev/null || fail {name} dd",
        f"stat_all {name} fill",
        f"dump_trace {name} fill",
        f"echo 1 > {TRACEFS}/tracing_on",
        *(
            f"blkdiscard -o {first * PAGE} -l {count * PAGE} /dev/{dev} || fail {name} blkdiscard {first}"
            for first, count in second
            if first + count <= n_pages
        ),
        f"stat_all {name} discard",
        f"dump_trace {name} discard",
        f"echo 0 > {TRACEFS}/events/kprobes/enable",
        f"echo 1 > /sys/block/{dev}/compact || fail {name} compact",
        f"stat_all {name} compact",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pages", type=int, default=4096)
    args = parser.parse_args(argv)
    kernel = debian.fetch_kernel("6.1")
    busybox = debian.fetch_busybox()
    order = kernel.module_order(["zram", *ALGORITHMS])
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="zsmalloc-kvm-churn-") as tmp:
        work = Path(tmp)
        images = {kind: work / f"{kind}.img" for kind in KINDS}
        n = min(make_image(kind, args.pages, SEED, path) for kind, path in images.items())
        runs = [
            Run(f"{kind}-{alg}", f"/images/{kind}.img", alg, n * PAGE, discard_ranges(n, SEED))
            for kind in KINDS
            for alg in ALGORITHMS
        ]
        script = init_script(order, runs, trace=True)
        for run in runs:
            anchor = f"stat_all {run.name} compact\n"
            if anchor not in script:
                raise RuntimeError(f"the harness's /init has no line {anchor.strip()!r} to churn after")
            script = script.replace(anchor, anchor + "\n".join(churn_lines(run, n, rng)) + "\n")
        initrd = work / "initramfs.cpio"
        modules = {m: debian.module_bytes(kernel.modules[m]) for m in order}
        build_initramfs(initrd, busybox, modules, script, {f"images/{k}.img": p for k, p in images.items()})
        report = parse_console(boot(kernel.vmlinuz, initrd))
        if report.errors or not report.ended:
            raise RuntimeError(f"the guest's report is incomplete: {report.errors[:5]}")
        print(f"kernel {report.release}, {n} pages an image, chain 4, rule used-percentage\n")
        print("| run | stage | field | kernel | legacy | ratio |")
        print("|---|---|---|---:|---:|---:|")
        unequal = 0
        for run in runs:
            lines: list[str] = []
            for part in (run.name, f"{run.name}.2"):
                traces = report.traces.get(part, {})
                for stage in ("fill", "discard", "compact"):
                    lines += ["c"] if stage == "compact" else traces.get(stage, [])
                    path = work / f"{part}-{stage}.trace"
                    path.write_text("".join(line + "\n" for line in lines))
                    mm = report.runs[part][stage]["mm_stat"]
                    # the mm_stat fields of the replay's, and the objects stored (pages not same-filled)
                    theirs = {f: mm[f] for f in REPLAY_FIELDS if f in mm}
                    theirs["objects"] = mm["orig_data_size"] // PAGE - mm["same_pages"]
                    ours = {g: replay_stats(path, 4, "used-percentage", g) for g in ("legacy", "ratio")}
                    for f in REPLAY_FIELDS:
                        legacy, ratio = ours["legacy"][f], ours["ratio"][f]
                        unequal += legacy != theirs[f]
                        print(f"| {part} | {stage} | {f} | {theirs[f]:,} | {legacy:,} | {ratio:,} |")
        print(f"\nlegacy grouping: {unequal} values apart from the kernel's")
    return 1 if unequal else 0


if __name__ == "__main__":
    sys.exit(main())
