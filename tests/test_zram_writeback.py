"""Idle tracking and writeback to a backing file: which pages go, what the file holds, reads served back."""

from __future__ import annotations

import os
import random

import pytest

from zram_pages import PAGE, nibble_page, random_page, same_page, sparse_page, text_page
from zsmalloc import CorruptionError
from zsmalloc.zram import BackingFile, BdStat, NoBackingDeviceError, ZramDevice, ZramIOError

#: every test runs on the model's device and on the engine's (conftest.py binds ZramDevice)
pytestmark = pytest.mark.usefixtures("each_backend")


def _fill(dev: ZramDevice, rng: random.Random, n: int) -> dict[int, bytes]:
    makers = [text_page, sparse_page, random_page, nibble_page, lambda r: same_page(r.getrandbits(64))]
    pages = {}
    for i in range(n):
        pages[i] = makers[i % len(makers)](rng)
        dev.write_page(i, pages[i])
    return pages


def _block_of(path: str, block: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(block * PAGE)
        return f.read(PAGE)


def test_mark_idle_and_access(tmp_path):
    rng = random.Random(1)
    with ZramDevice(64 * PAGE) as dev:
        pages = _fill(dev, rng, 40)
        stored = sum(1 for i in range(40) if not dev.slot_info(i).same)
        assert dev.mark_idle() == stored  # same-filled pages are never idle
        assert not any(dev.slot_info(i).idle for i in range(40, 64))  # empty slots neither
        assert not any(dev.slot_info(i).idle for i in range(40) if dev.slot_info(i).same)
        assert dev.read_page(0) == pages[0]
        assert not dev.slot_info(0).idle  # read: accessed
        dev.write_page(1, text_page(rng))
        assert not dev.slot_info(1).idle  # written: new contents
        dev.pwrite(2 * PAGE + 10, b"xyz")
        assert not dev.slot_info(2).idle
        assert dev.slot_info(3).idle
        dev.check()


def test_writeback_idle_pages(tmp_path):
    rng = random.Random(2)
    path = str(tmp_path / "backing.img")
    with ZramDevice(64 * PAGE, backing_file=path) as dev:
        assert os.path.getsize(path) == 64 * PAGE
        pages = _fill(dev, rng, 40)
        dev.mark_idle()
        touched = {0, 1, 2, 3, 7}
        for i in touched:
            assert dev.read_page(i) == pages[i]
        candidates = [i for i in range(40) if dev.slot_info(i).idle]
        assert candidates and not set(candidates) & touched
        before = dev.mm_stat()
        pool_objects = len(dev.pool)

        written = dev.writeback("idle")
        assert written == len(candidates)
        assert dev.bd_stat() == BdStat(bd_count=written, bd_reads=0, bd_writes=written)
        after = dev.mm_stat()
        assert after.orig_data_size == before.orig_data_size  # still stored, elsewhere
        assert len(dev.pool) == pool_objects - written
        assert after.compr_data_size < before.compr_data_size
        assert after.huge_pages == sum(1 for i in range(40) if dev.slot_info(i).huge)
        for i in candidates:
            info = dev.slot_info(i)
            assert info.written_back and not info.idle and info.size == 0
            assert _block_of(path, info.handle) == pages[i]  # the file holds the page, uncompressed
        # reads are served from the file
        for i, page in pages.items():
            assert dev.read_page(i) == page
        assert dev.bd_stat().bd_reads == written
        assert dev.pread(candidates[0] * PAGE + 100, 50) == pages[candidates[0]][100:150]
        dev.check()

        # a rewrite or a discard gives the block back
        dev.write_page(candidates[0], same_page(0))
        dev.discard(candidates[1])
        assert dev.bd_stat().bd_count == written - 2
        # a partial write reads the block back, patches and stores in memory again
        i = candidates[2]
        dev.pwrite(i * PAGE + 5, b"hello")
        expect = pages[i][:5] + b"hello" + pages[i][10:]
        assert dev.read_page(i) == expect and not dev.slot_info(i).written_back
        assert dev.bd_stat().bd_count == written - 3
        dev.check()

        # a second writeback finds nothing idle
        assert dev.writeback("idle") == 0


@pytest.mark.parametrize("mode", ["huge", "huge_idle", "incompressible", "all"])
def test_writeback_modes(tmp_path, mode):
    rng = random.Random(3)
    with ZramDevice(64 * PAGE, backing_file=tmp_path / "b.img", recompress_algorithm="zstd") as dev:
        pages = _fill(dev, rng, 40)
        dev.mark_idle()
        dev.read_page(2)  # a huge page, accessed: not idle
        if mode == "incompressible":
            dev.recompress(only_huge=True)  # random pages fail with zstd too and get marked
        want = {
            i
            for i in range(40)
            if (info := dev.slot_info(i)).allocated
            and not info.same
            and {
                "huge": info.huge,
                "huge_idle": info.huge and info.idle,
                "incompressible": info.incompressible,
                "all": True,
            }[mode]
        }
        assert want
        assert dev.writeback(mode) == len(want)
        assert {i for i in range(40) if dev.slot_info(i).written_back} == want
        assert all(dev.read_page(i) == page for i, page in pages.items())
        assert dev.mm_stat().huge_pages == sum(1 for i in range(40) if dev.slot_info(i).huge)
        dev.check()


def test_writeback_limits(tmp_path):
    rng = random.Random(4)
    with ZramDevice(32 * PAGE, backing_file=tmp_path / "small.img", backing_blocks=3) as dev:
        pages = {i: text_page(rng) for i in range(10)}
        for i, page in pages.items():
            dev.write_page(i, page)
        assert dev.writeback("all", max_pages=2) == 2
        assert dev.writeback("all", indices=[9, 8]) == 1  # the file has one block left
        assert dev.writeback("all") == 0  # full: stops
        assert [i for i in range(10) if dev.slot_info(i).written_back] == [0, 1, 9]
        assert dev.bd_stat().bd_count == 3
        assert all(dev.read_page(i) == page for i, page in pages.items())
        dev.discard(0)
        assert dev.writeback("all") == 1  # the freed block is used again
        assert dev.slot_info(2).written_back
        with pytest.raises(ValueError):
            dev.writeback("cold")
        dev.check()
    with ZramDevice(4 * PAGE) as dev, pytest.raises(NoBackingDeviceError):
        dev.writeback()


def test_backing_file_read_error_is_a_failed_read(tmp_path):
    path = tmp_path / "b.img"
    rng = random.Random(5)
    with ZramDevice(8 * PAGE, backing_file=path) as dev:
        page = text_page(rng)
        dev.write_page(0, page)
        assert dev.writeback("all") == 1
        os.truncate(path, 0)  # the file loses its blocks behind the device's back
        with pytest.raises(ZramIOError, match="short read"):
            dev.read_page(0)
        assert dev.io_stat().failed_reads == 1
        assert dev.bd_stat().bd_reads == 0


def test_backing_bitmap():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        bf = BackingFile(os.path.join(d, "f"), 11)
        got = [bf.alloc_block() for _ in range(11)]
        assert got == list(range(11))
        assert bf.alloc_block() == -1 and bf.nr_used == 11
        bf.free_block(4)
        bf.free_block(9)
        assert bf.alloc_block() == 4 and bf.alloc_block() == 9 and bf.alloc_block() == -1
        with pytest.raises(ValueError):
            bf.free_block(11)
        bf.free_block(0)
        with pytest.raises(ValueError):
            bf.free_block(0)  # twice
        bf.clear()
        assert bf.nr_used == 0 and [bf.alloc_block() for _ in range(11)] == list(range(11))
        bf.write_block(3, b"\x07" * PAGE)
        assert bf.read_block(3) == b"\x07" * PAGE
        bf.close()


def test_reset_clears_the_backing_file(tmp_path):
    rng = random.Random(6)
    with ZramDevice(16 * PAGE, backing_file=tmp_path / "b.img") as dev:
        for i in range(8):
            dev.write_page(i, text_page(rng))
        dev.writeback("all")
        dev.reset()
        assert dev.bd_stat() == BdStat(0, 0, 0)
        assert dev.read_page(0) == bytes(PAGE)
        dev.check()


@pytest.mark.model_only  # the model's bitmap; the engine's check has its own (engine/core, zram_drv.rs)
def test_check_catches_a_lost_backing_block(tmp_path):
    rng = random.Random(7)
    with ZramDevice(16 * PAGE, backing_file=tmp_path / "b.img") as dev:
        for i in range(4):
            dev.write_page(i, text_page(rng))
        dev.writeback("all")
        dev.check()
        dev._backing.free_block(dev.slot_info(1).handle)  # the bitmap forgets a block in use
        with pytest.raises(CorruptionError):
            dev.check()
