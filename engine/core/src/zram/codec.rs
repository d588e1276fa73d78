//! zram's compressors (the kernel's zcomp): one configured algorithm per
//! priority, each compressing a 4 KiB page into a caller's buffer and
//! decompressing back into a caller's page, with no allocation per call.
//!
//! | name      | library (crate)                 | stored form                                    |
//! |-----------|---------------------------------|------------------------------------------------|
//! | `lz4`     | liblz4 (`lz4-sys`)              | an LZ4 block, no size prefix; level > 1 is the acceleration |
//! | `lz4-kernel` | the kernel's lib/lz4 compressor ([`lz4_kernel`](super::lz4_kernel)) | the same block, the kernel's bytes; decoded by liblz4 |
//! | `lz4hc`   | liblz4's HC mode (`lz4-sys`)    | the same block format, levels 1..12 (9)        |
//! | `zstd`    | libzstd (`zstd-safe`), or one loaded at run time ([`zstd_lib`](super::zstd_lib)) | a frame as [`ZstdFrame`] says; levels 1..22 (3); an optional dictionary |
//! | `deflate` | zlib (`flate2` over `libz-sys`) | raw deflate, levels 0..9 (6)                   |
//!
//! These are the C libraries that python-lz4, python-zstandard and CPython's
//! zlib wrap, configured as the model's codecs (`zsmalloc/zram/codecs.py`)
//! configure them.  One difference: LZ4 here is the one-shot
//! `LZ4_compress_fast` that the kernel's lz4 backend calls, where python-lz4
//! compresses through the streaming API (`LZ4_compress_fast_continue`);
//! the two can choose different matches, so a page may come out a few bytes
//! apart.  zstd's bytes depend on libzstd's version too: a spec that names
//! a `library` compresses through that libzstd, as the kernel's zram calls
//! its lib/zstd, in the kernel's frames only (`page`, `crypto`).
//!
//! Working memory (the LZ4 and LZ4HC states, zstd's contexts, zlib's
//! streams) lives in a [`Contexts`] stack per codec: a call pops one, or makes
//! one the first time that many threads compress at once, and pushes it back.
//! The stack's lock is held for the pop and the push only.
//!
//! A compression that does not fit below `limit` bytes returns `None`: zram
//! then stores the page whole (a huge page).  LZ4 is told the limit and
//! stops as soon as it passes it (its output is exactly what it would be
//! with room to spare); zstd and zlib may need room beyond their final
//! size while they work, so they get the whole buffer and the limit is
//! applied to what they made.

use std::ffi::{c_int, c_void};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use zstd_safe::{CCtx, CParameter, DCtx, DParameter, FrameFormat, Strategy};

use super::lz4_kernel::{self, HashTable};
use super::zstd_lib::{LibContext, ZstdLibrary};
use crate::lz4::{
    LZ4_compress_HC_extStateHC, LZ4_compress_fast_extState, LZ4_sizeofState, LZ4_sizeofStateHC,
    LZ4_versionNumber,
};
use crate::sync::Mutex;

pub const PAGE_SIZE: usize = 4096;
/// Room for any codec's output of a page (the largest bound, zstd's, is
/// below PAGE_SIZE + 128): the buffer [`Codec::compress`] writes into.
pub const COMPRESS_BOUND: usize = PAGE_SIZE + 512;

/// The compression algorithms, by their `comp_algorithm` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Lz4,
    Lz4Kernel,
    Lz4hc,
    Zstd,
    Deflate,
}

impl Algorithm {
    /// in the order `comp_algorithm` lists them: the kernel's names, then `lz4-kernel`
    pub const ALL: [Algorithm; 5] =
        [Algorithm::Lz4, Algorithm::Lz4hc, Algorithm::Zstd, Algorithm::Deflate, Algorithm::Lz4Kernel];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Lz4 => "lz4",
            Algorithm::Lz4Kernel => "lz4-kernel",
            Algorithm::Lz4hc => "lz4hc",
            Algorithm::Zstd => "zstd",
            Algorithm::Deflate => "deflate",
        }
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Algorithm, String> {
        Algorithm::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
            format!("unknown compression algorithm {s:?}; available: {names:?}")
        })
    }
}

/// The versions of the C libraries the codecs are, as "major.minor.release":
/// (liblz4, libzstd).  A page's compressed bytes depend on them.
pub fn library_versions() -> (String, String) {
    // SAFETY: a constant of liblz4
    let v = unsafe { LZ4_versionNumber() };
    (format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100), zstd_safe::version_string().to_string())
}

/// How a zstd page is framed and tuned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ZstdFrame {
    /// this project's own: no magic number, content size, checksum or
    /// dictionary id (the page size is known), parameters for a source of
    /// unknown size: 5 bytes a page less than the kernel's
    #[default]
    Magicless,
    /// zram's zstd backend since 6.12: a standard frame with the content
    /// size (and the dictionary's id), parameters tuned for a 4 KiB source
    /// (`zstd_get_params(level, PAGE_SIZE)`)
    Page,
    /// zram through the crypto API before 6.12 (crypto/zstd.c): a standard
    /// frame with the content size, parameters for a source of unknown
    /// size (`zstd_get_params(3, 0)`)
    Crypto,
}

impl ZstdFrame {
    pub const NAMES: [&'static str; 3] = ["magicless", "page", "crypto"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn from_name(name: &str) -> Option<ZstdFrame> {
        [ZstdFrame::Magicless, ZstdFrame::Page, ZstdFrame::Crypto].into_iter().find(|f| f.name() == name)
    }
}

/// An algorithm and its parameters (zram's `algorithm_params`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecSpec {
    pub algorithm: Algorithm,
    /// None: the algorithm's default
    pub level: Option<i32>,
    /// zstd only
    pub dictionary: Option<Vec<u8>>,
    /// zstd only
    pub frame: ZstdFrame,
    /// zstd only: a libzstd to load and compress with (None: the one linked in)
    pub library: Option<PathBuf>,
}

impl CodecSpec {
    pub fn new(algorithm: Algorithm) -> CodecSpec {
        CodecSpec { algorithm, level: None, dictionary: None, frame: ZstdFrame::Magicless, library: None }
    }
}

/// An LZ4 or LZ4HC state: 8-byte aligned memory of the size liblz4 asks.
struct Lz4State(Vec<u64>);

impl Lz4State {
    /// Zeroed memory; the compressor initialises it on every call.
    fn new(bytes: c_int) -> Lz4State {
        Lz4State(vec![0u64; (bytes as usize).div_ceil(8)])
    }
    fn ptr(&mut self) -> *mut c_void {
        self.0.as_mut_ptr().cast()
    }
}

/// One thread's working memory for one codec.
enum Context {
    Lz4(Lz4State),
    Lz4Kernel(HashTable),
    Lz4hc(Lz4State),
    Zstd(Box<(CCtx<'static>, DCtx<'static>)>),
    ZstdLib(Box<LibContext>),
    Deflate(Box<(Compress, Decompress)>),
}

// SAFETY: a context is used by one thread at a time (popped from the stack,
// pushed back after the call); zstd's and zlib's contexts (a loaded
// libzstd's too: static contexts in workspaces the context owns) and
// liblz4's states hold no thread-affine data, only memory.
unsafe impl Send for Context {}

/// The free contexts of a codec.
struct Contexts(Mutex<Vec<Context>>);

/// One configured algorithm.
pub struct Codec {
    pub algorithm: Algorithm,
    /// the level in use (None for lz4 at its default acceleration)
    pub level: Option<i32>,
    dictionary: Option<Vec<u8>>,
    frame: ZstdFrame,
    library: Option<Arc<ZstdLibrary>>,
    contexts: Contexts,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Codec({}, level {:?})", self.algorithm.name(), self.level)
    }
}

impl Codec {
    /// A codec of `spec`: its level checked against the algorithm's range.
    pub fn new(spec: &CodecSpec) -> Result<Codec, String> {
        let name = spec.algorithm.name();
        if spec.dictionary.is_some() && spec.algorithm != Algorithm::Zstd {
            return Err(format!("{name} does not take a dictionary here (only zstd does)"));
        }
        if spec.frame != ZstdFrame::Magicless && spec.algorithm != Algorithm::Zstd {
            return Err(format!("{name} has no frame to choose (only zstd has)"));
        }
        if spec.frame == ZstdFrame::Crypto && spec.level.is_some_and(|l| l != 3) {
            return Err("the crypto API's zstd runs at level 3 only".into());
        }
        let library = match &spec.library {
            None => None,
            Some(_) if spec.algorithm != Algorithm::Zstd => {
                return Err(format!("{name} takes no zstd library (only zstd does)"));
            }
            Some(_) if spec.frame == ZstdFrame::Magicless => {
                return Err(
                    "a loaded libzstd makes the kernel's frames ('page', 'crypto'), not 'magicless'".into()
                );
            }
            Some(_) if spec.dictionary.is_some() => {
                return Err("a zstd dictionary is not supported with a loaded libzstd".into());
            }
            Some(path) => Some(ZstdLibrary::open(path)?),
        };
        let in_range = |default: i32, lo: i32, hi: i32| -> Result<Option<i32>, String> {
            let level = spec.level.unwrap_or(default);
            if !(lo..=hi).contains(&level) {
                return Err(format!("{name} level must be within {lo}..{hi}, not {level}"));
            }
            Ok(Some(level))
        };
        let level = match spec.algorithm {
            Algorithm::Lz4 | Algorithm::Lz4Kernel => spec.level.filter(|&l| l > 1),
            Algorithm::Lz4hc => in_range(9, 1, 12)?,
            Algorithm::Zstd => in_range(3, 1, zstd_safe::max_c_level())?,
            Algorithm::Deflate => in_range(6, 0, 9)?,
        };
        let codec = Codec {
            algorithm: spec.algorithm,
            level,
            dictionary: spec.dictionary.clone(),
            frame: spec.frame,
            library,
            contexts: Contexts(Mutex::new(Vec::new())),
        };
        // a first context now: a bad dictionary is refused here, not on a write
        let ctx = codec.new_context()?;
        codec.contexts.0.lock().push(ctx);
        Ok(codec)
    }

    fn new_context(&self) -> Result<Context, String> {
        Ok(match self.algorithm {
            // SAFETY: plain size queries of liblz4
            Algorithm::Lz4 => Context::Lz4(Lz4State::new(unsafe { LZ4_sizeofState() })),
            Algorithm::Lz4Kernel => Context::Lz4Kernel(HashTable::default()),
            // SAFETY: as above
            Algorithm::Lz4hc => Context::Lz4hc(Lz4State::new(unsafe { LZ4_sizeofStateHC() })),
            Algorithm::Zstd => match &self.library {
                None => Context::Zstd(Box::new(self.zstd_contexts()?)),
                Some(lib) => {
                    let params = lib.params(self.level.unwrap_or(3), self.source_size_hint());
                    Context::ZstdLib(Box::new(lib.context(params)?))
                }
            },
            Algorithm::Deflate => {
                let level = Compression::new(self.level.unwrap_or(6) as u32);
                Context::Deflate(Box::new((
                    Compress::new_with_window_bits(level, false, 15),
                    Decompress::new_with_window_bits(false, 15),
                )))
            }
        })
    }

    /// zstd's contexts, configured as the model's `ZstdCompressionParameters.from_level`
    /// for the frame chosen.
    fn zstd_contexts(&self) -> Result<(CCtx<'static>, DCtx<'static>), String> {
        let level = self.level.unwrap_or(3);
        let err = |e: usize| format!("zstd: {}", zstd_safe::get_error_name(e));
        let mut c = CCtx::try_create().ok_or("zstd: no memory for a context")?;
        let mut d = DCtx::try_create().ok_or("zstd: no memory for a context")?;
        // SAFETY: a pure function of its arguments in libzstd
        let p = unsafe { zstd_sys::ZSTD_getCParams(level, self.source_size_hint(), 0) };
        let standard = self.frame != ZstdFrame::Magicless;
        let format = if standard { FrameFormat::One } else { FrameFormat::Magicless };
        let strategy = match p.strategy as u32 {
            1 => Strategy::ZSTD_fast,
            2 => Strategy::ZSTD_dfast,
            3 => Strategy::ZSTD_greedy,
            4 => Strategy::ZSTD_lazy,
            5 => Strategy::ZSTD_lazy2,
            6 => Strategy::ZSTD_btlazy2,
            7 => Strategy::ZSTD_btopt,
            8 => Strategy::ZSTD_btultra,
            _ => Strategy::ZSTD_btultra2,
        };
        for param in [
            CParameter::Format(format),
            CParameter::ContentSizeFlag(standard),
            CParameter::ChecksumFlag(false),
            CParameter::DictIdFlag(standard),
            CParameter::WindowLog(p.windowLog),
            CParameter::ChainLog(p.chainLog),
            CParameter::HashLog(p.hashLog),
            CParameter::SearchLog(p.searchLog),
            CParameter::MinMatch(p.minMatch),
            CParameter::TargetLength(p.targetLength),
            CParameter::Strategy(strategy),
        ] {
            c.set_parameter(param).map_err(err)?;
        }
        d.set_parameter(DParameter::Format(format)).map_err(err)?;
        if let Some(dict) = &self.dictionary {
            c.load_dictionary(dict).map_err(err)?;
            d.load_dictionary(dict).map_err(err)?;
        }
        Ok((c, d))
    }

    /// The source size zstd's parameters are chosen for: a page for zram's backend, else unknown.
    fn source_size_hint(&self) -> u64 {
        if self.frame == ZstdFrame::Page {
            PAGE_SIZE as u64
        } else {
            0
        }
    }

    /// The libzstd loaded for this codec, if any.
    pub fn library(&self) -> Option<&ZstdLibrary> {
        self.library.as_deref()
    }

    /// Run `f` with a context of this codec.
    fn with_context<R>(&self, f: impl FnOnce(&mut Context) -> R) -> R {
        let popped = self.contexts.0.lock().pop();
        let mut ctx = match popped {
            Some(ctx) => ctx,
            // configured and checked in new(): making another cannot fail
            // but for memory, which the first one already had
            None => self.new_context().expect("a codec context like the first"),
        };
        let r = f(&mut ctx);
        self.contexts.0.lock().push(ctx);
        r
    }

    /// Compress the page into `out` (COMPRESS_BOUND bytes): its length, or
    /// None if it does not come out shorter than `limit` bytes.
    pub fn compress(&self, page: &[u8], out: &mut [u8; COMPRESS_BOUND], limit: usize) -> Option<usize> {
        debug_assert!(page.len() == PAGE_SIZE && limit <= COMPRESS_BOUND);
        let cap = limit.saturating_sub(1);
        let n = self.with_context(|ctx| match ctx {
            Context::Lz4(state) => {
                let accel = self.level.unwrap_or(1);
                // SAFETY: the state is LZ4_sizeofState() bytes and 8-aligned
                // (the call initialises it); src and dst are valid for the
                // lengths given; liblz4 writes at most `cap` bytes into dst
                unsafe {
                    LZ4_compress_fast_extState(
                        state.ptr(),
                        page.as_ptr().cast(),
                        out.as_mut_ptr().cast(),
                        page.len() as c_int,
                        cap as c_int,
                        accel,
                    ) as usize
                }
            }
            // the kernel compresses without a limit (zram gives it two pages
            // of room) and zram then compares the length with its own
            Context::Lz4Kernel(table) => {
                let accel = self.level.unwrap_or(1) as u32;
                lz4_kernel::lz4_compress_fast(page, &mut out[..], table, accel)
            }
            Context::Lz4hc(state) => {
                // SAFETY: as above, with an LZ4_sizeofStateHC() state, which
                // LZ4_compress_HC_extStateHC initialises itself
                unsafe {
                    LZ4_compress_HC_extStateHC(
                        state.ptr(),
                        page.as_ptr().cast(),
                        out.as_mut_ptr().cast(),
                        page.len() as c_int,
                        cap as c_int,
                        self.level.unwrap_or(9),
                    ) as usize
                }
            }
            Context::Zstd(z) => z.0.compress2(&mut out[..], page).unwrap_or(0),
            Context::ZstdLib(z) => z.compress(&mut out[..], page).unwrap_or(0),
            Context::Deflate(z) => {
                let c = &mut z.0;
                c.reset();
                match c.compress(page, &mut out[..], FlushCompress::Finish) {
                    Ok(Status::StreamEnd) => c.total_out() as usize,
                    _ => 0,
                }
            }
        });
        (n > 0 && n <= cap).then_some(n)
    }

    /// Decompress `src` into the 4096-byte `page`; an error unless it comes back whole.
    pub fn decompress(&self, src: &[u8], page: &mut [u8]) -> Result<(), String> {
        debug_assert_eq!(page.len(), PAGE_SIZE);
        let name = self.algorithm.name();
        let n = self.with_context(|ctx| match ctx {
            Context::Lz4(_) | Context::Lz4Kernel(_) | Context::Lz4hc(_) => {
                // SAFETY: src and page are valid for the lengths given;
                // LZ4_decompress_safe never reads or writes past them
                let n = unsafe {
                    lz4_sys::LZ4_decompress_safe(
                        src.as_ptr().cast(),
                        page.as_mut_ptr().cast(),
                        src.len() as c_int,
                        page.len() as c_int,
                    )
                };
                usize::try_from(n).map_err(|_| format!("does not decompress with {name}: corrupt block"))
            }
            Context::Zstd(z) => {
                z.1.decompress(page, src)
                    .map_err(|e| format!("does not decompress with {name}: {}", zstd_safe::get_error_name(e)))
            }
            Context::ZstdLib(z) => {
                z.decompress(page, src).map_err(|e| format!("does not decompress with {name}: {e}"))
            }
            Context::Deflate(z) => {
                let d = &mut z.1;
                d.reset(false);
                match d.decompress(src, page, FlushDecompress::Finish) {
                    Ok(Status::StreamEnd) => Ok(d.total_out() as usize),
                    Ok(_) => Err(format!("does not decompress with {name}: truncated or too long")),
                    Err(e) => Err(format!("does not decompress with {name}: {e}")),
                }
            }
        })?;
        if n != PAGE_SIZE {
            return Err(format!("decompressed to {n} bytes with {name}"));
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn text_page(seed: u8) -> Vec<u8> {
        (0..PAGE_SIZE).map(|i| b"the quick brown fox "[(i * 7 + seed as usize) % 20]).collect()
    }

    #[test]
    fn every_algorithm_round_trips() {
        for a in Algorithm::ALL {
            let codec = Codec::new(&CodecSpec::new(a)).unwrap();
            let page = text_page(3);
            let mut out = [0u8; COMPRESS_BOUND];
            let n = codec.compress(&page, &mut out, PAGE_SIZE).unwrap_or_else(|| panic!("{}", a.name()));
            assert!(n < 600, "{} gave {n} bytes", a.name());
            let mut back = [0u8; PAGE_SIZE];
            codec.decompress(&out[..n], &mut back).unwrap();
            assert_eq!(&back[..], &page[..]);
            // damaged input is an error, never a panic or a short page
            assert!(codec.decompress(&out[..n / 2], &mut back).is_err(), "{}", a.name());
        }
    }

    #[test]
    fn random_bytes_do_not_fit() {
        let mut x: u64 = 88172645463325252;
        let page: Vec<u8> = (0..PAGE_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for a in Algorithm::ALL {
            let codec = Codec::new(&CodecSpec::new(a)).unwrap();
            let mut out = [0u8; COMPRESS_BOUND];
            assert_eq!(codec.compress(&page, &mut out, 3264), None, "{}", a.name());
        }
    }

    #[test]
    fn levels_and_dictionaries_are_checked() {
        let bad = |a, level| Codec::new(&CodecSpec { level: Some(level), ..CodecSpec::new(a) });
        assert!(bad(Algorithm::Lz4hc, 13).is_err());
        assert!(bad(Algorithm::Zstd, 0).is_err());
        assert!(bad(Algorithm::Deflate, 10).is_err());
        let dict = Some(b"some dictionary content".to_vec());
        assert!(
            Codec::new(&CodecSpec { dictionary: dict.clone(), ..CodecSpec::new(Algorithm::Lz4) }).is_err()
        );
        let z = Codec::new(&CodecSpec { dictionary: dict, ..CodecSpec::new(Algorithm::Zstd) }).unwrap();
        let mut out = [0u8; COMPRESS_BOUND];
        let n = z.compress(&text_page(1), &mut out, PAGE_SIZE).unwrap();
        let mut back = [0u8; PAGE_SIZE];
        z.decompress(&out[..n], &mut back).unwrap();
        assert_eq!(&back[..], &text_page(1)[..]);
        assert_eq!("zstd".parse::<Algorithm>(), Ok(Algorithm::Zstd));
        assert!("lzo".parse::<Algorithm>().is_err());
    }

    #[test]
    fn zstd_frames_as_the_kernel_stores_them() {
        let page = text_page(2);
        let mut sizes = Vec::new();
        for frame in [ZstdFrame::Magicless, ZstdFrame::Page, ZstdFrame::Crypto] {
            let z = Codec::new(&CodecSpec { frame, ..CodecSpec::new(Algorithm::Zstd) }).unwrap();
            let mut out = [0u8; COMPRESS_BOUND];
            let n = z.compress(&page, &mut out, PAGE_SIZE).unwrap();
            let mut back = [0u8; PAGE_SIZE];
            z.decompress(&out[..n], &mut back).unwrap();
            assert_eq!(&back[..], &page[..]);
            // a standard frame starts with the magic number and names its content size
            let standard = out[..4] == [0x28, 0xb5, 0x2f, 0xfd];
            assert_eq!(standard, frame != ZstdFrame::Magicless, "{}", frame.name());
            if standard {
                // SAFETY: a pure function of the bytes given
                let size = unsafe { zstd_sys::ZSTD_getFrameContentSize(out.as_ptr().cast(), n) };
                assert_eq!(size, PAGE_SIZE as u64);
            }
            sizes.push(n);
        }
        // the magic (4 bytes) and the content size cost bytes a page
        assert!(sizes[1] > sizes[0] && sizes[2] > sizes[0], "{sizes:?}");
        // only zstd has frames; the crypto API's is level 3 only
        assert!(Codec::new(&CodecSpec { frame: ZstdFrame::Page, ..CodecSpec::new(Algorithm::Lz4) }).is_err());
        let crypto = |level| {
            Codec::new(&CodecSpec {
                frame: ZstdFrame::Crypto,
                level: Some(level),
                ..CodecSpec::new(Algorithm::Zstd)
            })
        };
        assert!(crypto(5).is_err());
        assert!(crypto(3).is_ok());
        assert_eq!(ZstdFrame::from_name("page"), Some(ZstdFrame::Page));
        assert_eq!(library_versions(), ("1.9.4".to_string(), "1.5.5".to_string()));
        assert_eq!(ZstdFrame::from_name("kernel"), None);
    }
}
