"""``lz4-kernel``: the kernel's lib/lz4 compressor, in the model (Python) and in the engine (Rust).

The two are held to the same bytes on every page tried here; that those are
the kernel's own is what tests/test_kernel_vm.py checks against a booted
kernel (sizes of every page, and the bytes of a sample read back).  Here:
the block format by hand on inputs whose encoding is known, every block
decoded by python-lz4 (liblz4), and the device under a kernel preset.
"""

from __future__ import annotations

import random

import lz4.block
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zram_pages import PAGE, nibble_page, random_page, sparse_page, text_page
from zsmalloc.workloads import file_pages, mix_pages
from zsmalloc.zram import ZramDevice, get_codec
from zsmalloc.zram.engine import compress as engine_compress
from zsmalloc.zram.lz4_kernel import MAX_INPUT, lz4_compress_fast


def _pages() -> list[bytes]:
    rng = random.Random(7)
    pages = [f(rng) for f in (text_page, sparse_page, random_page, nibble_page) for _ in range(4)]
    pages += list(file_pages("shared-libs", 48 * PAGE, 5))
    pages += list(mix_pages("kernel-build", 48, 5))
    pages += [bytes(PAGE), b"ab" * (PAGE // 2), bytes(range(256)) * 16]
    return pages


PAGES = _pages()


def test_the_model_and_the_engine_make_the_same_bytes():
    for i, page in enumerate(PAGES):
        assert engine_compress(page, "lz4-kernel") == lz4_compress_fast(page), f"page {i}"
    for accel in (2, 7):
        for page in PAGES[::9]:
            assert engine_compress(page, "lz4-kernel", accel) == lz4_compress_fast(page, accel)


def test_every_block_decodes_with_liblz4():
    for page in PAGES:
        block = lz4_compress_fast(page)
        assert lz4.block.decompress(block, uncompressed_size=PAGE) == page
        assert len(block) <= PAGE + PAGE // 255 + 16


def test_the_encoding_of_known_inputs():
    assert lz4_compress_fast(b"") == b"\x00"
    # below 13 bytes everything is a literal
    assert lz4_compress_fast(b"abcabcabcabc") == b"\xc0abcabcabcabc"
    # a run: one literal, a match at offset 1 up to end - 5, then the five last literals
    run = lz4_compress_fast(b"z" * PAGE)
    length = PAGE - 1 - 5 - 4 - 15
    assert run == b"\x1fz\x01\x00" + b"\xff" * (length // 255) + bytes([length % 255]) + b"\x50zzzzz"
    # fifteen literals or more take a length byte; the match at offset 16 is found through
    # the table's empty entry for its hash, which is position 0, and stops at end - 5
    head = bytes(range(16))
    block = lz4_compress_fast(head + head + head[:9])
    assert block == b"\xff\x01" + head + b"\x10\x00" + b"\x01" + b"\x50" + head[4:9]


def test_the_kernels_blocks_are_not_liblz4s():
    """liblz4 1.9 searches otherwise: most real pages come out different (the reason for the codec)."""
    libs = list(file_pages("shared-libs", 48 * PAGE, 5))
    differ = sum(lz4_compress_fast(p) != lz4.block.compress(p, store_size=False) for p in libs)
    assert differ > len(libs) // 2


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 4))
def test_any_input_round_trips(data: bytes, accel: int) -> None:
    # repeated, so that matches of every length and offset occur
    src = data + data[: len(data) // 2] + data
    block = lz4_compress_fast(src, accel)
    assert lz4.block.decompress(block, uncompressed_size=len(src)) == src


def test_inputs_past_the_16_bit_table_are_refused():
    with pytest.raises(ValueError, match="at most"):
        lz4_compress_fast(bytes(MAX_INPUT + 1))
    assert lz4.block.decompress(lz4_compress_fast(bytes(MAX_INPUT)), uncompressed_size=MAX_INPUT) == bytes(
        MAX_INPUT
    )


@pytest.mark.usefixtures("each_backend")
def test_a_kernel_preset_stores_lz4_as_the_kernel_does():
    page = text_page(random.Random(11))
    with ZramDevice(16 * PAGE, kernel="6.12") as dev, ZramDevice(16 * PAGE) as own:
        dev.write_page(0, page)
        own.write_page(0, page)
        assert dev.read_page(0) == page
        info = dev.slot_info(0)
        assert dev.pool.read(info.handle, info.size) == lz4_compress_fast(page)
        assert (dev.algorithm, own.algorithm) == ("lz4-kernel", "lz4")
        dev.check()
    assert get_codec("lz4-kernel").decompress(lz4_compress_fast(page)) == page
