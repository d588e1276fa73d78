"""Store: ``zsmalloc.Store`` against ``zict.Func(lz4 compress, decompress, dict())``.

What it measures
----------------
Values of 4 KiB, 64 KiB and 1 MiB, each made of kernel-build pages
(``zsmalloc.workloads.get_page_source("kernel-build")``, seed 4321, so that
they compress as a kernel build's pages do, same-filled pages included),
about 64 MiB of them per size (8 MiB with ``--quick``), stored in

- **ours**: ``Store("lz4")`` (its own pool on the engine);
- **the peer**: ``zict.Func(compress, decompress, {})`` with
  ``lz4.block.compress(v, store_size=False)`` and the matching
  ``decompress``: the compressed mapping Dask users reach for.

(a) set and (b) get throughput, in MB/s of uncompressed values (MB = 10^6
bytes): targets ours >= 1.0x the peer.  (c) RSS growth after the fill (the
process RSS minus the RSS read just before the store was made) against the
compressed bytes the store holds (target <= 1.05x; both stores are warmed
up first: a store of the same kind is made, given 8 values, read and
dropped before the baseline, so that the code's pages and each thread's
codec state, paid once per process, are not counted); then a random half of
the keys is deleted (fixed seed, random order) and the store compacted
(``compact()``, the pool's deferred free, ``memory.compact()`` and
``drain_pages()``), and the RSS growth is compared with the peer's after
the same deletes (target: ours <= 0.6x the peer's).

How
---
Throughput: 5 rounds (2 with ``--quick``) per value size, each a fresh
subprocess that makes the values, then times both stores in an order that
alternates round to round: set every value, then get every value (in a
shuffled order, the same for both, checked after the timing).  ``gc.disable()``
while timing; medians with min-max.  Memory: each store in its own fresh
subprocess per value size; one run each.

Run: ``.venv/bin/python benchmarks/bench_store.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import gc
import random
import sys
import time
from pathlib import Path

import lz4.block
import zict

import common
import zsmalloc
from common import fmt, md_table
from zsmalloc.workloads import get_page_source

NAME = "store"
SEED = 4321
SIZES = (4096, 64 << 10, 1 << 20)
FULL = {"total": 64 << 20, "rounds": 5}
QUICK = {"total": 8 << 20, "rounds": 2}


def _values(size: int, total: int) -> list[bytes]:
    pages_per_value = size // 4096
    n = max(1, total // size)
    pages = list(get_page_source("kernel-build")(n * pages_per_value, SEED))
    return [b"".join(pages[i * pages_per_value : (i + 1) * pages_per_value]) for i in range(n)]


def _zict() -> zict.Func:
    def compress(v: bytes) -> tuple[int, bytes]:
        return len(v), lz4.block.compress(v, store_size=False)

    def decompress(pair: tuple[int, bytes]) -> bytes:
        return lz4.block.decompress(pair[1], uncompressed_size=pair[0])

    return zict.Func(compress, decompress, {})


def _make(store: str):
    return zsmalloc.Store("lz4") if store == "ours" else _zict()


def _time_store(kind: str, values: list[bytes], order: list[int]) -> dict:
    m = _make(kind)
    t0 = time.perf_counter()
    for i, v in enumerate(values):
        m[i] = v
    t_set = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in order:
        m[i]
    t_get = time.perf_counter() - t0
    ok = all(m[i] == values[i] for i in order[:50])
    if kind == "ours":
        m.close()
    return {"set": t_set, "get": t_get, "ok": ok}


def worker_speed(size: int, total: int, round_no: int) -> dict:
    values = _values(size, total)
    order = list(range(len(values)))
    random.Random(round_no).shuffle(order)
    kinds = ["ours", "peer"] if round_no % 2 == 0 else ["peer", "ours"]
    gc.disable()
    out = {k: _time_store(k, values, order) for k in kinds}
    gc.enable()
    out["mb"] = len(values) * size / 1e6
    return out


def _warm_up(kind: str, values: list[bytes]) -> None:
    """Set, get and drop a few values in a store of ``kind`` made and closed for it: what a
    program that has used such a store once holds before this one (the code's pages, each
    thread's codec state) is then in the baseline, and the growth is the new store's."""
    m = _make(kind)
    for i, v in enumerate(values):
        m[i] = v
    assert all(m[i] == v for i, v in enumerate(values))
    if kind == "ours":
        m.close()


def worker_memory(kind: str, size: int, total: int) -> dict:
    values = _values(size, total)
    victims = random.Random(SEED).sample(range(len(values)), len(values) // 2)
    _warm_up(kind, values[:8])
    gc.collect()
    common.malloc_trim()
    rss0 = common.rss_bytes()
    m = _make(kind)
    for i, v in enumerate(values):
        m[i] = v
    gc.collect()  # the values stay alive, in the baseline: the growth is the store's
    filled = common.rss_bytes() - rss0
    compressed = m.compressed_nbytes if kind == "ours" else sum(len(m.d[k][1]) for k in m.d)
    for i in victims:
        del m[i]
    if kind == "ours":
        m.compact()
        m.pool.flush_deferred()
        m.pool.memory.compact()
        m.pool.memory.drain_pages()
    gc.collect()
    after = common.rss_bytes() - rss0
    return {"filled": filled, "compressed": compressed, "after": after}


def run(quick: bool = False) -> dict:
    cfg = QUICK if quick else FULL
    started = time.perf_counter()
    script = Path(__file__)
    rows = []
    for size in SIZES:
        rates: dict[str, dict[str, list[float]]] = {
            "ours": {"set": [], "get": []},
            "peer": {"set": [], "get": []},
        }
        ok = True
        for r in range(cfg["rounds"]):
            common.log(f"store: {size:,}-byte values, round {r + 1}/{cfg['rounds']}")
            res = common.run_worker(script, ["speed", str(size), str(cfg["total"]), str(r)])
            for kind in ("ours", "peer"):
                for op in ("set", "get"):
                    rates[kind][op].append(res["mb"] / res[kind][op])
                ok = ok and res[kind]["ok"]
        memory = {
            kind: common.run_worker(script, ["memory", kind, str(size), str(cfg["total"])])
            for kind in ("ours", "peer")
        }
        rows.append(
            {
                "size": size,
                "rates": {k: {op: common.summary(v) for op, v in ops.items()} for k, ops in rates.items()},
                "memory": memory,
                "intact": ok,
            }
        )
    targets = []
    for row in rows:
        r, mem = row["rates"], row["memory"]
        config = f"{row['size']:,}-byte values, {cfg['total'] >> 20} MiB"
        full = not quick
        for op in ("set", "get"):
            ratio = r["ours"][op]["median"] / r["peer"][op]["median"]
            targets.append(
                {
                    "name": f"{op} MB/s, Store / zict.Func(lz4) of a dict",
                    "config": config,
                    "value": fmt(ratio, 2),
                    "limit": ">= 1.0",
                    "ok": ratio >= 1.0 if full else None,
                }
            )
        fill = mem["ours"]["filled"] / mem["ours"]["compressed"]
        after = mem["ours"]["after"] / mem["peer"]["after"]
        targets += [
            {
                "name": "RSS growth after the fill / compressed bytes held",
                "config": config,
                "value": fmt(fill),
                "limit": "<= 1.05",
                "ok": fill <= 1.05 if full else None,
            },
            {
                "name": "RSS growth after deleting half and compacting, Store / zict",
                "config": config,
                "value": fmt(after),
                "limit": "<= 0.6",
                "ok": after <= 0.6 if full else None,
            },
            {
                "name": "values read back intact",
                "config": config,
                "value": "yes" if row["intact"] else "NO",
                "limit": "yes",
                "ok": row["intact"],
            },
        ]
    return {
        "name": NAME,
        "quick": quick,
        "machine": common.machine_info(),
        "config": cfg,
        "rows": rows,
        "targets": targets,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _rate(s: dict) -> str:
    return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def markdown(doc: dict) -> str:
    cfg = doc["config"]
    speed, memory = [], []
    for row in doc["rows"]:
        r, mem = row["rates"], row["memory"]
        speed.append(
            [
                f"{row['size']:,}",
                _rate(r["ours"]["set"]),
                _rate(r["peer"]["set"]),
                f"{r['ours']['set']['median'] / r['peer']['set']['median']:.2f}x",
                _rate(r["ours"]["get"]),
                _rate(r["peer"]["get"]),
                f"{r['ours']['get']['median'] / r['peer']['get']['median']:.2f}x",
            ]
        )
        for kind in ("ours", "peer"):
            m = mem[kind]
            memory.append(
                [
                    f"{row['size']:,}",
                    "Store" if kind == "ours" else "zict.Func(lz4)",
                    common.fmt_mib(m["compressed"]),
                    common.fmt_mib(m["filled"]),
                    fmt(m["filled"] / m["compressed"]),
                    common.fmt_mib(m["after"]),
                ]
            )
    return "\n\n".join(
        [
            "## Store (`bench_store.py`)",
            f"Method: values of 4 KiB, 64 KiB and 1 MiB made of kernel-build pages (seed {SEED}), "
            f"{cfg['total'] >> 20} MiB of them per size, in `zsmalloc.Store('lz4')` (its own pool, on the "
            "engine) and in `zict.Func(lz4 compress, decompress, {})`. Throughput: "
            f"{cfg['rounds']} rounds, each a fresh subprocess timing both (order alternating): set every "
            "value, then get every value in a shuffled order; MB/s of uncompressed values (10^6 bytes), "
            "median (min-max). Memory: each store in its own fresh subprocess; RSS growth over the RSS "
            "before the store was made (after a warm-up: a store of the same kind made, given 8 values, "
            "read and dropped, so that the code's pages and the per-thread codec state are in the "
            "baseline), after the fill and after deleting a random half (the Store then "
            "compacts: `compact()`, the deferred free, `memory.compact()`, `drain_pages()`).",
            md_table(
                [
                    "value bytes",
                    "Store set MB/s",
                    "zict set MB/s",
                    "set ratio",
                    "Store get MB/s",
                    "zict get MB/s",
                    "get ratio",
                ],
                speed,
            ),
            md_table(
                [
                    "value bytes",
                    "store",
                    "compressed MiB",
                    "RSS growth after fill MiB",
                    "growth / compressed",
                    "RSS growth after deleting half MiB",
                ],
                memory,
                align="llrrrr",
            ),
        ]
    )


def _dispatch(args: list[str]) -> dict:
    if args[0] == "speed":
        return worker_speed(int(args[1]), int(args[2]), int(args[3]))
    return worker_memory(args[1], int(args[2]), int(args[3]))


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(__doc__, argv, NAME, run, markdown, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
