"""Migration: how fast the VM moves the pool's pages, and what a page costs per object in it.

What it measures
----------------
(a) Throughput.  A pool filled with the ``kernel-build`` mix (100k objects in
    the full run, 10k with ``--quick``), one per protocol (``Pool(migration=
    "mainline")`` and ``"2016"``).  Rounds: pick a batch of random in-use pool
    pages (``memory.used_pfns()``, outside the timing) and time
    ``memory.move_pages(batch)`` (isolate, migrate, put back what could not
    move).  Batches of 32 pages (the kernel's COMPACT_CLUSTER_MAX, the batch
    its compaction isolates) and of 1024 (one long list, as memory offlining
    hands over), interleaved in a fixed random order.  Reported: the median
    pages migrated per second and µs per page over rounds (min-max), in wall
    and CPU time, and the pages that failed or were retried.  Target: the
    per-page cost does not grow with the batch (median at 1024 / median at 32
    at most 1.25; the kernel's ``migrate_pages`` walks its list once).

(b) µs per page against objects per page.  Pools whose pages each hold
    objects of one class: 4096-byte requests (huge class, 1 object per page),
    2000 (class 2048, 2 per page), 1000 (class 1024, 4), 240 (class 256, 16),
    56 (class 64, 64) and 24 (class 32, 128); every class is one page per
    zspage, so every page holds exactly that many objects.  2048 pages each
    (128 with ``--quick``).  A pass migrates every page of the pool once
    (``used_pfns()``, then ``move_pages`` on consecutive batches of 32); the
    figure is the pass time / pages moved, median over 5 passes (2 with
    ``--quick``).  The peer floor, timed in the same passes: a raw 4 KiB copy
    in Python, ``dst[off:off + 4096] = src[off:off + 4096]`` on two
    memoryviews, over as many pages, loop included.  A least-squares line
    through the points splits the cost into a fixed part per page and a part
    per object (each object's handle is re-pointed).

After the measurements every object is read back and compared with what was
written, and ``pool.check()`` walks the pool's structures: target, every page
moved (no failure) and the contents intact, per protocol.

How
---
Every configuration (protocol x part, and protocol x object size in (b)) runs
in its own fresh subprocess.  Object data are slices of one 1 MiB random byte
string.  Destination frames come from the allocator as the VM asks for them
(the page just vacated is on the hot list, so it is the next destination; no
page fault).  The cyclic GC is disabled while timing.  ``time.perf_counter``
around each call, ``time.process_time`` beside it.

Run: ``.venv/bin/python benchmarks/bench_migration.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import bisect
import gc
import random
import sys
import time
from array import array
from pathlib import Path

import common
import zsmalloc
from common import fmt, fmt_int, md_table
from zsmalloc.pool.size_class import ZS_DEFAULT_CHAIN_SIZE, get_size_class_index
from zsmalloc.workloads import get_mix

NAME = "migration"
MIX = "kernel-build"
SEED = 2718
PROTOCOLS = ("mainline", "2016")
REQUEST_SIZES = (4096, 2000, 1000, 240, 56, 24)
FULL = {"objects": 100_000, "rounds": 48, "big_rounds": 6, "pages": 2048, "passes": 5}
QUICK = {"objects": 10_000, "rounds": 8, "big_rounds": 2, "pages": 128, "passes": 2}
BATCH = 32  # COMPACT_CLUSTER_MAX
BIG_BATCH = 1024
BATCH_FLAT_LIMIT = 1.25
PAGE_SIZE = 4096
HANDLE_HEADER = 8
SRC_LEN = (1 << 20) + PAGE_SIZE
OFFSET_STRIDE = 104_729

perf_counter = time.perf_counter
process_time = time.process_time


def class_geometry(request: int, chain: int = ZS_DEFAULT_CHAIN_SIZE) -> tuple[int, int, int]:
    """(class size, pages per zspage, objects per zspage) serving ``request`` bytes."""
    specs = {spec.index: spec for spec in zsmalloc.size_classes(chain)}
    canonical = sorted(specs)
    spec = specs[canonical[bisect.bisect_left(canonical, get_size_class_index(request + HANDLE_HEADER))]]
    return spec.size, spec.pages_per_zspage, spec.objs_per_zspage


# ----------------------------------------------------------------------
# workers


def _fill(pool: zsmalloc.Pool, sizes: list[int], src: bytes) -> array:
    span = SRC_LEN - PAGE_SIZE
    handles = array("Q", bytes(8 * len(sizes)))
    malloc, write = pool.malloc, pool.write
    for i, size in enumerate(sizes):
        h = malloc(size)
        off = (i * OFFSET_STRIDE) % span
        write(h, src[off : off + size])
        handles[i] = h
    return handles


def _intact(pool: zsmalloc.Pool, handles: array, sizes: list[int], src: bytes) -> tuple[bool, str]:
    """Every object reads back as written, and ``pool.check()`` passes."""
    span = SRC_LEN - PAGE_SIZE
    read = pool.read
    for i, h in enumerate(handles):
        off = (i * OFFSET_STRIDE) % span
        if read(h) != src[off : off + sizes[i]]:
            return False, f"object {i} reads back wrong"
    try:
        pool.check()
    except Exception as exc:  # reported, not raised: the run goes on
        return False, f"check(): {exc!r}"
    return True, ""


def _timed_move(mem, pfns: list[int]) -> tuple[object, float, float]:
    t0, c0 = perf_counter(), process_time()
    res = mem.move_pages(pfns)
    return res, perf_counter() - t0, process_time() - c0


def worker_throughput(protocol: str, n: int, rounds: int, big_rounds: int) -> dict:
    sizes = get_mix(MIX).sizes(n, SEED)
    src = random.Random(SEED).randbytes(SRC_LEN)
    pool = zsmalloc.Pool(name=f"migration-{protocol}", migration=protocol)
    handles = _fill(pool, sizes, src)
    mem = pool.memory
    rng = random.Random(SEED + 1)
    schedule = [BATCH] * rounds + [BIG_BATCH] * big_rounds
    rng.shuffle(schedule)
    per: dict[int, dict[str, list[float]]] = {
        b: {"us": [], "cpu_us": [], "pages_per_s": []} for b in (BATCH, BIG_BATCH)
    }
    totals = {"attempted": 0, "succeeded": 0, "failed": 0, "retried": 0}
    gc.collect()
    gc.disable()
    try:
        for batch in schedule:
            pfns = rng.sample(mem.used_pfns(), batch)
            res, wall, cpu = _timed_move(mem, pfns)
            totals["attempted"] += batch
            totals["succeeded"] += res.succeeded
            totals["failed"] += res.failed
            totals["retried"] += res.retried
            if res.succeeded:
                per[batch]["us"].append(wall / res.succeeded * 1e6)
                per[batch]["cpu_us"].append(cpu / res.succeeded * 1e6)
                per[batch]["pages_per_s"].append(res.succeeded / wall)
    finally:
        gc.enable()
    intact, why = _intact(pool, handles, sizes, src)
    by_batch = {
        str(b): {
            "rounds": len(v["us"]),
            "us_per_page": common.summary(v["us"]),
            "cpu_us_per_page": common.summary(v["cpu_us"]),
            "pages_per_s": common.summary(v["pages_per_s"]),
        }
        for b, v in per.items()
        if v["us"]
    }
    return {
        "protocol": protocol,
        "objects": n,
        "pool_pages": pool.total_pages,
        "by_batch": by_batch,
        **totals,
        "intact": intact,
        "intact_detail": why,
        "vmstat": {k: v for k, v in mem.stats().items() if not k.startswith("nr_")},
    }


def worker_per_page(protocol: str, request: int, pages: int, passes: int) -> dict:
    size, ppz, opz = class_geometry(request)
    n = pages * opz // ppz
    sizes = [request] * n
    src = random.Random(SEED).randbytes(SRC_LEN)
    pool = zsmalloc.Pool(name=f"migration-{protocol}-{request}", migration=protocol)
    handles = _fill(pool, sizes, src)
    mem = pool.memory
    copy_src = bytearray(src[:PAGE_SIZE]) * pages
    copy_dst = bytearray(b"\xff") * len(copy_src)  # touched now: no first-touch faults in the timing
    vsrc, vdst = memoryview(copy_src), memoryview(copy_dst)
    mig_us, mig_cpu, copy_us = [], [], []
    totals = {"attempted": 0, "succeeded": 0, "failed": 0, "retried": 0}
    gc.collect()
    gc.disable()
    try:
        for p in range(passes):
            if p % 2:  # alternate which goes first
                copy_us.append(_copy_pass(vsrc, vdst, pages))
            used = mem.used_pfns()
            wall = cpu = 0.0
            moved = 0
            for i in range(0, len(used), BATCH):
                res, w, c = _timed_move(mem, used[i : i + BATCH])
                wall += w
                cpu += c
                moved += res.succeeded
                totals["attempted"] += len(used[i : i + BATCH])
                totals["succeeded"] += res.succeeded
                totals["failed"] += res.failed
                totals["retried"] += res.retried
            mig_us.append(wall / moved * 1e6)
            mig_cpu.append(cpu / moved * 1e6)
            if not p % 2:
                copy_us.append(_copy_pass(vsrc, vdst, pages))
    finally:
        gc.enable()
    if copy_dst != copy_src:
        raise AssertionError("the copy floor copied wrong")
    intact, why = _intact(pool, handles, sizes, src)
    return {
        "protocol": protocol,
        "request": request,
        "class_size": size,
        "pages_per_zspage": ppz,
        "objs_per_zspage": opz,
        "objs_per_page": opz / ppz,
        "objects": n,
        "pool_pages": pool.total_pages,
        "passes": passes,
        "us_per_page": common.summary(mig_us),
        "cpu_us_per_page": common.summary(mig_cpu),
        "copy_us_per_page": common.summary(copy_us),
        **totals,
        "intact": intact,
        "intact_detail": why,
    }


def _copy_pass(vsrc: memoryview, vdst: memoryview, pages: int) -> float:
    """µs per raw 4 KiB memoryview slice copy, loop included."""
    t0 = perf_counter()
    for i in range(pages):
        off = i << 12
        vdst[off : off + PAGE_SIZE] = vsrc[off : off + PAGE_SIZE]
    return (perf_counter() - t0) / pages * 1e6


# ----------------------------------------------------------------------
# the driver


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line y = a + b x; returns (a, b)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - b * mx, b


def run(quick: bool = False) -> dict:
    cfg = QUICK if quick else FULL
    script = Path(__file__).resolve()
    throughput = []
    for protocol in PROTOCOLS:
        common.log(f"migration: throughput, {protocol}, {cfg['objects']:,} objects")
        throughput.append(
            common.run_worker(
                script,
                ["throughput", protocol, str(cfg["objects"]), str(cfg["rounds"]), str(cfg["big_rounds"])],
            )
        )
    per_page = []
    for request in REQUEST_SIZES:
        for protocol in PROTOCOLS:
            common.log(f"migration: per page, {protocol}, {request}-byte objects, {cfg['pages']} pages")
            per_page.append(
                common.run_worker(
                    script, ["per-page", protocol, str(request), str(cfg["pages"]), str(cfg["passes"])]
                )
            )
    fits = {}
    for protocol in PROTOCOLS:
        rows = [r for r in per_page if r["protocol"] == protocol]
        a, b = _fit([r["objs_per_page"] for r in rows], [r["us_per_page"]["median"] for r in rows])
        fits[protocol] = {"us_per_page_fixed": a, "us_per_object": b}

    targets = []
    for t in throughput:
        small, big = t["by_batch"].get(str(BATCH)), t["by_batch"].get(str(BIG_BATCH))
        ratio = big["us_per_page"]["median"] / small["us_per_page"]["median"] if small and big else None
        cpu_ratio = (
            big["cpu_us_per_page"]["median"] / small["cpu_us_per_page"]["median"] if small and big else None
        )
        t["batch_ratio"], t["batch_ratio_cpu"] = ratio, cpu_ratio
        targets.append(
            {
                "name": f"move_pages per-page cost, batch {BIG_BATCH} / batch {BATCH}",
                "config": f"{t['protocol']}, {MIX}, {t['objects']:,} objects",
                "value": f"{fmt(ratio)} (CPU time {fmt(cpu_ratio)})",
                "limit": f"<= {BATCH_FLAT_LIMIT} (full run)",
                "ok": None if quick or ratio is None else ratio <= BATCH_FLAT_LIMIT,
            }
        )
    for protocol in PROTOCOLS:
        runs = [r for r in [*throughput, *per_page] if r["protocol"] == protocol]
        attempted = sum(r["attempted"] for r in runs)
        failed = sum(r["failed"] for r in runs)
        bad = [r.get("intact_detail") or "?" for r in runs if not r["intact"]]
        targets.append(
            {
                "name": "every page moved, contents and pool intact",
                "config": f"{protocol}, all runs",
                "value": f"{attempted - failed:,} / {attempted:,} moved"
                + ("" if not bad else f"; {len(bad)} run(s) damaged: {bad[0]}"),
                "limit": "all, intact",
                "ok": failed == 0 and not bad,
            }
        )
    return {
        "name": NAME,
        "quick": quick,
        "mix": MIX,
        "seed": SEED,
        "config": cfg,
        "batch": BATCH,
        "big_batch": BIG_BATCH,
        "throughput": throughput,
        "per_page": per_page,
        "fits": fits,
        "targets": targets,
    }


def _mm(s: dict, digits: int = 1) -> str:
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)})"


def markdown(doc: dict) -> str:
    cfg = doc["config"]
    out = [
        "## Migration (`bench_migration.py`)",
        "",
        f"Method: (a) a pool filled with {cfg['objects']:,} objects of the {doc['mix']} mix (seed "
        f"{doc['seed']}), one fresh subprocess per protocol (`Pool(migration=...)`); each round picks "
        "random in-use pool pages (`memory.used_pfns()`, outside the timing) and times "
        f"`memory.move_pages(batch)`: {cfg['rounds']} rounds of {doc['batch']} pages (the kernel's "
        f"COMPACT_CLUSTER_MAX) and {cfg['big_rounds']} of {doc['big_batch']}, interleaved. Figures: "
        "median over rounds (min-max), wall clock, with CPU time (`time.process_time`) beside it. "
        f"(b) pools of {cfg['pages']:,} pages holding objects of one size, so that every page holds "
        "the same number of objects (the classes used are all one page per zspage); a pass migrates "
        f"every page once (batches of {doc['batch']}); median over {cfg['passes']} passes. Peer floor, "
        "in the same passes: a raw 4 KiB copy between two memoryviews "
        "(`dst[off:off+4096] = src[off:off+4096]`), loop included. Destination frames come from the "
        "allocator (the frame just vacated is the next one handed out: no page fault). Every object is "
        "read back and `pool.check()` run at the end. GC disabled while timing.",
        "",
        "### Throughput, random in-use pages of a filled pool",
        "",
    ]
    rows = []
    for t in doc["throughput"]:
        for batch, b in t["by_batch"].items():
            rows.append(
                [
                    t["protocol"],
                    f"{int(batch):,}",
                    b["rounds"],
                    f"{b['pages_per_s']['median']:,.0f}",
                    _mm(b["us_per_page"]),
                    fmt(b["cpu_us_per_page"]["median"], 1),
                ]
            )
    out.append(
        md_table(
            [
                "protocol",
                "batch (pages)",
                "rounds",
                "pages/s median",
                "µs/page median (min-max)",
                "CPU µs/page",
            ],
            rows,
            align="lrrrrr",
        )
    )
    out.append("")
    tot = [
        f"{t['protocol']}: pool of {fmt_int(t['pool_pages'])} pages, {fmt_int(t['attempted'])} pages "
        f"attempted, {fmt_int(t['succeeded'])} moved, {t['failed']} failed, {t['retried']} retried; "
        f"per-page cost at {doc['big_batch']} / at {doc['batch']}: {fmt(t['batch_ratio'])} "
        f"(CPU time {fmt(t['batch_ratio_cpu'])})"
        for t in doc["throughput"]
    ]
    out.append("; ".join(tot) + ".")
    out += ["", "### µs per page against objects per page", ""]
    rows = []
    for r in doc["per_page"]:
        rows.append(
            [
                r["protocol"],
                f"{r['request']} (class {r['class_size']})",
                f"{r['objs_per_page']:g}",
                fmt_int(r["pool_pages"]),
                _mm(r["us_per_page"]),
                fmt(r["cpu_us_per_page"]["median"], 1),
                fmt(r["copy_us_per_page"]["median"], 3),
                f"{r['us_per_page']['median'] / r['copy_us_per_page']['median']:,.0f}x",
            ]
        )
    out.append(
        md_table(
            [
                "protocol",
                "request bytes",
                "objects/page",
                "pages",
                "migrate µs/page median (min-max)",
                "CPU µs/page",
                "raw 4 KiB copy µs",
                "migrate / copy",
            ],
            rows,
            align="llrrrrrr",
        )
    )
    fits = "; ".join(
        f"{p}: {fmt(f['us_per_page_fixed'], 1)} µs per page + {fmt(f['us_per_object'], 2)} µs per object"
        for p, f in doc["fits"].items()
    )
    out += [
        "",
        f"Least-squares line through the medians, µs per page = fixed + per object x objects: {fits}. "
        "The raw copy is the floor any page migration in Python pays for moving the bytes; the rest is "
        "the protocol (isolate, page and pool locks, handle re-pointing, chain rebuild, refcounts).",
    ]
    return "\n".join(out)


def _dispatch(args: list[str]) -> dict:
    kind, *rest = args
    if kind == "throughput":
        protocol, n, rounds, big_rounds = rest
        return worker_throughput(protocol, int(n), int(rounds), int(big_rounds))
    protocol, request, pages, passes = rest
    return worker_per_page(protocol, int(request), int(pages), int(passes))


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(__doc__, argv, NAME, run, markdown, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
