"""``Pool.close()`` while other threads are inside calls (issue 10, item 3).

Every call racing a close either completes or raises ``PoolClosedError``;
none raises anything else, and no object outlives the close: the frames the
pool took from its Memory (which the test keeps open, so that a malloc that
slipped past the close could still get frames) are all back once it has
returned and the threads have stopped.
"""

from __future__ import annotations

import random
import threading

import pytest

from zsmalloc import Memory, Pool, PoolClosedError

pytestmark = pytest.mark.usefixtures("each_backend")

THREADS = 3
ROUNDS = 12
WARMUP_OPS = 200  # each thread's operations before the close
JOIN_TIMEOUT = 30.0


def _churn(pool: Pool, seed: int, started: threading.Event, errors: list) -> None:
    rng = random.Random(seed)
    mine: list[int] = []
    ops = 0
    try:
        while True:
            if mine and rng.random() < 0.45:
                h = mine.pop(rng.randrange(len(mine)))
                if rng.random() < 0.5:
                    pool.read(h)
                    with pool.map(h) as view:
                        bytes(view[:8])
                pool.free(h)
            else:
                size = rng.choice([rng.randint(1, 4096), 100, 3000])
                h = pool.malloc(size)
                mine.append(h)
                pool.write(h, rng.randbytes(size))
            ops += 1
            if ops == WARMUP_OPS:
                started.set()
    except PoolClosedError:
        pass
    except BaseException as exc:  # anything else is the bug
        errors.append(exc)
    finally:
        started.set()


def test_calls_racing_close_complete_or_raise_pool_closed() -> None:
    for r in range(ROUNDS):
        memory = Memory(1 << 14)
        pool = Pool(name=f"closing-{r}", memory=memory)
        errors: list[BaseException] = []
        started = [threading.Event() for _ in range(THREADS)]
        threads = [
            threading.Thread(target=_churn, args=(pool, r * THREADS + t, started[t], errors), daemon=True)
            for t in range(THREADS)
        ]
        for t in threads:
            t.start()
        for ev in started:
            assert ev.wait(JOIN_TIMEOUT), "a thread did not get going"
        pool.close()
        for t in threads:
            t.join(JOIN_TIMEOUT)
            assert not t.is_alive(), "a thread is stuck after close()"
        assert not errors, f"round {r}: a call racing close() raised {errors[0]!r}"
        memory.drain_pages()
        assert memory.nr_used == 0, f"round {r}: {memory.nr_used} frames still in use after close()"
        with pytest.raises(PoolClosedError):
            pool.malloc(10)
        memory.close()
