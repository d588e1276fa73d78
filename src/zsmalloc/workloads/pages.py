"""Synthetic 4 KiB pages whose compressed sizes follow a size mix (KERNEL.md section 8).

:mod:`zsmalloc.workloads.sizes` draws the sizes zram hands to zs_malloc; this
module makes page *contents* that a real codec compresses to those sizes, so
that a zram device fed with them stores the mix.  The codec is lz4 in the
kernel's block format by default (``lz4.block.compress(page,
store_size=False)``, what the device stores); any ``compress(page) -> bytes``
may be given instead, zstd for ``android-zstd`` for instance.

How a page of a given compressed size is made
---------------------------------------------
A page is a seeded blend of three materials, laid out in 16 segments of 256
bytes visited in a seeded order:

- *structured* material, cut at a seeded offset from a 512 KiB pool made once
  from a fixed seed: text (lines of identifiers from a Zipf-weighted
  vocabulary), arrays of user-space pointers (``0x00007f..``, advancing by a
  struct stride) and records of 32-bit fields (mostly small counts, some
  hashes), each 8-byte aligned as malloc leaves them.  A page of it alone
  compresses with lz4 to 2.3-2.8 KB;
- zero runs, which compress to almost nothing;
- incompressible random bytes, fresh for each page.

One integer *knob* in 1..8192 orders the blends by compressed size: up to
4096 it is the number of structured bytes kept (the rest zeros, taken from the
segment tails), above it ``knob - 4096`` structured bytes are replaced by
random ones (from the segment heads).  lz4 makes 26-33 bytes of the
sparsest blend and 4114 of the densest.

Calibration: a reference curve, compressed size against knob every 32 steps
on a reference layout, is measured with the codec once and cached (per
``compress`` callable); its inverse gives each target size a starting knob.
Each page is then compressed and corrected by secant steps through the same
curve, inside a shrinking bracket that falls back to bisection, until its
compressed size is within :func:`tolerance` of the target (8 bytes or 1%,
whichever is more); a page that cannot get there (a target below the sparsest
blend, about 30 bytes with lz4) is the closest one found.  Pages need 2.3
compressions on average; 20,000 ``kernel-build`` pages take about 1.3 s
(15,000 pages/s on one core).  Measured on 20,000 pages: the median miss is 6
bytes, 1 page in 18,000 is outside the tolerance, and the lz4 sizes have a mean
of 1553 bytes against the ``kernel-build`` mix's 1563 and 951 against
``android-zstd``'s 956.

The sizes hold for the codec the pages were calibrated with only: the mixes
model lzo-rle and zstd figures, reproduced here with lz4; another codec makes
other sizes of the same pages (zstd, smaller ones).

A target of 4096 (the mixes' *huge* share, pages zram stores whole) is a page
of random bytes: lz4 makes 4114 bytes of it.

Same-filled pages
-----------------
zram keeps a page that is one 8-byte word repeated in its slot, not in the
pool, so the size mixes leave them out.  Real swapped anonymous memory has
10-20% of them, most of them zero (KERNEL.md section 8): :func:`mix_pages`
makes :data:`SAME_FILLED_SHARE` of its pages same-filled (15% for the two
workload mixes, none for the ``uniform`` stress mix), 90% of those zero and the
rest one random word repeated.  The other pages follow the mix.

Everything is determined by the seed: the same seed gives the same bytes in
any process (``random.Random`` seeded with an int, no hashing of strings, and
a pinned lz4).
"""

from __future__ import annotations

import bisect
import random
import struct
from collections.abc import Callable, Iterator
from functools import cache, lru_cache, partial

import lz4.block

from zsmalloc.workloads.sizes import MAX_SIZE, PAGE_SIZE, SizeMix, get_mix

#: page -> compressed bytes; the default is the zram device's default codec
Compressor = Callable[[bytes], bytes]
lz4_compress: Compressor = partial(lz4.block.compress, store_size=False)

#: share of same-filled pages among those :func:`mix_pages` makes, by mix
SAME_FILLED_SHARE: dict[str, float] = {"kernel-build": 0.15, "android-zstd": 0.15, "uniform": 0.0}
#: share of zero pages among the same-filled ones
ZERO_SHARE_OF_SAME_FILLED = 0.9

_SEGMENT = 256
_SEGMENTS = PAGE_SIZE // _SEGMENT
_KNOB_MAX = 2 * PAGE_SIZE
_CURVE_STEP = 32
_FIT_STEPS = 24
_POOL_BYTES = 1 << 19
_POOL_SEED = 0x5A5A11
_ORDERS_COUNT = 256
_ZEROS = bytes(PAGE_SIZE)


def tolerance(target: int) -> int:
    """How far a page's compressed size may be from its target: 8 bytes or 1%, whichever is more."""
    return max(8, target // 100)


def _structured_material(nbytes: int, rng: random.Random) -> bytes:
    letters = b"abcdefghijklmnopqrstuvwxyz_"
    vocab = [bytes(rng.choices(letters, k=rng.randint(2, 12))) for _ in range(800)]
    weights = [1 / (rank + 1) for rank in range(len(vocab))]
    out = bytearray()
    while len(out) < nbytes:
        kind = rng.random()
        if kind < 0.4:  # text: a line of identifiers
            out += b" ".join(rng.choices(vocab, weights, k=rng.randint(3, 20))) + b"\n"
        elif kind < 0.7:  # an array of pointers into one allocation
            base = (0x7F << 40) | (rng.getrandbits(36) << 4)
            stride = rng.choice((16, 24, 32, 48, 64, 96))
            n = rng.randint(2, 24)
            out += struct.pack(f"<{n}Q", *range(base, base + n * stride, stride))
        else:  # a record of 32-bit fields: counts and flags, now and then a hash
            n = rng.randint(2, 24)
            fields = (rng.randrange(256) if rng.random() < 0.8 else rng.getrandbits(32) for _ in range(n))
            out += struct.pack(f"<{n}I", *fields)
        out += bytes(-len(out) % 8)
    return bytes(out[:nbytes])


@cache
def _material() -> tuple[bytes, tuple[tuple[int, ...], ...]]:
    """The structured pool (with a page of slack) and the segment orders, made once from a fixed seed."""
    rng = random.Random(_POOL_SEED)
    pool = _structured_material(_POOL_BYTES + PAGE_SIZE, rng)
    orders = tuple(tuple(rng.sample(range(_SEGMENTS), _SEGMENTS)) for _ in range(_ORDERS_COUNT))
    return pool, orders


def _build(knob: int, offset: int, noise: bytes, order: tuple[int, ...]) -> bytes:
    """The page for ``knob`` on one layout: structured pool at ``offset``, random ``noise``, segment order."""
    pool, _ = _material()
    page = bytearray(pool[offset : offset + PAGE_SIZE])
    if knob <= PAGE_SIZE:
        left = PAGE_SIZE - knob  # zero the segment tails, whole segments first
        for seg in order:
            if left <= 0:
                break
            n = min(_SEGMENT, left)
            end = (seg + 1) * _SEGMENT
            page[end - n : end] = _ZEROS[:n]
            left -= n
        if knob < _SEGMENT and page[:8] * (PAGE_SIZE // 8) == page:
            page[-1] ^= 1  # a few kept bytes that happen to be zero: keep the page not same-filled
    else:
        left = knob - PAGE_SIZE  # replace the segment heads by random bytes
        for seg in order:
            if left <= 0:
                break
            n = min(_SEGMENT, left)
            at = seg * _SEGMENT
            page[at : at + n] = noise[at : at + n]
            left -= n
    return bytes(page)


@lru_cache(maxsize=8)
def _curve(compress: Compressor) -> tuple[list[int], list[int]]:
    """Compressed size against knob on a reference layout, made non-decreasing: (sizes, knobs)."""
    rng = random.Random(_POOL_SEED + 1)
    _, orders = _material()
    layout = (rng.randrange(_POOL_BYTES), rng.randbytes(PAGE_SIZE), orders[0])
    knobs = [1, *range(_CURVE_STEP, _KNOB_MAX + 1, _CURVE_STEP)]
    sizes = []
    top = 0
    for knob in knobs:
        top = max(top, len(compress(_build(knob, *layout))))
        sizes.append(top)
    return sizes, knobs


def _knob_for(curve: tuple[list[int], list[int]], target: int) -> int:
    """The reference knob for ``target``, interpolated on the curve."""
    sizes, knobs = curve
    i = bisect.bisect_left(sizes, target)
    if i == 0:
        return knobs[0]
    if i == len(sizes):
        return knobs[-1]
    lo, hi = sizes[i - 1], sizes[i]
    return knobs[i - 1] + (target - lo) * (knobs[i] - knobs[i - 1]) // max(1, hi - lo)


def page_of_size(target: int, rng: random.Random, compress: Compressor = lz4_compress) -> bytes:
    """A page, not same-filled, that ``compress`` makes ``target`` bytes of, within :func:`tolerance`.

    ``target >= 4096`` gives random bytes (a huge page).  Below the sparsest
    blend (about 30 bytes with lz4) the page is the sparsest one.  The layout comes
    from ``rng``, which advances by the same amount whatever the target.
    """
    _, orders = _material()
    layout = (rng.randrange(_POOL_BYTES), rng.randbytes(PAGE_SIZE), orders[rng.randrange(_ORDERS_COUNT)])
    if target >= MAX_SIZE:
        return layout[1]
    curve = _curve(compress)
    aim = _knob_for(curve, target)
    knob, lo, hi = aim, 1, _KNOB_MAX
    tol = tolerance(target)
    best, best_miss = b"", PAGE_SIZE * 2
    for _ in range(_FIT_STEPS):
        page = _build(knob, *layout)
        size = len(compress(page))
        miss = abs(size - target)
        if miss < best_miss:
            best, best_miss = page, miss
        if miss <= tol:
            break
        if size < target:
            lo = knob + 1
        else:
            hi = knob - 1
        if lo > hi:
            break
        # this layout behaves like the reference shifted: step by the reference's difference
        step = knob + aim - _knob_for(curve, size)
        knob = step if lo <= step <= hi and step != knob else (lo + hi) // 2
    return best


def same_filled_page(rng: random.Random) -> bytes:
    """A same-filled page: zero with probability :data:`ZERO_SHARE_OF_SAME_FILLED`, else one random word."""
    if rng.random() < ZERO_SHARE_OF_SAME_FILLED:
        return _ZEROS
    return rng.getrandbits(64).to_bytes(8, "little") * (PAGE_SIZE // 8)


def mix_pages(
    mix: str | SizeMix,
    n: int,
    seed: int = 0,
    *,
    same_filled: float | None = None,
    compress: Compressor = lz4_compress,
) -> Iterator[bytes]:
    """``n`` pages of 4096 bytes: same-filled ones, the others compressing to the sizes of ``mix``.

    ``same_filled`` is the share of same-filled pages (default: the mix's
    :data:`SAME_FILLED_SHARE`, 0 for a mix not listed there).  ``compress`` is
    the codec the sizes are calibrated against (default lz4, block format).
    """
    size_mix = get_mix(mix) if isinstance(mix, str) else mix
    share = SAME_FILLED_SHARE.get(size_mix.name, 0.0) if same_filled is None else same_filled
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"same_filled must be within 0..1, not {share}")
    return _mix_pages(size_mix.draw, n, seed, share, compress)


def _mix_pages(
    draw: Callable[[random.Random], int], n: int, seed: int, share: float, compress: Compressor
) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(n):
        if rng.random() < share:
            yield same_filled_page(rng)
        else:
            yield page_of_size(draw(rng), rng, compress)
