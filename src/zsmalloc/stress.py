"""A threaded stress run of one pool under page migration and compaction.

``run_stress`` puts every moving part of the model to work at once on one
pool, for a bounded time, and reports what happened::

    mutators (``threads`` of them)   malloc / write / read-and-verify / map / free;
                                     each owns its handles and knows their bytes
    migrator                         move_pages on a few random in-use pages
    evacuator                        evacuate a small random pfn range
    compactor                        pool.compact(), memory.compact()
    the pool's own worker            deferred frees kicked by frees that found a
                                     page locked by the VM

At the end (if every thread stopped) the pool is checked, every object is
read back, everything is freed, and the frames still in use are counted: a
clean run has no error, no corrupted object, a clean ``check()`` and no frame
left.  Every join is bounded, so a deadlock shows up as ``alive`` threads in
the report, never as a hang.

It is what ``tests/test_stress.py`` runs (for ``ZSMALLOC_STRESS_SCALE`` x 3 s per
protocol) and what a ``zsmalloc stress`` command can call::

    report = run_stress(seconds=60, threads=4, protocol="2016", seed=7)
    print(report.summary())
    sys.exit(0 if report.ok else 1)

A leaf above ``zsmalloc.pool``: nothing imports it.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field, fields

import zsmalloc
from zsmalloc.errors import InvalidHandleError
from zsmalloc.mm import MigrateMode

#: sizes drawn besides uniform ones: class boundaries, spanning objects, huge ones
_EDGE_SIZES = (1, 24, 25, 200, 1560, 2000, 3624, 3625, 4096)
_MAX_OWNED = 250  # objects per mutator before it frees half of them
#: the most mutator threads one run takes
MAX_MUTATORS = 256


@dataclass
class StressReport:
    """What one ``run_stress`` did and found."""

    protocol: str
    seconds: float
    threads: int
    seed: int
    elapsed: float = 0.0
    #: operation counts, summed over all threads ("malloc", "verify", "migrate_pages", ...)
    ops: Counter = field(default_factory=Counter)
    #: exceptions raised in any thread, with their tracebacks
    errors: list[str] = field(default_factory=list)
    #: objects whose bytes did not read back as written
    corrupt: list[str] = field(default_factory=list)
    #: threads still running after the join timeout: a deadlock (or a livelock)
    alive: list[str] = field(default_factory=list)
    #: the final ``check()`` failure, if any
    check_error: str | None = None
    #: frames still in use after every object was freed (None: not measured)
    leaked_frames: int | None = None
    #: the pool's and the memory's counters at the end
    pool_stats: dict = field(default_factory=dict)
    vmstat: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The report as plain JSON-ready data (``dataclasses.asdict`` would rebuild the ops
        Counter from its (name, count) pairs, counting the pairs)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["ops"] = dict(self.ops)
        d["ok"] = self.ok
        return d

    @property
    def ok(self) -> bool:
        return (
            not self.errors
            and not self.corrupt
            and not self.alive
            and self.check_error is None
            and self.leaked_frames == 0
        )

    def summary(self) -> str:
        lines = [
            f"stress: protocol {self.protocol}, {self.threads} mutators, seed {self.seed}, "
            f"{self.elapsed:.1f} s: {'OK' if self.ok else 'FAILED'}",
            "  ops: " + ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items())),
            "  vm:  " + ", ".join(f"{k} {v}" for k, v in sorted(self.vmstat.items())),
            f"  pool: pages_compacted {self.pool_stats.get('pages_compacted')}, "
            f"deferred_frees {self.pool_stats.get('deferred_frees')}, "
            f"leaked frames {self.leaked_frames}",
        ]
        for title, items in (("errors", self.errors), ("corrupt", self.corrupt), ("alive", self.alive)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend("    " + line for item in items[:5] for line in str(item).splitlines())
        if self.check_error:
            lines.append(f"  check: {self.check_error}")
        return "\n".join(lines)


class _Run:
    def __init__(
        self, pool: zsmalloc.Pool, seed: int, stop: threading.Event, vm_compact: bool = True
    ) -> None:
        self.pool = pool
        self.vm_compact = vm_compact
        self.mem: zsmalloc.Memory = pool.memory
        self.seed = seed
        self.stop = stop
        self.lock = threading.Lock()
        self.ops: Counter = Counter()
        self.errors: list[str] = []
        self.corrupt: list[str] = []
        self.owned: list[dict[int, bytes]] = []

    def count(self, local: Counter) -> None:
        with self.lock:
            self.ops.update(local)

    def guard(self, name: str, body) -> None:
        local: Counter = Counter()
        try:
            body(local)
        except BaseException:
            with self.lock:
                self.errors.append(f"{name}: {traceback.format_exc()}")
            self.stop.set()
        finally:
            self.count(local)

    # ------------------------------------------------------------------

    def mutator(self, k: int, owned: dict[int, bytes], local: Counter) -> None:
        pool = self.pool
        rng = random.Random(self.seed * 1000 + k)
        freed: list[int] = []
        while not self.stop.is_set():
            r = rng.random()
            if r < 0.35 or not owned:
                size = rng.choice(_EDGE_SIZES) if rng.random() < 0.3 else rng.randint(1, 4096)
                h = pool.malloc(size)
                data = rng.randbytes(size)
                pool.write(h, data)
                owned[h] = data
                local["malloc"] += 1
            elif r < 0.6:
                h = rng.choice(list(owned))
                pool.free(h)
                del owned[h]
                freed.append(h)
                local["free"] += 1
            elif r < 0.85:
                h = rng.choice(list(owned))
                data = owned[h]
                got = pool.read(h)
                if got != data:
                    self.bad(f"mutator {k}: read of {h:#x} ({len(data)} bytes) differs")
                off = rng.randrange(len(data))
                buf = bytearray(rng.randint(0, len(data) - off))
                pool.read_into(h, buf, off)
                if bytes(buf) != data[off : off + len(buf)]:
                    self.bad(f"mutator {k}: read_into of {h:#x} at {off} differs")
                local["verify"] += 1
            elif r < 0.95:
                h = rng.choice(list(owned))
                data = owned[h]
                with pool.map(h) as view:
                    if bytes(view) != data:
                        self.bad(f"mutator {k}: map of {h:#x} differs")
                    time.sleep(rng.choice((0, 0, 0.0005)))  # hold it a little: migration backs off
                    if bytes(view) != data:
                        self.bad(f"mutator {k}: map of {h:#x} changed while mapped")
                off = rng.randrange(len(data))
                patch = rng.randbytes(rng.randint(0, len(data) - off))
                pool.write(h, patch, off)
                owned[h] = data[:off] + patch + data[off + len(patch) :]
                local["map"] += 1
            elif freed:
                h = rng.choice(freed)
                try:
                    pool.read(h)
                except InvalidHandleError:
                    local["stale_refused"] += 1
                else:
                    self.bad(f"mutator {k}: freed handle {h:#x} was accepted")
            if len(owned) > _MAX_OWNED:
                for h in rng.sample(list(owned), _MAX_OWNED // 2):
                    pool.free(h)
                    del owned[h]
                    freed.append(h)
                    local["free"] += 1
            if len(freed) > 1000:
                del freed[:500]

    def bad(self, msg: str) -> None:
        with self.lock:
            self.corrupt.append(msg)

    def migrator(self, local: Counter) -> None:
        mem = self.mem
        rng = random.Random(self.seed * 1000 + 900)
        while not self.stop.is_set():
            pfns = mem.movable_pfns()
            if not pfns:
                time.sleep(0.001)
                continue
            batch = rng.sample(pfns, min(len(pfns), rng.randint(1, 6)))
            mode = rng.choice((MigrateMode.SYNC, MigrateMode.ASYNC))
            target = None
            if rng.random() < 0.2:
                lo = rng.randrange(max(1, mem.hwm))
                target = (lo, lo + 64)
            res = mem.move_pages(batch, mode, target=target, passes=3)
            local["migrate_pages"] += 1
            local["pages_moved"] += len(res.moved)
            local["migrate_retried"] += res.retried
            local["migrate_failed"] += res.failed

    def evacuator(self, local: Counter) -> None:
        mem = self.mem
        rng = random.Random(self.seed * 1000 + 901)
        while not self.stop.is_set():
            if mem.hwm < 16:
                time.sleep(0.001)
                continue
            lo = rng.randrange(mem.hwm)
            res = mem.evacuate(lo, lo + rng.randint(1, 16))
            local["evacuate"] += 1
            local["evacuate_incomplete"] += not res.complete
            local["pages_evacuated"] += len(res.moved)
            self.stop.wait(0.005)

    def compactor(self, local: Counter) -> None:
        pool, mem = self.pool, self.mem
        rng = random.Random(self.seed * 1000 + 902)
        while not self.stop.is_set():
            r = rng.random()
            if r < 0.45:
                local["pool_compact_pages"] += pool.compact()
                local["pool_compact"] += 1
            elif r < 0.6 or not self.vm_compact:
                local["shrinker_scan"] += 1
                pool.shrinker_scan()
            else:
                res = mem.compact(rng.choice((MigrateMode.SYNC, MigrateMode.ASYNC)))
                local["memory_compact"] += 1
                local["memory_compact_released"] += res.released
            self.stop.wait(0.02)


def run_stress(
    seconds: float = 3.0,
    threads: int = 4,
    protocol: str = "mainline",
    seed: int = 0,
    *,
    join_timeout: float = 60.0,
    switch_interval: float | None = 1e-4,
    chain_size: int = 8,
    vm_compact: bool = True,
) -> StressReport:
    """Run mutators, a migrator, an evacuator and a compactor on one pool for ``seconds``.

    ``threads`` is the number of mutator threads; ``protocol`` the pool's
    migration protocol ("mainline" or "2016"); ``seed`` makes each thread's
    choices reproducible (not the interleaving).  ``join_timeout`` bounds the
    wait for the threads after the time is up.  ``switch_interval``, if set,
    is the interpreter's thread switch interval during the run (shorter: more
    interleavings; the old value is restored).  ``vm_compact=False`` leaves
    ``Memory.compact()`` out of the compactor's choices.

    Raises ``ValueError`` before starting anything when ``seconds`` is not a
    positive finite number a thread can wait for, or ``threads`` is not
    within 1..MAX_MUTATORS.
    """
    if not 0 < seconds <= threading.TIMEOUT_MAX:  # (nan fails this too)
        raise ValueError(f"seconds must be positive and at most {threading.TIMEOUT_MAX:g}, not {seconds}")
    if not 1 <= threads <= MAX_MUTATORS:
        raise ValueError(f"threads must be within 1..{MAX_MUTATORS}, not {threads}")
    report = StressReport(protocol=protocol, seconds=seconds, threads=threads, seed=seed)
    pool = zsmalloc.Pool(name=f"stress-{protocol}-{seed}", chain_size=chain_size, migration=protocol)
    stop = threading.Event()
    run = _Run(pool, seed, stop, vm_compact)
    run.owned = [{} for _ in range(threads)]
    workers = [
        threading.Thread(
            target=run.guard,
            args=(f"mutator-{k}", lambda local, k=k: run.mutator(k, run.owned[k], local)),
            name=f"stress-mutator-{k}",
            daemon=True,
        )
        for k in range(threads)
    ]
    for name, body in (
        ("migrator", run.migrator),
        ("evacuator", run.evacuator),
        ("compactor", run.compactor),
    ):
        workers.append(
            threading.Thread(target=run.guard, args=(name, body), name=f"stress-{name}", daemon=True)
        )
    old_interval = sys.getswitchinterval()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    t0 = time.monotonic()
    try:
        for t in workers:
            t.start()
        stop.wait(seconds)
        stop.set()
        deadline = time.monotonic() + join_timeout
        for t in workers:
            t.join(max(0.0, deadline - time.monotonic()))
    finally:
        sys.setswitchinterval(old_interval)
    report.elapsed = time.monotonic() - t0
    report.alive = [t.name for t in workers if t.is_alive()]
    report.ops = run.ops
    report.errors = run.errors
    report.corrupt = run.corrupt
    report.vmstat = dict(pool.memory.vmstat.items())
    if report.alive:  # something is stuck: looking further could hang too
        report.pool_stats = {"pages_compacted": pool.pages_compacted}
        return report
    # the final look takes locks a broken run may have left held: bounded too
    finisher = threading.Thread(
        target=run.guard,
        args=("finish", lambda local: _finish(pool, run, report, join_timeout / 2)),
        name="stress-finish",
        daemon=True,
    )
    finisher.start()
    finisher.join(join_timeout)
    if finisher.is_alive():
        report.alive.append(finisher.name)
    report.errors = run.errors
    return report


def _finish(pool: zsmalloc.Pool, run: _Run, report: StressReport, timeout: float) -> None:
    """Check, read everything back, free everything, count the frames left."""
    try:
        pool.check()
    except Exception as exc:
        report.check_error = f"after the run: {exc}"
    for k, owned in enumerate(run.owned):
        for h, data in owned.items():
            if pool.read(h) != data:
                report.corrupt.append(f"mutator {k}: {h:#x} differs at the end")
    for owned in run.owned:
        for h in owned:
            pool.free(h)
        owned.clear()
    deadline = time.monotonic() + timeout
    while True:  # deferred frees: run them here, and let a running worker finish
        pool.flush_deferred()
        worker_done = not any(t.name == f"zs-work-{pool.name}" for t in threading.enumerate())
        if (pool.total_pages == 0 and worker_done) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if report.check_error is None:
        try:
            pool.check()
        except Exception as exc:
            report.check_error = f"after freeing everything: {exc}"
    report.leaked_frames = pool.memory.nr_used
    s = pool.stats()
    report.pool_stats = {
        "pages_compacted": s.pages_compacted,
        "objs_compacted": s.objs_compacted,
        "compactions": s.compactions,
        "deferred_frees": s.deferred_frees,
        "pages_left": pool.total_pages,
    }
    report.vmstat = dict(pool.memory.vmstat.items())
    pool.close()
