"""Page contents for the zram tests: seeded, each kind with a known fate in the device.

- ``text_page``: words from a small vocabulary; lz4 leaves about 2.9 KB, zstd
  about 1.9 KB (a smaller size class: recompression keeps it).
- ``random_page``: random bytes; no codec shrinks it below the huge size.
- ``nibble_page``: random bytes from 16 symbols; lz4 finds no matches (huge),
  zstd's entropy coder halves it.
- ``sparse_page``: mostly zeros with a few random runs; compresses well.
- ``same_page``: one 8-byte word repeated.
"""

from __future__ import annotations

import random

import lz4.block

PAGE = 4096

_VOCAB_RNG = random.Random(12345)
WORDS = [
    bytes(_VOCAB_RNG.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(_VOCAB_RNG.randint(3, 9)))
    for _ in range(400)
]


def text_page(rng: random.Random) -> bytes:
    out = bytearray()
    while len(out) < PAGE:
        out += rng.choice(WORDS) + b" "
    return bytes(out[:PAGE])


def random_page(rng: random.Random) -> bytes:
    return rng.randbytes(PAGE)


def nibble_page(rng: random.Random) -> bytes:
    return bytes(rng.choice(b"0123456789abcdef") for _ in range(PAGE))


def sparse_page(rng: random.Random) -> bytes:
    page = bytearray(PAGE)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(PAGE - 200)
        n = rng.randint(8, 200)
        page[at : at + n] = rng.randbytes(n)
    if page[:8] * 512 == page:  # vanishingly unlikely, but keep the kind honest
        page[-1] ^= 1
    return bytes(page)


def same_page(word: int) -> bytes:
    return word.to_bytes(8, "little") * 512


def any_page(rng: random.Random) -> bytes:
    """A mix: mostly compressible, some same-filled (mostly zero) and some huge."""
    r = rng.random()
    if r < 0.12:
        return same_page(0 if rng.random() < 0.7 else rng.getrandbits(64))
    if r < 0.22:
        return random_page(rng)
    if r < 0.6:
        return text_page(rng)
    return sparse_page(rng)


def stored_size(dev: object, page: bytes, algorithm: str = "lz4", level: int | None = None) -> int:
    """What ``dev``'s codec makes of a page, by a call of its own: the engine's
    codec for the engine's device, the library (python-lz4, ...) for the model's."""
    from zsmalloc.zram import engine
    from zsmalloc.zram.codecs import get_codec

    if isinstance(dev, engine.ZramDevice):
        return len(engine.compress(page, algorithm, level))
    if algorithm == "lz4" and level is None:
        return len(lz4.block.compress(page, store_size=False))
    return len(get_codec(algorithm, level).compress(page))


def is_same_filled(page: bytes) -> bool:
    """Independent of the device's test: every 8-byte word equals the first."""
    first = page[:8]
    return all(page[i : i + 8] == first for i in range(0, PAGE, 8))
