"""Threaded stress: mutators, migration, evacuation and both compactions on one pool at once.

Each run is ``zsmalloc.stress.run_stress``: mutator threads malloc, write, read
and verify (each owns its handles and knows their bytes), map, and free;
meanwhile a migrator moves random in-use pages in small batches, an
evacuator empties small pfn ranges, and a compactor runs ``pool.compact()``
(the pool's own grouping), the shrinker and ``memory.compact()``.  At the end: no
exception in any thread, no thread stuck (every join is bounded: a deadlock
fails the test, it does not hang it), every object intact, ``check()`` clean,
and no frame left in use once everything is freed.

CI runs the short form: 3 s per protocol.  The long form multiplies that::

    ZSMALLOC_STRESS_SCALE=20 .venv/bin/python -m pytest tests/test_stress.py -m stress -q -p no:cacheprovider

(``ZSMALLOC_STRESS_SEED`` picks another seed; the threads' choices follow it,
their interleaving does not.)
"""

from __future__ import annotations

import os
import threading

import pytest

import zsmalloc
from zsmalloc.pool.migrate import MainlineMovableOps
from zsmalloc.pool.zsmalloc import location_to_obj
from zsmalloc.stress import run_stress

SCALE = float(os.environ.get("ZSMALLOC_STRESS_SCALE", "1"))
SEED = int(os.environ.get("ZSMALLOC_STRESS_SEED", "1"))
SECONDS = 3.0 * SCALE

pytestmark = pytest.mark.stress


@pytest.mark.parametrize("protocol", ["mainline", "2016"])
def test_stress(protocol):
    report = run_stress(seconds=SECONDS, threads=4, protocol=protocol, seed=SEED, join_timeout=60.0)
    print(report.summary())
    assert not report.alive, f"threads still running after the join timeout (deadlock?):\n{report.summary()}"
    assert not report.errors, report.summary()
    assert not report.corrupt, report.summary()
    assert report.check_error is None, report.summary()
    assert report.leaked_frames == 0, report.summary()
    assert report.ok
    ops = report.ops
    # every kind of work happened, and pages did move under the mutators
    for key in ("malloc", "free", "verify", "map", "pool_compact", "memory_compact", "evacuate"):
        assert ops[key] > 0, (key, report.summary())
    assert ops["pages_moved"] > 50 and ops["pages_evacuated"] > 0, report.summary()
    assert report.vmstat.get("pgmigrate_success", 0) > 50


@pytest.mark.skipif(zsmalloc.backend != "model", reason="a mutant of the model's Python callbacks")
def test_stress_notices_a_migration_that_loses_data(monkeypatch):
    """The harness can fail: a migrate callback that re-points the handles without copying the
    page shows up as corrupted objects (or a failed check)."""

    def move_without_copy(self, cls, zspage, dst, src):
        pool = self.pool
        for handle, idx in pool.objs_in_page(cls, zspage, src):
            pool.record_obj(handle, location_to_obj(dst, idx))
        pool.replace_sub_page(cls, zspage, dst, src)
        pool.memory.get_page(dst)

    monkeypatch.setattr(MainlineMovableOps, "move_page", move_without_copy)
    report = run_stress(seconds=1.0, threads=2, protocol="mainline", seed=3, join_timeout=3.0)
    print(report.summary())
    assert not report.ok
    # the lost bytes are seen: as objects that read back wrong, or as the errors and the
    # broken free lists they lead to (the run stops at the first error)
    assert report.corrupt or report.errors or report.check_error, report.summary()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seconds": -1.0, "threads": -3}, "seconds must be positive"),
        ({"seconds": 0.0}, "seconds must be positive"),
        ({"seconds": float("nan")}, "seconds must be positive"),
        ({"seconds": float("inf")}, "seconds must be positive"),
        ({"seconds": 1.0, "threads": 0}, "threads must be within 1..256"),
        ({"seconds": 1.0, "threads": -3}, "threads must be within 1..256"),
    ],
)
def test_a_run_that_would_do_nothing_or_never_end_is_refused(kwargs, message):
    """Issue 10, item 12: refused before any thread starts or any pool is made."""
    before = threading.active_count()
    with pytest.raises(ValueError, match=message):
        run_stress(**kwargs)
    assert threading.active_count() == before
