"""NBD: ``zsmalloc serve`` against ``nbdkit memory allocator=zstd``, through real NBD clients.

What it measures
----------------
One disk image of seeded 4 KiB pages (64 MiB in the full run, 8 MiB with
``--quick``): ``zsmalloc.workloads.get_page_source("kernel-build")(n, 4321)``,
the same pages as ``bench_zram.py``.  Two servers, each a process of its
own on a Unix socket, fresh for every round:

- **ours**: ``zsmalloc serve --size S --socket P --json`` (lz4, the
  defaults: requests up to 1 MiB make their device calls on the event loop),
  and again with ``--inline-max 0`` (every device call in the thread pool),
  to show what the hand-off to threads costs under the GIL;
- **nbdkit**: ``nbdkit -f -U P memory size=S allocator=zstd``, the C server
  that keeps its RAM disk compressed (zstd) - the nearest peer.

Each round, for each server (in turn; the order reverses every round):

(a) sequential write: ``nbdcopy IMAGE URI`` (nbdcopy's defaults: up to 4
    connections when the server allows multi-conn, 64 requests in flight);
(b) sequential read: ``nbdcopy URI COPY``, and the copy's SHA-256 compared
    with the image's;
(c) the same both ways with ``qemu-img convert`` (one connection);
(d) random 4 KiB I/O with libnbd (``python3-libnbd``, the engine of nbdsh):
    4096 writes (512 with --quick) at random page offsets, 16 in flight,
    each writing the image's own page for that offset, then as many reads;
    a sample is verified;
(e) the server's RSS (psutil) when it is up and empty, and after all that:
    the growth is what holding the data costs.

MB/s are of uncompressed data (MB = 10^6 bytes).  Medians over rounds
(3 full, 1 quick) with min-max; ratios are ours / nbdkit per round, then the
median.  Targets of our own (issue 5 sets none; reported, not enforced): ours >= 0.25 x nbdkit's
throughput for each client (a Python server against a C one), and RSS
growth <= 2 x nbdkit's.  When a tool is missing, the benchmark says so in
its section and measures what it can.

Run: ``.venv/bin/python benchmarks/bench_nbd.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import hashlib
import json
import os
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
FULL_MIB, QUICK_MIB = 64, 8
FULL_ROUNDS = 3
FULL_RANDOM_OPS, QUICK_RANDOM_OPS = 4096, 512
QUEUE_DEPTH = 16
THROUGHPUT_LIMIT = 0.25  # ours / nbdkit, MB/s
RSS_LIMIT = 2.0  # ours / nbdkit, RSS growth
TOOLS = ("nbdcopy", "qemu-img", "nbdkit", "nbdinfo")
SERVERS = ("ours", "pool", "nbdkit")  # pool: ours with --inline-max 0

# Random 4 KiB I/O through libnbd, run by the system Python that python3-libnbd installs into.
RANDOM_IO = r"""
import json, random, sys, time
import nbd
uri, image_path = sys.argv[1:3]
n, seed, depth = map(int, sys.argv[3:6])
image = open(image_path, "rb").read()
rng = random.Random(seed)
offsets = [rng.randrange(len(image) // 4096) * 4096 for _ in range(n)]
h = nbd.NBD()
h.connect_uri(uri)
errors = []
def done(err):
    if err.value:
        errors.append(err.value)
    return 1
def run(issue):
    t0 = time.perf_counter()
    i = 0
    while i < n or h.aio_in_flight():
        while i < n and h.aio_in_flight() < depth:
            issue(offsets[i])
            i += 1
        h.poll(-1)
    return time.perf_counter() - t0
bufs = {o: nbd.Buffer.from_bytearray(bytearray(image[o:o + 4096])) for o in set(offsets)}
write_s = run(lambda o: h.aio_pwrite(bufs[o], o, completion=done))
rbuf = nbd.Buffer(4096)
read_s = run(lambda o: h.aio_pread(rbuf, o, completion=done))
ok = all(h.pread(4096, o) == image[o:o + 4096] for o in offsets[:256])
h.shutdown()
print(json.dumps({"write_s": write_s, "read_s": read_s, "errors": len(errors), "intact": ok and not errors}))
"""


def _uri(sock: str) -> str:
    return f"nbd+unix:///?socket={sock}"


def _run(cmd: list[str], timeout: float = 300) -> float:
    """Run a client; return its wall time in seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def _start(server: str, sock: str, size: int) -> subprocess.Popen:
    if server in ("ours", "pool"):
        cmd = [sys.executable, "-c", "from zsmalloc.cli import main; main()", "serve"]
        cmd += ["--size", str(size), "--socket", sock, "--json"]
        if server == "pool":
            cmd += ["--inline-max", "0"]
    else:
        cmd = ["nbdkit", "-f", "-U", sock, "memory", f"size={size}", "allocator=zstd"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=common.REPO_DIR)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server} server exited: {proc.stderr.read().decode()[-2000:]}")
        probe = subprocess.run(["nbdinfo", "--size", _uri(sock)], capture_output=True, timeout=10)
        if os.path.exists(sock) and probe.returncode == 0:
            return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{server} server did not come up")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def measure(server: str, image: Path, size: int, random_ops: int, tmp: Path) -> dict:
    """One server, fresh: every client in turn, then its RSS."""
    sock = str(tmp / f"{server}.sock")
    proc = _start(server, sock, size)
    uri = _uri(sock)
    out: dict = {}
    try:
        rss = psutil.Process(proc.pid)
        out["rss_empty"] = rss.memory_info().rss
        digest = _sha256(image)
        copy = tmp / "copy.img"
        out["nbdcopy_write_s"] = _run(["nbdcopy", str(image), uri])
        out["nbdcopy_read_s"] = _run(["nbdcopy", uri, str(copy)])
        intact = _sha256(copy) == digest
        convert = ["qemu-img", "convert", "-f", "raw", "-O", "raw"]
        out["qemu_img_write_s"] = _run([*convert, "-n", str(image), uri])
        out["qemu_img_read_s"] = _run([*convert, uri, str(copy)])
        intact = intact and _sha256(copy) == digest
        copy.unlink()
        if shutil.which("nbdsh"):  # python3-libnbd
            cmd = [
                "/usr/bin/python3",
                "-c",
                RANDOM_IO,
                uri,
                str(image),
                str(random_ops),
                str(SEED),
                str(QUEUE_DEPTH),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if res.returncode != 0:
                raise RuntimeError(f"random I/O against {server} failed: {res.stderr[-2000:]}")
            rnd = json.loads(res.stdout.strip().splitlines()[-1])
            out["random_write_s"], out["random_read_s"] = rnd["write_s"], rnd["read_s"]
            intact = intact and rnd["intact"]
        out["rss_after"] = rss.memory_info().rss
        out["intact"] = intact
    finally:
        _stop(proc)
    return out


def worker_round(mib: int, round_no: int, random_ops: int) -> dict:
    """One round: the image, then every server (the order reversing from round to round)."""
    n = mib * 256
    pages = list(get_page_source(WORKLOAD)(n, SEED))
    data = b"".join(pages).ljust(n * PAGE, b"\0")
    order = list(SERVERS) if round_no % 2 == 0 else list(reversed(SERVERS))
    with tempfile.TemporaryDirectory(prefix="bench-nbd") as tmp_name:
        tmp = Path(tmp_name)
        image = tmp / "image.img"
        image.write_bytes(data)
        result = {name: measure(name, image, len(data), random_ops, tmp) for name in order}
    result["zero_pages"] = sum(1 for p in pages if not any(p))
    return result


# ----------------------------------------------------------------------
# the driver

CLIENTS = (
    ("nbdcopy_write_s", "sequential write, nbdcopy"),
    ("nbdcopy_read_s", "sequential read, nbdcopy"),
    ("qemu_img_write_s", "sequential write, qemu-img convert"),
    ("qemu_img_read_s", "sequential read, qemu-img convert"),
    ("random_write_s", f"random 4 KiB writes, libnbd, {QUEUE_DEPTH} in flight"),
    ("random_read_s", f"random 4 KiB reads, libnbd, {QUEUE_DEPTH} in flight"),
)


def run(quick: bool = False) -> dict:
    mib = QUICK_MIB if quick else FULL_MIB
    rounds = 1 if quick else FULL_ROUNDS
    random_ops = QUICK_RANDOM_OPS if quick else FULL_RANDOM_OPS
    missing = [t for t in TOOLS if shutil.which(t) is None]
    doc: dict = {
        "name": NAME,
        "quick": quick,
        "seed": SEED,
        "workload": WORKLOAD,
        "mib": mib,
        "rounds": rounds,
    }
    doc.update(random_ops=random_ops, queue_depth=QUEUE_DEPTH, missing_tools=missing)
    if missing:
        doc["targets"] = [
            {
                "name": "NBD clients and nbdkit installed",
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
        runs.append(common.run_worker(script, ["round", str(mib), str(r), str(random_ops)], timeout=1800))
    nbytes = mib << 20
    throughput: dict = {}
    for key, _ in CLIENTS:
        if key not in runs[0]["ours"]:
            continue
        ops_bytes = random_ops * PAGE if key.startswith("random") else nbytes
        row = {}
        for server in SERVERS:
            rates = [ops_bytes / x[server][key] / 1e6 for x in runs]
            row[server] = {"mb_per_s": common.median(rates), "min": min(rates), "max": max(rates)}
        row["ratio"] = common.median(x["nbdkit"][key] / x["ours"][key] for x in runs)
        row["pool_ratio"] = common.median(x["nbdkit"][key] / x["pool"][key] for x in runs)
        throughput[key] = row
    memory = {
        server: {
            "rss_empty": common.median(x[server]["rss_empty"] for x in runs),
            "rss_after": common.median(x[server]["rss_after"] for x in runs),
            "rss_growth": common.median(x[server]["rss_after"] - x[server]["rss_empty"] for x in runs),
        }
        for server in SERVERS
    }
    rss_ratio = memory["ours"]["rss_growth"] / max(1, memory["nbdkit"]["rss_growth"])
    intact = all(x[s]["intact"] for x in runs for s in SERVERS)
    config = f"{mib} MiB {WORKLOAD} image"
    targets = [
        {
            "name": f"{label}: MB/s, ours / nbdkit memory zstd",
            "config": config,
            "value": fmt(row["ratio"], 2),
            "limit": f">= {THROUGHPUT_LIMIT} (our bar)",
            "ok": row["ratio"] >= THROUGHPUT_LIMIT,
        }
        for key, label in CLIENTS
        if (row := throughput.get(key))
    ]
    targets += [
        {
            "name": "server RSS growth after the copies, ours / nbdkit memory zstd",
            "config": config,
            "value": fmt(rss_ratio, 2),
            "limit": f"<= {RSS_LIMIT} (our bar)",
            "ok": rss_ratio <= RSS_LIMIT,
        },
        {
            "name": "every copy read back intact (SHA-256), both servers",
            "config": config,
            "value": "yes" if intact else "no",
            "limit": "yes",
            "ok": intact,
        },
    ]
    doc.update(
        zero_pages=runs[0]["zero_pages"],
        throughput=throughput,
        memory=memory,
        rss_ratio=rss_ratio,
        intact=intact,
        runs=runs,
        targets=targets,
    )
    return doc


def markdown(doc: dict) -> str:
    out = ["## NBD (`bench_nbd.py`)", ""]
    if doc["missing_tools"]:
        missing = ", ".join(doc["missing_tools"])
        out.append(f"Not measured: missing {missing} (Debian: libnbd-bin, qemu-utils, nbdkit).")
        return "\n".join(out)
    out += [
        f"Method: a {doc['mib']} MiB image of `{doc['workload']}` pages (seed {doc['seed']}, "
        f"{doc['zero_pages']:,} zero pages), the pages of `bench_zram.py`. Servers, each a fresh process "
        "on a Unix socket for every round: **ours** `zsmalloc serve --size S --socket P` (lz4; requests "
        "up to 1 MiB make their device calls on the event loop, longer ones in a pool of 4 threads), and "
        "again with `--inline-max 0` (every call in the pool), and "
        "**nbdkit** `nbdkit -f -U P memory size=S allocator=zstd`. Clients, in this order: `nbdcopy IMAGE "
        "URI`, `nbdcopy URI COPY`, `qemu-img convert` both ways (copies checked by SHA-256), then "
        f"{doc['random_ops']:,} random 4 KiB writes and as many reads through libnbd "
        f"(python3-libnbd), {doc['queue_depth']} in flight. {doc['rounds']} round(s), the servers' order "
        "reversing every round; medians (min-max); ratio = median of per-round nbdkit time / ours. "
        "MB = 10^6 bytes of uncompressed data.",
        "",
    ]
    rows = []
    for key, label in CLIENTS:
        row = doc["throughput"].get(key)
        if row is None:
            rows.append([label, "not measured (no python3-libnbd)", "-", "-", "-", "-"])
            continue
        cells = [f"{row[s]['mb_per_s']:,.1f} ({row[s]['min']:,.1f}-{row[s]['max']:,.1f})" for s in SERVERS]
        rows.append([label, *cells, fmt(row["ratio"], 2), fmt(row["pool_ratio"], 2)])
    head = ["client", "ours MB/s", "ours `--inline-max 0` MB/s", "nbdkit memory zstd MB/s", "ours / nbdkit"]
    out.append(md_table([*head, "`--inline-max 0` / nbdkit"], rows))
    mem = doc["memory"]
    out += ["", "### Server memory (RSS)", ""]
    rows = [
        [label, fmt_mib(mem[s]["rss_empty"]), fmt_mib(mem[s]["rss_after"]), fmt_mib(mem[s]["rss_growth"])]
        for s, label in (
            ("ours", "zsmalloc serve"),
            ("pool", "zsmalloc serve --inline-max 0"),
            ("nbdkit", "nbdkit memory allocator=zstd"),
        )
    ]
    out.append(md_table(["server", "RSS empty MiB", "RSS after the copies MiB", "growth MiB"], rows))
    out += [
        "",
        f"RSS growth, ours / nbdkit: {fmt(doc['rss_ratio'], 2)}. Every copy intact: "
        f"{'yes' if doc['intact'] else 'NO'}.",
    ]
    return "\n".join(out)


def _dispatch(args: list[str]) -> dict:
    kind, mib, round_no, random_ops = args
    if kind != "round":
        raise SystemExit(f"unknown worker {kind!r}")
    return worker_round(int(mib), int(round_no), int(random_ops))


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(__doc__, argv, NAME, run, markdown, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
