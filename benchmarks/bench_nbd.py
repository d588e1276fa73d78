"""NBD: ``zsmalloc serve`` (nbdkit with our plugin) against ``nbdkit memory``, through real NBD clients.

What it measures
----------------
One disk image of seeded 4 KiB pages (256 MiB in the full run, 8 MiB with
``--quick``): ``zsmalloc.workloads.get_page_source("kernel-build")(n, 4321)``,
the same pages as ``bench_zram.py``.  Four servers, each a process of its
own on a Unix socket, fresh for every round:

- **ours lz4** and **ours zstd**: ``zsmalloc serve --size S --socket P
  --json [--algorithm zstd]``, the defaults otherwise (one request at a time
  per connection: see ``zsmalloc serve --help``); and both again with
  ``--threads 4``, which nbdkit 1.32 cannot run safely (a client hanging up
  with replies queued aborts it), to show what the plugin does when nbdkit
  serves several requests of a connection at once (no targets);
- **nbdkit malloc**: ``nbdkit -f -U P memory size=S allocator=malloc``
  (uncompressed RAM), and **nbdkit zstd**: ``allocator=zstd`` (nbdkit's
  compressed RAM disk), each with nbdkit's defaults (16 threads per
  connection).

Each round, for each server in turn (the order reverses every round):

(a) ``nbdcopy IMAGE URI`` then ``nbdcopy URI COPY`` (nbdcopy's defaults:
    4 connections when the server allows multi-conn), the copy's SHA-256
    compared with the image's;
(b) the same both ways with ``qemu-img convert`` (one connection);
(c) the server's RSS (psutil: the nbdkit process; for ours also the
    ``zsmalloc serve`` Python parent, reported apart) holding the image;
(d) fio with its nbd engine (libnbd), one job, 16 requests in flight:
    4 KiB random reads and 256 KiB sequential reads of the image, then
    4 KiB random writes and 256 KiB sequential writes (fio's own buffers,
    ``buffer_compress_percentage=50``: half-compressible, the same bytes
    for every server).

The image, the sockets and the copies live in ``/dev/shm`` (tmpfs) when
there is one, so that no disk is in what is timed.

MB/s are of uncompressed data (MB = 10^6 bytes).  Medians over rounds
(3 full, 1 quick) with min-max; ratios are per round, then the median.
Targets (issue 11): ours zstd >= 1.5 x nbdkit zstd on every row at no more
RSS; ours lz4 >= 0.6 x nbdkit malloc on every row at <= 0.4 x its RSS;
every copy read back intact.  When a tool is missing, the benchmark says so
in its section and measures nothing.

Run: ``.venv/bin/python benchmarks/bench_nbd.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

import common
from common import fmt, fmt_mib, md_table
from zsmalloc.workloads import get_page_source

NAME = "nbd"
SEED = 4321
WORKLOAD = "kernel-build"
PAGE = 4096
FULL_MIB, QUICK_MIB = 256, 8
FULL_ROUNDS = 3
QUEUE_DEPTH = 16
TOOLS = ("nbdcopy", "qemu-img", "nbdkit", "nbdinfo", "fio")
SERVERS = ("ours_lz4", "ours_zstd", "nbdkit_malloc", "nbdkit_zstd", "ours_lz4_t4", "ours_zstd_t4")
MAIN = SERVERS[:4]
THREADED = (("ours_lz4_t4", "nbdkit_malloc"), ("ours_zstd_t4", "nbdkit_zstd"))
LABELS = {
    "ours_lz4": "ours lz4",
    "ours_zstd": "ours zstd",
    "ours_lz4_t4": "ours lz4 -t 4",
    "ours_zstd_t4": "ours zstd -t 4",
    "nbdkit_malloc": "nbdkit memory malloc",
    "nbdkit_zstd": "nbdkit memory zstd",
}
# (ours, peer, throughput bar, RSS bar)
PAIRS = (("ours_zstd", "nbdkit_zstd", 1.5, 1.0), ("ours_lz4", "nbdkit_malloc", 0.6, 0.4))
# fio jobs: key, rw, block size
FIO_JOBS = (
    ("fio_randread_s", "randread", "4k"),
    ("fio_seqread_s", "read", "256k"),
    ("fio_randwrite_s", "randwrite", "4k"),
    ("fio_seqwrite_s", "write", "256k"),
)
CLIENTS = (
    ("nbdcopy_write_s", "nbdcopy in (sequential write)"),
    ("nbdcopy_read_s", "nbdcopy out (sequential read)"),
    ("qemu_img_write_s", "qemu-img convert in"),
    ("qemu_img_read_s", "qemu-img convert out"),
    ("fio_randread_s", f"fio 4 KiB random read, iodepth {QUEUE_DEPTH}"),
    ("fio_seqread_s", f"fio 256 KiB sequential read, iodepth {QUEUE_DEPTH}"),
    ("fio_randwrite_s", f"fio 4 KiB random write, iodepth {QUEUE_DEPTH}"),
    ("fio_seqwrite_s", f"fio 256 KiB sequential write, iodepth {QUEUE_DEPTH}"),
)


def _uri(sock: str) -> str:
    return f"nbd+unix:///?socket={sock}"


def _run(cmd: list[str], timeout: float = 600) -> tuple[float, str]:
    """Run a client; its wall time in seconds and its stdout."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def _start(server: str, sock: str, size: int) -> tuple[subprocess.Popen, int]:
    """The server process and the pid of the process holding the data (nbdkit)."""
    if server.startswith("ours"):
        cmd = [sys.executable, "-c", "from zsmalloc.cli import main; main()", "serve"]
        cmd += ["--size", str(size), "--socket", sock, "--json", "--algorithm", server.split("_")[1]]
        if server.endswith("_t4"):
            cmd += ["--threads", "4"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=common.REPO_DIR, text=True
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{server} did not start: {proc.communicate(timeout=30)[1][-2000:]}")
        return proc, json.loads(line)["nbdkit_pid"]
    allocator = server.split("_")[1]
    cmd = ["nbdkit", "-f", "-U", sock, "memory", f"size={size}", f"allocator={allocator}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server} exited: {proc.communicate()[1][-2000:]}")
        if subprocess.run(["nbdinfo", "--size", _uri(sock)], capture_output=True, timeout=10).returncode == 0:
            return proc, proc.pid
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{server} did not come up")


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    return out or ""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fio(uri: str, rw: str, bs: str, io_bytes: int) -> float:
    """One fio job on the nbd engine; its seconds for ``io_bytes`` (from fio's own bandwidth figure)."""
    cmd = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}"]
    cmd += [f"--iodepth={QUEUE_DEPTH}", f"--io_size={io_bytes}", "--output-format=json", "--randseed=4321"]
    cmd += ["--buffer_compress_percentage=50", "--refill_buffers", "--norandommap"]
    _, out = _run(cmd)
    job = json.loads(out[out.index("{") :])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    if job["error"] or side["io_bytes"] != io_bytes:
        raise RuntimeError(f"fio {rw} {bs}: error {job['error']}, {side['io_bytes']} of {io_bytes} bytes")
    return side["io_bytes"] / side["bw_bytes"]


def measure(server: str, image: Path, size: int, fio_bytes: int, tmp: Path, quick: bool) -> dict:
    """One server, fresh: the copies, its RSS holding the image, then fio."""
    sock = str(tmp / f"{server}.sock")
    proc, data_pid = _start(server, sock, size)
    uri = _uri(sock)
    out: dict = {}
    try:
        holder = psutil.Process(data_pid)
        out["rss_empty"] = holder.memory_info().rss
        digest = _sha256(image)
        copy = tmp / "copy.img"
        out["nbdcopy_write_s"] = _run(["nbdcopy", str(image), uri])[0]
        out["nbdcopy_read_s"] = _run(["nbdcopy", uri, str(copy)])[0]
        intact = _sha256(copy) == digest
        convert = ["qemu-img", "convert", "-f", "raw", "-O", "raw"]
        out["qemu_img_write_s"] = _run([*convert, "-n", str(image), uri])[0]
        out["qemu_img_read_s"] = _run([*convert, uri, str(copy)])[0]
        intact = intact and _sha256(copy) == digest
        copy.unlink()
        out["rss_image"] = holder.memory_info().rss
        if data_pid != proc.pid:
            out["rss_parent"] = psutil.Process(proc.pid).memory_info().rss
        for key, rw, bs in FIO_JOBS:
            if not (quick and bs != "4k"):  # a quick run does the random jobs only
                out[key] = _fio(uri, rw, bs, fio_bytes)
        out["rss_after"] = holder.memory_info().rss
        out["intact"] = intact
    finally:
        tail = _stop(proc)
    if server.startswith("ours"):
        summary = json.loads(tail.strip().splitlines()[-1])
        out["check"] = summary["check"]
        out["intact"] = out["intact"] and summary["check"] == "ok"
    return out


def worker_round(mib: int, round_no: int, quick: bool) -> dict:
    """One round: the image, then every server (the order reversing from round to round).

    A quick round leaves out the ``--threads 4`` servers and the sequential fio
    jobs, and moves 2 MiB per fio job.
    """
    n = mib * 256
    pages = list(get_page_source(WORKLOAD)(n, SEED))
    data = b"".join(pages).ljust(n * PAGE, b"\0")
    servers = MAIN if quick else SERVERS
    order = list(servers) if round_no % 2 == 0 else list(reversed(servers))
    fio_bytes = 2 << 20 if quick else len(data) // 4
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # no disk in what is timed
    with tempfile.TemporaryDirectory(prefix="bench-nbd", dir=shm) as tmp_name:
        tmp = Path(tmp_name)
        image = tmp / "image.img"
        image.write_bytes(data)
        result = {name: measure(name, image, len(data), fio_bytes, tmp, quick) for name in order}
    result["zero_pages"] = sum(1 for p in pages if not any(p))
    result["fio_bytes"] = fio_bytes
    return result


# ----------------------------------------------------------------------
# the driver


def run(quick: bool = False) -> dict:
    mib = QUICK_MIB if quick else FULL_MIB
    rounds = 1 if quick else FULL_ROUNDS
    missing = [t for t in TOOLS if shutil.which(t) is None]
    doc: dict = {
        "name": NAME,
        "quick": quick,
        "seed": SEED,
        "workload": WORKLOAD,
        "mib": mib,
        "rounds": rounds,
    }
    doc.update(queue_depth=QUEUE_DEPTH, missing_tools=missing)
    if missing:
        doc["targets"] = [
            {
                "name": "NBD clients, fio and nbdkit installed",
                "config": ", ".join(TOOLS),
                "value": "missing: " + ", ".join(missing),
                "limit": "all",
                "ok": False,
            }
        ]
        return doc
    script = Path(__file__).resolve()
    runs = []
    for r in range(rounds):
        common.log(f"nbd: {mib} MiB image, round {r + 1}/{rounds}")
        runs.append(common.run_worker(script, ["round", str(mib), str(r), str(int(quick))], timeout=3600))
    nbytes = mib << 20
    measured = MAIN if quick else SERVERS
    pairs = [(o, p) for o, p, _, _ in PAIRS] + ([] if quick else list(THREADED))
    throughput: dict = {}
    for key, _ in CLIENTS:
        if key not in runs[0]["ours_lz4"]:
            continue
        moved = runs[0]["fio_bytes"] if key.startswith("fio") else nbytes
        row: dict = {}
        for server in measured:
            rates = [moved / x[server][key] / 1e6 for x in runs]
            row[server] = {"mb_per_s": common.median(rates), "min": min(rates), "max": max(rates)}
        for ours, peer in pairs:
            row[f"{ours}/{peer}"] = common.median(x[peer][key] / x[ours][key] for x in runs)
        throughput[key] = row
    memory = {
        server: {
            k: common.median(x[server][k] for x in runs)
            for k in ("rss_empty", "rss_image", "rss_after", "rss_parent")
            if k in runs[0][server]
        }
        for server in measured
    }
    intact = all(x[s]["intact"] for x in runs for s in measured)
    config = f"{mib} MiB {WORKLOAD} image"
    targets = []
    for ours, peer, bar, rss_bar in PAIRS:
        rows = [c for c in CLIENTS if c[0] in throughput]
        worst = min(throughput[key][f"{ours}/{peer}"] for key, _ in rows)
        worst_row = min(rows, key=lambda c: throughput[c[0]][f"{ours}/{peer}"])[1]
        rss = memory[ours]["rss_image"] / memory[peer]["rss_image"]
        targets += [
            {
                "name": f"MB/s, {LABELS[ours]} / {LABELS[peer]}, the worst row ({worst_row})",
                "config": config,
                "value": fmt(worst, 2),
                "limit": f">= {bar}",
                "ok": worst >= bar,
            },
            {
                "name": f"RSS holding the image, {LABELS[ours]} / {LABELS[peer]} (nbdkit processes)",
                "config": config,
                "value": fmt(rss, 2),
                "limit": f"<= {rss_bar}",
                "ok": rss <= rss_bar,
            },
        ]
    targets.append(
        {
            "name": "every copy read back intact (SHA-256), every server; our final check ok",
            "config": config,
            "value": "yes" if intact else "no",
            "limit": "yes",
            "ok": intact,
        }
    )
    doc.update(
        zero_pages=runs[0]["zero_pages"],
        fio_bytes=runs[0]["fio_bytes"],
        throughput=throughput,
        memory=memory,
        intact=intact,
        runs=runs,
        targets=targets,
    )
    return doc


def markdown(doc: dict) -> str:
    out = ["## NBD (`bench_nbd.py`)", ""]
    if doc["missing_tools"]:
        missing = ", ".join(doc["missing_tools"])
        out.append(f"Not measured: missing {missing} (Debian: libnbd-bin, qemu-utils, nbdkit, fio).")
        return "\n".join(out)
    out += [
        f"Method: a {doc['mib']} MiB image of `{doc['workload']}` pages (seed {doc['seed']}, "
        f"{doc['zero_pages']:,} zero pages), the pages of `bench_zram.py`. Servers, each a fresh process "
        "on a Unix socket for every round: **ours** `zsmalloc serve --size S --socket P` (nbdkit with our "
        "plugin, its defaults: one request at a time per connection) with lz4 and with `--algorithm zstd` "
        "(and both again with `--threads 4`, below), "
        "and **nbdkit** `nbdkit -f -U P memory size=S` with `allocator=malloc` and `allocator=zstd` (16 "
        "threads per connection). Clients, in this order: `nbdcopy IMAGE URI`, `nbdcopy URI COPY`, "
        "`qemu-img convert` both ways (copies checked by SHA-256; image and copies in /dev/shm), then "
        "fio's nbd engine, one job, "
        f"{doc['queue_depth']} in flight, {doc['fio_bytes'] >> 20} MiB each: 4 KiB random reads, 256 KiB "
        "sequential reads (of the image), 4 KiB random writes, 256 KiB sequential writes (fio's buffers, "
        f"50% compressible). {doc['rounds']} round(s), the servers' order reversing every round; medians "
        "(min-max); ratios are medians of per-round ratios. MB = 10^6 bytes of uncompressed data.",
        "",
    ]
    rows = []
    for key, label in CLIENTS:
        row = doc["throughput"].get(key)
        if row is None:
            rows.append([label, *(["not run with `--quick`"] + ["-"] * (len(MAIN) + len(PAIRS) - 1))])
            continue
        cells = [f"{row[s]['mb_per_s']:,.1f} ({row[s]['min']:,.1f}-{row[s]['max']:,.1f})" for s in MAIN]
        ratios = [fmt(row[f"{o}/{p}"], 2) for o, p, _, _ in PAIRS]
        rows.append([label, *cells, *ratios])
    head = ["client", *(f"{LABELS[s]} MB/s" for s in MAIN)]
    head += [f"{LABELS[o]} / {LABELS[p]}" for o, p, _, _ in PAIRS]
    out.append(md_table(head, rows))
    out += [
        "",
        "### With `--threads 4` (several requests of a connection at once; unsafe on nbdkit 1.32)",
        "",
    ]
    rows = []
    for key, label in CLIENTS if not doc["quick"] else ():
        row = doc["throughput"][key]
        cells = [
            f"{row[s]['mb_per_s']:,.1f} ({row[s]['min']:,.1f}-{row[s]['max']:,.1f})" for s, _ in THREADED
        ]
        rows.append([label, *cells, *(fmt(row[f"{o}/{p}"], 2) for o, p in THREADED)])
    head = ["client", *(f"{LABELS[s]} MB/s" for s, _ in THREADED)]
    head += [f"{LABELS[o]} / {LABELS[p]}" for o, p in THREADED]
    out.append(md_table(head, rows) if rows else "Not run with `--quick`.")
    mem = doc["memory"]
    out += ["", "### Server memory (RSS of the nbdkit process)", ""]
    rows = [
        [
            LABELS[s],
            fmt_mib(mem[s]["rss_empty"]),
            fmt_mib(mem[s]["rss_image"]),
            fmt_mib(mem[s]["rss_after"]),
            fmt_mib(mem[s].get("rss_parent")),
        ]
        for s in doc["memory"]
    ]
    head = ["server", "empty MiB", "holding the image MiB", "after fio's writes MiB", "+ Python parent MiB"]
    out.append(md_table(head, rows))
    out += ["", f"Every copy intact: {'yes' if doc['intact'] else 'NO'}."]
    return "\n".join(out)


def _dispatch(args: list[str]) -> dict:
    kind, mib, round_no, quick = args
    if kind != "round":
        raise SystemExit(f"unknown worker {kind!r}")
    return worker_round(int(mib), int(round_no), quick == "1")


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(__doc__, argv, NAME, run, markdown, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
