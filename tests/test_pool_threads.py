"""Threads on one pool: malloc / write / read-verify / free at once, data intact, no deadlock.

Each thread owns its handles and keeps the bytes it wrote; ``check()`` is not
safe while a malloc is building a zspage (see its docstring), so it runs only
once every thread has stopped.
"""

from __future__ import annotations

import hashlib
import random
import sys
import threading
import time

from zsmalloc import InvalidHandleError, Pool

THREADS = 4
DURATION = 1.5  # seconds of work per thread
JOIN_TIMEOUT = 60.0


def _worker(pool: Pool, seed: int, stop: threading.Event, owned: dict, errors: list, stats: dict) -> None:
    rng = random.Random(seed)
    counts = {"malloc": 0, "free": 0, "verify": 0, "map": 0, "stale": 0}
    freed: list[int] = []
    try:
        while not stop.is_set():
            r = rng.random()
            if r < 0.35 or not owned:
                size = rng.choice([rng.randint(1, 4096), 24, 25, 1560, 3624, 3625, 4096])
                h = pool.malloc(size)
                assert h not in owned
                d = rng.randbytes(size)
                pool.write(h, d)
                owned[h] = (d, hashlib.sha1(d).digest())
                counts["malloc"] += 1
            elif r < 0.6:
                h = rng.choice(list(owned))
                pool.free(h)
                del owned[h]
                freed.append(h)
                counts["free"] += 1
            elif r < 0.8:
                h = rng.choice(list(owned))
                d, digest = owned[h]
                got = pool.read(h)
                assert hashlib.sha1(got).digest() == digest, f"thread {seed}: handle {h:#x} corrupted"
                off = rng.randrange(len(d))
                buf = bytearray(rng.randint(0, len(d) - off))
                pool.read_into(h, buf, off)
                assert bytes(buf) == d[off : off + len(buf)]
                counts["verify"] += 1
            elif r < 0.9:
                h = rng.choice(list(owned))
                d, _ = owned[h]
                with pool.map(h) as view:
                    assert bytes(view) == d
                # rewrite part of it
                off = rng.randrange(len(d))
                patch = rng.randbytes(rng.randint(0, len(d) - off))
                pool.write(h, patch, off)
                d = d[:off] + patch + d[off + len(patch) :]
                owned[h] = (d, hashlib.sha1(d).digest())
                counts["map"] += 1
            elif freed:
                # a handle this thread freed stays invalid, whatever the others allocate meanwhile
                h = rng.choice(freed)
                try:
                    pool.read(h)
                except InvalidHandleError:
                    counts["stale"] += 1
                else:
                    raise AssertionError(f"freed handle {h:#x} was accepted")
            if len(owned) > 300:
                for h in rng.sample(list(owned), 150):
                    pool.free(h)
                    del owned[h]
                    freed.append(h)
                    counts["free"] += 1
    except BaseException as exc:
        errors.append((seed, exc))
    finally:
        stats[seed] = counts


def test_threads_share_one_pool():
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # switch threads often: more interleavings
    try:
        with Pool(name="threads", chain_size=8) as pool:
            stop = threading.Event()
            owned = [dict() for _ in range(THREADS)]
            errors: list = []
            stats: dict = {}
            threads = [
                threading.Thread(
                    target=_worker, args=(pool, i, stop, owned[i], errors, stats), name=f"w{i}", daemon=True
                )
                for i in range(THREADS)
            ]
            for t in threads:
                t.start()
            time.sleep(DURATION)
            stop.set()
            deadline = time.monotonic() + JOIN_TIMEOUT
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            alive = [t.name for t in threads if t.is_alive()]
            assert not alive, f"threads {alive} did not finish: deadlock?"
            assert not errors, errors
            for i in range(THREADS):
                c = stats[i]
                assert c["malloc"] > 20 and c["free"] > 10 and c["verify"] > 10, c

            pool.check()
            live = {h: d for o in owned for h, (d, _) in o.items()}
            assert len(live) == sum(len(o) for o in owned)  # no handle handed to two threads
            assert len(pool) == len(live)
            for h, d in live.items():
                assert pool.read(h) == d
            assert pool.memory.nr_used == pool.total_pages
            # nothing ever held a page lock, so no free was deferred
            assert pool.stats().deferred_frees == 0
            for h in live:
                pool.free(h)
            assert pool.total_pages == 0 == pool.memory.nr_used
            pool.check()
    finally:
        sys.setswitchinterval(old_interval)
