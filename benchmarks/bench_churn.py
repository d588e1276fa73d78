"""Churn: fill, free a random half, compact; what the pool and the process give back.

What it measures
----------------
For both implementations of the pool, the engine (``zsmalloc.engine.Pool``,
Rust) and the model (``zsmalloc.model.Pool``, Python): a pool filled with the
``kernel-build`` mix (140k objects, 208 MiB of payload, in the full run; 10k
with ``--quick``), then a random half of the objects freed (fixed seed, in
random order), then compaction: ``pool.compact()`` (objects move between
zspages so that zspages empty) and ``pool.memory.compact()`` (the VM moves
in-use frames down the arena and lowers its high-water mark), each followed by
``flush_deferred()`` and ``memory.drain_pages()``.  At four points (filled;
after the free; after ``pool.compact()``; after ``memory.compact()``, model
only):

- pool bytes / live payload, pool bytes = ``pool.total_pages * 4096``, live
  payload = the sum of the requested sizes of the objects still allocated;
- process RSS / live payload, where **RSS here is the growth: the process
  RSS minus the RSS read just before the pool was created** (the interpreter,
  the imported package, the size list, the data source and the handle array
  are in that baseline); the raw RSS is reported beside it.

Targets (full-size runs, at least 200 MiB of payload), after
``memory.compact()``: for the engine, pool bytes <= 1.05 x live payload and
RSS growth <= 1.10 x live payload; for the model, 1.10 x and 1.15 x.

The peer, in the same run and a separate fresh subprocess: a ``dict {i:
bytes}`` holding the same objects (same sizes, same bytes), with the same
half deleted (``del d[i]``, same order): its RSS growth / live payload after
the fill, after the deletes, and after glibc's ``malloc_trim(0)`` on top (the
dict itself has no way to give memory back; ``malloc_trim`` is the C heap
returning whole free pages, which a Python program would not normally call).

How
---
Each run is a fresh subprocess: draw the sizes (seed 1234), make the 1 MiB
random data source, the ``array('Q')`` for the handles and the list of
victims, ``gc.collect()`` and glibc's ``malloc_trim(0)`` (so that the
baseline holds no freed heap that glibc merely keeps), read the RSS
(psutil), create the pool, fill it (object i gets ``src[off:off + size]``).
RSS is read after ``gc.collect()`` at each point.  After the last point every live object is read back and
compared, and ``pool.check()`` walks the pool.  Full run: 3 runs of each
pool and 3 dict runs (fresh subprocesses, interleaved: engine, model, dict);
RSS figures and timings are medians, page counts are deterministic.

``build_churned`` is shared with ``bench_compaction_work.py``, which builds
the same churned pool.

Run: ``.venv/bin/python benchmarks/bench_churn.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import gc
import random
import sys
import time
from array import array
from itertools import compress
from pathlib import Path

import common
import zsmalloc
import zsmalloc.engine
import zsmalloc.model
from common import fmt, fmt_int, fmt_mib, md_table
from zsmalloc.workloads import get_mix

NAME = "churn"
MIX = "kernel-build"
SEED = 1234
FULL_N = 140_000
QUICK_N = 10_000
FULL_REPEATS = 3
FREE_FRACTION = 0.5
PAGE_SIZE = 4096
SRC_LEN = (1 << 20) + PAGE_SIZE
OFFSET_STRIDE = 104_729
POOLS = {"engine": zsmalloc.engine.Pool, "model": zsmalloc.model.Pool}
# after the last compaction step of each: pool bytes / live payload, RSS growth / live payload
POOL_LIMIT = {"engine": 1.05, "model": 1.10}
RSS_LIMIT = {"engine": 1.10, "model": 1.15}
MIN_PAYLOAD = 200 * 2**20  # the targets apply from this much payload
STAGES = ("filled", "freed", "pool_compacted", "memory_compacted")
STAGE_LABELS = {
    "filled": "filled",
    "freed": "after freeing half (+ flush_deferred, drain_pages)",
    "pool_compacted": "after pool.compact() (+ flush_deferred, drain_pages)",
    "memory_compacted": "after memory.compact() (+ flush_deferred, drain_pages)",
}


# ----------------------------------------------------------------------
# the churned pool (also used by bench_compaction_work.py)


class Inputs:
    """Sizes, data source, victims: everything drawn before the RSS baseline."""

    def __init__(self, mix: str, n: int, seed: int, free_fraction: float) -> None:
        self.mix, self.n, self.seed = mix, n, seed
        self.sizes = get_mix(mix).sizes(n, seed)
        self.src = random.Random(seed).randbytes(SRC_LEN)
        self.span = SRC_LEN - PAGE_SIZE
        self.victims = random.Random(seed + 1).sample(range(n), int(n * free_fraction))
        alive = bytearray(b"\x01") * n  # no big temporary: freed heap memory would blur the baseline
        for i in self.victims:
            alive[i] = 0
        self.live = array("L", compress(range(n), alive))
        self.payload = sum(self.sizes)
        self.live_payload = sum(self.sizes[i] for i in self.live)

    def data(self, i: int) -> bytes:
        off = (i * OFFSET_STRIDE) % self.span
        return self.src[off : off + self.sizes[i]]


def fill_pool(pool: zsmalloc.Pool, inp: Inputs, handles: array) -> float:
    malloc, write, data = pool.malloc, pool.write, inp.data
    t0 = time.perf_counter()
    for i, size in enumerate(inp.sizes):
        h = malloc(size)
        write(h, data(i))
        handles[i] = h
    return time.perf_counter() - t0


def free_victims(pool: zsmalloc.Pool, inp: Inputs, handles: array) -> float:
    free = pool.free
    t0 = time.perf_counter()
    for i in inp.victims:
        free(handles[i])
    return time.perf_counter() - t0


def build_churned(inp: Inputs, **pool_kwargs: object) -> tuple[zsmalloc.Pool, array, float, float]:
    """A pool filled with ``inp``'s objects, its victims freed, deferred frees run."""
    handles = array("Q", bytes(8 * inp.n))
    pool = zsmalloc.Pool(name=f"churn-{inp.mix}", **pool_kwargs)
    fill_s = fill_pool(pool, inp, handles)
    free_s = free_victims(pool, inp, handles)
    pool.flush_deferred()
    pool.memory.drain_pages()
    return pool, handles, fill_s, free_s


def verify_live(pool: zsmalloc.Pool, inp: Inputs, handles: array) -> tuple[bool, str]:
    """Every live object reads back as written and ``pool.check()`` passes."""
    read = pool.read
    for i in inp.live:
        if read(handles[i]) != inp.data(i):
            return False, f"object {i} reads back wrong"
    try:
        pool.check()
    except Exception as exc:  # reported, not raised
        return False, f"check(): {exc!r}"
    return True, ""


# ----------------------------------------------------------------------
# workers


def _settle(pool: zsmalloc.Pool) -> None:
    pool.flush_deferred()
    pool.memory.drain_pages()
    gc.collect()


def worker_pool(backend: str, mix: str, n: int) -> dict:
    inp = Inputs(mix, n, SEED, FREE_FRACTION)
    handles = array("Q", bytes(8 * n))
    gc.collect()
    common.malloc_trim()  # the baseline without the heap memory glibc merely caches
    rss0 = common.rss_bytes()
    pool = POOLS[backend](name=f"churn-{backend}-{mix}")
    mem = pool.memory
    stages = {}

    def stage(name: str, live: int) -> None:
        rss = common.rss_bytes()
        stages[name] = {
            "pages": pool.total_pages,
            "frames_used": mem.nr_used,
            "hwm": mem.hwm,
            "live_payload": live,
            "pool_per_live": pool.total_pages * PAGE_SIZE / live,
            "rss": rss,
            "rss_growth": rss - rss0,
            "rss_growth_per_live": (rss - rss0) / live,
        }

    fill_s = fill_pool(pool, inp, handles)
    gc.collect()
    stage("filled", inp.payload)
    free_s = free_victims(pool, inp, handles)
    _settle(pool)
    stage("freed", inp.live_payload)
    freeable = pool.shrinker_count()
    t0 = time.perf_counter()
    freed = pool.compact()
    compact_s = time.perf_counter() - t0
    _settle(pool)
    stage("pool_compacted", inp.live_payload)
    t0 = time.perf_counter()
    res = mem.compact()
    mem_compact_s = time.perf_counter() - t0
    _settle(pool)
    stage("memory_compacted", inp.live_payload)
    memory_compact = {
        "pages_moved": res.succeeded,
        "failed": res.failed,
        "hwm_before": res.hwm_before,
        "hwm_after": res.hwm_after,
        "released": res.released,
        "seconds": mem_compact_s,
    }
    intact, why = verify_live(pool, inp, handles)
    return {
        "backend": backend,
        "mix": mix,
        "objects": n,
        "objects_live": len(inp.live),
        "payload_bytes": inp.payload,
        "live_payload_bytes": inp.live_payload,
        "rss_start": rss0,
        "stages": stages,
        "freeable_before_compact": freeable,
        "pool_compact": {
            "pages_freed": freed,
            "objects_moved": pool.objs_compacted,
            "seconds": compact_s,
        },
        "memory_compact": memory_compact,
        "fill_seconds": fill_s,
        "free_seconds": free_s,
        "intact": intact,
        "intact_detail": why,
    }


def worker_dict(mix: str, n: int) -> dict:
    inp = Inputs(mix, n, SEED, FREE_FRACTION)
    gc.collect()
    common.malloc_trim()
    rss0 = common.rss_bytes()
    stages = {}

    def stage(name: str, live: int) -> None:
        rss = common.rss_bytes()
        stages[name] = {"rss": rss, "rss_growth": rss - rss0, "rss_growth_per_live": (rss - rss0) / live}

    d: dict[int, bytes] = {}
    data = inp.data
    for i in range(n):
        d[i] = data(i)
    gc.collect()
    stage("filled", inp.payload)
    for i in inp.victims:
        del d[i]
    gc.collect()
    stage("freed", inp.live_payload)
    common.malloc_trim()
    stage("trimmed", inp.live_payload)
    intact = all(d[i] == data(i) for i in inp.live)
    return {
        "mix": mix,
        "objects": n,
        "payload_bytes": inp.payload,
        "live_payload_bytes": inp.live_payload,
        "rss_start": rss0,
        "stages": stages,
        "intact": intact,
    }


# ----------------------------------------------------------------------
# the driver


def _median_stages(runs: list[dict]) -> dict:
    out = {}
    for name in runs[0]["stages"]:
        first = runs[0]["stages"][name]
        row = dict(first)
        for key in ("rss", "rss_growth", "rss_growth_per_live"):
            row[key] = common.median(r["stages"][name][key] for r in runs)
        out[name] = row
    return out


def _pool_summary(runs: list[dict]) -> dict:
    """One implementation's figures: the first run's deterministic ones, medians of the rest."""
    pool = {k: v for k, v in runs[0].items() if k not in ("stages", "rss_start")}
    pool["stages"] = _median_stages(runs)
    pool["rss_start"] = common.median(r["rss_start"] for r in runs)
    for key in ("fill_seconds", "free_seconds"):
        pool[key] = common.median(r[key] for r in runs)
    for part in ("pool_compact", "memory_compact"):
        if pool[part] is not None:
            pool[part]["seconds"] = common.median(r[part]["seconds"] for r in runs)
    pool["intact"] = all(r["intact"] for r in runs)
    pool["intact_detail"] = next((r["intact_detail"] for r in runs if not r["intact"]), "")
    pool["runs"] = [
        {"rss_start": r["rss_start"], **{s: st["rss"] for s, st in r["stages"].items()}} for r in runs
    ]
    return pool


def _targets(pools: dict[str, dict], peer: dict, n: int) -> list[dict]:
    dict_freed = peer["stages"]["freed"]["rss_growth_per_live"]
    targets = []
    for backend, pool in pools.items():
        final = pool["stages"]["memory_compacted"]
        after = "memory.compact()"
        applies = pool["payload_bytes"] >= MIN_PAYLOAD
        config = f"{backend}, {MIX}, {n:,} objects, {pool['payload_bytes'] / 2**20:.0f} MiB, half freed"
        targets += [
            {
                "name": f"pool bytes / live payload after {after}",
                "config": config,
                "value": fmt(final["pool_per_live"]),
                "limit": f"<= {POOL_LIMIT[backend]} (>= {MIN_PAYLOAD >> 20} MiB)",
                "ok": final["pool_per_live"] <= POOL_LIMIT[backend] if applies else None,
            },
            {
                "name": f"RSS growth / live payload after {after} (dict after del: {fmt(dict_freed, 2)})",
                "config": config,
                "value": fmt(final["rss_growth_per_live"]),
                "limit": f"<= {RSS_LIMIT[backend]} (>= {MIN_PAYLOAD >> 20} MiB)",
                "ok": final["rss_growth_per_live"] <= RSS_LIMIT[backend] if applies else None,
            },
            {
                "name": "live objects intact after compaction, check() clean",
                "config": config,
                "value": "yes" if pool["intact"] else (pool["intact_detail"] or "no"),
                "limit": "yes",
                "ok": pool["intact"],
            },
        ]
    return targets


def run(quick: bool = False) -> dict:
    n = QUICK_N if quick else FULL_N
    repeats = 1 if quick else FULL_REPEATS
    script = Path(__file__).resolve()
    pool_runs: dict[str, list[dict]] = {backend: [] for backend in POOLS}
    dict_runs = []
    for r in range(repeats):
        for backend in POOLS:
            common.log(f"churn: {backend}, {MIX}, {n:,} objects, run {r + 1}/{repeats}")
            pool_runs[backend].append(common.run_worker(script, ["pool", backend, MIX, str(n)]))
        common.log(f"churn: dict peer, {MIX}, {n:,} objects, run {r + 1}/{repeats}")
        dict_runs.append(common.run_worker(script, ["dict", MIX, str(n)]))
    pools = {backend: _pool_summary(runs) for backend, runs in pool_runs.items()}
    peer = {k: v for k, v in dict_runs[0].items() if k not in ("stages", "rss_start")}
    peer["stages"] = _median_stages(dict_runs)
    peer["rss_start"] = common.median(r["rss_start"] for r in dict_runs)
    peer["intact"] = all(r["intact"] for r in dict_runs)
    return {
        "name": NAME,
        "quick": quick,
        "mix": MIX,
        "seed": SEED,
        "objects": n,
        "repeats": repeats,
        "free_fraction": FREE_FRACTION,
        "pools": pools,
        "dict": peer,
        "targets": _targets(pools, peer, n),
    }


def markdown(doc: dict) -> str:
    """The churn section of RESULTS.md (also of a results/churn.json saved before the engine was
    measured: its ``pool`` is the model)."""
    pools, peer = doc.get("pools") or {"model": doc["pool"]}, doc["dict"]
    ds = peer["stages"]
    any_pool = next(iter(pools.values()))
    out = [
        "## Churn (`bench_churn.py`)",
        "",
        f"Method: for each implementation of the pool, the engine (`zsmalloc.engine.Pool`, Rust) and the "
        f"model (`zsmalloc.model.Pool`, Python), a fresh subprocess draws {doc['objects']:,} sizes of the "
        f"{doc['mix']} mix (seed {doc['seed']}; payload {fmt_mib(any_pool['payload_bytes'])} MiB), the "
        "data source, the handle array and the victims (a random half, freed in random order), runs "
        "`gc.collect()` and `malloc_trim(0)`, reads its RSS, creates the pool and fills it; frees the "
        "victims; runs `pool.compact()`, then `pool.memory.compact()`; "
        "after each step `flush_deferred()`, `memory.drain_pages()` and `gc.collect()`, then the pool's "
        "pages and the RSS are read. **RSS ratios use the RSS growth: "
        "process RSS minus the RSS read just before the pool was created**; raw RSS is shown too. Live "
        "payload = sum of the requested "
        "sizes of the objects still allocated. The peer, a `dict {i: bytes}` of the same objects with "
        "the same half deleted (`del d[i]`), runs in its own fresh subprocess the same way. "
        f"{doc['repeats']} run(s) of each, interleaved (engine, model, dict); RSS figures are medians. "
        "At the end every live object is read back and compared, and `pool.check()` run. Targets "
        "(>= 200 MiB of payload), after `memory.compact()`: the engine, pool bytes <= "
        f"{POOL_LIMIT['engine']}x and RSS growth <= {RSS_LIMIT['engine']}x the live payload; the model, "
        f"{POOL_LIMIT['model']}x and {RSS_LIMIT['model']}x.",
        "",
    ]
    rows = []
    for backend, pool in pools.items():
        for name in STAGES:
            s = pool["stages"][name]
            rows.append(
                [
                    f"{backend}, {STAGE_LABELS[name]}",
                    fmt_mib(s["live_payload"]),
                    fmt_int(s["pages"]),
                    fmt_int(s["hwm"]),
                    fmt(s["pool_per_live"]),
                    fmt_mib(s["rss"]),
                    fmt_mib(s["rss_growth"]),
                    fmt(s["rss_growth_per_live"]),
                ]
            )
    labels = {
        "filled": "filled",
        "freed": "after `del` of the same half",
        "trimmed": "+ `malloc_trim(0)` (glibc returns free heap pages)",
    }
    for name in ("filled", "freed", "trimmed"):
        s = ds[name]
        live = peer["payload_bytes"] if name == "filled" else peer["live_payload_bytes"]
        rows.append(
            [
                f"dict peer, {labels[name]}",
                fmt_mib(live),
                "-",
                "-",
                "-",
                fmt_mib(s["rss"]),
                fmt_mib(s["rss_growth"]),
                fmt(s["rss_growth_per_live"]),
            ]
        )
    out.append(
        md_table(
            [
                "store, point",
                "live payload MiB",
                "pool pages",
                "arena hwm (frames)",
                "pool bytes / live payload",
                "raw RSS MiB",
                "RSS growth MiB",
                "RSS growth / live payload",
            ],
            rows,
        )
    )
    out += ["", f"RSS baseline before the dict: {fmt_mib(peer['rss_start'])} MiB."]
    for backend, pool in pools.items():
        pc, mc = pool["pool_compact"], pool["memory_compact"]
        text = (
            f"{backend}: RSS baseline before the pool {fmt_mib(pool['rss_start'])} MiB. Fill "
            f"{pool['fill_seconds']:.2f} s, free of half {pool['free_seconds']:.2f} s. `pool.compact()`: "
            f"{fmt_int(pc['pages_freed'])} pages freed (the shrinker counted "
            f"{fmt_int(pool['freeable_before_compact'])} freeable), {fmt_int(pc['objects_moved'])} objects "
            f"moved, {pc['seconds']:.2f} s."
        )
        mc_us = mc["seconds"] / mc["pages_moved"] * 1e6 if mc["pages_moved"] else None
        text += (
            f" `memory.compact()`: {fmt_int(mc['pages_moved'])} frames moved down, {mc['failed']} not "
            f"moved, high-water mark {fmt_int(mc['hwm_before'])} -> {fmt_int(mc['hwm_after'])} frames "
            f"({fmt_int(mc['released'])} released), {mc['seconds']:.2f} s"
            + (f" ({mc_us:,.0f} µs per frame moved)." if mc_us else ".")
        )
        out += ["", text]
    out += [
        "",
        "The dict cannot give memory back: a deleted `bytes` leaves a hole in the C heap (or in a "
        "pymalloc arena) between live ones, so its RSS stays where the fill left it; `malloc_trim(0)` "
        "returns only the heap pages that happen to be wholly free. The pool's `pool.compact()` empties "
        "zspages by moving objects, and the freed frames go back to the OS (`madvise(MADV_DONTNEED)`); "
        "`memory.compact()` then packs the frames still in use below a lower high-water "
        "mark, which shrinks the page descriptors.",
    ]
    return "\n".join(out)


def _dispatch(args: list[str]) -> dict:
    kind, *rest = args
    if kind == "pool":
        backend, mix, n = rest
        return worker_pool(backend, mix, int(n))
    mix, n = rest
    return worker_dict(mix, int(n))


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(__doc__, argv, NAME, run, markdown, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
