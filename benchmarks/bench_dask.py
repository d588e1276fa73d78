"""Dask: a 2-worker ``LocalCluster`` whose working set is 3x its memory, under three worker data mappings.

What it measures
----------------
``LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=LIMIT)``
persists a dask array of kernel-build pages (``zsmalloc.workloads``, seed
4321: a pool of 4096 pages, and chunk ``i`` is 1024 of them in the order of
a permutation seeded by ``i``) whose size is 3x the two workers' memory
limits together, then reduces it twice (``x.sum(axis=0)``, then
``x.max(axis=1).sum()``), each a pass over every chunk, wherever it is.
Both results are checked against the values computed from the page pool.
The same run does it with each worker's ``data`` being

- **default**: distributed's ``SpillBuffer`` (target 0.6 of the limit, lz4
  spill compression: ``distributed.worker.memory.spill-compression: auto``);
- **zict-lz4**: the tier with ``zict.Func(lz4 compress, decompress, dict())``
  as its compressed layer (``Lz4Layer`` below) in place of the Store;
- **tier**: ``zsmalloc.dask.worker_data(LIMIT)``: live objects up to 0.3 of
  the limit, a zstd ``Store`` up to 0.25 of it in pool pages, then disk.

For each: the peak, over time, of the data held in RAM (the sizeof() of the
values in ``fast`` and in the compressed layer, summed over the workers;
targets: the tier's >= 2x the default's), the peak of the workers' RSS, the
bytes written to disk (distributed's ``disk-write`` metric of the workers'
data mappings; target: the tier's <= 0.5x the default's), the wall time
from the first task to the second result (target: <= 1.0x the default's),
and whether both results were right.  A sampling thread reads every worker
every 0.25 s (``Client.run``) for the plots of memory and spill over time
(``results/dask_timeline.png``).

How
---
Each configuration runs in a fresh subprocess with its own cluster and
spill directory; the full run repeats the three configurations 5 times, in
an order that rotates from round to round; medians with min-max.
``--quick`` shrinks the limit to 16 MiB and runs threads in one process
(``processes=False``) without the memory monitor (a process-wide RSS would
be over any per-worker limit): a smoke run, not a measurement.

Run: ``.venv/bin/python benchmarks/bench_dask.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import lz4.block
import numpy as np
import psutil

import common
from common import fmt, md_table
from zsmalloc.workloads import get_page_source

NAME = "dask"
SEED = 4321
POOL_PAGES = 4096
CONFIGS = ("default", "zict-lz4", "tier")
FULL = {"limit": 512 << 20, "rows": 1024, "factor": 3, "rounds": 5, "processes": True}
QUICK = {"limit": 16 << 20, "rows": 256, "factor": 3, "rounds": 1, "processes": False}
SAMPLE_S = 0.25


# ----------------------------------------------------------------------
# the data (imported by the workers: they make the chunks themselves)


@functools.cache
def page_pool() -> np.ndarray:
    """The 4096 kernel-build pages every chunk is made of, as a (4096, 4096) uint8 array."""
    pages = b"".join(get_page_source("kernel-build")(POOL_PAGES, SEED))
    return np.frombuffer(pages, dtype=np.uint8).reshape(POOL_PAGES, 4096)


def rows_of(i: int, rows: int) -> np.ndarray:
    """Which pool pages chunk ``i`` holds, in order."""
    return np.random.default_rng([SEED, i]).permutation(POOL_PAGES)[:rows]


def make_chunk(rows: int, block_id: tuple[int, int]) -> np.ndarray:
    """Chunk ``block_id[0]`` of the array (``map_blocks`` passes ``block_id``): ``rows`` pages of the pool."""
    return page_pool()[rows_of(block_id[0], rows)]


def expected(chunks: int, rows: int) -> tuple[np.ndarray, int]:
    """The two reductions' results, from the pool and the page counts."""
    counts = np.zeros(POOL_PAGES, dtype=np.int64)
    for i in range(chunks):
        counts[rows_of(i, rows)] += 1
    pool = page_pool().astype(np.int64)
    return counts @ pool, int(counts @ pool.max(axis=1))


class Lz4Layer:
    """The peer's compressed layer: ``zict.Func(lz4 compress, decompress, dict())``, with the
    few calls the tier needs (``memory_used`` is the compressed bytes held)."""

    def __init__(self) -> None:
        import zict

        self._lengths: dict[Any, int] = {}
        self._nbytes = 0
        self.func = zict.Func(
            lambda v: lz4.block.compress(v, store_size=False),
            lambda b: b,  # the tier decompresses into its own buffer (get_into)
            {},
        )

    def __setitem__(self, key: Any, value: Any) -> None:
        self.func[key] = value
        self._lengths[key] = len(memoryview(value).cast("B"))
        self._nbytes += len(self.func.d[key])

    def __delitem__(self, key: Any) -> None:
        self._nbytes -= len(self.func.d[key])
        del self.func[key]
        del self._lengths[key]

    def __contains__(self, key: object) -> bool:
        return key in self.func

    def __len__(self) -> int:
        return len(self.func)

    def get_into(self, key: Any, buf: bytearray) -> int:
        n = self._lengths[key]
        buf[:n] = lz4.block.decompress(self.func[key], uncompressed_size=n)
        return n

    def get_compressed(self, key: Any) -> tuple[str, int, bytearray]:
        return "lz4", self._lengths[key], bytearray(self.func[key])

    def decompress(self, kind: str, nbytes: int, payload: Any) -> bytearray:
        return bytearray(lz4.block.decompress(payload, uncompressed_size=nbytes))

    @property
    def memory_used(self) -> int:
        return self._nbytes

    @property
    def compressed_nbytes(self) -> int:
        return self._nbytes

    def compact(self) -> int:
        return 0

    def close(self) -> None:
        self.func.d.clear()


def make_peer_buffer(worker_local_directory: str, target: int, compressed_target: int) -> Any:
    """The zict-lz4 configuration's worker data: the tier with ``Lz4Layer`` in place of the Store."""
    from zsmalloc.dask import TieredBuffer

    return TieredBuffer(
        os.path.join(worker_local_directory, "storage"),
        target=target,
        compressed_target=compressed_target,
        layer=Lz4Layer(),
    )


def probe(dask_worker: Any) -> dict:
    """One worker's figures: RSS, data held in RAM (sizeof), bytes written to disk."""
    data = dask_worker.data
    in_ram = data.fast.total_weight + getattr(data, "compressed_sizeof", 0)
    return {
        "rss": psutil.Process().memory_info().rss,
        "in_ram": int(in_ram),
        "compressed_memory": int(getattr(data, "compressed_memory", 0)),
        "disk_written": int(data.cumulative_metrics.get(("disk-write", "bytes"), 0)),
        "on_disk": int(data.spilled_total.disk),
        "tier_used": type(data).__name__,
    }


# ----------------------------------------------------------------------
# one configuration, in a fresh process


def _data_arg(config: str, limit: int) -> Any:
    if config == "default":
        return None
    if config == "zict-lz4":
        return (make_peer_buffer, {"target": int(limit * 0.3), "compressed_target": int(limit * 0.25)})
    from zsmalloc.dask import worker_data

    return worker_data(limit)


def worker_run(config: str, quick: bool) -> dict:
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    cfg = QUICK if quick else FULL
    limit, rows = cfg["limit"], cfg["rows"]
    chunk_bytes = rows * 4096
    chunks = cfg["factor"] * 2 * limit // chunk_bytes
    overrides: dict[str, Any] = {"distributed.worker.memory.terminate": False}
    if not cfg["processes"]:
        overrides.update({"distributed.worker.memory.spill": False, "distributed.worker.memory.pause": False})
    want_sum, want_max = expected(chunks, rows)
    samples: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp, dask.config.set(overrides):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=cfg["processes"],
            memory_limit=limit,
            data=_data_arg(config, limit),
            local_directory=tmp,
            dashboard_address=None,
        )
        with cluster, Client(cluster) as client:
            client.run(page_pool)  # each worker makes its page pool before the clock starts
            stop = threading.Event()
            t0 = time.perf_counter()

            def sample() -> None:
                while not stop.wait(SAMPLE_S):
                    try:
                        got = client.run(probe)
                    except Exception:  # the cluster is closing
                        return
                    samples.append({"t": time.perf_counter() - t0, "workers": list(got.values())})

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            x = da.map_blocks(
                make_chunk,
                rows,
                dtype=np.uint8,
                chunks=((rows,) * chunks, (4096,)),
            ).persist()
            wait(x)
            phases = [time.perf_counter() - t0]
            got_sum = x.sum(axis=0, dtype=np.int64).compute()
            phases.append(time.perf_counter() - t0 - sum(phases))
            got_max = int(x.max(axis=1).astype(np.int64).sum().compute())
            wall = time.perf_counter() - t0
            phases.append(wall - sum(phases))
            stop.set()
            sampler.join(timeout=10)
            final = list(client.run(probe).values())
            metrics = client.run(lambda dask_worker: dict(dask_worker.data.cumulative_metrics))
            del x
    ok = bool(np.array_equal(got_sum, want_sum)) and got_max == want_max
    return {
        "config": config,
        "wall": wall,
        "phases": phases,
        "ok": ok,
        "chunks": chunks,
        "working_set": chunks * chunk_bytes,
        "peak_in_ram": max((sum(w["in_ram"] for w in s["workers"]) for s in samples), default=0),
        "peak_rss": max((sum(w["rss"] for w in s["workers"]) for s in samples), default=0),
        "disk_written": sum(w["disk_written"] for w in final),
        "tier_used": sorted({w["tier_used"] for w in final}),
        "seconds_in_data": _seconds(metrics),
        "timeline": [
            {
                "t": round(s["t"], 3),
                "rss": sum(w["rss"] for w in s["workers"]),
                "in_ram": sum(w["in_ram"] for w in s["workers"]),
                "compressed_memory": sum(w["compressed_memory"] for w in s["workers"]),
                "disk_written": sum(w["disk_written"] for w in s["workers"]),
            }
            for s in samples
        ],
    }


def _seconds(metrics: dict[str, dict]) -> dict[str, float]:
    """The workers' data mappings' time, summed over the workers, by label (compress, disk-write...)."""
    out: dict[str, float] = {}
    for per_worker in metrics.values():
        for (label, unit), value in per_worker.items():
            if unit == "seconds":
                out[label] = round(out.get(label, 0.0) + value, 3)
    return out


# ----------------------------------------------------------------------
# the whole benchmark


def run(quick: bool = False, out: Path | None = None) -> dict:
    cfg = QUICK if quick else FULL
    started = time.perf_counter()
    script = Path(__file__)
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    load = []
    for r in range(cfg["rounds"]):
        order = CONFIGS[r % 3 :] + CONFIGS[: r % 3]
        for config in order:
            common.log(f"dask: {config}, round {r + 1}/{cfg['rounds']}")
            load.append(os.getloadavg()[0])
            args = ["run", config, "quick" if quick else "full"]
            runs[config].append(common.run_worker(script, args, timeout=600))
    summary = {
        c: {
            key: common.summary([float(x[key]) for x in runs[c]])
            for key in ("wall", "peak_in_ram", "peak_rss", "disk_written")
        }
        for c in CONFIGS
    }
    intact = all(x["ok"] for c in CONFIGS for x in runs[c])
    tier_used = all("TieredBuffer" in x["tier_used"] for x in runs["tier"])
    plot = _plot(runs, (out or common.BENCH_DIR) / "results" / "dask_timeline.png")
    d, t = summary["default"], summary["tier"]
    full = not quick
    ram = t["peak_in_ram"]["median"] / max(1.0, d["peak_in_ram"]["median"])
    disk = t["disk_written"]["median"] / max(1.0, d["disk_written"]["median"])
    wall = t["wall"]["median"] / d["wall"]["median"]
    config = f"2 workers x {cfg['limit'] >> 20} MiB, working set {runs['tier'][0]['working_set'] >> 20} MiB"
    targets = [
        _target("data held in RAM at peak, tier / default", config, ram, ">= 2.0", ram >= 2.0, full),
        _target("bytes written to disk, tier / default", config, disk, "<= 0.5", disk <= 0.5, full),
        _target("wall time, tier / default", config, wall, "<= 1.0", wall <= 1.0, full),
        {
            "name": "both reductions right, every configuration; the tier in use",
            "config": config,
            "value": "yes" if intact and tier_used else "NO",
            "limit": "yes",
            "ok": intact and tier_used,
        },
    ]
    for c in CONFIGS:
        for x in runs[c]:
            del x["timeline"]
    return {
        "name": NAME,
        "quick": quick,
        "machine": common.machine_info(),
        "config": cfg,
        "load_avg_1m": load,
        "summary": summary,
        "runs": runs,
        "plot": plot,
        "targets": targets,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _target(name: str, config: str, ratio: float, limit: str, ok: bool, full: bool) -> dict:
    return {
        "name": name,
        "config": config,
        "value": fmt(ratio, 2),
        "limit": limit,
        "ok": ok if full else None,
    }


def _plot(runs: dict[str, list[dict]], path: Path) -> str:
    """Memory and spill over time of each configuration's first run, as a PNG; its file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(CONFIGS), figsize=(15, 4.5), sharey=True)
    for ax, c in zip(axes, CONFIGS, strict=True):
        tl = runs[c][0]["timeline"]
        t = [s["t"] for s in tl]
        for key, label in (
            ("rss", "workers' RSS"),
            ("in_ram", "data held in RAM (sizeof)"),
            ("compressed_memory", "compressed layer's RAM"),
            ("disk_written", "written to disk (cumulative)"),
        ):
            ax.plot(t, [s[key] / 2**20 for s in tl], label=label)
        ax.set_title(f"{c}: {runs[c][0]['wall']:.1f} s")
        ax.set_xlabel("seconds")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MiB, both workers")
    axes[-1].legend(loc="upper left", fontsize=8)
    fig.suptitle("LocalCluster(n_workers=2): persist a working set 3x the memory, reduce it twice")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


READING = " ".join(
    [
        "Reading the table: the default's `SpillBuffer` promotes every value it reads back into `fast`,",
        "which evicts another one; over a working set 3x the memory, each pass of a reduction then writes",
        "most of the array to disk again, hence disk bytes well above the working set's lz4 size. The tier",
        "reads a value where it is (one zstd decompression from the Store) and writes to disk only what",
        "leaves the Store, as the Store holds it. `zict.Func(lz4)` in the same place holds about half the",
        "tier's data in the same RAM: lz4 compresses these pages 3.8x, zstd 7.5x.",
    ]
)


def _mib(s: dict) -> str:
    return f"{s['median'] / 2**20:,.0f} ({s['min'] / 2**20:,.0f}-{s['max'] / 2**20:,.0f})"


def markdown(doc: dict) -> str:
    cfg, summ = doc["config"], doc["summary"]
    rows = []
    for c in CONFIGS:
        s = summ[c]
        rows.append(
            [
                c,
                _mib(s["peak_in_ram"]),
                _mib(s["peak_rss"]),
                _mib(s["disk_written"]),
                f"{s['wall']['median']:.1f} ({s['wall']['min']:.1f}-{s['wall']['max']:.1f})",
                "yes" if all(x["ok"] for x in doc["runs"][c]) else "NO",
            ]
        )
    load = doc["load_avg_1m"]
    per_round = [
        t["wall"] / d["wall"] for t, d in zip(doc["runs"]["tier"], doc["runs"]["default"], strict=True)
    ]
    working = doc["runs"]["tier"][0]["working_set"]
    return "\n\n".join(
        [
            "## Dask (`bench_dask.py`)",
            " ".join(
                [
                    "Method: `LocalCluster(n_workers=2, threads_per_worker=1,",
                    f"memory_limit={cfg['limit'] >> 20} MiB, processes={cfg['processes']})` persists",
                    f"a dask array of kernel-build pages ({working >> 20} MiB, {cfg['factor']}x the two",
                    f"workers' limits; chunks of {cfg['rows'] * 4096 >> 20} MiB) and reduces it twice",
                    "(`x.sum(axis=0)`, then `x.max(axis=1).sum()`), both results checked.",
                    "Worker data: **default** = distributed's `SpillBuffer` (lz4 spill compression);",
                    "**zict-lz4** = the tier with `zict.Func(lz4 compress, decompress, dict())` as its",
                    "compressed layer (0.3 of the limit for live objects, 0.25 for the compressed bytes,",
                    "its lz4 bytes written to disk as they are);",
                    "**tier** = `zsmalloc.dask.worker_data(limit)` (0.3 live, 0.25 of pool pages for a zstd",
                    "`Store`).",
                    f"{cfg['rounds']} rounds, each configuration in a fresh process with its own cluster,",
                    "order rotating; medians (min-max). In RAM: the sizeof() of the values in `fast` and in",
                    "the compressed layer, both workers, peak over 0.25 s samples; disk: distributed's",
                    "`disk-write` bytes. The machine is shared: 1-minute load average",
                    f"{min(load):.2f}-{max(load):.2f} at the runs' starts (2 cores).",
                    f"Plot: `results/{doc['plot']}`.",
                ]
            ),
            md_table(
                [
                    "configuration",
                    "data in RAM at peak MiB",
                    "workers' RSS at peak MiB",
                    "written to disk MiB",
                    "wall s",
                    "right",
                ],
                rows,
                align="lrrrrl",
            ),
            f"Wall time, tier / default, round by round: {min(per_round):.2f}-{max(per_round):.2f}.",
            READING,
        ]
    )


def _dispatch(args: list[str]) -> dict:
    # by its module name, not __main__: the workers unpickle make_chunk and the peer's factory by name
    import bench_dask

    return bench_dask.worker_run(args[1], args[2] == "quick")


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(__doc__, argv, NAME, run, markdown, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
