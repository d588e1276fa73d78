"""Shared helpers for the benchmark scripts.

- :func:`machine_info`: what the numbers were measured on (CPU model from
  ``/proc/cpuinfo``, cores, memory, Python, kernel, git commit);
- :func:`rss_bytes`: this process's resident set size, with psutil;
- :func:`run_worker`: run one measurement in a fresh Python subprocess and get
  its result back as JSON (so that every RSS baseline starts clean and one
  configuration's heap cannot leak into the next);
- :func:`median`, :func:`verdict`, :func:`md_table`, number formatters;
- :func:`write_json`.

The scripts print a worker's result as the last line of its stdout, prefixed
with :data:`RESULT_PREFIX`; anything else the worker prints goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULT_PREFIX = "@@RESULT@@ "


# ----------------------------------------------------------------------
# machine and process


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` as a fallback)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def zsmalloc_source() -> Path:
    """The directory of the ``zsmalloc`` package these benchmarks import (``src/zsmalloc``)."""
    import zsmalloc

    return Path(zsmalloc.__file__).resolve().parent


def git_revision(repo: Path) -> str:
    """``repo``'s short commit, with ``+dirty src`` when its ``src/`` has uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        )
        return done.stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty src" if dirty else "")


def machine_info() -> dict:
    """Where and when the benchmarks ran."""
    vm = psutil.virtual_memory()
    source = zsmalloc_source()
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(vm.total / 2**30, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": f"{platform.system()} {platform.release()}",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "zsmalloc_source": str(source),
        "git": git_revision(source.parents[1]),
    }


def rss_bytes() -> int:
    """This process's resident set size in bytes."""
    return psutil.Process().memory_info().rss


def malloc_trim() -> bool:
    """Ask glibc to give free heap memory back to the OS (``malloc_trim(0)``); False if unavailable.

    Used after a store is dropped, to tell memory still held by the store from
    memory that the C allocator merely keeps cached.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def core_probe(rounds: int = 6) -> float:
    """How much sooner two threads of native work finish than one thread doing both halves.

    The work is ``hashlib.sha256`` of an 8 MiB buffer, which releases the
    GIL: about 2.0 when both cores are free, less when anything else runs.
    Quoted beside every two-thread figure.
    """
    import hashlib
    import threading

    buf = bytes(8 << 20)

    def work() -> None:
        for _ in range(rounds):
            hashlib.sha256(buf).digest()

    t0 = time.perf_counter()
    work()
    work()
    one = time.perf_counter() - t0
    threads = [threading.Thread(target=work) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return one / (time.perf_counter() - t0)


# ----------------------------------------------------------------------
# subprocess workers


def run_worker(script: Path, args: Sequence[str], timeout: float = 900, stderr: bool = False) -> dict:
    """Run ``python script --worker args...`` in a fresh interpreter; return its JSON result.

    The worker's stderr is captured (and shown if it fails), or with
    ``stderr=True`` passed through as it comes, for a long worker's progress.
    """
    cmd = [sys.executable, str(script), "--worker", *args]
    proc = subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=None if stderr else subprocess.PIPE,
        text=True,
        timeout=timeout,
        cwd=REPO_DIR,
    )
    if proc.returncode != 0:
        detail = "(its stderr is above)" if stderr else proc.stderr[-4000:]
        raise RuntimeError(f"worker {' '.join(cmd)} failed with status {proc.returncode}:\n{detail}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"worker {' '.join(cmd)} printed no result:\n{proc.stdout[-2000:]}")


def emit_result(result: dict) -> None:
    """A worker's last act: print its result for :func:`run_worker`."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def log(msg: str) -> None:
    """Progress to stderr (stdout belongs to the worker protocol)."""
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------
# statistics and formatting


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def summary(xs: list[float]) -> dict:
    """Median, min and max of repeated measurements."""
    return {"median": median(xs), "min": min(xs), "max": max(xs)}


def verdict(ok: bool | None) -> str:
    """PASS / FAIL, or n/a when the target does not apply to this run."""
    if ok is None:
        return "n/a"
    return "PASS" if ok else "FAIL"


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}"


def fmt_int(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def fmt_mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:,.1f}"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one character per column, ``l`` or ``r`` (default: all right
    but the first)."""
    headers = list(headers)
    if align is None:
        align = "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def results_dir(out: Path) -> Path:
    """Where the JSON files go for an output directory (``<out>/results``)."""
    return out / "results"


def run_bench(run: Callable[..., dict], quick: bool, out: Path) -> dict:
    """``run(quick=...)``, and ``out=`` too for a benchmark that writes files of its own there (plots)."""
    if "out" in inspect.signature(run).parameters:
        return run(quick=quick, out=out)
    return run(quick=quick)


def bench_main(
    doc: str,
    argv: list[str] | None,
    name: str,
    run: Callable[..., dict],
    markdown: Callable[[dict], str],
    dispatch: Callable[[list[str]], dict],
    worker_nargs: int | str = "+",
) -> int:
    """The entry point every benchmark script shares.

    ``--worker ARGS...`` runs one measurement in this (fresh) process through
    ``dispatch`` and prints its JSON for the parent; otherwise ``run`` measures
    everything and the result goes to ``<out>/results/<name>.json`` and, as
    Markdown, to stdout.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shrink sizes (a smoke run)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="write results/<name>.json here")
    parser.add_argument("--worker", nargs=worker_nargs, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        emit_result(dispatch(args.worker))
        return 0
    result = run_bench(run, args.quick, args.out)
    write_json(results_dir(args.out) / f"{name}.json", result)
    print(markdown(result))
    return 0
