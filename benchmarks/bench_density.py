"""Density: how many pages and how much process memory a filled pool costs, engine and model.

What it measures
----------------
For both implementations of the pool, the engine (``zsmalloc.engine.Pool``,
Rust) and the model (``zsmalloc.model.Pool``, Python), for the
``kernel-build`` and ``android-zstd`` size mixes (fixed seed, 250k objects
each in the full run, 20k with ``--quick``) and chain sizes 4, 8 and 16:

- the pool's pages after a fill, and the pool overhead
  ``pages * 4096 / payload`` (payload = sum of the requested sizes);
- the page count the kernel would use for the same objects, computed here
  independently of the pool: each size plus the 8-byte handle header gives a
  class index (``get_size_class_index``), mapped to its canonical class from
  ``zsmalloc.size_classes(chain)`` (the smallest canonical index at or above
  it); then the sum over classes of ``ceil(objects / objs_per_zspage) *
  pages_per_zspage``.  Target (both): the pool's count matches exactly;
- process RSS growth over the fill, divided by the payload and by the pool's
  bytes (``pages * 4096``).  Target: at most 1.02x the pool's bytes for the
  engine (runs of at least 250k objects), 1.08x for the model (at least
  200k);
- after freeing every object, ``flush_deferred()`` and ``memory.drain_pages()``:
  the pool's pages (target 0) and the RSS against the starting RSS (target:
  at most 2% above it for the engine, 5% for the model); also the RSS once
  the pool is closed and dropped, then after glibc's ``malloc_trim(0)``, and
  (model only: the engine's tables live in Rust, out of ``sys.getsizeof``'s
  sight) an estimate of the pool's Python-side bookkeeping, to tell where a
  residue lives.

The peer, in the same run: a ``dict {i: bytes}`` holding objects of the same
sizes with the same contents (RSS growth / payload, and RSS after ``clear()``
and after ``malloc_trim(0)``).

How
---
Every configuration runs in a fresh subprocess, so each RSS baseline is clean.
In it: draw the sizes, make the 1 MiB random data source and the ``array('Q')``
that will hold the handles (the benchmark's own bookkeeping, kept out of the
measurement), ``gc.collect()`` and glibc's ``malloc_trim(0)`` (drawing the
sizes leaves a megabyte or two of freed heap that glibc keeps resident until
some later ``free()`` trims it, which would make the RSS after the free read
below the start), read the RSS (psutil), create the pool, fill it (each
object gets ``src[off:off + size]`` written, so every page is really touched;
the slice is a temporary that dies at once), read the RSS again.
Whatever the harness keeps across the run (timings, counts, RSS readings,
per-class pages) goes into arrays made before the baseline, and the loops run
in functions whose locals die with them: a single object kept from the middle
of the run would pin an arena of the interpreter's small objects (1 MiB) and
count as the pool's residue after the free.  In the full run every
configuration is repeated 3 times (3 subprocesses, engine and model
interleaved) and the RSS figures are medians; page counts are deterministic.

Run: ``.venv/bin/python benchmarks/bench_density.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import bisect
import gc
import random
import sys
import time
from array import array
from collections import Counter
from pathlib import Path

import common
import zsmalloc
import zsmalloc.engine
import zsmalloc.model
from common import fmt, fmt_int, fmt_mib, md_table, verdict
from zsmalloc.pool.size_class import get_size_class_index
from zsmalloc.workloads import get_mix

NAME = "density"
MIXES = ("kernel-build", "android-zstd")
CHAINS = (4, 8, 16)
SEED = 1234
FULL_N = 250_000
QUICK_N = 20_000
FULL_REPEATS = 3
PAGE_SIZE = 4096
HANDLE_HEADER = 8  # ZS_HANDLE_SIZE: zs_malloc adds it before the class lookup
SRC_LEN = (1 << 20) + PAGE_SIZE
OFFSET_STRIDE = 104_729  # a prime: object i gets src[(i * stride) % span :][:size]
POOLS = {"engine": zsmalloc.engine.Pool, "model": zsmalloc.model.Pool}
# per implementation: RSS growth / pool bytes, for runs of at least so many objects;
# RSS after free / RSS before the pool
RSS_GROWTH_LIMIT = {"engine": 1.02, "model": 1.08}
RSS_TARGET_MIN_OBJECTS = {"engine": 250_000, "model": 200_000}
RSS_RETURN_LIMIT = {"engine": 1.02, "model": 1.05}

# KERNEL.md section 8, kernel build on zram (lzo-rle): mem_used / compr_data_size
KERNEL_OVERHEAD = {4: 0.043, 8: 0.022}
KERNEL_CHAIN8_VS_4 = -0.0205


# ----------------------------------------------------------------------
# the kernel's page count, computed without the pool


def kernel_pages(sizes: list[int], chain: int) -> tuple[int, dict[int, int]]:
    """Pages the kernel's zsmalloc would use for a fresh fill of ``sizes``.

    Returns the total and the pages per canonical class index.  A fill with
    no frees leaves at most one partial zspage per class, so a class holding
    n objects uses ceil(n / objs_per_zspage) zspages.
    """
    specs = {spec.index: spec for spec in zsmalloc.size_classes(chain)}
    canonical = sorted(specs)
    per_index = Counter(get_size_class_index(s + HANDLE_HEADER) for s in sizes)
    per_class: Counter[int] = Counter()
    for idx, count in per_index.items():
        per_class[canonical[bisect.bisect_left(canonical, idx)]] += count
    pages = {}
    for idx, count in per_class.items():
        spec = specs[idx]
        pages[idx] = -(-count // spec.objs_per_zspage) * spec.pages_per_zspage
    return sum(pages.values()), pages


def bookkeeping_bytes(**objs: object) -> dict[str, int]:
    """Estimate of the Python-side containers held by ``objs`` (arrays, lists, sets, dicts).

    ``sys.getsizeof`` of every array, bytearray, list, set and dict attribute,
    plus 28 bytes for each int in a list or set outside the small-int cache;
    keyed ``"<name>.<attribute>"``.  An estimate, to explain RSS residues, not
    a measurement.  Objects without a ``__dict__`` (the engine's Rust
    objects) contribute nothing.
    """
    sizes = {}
    for name, obj in objs.items():
        for attr, value in getattr(obj, "__dict__", {}).items():
            if isinstance(value, array | bytearray | dict):
                sizes[f"{name}.{attr}"] = sys.getsizeof(value)
            elif isinstance(value, list | set):
                ints = sum(28 for x in value if type(x) is int and not -5 <= x <= 256)
                sizes[f"{name}.{attr}"] = sys.getsizeof(value) + ints
    return sizes


# ----------------------------------------------------------------------
# workers (one configuration each, in a fresh subprocess)


def _inputs(mix: str, n: int) -> tuple[list[int], bytes]:
    sizes = get_mix(mix).sizes(n, SEED)
    src = random.Random(SEED).randbytes(SRC_LEN)
    return sizes, src


def _fill(pool: zsmalloc.Pool, sizes: list[int], src: bytes, handles: array, seconds: array) -> None:
    malloc, write = pool.malloc, pool.write
    span = SRC_LEN - PAGE_SIZE
    seconds[0] = -time.perf_counter()
    for i, size in enumerate(sizes):
        h = malloc(size)
        off = (i * OFFSET_STRIDE) % span
        write(h, src[off : off + size])
        handles[i] = h
    seconds[0] += time.perf_counter()


def _record_class_pages(pool: zsmalloc.Pool, class_pages: array) -> None:
    for row in pool.class_stats():
        class_pages[row.index] = row.pages_used


def _spot_check(pool: zsmalloc.Pool, sizes: list[int], src: bytes, handles: array) -> None:
    span = SRC_LEN - PAGE_SIZE
    for i in range(0, len(sizes), max(1, len(sizes) // 1000)):
        off = (i * OFFSET_STRIDE) % span
        if pool.read(handles[i]) != src[off : off + sizes[i]]:
            raise AssertionError(f"object {i} read back wrong")


def _free_all(pool: zsmalloc.Pool, handles: array, seconds: array) -> None:
    free = pool.free
    seconds[1] = -time.perf_counter()
    for h in handles:
        free(h)
    seconds[1] += time.perf_counter()


def worker_pool(backend: str, mix: str, chain: int, n: int) -> dict:
    sizes, src = _inputs(mix, n)
    payload = sum(sizes)
    handles = array("Q", bytes(8 * n))
    # Whatever the harness keeps from the run lives in arrays made before the baseline,
    # and the loops run in functions whose locals die with them: one object the harness
    # kept from the middle of the run (a loop variable, a timing) would pin an arena of
    # the interpreter's small objects and count as the pool's residue.
    class_pages = array("q", bytes(8 * 256))
    counts = array("q", bytes(8 * 4))  # pages and frames in use after the fill, after the free
    seconds = array("d", bytes(8 * 2))  # fill, free
    rss = array("q", bytes(8 * 5))  # start, filled, freed, closed, trimmed
    gc.collect()
    common.malloc_trim()  # the baseline without the heap memory glibc merely caches
    rss[0] = common.rss_bytes()

    pool = POOLS[backend](name=f"density-{backend}-{mix}-{chain}", chain_size=chain)
    _fill(pool, sizes, src, handles, seconds)
    gc.collect()
    rss[1] = common.rss_bytes()
    counts[0] = pool.total_pages
    counts[1] = pool.memory.nr_used
    _record_class_pages(pool, class_pages)
    _spot_check(pool, sizes, src, handles)
    _free_all(pool, handles, seconds)
    pool.flush_deferred()
    pool.memory.drain_pages()
    gc.collect()
    rss[2] = common.rss_bytes()
    counts[2] = pool.total_pages
    counts[3] = pool.memory.nr_used
    residue = bookkeeping_bytes(pool=pool, memory=pool.memory)
    residue_top = dict(sorted(residue.items(), key=lambda kv: -kv[1])[:4])
    pool.close()
    del pool
    gc.collect()
    rss[3] = common.rss_bytes()
    common.malloc_trim()
    rss[4] = common.rss_bytes()
    rss_start, rss_filled, rss_freed, rss_closed, rss_trimmed = rss
    pages, frames_used, pages_freed, frames_freed = counts
    fill_seconds, free_seconds = seconds

    kpages, kclass = kernel_pages(sizes, chain)
    pool_class_pages = {idx: used for idx, used in enumerate(class_pages) if used}
    class_mismatches = sorted(
        idx for idx in set(kclass) | set(pool_class_pages) if kclass.get(idx) != pool_class_pages.get(idx)
    )
    return {
        "backend": backend,
        "mix": mix,
        "chain": chain,
        "objects": n,
        "payload_bytes": payload,
        "pages": pages,
        "frames_used": frames_used,
        "overhead": pages * PAGE_SIZE / payload,
        "kernel_pages": kpages,
        "pages_match": pages == kpages,
        "class_mismatches": class_mismatches,
        "rss_start": rss_start,
        "rss_filled": rss_filled,
        "rss_freed": rss_freed,
        "rss_closed": rss_closed,
        "rss_trimmed": rss_trimmed,
        "rss_growth": rss_filled - rss_start,
        "pages_after_free": pages_freed,
        "frames_after_free": frames_freed,
        # the engine's bookkeeping is in Rust, out of sight: None, not 0
        "bookkeeping_after_free": sum(residue.values()) if backend == "model" else None,
        "bookkeeping_after_free_top": residue_top,
        "fill_us_per_object": fill_seconds / n * 1e6,
        "free_us_per_object": free_seconds / n * 1e6,
    }


def worker_dict(mix: str, n: int) -> dict:
    sizes, src = _inputs(mix, n)
    payload = sum(sizes)
    span = SRC_LEN - PAGE_SIZE
    gc.collect()
    common.malloc_trim()
    rss_start = common.rss_bytes()
    d: dict[int, bytes] = {}
    for i, size in enumerate(sizes):
        off = (i * OFFSET_STRIDE) % span
        d[i] = src[off : off + size]
    gc.collect()
    rss_filled = common.rss_bytes()
    d.clear()
    del d
    gc.collect()
    rss_freed = common.rss_bytes()
    common.malloc_trim()
    rss_trimmed = common.rss_bytes()
    return {
        "mix": mix,
        "objects": n,
        "payload_bytes": payload,
        "rss_start": rss_start,
        "rss_filled": rss_filled,
        "rss_freed": rss_freed,
        "rss_trimmed": rss_trimmed,
        "rss_growth": rss_filled - rss_start,
    }


# ----------------------------------------------------------------------
# the driver


def _median_of(runs: list[dict], key: str) -> float:
    return common.median(r[key] for r in runs)


def _pool_row(runs: list[dict]) -> dict:
    """One configuration's row: the first run's deterministic figures, the RSS medians over all."""
    first = runs[0]
    row = {k: v for k, v in first.items() if not k.startswith(("rss_", "bookkeeping_"))}
    for key in ("rss_start", "rss_filled", "rss_freed", "rss_closed", "rss_trimmed", "rss_growth"):
        row[key] = _median_of(runs, key)
    row["fill_us_per_object"] = _median_of(runs, "fill_us_per_object")
    row["free_us_per_object"] = _median_of(runs, "free_us_per_object")
    row["bookkeeping_after_free"] = first["bookkeeping_after_free"]
    row["bookkeeping_after_free_top"] = first["bookkeeping_after_free_top"]
    row["rss_growth_per_payload"] = common.median(r["rss_growth"] / r["payload_bytes"] for r in runs)
    row["rss_growth_per_pool_bytes"] = common.median(r["rss_growth"] / (r["pages"] * PAGE_SIZE) for r in runs)
    row["rss_freed_per_start"] = common.median(r["rss_freed"] / r["rss_start"] for r in runs)
    row["rss_closed_per_start"] = common.median(r["rss_closed"] / r["rss_start"] for r in runs)
    row["rss_trimmed_per_start"] = common.median(r["rss_trimmed"] / r["rss_start"] for r in runs)
    row["runs"] = [
        {k: r[k] for k in ("rss_start", "rss_filled", "rss_freed", "rss_closed", "rss_trimmed")} for r in runs
    ]
    return row


def _targets(pools: list[dict]) -> list[dict]:
    targets = []
    for row in pools:
        backend = row["backend"]
        config = f"{backend}, {row['mix']}, chain {row['chain']}"
        targets.append(
            {
                "name": "pages == kernel's exact page count",
                "config": config,
                "value": f"{row['pages']} vs {row['kernel_pages']}",
                "limit": "equal",
                "ok": row["pages_match"] and not row["class_mismatches"],
            }
        )
        growth_limit, min_objects = RSS_GROWTH_LIMIT[backend], RSS_TARGET_MIN_OBJECTS[backend]
        applies = row["objects"] >= min_objects
        targets.append(
            {
                "name": "RSS growth / pool bytes after fill",
                "config": config,
                "value": fmt(row["rss_growth_per_pool_bytes"]),
                "limit": f"<= {growth_limit} (>= {min_objects // 1000}k objects)",
                "ok": row["rss_growth_per_pool_bytes"] <= growth_limit if applies else None,
            }
        )
        targets.append(
            {
                "name": "pool pages after free all + flush + drain",
                "config": config,
                "value": str(row["pages_after_free"]),
                "limit": "0",
                "ok": row["pages_after_free"] == 0 and row["frames_after_free"] == 0,
            }
        )
        return_limit = RSS_RETURN_LIMIT[backend]
        targets.append(
            {
                "name": "RSS after free all / RSS before the pool",
                "config": config,
                "value": fmt(row["rss_freed_per_start"]),
                "limit": f"<= {return_limit}",
                "ok": row["rss_freed_per_start"] <= return_limit,
            }
        )
    return targets


def run(quick: bool = False) -> dict:
    """Run every configuration in fresh subprocesses; return the result document."""
    n = QUICK_N if quick else FULL_N
    repeats = 1 if quick else FULL_REPEATS
    script = Path(__file__).resolve()
    pools, dicts = [], []
    for mix in MIXES:
        for chain in CHAINS:
            runs: dict[str, list[dict]] = {backend: [] for backend in POOLS}
            for r in range(repeats):
                for backend in POOLS:  # engine and model interleaved, run by run
                    common.log(f"density: {backend}, {mix} chain {chain}, {n} objects, run {r + 1}/{repeats}")
                    runs[backend].append(
                        common.run_worker(script, ["pool", backend, mix, str(chain), str(n)])
                    )
            pools.extend(_pool_row(runs[backend]) for backend in POOLS)
        runs_d = []
        for r in range(repeats):
            common.log(f"density: dict peer, {mix}, {n} objects, run {r + 1}/{repeats}")
            runs_d.append(common.run_worker(script, ["dict", mix, str(n)]))
        row = dict(runs_d[0])
        for key in ("rss_start", "rss_filled", "rss_freed", "rss_trimmed", "rss_growth"):
            row[key] = _median_of(runs_d, key)
        row["rss_growth_per_payload"] = common.median(r["rss_growth"] / r["payload_bytes"] for r in runs_d)
        row["rss_freed_per_start"] = common.median(r["rss_freed"] / r["rss_start"] for r in runs_d)
        row["rss_trimmed_per_start"] = common.median(r["rss_trimmed"] / r["rss_start"] for r in runs_d)
        dicts.append(row)
    return {
        "name": NAME,
        "quick": quick,
        "objects": n,
        "repeats": repeats,
        "seed": SEED,
        "backends": list(POOLS),
        "mixes": list(MIXES),
        "chains": list(CHAINS),
        "pools": pools,
        "dicts": dicts,
        "targets": _targets(pools),
    }


def markdown(doc: dict) -> str:
    """The density section of RESULTS.md (also of a results/density.json saved before the engine
    was measured: its rows are the model's)."""
    n, repeats = doc["objects"], doc["repeats"]
    for r in doc["pools"]:
        r.setdefault("backend", "model")
    backends = doc.get("backends", ["model"])
    out = [
        "## Density (`bench_density.py`)",
        "",
        "Method: for each implementation of the pool, the engine (`zsmalloc.engine.Pool`, Rust) and "
        "the model (`zsmalloc.model.Pool`, Python), "
        f"each mix ({', '.join(doc['mixes'])}; seed {doc['seed']}; {n:,} objects) and chain "
        f"size ({', '.join(map(str, doc['chains']))}), a fresh subprocess draws the sizes, makes a 1 MiB "
        "random data source and an `array('Q')` for the handles, runs `gc.collect()` and "
        "`malloc_trim(0)`, reads its RSS (psutil), creates the "
        "pool and fills it, writing `src[off:off+size]` into every object. Payload = sum of the sizes. "
        "Kernel pages are computed independently: class of `size + 8`, mapped to its canonical class "
        "in `zsmalloc.size_classes(chain)`, then the sum of `ceil(objects / objs_per_zspage) * "
        "pages_per_zspage`. Then every object is freed, `flush_deferred()` and `memory.drain_pages()` "
        "run, and the RSS is read again (and once more after `close()`, and after `malloc_trim(0)`). "
        f"Each configuration ran {repeats} time(s) in its own subprocess (engine and model "
        "interleaved); RSS figures are medians. "
        "The peer, a `dict {i: bytes}` holding the same objects, is measured the same way. Targets: "
        "the engine's RSS growth at most 1.02x its pool bytes (>= 250k objects) and its RSS after "
        "the free within 2% of the start; the model's 1.08x (>= 200k objects) and 5%.",
        "",
        "### Pages",
        "",
    ]
    rows = []
    for r in doc["pools"]:
        rows.append(
            [
                r["backend"],
                r["mix"],
                r["chain"],
                fmt_int(r["objects"]),
                fmt_mib(r["payload_bytes"]),
                fmt_int(r["pages"]),
                f"{(r['overhead'] - 1) * 100:+.2f}%",
                fmt_int(r["kernel_pages"]),
                verdict(r["pages_match"] and not r["class_mismatches"]),
                fmt(r["fill_us_per_object"], 2),
            ]
        )
    out.append(
        md_table(
            [
                "pool",
                "mix",
                "chain",
                "objects",
                "payload MiB",
                "pool pages",
                "overhead (pages*4096/payload - 1)",
                "kernel pages",
                "exact match",
                "fill µs/object",
            ],
            rows,
            align="llrrrrrrrr",
        )
    )
    # the page counts of the engine and the model are the same when both match the kernel's
    by = {(r["mix"], r["chain"]): r for r in doc["pools"] if r["backend"] == backends[0]}
    context = []
    if ("kernel-build", 4) in by and ("kernel-build", 8) in by:
        c4, c8 = by[("kernel-build", 4)], by[("kernel-build", 8)]
        context = [
            "",
            "For context (KERNEL.md section 8, a real kernel build on zram; not a target, our mix is a "
            f"model): overhead about {KERNEL_OVERHEAD[4]:.1%} with chain 4 and {KERNEL_OVERHEAD[8]:.1%} "
            f"with chain 8, chain 8 using {-KERNEL_CHAIN8_VS_4:.2%} less memory than chain 4. Here: "
            f"{c4['overhead'] - 1:.2%} and {c8['overhead'] - 1:.2%}; chain 8 vs chain 4: "
            f"{c8['pages'] / c4['pages'] - 1:+.2%} pages.",
        ]
    out += context
    out += ["", "### Process memory (RSS)", ""]
    rows = []
    for r in doc["pools"]:
        rows.append(
            [
                f"{r['backend']}, {r['mix']}, chain {r['chain']}",
                fmt_mib(r["rss_start"]),
                fmt_mib(r["rss_growth"]),
                fmt(r["rss_growth_per_payload"]),
                fmt(r["rss_growth_per_pool_bytes"]),
                fmt_int(r["pages_after_free"]),
                fmt_mib(r["rss_freed"] - r["rss_start"]),
                fmt(r["rss_freed_per_start"]),
                fmt_mib(r["bookkeeping_after_free"]),
                fmt(r["rss_closed_per_start"]),
                fmt(r["rss_trimmed_per_start"]),
            ]
        )
    for r in doc["dicts"]:
        rows.append(
            [
                f"dict peer, {r['mix']}",
                fmt_mib(r["rss_start"]),
                fmt_mib(r["rss_growth"]),
                fmt(r["rss_growth_per_payload"]),
                "-",
                "-",
                fmt_mib(r["rss_freed"] - r["rss_start"]),
                fmt(r["rss_freed_per_start"]),
                "-",
                "-",
                fmt(r["rss_trimmed_per_start"]),
            ]
        )
    out.append(
        md_table(
            [
                "store",
                "RSS start MiB",
                "RSS growth MiB",
                "growth / payload",
                "growth / pool bytes",
                "pages after free",
                "RSS after free - start, MiB",
                "after free / start",
                "pool bookkeeping after free, MiB (est.)",
                "after close / start",
                "+ malloc_trim / start",
            ],
            rows,
        )
    )
    out += [
        "",
        "RSS start includes the interpreter, the imported package, the sizes list, the data source "
        "and the handle array. 'Pool bookkeeping after free' is `sys.getsizeof` of the pool's and its "
        "Memory's arrays and lists (plus their int objects), still held while the pool is open (the "
        "model's only: the engine's tables are Rust structs, out of `sys.getsizeof`'s sight, shown as "
        "-); "
        "'after close' is once the pool is closed and dropped, '+ malloc_trim' after glibc's "
        "`malloc_trim(0)` on top, which returns the C heap's free memory to the OS: the drop between the "
        "two was already freed, only cached by glibc. For the dict peer, 'after free' is after "
        "`clear()`, then `malloc_trim(0)`.",
    ]
    known = [r for r in doc["pools"] if r["bookkeeping_after_free"] is not None]
    if known:
        biggest = max(known, key=lambda r: r["bookkeeping_after_free"])
        top = ", ".join(f"`{k}` {v / 2**20:.1f}" for k, v in biggest["bookkeeping_after_free_top"].items())
        out += [
            "",
            f"Largest bookkeeping items after free ({biggest['backend']}, {biggest['mix']}, chain "
            f"{biggest['chain']}), MiB: {top}.",
        ]
    return "\n".join(out)


def _dispatch(args: list[str]) -> dict:
    kind, *rest = args
    if kind == "pool":
        backend, mix, chain, n = rest
        return worker_pool(backend, mix, int(chain), int(n))
    mix, n = rest
    return worker_dict(mix, int(n))


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(__doc__, argv, NAME, run, markdown, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
