"""zram: page write/read throughput and memory of ``ZramDevice`` against a dict of lz4 bytes.

What it measures
----------------
The same seeded set of 4 KiB pages (50k pages, 195 MiB, in the full run;
2k with ``--quick``) is stored in

- **ours**: ``ZramDevice(n * 4096, algorithm="lz4")``: ``write_page(i, page)``
  and ``read_page(i)``;
- **the dict peer**: ``d[i] = lz4.block.compress(page, store_size=False)``
  and ``lz4.block.decompress(d[i], uncompressed_size=4096)``: the obvious
  pure-Python compressed page store, with the same codec;
- **zict**: ``zict.Func(compress, decompress, dict)`` with the same lz4
  calls, the compressed mapping Dask spills to (the ``bench`` extra installs
  it; reported "not installed" when absent).

(a) write throughput and (b) read throughput, in pages/s and MB/s of
uncompressed page data (MB = 10^6 bytes); targets: ours >= 0.8 x the dict
peer for writes and >= 0.7 x for reads.  (c) memory: the process RSS growth
(RSS minus the RSS read just before the store was created) after the fill,
against the device's ``mm_stat().compr_data_size`` (target <= 1.08 x); then
a random half of the pages is discarded (``dev.discard(i, 1)``, fixed seed,
random order), followed by ``dev.compact()`` and ``dev.pool.memory.compact()``
(each followed by ``flush_deferred()``, ``memory.drain_pages()`` and
``gc.collect()``), and the RSS growth is compared with the dict peer's
after ``del d[i]`` of the same keys (target: ours <= 0.6 x the dict's), and
with zict's after ``del m[i]``.

The pages
---------
``zsmalloc.workloads.get_page_source("kernel-build")(n, 4321)``: real 4 KiB
page contents whose lz4 sizes follow the kernel-build mix of KERNEL.md
section 8 (8 % incompressible pages, stored whole as "huge"; the rest mostly
1.1-2.5 KB), with 15 % same-filled pages (90 % of them zero), which zram
keeps without allocating (see ``zsmalloc/workloads/pages.py`` for how each
page is calibrated against lz4).  The pages are made before the RSS
baseline and the timing.

How
---
Throughput: each round is a fresh subprocess that makes the pages, then
times ours and the dict peer, in alternating order from round to round,
writing every page (indexes 0..n-1 in order), then reading every page back
(in a shuffled order, the same for both); reads are verified after the
timing.  ``gc.disable()`` while timing.  Full run: 5 rounds; medians with
min-max.  Memory: each store in its own fresh subprocess (3 of each,
interleaved, in the full run); RSS figures are medians.

Run: ``.venv/bin/python benchmarks/bench_zram.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import lz4.block

import common
from common import fmt, fmt_int, fmt_mib, md_table
from zsmalloc.workloads import get_page_source

NAME = "zram"
SEED = 4321
WORKLOAD = "kernel-build"
FULL_N = 50_000
QUICK_N = 2_000
FULL_ROUNDS = 5
FULL_MEM_REPEATS = 3
PAGE = 4096
DISCARD_FRACTION = 0.5
WRITE_LIMIT = 1.1  # ours / dict, pages/s, a page per call
READ_LIMIT = 1.2
NATIVE_LIMIT = 0.8  # batched write path / the codec alone, in the engine
SCALE_LIMIT = 1.7  # two threads / one, batched, when both cores are free
THREADS_DICT_LIMIT = 2.0  # two threads batched / the dict peer with two threads
FILL_RSS_LIMIT = 1.05  # RSS growth / compr_data_size after the fill
CHURN_RSS_LIMIT = 0.6  # ours / dict RSS growth after discarding half
BATCH = 64  # pages per write_pages / read_pages call
PROBE_FREE = 1.85  # the probe's two-thread speed-up above which both cores count as free


# ----------------------------------------------------------------------
# the pages


class Pages:
    """``n`` pages of the workload, with the discard victims and the read order drawn from the seed."""

    def __init__(self, n: int, seed: int = SEED) -> None:
        self.pages = list(get_page_source(WORKLOAD)(n, seed))
        self.n = n
        self.same = sum(p[:8] * 512 == p for p in self.pages)
        self.victims = random.Random(seed + 1).sample(range(n), int(n * DISCARD_FRACTION))
        self.read_order = list(range(n))
        random.Random(seed + 2).shuffle(self.read_order)


def lz4_stats(pages: list[bytes]) -> dict:
    sizes = sorted(len(lz4.block.compress(p, store_size=False)) for p in pages)
    n = len(sizes)
    return {
        "lz4_bytes": sum(sizes),
        "lz4_p10": sizes[n // 10],
        "lz4_median": sizes[n // 2],
        "lz4_p90": sizes[(9 * n) // 10],
    }


# ----------------------------------------------------------------------
# the stores, timed


def _time_ours(pages: Pages) -> tuple[float, float, bool]:
    from zsmalloc.zram import ZramDevice

    dev = ZramDevice(pages.n * PAGE, algorithm="lz4")
    write, read, data, order = dev.write_page, dev.read_page, pages.pages, pages.read_order
    t0 = time.perf_counter()
    for i, page in enumerate(data):
        write(i, page)
    t1 = time.perf_counter()
    for i in order:
        read(i)
    t2 = time.perf_counter()
    ok = all(read(i) == data[i] for i in range(pages.n))
    dev.close()
    return t1 - t0, t2 - t1, ok


def _batches(pages: Pages) -> list[tuple[int, bytes]]:
    """The pages joined into buffers of BATCH pages, with their first index (made before timing)."""
    data = pages.pages
    return [(i, b"".join(data[i : i + BATCH])) for i in range(0, pages.n, BATCH)]


def _time_batched(pages: Pages) -> tuple[float, float, bool]:
    from zsmalloc.zram.engine import ZramDevice  # the batch calls are the engine device's

    dev = ZramDevice(pages.n * PAGE, algorithm="lz4")
    batches = _batches(pages)
    t0 = time.perf_counter()
    for i, buf in batches:
        dev.write_pages(i, buf)
    t1 = time.perf_counter()
    for i, buf in batches:
        dev.read_pages(i, len(buf) // PAGE)
    t2 = time.perf_counter()
    ok = all(dev.read_pages(i, len(buf) // PAGE) == buf for i, buf in batches)
    dev.close()
    return t1 - t0, t2 - t1, ok


def _time_dict(pages: Pages) -> tuple[float, float, bool]:
    compress, decompress = lz4.block.compress, lz4.block.decompress
    d: dict[int, bytes] = {}
    data, order = pages.pages, pages.read_order
    t0 = time.perf_counter()
    for i, page in enumerate(data):
        d[i] = compress(page, store_size=False)
    t1 = time.perf_counter()
    for i in order:
        decompress(d[i], uncompressed_size=PAGE)
    t2 = time.perf_counter()
    ok = all(decompress(d[i], uncompressed_size=PAGE) == data[i] for i in range(pages.n))
    return t1 - t0, t2 - t1, ok


def _zict_mapping(raw: dict[int, bytes] | None = None):
    """zict's compressed mapping (``Func(compress, decompress, raw)``), or None if zict is absent."""
    try:
        import zict  # not a dependency: measured only when present
    except ImportError:
        return None

    def dump(page: bytes) -> bytes:
        return lz4.block.compress(page, store_size=False)

    def load(blob: bytes) -> bytes:
        return lz4.block.decompress(blob, uncompressed_size=PAGE)

    return zict.Func(dump, load, {} if raw is None else raw)


def _time_zict(pages: Pages) -> tuple[float, float, bool] | None:
    m = _zict_mapping()
    if m is None:
        return None
    data, order = pages.pages, pages.read_order
    t0 = time.perf_counter()
    for i, page in enumerate(data):
        m[i] = page
    t1 = time.perf_counter()
    for i in order:
        m[i]
    t2 = time.perf_counter()
    ok = all(m[i] == data[i] for i in range(pages.n))
    return t1 - t0, t2 - t1, ok


# ----------------------------------------------------------------------
# workers


def worker_speed(n: int, round_no: int) -> dict:
    pages = Pages(n)
    order = [("ours", _time_ours), ("dict", _time_dict), ("batched", _time_batched), ("zict", _time_zict)]
    if round_no % 2:
        order[0], order[1] = order[1], order[0]
    out: dict = {"same_filled": pages.same, **lz4_stats(pages.pages)}
    for name, fn in order:
        gc.collect()
        gc.disable()
        try:
            res = fn(pages)
        finally:
            gc.enable()
        if res is None:
            out[name] = None
            continue
        w, r, ok = res
        out[name] = {"write_s": w, "read_s": r, "intact": ok}
    return out


def _in_threads(nthreads: int, fn) -> float:
    """Wall seconds of ``fn(t, nthreads)`` run in ``nthreads`` threads at once."""
    threads = [threading.Thread(target=fn, args=(t, nthreads)) for t in range(nthreads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def worker_threads(n: int) -> dict:
    """Batched calls on one device from one thread, then from two (each its own pages); the dict alike."""
    from zsmalloc.zram.engine import ZramDevice  # the batch calls are the engine device's

    pages = Pages(n)
    batches = _batches(pages)
    compress, decompress = lz4.block.compress, lz4.block.decompress
    out: dict = {"probe_before": common.core_probe()}
    gc.disable()
    try:
        for nthreads in (1, 2):
            dev = ZramDevice(n * PAGE, algorithm="lz4")

            def write(t: int, k: int, dev=dev) -> None:
                for i, buf in batches[t::k]:
                    dev.write_pages(i, buf)

            def read(t: int, k: int, dev=dev) -> None:
                for i, buf in batches[t::k]:
                    dev.read_pages(i, len(buf) // PAGE)

            w = _in_threads(nthreads, write)
            r = _in_threads(nthreads, read)
            intact = all(dev.read_pages(i, len(buf) // PAGE) == buf for i, buf in batches)
            dev.close()
            d: dict[int, bytes] = {}

            def dict_write(t: int, k: int, d=d, data=pages.pages) -> None:
                for i in range(t, n, k):
                    d[i] = compress(data[i], store_size=False)

            def dict_read(t: int, k: int, d=d) -> None:
                for i in range(t, n, k):
                    decompress(d[i], uncompressed_size=PAGE)

            dw = _in_threads(nthreads, dict_write)
            dr = _in_threads(nthreads, dict_read)
            out[str(nthreads)] = {
                "write_s": w,
                "read_s": r,
                "dict_write_s": dw,
                "dict_read_s": dr,
                "intact": intact,
            }
    finally:
        gc.enable()
    out["probe_after"] = common.core_probe()
    return out


def native_write(n: int, rounds: int, algorithms: tuple[str, ...]) -> dict[str, dict]:
    """The engine's own benchmark (engine/core/examples/zram_write.rs) on the same pages.

    One round of each algorithm at a time, which goes first rotating, so that a
    busy spell of the machine falls on all of them alike.
    """
    repo = common.REPO_DIR
    subprocess.run(
        [
            "cargo",
            "build",
            "--quiet",
            "--locked",
            "--release",
            "-p",
            "zsmalloc-core",
            "--example",
            "zram_write",
        ],
        cwd=repo,
        check=True,
    )
    runs: dict[str, dict] = {}
    with tempfile.NamedTemporaryFile(prefix="zram-pages-", suffix=".bin") as f:
        f.write(b"".join(Pages(n).pages))
        f.flush()
        exe = repo / "target" / "release" / "examples" / "zram_write"
        for r in range(rounds):
            for algorithm in algorithms[r % len(algorithms) :] + algorithms[: r % len(algorithms)]:
                proc = subprocess.run(
                    [str(exe), f.name, algorithm, "1", str(BATCH)], capture_output=True, text=True, check=True
                )
                one = json.loads(proc.stdout)
                run = runs.setdefault(algorithm, {**one, "codec_s": [], "write_s": [], "frames_s": []})
                for key in ("codec_s", "write_s", "frames_s"):
                    run[key] += one[key]
    return runs


def worker_mem_ours(n: int) -> dict:
    from zsmalloc.zram import ZramDevice

    pages = Pages(n)
    gc.collect()
    common.malloc_trim()  # the page maker's freed temporaries out of the baseline (both stores)
    rss0 = common.rss_bytes()
    dev = ZramDevice(n * PAGE, algorithm="lz4")
    for i, page in enumerate(pages.pages):
        dev.write_page(i, page)
    gc.collect()
    rss_filled = common.rss_bytes()
    st_filled = dev.mm_stat()
    for i in pages.victims:
        dev.discard(i, 1)
    pool = dev.pool
    pool.flush_deferred()
    pool.memory.drain_pages()
    gc.collect()
    rss_discarded = common.rss_bytes()
    dev.compact()
    pool.flush_deferred()
    pool.memory.drain_pages()
    pool.memory.compact()
    pool.flush_deferred()
    pool.memory.drain_pages()
    gc.collect()
    rss_compacted = common.rss_bytes()
    st_final = dev.mm_stat()
    dead = set(pages.victims)
    zero = bytes(PAGE)
    intact = all(dev.read_page(i) == (zero if i in dead else pages.pages[i]) for i in range(n))
    try:
        dev.check()
    except Exception:  # reported, not raised
        intact = False
    return {
        "rss_start": rss0,
        "filled": {
            "rss_growth": rss_filled - rss0,
            "compr_data_size": st_filled.compr_data_size,
            "mem_used_total": st_filled.mem_used_total,
            "same_pages": st_filled.same_pages,
            "huge_pages": st_filled.huge_pages,
        },
        "discarded": {"rss_growth": rss_discarded - rss0},
        "compacted": {
            "rss_growth": rss_compacted - rss0,
            "compr_data_size": st_final.compr_data_size,
            "mem_used_total": st_final.mem_used_total,
        },
        "intact": intact,
    }


def worker_mem_peer(n: int, peer: str) -> dict:
    """RSS of the dict peer (``peer == "dict"``) or of zict's mapping, filled and after ``del``."""
    pages = Pages(n)
    compress = lz4.block.compress
    gc.collect()
    common.malloc_trim()  # as for ours
    rss0 = common.rss_bytes()
    raw: dict[int, bytes] = {}
    if peer == "dict":
        store = raw
        for i, page in enumerate(pages.pages):
            raw[i] = compress(page, store_size=False)
    else:
        store = _zict_mapping(raw)
        for i, page in enumerate(pages.pages):
            store[i] = page
    gc.collect()
    rss_filled = common.rss_bytes()
    held_filled = sum(len(v) for v in raw.values())
    for i in pages.victims:
        del store[i]
    gc.collect()
    rss_deleted = common.rss_bytes()
    held_live = sum(len(v) for v in raw.values())
    return {
        "rss_start": rss0,
        "filled": {"rss_growth": rss_filled - rss0, "lz4_bytes": held_filled},
        "deleted": {"rss_growth": rss_deleted - rss0, "lz4_bytes": held_live},
    }


# ----------------------------------------------------------------------
# the driver


def _rate(n: int, seconds: list[float]) -> dict:
    """pages/s and MB/s (median, min, max over rounds) from per-round times."""
    rates = [n / s for s in seconds]
    med = common.median(rates)
    return {
        "pages_per_s": med,
        "pages_per_s_min": min(rates),
        "pages_per_s_max": max(rates),
        "mb_per_s": med * PAGE / 1e6,
    }


def run(quick: bool = False) -> dict:
    n = QUICK_N if quick else FULL_N
    rounds = 1 if quick else FULL_ROUNDS
    mem_repeats = 1 if quick else FULL_MEM_REPEATS
    script = Path(__file__).resolve()

    speed_runs = []
    for r in range(rounds):
        common.log(f"zram: throughput, {n:,} pages, round {r + 1}/{rounds}")
        speed_runs.append(common.run_worker(script, ["speed", str(n), str(r)]))
    thread_runs = []
    for r in range(rounds):
        common.log(f"zram: batched calls in one and two threads, {n:,} pages, round {r + 1}/{rounds}")
        thread_runs.append(common.run_worker(script, ["threads", str(n)]))
    common.log(f"zram: the engine's write path against its codec alone (lz4, lz4-kernel), {n:,} pages")
    native_runs = native_write(n, max(rounds, 3), ("lz4", "lz4-kernel"))
    native, native_kernel = native_runs["lz4"], native_runs["lz4-kernel"]
    zict_here = speed_runs[0]["zict"] is not None
    ours_runs: list[dict] = []
    peer_runs: dict[str, list[dict]] = {"dict": [], "zict": []} if zict_here else {"dict": []}
    for r in range(mem_repeats):
        common.log(f"zram: memory, ZramDevice, {n:,} pages, run {r + 1}/{mem_repeats}")
        ours_runs.append(common.run_worker(script, ["mem-ours", str(n)]))
        for peer, runs in peer_runs.items():
            common.log(f"zram: memory, {peer} peer, {n:,} pages, run {r + 1}/{mem_repeats}")
            runs.append(common.run_worker(script, ["mem-peer", str(n), peer]))

    speed: dict = {}
    for store in ("ours", "batched", "dict", "zict"):
        if speed_runs[0][store] is None:
            speed[store] = None
            continue
        rs = [run_[store] for run_ in speed_runs]
        speed[store] = {
            "write": _rate(n, [x["write_s"] for x in rs]),
            "read": _rate(n, [x["read_s"] for x in rs]),
            "intact": all(x["intact"] for x in rs),
        }
    # ratios per round (the two stores ran side by side in each), then the median
    w_ratio = common.median(x["dict"]["write_s"] / x["ours"]["write_s"] for x in speed_runs)
    r_ratio = common.median(x["dict"]["read_s"] / x["ours"]["read_s"] for x in speed_runs)
    bw_ratio = common.median(x["dict"]["write_s"] / x["batched"]["write_s"] for x in speed_runs)
    br_ratio = common.median(x["dict"]["read_s"] / x["batched"]["read_s"] for x in speed_runs)
    native_ratio = common.median(c / w for c, w in zip(native["codec_s"], native["write_s"], strict=True))

    def per_round(key: str, num: str, den: str, a: str = "1", b: str = "2") -> dict:
        return common.summary([x[a][num] / x[b][den] for x in thread_runs])

    threads = {
        "probe": common.summary([min(x["probe_before"], x["probe_after"]) for x in thread_runs]),
        "write_scaling": per_round("w", "write_s", "write_s"),
        "read_scaling": per_round("r", "read_s", "read_s"),
        "write_vs_dict": per_round("w", "dict_write_s", "write_s", "2", "2"),
        "read_vs_dict": per_round("r", "dict_read_s", "read_s", "2", "2"),
        "dict_write_scaling": per_round("w", "dict_write_s", "dict_write_s"),
        "one_write_pages_per_s": common.median(n / x["1"]["write_s"] for x in thread_runs),
        "two_write_pages_per_s": common.median(n / x["2"]["write_s"] for x in thread_runs),
        "one_read_pages_per_s": common.median(n / x["1"]["read_s"] for x in thread_runs),
        "two_read_pages_per_s": common.median(n / x["2"]["read_s"] for x in thread_runs),
        "intact": all(x[k]["intact"] for x in thread_runs for k in ("1", "2")),
    }
    cores_free = threads["probe"]["median"] >= PROBE_FREE

    def med(runs: list[dict], stage: str, key: str) -> float:
        return common.median(x[stage][key] for x in runs)

    ours_mem = {
        "rss_start": common.median(x["rss_start"] for x in ours_runs),
        "filled_rss_growth": med(ours_runs, "filled", "rss_growth"),
        "discarded_rss_growth": med(ours_runs, "discarded", "rss_growth"),
        "compacted_rss_growth": med(ours_runs, "compacted", "rss_growth"),
        "filled": ours_runs[0]["filled"],
        "compacted": {k: v for k, v in ours_runs[0]["compacted"].items() if k != "rss_growth"},
        "intact": all(x["intact"] for x in ours_runs),
        "runs": ours_runs,
    }
    peers_mem = {
        peer: {
            "rss_start": common.median(x["rss_start"] for x in runs),
            "filled_rss_growth": med(runs, "filled", "rss_growth"),
            "deleted_rss_growth": med(runs, "deleted", "rss_growth"),
            "filled_lz4_bytes": runs[0]["filled"]["lz4_bytes"],
            "deleted_lz4_bytes": runs[0]["deleted"]["lz4_bytes"],
            "runs": runs,
        }
        for peer, runs in peer_runs.items()
    }
    dict_mem = peers_mem["dict"]
    fill_ratio = ours_mem["filled_rss_growth"] / ours_mem["filled"]["compr_data_size"]
    churn_ratio = ours_mem["compacted_rss_growth"] / dict_mem["deleted_rss_growth"]

    config = f"{n:,} pages, lz4"
    intact = ours_mem["intact"] and speed["ours"]["intact"] and speed["dict"]["intact"]
    intact = intact and speed["batched"]["intact"] and threads["intact"]
    probe = threads["probe"]["median"]
    w2, r2 = threads["write_scaling"]["median"], threads["read_scaling"]["median"]
    targets = [
        {
            "name": "write pages/s, a page per call, ZramDevice / dict of lz4 bytes",
            "config": config,
            "value": fmt(w_ratio, 2),
            "limit": f">= {WRITE_LIMIT}",
            "ok": w_ratio >= WRITE_LIMIT,
        },
        {
            "name": "read pages/s, a page per call, ZramDevice / dict of lz4 bytes",
            "config": config,
            "value": fmt(r_ratio, 2),
            "limit": f">= {READ_LIMIT}",
            "ok": r_ratio >= READ_LIMIT,
        },
        {
            "name": "batched write path / the codec alone, timed in the engine",
            "config": f"{n:,} pages, lz4, {BATCH} pages a call",
            "value": fmt(native_ratio, 2),
            "limit": f">= {NATIVE_LIMIT}",
            "ok": native_ratio >= NATIVE_LIMIT,
        },
        {
            "name": "batched, two threads / one thread, write and read",
            "config": f"{config}, probe {fmt(probe, 2)}"
            + ("" if cores_free else " (the other core was busy)"),
            "value": f"{fmt(w2, 2)} / {fmt(r2, 2)}",
            "limit": f">= {SCALE_LIMIT} when the probe is >= {PROBE_FREE}",
            "ok": (min(w2, r2) >= SCALE_LIMIT) if cores_free else None,
        },
        {
            "name": "batched, two threads / the dict peer in two threads, write and read",
            "config": config,
            "value": f"{fmt(threads['write_vs_dict']['median'], 2)} / "
            f"{fmt(threads['read_vs_dict']['median'], 2)}",
            "limit": f">= {THREADS_DICT_LIMIT}",
            "ok": min(threads["write_vs_dict"]["median"], threads["read_vs_dict"]["median"])
            >= THREADS_DICT_LIMIT,
        },
        {
            "name": "RSS growth after fill / compr_data_size",
            "config": config,
            "value": fmt(fill_ratio),
            "limit": f"<= {FILL_RSS_LIMIT}",
            "ok": fill_ratio <= FILL_RSS_LIMIT,
        },
        {
            "name": "RSS growth after discard of half + compaction, ours / dict after del",
            "config": config,
            "value": fmt(churn_ratio),
            "limit": f"<= {CHURN_RSS_LIMIT}",
            "ok": churn_ratio <= CHURN_RSS_LIMIT,
        },
        {
            "name": "pages read back intact, check() clean",
            "config": config,
            "value": "yes" if intact else "no",
            "limit": "yes",
            "ok": intact,
        },
    ]
    first = speed_runs[0]
    return {
        "name": NAME,
        "quick": quick,
        "seed": SEED,
        "pages": n,
        "rounds": rounds,
        "mem_repeats": mem_repeats,
        "workload": WORKLOAD,
        "same_filled": first["same_filled"],
        "lz4": {k: first[k] for k in ("lz4_bytes", "lz4_p10", "lz4_median", "lz4_p90")},
        "zict": "measured" if speed["zict"] is not None else "not installed",
        "speed": speed,
        "write_ratio": w_ratio,
        "read_ratio": r_ratio,
        "batched_write_ratio": bw_ratio,
        "batched_read_ratio": br_ratio,
        "native": native,
        "native_kernel": native_kernel,
        "native_ratio": native_ratio,
        "threads": threads,
        "thread_runs": thread_runs,
        "speed_runs": speed_runs,
        "memory": {"ours": ours_mem, **peers_mem},
        "fill_rss_ratio": fill_ratio,
        "churn_rss_ratio": churn_ratio,
        "targets": targets,
    }


def markdown(doc: dict) -> str:
    n = doc["pages"]
    lz = doc["lz4"]
    out = [
        "## zram (`bench_zram.py`)",
        "",
        f"Method: {n:,} pages of the `{doc['workload']}` page source (seed {doc['seed']}; "
        "`zsmalloc.workloads`): page contents whose lz4 sizes follow the kernel-build mix of KERNEL.md "
        f"section 8, {doc['same_filled']:,} of them same-filled. lz4 (`store_size=False`) leaves "
        f"{fmt_mib(lz['lz4_bytes'])} MiB of {fmt_mib(n * PAGE)} MiB; per page p10 / median / p90 = "
        f"{lz['lz4_p10']:,} / {lz['lz4_median']:,} / {lz['lz4_p90']:,} bytes. Ours: "
        '`ZramDevice(n * 4096, algorithm="lz4")`, `write_page(i, page)` for i in order, then '
        "`read_page(i)` in a shuffled order. Peers: a `dict {i: lz4.block.compress(page, "
        "store_size=False)}`, read with `lz4.block.decompress(..., uncompressed_size=4096)`, and zict's "
        "`Func(compress, decompress, dict)` with the same calls; same pages, same orders. Throughput: "
        f"{doc['rounds']} round(s), each a fresh subprocess timing every store (rotating which goes "
        "first), `gc.disable()` while timing; medians (min-max); the ratio is the median of the "
        f"per-round ratios. MB = 10^6 bytes of uncompressed pages. zict: {doc['zict']}.",
        "",
    ]
    rows = []
    for store, label in (
        ("ours", "ZramDevice, a page per call"),
        ("batched", f"ZramDevice, {BATCH} pages a call"),
        ("dict", "dict of lz4 bytes"),
        ("zict", "zict Func+dict"),
    ):
        s = doc["speed"][store]
        if s is None:
            rows.append([label, "not installed", "-", "not installed", "-"])
            continue
        w, r = s["write"], s["read"]
        rows.append(
            [
                label,
                f"{w['pages_per_s']:,.0f} ({w['pages_per_s_min']:,.0f}-{w['pages_per_s_max']:,.0f})",
                f"{w['mb_per_s']:,.0f}",
                f"{r['pages_per_s']:,.0f} ({r['pages_per_s_min']:,.0f}-{r['pages_per_s_max']:,.0f})",
                f"{r['mb_per_s']:,.0f}",
            ]
        )
    rows.append(["a page per call / dict", fmt(doc["write_ratio"], 2), "", fmt(doc["read_ratio"], 2), ""])
    rows.append(
        ["batched / dict", fmt(doc["batched_write_ratio"], 2), "", fmt(doc["batched_read_ratio"], 2), ""]
    )
    out.append(md_table(["store", "write pages/s", "write MB/s", "read pages/s", "read MB/s"], rows))
    nat, th = doc["native"], doc["threads"]
    codec_ns = common.median(nat["codec_s"]) / nat["pages"] * 1e9
    write_ns = common.median(nat["write_s"]) / nat["pages"] * 1e9
    frames_ns = common.median(nat["frames_s"]) / nat["pages"] * 1e9
    out += [
        "",
        "### The write path against the codec alone, in the engine",
        "",
        f"`engine/core/examples/zram_write.rs` on the same pages: the codec (`Codec::compress`, lz4) "
        f"compressing every page, and a fresh device storing every page with `write_pages` in batches "
        f"of {nat['batch']}, {len(nat['codec_s'])} rounds each, medians. Codec alone "
        f"{codec_ns:,.0f} ns/page, the write path {write_ns:,.0f} ns/page: the write path runs at "
        f"**{fmt(doc['native_ratio'], 2)}x** the codec's throughput (it skips the codec for same-filled "
        "pages and adds the allocation and the copy).",
        "",
        "Of that, the memory: a fresh arena handing out as many frames as the device ended with "
        f"(`Memory::alloc_page`, each frame faulted in, which the OS zeroes) takes {frames_ns:,.0f} ns "
        f"per page stored ({fmt(frames_ns / write_ns * 100, 0)}% of the write path; the codec time over "
        f"the write path's less it, medians: {fmt(codec_ns / (write_ns - frames_ns), 2)}x). The "
        "kernel's zram takes its pages from the buddy allocator unzeroed; a process can only have "
        "zeroed ones, so a fresh device pays this wherever it runs.",
    ]
    kern = doc.get("native_kernel")
    if kern is not None:
        k_codec_ns = common.median(kern["codec_s"]) / kern["pages"] * 1e9
        k_write_ns = common.median(kern["write_s"]) / kern["pages"] * 1e9
        out += [
            "",
            f"The same with `lz4-kernel`, the kernel's lib/lz4 compressor (the default under a kernel "
            f"preset), rounds alternating with liblz4's: codec alone {k_codec_ns:,.0f} ns/page "
            f"({fmt(k_codec_ns / codec_ns, 2)}x liblz4's), the write path {k_write_ns:,.0f} ns/page; "
            f"the stored pages hold {kern['compr_data_size']:,} compressed bytes against liblz4's "
            f"{nat['compr_data_size']:,}.",
        ]
    out += [
        "",
        "### Two threads, batched calls",
        "",
        f"Each thread stores (then reads) its own share of the {BATCH}-page batches of one device "
        "(`write_pages`/`read_pages`, the GIL released for each batch); the dict peer's threads "
        "compress (python-lz4 releases the GIL too) into one dict. The probe is two threads of "
        "sha256 (GIL released) against one, taken before and after each round: "
        f"{fmt(th['probe']['median'], 2)} ({fmt(th['probe']['min'], 2)}-{fmt(th['probe']['max'], 2)}); "
        f"about 2 means both cores were free. Medians (min-max) over {len(doc['thread_runs'])} round(s).",
        "",
    ]
    rows = [
        [
            "ZramDevice, write",
            f"{th['one_write_pages_per_s']:,.0f}",
            f"{th['two_write_pages_per_s']:,.0f}",
            f"{fmt(th['write_scaling']['median'], 2)} ({fmt(th['write_scaling']['min'], 2)}-"
            f"{fmt(th['write_scaling']['max'], 2)})",
            f"{fmt(th['write_vs_dict']['median'], 2)}",
        ],
        [
            "ZramDevice, read",
            f"{th['one_read_pages_per_s']:,.0f}",
            f"{th['two_read_pages_per_s']:,.0f}",
            f"{fmt(th['read_scaling']['median'], 2)} ({fmt(th['read_scaling']['min'], 2)}-"
            f"{fmt(th['read_scaling']['max'], 2)})",
            f"{fmt(th['read_vs_dict']['median'], 2)}",
        ],
    ]
    out.append(
        md_table(
            [
                "store",
                "1 thread pages/s",
                "2 threads pages/s",
                "2 threads / 1",
                "2 threads / dict in 2 threads",
            ],
            rows,
        )
    )
    out.append(
        f"\nThe dict peer's own two-thread write speed-up: {fmt(th['dict_write_scaling']['median'], 2)}."
    )
    om = doc["memory"]["ours"]
    f, c = om["filled"], om["compacted"]
    out += [
        "",
        "### Memory",
        "",
        "Each store in its own fresh subprocess (the pages are made first, then `malloc_trim(0)`), "
        f"{doc['mem_repeats']} run(s) of each, medians. **RSS growth = process RSS minus the RSS read "
        "just before the store was created.** Then a random half of the pages (seed "
        f"{doc['seed'] + 1}) is discarded (`dev.discard(i, 1)`) and the device compacted "
        "(`dev.compact()`, then `dev.pool.memory.compact()`, each followed by `flush_deferred()`, "
        "`memory.drain_pages()`, `gc.collect()`); the peers delete the same keys (`del d[i]`).",
        "",
    ]
    rows = [
        [
            "ZramDevice, filled",
            fmt_mib(f["compr_data_size"]),
            fmt_mib(f["mem_used_total"]),
            fmt_mib(om["filled_rss_growth"]),
            fmt(om["filled_rss_growth"] / f["compr_data_size"]),
        ],
        ["ZramDevice, after discard of half", "-", "-", fmt_mib(om["discarded_rss_growth"]), "-"],
        [
            "ZramDevice, + dev.compact() + memory.compact()",
            fmt_mib(c["compr_data_size"]),
            fmt_mib(c["mem_used_total"]),
            fmt_mib(om["compacted_rss_growth"]),
            fmt(om["compacted_rss_growth"] / c["compr_data_size"]),
        ],
    ]
    for peer, label in (("dict", "dict of lz4 bytes"), ("zict", "zict Func(lz4)")):
        pm = doc["memory"].get(peer)
        if pm is None:
            continue
        rows += [
            [
                f"{label}, filled",
                fmt_mib(pm["filled_lz4_bytes"]),
                "-",
                fmt_mib(pm["filled_rss_growth"]),
                fmt(pm["filled_rss_growth"] / pm["filled_lz4_bytes"]),
            ],
            [
                f"{label}, after `del` of the same half",
                fmt_mib(pm["deleted_lz4_bytes"]),
                "-",
                fmt_mib(pm["deleted_rss_growth"]),
                fmt(pm["deleted_rss_growth"] / pm["deleted_lz4_bytes"]),
            ],
        ]
    out.append(
        md_table(
            [
                "store, point",
                "compressed bytes MiB",
                "mem_used_total MiB",
                "RSS growth MiB",
                "RSS growth / compressed bytes",
            ],
            rows,
        )
    )
    out += [
        "",
        f"Same pages: {fmt_int(f['same_pages'])} (stored without allocation), huge pages: "
        f"{fmt_int(f['huge_pages'])}. The dict's compressed bytes count zero pages' lz4 output "
        "(a few bytes each), the device's do not. RSS growth after compaction, ours / dict: "
        f"{fmt(doc['churn_rss_ratio'])}"
        + (
            f"; ours / zict: {fmt(om['compacted_rss_growth'] / doc['memory']['zict']['deleted_rss_growth'])}."
            if "zict" in doc["memory"]
            else "."
        ),
    ]
    return "\n".join(out)


def _dispatch(args: list[str]) -> dict:
    kind, n, *rest = args
    if kind == "speed":
        return worker_speed(int(n), int(rest[0]))
    if kind == "mem-ours":
        return worker_mem_ours(int(n))
    if kind == "threads":
        return worker_threads(int(n))
    return worker_mem_peer(int(n), rest[0])


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(__doc__, argv, NAME, run, markdown, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
