"""zram codecs (lz4, lz4hc, zstd, deflate, lzo when installed) and recompression with a second algorithm."""

from __future__ import annotations

import random
import threading
import zlib

import lz4.block
import pytest

from zram_pages import PAGE, nibble_page, random_page, same_page, sparse_page, stored_size, text_page
from zsmalloc.zram import ZramDevice, ZramError, available_codecs, get_codec, register_codec
from zsmalloc.zram.codecs import Codec

#: every test runs on the model's device and on the engine's (conftest.py binds ZramDevice)
pytestmark = pytest.mark.usefixtures("each_backend")

CODECS = available_codecs()


def test_the_registry_has_the_kernel_names():
    assert CODECS[:4] == ["lz4", "lz4hc", "zstd", "deflate"]
    try:
        import lzo  # noqa: F401
    except ImportError:
        assert "lzo" not in CODECS and "lzo-rle" not in CODECS
    else:
        assert "lzo" in CODECS and "lzo-rle" in CODECS


@pytest.mark.parametrize("name", CODECS)
def test_codec_round_trip(name):
    rng = random.Random(1)
    codec = get_codec(name)
    assert codec.name == name
    for page in (text_page(rng), sparse_page(rng), random_page(rng), nibble_page(rng), bytes(PAGE)):
        comp = codec.compress(page)
        assert codec.decompress(comp) == page
        assert codec.decompress(memoryview(comp)) == page
    assert len(codec.compress(text_page(rng))) < PAGE // 2 + 1000  # it does compress


def test_lzo_when_installed():
    lzo = pytest.importorskip("lzo")
    page = text_page(random.Random(2))
    for name in ("lzo", "lzo-rle"):
        codec = get_codec(name)
        assert codec.decompress(codec.compress(page)) == page
    assert lzo is not None


def test_formats_are_the_raw_ones():
    """lz4 is the block format with no size prefix; deflate is raw (no zlib header)."""
    page = text_page(random.Random(3))
    comp = get_codec("lz4").compress(page)
    assert comp == lz4.block.compress(page, store_size=False)
    assert lz4.block.decompress(comp, uncompressed_size=PAGE) == page
    raw = get_codec("deflate").compress(page)
    assert zlib.decompress(raw, wbits=-15) == page
    with pytest.raises(zlib.error):
        zlib.decompress(raw)  # no zlib header


def test_levels_and_dictionary():
    rng = random.Random(4)
    page = text_page(rng)
    fast, strong = get_codec("zstd", level=1), get_codec("zstd", level=19)
    assert fast.level == 1 and strong.level == 19
    assert strong.decompress(strong.compress(page)) == page
    # a dictionary made of the vocabulary helps a page of it
    from zram_pages import WORDS

    plain = get_codec("zstd")
    withdict = get_codec("zstd", dictionary=b" ".join(WORDS))
    assert len(withdict.compress(page)) < len(plain.compress(page))
    assert withdict.decompress(withdict.compress(page)) == page
    with pytest.raises(ValueError):
        get_codec("lz4", dictionary=b"x")
    with pytest.raises(ValueError):
        get_codec("deflate", level=42)
    with pytest.raises(ValueError, match="unknown"):
        get_codec("842")


def test_zstd_objects_are_per_thread():
    """Compressor objects are not thread-safe: each thread must get its own."""
    codec = get_codec("zstd")
    rng = random.Random(5)
    pages = [text_page(rng) for _ in range(40)]
    errors = []

    def work():
        try:
            for _ in range(30):
                for page in pages:
                    assert codec.decompress(codec.compress(page)) == page
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    assert not errors


@pytest.mark.model_only  # a codec written in Python runs on the model's device
def test_register_a_codec():
    calls = []

    def factory(level, dictionary):
        def compress(data):  # keep the bytes up to the trailing zeros
            calls.append("c")
            return bytes(data).rstrip(b"\0") or b"\0"

        def decompress(data):
            calls.append("d")
            return bytes(data).ljust(PAGE, b"\0")

        return Codec("strip", compress, decompress, level)

    register_codec("test-strip", factory)
    try:
        with ZramDevice(4 * PAGE, algorithm="test-strip") as dev:
            page = text_page(random.Random(6))[:1000] + bytes(PAGE - 1000)
            dev.write_page(0, page)
            assert dev.slot_info(0).size == 1000 and dev.slot_info(0).algorithm == "strip"
            assert dev.read_page(0) == page
            assert calls == ["c", "d"]
            dev.write_page(1, random_page(random.Random(7)))  # 4096 "compressed" bytes: stored whole
            assert dev.slot_info(1).huge
            dev.read_page(1)
            assert calls == ["c", "d", "c"]  # a huge page is never decompressed
    finally:
        from zsmalloc.zram import codecs

        del codecs._REGISTRY["test-strip"]


@pytest.mark.parametrize("name", CODECS)
def test_device_round_trip_with_every_codec(name):
    rng = random.Random(7)
    with ZramDevice(64 * PAGE, algorithm=name) as dev:
        assert dev.algorithm == name
        pages = {}
        for i in range(64):
            pages[i] = [text_page, sparse_page, random_page, nibble_page][i % 4](rng)
            dev.write_page(i, pages[i])
        for i, page in pages.items():
            assert dev.read_page(i) == page
            info = dev.slot_info(i)
            if not info.huge:
                assert info.algorithm == name
                assert info.size == stored_size(dev, page, name)
        dev.check()


# ----------------------------------------------------------------------
# recompression


def test_recompress_keeps_only_smaller_classes():
    rng = random.Random(8)
    with ZramDevice(64 * PAGE, recompress_algorithm="zstd") as dev:
        pool = dev.pool
        assert dev.algorithms == ("lz4", "zstd")
        pages = {}
        for i in range(20):
            pages[i] = text_page(rng)  # lz4 ~2.9 KB, zstd ~1.9 KB: a smaller class
        for i in range(20, 30):
            pages[i] = random_page(rng)  # huge for both
        pages[30] = same_page(7)  # never a candidate
        # sparse pages: zstd may be a little smaller, but in the same class or not
        for i in range(31, 40):
            pages[i] = sparse_page(rng)
        for i, page in pages.items():
            dev.write_page(i, page)
        before = dev.mm_stat()

        expect_kept = {}
        for i, page in pages.items():
            if i == 30:
                continue
            old = dev.slot_info(i).size
            new = stored_size(dev, page, "zstd")
            if new < pool.huge_class_size and pool.class_index(new) < pool.class_index(old):
                expect_kept[i] = (old, new)
        assert set(range(20)) <= set(expect_kept)

        kept = dev.recompress()
        assert kept == len(expect_kept)
        stat = dev.recomp_stat()
        assert stat.attempted == 39
        assert stat.recompressed == kept and stat.failed == 39 - kept
        assert stat.bytes_before == sum(o for o, _ in expect_kept.values())
        assert stat.bytes_after == sum(n for _, n in expect_kept.values())
        assert stat.incompressible == stat.failed  # zstd is the last algorithm
        after = dev.mm_stat()
        assert after.compr_data_size == before.compr_data_size - stat.bytes_before + stat.bytes_after
        assert after.orig_data_size == before.orig_data_size
        for i, page in pages.items():
            assert dev.read_page(i) == page
            info = dev.slot_info(i)
            if i in expect_kept:
                assert info.algorithm == "zstd" and info.priority == 1 and info.size == expect_kept[i][1]
            elif i != 30:
                assert info.incompressible and info.priority == 0
        # a second run finds nothing to do: done pages are at the last priority or incompressible
        assert dev.recompress() == 0
        assert dev.recomp_stat().attempted == 39
        assert dev.format_recomp_stat().split() == [str(v) for v in dev.recomp_stat().values()]
        dev.check()


def test_recompress_huge_pages_only():
    rng = random.Random(9)
    with ZramDevice(32 * PAGE, recompress_algorithm=["deflate", "zstd"]) as dev:
        pages = {i: nibble_page(rng) for i in range(8)}  # huge for lz4; deflate and zstd ~2.1-2.3 KB
        pages.update({i: random_page(rng) for i in range(8, 12)})  # huge for all
        pages.update({i: text_page(rng) for i in range(12, 16)})
        for i, page in pages.items():
            dev.write_page(i, page)
        assert dev.mm_stat().huge_pages == 12
        kept = dev.recompress(only_huge=True)
        assert kept == 8
        stat = dev.recomp_stat()
        assert stat.huge_recompressed == 8 and stat.attempted == 12
        assert stat.incompressible == 4  # the random pages: zstd, the last algorithm, failed too
        mm = dev.mm_stat()
        assert mm.huge_pages == 4 and mm.huge_pages_since == 12
        for i in range(8):
            info = dev.slot_info(i)
            assert not info.huge and info.algorithm == "deflate"  # the first that made progress
        for i in range(12, 16):
            assert dev.slot_info(i).priority == 0  # not huge: left alone
        assert all(dev.read_page(i) == page for i, page in pages.items())
        # only zstd (priority 2) when named: the text pages, and the nibble pages where
        # zstd lands in a smaller class than deflate did
        pool = dev.pool
        better = {
            i
            for i in range(8)
            if pool.class_index(stored_size(dev, pages[i], "zstd")) < pool.class_index(dev.slot_info(i).size)
        }
        assert dev.recompress(algorithm="zstd") == 4 + len(better)
        assert all(dev.slot_info(i).algorithm == "zstd" for i in [*range(12, 16), *better])
        assert all(dev.read_page(i) == page for i, page in pages.items())
        dev.check()


def test_recompress_idle_only_threshold_and_budget():
    rng = random.Random(10)
    with ZramDevice(64 * PAGE, recompress_algorithm="zstd") as dev:
        pages = {i: text_page(rng) for i in range(30)}
        for i, page in pages.items():
            dev.write_page(i, page)
        assert dev.mark_idle() == 30
        for i in range(10):
            assert dev.read_page(i) == pages[i]  # an access clears IDLE
        assert dev.recompress(only_idle=True, max_pages=5) == 5
        assert dev.recomp_stat().attempted == 5
        done = [i for i in range(30) if dev.slot_info(i).priority == 1]
        assert len(done) == 5 and min(done) >= 10
        assert not any(dev.slot_info(i).idle for i in done)  # recompression touched them
        # a threshold above every object: nothing is tried
        assert dev.recompress(only_idle=True, threshold=3500) == 0
        assert dev.recomp_stat().attempted == 5
        assert dev.recompress(only_idle=True) == 15
        assert all(dev.slot_info(i).priority == 0 for i in range(10))
        assert all(dev.read_page(i) == page for i, page in pages.items())
        dev.check()


def test_recompress_errors():
    with ZramDevice(4 * PAGE) as dev, pytest.raises(ZramError, match="no recompression"):
        dev.recompress()
    with ZramDevice(4 * PAGE, recompress_algorithm="zstd") as dev:
        with pytest.raises(ValueError):
            dev.recompress(algorithm="deflate")
        with pytest.raises(ValueError):
            dev.recompress(algorithm="lz4")  # the primary one is not a recompression algorithm
        with pytest.raises(ValueError):
            dev.recompress(threshold=dev.pool.huge_class_size)
    with pytest.raises(ValueError):
        ZramDevice(PAGE, recompress_algorithm=["zstd", "deflate", "lz4hc", "lz4"])


# issue 10, item 12: parameters the codecs do not know are refused


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"bogus": 1}, ValueError, "unknown algorithm_params 'bogus'"),
        ({"level": 99}, ValueError, "zstd level must be within 1..22, not 99"),
        ({"level": 0}, ValueError, "zstd level must be within 1..22, not 0"),
        ({"level": "3"}, TypeError, "level must be an int"),
        ({"level": 3.5}, TypeError, "level must be an int"),
    ],
)
def test_zstd_parameters_it_does_not_take_are_refused(params, error, message):
    with pytest.raises(error, match=message):
        ZramDevice(16 * PAGE, algorithm="zstd", algorithm_params=params)


def test_zstd_levels_it_takes():
    for level in (1, 19, 22):
        with ZramDevice(16 * PAGE, algorithm="zstd", algorithm_params={"level": level}) as dev:
            page = text_page(random.Random(level))
            dev.write_page(0, page)
            assert dev.read_page(0) == page
    with pytest.raises(ValueError, match="zstd level"):
        get_codec("zstd", level=23)


@pytest.mark.model_only  # a codec object is the model's; the engine refuses one (test_zram.py)
def test_algorithm_params_with_a_codec_object_are_refused():
    with pytest.raises(ValueError, match="configure a named algorithm"):
        ZramDevice(16 * PAGE, algorithm=get_codec("zstd"), algorithm_params={"level": 5})
