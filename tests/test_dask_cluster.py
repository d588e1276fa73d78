"""The tier on real workers: a ``LocalCluster(data=worker_data(...))``, and ``dask worker`` processes.

Each computation persists a dask array (half of its bytes entropy) bigger
than the tiers before the disk hold, reduces it twice, checks the results
against numpy's,
and asks every worker what its data is and where its keys are.  The workers
use whichever pool ``ZSMALLOC_BACKEND`` names (a subprocess inherits it).
Every wait is bounded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from zsmalloc.dask import worker_data

N = 64 << 20  # uint8 elements: 64 MiB, in 64 chunks of 1 MiB, half of it entropy
CHUNK = 1 << 20
MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
DASK = Path(sys.executable).with_name("dask")


def nibbles(i):
    """Element ``i`` of the array (numpy or dask): 4 bits of splitmix64(i), as uint8."""
    z = i * MIX[0]
    z = (z ^ (z >> np.uint64(30))) * MIX[1]
    z = (z ^ (z >> np.uint64(27))) * MIX[2]
    return ((z ^ (z >> np.uint64(31))) & np.uint64(15)).astype(np.uint8)


def expected() -> tuple[int, int]:
    """The array's sum, and its sum of squares, chunk by chunk in this process."""
    total = squares = 0
    for start in range(0, N, CHUNK):
        v = nibbles(np.arange(start, start + CHUNK, dtype=np.uint64)).astype(np.int64)
        total += int(v.sum())
        squares += int((v * v).sum())
    return total, squares


def compute_and_check(client: Client) -> list[dict]:
    """Persist, reduce twice, check; each worker's tier figures."""
    x = nibbles(da.arange(N, chunks=CHUNK, dtype=np.uint64)).persist()
    total, squares = expected()
    assert int(x.sum(dtype=np.int64).compute(timeout=30)) == total
    y = x.astype(np.int64)
    assert int((y * y).sum().compute(timeout=30)) == squares  # a second pass over every chunk
    return list(client.run(tier_figures).values())


def tier_figures(dask_worker) -> dict:
    data = dask_worker.data
    return {
        "type": type(data).__name__,
        "fast": len(data.fast),
        "compressed": len(getattr(data, "compressed", ())),
        "disk": len(data.disk),
        "spilled": tuple(data.spilled_total),
    }


def assert_tier_used(figures: list[dict]) -> None:
    assert len(figures) == 2
    for f in figures:
        assert f["type"] == "TieredBuffer"
        assert f["fast"] and f["compressed"] and f["disk"], f
        assert f["spilled"][1] > 0  # bytes on disk, reported as distributed does


@pytest.mark.timeout(90)
@pytest.mark.parametrize("processes", [False, True])
def test_local_cluster(tmp_path: Path, processes: bool) -> None:
    # in one process, the memory monitor would read the test process's RSS: only the tiers' targets act
    monitor = (
        {}
        if processes
        else {"distributed.worker.memory.spill": False, "distributed.worker.memory.pause": False}
    )
    data = worker_data("400 MiB", fast_fraction=0.02, compressed_fraction=0.005)
    with (
        dask.config.set(monitor),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=processes,
            memory_limit="400 MiB",
            data=data,
            local_directory=str(tmp_path),
            dashboard_address=None,
        ) as cluster,
        Client(cluster, timeout=30) as client,
    ):
        assert_tier_used(compute_and_check(client))


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(DASK), *args], stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env, cwd=log.parent
    )


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


@pytest.mark.timeout(120)
def test_dask_worker_command_line(tmp_path: Path) -> None:
    """``dask scheduler`` and two ``dask worker --worker-class zsmalloc.dask.Worker`` on loopback."""
    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ)
    # the tiers' sizes come from the dask configuration, here through the environment
    env.update(
        {
            "DASK_ZSMALLOC__DASK__FAST_FRACTION": "0.02",
            "DASK_ZSMALLOC__DASK__COMPRESSED_FRACTION": "0.005",
            # the workers import this module to run tier_figures
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]),
        }
    )
    procs = [
        _start(
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sched_file),
            ],
            tmp_path / "scheduler.log",
            env,
        )
    ]
    try:
        deadline = time.monotonic() + 30
        while not sched_file.exists():
            assert procs[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "the scheduler wrote no scheduler file in 30 s"
            time.sleep(0.1)
        for i in range(2):
            (tmp_path / f"w{i}").mkdir()
            procs.append(
                _start(
                    [
                        "worker",
                        "--scheduler-file",
                        str(sched_file),
                        "--host",
                        "127.0.0.1",
                        "--worker-class",
                        "zsmalloc.dask.Worker",
                        "--nthreads",
                        "1",
                        "--memory-limit",
                        "400MiB",
                        "--no-dashboard",
                        "--local-directory",
                        str(tmp_path / f"w{i}"),
                    ],
                    tmp_path / f"worker{i}.log",
                    env,
                )
            )
        with Client(scheduler_file=str(sched_file), timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            addresses = list(client.scheduler_info()["workers"])
            assert all(a.startswith("tcp://127.0.0.1:") for a in addresses)
            assert_tier_used(compute_and_check(client))
    finally:
        _stop(procs[1:])
        _stop(procs[:1])
