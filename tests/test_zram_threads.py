"""Threads on one zram device: slot locking, and I/O while the VM migrates pool pages and the pool compacts.

Deterministic tests first: a codec that blocks on an event inside
``compress`` holds a writer at a known point, so that what another thread
can and cannot do meanwhile is checked exactly.  Then a bounded stress run:
workers on interleaved pages (sharing slot-lock stripes), a thread moving
random pool pages (``memory.move_pages``), evacuating ranges and compacting,
and a thread running mark_idle / writeback / recompress, with every page
verified against a model during and after the run.
"""

from __future__ import annotations

import random
import threading
import time
import traceback

import lz4.block
import pytest

from zram_pages import PAGE, any_page, text_page
from zsmalloc.zram import ZramDevice, register_codec
from zsmalloc.zram import device as zram_model
from zsmalloc.zram.codecs import _REGISTRY, Codec

#: every test runs on the model's device and on the engine's (conftest.py binds ZramDevice)
pytestmark = pytest.mark.usefixtures("each_backend")

JOIN_TIMEOUT = 60.0


class Gate:
    """A codec whose compress() blocks in the thread named ``held`` until released."""

    def __init__(self) -> None:
        self.held = ""
        self.entered = threading.Event()
        self.release = threading.Event()

    def codec(self, level, dictionary) -> Codec:
        def compress(data):
            if threading.current_thread().name == self.held:
                self.entered.set()
                assert self.release.wait(JOIN_TIMEOUT)
            return lz4.block.compress(data, store_size=False)

        return Codec("gate", compress, lambda d: lz4.block.decompress(d, uncompressed_size=PAGE), level)


@pytest.fixture
def gate():
    g = Gate()
    register_codec("test-gate", g.codec)
    yield g
    g.release.set()
    del _REGISTRY["test-gate"]


def _run(name: str, fn, errors: list) -> threading.Thread:
    def body():
        try:
            fn()
        except BaseException:
            errors.append(f"{name}: {traceback.format_exc()}")

    t = threading.Thread(target=body, name=name, daemon=True)
    t.start()
    return t


@pytest.mark.model_only  # a gate codec written in Python (the engine's: engine/core, zram_drv.rs)
def test_partial_writes_to_one_page_do_not_lose_each_other(gate):
    """A read-modify-write holds the slot lock from its read to its store."""
    errors: list[str] = []
    with ZramDevice(4 * PAGE, algorithm="test-gate") as dev:
        base = text_page(random.Random(1))
        dev.write_page(1, base)
        gate.held = "A"
        a = _run("A", lambda: dev.pwrite(PAGE + 10, b"A" * 10), errors)
        assert gate.entered.wait(JOIN_TIMEOUT)  # A has read the page and is compressing it
        b_done = threading.Event()
        b = _run("B", lambda: (dev.pwrite(PAGE + 2000, b"B" * 10), b_done.set()), errors)
        assert not b_done.wait(0.3)  # B waits for A's slot lock: it must not read the old page
        gate.release.set()
        for t in (a, b):
            t.join(JOIN_TIMEOUT)
            assert not t.is_alive()
        assert not errors, errors
        expect = bytearray(base)
        expect[10:20] = b"A" * 10
        expect[2000:2010] = b"B" * 10
        assert dev.read_page(1) == expect
        dev.check()


@pytest.mark.model_only  # a gate codec written in Python (the engine's: engine/core, zram_drv.rs)
def test_readers_do_not_wait_for_a_writers_compression(gate):
    """write_page compresses before taking the slot lock: readers meanwhile see the old page."""
    errors: list[str] = []
    rng = random.Random(2)
    with ZramDevice(4 * PAGE, algorithm="test-gate") as dev:
        old, new = text_page(rng), text_page(rng)
        dev.write_page(0, old)
        gate.held = "W"
        w = _run("W", lambda: dev.write_page(0, new), errors)
        assert gate.entered.wait(JOIN_TIMEOUT)
        assert dev.read_page(0) == old  # not blocked, not torn
        assert dev.pread(10, 100) == old[10:110]
        gate.release.set()
        w.join(JOIN_TIMEOUT)
        assert not w.is_alive() and not errors, errors
        assert dev.read_page(0) == new
        dev.check()


@pytest.mark.model_only  # a gate codec written in Python (the engine's: engine/core, zram_drv.rs)
def test_the_lost_update_check_catches_a_racy_read_modify_write(gate, monkeypatch):
    """The same scenario with the slot lock dropped between read and store loses B's bytes."""
    errors: list[str] = []
    with ZramDevice(4 * PAGE, algorithm="test-gate") as dev:
        base = text_page(random.Random(1))
        dev.write_page(1, base)

        def racy_partial(index, offset, chunk, zeroing=False):  # read, then write, unlocked
            page = bytearray(dev.read_page(index))
            page[offset : offset + len(chunk)] = chunk
            dev.write_page(index, bytes(page))

        monkeypatch.setattr(dev, "_write_partial", racy_partial)
        gate.held = "A"
        a = _run("A", lambda: dev.pwrite(PAGE + 10, b"A" * 10), errors)
        assert gate.entered.wait(JOIN_TIMEOUT)
        b = _run("B", lambda: dev.pwrite(PAGE + 2000, b"B" * 10), errors)
        b.join(JOIN_TIMEOUT)
        assert not b.is_alive()  # B did not wait
        gate.release.set()
        a.join(JOIN_TIMEOUT)
        assert not errors, errors
        got = dev.read_page(1)
        assert got[10:20] == b"A" * 10
        assert got[2000:2010] != b"B" * 10  # lost: exactly what the first test rules out


# ----------------------------------------------------------------------
# the stress run

NPAGES = 768
WORKERS = 3
DURATION = 1.5


def test_io_with_migration_compaction_writeback_and_recompression(tmp_path):
    errors: list[str] = []
    stop = threading.Event()
    # the model's slot locks are striped: few stripes, so that workers share them
    stripes = {"slot_lock_stripes": 16} if ZramDevice is zram_model.ZramDevice else {}
    dev = ZramDevice(
        NPAGES * PAGE, recompress_algorithm="zstd", backing_file=tmp_path / "backing.img", **stripes
    )
    mem = dev.pool.memory
    models: list[dict[int, bytes]] = [{} for _ in range(WORKERS)]
    counts = {"io": 0, "verify": 0, "moved": 0, "compactions": 0, "evacuations": 0, "pp": 0}

    def worker(t: int) -> None:
        rng = random.Random(100 + t)
        model = models[t]
        mine = list(range(t, NPAGES, WORKERS))  # interleaved: neighbours belong to other workers
        while not stop.is_set():
            i = rng.choice(mine)
            r = rng.random()
            if r < 0.45:
                page = any_page(rng)
                dev.write_page(i, page)
                model[i] = page
            elif r < 0.6:
                off = rng.randrange(PAGE)
                data = rng.randbytes(rng.randint(1, PAGE - off))
                dev.pwrite(i * PAGE + off, data)
                old = model.get(i, bytes(PAGE))
                model[i] = old[:off] + data + old[off + len(data) :]
            elif r < 0.67:
                dev.discard(i)
                model.pop(i, None)
            else:
                got = dev.read_page(i)
                assert got == model.get(i, bytes(PAGE)), f"worker {t}: page {i} differs"
                counts["verify"] += 1
            counts["io"] += 1

    def migrator() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            r = rng.random()
            if r < 0.7:
                used = mem.used_pfns()
                if used:
                    res = mem.move_pages(rng.sample(used, min(len(used), 24)))
                    counts["moved"] += len(res.moved)
            elif r < 0.85:
                dev.compact()
                counts["compactions"] += 1
            else:
                hi = max(mem.hwm, 1)
                lo = rng.randrange(hi)
                mem.evacuate(lo, min(hi, lo + 16))
                counts["evacuations"] += 1

    def post_processing() -> None:
        while not stop.is_set():
            dev.mark_idle()
            time.sleep(0.05)  # workers touch some pages meanwhile
            dev.writeback("idle", max_pages=30)
            dev.recompress(only_idle=True, max_pages=30)
            dev.recompress(only_huge=True, max_pages=10)
            counts["pp"] += 1

    threads = [_run(f"worker-{t}", lambda t=t: worker(t), errors) for t in range(WORKERS)]
    threads.append(_run("migrator", migrator, errors))
    threads.append(_run("post-processing", post_processing, errors))
    time.sleep(DURATION)
    stop.set()
    for t in threads:
        t.join(JOIN_TIMEOUT)
        assert not t.is_alive(), f"{t.name} did not stop: deadlock?"
    try:
        assert not errors, "\n".join(errors)
        # the run exercised what it claims to
        assert counts["verify"] > 100, counts
        assert counts["moved"] > 0 and mem.vmstat["pgmigrate_success"] > 0, counts
        assert counts["compactions"] > 0 and counts["pp"] > 0, counts
        assert dev.bd_stat().bd_writes > 0 and dev.recomp_stat().attempted > 0
        # every page, as its owner last wrote it
        for model in models:
            for i, page in model.items():
                assert dev.read_page(i) == page, f"page {i} differs after the run"
        owned = set().union(*models)
        for i in range(NPAGES):
            if i not in owned:
                assert dev.read_page(i) == bytes(PAGE)
        dev.check()
        dev.pool.check()
    finally:
        dev.close()
