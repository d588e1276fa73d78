//! The value codec of `zsmalloc.Store` and the layout of its entries: a
//! value of any size in and out of pool objects, in one call.  The index
//! (key -> entry) lives in the binding, keyed by Python objects; this module
//! owns what an entry is (`Stored`: kind, lengths, the chunks' handles, the
//! first two inline) and does, per value, the same-filled test, the
//! compression, the split into chunks of at most 4096 bytes, and the malloc
//! and copy of each chunk; and back.
//!
//! ```text
//!   value --compress--> payload --split--> [4096][4096] ... [tail]
//!                                             h0    h1         hn
//!   kind: same (no object: every byte equal), raw (the payload is the
//!   value: it did not compress), lz4 (a block, no size prefix), zstd (a
//!   standard frame, level 3)
//! ```
//!
//! The formats are those of `src/zsmalloc/store.py` (python-lz4's block
//! without its size prefix, python-zstandard's frame), so either side reads
//! the other's payloads.  Per thread: the LZ4 state, the zstd contexts and a
//! scratch buffer, kept across calls (no allocation per value once warm).

use std::cell::RefCell;
use std::ffi::c_int;

use zstd_safe::{CCtx, CParameter, DCtx};

use crate::lz4::{LZ4_compress_fast_extState, LZ4_sizeofState};
use crate::pool::{Pool, PoolError};

/// The largest pool object: a chunk.
pub const CHUNK: usize = 4096;
const ZSTD_LEVEL: i32 = 3;
/// A thread's scratch buffer is kept between values up to this size; one grown past it
/// for a large value is given back after that value (else every thread that once stored
/// a value of N bytes would hold N bytes for good: 1 MiB of RSS for 1 MiB values)
const SCRATCH_KEEP: usize = 256 << 10;

/// How a value is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Same,
    Raw,
    Lz4,
    Zstd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Same => "same",
            Kind::Raw => "raw",
            Kind::Lz4 => "lz4",
            Kind::Zstd => "zstd",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Same, Kind::Raw, Kind::Lz4, Kind::Zstd].into_iter().find(|k| k.name() == s)
    }
}

/// The handles of a value's chunks, in order: up to two inline (a value whose
/// payload fits 8 KiB costs no allocation beyond its entry), more on the heap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handles {
    Inline(u8, [u64; 2]),
    Heap(Box<[u64]>),
}

impl Handles {
    pub const NONE: Handles = Handles::Inline(0, [0; 2]);

    pub fn as_slice(&self) -> &[u64] {
        match self {
            Handles::Inline(n, h) => &h[..*n as usize],
            Handles::Heap(h) => h,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

impl From<&[u64]> for Handles {
    fn from(h: &[u64]) -> Handles {
        match *h {
            [] => Handles::NONE,
            [a] => Handles::Inline(1, [a, 0]),
            [a, b] => Handles::Inline(2, [a, b]),
            _ => Handles::Heap(h.into()),
        }
    }
}

/// A stored value: what the index keeps (48 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// the value's length
    pub nbytes: u64,
    /// the payload's length (0 for Same)
    pub stored: u64,
    pub handles: Handles,
    pub kind: Kind,
    pub fill: u8,
}

/// One thread's working memory.
struct Scratch {
    lz4: Vec<u64>,
    zc: CCtx<'static>,
    zd: DCtx<'static>,
    buf: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        let s = slot.get_or_insert_with(|| {
            let mut zc = CCtx::create();
            // python-zstandard's ZstdCompressor(level=3): a standard frame with its content size
            zc.set_parameter(CParameter::CompressionLevel(ZSTD_LEVEL)).expect("a valid zstd level");
            Scratch {
                // SAFETY: a plain size query of liblz4
                lz4: vec![0u64; (unsafe { LZ4_sizeofState() } as usize).div_ceil(8)],
                zc,
                zd: DCtx::create(),
                buf: Vec::new(),
            }
        });
        let out = f(s);
        if s.buf.len() > SCRATCH_KEEP {
            s.buf = Vec::new();
        }
        out
    })
}

/// The byte every position of `v` holds, if `v` is not empty and it does.
fn same_byte(v: &[u8]) -> Option<u8> {
    let first = *v.first()?;
    (v[v.len() - 1] == first && v.iter().all(|&b| b == first)).then_some(first)
}

/// Compress `value` into `s.buf`: the payload's length if smaller than the value.
fn compress(s: &mut Scratch, kind: Kind, value: &[u8]) -> Option<usize> {
    match kind {
        Kind::Lz4 => {
            let n = c_int::try_from(value.len()).ok()?;
            // SAFETY: a pure function of its argument
            let bound = unsafe { lz4_sys::LZ4_compressBound(n) } as usize;
            s.buf.resize(bound.max(s.buf.len()), 0);
            // SAFETY: the state is LZ4_sizeofState() bytes, 8-aligned (the call
            // initialises it); src and dst are valid for the lengths given
            let out = unsafe {
                LZ4_compress_fast_extState(
                    s.lz4.as_mut_ptr().cast(),
                    value.as_ptr().cast(),
                    s.buf.as_mut_ptr().cast(),
                    n,
                    bound as c_int,
                    1,
                )
            };
            usize::try_from(out).ok().filter(|&m| m > 0 && m < value.len())
        }
        Kind::Zstd => {
            let bound = zstd_safe::compress_bound(value.len());
            s.buf.resize(bound.max(s.buf.len()), 0);
            s.zc.compress2(&mut s.buf[..], value).ok().filter(|&m| m < value.len())
        }
        Kind::Same | Kind::Raw => None,
    }
}

/// Store `value`, compressed with `compression` (Lz4, Zstd or Raw for none).
/// On an error every chunk already made is freed again.
pub fn put(pool: &Pool, compression: Kind, value: &[u8]) -> Result<Stored, PoolError> {
    let nbytes = value.len() as u64;
    if let Some(fill) = same_byte(value) {
        return Ok(Stored { kind: Kind::Same, nbytes, stored: 0, fill, handles: Handles::NONE });
    }
    with_scratch(|s| {
        let (kind, stored) = match compress(s, compression, value) {
            Some(m) => (compression, m),
            None => (Kind::Raw, value.len()),
        };
        let payload = if kind == Kind::Raw { value } else { &s.buf[..stored] };
        let handles = if stored <= 2 * CHUNK {
            let mut inline = [0u64; 2];
            let n = write_chunks(pool, payload, &mut inline)?;
            Handles::Inline(n as u8, inline)
        } else {
            let mut heap = vec![0u64; stored.div_ceil(CHUNK)].into_boxed_slice();
            write_chunks(pool, payload, &mut heap)?;
            Handles::Heap(heap)
        };
        Ok(Stored { kind, nbytes, stored: stored as u64, fill: 0, handles })
    })
}

/// Malloc and write one object per chunk of `payload`, their handles into
/// `handles` (long enough): how many.  On an error every object made is freed again.
fn write_chunks(pool: &Pool, payload: &[u8], handles: &mut [u64]) -> Result<usize, PoolError> {
    let mut made = 0;
    for chunk in payload.chunks(CHUNK) {
        let h = pool.zs_malloc(chunk.len()).and_then(|h| {
            handles[made] = h;
            made += 1;
            pool.zs_obj_write(h, chunk, 0)
        });
        if let Err(e) = h {
            let _ = free(pool, &handles[..made]);
            return Err(e);
        }
    }
    Ok(made)
}

/// Free a value's chunks (those still live; an error for the first that is not).
pub fn free(pool: &Pool, handles: &[u64]) -> Result<(), PoolError> {
    let mut first = Ok(());
    for &h in handles {
        if let Err(e) = pool.zs_free(h) {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

fn corrupt(e: &Stored, why: String) -> PoolError {
    PoolError::Value(format!("a stored {} value {why}", e.kind.name()))
}

/// The payload of `e` (not a Same value) into `into` (exactly `e.stored` long): its chunks, in order.
pub fn read_payload(pool: &Pool, e: &Stored, into: &mut [u8]) -> Result<(), PoolError> {
    let mut at = 0;
    for &h in e.handles.as_slice() {
        let obj = pool.zs_obj_read_begin(h, 0, None, "read")?;
        let n = obj.len();
        if at + n > into.len() {
            return Err(corrupt(e, format!("has more than its {} bytes of payload", e.stored)));
        }
        obj.copy_to(&mut into[at..at + n]);
        at += n;
    }
    if at != into.len() {
        return Err(corrupt(e, format!("has {at} of its {} bytes of payload", e.stored)));
    }
    Ok(())
}

/// The value of `e` into `out` (exactly `e.nbytes` long).
pub fn get(pool: &Pool, e: &Stored, out: &mut [u8]) -> Result<(), PoolError> {
    if out.len() as u64 != e.nbytes {
        return Err(PoolError::Value(format!("a buffer of {} bytes for a value of {}", out.len(), e.nbytes)));
    }
    // an entry's sizes are checked before any buffer is sized by them
    let chunks = e.handles.len() as u64;
    if e.kind != Kind::Same && (e.stored > chunks * CHUNK as u64 || e.stored.div_ceil(CHUNK as u64) != chunks)
    {
        return Err(corrupt(e, format!("of {} bytes of payload has {chunks} chunks", e.stored)));
    }
    let stored = e.stored as usize;
    match e.kind {
        Kind::Same => {
            out.fill(e.fill);
            Ok(())
        }
        Kind::Raw => read_payload(pool, e, out),
        Kind::Lz4 | Kind::Zstd => with_scratch(|s| {
            s.buf.resize(stored.max(s.buf.len()), 0);
            read_payload(pool, e, &mut s.buf[..stored])?;
            let src = &s.buf[..stored];
            let n = if e.kind == Kind::Lz4 {
                // SAFETY: src and out are valid for the lengths given;
                // LZ4_decompress_safe never reads or writes past them
                let n = unsafe {
                    lz4_sys::LZ4_decompress_safe(
                        src.as_ptr().cast(),
                        out.as_mut_ptr().cast(),
                        src.len() as c_int,
                        out.len() as c_int,
                    )
                };
                usize::try_from(n).map_err(|_| corrupt(e, "does not decompress".into()))?
            } else {
                s.zd.decompress(out, src).map_err(|c| {
                    corrupt(e, format!("does not decompress: {}", zstd_safe::get_error_name(c)))
                })?
            };
            if n as u64 != e.nbytes {
                return Err(corrupt(e, format!("decompressed to {n} bytes, not {}", e.nbytes)));
            }
            Ok(())
        }),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::memory::{PCP_BATCH, PCP_HIGH};
    use crate::mm::Memory;
    use crate::pool::PoolConfig;
    use crate::sync::Arc;

    #[test]
    fn values_of_every_kind_come_back() {
        let mem = Arc::new(Memory::new(2048, PCP_HIGH, PCP_BATCH).unwrap());
        let pool =
            Pool::new(PoolConfig { background_work: false, ..PoolConfig::new("store") }, mem, true).unwrap();
        let text: Vec<u8> = (0..300_000).map(|i| b"values in a store "[i % 18]).collect();
        let mut x = 7u32;
        let noise: Vec<u8> = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for (value, comp, kind) in [
            (text.clone(), Kind::Lz4, Kind::Lz4),
            (text.clone(), Kind::Zstd, Kind::Zstd),
            (text.clone(), Kind::Raw, Kind::Raw),
            (noise.clone(), Kind::Lz4, Kind::Raw),
            (vec![9u8; 50_000], Kind::Lz4, Kind::Same),
            (vec![1u8], Kind::Zstd, Kind::Same),
        ] {
            let e = put(&pool, comp, &value).unwrap();
            assert_eq!(e.kind, kind);
            assert_eq!(e.handles.len() as u64, e.stored.div_ceil(CHUNK as u64));
            assert_eq!(matches!(e.handles, Handles::Inline(..)), e.stored <= 2 * CHUNK as u64);
            let mut out = vec![0u8; value.len()];
            get(&pool, &e, &mut out).unwrap();
            assert_eq!(out, value);
            if kind != Kind::Same {
                let mut payload = vec![0u8; e.stored as usize];
                read_payload(&pool, &e, &mut payload).unwrap();
                assert_eq!(payload == value, kind == Kind::Raw);
            }
            free(&pool, e.handles.as_slice()).unwrap();
        }
        assert_eq!(pool.len(), 0);
        assert_eq!(std::mem::size_of::<Stored>(), 48); // what an index pays per value, besides its key
        let e = put(&pool, Kind::Lz4, &text).unwrap();
        pool.zs_obj_write(e.handles.as_slice()[0], &[0xff; 64], 0).unwrap(); // damage: an error, not a panic
        let mut out = vec![0u8; text.len()];
        assert!(get(&pool, &e, &mut out).is_err());
        // sizes that do not match the chunks are refused before anything is sized by them
        let bogus = Stored { stored: 1 << 60, ..e.clone() };
        assert!(matches!(get(&pool, &bogus, &mut out), Err(PoolError::Value(_))));
    }

    #[test]
    fn a_scratch_buffer_grown_past_the_keep_size_is_given_back() {
        let mem = Arc::new(Memory::new(2048, PCP_HIGH, PCP_BATCH).unwrap());
        let pool =
            Pool::new(PoolConfig { background_work: false, ..PoolConfig::new("store") }, mem, true).unwrap();
        let scratch_len = || SCRATCH.with(|c| c.borrow().as_ref().map_or(0, |s| s.buf.len()));
        let small: Vec<u8> = (0..8192).map(|i| b"kept "[i % 5]).collect();
        let e = put(&pool, Kind::Lz4, &small).unwrap();
        assert!(scratch_len() > 0 && scratch_len() <= SCRATCH_KEEP); // kept for the next value
        let large: Vec<u8> = (0..SCRATCH_KEEP * 2).map(|i| b"large value "[i % 12]).collect();
        let big = put(&pool, Kind::Zstd, &large).unwrap();
        assert_eq!(scratch_len(), 0);
        let mut out = vec![0u8; large.len()];
        get(&pool, &big, &mut out).unwrap(); // the gathered payload is small: kept
        assert_eq!(out, large);
        assert!(scratch_len() <= SCRATCH_KEEP);
        free(&pool, e.handles.as_slice()).unwrap();
        free(&pool, big.handles.as_slice()).unwrap();
    }
}
