"""Run every benchmark and (re)write RESULTS.md and results/<name>.json.

Runs, in order, ``bench_density.py`` (pages and process memory after a fill,
engine and model, against the kernel's exact page count and a dict peer),
``bench_speed.py`` (µs per malloc+write / read / free / churn at 1e4..1e6 live
objects, engine, model and a dict peer in the same rounds),
``bench_migration.py`` (pages migrated per second, and µs per page
against objects per page, against a raw 4 KiB copy), ``bench_churn.py``
(fill, free a random half, compact: pool bytes and RSS growth per live byte,
engine and model, against a dict peer) and ``bench_compaction_work.py``
(objects moved per page freed by the 6.4 compaction against 6.1's, on
pools of each fullness grouping) and ``bench_zram.py``
(``ZramDevice`` page write/read throughput and RSS, fill and after discarding
half, against a dict of lz4-compressed pages) and ``bench_nbd.py``
(``zsmalloc serve``, nbdkit with our plugin, against ``nbdkit memory`` with
``allocator=malloc`` and ``allocator=zstd`` through nbdcopy, qemu-img and
fio's nbd engine: throughput and server RSS) and
``bench_threads.py`` (what a second thread gets from one-object calls, which
keep the GIL, and from batch calls, which release it) and ``bench_store.py``
(``zsmalloc.Store`` against ``zict.Func(lz4)`` of a dict: set/get MB/s and
RSS) and ``bench_fragsim.py`` (``zsmalloc fragsim``'s standard scenario: the
high-order requests served with zsmalloc's pages migrated, placed or
unmovable) and ``bench_kernel_vm.py`` (Debian's 6.12 and 6.1 kernels under
QEMU against ``zsmalloc stats``, field by field; not part of ``--quick``: it
boots virtual machines) and ``bench_dask.py`` (a 2-worker ``LocalCluster`` over a working set 3x
its memory with distributed's ``SpillBuffer``, a ``zict.Func(lz4)`` layer
and ``zsmalloc.dask``'s tier: data held in RAM, disk bytes, wall time, and
a plot of them over time).  Each writes
``<out>/results/<name>.json``; this script then writes ``<out>/RESULTS.md``:
the date, the machine, the method, every figure, and every target with
PASS/FAIL.

Usage::

    .venv/bin/python benchmarks/run_all.py              # full run, ~5-10 minutes on 2 cores
    .venv/bin/python benchmarks/run_all.py --quick      # smoke run, well under a minute
    .venv/bin/python benchmarks/run_all.py --quick --out /tmp/bench   # leave benchmarks/ alone

With ``--only NAME`` (repeatable) just those benchmarks run; RESULTS.md
keeps every other benchmark's section from its last saved run, marked with
that run's date.  The default ``--out`` is ``benchmarks/`` itself.  The package measured is
whichever ``zsmalloc`` the interpreter imports (RESULTS.md names its path and
git commit); to measure a fixed commit while ``src/`` is being edited, point
``PYTHONPATH`` at a clean checkout's ``src``.  The exit status is 0 when
every benchmark ran, whatever the targets say (they are reported, not
enforced), and 1 when one of them crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import bench_churn
import bench_compaction_work
import bench_dask
import bench_density
import bench_fragsim
import bench_kernel_vm
import bench_migration
import bench_nbd
import bench_speed
import bench_store
import bench_threads
import bench_zram
import common
from common import md_table, verdict

BENCHMARKS = (
    bench_density,
    bench_speed,
    bench_migration,
    bench_churn,
    bench_compaction_work,
    bench_zram,
    bench_nbd,
    bench_threads,
    bench_store,
    bench_fragsim,
    bench_kernel_vm,
    bench_dask,
)


def machine_section(info: dict) -> str:
    rows = [
        ["CPU model", info["cpu_model"]],
        ["cores", f"{info['logical_cores']} logical, {info['physical_cores']} physical"],
        ["memory", f"{info['memory_gib']} GiB"],
        ["Python", info["python"]],
        ["kernel", info["kernel"]],
        ["load average (1 min), start / end", f"{info['load_avg_1m']} / {info.get('load_avg_1m_end', '-')}"],
        ["zsmalloc measured", f"`{info['zsmalloc_source']}`, git {info['git']}"],
    ]
    text = "## Machine\n\n" + md_table(["", ""], rows, align="ll")
    busiest = max(info["load_avg_1m"], info.get("load_avg_1m_end", 0))
    if busiest > 0.5 * (info["logical_cores"] or 1):
        text += (
            f"\n\n**The machine was busy during this run** (1-minute load average up to {busiest} on "
            f"{info['logical_cores']} cores, of which the benchmark uses one): other processes competed "
            "for the cores, so timings are inflated and noisy; ratios to the peer (measured round by "
            "round, interleaved) hold up better than absolute figures."
        )
    return text


def zsmalloc_backend() -> str:
    """Which implementation ``zsmalloc.Pool`` is in this run (``ZSMALLOC_BACKEND``)."""
    import zsmalloc

    return f"{zsmalloc.backend} (`ZSMALLOC_BACKEND` chooses)"


def method_section(quick: bool) -> str:
    lines = [
        "## Method",
        "",
        "- Every figure compares our pool with a named peer measured **in the same run**, on the same "
        "objects (same sizes, same bytes): a `dict` of `bytes` objects, the obvious pure-Python way to "
        "keep byte strings behind keys. Page migration is compared with a raw 4 KiB memoryview copy, "
        "and the 6.4 compaction with 6.1's, on pools of each fullness grouping churned alike.",
        "- Two implementations of the pool: the engine (`zsmalloc.engine.Pool`, Rust) and the model "
        "(`zsmalloc.model.Pool`, Python). Speed, density and churn measure both, beside the peer, in "
        "the same run (speed: in the same worker and rounds, on the same plans); the other benchmarks "
        f"measure `zsmalloc.Pool`, here the {zsmalloc_backend()}.",
        "- The machine is shared and noisy: timings are repeated (rounds) and reported as medians with "
        "min-max; RSS figures are medians over repeated fresh subprocesses.",
        "- Each configuration runs in a fresh Python subprocess, so RSS baselines are clean and no run "
        "inherits another's heap.",
        "- Object sizes come from the seeded mixes of `zsmalloc.workloads` (`kernel-build`, "
        "`android-zstd`); object data are slices of one preallocated random byte string, so that "
        "making the data costs the same, and little, for every store.",
        "- **The cyclic garbage collector is disabled (`gc.disable()`) while timing, for every store.**",
        "- Targets are reported, not enforced: a FAIL does not make the run fail.",
    ]
    if quick:
        lines.append(
            "- **This is a `--quick` run**: sizes are shrunk so that it finishes in well under a minute. "
            "Its figures are a smoke test, not measurements; targets that only apply to full-size runs "
            "show n/a."
        )
    return "\n".join(lines)


def targets_section(targets: list[tuple[str, dict]]) -> str:
    rows = [
        [bench, t["name"], t["config"], t["value"], t["limit"], f"**{verdict(t['ok'])}**"]
        for bench, t in targets
    ]
    passed = sum(1 for _, t in targets if t["ok"] is True)
    failed = sum(1 for _, t in targets if t["ok"] is False)
    head = f"## Targets\n\n{passed} PASS, {failed} FAIL, {len(targets) - passed - failed} n/a.\n\n"
    return head + md_table(
        ["benchmark", "target", "configuration", "value", "limit", "result"], rows, align="lllrrl"
    )


def earlier_sections(
    out: Path, fresh: dict[str, tuple[str, dict]]
) -> tuple[list[str], list[tuple[str, dict]]]:
    """Every benchmark's section and targets: this run's where it ran, else its last saved run.

    With ``--only``, RESULTS.md keeps the other benchmarks' figures from their
    own last run (``results/<name>.json``), each marked with its date, so one
    benchmark can be rerun without losing the rest.
    """
    sections: list[str] = []
    targets: list[tuple[str, dict]] = []
    for bench in BENCHMARKS:
        if bench.NAME in fresh:
            section, doc = fresh[bench.NAME]
        else:
            path = common.results_dir(out) / f"{bench.NAME}.json"
            if not path.exists():
                continue
            doc = json.loads(path.read_text(encoding="utf-8"))
            when = doc.get("machine", {}).get("date", "an earlier run")
            quick = " (--quick)" if doc.get("quick") else ""
            try:
                section = bench.markdown(doc)
            except (KeyError, TypeError):  # saved by an older version of the benchmark
                section = (
                    f"## {bench.NAME}\n\n`results/{bench.NAME}.json` predates the current format: rerun it."
                )
            section += f"\n\n({bench.NAME}: {doc.get('seconds', '?')} s, run of {when}{quick})"
        sections.append(section)
        targets.extend((bench.NAME, t) for t in doc["targets"])
    return sections, targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark and write RESULTS.md.")
    parser.add_argument("--quick", action="store_true", help="shrink sizes: the whole run in under a minute")
    parser.add_argument(
        "--out",
        type=Path,
        default=common.BENCH_DIR,
        help="directory for RESULTS.md and results/*.json (default: benchmarks/)",
    )
    parser.add_argument(
        "--only",
        choices=[b.NAME for b in BENCHMARKS],
        action="append",
        help="run only this benchmark (repeatable)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    info = common.machine_info()
    started = time.perf_counter()
    sections: list[str] = []
    targets: list[tuple[str, dict]] = []
    crashed = []
    docs: list[dict] = []
    fresh: dict[str, tuple[str, dict]] = {}
    for bench in BENCHMARKS:
        if args.only and bench.NAME not in args.only:
            continue
        if args.quick and not getattr(bench, "QUICK", True) and not args.only:
            continue  # a benchmark that says QUICK = False (it boots VMs) is left out of --quick
        t0 = time.perf_counter()
        common.log(f"== {bench.NAME}")
        try:
            doc = common.run_bench(bench.run, args.quick, out)
        except Exception:
            crashed.append(bench.NAME)
            tb = traceback.format_exc()
            common.log(tb)
            sections.append(f"## {bench.NAME}: CRASHED\n\n```\n{tb}```")
            fresh[bench.NAME] = (sections[-1], {"targets": []})
            continue
        doc["machine"] = info  # the same dict: the end-of-run load is filled in below
        doc["seconds"] = round(time.perf_counter() - t0, 1)
        docs.append(doc)
        sections.append(bench.markdown(doc) + f"\n\n({bench.NAME}: {doc['seconds']} s)")
        targets.extend((bench.NAME, t) for t in doc["targets"])
        fresh[bench.NAME] = (sections[-1], doc)
    elapsed = time.perf_counter() - started
    info["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    for doc in docs:
        common.write_json(common.results_dir(out) / f"{doc['name']}.json", doc)
    if args.only:
        sections, targets = earlier_sections(out, fresh)

    header = [
        "# Benchmark results",
        "",
        f"Date: {info['date']}. Written by `benchmarks/run_all.py{' --quick' if args.quick else ''}` "
        f"(`make bench`) in {elapsed:.0f} s; JSON in `results/`.",
    ]
    parts = ["\n".join(header), machine_section(info), method_section(args.quick), targets_section(targets)]
    doc_md = "\n\n".join([*parts, *sections])
    (out / "RESULTS.md").write_text(doc_md + "\n", encoding="utf-8")
    common.log(f"wrote {out / 'RESULTS.md'} in {elapsed:.0f} s")
    for bench, t in targets:
        common.log(f"  {verdict(t['ok']):4}  {bench}: {t['name']} [{t['config']}] = {t['value']}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
