//! The value codec of `zsmalloc.Store` and the layout of its entries: a
//! value of any size in and out of pool objects, in one call.  The index
//! (key -> entry) lives in the binding, keyed by Python objects; this module
//! owns what an entry is (`Stored`: kind, lengths, the chunks' handles, the
//! first two inline) and does, per value, the same-filled test, the
//! compression, the split into chunks of at most 4096 bytes, and the malloc
//! and copy of each chunk; and back.
//!
//! ```text
//!   value --compress--> payload --split--> [4096][4096] ... [2040][504][56][24]
//!                                             h0    h1        the tail's pieces
//!   kind: same (no object: every byte equal), raw (the payload is the
//!   value: it did not compress), lz4 (a block, no size prefix), zstd (a
//!   standard frame, level 3)
//!
//!   lz4, a value of more than LZ4_BLOCK (256 KiB): its blocks of 256 KiB,
//!   each compressed with the 64 KiB before it (LZ4_DICT) as its dictionary
//!   +-----+----------------+-----+----------------+-- ... --+-----+-------+
//!   | len | block 0        | len | block 1        |         | len | last  |
//!   +-----+----------------+-----+----------------+-- ... --+-----+-------+
//!    u32 LE, the block's compressed length
//! ```
//!
//! Blocks keep a large value's working memory to one block: its payload is
//! written to its chunks as it is compressed (`PieceWriter`) and read back
//! a block at a time (`PayloadReader`), so no buffer the size of the value
//! or of its payload is ever made (for 1 MiB values, a buffer of 1 MiB per
//! value, freed, kept glibc's heap 1 MiB larger for good).  With the 64 KiB
//! before as dictionary a match may reach back across the seam as far as in
//! one block (lz4's window is 64 KiB).  On bench_store's 1 MiB values of
//! kernel-build pages: payloads 0.01% larger than one block's (0.95% for
//! independent blocks) for 3% more time; blocks of 64 KiB cost 33% more time
//! (lz4 compresses with a dictionary more slowly, and blocks of 64 KiB are
//! all seams).
//!
//! The formats are those of `src/zsmalloc/store.py` (python-lz4's block
//! without its size prefix, python-zstandard's frame), so either side reads
//! the other's payloads, and split them the same way (`pieces`): full
//! chunks of 4096 bytes (the huge class: a page each, no waste); a payload
//! of one chunk or less is one object of its size; the tail of a longer one
//! is cut into pieces of the classes that fill a page exactly (2048, 1024,
//! ..., 32 bytes with the object's 8-byte handle header), the last one
//! padded.  A tail in a class of its own would leave that class a part-used
//! zspage per few values: with a thousand 64 KiB values the pool held 9.4%
//! more pages than payload, and 0.5% with the pieces.  Per thread: the LZ4 state, the zstd contexts, a
//! scratch buffer and a list of handles, kept across calls (no allocation per value once warm
//! but its entry's list of more than two handles).

use std::cell::RefCell;
use std::ffi::c_int;

use zstd_safe::{CCtx, CParameter, DCtx};

use crate::lz4::{
    LZ4_compress_fast_continue, LZ4_decompress_safe_usingDict, LZ4_initStream, LZ4_loadDict, LZ4_sizeofState,
};
use crate::pool::size_class::ZS_HANDLE_SIZE;
use crate::pool::{Pool, PoolError};

/// The largest pool object: a chunk.
pub const CHUNK: usize = 4096;
/// The tail's pieces, largest first: the classes of 2048, 1024, ..., 32 bytes, each filling its
/// page exactly, less the object's handle header.
pub const TAIL_PIECES: [usize; 7] = {
    let mut p = [0; 7];
    let mut i = 0;
    while i < 7 {
        p[i] = (2048 >> i) - ZS_HANDLE_SIZE;
        i += 1;
    }
    p
};
const ZSTD_LEVEL: i32 = 3;
/// An lz4 value longer than this is compressed in blocks of this size (see the header).
pub const LZ4_BLOCK: usize = 256 << 10;
/// Each block after the first is compressed with the bytes this far before it as its dictionary.
pub const LZ4_DICT: usize = 64 << 10;
/// A thread's scratch buffer is kept between values up to this size (an lz4 block's
/// bound fits); one grown past it for a large zstd value is given back after that value
/// (else every thread that once stored a value of N bytes would hold N bytes for good)
const SCRATCH_KEEP: usize = LZ4_BLOCK + (8 << 10);

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

/// The objects a payload of `stored` bytes is split into, in order: `(size, used)`, the
/// object's size and how many payload bytes it holds (less than its size only in the last piece).
pub fn pieces(stored: u64) -> Pieces {
    Pieces { left: stored, tail: stored > CHUNK as u64 }
}

/// Whether `handles` objects are what a payload of `stored` bytes is split into
/// (without walking a bogus `stored`: every object holds at most a chunk).
fn pieces_are(stored: u64, handles: usize) -> bool {
    stored <= handles as u64 * CHUNK as u64 && pieces(stored).count() == handles
}

/// The iterator of `pieces`.
#[derive(Clone)]
pub struct Pieces {
    left: u64,
    tail: bool,
}

impl Iterator for Pieces {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let left = self.left;
        let piece = match left {
            0 => return None,
            l if l >= CHUNK as u64 => (CHUNK, CHUNK),
            l if !self.tail => (l as usize, l as usize),
            l => {
                let l = l as usize;
                let last = TAIL_PIECES[TAIL_PIECES.len() - 1];
                TAIL_PIECES.into_iter().find(|&p| p <= l).map_or((last, l), |p| (p, p))
            }
        };
        self.left -= piece.1 as u64;
        Some(piece)
    }
}

/// One thread's working memory.
struct Scratch {
    /// an LZ4_stream_t (LZ4_sizeofState bytes, 8-aligned)
    lz4: Vec<u64>,
    zc: CCtx<'static>,
    zd: DCtx<'static>,
    buf: Vec<u8>,
    /// the handles of a value being written in blocks
    handles: Vec<u64>,
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
                handles: Vec::new(),
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
            lz4_block(&mut s.lz4, value, None, &mut s.buf[..bound]).filter(|&m| m < value.len())
        }
        Kind::Zstd => {
            let bound = zstd_safe::compress_bound(value.len());
            s.buf.resize(bound.max(s.buf.len()), 0);
            s.zc.compress2(&mut s.buf[..], value).ok().filter(|&m| m < value.len())
        }
        Kind::Same | Kind::Raw => None,
    }
}

/// Compress `block` into `dst` (at least its LZ4_compressBound long) as python-lz4's
/// `lz4.block.compress(block, store_size=False, dict=before)` does (a fresh stream, the
/// dictionary loaded, LZ4_compress_fast_continue), so that the model's payloads and ours
/// are the same bytes: the compressed length.
fn lz4_block(state: &mut [u64], block: &[u8], before: Option<&[u8]>, dst: &mut [u8]) -> Option<usize> {
    let (src_len, dst_len) = (c_int::try_from(block.len()).ok()?, c_int::try_from(dst.len()).ok()?);
    // SAFETY: `state` is LZ4_sizeofState() bytes, 8-aligned, which LZ4_initStream resets
    // into a stream; the dictionary stays in place (borrowed) through the compression; src
    // and dst are valid for the lengths given, which the call never passes
    let n = unsafe {
        let stream = LZ4_initStream(state.as_mut_ptr().cast(), std::mem::size_of_val(state));
        if stream.is_null() {
            return None; // a state too small or misaligned: never, as sized above
        }
        if let Some(d) = before {
            LZ4_loadDict(stream, d.as_ptr().cast(), c_int::try_from(d.len()).ok()?);
        }
        LZ4_compress_fast_continue(
            stream,
            block.as_ptr().cast(),
            dst.as_mut_ptr().cast(),
            src_len,
            dst_len,
            1,
        )
    };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// Store `value`, compressed with `compression` (Lz4, Zstd or Raw for none).
/// On an error every chunk already made is freed again.
pub fn put(pool: &Pool, compression: Kind, value: &[u8]) -> Result<Stored, PoolError> {
    let nbytes = value.len() as u64;
    if let Some(fill) = same_byte(value) {
        return Ok(Stored { kind: Kind::Same, nbytes, stored: 0, fill, handles: Handles::NONE });
    }
    with_scratch(|s| {
        if compression == Kind::Lz4 && value.len() > LZ4_BLOCK {
            if let Some((stored, handles)) = put_lz4_blocks(pool, s, value)? {
                return Ok(Stored { kind: Kind::Lz4, nbytes, stored, fill: 0, handles });
            }
            return put_payload(pool, Kind::Raw, nbytes, value);
        }
        match compress(s, compression, value) {
            Some(m) => put_payload(pool, compression, nbytes, &s.buf[..m]),
            None => put_payload(pool, Kind::Raw, nbytes, value),
        }
    })
}

/// The entry of a value of `nbytes` whose payload is `payload`, written to its pieces.
fn put_payload(pool: &Pool, kind: Kind, nbytes: u64, payload: &[u8]) -> Result<Stored, PoolError> {
    let n = pieces(payload.len() as u64).count();
    let handles = if n <= 2 {
        let mut inline = [0u64; 2];
        write_pieces(pool, payload, &mut inline)?;
        Handles::Inline(n as u8, inline)
    } else {
        let mut heap = vec![0u64; n].into_boxed_slice();
        write_pieces(pool, payload, &mut heap)?;
        Handles::Heap(heap)
    };
    Ok(Stored { kind, nbytes, stored: payload.len() as u64, fill: 0, handles })
}

/// Malloc and write the objects of `payload`'s pieces, their handles into `handles`
/// (long enough).  On an error every object made is freed again.
fn write_pieces(pool: &Pool, payload: &[u8], handles: &mut [u64]) -> Result<(), PoolError> {
    let (mut made, mut at) = (0, 0);
    for (size, used) in pieces(payload.len() as u64) {
        let h = pool.zs_malloc(size).and_then(|h| {
            handles[made] = h;
            made += 1;
            pool.zs_obj_write(h, &payload[at..at + used], 0)
        });
        if let Err(e) = h {
            let _ = free(pool, &handles[..made]);
            return Err(e);
        }
        at += used;
    }
    Ok(())
}

/// lz4's payload of a value of more than one block, compressed and written block by
/// block: (its length, the handles of its pieces), or None if it is no smaller than the
/// value (nothing is left in the pool then).  On an error every object made is freed again.
fn put_lz4_blocks(pool: &Pool, s: &mut Scratch, value: &[u8]) -> Result<Option<(u64, Handles)>, PoolError> {
    let Scratch { lz4, buf, handles, .. } = s;
    handles.clear();
    // SAFETY: a pure function of its argument
    let bound = unsafe { lz4_sys::LZ4_compressBound(LZ4_BLOCK as c_int) } as usize;
    buf.resize(bound.max(buf.len()), 0);
    let mut w = PieceWriter { pool, handles, carry: [0; CHUNK], filled: 0 };
    let written = (|| {
        for (i, block) in value.chunks(LZ4_BLOCK).enumerate() {
            let before = (i > 0).then(|| &value[i * LZ4_BLOCK - LZ4_DICT..i * LZ4_BLOCK]);
            let n = lz4_block(lz4, block, before, &mut buf[..bound])
                .ok_or_else(|| PoolError::Value("lz4 could not compress a block".into()))?;
            w.push(&(n as u32).to_le_bytes())?;
            w.push(&buf[..n])?;
            if w.len() >= value.len() as u64 {
                return Ok(None);
            }
        }
        w.finish().map(Some)
    })();
    match written {
        Ok(Some(stored)) => Ok(Some((stored, Handles::from(&w.handles[..])))),
        Ok(None) => free(pool, w.handles).map(|()| None),
        Err(e) => {
            let _ = free(pool, w.handles);
            Err(e)
        }
    }
}

/// A payload written to its pieces as it comes: each full chunk as soon as it is, the
/// tail's pieces at the end (`pieces` puts the full chunks first).
struct PieceWriter<'a> {
    pool: &'a Pool,
    /// the objects made so far, in order
    handles: &'a mut Vec<u64>,
    /// the bytes not yet in an object
    carry: [u8; CHUNK],
    filled: usize,
}

impl PieceWriter<'_> {
    fn len(&self) -> u64 {
        (self.handles.len() * CHUNK + self.filled) as u64
    }

    fn push(&mut self, mut bytes: &[u8]) -> Result<(), PoolError> {
        while !bytes.is_empty() {
            if self.filled == 0 && bytes.len() >= CHUNK {
                write_object(self.pool, self.handles, CHUNK, &bytes[..CHUNK])?;
                bytes = &bytes[CHUNK..];
                continue;
            }
            let n = (CHUNK - self.filled).min(bytes.len());
            self.carry[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == CHUNK {
                write_object(self.pool, self.handles, CHUNK, &self.carry)?;
                self.filled = 0;
            }
        }
        Ok(())
    }

    /// Write the tail; the payload's length.
    fn finish(&mut self) -> Result<u64, PoolError> {
        let stored = self.len();
        let mut at = 0;
        for (size, used) in pieces(stored).skip(self.handles.len()) {
            write_object(self.pool, self.handles, size, &self.carry[at..at + used])?;
            at += used;
        }
        Ok(stored)
    }
}

/// Malloc an object of `size`, note its handle, write `bytes` to it.
fn write_object(pool: &Pool, handles: &mut Vec<u64>, size: usize, bytes: &[u8]) -> Result<(), PoolError> {
    let h = pool.zs_malloc(size)?;
    handles.push(h);
    pool.zs_obj_write(h, bytes, 0)
}

/// A payload read from its pieces as it is wanted: an object that the read wants whole
/// is copied straight to it, one it wants part of (or the padded last piece of a tail)
/// through `piece`, the caller's buffer: a chunk long for reads that cut objects, the
/// smallest piece's length for a read of the whole payload.
struct PayloadReader<'a> {
    pool: &'a Pool,
    handles: std::slice::Iter<'a, u64>,
    pieces: Pieces,
    piece: &'a mut [u8],
    at: usize,
    len: usize,
    left: u64,
    e: &'a Stored,
}

impl<'a> PayloadReader<'a> {
    /// The reader of `e`'s payload, once its pieces are checked against its objects.
    fn new(pool: &'a Pool, e: &'a Stored, piece: &'a mut [u8]) -> Result<PayloadReader<'a>, PoolError> {
        if !pieces_are(e.stored, e.handles.len()) {
            return Err(corrupt(
                e,
                format!("of {} bytes of payload has {} objects", e.stored, e.handles.len()),
            ));
        }
        let (handles, pieces) = (e.handles.as_slice().iter(), pieces(e.stored));
        Ok(PayloadReader { pool, handles, pieces, piece, at: 0, len: 0, left: e.stored, e })
    }

    /// The next `dst.len()` bytes of the payload (an error past its end).
    fn read(&mut self, mut dst: &mut [u8]) -> Result<(), PoolError> {
        if dst.len() as u64 > self.left {
            return Err(corrupt(self.e, "is shorter than its blocks say".into()));
        }
        self.left -= dst.len() as u64;
        while !dst.is_empty() {
            if self.at == self.len {
                let (Some(&h), Some((size, used))) = (self.handles.next(), self.pieces.next()) else {
                    return Err(corrupt(self.e, "is shorter than its blocks say".into()));
                };
                let obj = self.pool.zs_obj_read_begin(h, 0, None, "read")?;
                if obj.len() != size {
                    return Err(corrupt(
                        self.e,
                        format!("has an object of {} bytes where its piece is {size}", obj.len()),
                    ));
                }
                if used == size && dst.len() >= used {
                    obj.copy_to(&mut dst[..used]);
                    dst = &mut dst[used..];
                    continue;
                }
                if size > self.piece.len() {
                    return Err(corrupt(self.e, format!("has a piece of {size} bytes read in part")));
                }
                obj.copy_to(&mut self.piece[..size]);
                (self.at, self.len) = (0, used);
            }
            let n = (self.len - self.at).min(dst.len());
            dst[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
            self.at += n;
            dst = &mut dst[n..];
        }
        Ok(())
    }
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

/// The payload of `e` (not a Same value) into `into` (exactly `e.stored` long): its pieces, in order.
pub fn read_payload(pool: &Pool, e: &Stored, into: &mut [u8]) -> Result<(), PoolError> {
    if into.len() as u64 != e.stored {
        return Err(corrupt(e, format!("of {} bytes of payload read into {}", e.stored, into.len())));
    }
    // a whole payload is read object by object but for a tail's padded last piece, the smallest
    let mut pad = [0u8; TAIL_PIECES[TAIL_PIECES.len() - 1]];
    PayloadReader::new(pool, e, &mut pad)?.read(into)
}

/// The value of `e` into `out` (exactly `e.nbytes` long).
pub fn get(pool: &Pool, e: &Stored, out: &mut [u8]) -> Result<(), PoolError> {
    if out.len() as u64 != e.nbytes {
        return Err(PoolError::Value(format!("a buffer of {} bytes for a value of {}", out.len(), e.nbytes)));
    }
    // an entry's sizes are checked before any buffer is sized by them
    if e.kind != Kind::Same && !pieces_are(e.stored, e.handles.len()) {
        return Err(corrupt(e, format!("of {} bytes of payload has {} objects", e.stored, e.handles.len())));
    }
    let stored = e.stored as usize;
    match e.kind {
        Kind::Same => {
            out.fill(e.fill);
            Ok(())
        }
        Kind::Raw => read_payload(pool, e, out),
        Kind::Lz4 if out.len() > LZ4_BLOCK => with_scratch(|s| get_lz4_blocks(pool, e, &mut s.buf, out)),
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

/// The value of an lz4 entry of more than one block into `out`, a block at a time,
/// each decompressed with the LZ4_DICT bytes before it (in `out`) as its dictionary;
/// `buf` holds a block's payload and the piece a block boundary cuts.
fn get_lz4_blocks(pool: &Pool, e: &Stored, buf: &mut Vec<u8>, out: &mut [u8]) -> Result<(), PoolError> {
    // SAFETY: a pure function of its argument
    let bound = unsafe { lz4_sys::LZ4_compressBound(LZ4_BLOCK as c_int) } as usize;
    buf.resize((bound + CHUNK).max(buf.len()), 0);
    let (buf, piece) = buf.split_at_mut(bound);
    let mut r = PayloadReader::new(pool, e, piece)?;
    for start in (0..out.len()).step_by(LZ4_BLOCK) {
        let mut len = [0u8; 4];
        r.read(&mut len)?;
        let n = u32::from_le_bytes(len) as usize;
        if n > bound {
            return Err(corrupt(e, format!("has a block of {n} bytes")));
        }
        r.read(&mut buf[..n])?;
        let (done, rest) = out.split_at_mut(start);
        let dict = &done[start.saturating_sub(LZ4_DICT)..];
        let want = rest.len().min(LZ4_BLOCK);
        // SAFETY: the source, the destination and the dictionary (the bytes before, already
        // decompressed) are valid for the lengths given; the call never reads or writes past them
        let m = unsafe {
            LZ4_decompress_safe_usingDict(
                buf.as_ptr().cast(),
                rest.as_mut_ptr().cast(),
                n as c_int,
                want as c_int,
                dict.as_ptr().cast(),
                dict.len() as c_int,
            )
        };
        if usize::try_from(m).ok() != Some(want) {
            return Err(corrupt(e, format!("has a block that does not decompress to {want} bytes")));
        }
    }
    if r.left != 0 {
        return Err(corrupt(e, format!("has {} bytes past its blocks", r.left)));
    }
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::memory::{PCP_BATCH, PCP_HIGH};
    use crate::mm::Memory;
    use crate::pool::PoolConfig;
    use crate::sync::Arc;

    /// `n` bytes of xorshift noise from `seed`.
    fn noise(mut seed: u32, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect()
    }

    #[test]
    fn values_of_every_kind_come_back() {
        let mem = Arc::new(Memory::new(2048, PCP_HIGH, PCP_BATCH).unwrap());
        let pool =
            Pool::new(PoolConfig { background_work: false, ..PoolConfig::new("store") }, mem, true).unwrap();
        let text: Vec<u8> = (0..300_000).map(|i| b"values in a store "[i % 18]).collect();
        let noise = noise(7, 10_000);
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
            assert_eq!(e.handles.len(), pieces(e.stored).count());
            assert_eq!(matches!(e.handles, Handles::Inline(..)), e.handles.len() <= 2);
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
    fn a_large_lz4_value_is_kept_in_blocks_with_no_buffer_of_its_size() {
        let mem = Arc::new(Memory::new(4096, PCP_HIGH, PCP_BATCH).unwrap());
        let pool =
            Pool::new(PoolConfig { background_work: false, ..PoolConfig::new("store") }, mem, true).unwrap();
        let scratch_len = || SCRATCH.with(|c| c.borrow().as_ref().map_or(0, |s| s.buf.len()));
        // text with a repeat 40 KiB back, so that blocks gain from the bytes before
        let vocabulary =
            ["zspage ", "handle ", "size_class ", "migrate ", "isolate ", "putback ", "zs_free "];
        let words: Vec<u8> =
            noise(1, 6_000).iter().flat_map(|&b| vocabulary[b as usize % 7].bytes()).take(40_000).collect();
        let text: Vec<u8> = words.iter().cycle().take(1 << 20).copied().collect();
        for len in [LZ4_BLOCK + 1, 2 * LZ4_BLOCK, 3 * LZ4_BLOCK + 17, 1 << 20] {
            let value = &text[..len];
            let e = put(&pool, Kind::Lz4, value).unwrap();
            assert_eq!(e.kind, Kind::Lz4);
            assert!(e.stored < len as u64 / 2, "{len}: {}", e.stored);
            assert_eq!(e.handles.len(), pieces(e.stored).count());
            assert!(scratch_len() <= SCRATCH_KEEP, "a buffer of {} bytes", scratch_len());
            let mut out = vec![0u8; len];
            get(&pool, &e, &mut out).unwrap();
            assert!(out == value, "{len}");
            assert!(scratch_len() <= SCRATCH_KEEP);
            // each block's length, then the block
            let mut payload = vec![0u8; e.stored as usize];
            read_payload(&pool, &e, &mut payload).unwrap();
            let (mut at, mut blocks) = (0, 0);
            while at < payload.len() {
                at += 4 + u32::from_le_bytes(payload[at..at + 4].try_into().unwrap()) as usize;
                blocks += 1;
            }
            assert_eq!((at, blocks), (payload.len(), len.div_ceil(LZ4_BLOCK)));
            free(&pool, e.handles.as_slice()).unwrap();
        }
        assert_eq!(pool.len(), 0);
        // blocks whose payload is one object of less than a chunk
        let tiny: Vec<u8> = b"ab".iter().copied().cycle().take(LZ4_BLOCK + 5000).collect();
        let e = put(&pool, Kind::Lz4, &tiny).unwrap();
        assert!(e.stored < CHUNK as u64 && e.handles.len() == 1, "{e:?}");
        let mut out = vec![0u8; tiny.len()];
        get(&pool, &e, &mut out).unwrap();
        assert!(out == tiny);
        free(&pool, e.handles.as_slice()).unwrap();
        // a large value that does not compress is kept raw, its blocks' objects freed again
        let noise = noise(3, 3 * LZ4_BLOCK);
        let e = put(&pool, Kind::Lz4, &noise).unwrap();
        assert_eq!((e.kind, e.stored, pool.len()), (Kind::Raw, noise.len() as u64, e.handles.len()));
        free(&pool, e.handles.as_slice()).unwrap();
        // a damaged block length or block is an error, not a panic
        let e = put(&pool, Kind::Lz4, &text[..3 * LZ4_BLOCK]).unwrap();
        let mut out = vec![0u8; 3 * LZ4_BLOCK];
        pool.zs_obj_write(e.handles.as_slice()[0], &[0xff; 4], 0).unwrap();
        assert!(matches!(get(&pool, &e, &mut out), Err(PoolError::Value(_))));
        pool.zs_obj_write(e.handles.as_slice()[0], &[0x10, 0, 0, 0, 0xff, 0xff], 0).unwrap();
        assert!(matches!(get(&pool, &e, &mut out), Err(PoolError::Value(_))));
        free(&pool, e.handles.as_slice()).unwrap();
    }

    #[test]
    fn a_tail_is_cut_into_pieces_that_fill_their_pages() {
        assert_eq!(TAIL_PIECES, [2040, 1016, 504, 248, 120, 56, 24]);
        assert_eq!(pieces(0).count(), 0);
        assert_eq!(pieces(1000).collect::<Vec<_>>(), [(1000, 1000)]);
        assert_eq!(pieces(4096).collect::<Vec<_>>(), [(4096, 4096)]);
        assert_eq!(
            pieces(4096 + 2040 + 130).collect::<Vec<_>>(),
            [(4096, 4096), (2040, 2040), (120, 120), (24, 10)]
        );
        for stored in (0..3 * 4096 + 10).step_by(7) {
            let p: Vec<_> = pieces(stored).collect();
            assert_eq!(p.iter().map(|&(_, used)| used as u64).sum::<u64>(), stored);
            assert!(p.iter().all(|&(size, used)| used <= size && size <= CHUNK && used > 0));
            if stored > CHUNK as u64 {
                let tail = &p[stored as usize / CHUNK..];
                assert!(tail.iter().all(|&(size, _)| TAIL_PIECES.contains(&size)), "{stored}: {p:?}");
                assert!(tail.iter().map(|&(size, used)| size - used).sum::<usize>() < 24);
            }
        }
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
