"""``lz4-kernel``: the LZ4 block compressor of the kernel's lib/lz4, as zram calls it on a page.

The kernel's lib/lz4 is LZ4 1.7.3 adapted for the kernel (4.11, 2017) and
unchanged in what it emits since.  liblz4 1.9, which python-lz4 bundles,
searches differently and makes other, often longer, blocks of the same
format; this module makes the kernel's, so that a page's compressed length
here is the one zram reports.  zram gives the compressor two pages of
output room, so it runs without an output limit, and a page is below 64
KiB: the ``byU16`` table, of 16-bit offsets from the start of the input.
The engine's counterpart is ``engine/core/src/zram/lz4_kernel.rs``.

::

    input: [anchor .... ip ............ mflimit ... matchlimit .. end]
                                        end - 12    end - 5
    table: hash(4 bytes at p) -> p      8192 entries, all 0 at the start
           hash(x) = (x * 2654435761 mod 2**32) >> 19      (x little-endian)

    sequence: token [literal length 255s] literals offset(le16) [match length 255s]
              token = literal length (high nibble, 15: more follows)
                      | match length - 4 (low nibble, 15: more follows)

The search (LZ4_compress_generic):

- the first position goes into the table; from the next, each probe at
  ``ip`` takes its table entry as the candidate and puts ``ip`` there;
- the step grows by one every 64 failed probes (``acceleration * 64`` the
  first time), which skips through incompressible runs;
- a candidate whose first four bytes equal those at ``ip`` is a match; an
  entry never set is offset 0, the input's first byte, and is tried like
  any other;
- the match is extended backwards over equal bytes down to the anchor, then
  forwards up to ``end - 5``;
- after a match, ``ip - 2`` goes into the table and ``ip`` is probed once: a
  hit there starts a sequence with no literals;
- no match starts past ``end - 12``: what is left is the last literals.
"""

from __future__ import annotations

from array import array

MINMATCH = 4
#: no match starts within the last MFLIMIT bytes
MFLIMIT = 12
#: the last LASTLITERALS bytes are always literals
LASTLITERALS = 5
#: shorter inputs are all literals
MIN_LENGTH = MFLIMIT + 1
#: the byU16 table's size: LZ4_HASHLOG (12) + 1
HASH_LOG = 13
SKIP_TRIGGER = 6
ML_MASK = 15
RUN_MASK = 15
#: the largest input the byU16 table takes (below LZ4_64Klimit)
MAX_INPUT = 65536 + MFLIMIT - 2


def _hash(src: bytes, p: int) -> int:
    return ((int.from_bytes(src[p : p + 4], "little") * 2654435761) & 0xFFFFFFFF) >> (32 - HASH_LOG)


def _read32(src: bytes, p: int) -> bytes:
    return src[p : p + 4]


def lz4_count(src: bytes, a: int, b: int, limit: int) -> int:
    """How many bytes from ``a`` equal those from ``b``, ``a`` stopping at ``limit`` (LZ4_count)."""
    start = a
    while a < limit and src[a] == src[b]:
        a += 1
        b += 1
    return a - start


def _put_length(out: bytearray, length: int) -> None:
    """A length past its nibble: as many 255s as fit, then the remainder."""
    out += b"\xff" * (length // 255)
    out.append(length % 255)


def _put_literals(out: bytearray, literals: bytes) -> int:
    """A token for ``literals``, then the literals; the token's index."""
    token = len(out)
    n = len(literals)
    if n >= RUN_MASK:
        out.append(RUN_MASK << 4)
        _put_length(out, n - RUN_MASK)
    else:
        out.append(n << 4)
    out += literals
    return token


def lz4_compress_fast(data: bytes | bytearray | memoryview, acceleration: int = 1) -> bytes:
    """The kernel's LZ4_compress_fast(data, dst, len, 2 * len, acceleration): an LZ4 block."""
    src = bytes(data)
    end = len(src)
    if end > MAX_INPUT:
        raise ValueError(f"lz4-kernel compresses at most {MAX_INPUT} bytes, not {end}")
    acceleration = max(1, acceleration)
    out = bytearray()
    anchor = 0
    if end >= MIN_LENGTH:
        mflimit = end - MFLIMIT
        matchlimit = end - LASTLITERALS
        table = array("H", bytes(2 << HASH_LOG))
        table[_hash(src, 0)] = 0
        ip = 1
        forward_h = _hash(src, ip)
        while True:
            # find a match
            forward_ip = ip
            step = 1
            probes = acceleration << SKIP_TRIGGER
            while True:
                h = forward_h
                ip = forward_ip
                forward_ip += step
                step = probes >> SKIP_TRIGGER
                probes += 1
                if forward_ip > mflimit:
                    break
                candidate = table[h]
                forward_h = _hash(src, forward_ip)
                table[h] = ip
                if _read32(src, candidate) == _read32(src, ip):
                    break
            if forward_ip > mflimit:
                break
            # catch up
            while ip > anchor and candidate > 0 and src[ip - 1] == src[candidate - 1]:
                ip -= 1
                candidate -= 1
            token = _put_literals(out, src[anchor:ip])
            while True:
                out += (ip - candidate).to_bytes(2, "little")
                length = lz4_count(src, ip + MINMATCH, candidate + MINMATCH, matchlimit)
                ip += MINMATCH + length
                if length >= ML_MASK:
                    out[token] += ML_MASK
                    _put_length(out, length - ML_MASK)
                else:
                    out[token] += length
                anchor = ip
                if ip > mflimit:
                    break
                table[_hash(src, ip - 2)] = ip - 2
                # the next position, at once
                h = _hash(src, ip)
                candidate = table[h]
                table[h] = ip
                if _read32(src, candidate) != _read32(src, ip):
                    break
                token = len(out)
                out.append(0)
            if ip > mflimit:
                break
            ip += 1
            forward_h = _hash(src, ip)
    _put_literals(out, src[anchor:end])
    return bytes(out)
