"""ZramDevice: page and byte I/O, same-filled and huge pages, mm_stat and io_stat, mem_limit, errors.

The expected statistics are computed here from their definitions (the
pages written, compressed again with the lz4 library directly), never read
back from the device's own counters; ``check()`` is tested against a
damaged device so that it is known to catch what it claims to.
"""

from __future__ import annotations

import errno
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zsmalloc
from zram_pages import (
    PAGE,
    any_page,
    is_same_filled,
    nibble_page,
    random_page,
    same_page,
    sparse_page,
    stored_size,
    text_page,
)
from zsmalloc import CorruptionError, Memory, Pool, PoolClosedError, PoolFullError, ZsmallocError
from zsmalloc.debug import snapshot
from zsmalloc.zram import (
    InvalidIOError,
    IoStat,
    MmStat,
    ZramDevice,
    ZramFullError,
    ZramIOError,
)

#: every test runs on the model's device and on the engine's (conftest.py binds ZramDevice, Pool
#: and Memory); a test that reads one device's internals says so (model_only)
pytestmark = pytest.mark.usefixtures("each_backend")


@pytest.fixture
def dev():
    d = ZramDevice(256 * PAGE)
    yield d
    d.close()


def expected_mm(dev: ZramDevice, pages: dict[int, bytes], huge_size: int) -> dict[str, int]:
    """mm_stat's page-content fields from their definitions, for the pages stored now."""
    compr = same = huge = 0
    for page in pages.values():
        if is_same_filled(page):
            same += 1
            continue
        n = stored_size(dev, page)
        if n >= huge_size:
            huge += 1
            n = PAGE
        compr += n
    return {
        "orig_data_size": len(pages) * PAGE,
        "compr_data_size": compr,
        "same_pages": same,
        "huge_pages": huge,
    }


def assert_mm(dev: ZramDevice, pages: dict[int, bytes]) -> MmStat:
    mm = dev.mm_stat()
    exp = expected_mm(dev, pages, dev.pool.huge_class_size)
    got = {k: getattr(mm, k) for k in exp}
    assert got == exp
    assert mm.mem_used_total == dev.pool.total_pages * PAGE
    assert mm.mem_used_max >= mm.mem_used_total
    return mm


# ----------------------------------------------------------------------
# round trips


def test_never_written_pages_read_as_zeros(dev):
    assert dev.read_page(0) == bytes(PAGE)
    assert dev.read_page(255) == bytes(PAGE)
    assert dev.pread(1000, 9000) == bytes(9000)
    buf = bytearray(b"\xff" * PAGE)
    dev.read_page_into(17, buf)
    assert buf == bytes(PAGE)
    assert dev.mm_stat().orig_data_size == 0
    assert dev.pool.total_pages == 0


def test_page_round_trip_of_every_kind(dev):
    rng = random.Random(1)
    pages = {}
    makers = [text_page, random_page, nibble_page, sparse_page, lambda r: same_page(r.getrandbits(64))]
    for i in range(200):
        pages[i] = makers[i % len(makers)](rng)
        dev.write_page(i, pages[i])
    for i, page in pages.items():
        assert dev.read_page(i) == page
        buf = bytearray(PAGE)
        dev.read_page_into(i, buf)
        assert buf == page
        view = memoryview(bytearray(PAGE)).cast("Q")  # any buffer of 4096 bytes
        dev.read_page_into(i, view)
        assert view.tobytes() == page
    assert_mm(dev, pages)
    dev.check()


def test_write_accepts_any_buffer(dev):
    rng = random.Random(2)
    page = text_page(rng)
    dev.write_page(0, bytearray(page))
    dev.write_page(1, memoryview(page))
    dev.write_page(2, memoryview(bytearray(page)).cast("I"))
    for i in range(3):
        assert dev.read_page(i) == page


def test_overwrite_replaces_and_frees_the_old_object(dev):
    rng = random.Random(3)
    pages = {}
    for i in range(50):
        pages[i] = any_page(rng)
        dev.write_page(i, pages[i])
    for _ in range(300):
        i = rng.randrange(50)
        pages[i] = any_page(rng)
        dev.write_page(i, pages[i])
    for i, page in pages.items():
        assert dev.read_page(i) == page
    stored_in_pool = sum(1 for p in pages.values() if not is_same_filled(p))
    assert len(dev.pool) == stored_in_pool  # no object leaked by the overwrites
    assert_mm(dev, pages)
    dev.check()


# ----------------------------------------------------------------------
# same-filled and huge pages


@pytest.mark.parametrize(
    "word", [0, 0x0101010101010101, 0xDEADBEEFCAFEF00D, 0xFF00000000000000, 0xFFFFFFFFFFFFFFFF]
)
def test_same_filled_pages_take_no_pool_memory(dev, word):
    page = same_page(word)
    for i in range(20):
        dev.write_page(i, page)
    assert dev.pool.total_pages == 0
    assert len(dev.pool) == 0
    mm = dev.mm_stat()
    assert (mm.same_pages, mm.orig_data_size, mm.compr_data_size, mm.huge_pages) == (20, 20 * PAGE, 0, 0)
    assert all(dev.read_page(i) == page for i in range(20))
    info = dev.slot_info(3)
    assert info.same and info.allocated and info.handle == word and info.size == 0
    dev.discard(0, 20)
    assert dev.mm_stat().same_pages == 0
    dev.check()


def test_almost_same_filled_pages_are_compressed(dev):
    base = same_page(0x1122334455667788)
    last = bytearray(base)
    last[-1] ^= 0xFF  # differs in the last byte only
    middle = bytearray(base)
    middle[2050] ^= 1  # the first and last words agree; one in the middle does not
    word_shift = bytes(base[1:] + base[:1])  # rotated by one byte: a repeated word again (same-filled)
    pages = {0: bytes(last), 1: bytes(middle), 2: word_shift}
    for i, page in pages.items():
        dev.write_page(i, page)
    for i, page in pages.items():
        assert dev.read_page(i) == page
    # only pages that really are one repeated word count as same-filled
    assert dev.mm_stat().same_pages == sum(is_same_filled(p) for p in pages.values())
    assert not dev.slot_info(0).same and not dev.slot_info(1).same
    assert_mm(dev, pages)


def test_huge_pages_are_stored_whole(dev):
    rng = random.Random(4)
    pages = {i: random_page(rng) for i in range(10)}
    for i, page in pages.items():
        dev.write_page(i, page)
    mm = assert_mm(dev, pages)
    assert mm.huge_pages == 10 == mm.huge_pages_since
    assert mm.compr_data_size == 10 * PAGE
    for i, page in pages.items():
        info = dev.slot_info(i)
        assert info.huge and info.size == PAGE
        assert dev.pool.handle_size(info.handle) == PAGE
        assert dev.pool.read(info.handle, PAGE) == page  # stored as is
        assert dev.read_page(i) == page
    # huge_pages follows the pages stored; huge_pages_since only ever grows
    dev.discard(0, 4)
    dev.write_page(5, text_page(rng))
    mm = dev.mm_stat()
    assert (mm.huge_pages, mm.huge_pages_since) == (5, 10)
    dev.write_page(0, random_page(rng))
    mm = dev.mm_stat()
    assert (mm.huge_pages, mm.huge_pages_since) == (6, 11)
    dev.check()


def test_huge_threshold_is_the_pools_huge_class_size():
    """A compressed size of exactly huge_class_size is huge; one byte less is not."""
    rng = random.Random(5)
    with ZramDevice(64 * PAGE, chain_size=4) as dev:
        limit = dev.pool.huge_class_size
        assert limit == 3257
        found = {}
        # pages with a random head and a zero tail: the compressed size walks through the threshold
        for k in range(3100, 3400):
            page = rng.randbytes(k) + bytes(PAGE - k)
            n = stored_size(dev, page)
            if n in (limit - 1, limit):
                found[n] = page
            if len(found) == 2:
                break
        assert set(found) == {limit - 1, limit}
        dev.write_page(0, found[limit - 1])
        dev.write_page(1, found[limit])
        assert not dev.slot_info(0).huge and dev.slot_info(0).size == limit - 1
        assert dev.slot_info(1).huge and dev.slot_info(1).size == PAGE
        assert dev.read_page(0) == found[limit - 1] and dev.read_page(1) == found[limit]


# ----------------------------------------------------------------------
# mm_stat against its definitions, mem_used_max as a high-water mark


def test_mm_stat_fields_follow_their_definitions():
    rng = random.Random(6)
    with ZramDevice(600 * PAGE) as dev:
        pages: dict[int, bytes] = {}
        peak = 0
        # writes to empty slots and discards: the pool only grows inside a write, so the
        # high-water mark is exactly the largest size seen after a write
        for _ in range(1000):
            free = [i for i in range(600) if i not in pages]
            if (rng.random() < 0.2 and pages) or not free:
                j = rng.choice(list(pages))
                dev.discard(j)
                del pages[j]
            else:
                i = rng.choice(free)
                pages[i] = any_page(rng)
                dev.write_page(i, pages[i])
            peak = max(peak, dev.pool.total_pages)
            assert dev.mm_stat().mem_used_max == peak * PAGE
        # overwrites: the new object is allocated before the old one is freed (as in the
        # kernel), so the mark may exceed what is seen between writes, by one zspage at most
        for _ in range(500):
            i = rng.choice(list(pages))
            pages[i] = any_page(rng)
            before = dev.mm_stat().mem_used_max
            dev.write_page(i, pages[i])
            peak = max(peak, dev.pool.total_pages)
            mm = dev.mm_stat()
            assert peak * PAGE <= mm.mem_used_max <= max(before, (dev.pool.total_pages + 8) * PAGE)
            assert mm.mem_used_max >= before
        peak = dev.mm_stat().mem_used_max // PAGE
        mm = assert_mm(dev, pages)
        assert mm.mem_limit == 0
        assert mm.same_pages > 0 and mm.huge_pages > 0

        # discard most pages: memory use falls, the high-water mark stays
        for j in list(pages)[: len(pages) * 3 // 4]:
            dev.discard(j)
            del pages[j]
        freed = dev.compact()
        after = assert_mm(dev, pages)
        assert after.mem_used_total < mm.mem_used_total
        assert after.mem_used_max == peak * PAGE
        assert after.pages_compacted == dev.pool.pages_compacted == freed > 0
        dev.reset_mem_used_max()
        assert dev.mm_stat().mem_used_max == dev.pool.total_pages * PAGE
        for j, page in pages.items():
            assert dev.read_page(j) == page
        dev.check()


def test_format_mm_stat_is_the_kernels_line():
    stat = MmStat(1, 22, 333, 0, 55555, 6, 7777777, 88888888, 123456789)
    assert stat.format() == (
        "       1       22      333        0    55555        6  7777777 88888888 123456789\n"
    )
    assert IoStat(0, 1, 22, 333).format() == "       0        1       22      333\n"


def test_format_mm_stat_of_a_device(dev):
    rng = random.Random(7)
    for i in range(30):
        dev.write_page(i, any_page(rng))
    text = dev.format_mm_stat()
    assert text.endswith("\n") and text.count("\n") == 1
    assert re.fullmatch(r"( *\d+)( +\d+){8}\n", text)
    fields = text.split()
    assert [int(f) for f in fields] == list(dev.mm_stat().values())
    # every field right-aligned in 8 columns, one space apart
    widths = [len(m.group(0)) for m in re.finditer(r"(?:^| ) *\d+", text.rstrip("\n"))]
    assert widths[0] == 8 and all(w == 9 for w in widths[1:])
    assert dev.mm_stat().to_dict()["orig_data_size"] == 30 * PAGE


# ----------------------------------------------------------------------
# discard, write_zeroes, io_stat


def test_discard_frees_the_slots(dev):
    rng = random.Random(8)
    pages = {i: any_page(rng) for i in range(40)}
    for i, page in pages.items():
        dev.write_page(i, page)
    objects = len(dev.pool)
    dev.discard(10, 10)
    for i in range(10, 20):
        assert dev.read_page(i) == bytes(PAGE)
        assert not dev.slot_info(i).allocated
        del pages[i]
    in_pool = sum(1 for p in pages.values() if not is_same_filled(p))
    assert len(dev.pool) == in_pool < objects
    assert_mm(dev, pages)
    assert dev.io_stat().notify_free == 10
    dev.discard(100)  # an empty slot: nothing to free, still counted, as in the kernel
    assert dev.io_stat().notify_free == 11
    dev.slot_free_notify(0)
    assert dev.read_page(0) == bytes(PAGE) and dev.io_stat().notify_free == 12
    dev.check()


def test_write_zeroes(dev):
    rng = random.Random(9)
    model = bytearray()
    for i in range(8):
        page = text_page(rng)
        dev.write_page(i, page)
        model += page
    model += bytes(PAGE * (256 - 8))
    dev.write_zeroes(100, 3 * PAGE)  # partial, two whole pages... and a partial tail
    model[100 : 100 + 3 * PAGE] = bytes(3 * PAGE)
    dev.write_zeroes(6 * PAGE, PAGE)  # exactly one page: freed
    model[6 * PAGE : 7 * PAGE] = bytes(PAGE)
    dev.write_zeroes(200 * PAGE + 5, 10)  # inside a never-written page: stays unallocated
    assert dev.pread(0, 256 * PAGE) == bytes(model)
    assert not dev.slot_info(1).allocated and not dev.slot_info(2).allocated
    assert not dev.slot_info(6).allocated and not dev.slot_info(200).allocated
    assert dev.slot_info(0).allocated and dev.slot_info(3).allocated
    assert dev.io_stat().notify_free == 3
    dev.check()


def test_io_stat_counts_invalid_requests(dev):
    bad = [
        lambda: dev.read_page(256),
        lambda: dev.read_page(-1),
        lambda: dev.write_page(256, bytes(PAGE)),
        lambda: dev.write_page(0, bytes(100)),
        lambda: dev.write_page(0, bytes(PAGE + 1)),
        lambda: dev.pread(256 * PAGE - 10, 11),
        lambda: dev.pread(-1, 5),
        lambda: dev.pwrite(256 * PAGE, b"x"),
        lambda: dev.write_zeroes(0, 256 * PAGE + 1),
        lambda: dev.discard(250, 7),
        lambda: dev.discard(-1),
        lambda: dev.read_page_into(0, bytearray(100)),
    ]
    for n, call in enumerate(bad, 1):
        with pytest.raises(InvalidIOError) as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, ZsmallocError)
        assert dev.io_stat().invalid_io == n
    assert dev.io_stat() == IoStat(failed_reads=0, failed_writes=0, invalid_io=len(bad), notify_free=0)
    assert dev.format_io_stat() == f"       0        0 {len(bad):8d}        0\n"
    assert dev.mm_stat().orig_data_size == 0 and len(dev.pool) == 0


def test_non_integer_index_leaks_nothing(dev):
    with pytest.raises(TypeError):
        dev.write_page(1.5, text_page(random.Random(1)))
    assert len(dev.pool) == 0 and dev.pool.total_pages == 0
    dev.check()


def test_undecompressable_page_is_a_failed_read(dev):
    rng = random.Random(10)
    page = text_page(rng)
    dev.write_page(3, page)
    info = dev.slot_info(3)
    dev.pool.write(info.handle, b"\xff" * info.size)  # damage the stored object
    with pytest.raises(ZramIOError) as exc:
        dev.read_page(3)
    assert isinstance(exc.value, OSError) and exc.value.errno == errno.EIO
    assert dev.io_stat().failed_reads == 1
    dev.write_page(3, page)  # a rewrite heals it
    assert dev.read_page(3) == page


def test_partial_write_to_an_undecompressable_page_fails_and_changes_nothing(dev):
    page = text_page(random.Random(11))
    dev.write_page(5, page)
    info = dev.slot_info(5)
    dev.pool.write(info.handle, b"\xff" * info.size)
    with pytest.raises(ZramIOError):
        dev.pwrite(5 * 4096 + 100, b"new bytes")  # read-modify-write needs the old page
    assert dev.slot_info(5).handle == info.handle  # the damaged object was left where it was
    assert dev.io_stat().failed_reads == 1
    dev.check()


# ----------------------------------------------------------------------
# byte-level I/O against a bytearray model


def _data(draw_kind: int, n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if draw_kind == 0:
        return bytes(n)
    if draw_kind == 1:
        return (rng.getrandbits(64).to_bytes(8, "little") * (n // 8 + 1))[:n]
    if draw_kind == 2:
        return rng.randbytes(n)
    return (text_page(rng) * (n // PAGE + 1))[:n]


NPAGES = 6
DISK = NPAGES * PAGE
_offsets = st.one_of(
    st.integers(0, DISK),
    st.sampled_from([0, 1, 7, 8, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE - 3, DISK - PAGE, DISK - 1]),
)


@st.composite
def _ops(draw):
    kind = draw(st.sampled_from(["pwrite", "pwrite", "pread", "zeroes", "discard", "page"]))
    off = draw(_offsets)
    length = draw(st.one_of(st.integers(0, DISK - off), st.sampled_from([0, 1, 8, PAGE, 2 * PAGE + 5])))
    length = min(length, DISK - off)
    return kind, off, length, draw(st.integers(0, 3)), draw(st.integers(0, 2**32))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ops(), min_size=1, max_size=25))
def test_byte_io_matches_a_bytearray(ops):
    model = bytearray(DISK)
    with ZramDevice(DISK) as dev:
        for kind, off, length, data_kind, seed in ops:
            if kind == "pwrite":
                data = _data(data_kind, length, seed)
                assert dev.pwrite(off, data) == length
                model[off : off + length] = data
            elif kind == "pread":
                assert dev.pread(off, length) == model[off : off + length]
            elif kind == "zeroes":
                dev.write_zeroes(off, length)
                model[off : off + length] = bytes(length)
            elif kind == "discard":
                index = off // PAGE
                count = min(length // PAGE, NPAGES - index)
                dev.discard(index, count)
                model[index * PAGE : (index + count) * PAGE] = bytes(count * PAGE)
            else:
                index = min(off // PAGE, NPAGES - 1)
                data = _data(data_kind, PAGE, seed)
                dev.write_page(index, data)
                model[index * PAGE : (index + 1) * PAGE] = data
        assert dev.pread(0, DISK) == model
        for i in range(NPAGES):
            assert dev.read_page(i) == model[i * PAGE : (i + 1) * PAGE]
        pages = {
            i: bytes(model[i * PAGE : (i + 1) * PAGE]) for i in range(NPAGES) if dev.slot_info(i).allocated
        }
        assert_mm(dev, pages)
        dev.check()


def test_unaligned_pread_pwrite_at_many_offsets():
    rng = random.Random(11)
    disk = 5 * PAGE
    model = bytearray(disk)
    with ZramDevice(disk) as dev:
        for off in [*range(0, 20), *range(PAGE - 20, PAGE + 20), *range(disk - 20, disk)]:
            for length in (0, 1, 7, 8, 9, 100, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE + 3):
                if off + length > disk:
                    continue
                data = _data(rng.randrange(4), length, rng.getrandbits(32))
                dev.pwrite(off, data)
                model[off : off + length] = data
                roff = rng.randrange(disk)
                rlen = rng.randrange(disk - roff + 1)
                assert dev.pread(roff, rlen) == model[roff : roff + rlen]
        assert dev.pread(0, disk) == model
        dev.check()


# ----------------------------------------------------------------------
# mem_limit


def test_mem_limit_refuses_writes_and_keeps_earlier_pages():
    rng = random.Random(12)
    with ZramDevice(1024 * PAGE, mem_limit=16 * PAGE) as dev:
        assert dev.pool.max_pages == 16
        pages: dict[int, bytes] = {}
        with pytest.raises(ZramFullError) as info:
            for i in range(1024):
                page = text_page(rng)
                dev.write_page(i, page)
                pages[i] = page
        err = info.value
        assert isinstance(err, PoolFullError) and isinstance(err, MemoryError)
        assert isinstance(err, OSError) and err.errno == errno.ENOSPC
        assert "mem_limit" in str(err)
        refused = len(pages)
        assert not dev.slot_info(refused).allocated  # the refused write left no trace
        assert dev.pool.total_pages <= 16
        mm = dev.mm_stat()
        assert mm.mem_limit == 16 * PAGE and mm.mem_used_max <= 16 * PAGE
        assert dev.io_stat().failed_writes == 1

        # huge pages take one page each: fill the pool to the last page
        with pytest.raises(ZramFullError):
            for i in range(refused, 1024):
                page = random_page(rng)
                dev.write_page(i, page)
                pages[i] = page
        assert dev.pool.total_pages == 16
        assert dev.io_stat().failed_writes == 2
        # a failed overwrite keeps the page it would have replaced
        with pytest.raises(ZramFullError):
            dev.write_page(0, random_page(rng))
        assert dev.read_page(0) == pages[0]
        # same-filled pages need no pool memory: still accepted
        spare = max(pages) + 1
        dev.write_page(spare, same_page(0))
        pages[spare] = same_page(0)
        for i, page in pages.items():
            assert dev.read_page(i) == page
        assert_mm(dev, pages)
        dev.check()

        # freeing makes room again
        for i in range(0, refused, 2):
            dev.discard(i)
            del pages[i]
        dev.compact()
        dev.write_page(1000, text_page(rng))


def test_mem_limit_is_page_aligned_and_can_change():
    with ZramDevice(64 * PAGE, mem_limit=5000) as dev:
        assert dev.mem_limit == 2 * PAGE == dev.mm_stat().mem_limit
        dev.mem_limit = 0
        assert dev.pool.max_pages is None and dev.mm_stat().mem_limit == 0
        rng = random.Random(13)
        for i in range(64):
            dev.write_page(i, random_page(rng))
        dev.mem_limit = PAGE  # below what is in use: the next write that needs a page fails
        with pytest.raises(ZramFullError):
            dev.write_page(0, random_page(rng))
        with pytest.raises(ValueError):
            dev.mem_limit = -1


def test_out_of_frames_is_a_full_device():
    with ZramDevice(64 * PAGE, memory=Memory(capacity=4)) as dev:
        rng = random.Random(14)
        with pytest.raises(ZramFullError) as info:
            for i in range(64):
                dev.write_page(i, random_page(rng))
        assert "could not get a page" in str(info.value)
        assert dev.pool.total_pages == 4


# ----------------------------------------------------------------------
# life cycle, shared pools, the checker


def test_reset_frees_everything(dev):
    rng = random.Random(15)
    for i in range(100):
        dev.write_page(i, any_page(rng))
    dev.discard(0)
    dev.reset()
    mm = dev.mm_stat()
    assert mm == MmStat(0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert dev.io_stat() == IoStat(0, 0, 0, 0)
    assert len(dev.pool) == 0 and dev.pool.total_pages == 0
    assert dev.read_page(5) == bytes(PAGE)
    page = text_page(rng)
    dev.write_page(5, page)
    assert dev.read_page(5) == page
    dev.check()


def test_close_and_context_manager():
    with ZramDevice(8 * PAGE) as dev:
        dev.write_page(0, text_page(random.Random(1)))
    assert snapshot(dev.pool)["closed"]
    with pytest.raises(PoolClosedError):
        dev.read_page(0)
    with pytest.raises(PoolClosedError):
        dev.write_page(0, bytes(PAGE))
    dev.close()  # idempotent


def test_two_devices_share_a_pool():
    rng = random.Random(16)
    with Pool(name="shared") as pool:
        a = ZramDevice(32 * PAGE, pool=pool, name="zram0")
        b = ZramDevice(32 * PAGE, pool=pool, name="zram1", algorithm="zstd")
        pa = {i: text_page(rng) for i in range(32)}
        pb = {i: sparse_page(rng) for i in range(32)}
        for i in range(32):
            a.write_page(i, pa[i])
            b.write_page(i, pb[i])
        assert all(a.read_page(i) == pa[i] and b.read_page(i) == pb[i] for i in range(32))
        assert len(pool) == 64
        a.close()  # frees a's objects only; the pool stays open
        assert len(pool) == 32 and not snapshot(pool)["closed"]
        assert all(b.read_page(i) == pb[i] for i in range(32))
        b.check()
        b.close()
        assert len(pool) == 0


@pytest.mark.model_only  # reads the model's arrays; the engine's check has its own (engine/core, zram_drv.rs)
def test_check_catches_damage(dev):
    rng = random.Random(17)
    for i in range(20):
        dev.write_page(i, any_page(rng))
    dev.check()
    dev._st_compr[0] += 1
    with pytest.raises(CorruptionError, match="compr_data_size"):
        dev.check()
    dev._st_compr[0] -= 1
    dev.check()
    i = next(i for i in range(20) if dev.slot_info(i).allocated and not dev.slot_info(i).same)
    dev._size[i] += 1
    with pytest.raises(CorruptionError):
        dev.check()
    dev._size[i] -= 1
    saved = dev._handle[i]
    dev._handle[i] = saved + 2  # a handle that is not live
    with pytest.raises(CorruptionError):
        dev.check()
    dev._handle[i] = saved
    dev.check()


def test_errors_are_zsmalloc_errors():
    from zsmalloc.zram import NoBackingDeviceError, ZramError

    for cls in (InvalidIOError, ZramFullError, ZramIOError, NoBackingDeviceError):
        assert issubclass(cls, ZramError) and issubclass(cls, zsmalloc.ZsmallocError)
    assert issubclass(InvalidIOError, ValueError)
    assert issubclass(ZramFullError, PoolFullError) and issubclass(ZramFullError, OSError)
    with pytest.raises(ValueError):
        ZramDevice(0)
    with pytest.raises(ValueError, match="unknown compression"):
        ZramDevice(PAGE, algorithm="nope")
    with ZramDevice(PAGE + 1) as dev:  # disksize is rounded up to whole pages
        assert dev.disksize == 2 * PAGE and dev.nr_pages == 2


# issue 10, items 12 and 13: nonsense refused, closed means PoolClosedError


@pytest.mark.parametrize("blocks", [0, -1, 2.5, True])
def test_backing_blocks_that_are_not_a_positive_int_are_refused(tmp_path, blocks):
    path = tmp_path / "backing.img"
    with pytest.raises(ValueError, match="backing_blocks must be a positive int"):
        ZramDevice(8 * PAGE, backing_file=path, backing_blocks=blocks)
    assert not path.exists()  # refused before anything was made


def test_backing_blocks_without_a_backing_file_are_refused():
    with pytest.raises(ValueError, match="backing_blocks sizes a backing_file"):
        ZramDevice(8 * PAGE, backing_blocks=4)


@pytest.mark.model_only
def test_model_slot_lock_stripes_are_a_power_of_two():
    with pytest.raises(ValueError):
        ZramDevice(PAGE, slot_lock_stripes=3)


@pytest.mark.engine_only
def test_the_engine_refuses_python_codecs_and_model_pools():
    from zsmalloc.zram.codecs import get_codec

    with pytest.raises(TypeError, match="model's device"):
        ZramDevice(PAGE, algorithm=get_codec("zstd"))
    with pytest.raises(TypeError, match="model's device"):
        ZramDevice(PAGE, pool=zsmalloc.model.Pool())
    with pytest.raises(ValueError, match="unknown compression"):
        ZramDevice(PAGE, recompress_algorithm="lzo")


@pytest.mark.model_only  # the model's device makes its pool through _pool_class
def test_a_backing_file_that_cannot_open_leaves_no_pool_open(tmp_path, impl, monkeypatch):
    made: list = []

    def pool_class(memory):
        def make(**kwargs):
            made.append(impl.Pool(**kwargs))
            return made[-1]

        return make

    monkeypatch.setattr("zsmalloc.zram.device._pool_class", pool_class)
    with pytest.raises(OSError):
        ZramDevice(8 * PAGE, backing_file=tmp_path / "no-such-dir" / "b.img")
    assert len(made) == 1 and snapshot(made[0])["closed"]


def test_check_after_close_raises_pool_closed():
    dev = ZramDevice(8 * PAGE)
    dev.write_page(0, text_page(random.Random(30)))
    dev.close()
    with pytest.raises(PoolClosedError):
        dev.check()


def test_reset_after_close_raises_pool_closed_and_changes_nothing():
    dev = ZramDevice(8 * PAGE)
    dev.write_page(0, text_page(random.Random(31)))
    dev.write_page(1, same_page(7))
    dev.close()
    before = dev.mm_stat(), dev.io_stat()
    with pytest.raises(PoolClosedError):
        dev.reset()
    assert (dev.mm_stat(), dev.io_stat()) == before
    assert before[0].orig_data_size == 2 * PAGE  # (the counters were there to be zeroed)


@pytest.mark.parametrize("call", ["mark_idle", "reset_mem_used_max", "recompress", "writeback"])
def test_maintenance_after_close_raises_pool_closed(tmp_path, call):
    dev = ZramDevice(8 * PAGE, recompress_algorithm="zstd", backing_file=tmp_path / "b.img")
    dev.write_page(0, text_page(random.Random(32)))
    dev.close()
    with pytest.raises(PoolClosedError):
        getattr(dev, call)()
