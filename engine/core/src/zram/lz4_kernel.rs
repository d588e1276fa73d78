//! `lz4-kernel`: the LZ4 block compressor of the kernel's lib/lz4
//! (`LZ4_compress_fast`, as zram calls it for a page), written from the LZ4
//! block format and that compressor's match-finding heuristics, so that a
//! page compresses to the kernel's bytes rather than to liblz4 1.9's.
//!
//! The kernel's lib/lz4 is LZ4 1.7.3 adapted (4.11, 2017) and unchanged in
//! what it emits since.  zram gives it twice a page of output room, so it
//! runs without an output limit, on an input below 64 KiB: the `byU16`
//! table, where positions are 16-bit offsets from the start of the page.
//!
//! ```text
//!  page:  [anchor .... ip ............ mflimit ... matchlimit .. end]
//!                                      end - 12    end - 5
//!  table: hash(4 bytes at p) -> p      8192 u16 entries, zeroed per page
//!         hash(x) = (x * 2654435761 mod 2^32) >> 19      (x little-endian)
//!
//!  sequence: token [lit-len 255s] literals offset(le16) [match-len 255s]
//!            token = lit-len (high nibble, 15 = more) | match-len - 4 (low)
//! ```
//!
//! The search, as in LZ4_compress_generic:
//! - the first position goes into the table; from the next, probe `ip`:
//!   its table entry is the candidate, and `ip` replaces it;
//! - the step grows by one every 64 failed probes
//!   (`acceleration << 6` the first time), which skips incompressible runs;
//! - a candidate whose first four bytes equal `ip`'s is a match (no distance
//!   check: below 64 KiB every offset fits); an empty entry is offset 0, the
//!   page's first byte, and counts as a candidate like any other;
//! - a match is extended backwards over equal bytes down to the anchor, then
//!   forwards up to `end - 5`;
//! - after a match: `ip - 2` goes into the table, and `ip` is probed once; a
//!   hit there is a new sequence with no literals;
//! - no match starts past `end - 12`; the rest is the last literals.
//!
//! The output depends on little-endian reads: it is that of x86-64 and
//! arm64 kernels.

const MINMATCH: usize = 4;
/// no match starts within the last MFLIMIT bytes
const MFLIMIT: usize = 12;
/// the last LASTLITERALS bytes are always literals
const LASTLITERALS: usize = 5;
/// inputs shorter than this are all literals
const MIN_LENGTH: usize = MFLIMIT + 1;
/// the byU16 table: LZ4_HASHLOG (12, from LZ4_MEMORY_USAGE 14) + 1
const HASH_LOG: u32 = 13;
const SKIP_TRIGGER: u32 = 6;
const ML_BITS: u32 = 4;
const ML_MASK: usize = (1 << ML_BITS) - 1;
const RUN_MASK: usize = (1 << (8 - ML_BITS)) - 1;
/// the largest input the byU16 table takes (LZ4_64Klimit)
pub const MAX_INPUT: usize = 65536 + MFLIMIT - 2;

/// The compressor's hash table: its working memory, zeroed for every input.
pub struct HashTable(Box<[u16; 1 << HASH_LOG]>);

impl Default for HashTable {
    fn default() -> HashTable {
        HashTable(Box::new([0; 1 << HASH_LOG]))
    }
}

/// The most `compress` can write for `n` input bytes (LZ4_COMPRESSBOUND).
pub const fn compress_bound(n: usize) -> usize {
    n + n / 255 + 16
}

#[inline(always)]
fn read32(src: &[u8], p: usize) -> u32 {
    u32::from_le_bytes(src[p..p + 4].try_into().expect("4 bytes"))
}

#[inline(always)]
fn hash(src: &[u8], p: usize) -> usize {
    (read32(src, p).wrapping_mul(2654435761) >> (32 - HASH_LOG)) as usize
}

/// LZ4_count: how many bytes from `a` equal those from `b`, with `a` stopping at `limit`.
#[inline(always)]
fn lz4_count(src: &[u8], mut a: usize, mut b: usize, limit: usize) -> usize {
    let start = a;
    while a + 8 <= limit {
        let x = u64::from_le_bytes(src[a..a + 8].try_into().expect("8 bytes"));
        let y = u64::from_le_bytes(src[b..b + 8].try_into().expect("8 bytes"));
        let diff = x ^ y;
        if diff != 0 {
            return a - start + (diff.trailing_zeros() / 8) as usize;
        }
        a += 8;
        b += 8;
    }
    while a < limit && src[a] == src[b] {
        a += 1;
        b += 1;
    }
    a - start
}

/// A length beyond a nibble: 255s, then the remainder.
#[inline(always)]
fn put_length(dst: &mut [u8], op: &mut usize, mut len: usize) {
    while len >= 255 {
        dst[*op] = 255;
        *op += 1;
        len -= 255;
    }
    dst[*op] = len as u8;
    *op += 1;
}

/// A token for `lit` literals, then the literals; where the token is.
#[inline(always)]
fn put_literals(dst: &mut [u8], op: &mut usize, literals: &[u8]) -> usize {
    let token = *op;
    *op += 1;
    let lit = literals.len();
    if lit >= RUN_MASK {
        dst[token] = (RUN_MASK << ML_BITS) as u8;
        put_length(dst, op, lit - RUN_MASK);
    } else {
        dst[token] = (lit << ML_BITS) as u8;
    }
    dst[*op..*op + lit].copy_from_slice(literals);
    *op += lit;
    token
}

/// LZ4_compress_fast(src, dst, len, 2 * len, acceleration) of the kernel:
/// the block's length in `dst`.  `src` is at most [`MAX_INPUT`] bytes and
/// `dst` at least [`compress_bound`] of it; `acceleration` below 1 is 1.
pub fn lz4_compress_fast(src: &[u8], dst: &mut [u8], table: &mut HashTable, acceleration: u32) -> usize {
    assert!(src.len() <= MAX_INPUT && dst.len() >= compress_bound(src.len()));
    let table = &mut table.0;
    table.fill(0);
    let acceleration = acceleration.max(1);
    let end = src.len();
    let mut anchor = 0;
    let mut op = 0;
    if end >= MIN_LENGTH {
        let mflimit = end - MFLIMIT;
        let matchlimit = end - LASTLITERALS;
        table[hash(src, 0)] = 0;
        let mut ip = 1;
        let mut forward_h = hash(src, ip);
        'search: loop {
            // find a match
            let mut forward_ip = ip;
            let mut step = 1;
            let mut probes = acceleration << SKIP_TRIGGER;
            let mut candidate;
            loop {
                let h = forward_h;
                ip = forward_ip;
                forward_ip += step;
                step = (probes >> SKIP_TRIGGER) as usize;
                probes += 1;
                if forward_ip > mflimit {
                    break 'search;
                }
                candidate = table[h] as usize;
                forward_h = hash(src, forward_ip);
                table[h] = ip as u16;
                if read32(src, candidate) == read32(src, ip) {
                    break;
                }
            }
            // catch up
            while ip > anchor && candidate > 0 && src[ip - 1] == src[candidate - 1] {
                ip -= 1;
                candidate -= 1;
            }
            let mut token = put_literals(dst, &mut op, &src[anchor..ip]);
            loop {
                // the offset, then the match's length
                dst[op..op + 2].copy_from_slice(&((ip - candidate) as u16).to_le_bytes());
                op += 2;
                let len = lz4_count(src, ip + MINMATCH, candidate + MINMATCH, matchlimit);
                ip += MINMATCH + len;
                if len >= ML_MASK {
                    dst[token] += ML_MASK as u8;
                    put_length(dst, &mut op, len - ML_MASK);
                } else {
                    dst[token] += len as u8;
                }
                anchor = ip;
                if ip > mflimit {
                    break 'search;
                }
                table[hash(src, ip - 2)] = (ip - 2) as u16;
                // the next position, at once
                let h = hash(src, ip);
                candidate = table[h] as usize;
                table[h] = ip as u16;
                if read32(src, candidate) != read32(src, ip) {
                    break;
                }
                token = op;
                dst[token] = 0;
                op += 1;
            }
            ip += 1;
            forward_h = hash(src, ip);
        }
    }
    put_literals(dst, &mut op, &src[anchor..end]);
    op
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn compress(src: &[u8]) -> Vec<u8> {
        let mut dst = vec![0u8; compress_bound(src.len())];
        let n = lz4_compress_fast(src, &mut dst, &mut HashTable::default(), 1);
        dst.truncate(n);
        dst
    }

    fn decompress(block: &[u8], n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        // SAFETY: both buffers are valid for the lengths given; liblz4's
        // safe decoder never reads or writes past them
        let got = unsafe {
            lz4_sys::LZ4_decompress_safe(
                block.as_ptr().cast(),
                out.as_mut_ptr().cast(),
                block.len() as i32,
                n as i32,
            )
        };
        assert_eq!(got, n as i32);
        out
    }

    #[test]
    fn short_inputs_are_literals() {
        assert_eq!(compress(b""), [0]);
        assert_eq!(compress(b"abc"), [0x30, b'a', b'b', b'c']);
        // twelve equal bytes: still below LZ4_minLength
        let twelve = [7u8; 12];
        let out = compress(&twelve);
        assert_eq!(out[0], 0xc0);
        assert_eq!(out.len(), 13);
    }

    #[test]
    fn a_run_is_one_match_at_offset_one() {
        let page = [b'a'; 4096];
        // 1 literal, offset 1, a match to end - 5, then the 5 last literals
        let out = compress(&page);
        assert_eq!(&out[..4], &[0x1f, b'a', 1, 0]);
        let mut want = vec![0x1f, b'a', 1, 0];
        let mut len = 4096 - 1 - 5 - MINMATCH - ML_MASK;
        while len >= 255 {
            want.push(255);
            len -= 255;
        }
        want.push(len as u8);
        want.extend_from_slice(&[0x50, b'a', b'a', b'a', b'a', b'a']);
        assert_eq!(out, want);
    }

    #[test]
    fn pages_round_trip() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for kind in 0..6 {
            let page: Vec<u8> = (0..4096)
                .map(|i| match kind {
                    0 => next() as u8,
                    1 => b"the quick brown fox "[(i * 7) % 20],
                    2 => (i / 64) as u8,
                    3 => (next() % 4) as u8,
                    4 => {
                        if i % 512 < 8 {
                            next() as u8
                        } else {
                            0
                        }
                    }
                    _ => (i % 251) as u8,
                })
                .collect();
            let out = compress(&page);
            assert!(out.len() <= compress_bound(4096));
            assert_eq!(decompress(&out, 4096), page, "kind {kind}");
        }
    }
}
