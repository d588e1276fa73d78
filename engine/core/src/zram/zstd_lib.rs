//! A libzstd loaded at run time, for the zstd of a kernel whose lib/zstd is
//! another version than the one linked in (zstd-sys, libzstd 1.5.5).
//!
//! Two versions of libzstd cannot be linked into one process: their symbols
//! have the same names.  A second one is opened with `dlopen` instead, with
//! RTLD_LOCAL (its symbols stay out of the global namespace) and
//! RTLD_DEEPBIND (its own calls bind to its own symbols, not to the linked
//! ones), and called through function pointers.
//!
//! It is called as the kernel's lib/zstd/zstd_compress_module.c calls its
//! own (the same in every version modelled):
//!
//! ```text
//!   here                              the kernel (zram's backend / crypto/zstd.c)
//!   ZSTD_getParams(level, hint, 0)    zstd_get_params(level, PAGE_SIZE or 0)
//!   ZSTD_initStaticCCtx(workspace)    zstd_init_cctx(workspace, size)
//!   ZSTD_CCtx_reset(session and parameters),
//!   ZSTD_CCtx_setPledgedSrcSize(n),   zstd_compress_cctx(cctx, .., &params):
//!   ZSTD_CCtx_setParameter x 10,        zstd_cctx_init, then ZSTD_compress2
//!   ZSTD_compress2
//!   ZSTD_initStaticDCtx + ZSTD_decompressDCtx
//! ```
//!
//! Only these functions are used (and `ZSTD_versionNumber`, `ZSTD_isError`,
//! `ZSTD_getErrorName`): libzstd exports them, and so does a library built
//! from a kernel's own lib/zstd.  A library is opened once per path and
//! never closed, so the function pointers stay valid for the life of the
//! process.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

// a process-wide registry, not part of any protocol the loom models check
use parking_lot::Mutex;

/// `ZSTD_compressionParameters`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CParams {
    pub window_log: c_uint,
    pub chain_log: c_uint,
    pub hash_log: c_uint,
    pub search_log: c_uint,
    pub min_match: c_uint,
    pub target_length: c_uint,
    pub strategy: c_int,
}

/// `ZSTD_frameParameters`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FParams {
    pub content_size_flag: c_int,
    pub checksum_flag: c_int,
    pub no_dict_id_flag: c_int,
}

/// `ZSTD_parameters`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Params {
    pub c: CParams,
    pub f: FParams,
}

type VersionNumber = unsafe extern "C" fn() -> c_uint;
type GetParams = unsafe extern "C" fn(c_int, u64, usize) -> Params;
type EstimateCCtx = unsafe extern "C" fn(CParams) -> usize;
type EstimateDCtx = unsafe extern "C" fn() -> usize;
type InitStatic = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
type Reset = unsafe extern "C" fn(*mut c_void, c_int) -> usize;
type SetPledged = unsafe extern "C" fn(*mut c_void, u64) -> usize;
type SetParameter = unsafe extern "C" fn(*mut c_void, c_int, c_int) -> usize;
/// `ZSTD_compress2` and `ZSTD_decompressDCtx`: (ctx, dst, capacity, src, size)
type Transform = unsafe extern "C" fn(*mut c_void, *mut c_void, usize, *const c_void, usize) -> usize;

/// `ZSTD_reset_session_and_parameters`
const RESET_SESSION_AND_PARAMETERS: c_int = 3;
/// `ZSTD_cParameter`s, as zstd.h numbers them (a stable API)
const C_WINDOW_LOG: c_int = 101;
const C_HASH_LOG: c_int = 102;
const C_CHAIN_LOG: c_int = 103;
const C_SEARCH_LOG: c_int = 104;
const C_MIN_MATCH: c_int = 105;
const C_TARGET_LENGTH: c_int = 106;
const C_STRATEGY: c_int = 107;
const C_CONTENT_SIZE_FLAG: c_int = 200;
const C_CHECKSUM_FLAG: c_int = 201;
const C_DICT_ID_FLAG: c_int = 202;
type IsError = unsafe extern "C" fn(usize) -> c_uint;
type ErrorName = unsafe extern "C" fn(usize) -> *const c_char;

/// An opened libzstd and the functions this module calls.
pub struct ZstdLibrary {
    path: PathBuf,
    version: u32,
    get_params: GetParams,
    estimate_cctx: EstimateCCtx,
    estimate_dctx: EstimateDCtx,
    init_static_cctx: InitStatic,
    init_static_dctx: InitStatic,
    cctx_reset: Reset,
    set_pledged_src_size: SetPledged,
    set_parameter: SetParameter,
    compress2: Transform,
    decompress_dctx: Transform,
    is_error: IsError,
    error_name: ErrorName,
    /// kept open (never dropped: the libraries live in LIBRARIES)
    _lib: Library,
}

impl std::fmt::Debug for ZstdLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ZstdLibrary({}, {})", self.path.display(), self.version_string())
    }
}

/// Every library opened, by path: each is opened once.
static LIBRARIES: OnceLock<Mutex<Vec<Arc<ZstdLibrary>>>> = OnceLock::new();

impl ZstdLibrary {
    /// The library at `path`, opened on first use; an error naming what is wrong with it.
    pub fn open(path: &Path) -> Result<Arc<ZstdLibrary>, String> {
        let mut opened = LIBRARIES.get_or_init(|| Mutex::new(Vec::new())).lock();
        if let Some(lib) = opened.iter().find(|l| l.path == path) {
            return Ok(Arc::clone(lib));
        }
        let lib = Arc::new(Self::load(path)?);
        opened.push(Arc::clone(&lib));
        Ok(lib)
    }

    fn load(path: &Path) -> Result<ZstdLibrary, String> {
        let what = || format!("the zstd library {}", path.display());
        // SAFETY: opening a shared object runs its initialisers; the caller
        // names a libzstd (a user's choice, as with LD_PRELOAD), and
        // DEEPBIND keeps its symbols from displacing or binding to ours
        let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL | libc::RTLD_DEEPBIND) }
            .map_err(|e| format!("{}: {e}", what()))?;
        macro_rules! sym {
            ($name:literal, $ty:ty) => {
                // SAFETY: the symbol is libzstd's function of that name, whose
                // C signature `$ty` spells (zstd.h, unchanged since 1.3); the
                // pointer is copied out and stays valid while `lib` is open
                *unsafe { lib.get::<$ty>(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("{} has no {}: {e}", what(), $name))?
            };
        }
        let version_number = sym!("ZSTD_versionNumber", VersionNumber);
        let loaded = ZstdLibrary {
            path: path.to_path_buf(),
            // SAFETY: a constant query of the library
            version: unsafe { version_number() },
            get_params: sym!("ZSTD_getParams", GetParams),
            estimate_cctx: sym!("ZSTD_estimateCCtxSize_usingCParams", EstimateCCtx),
            estimate_dctx: sym!("ZSTD_estimateDCtxSize", EstimateDCtx),
            init_static_cctx: sym!("ZSTD_initStaticCCtx", InitStatic),
            init_static_dctx: sym!("ZSTD_initStaticDCtx", InitStatic),
            cctx_reset: sym!("ZSTD_CCtx_reset", Reset),
            set_pledged_src_size: sym!("ZSTD_CCtx_setPledgedSrcSize", SetPledged),
            set_parameter: sym!("ZSTD_CCtx_setParameter", SetParameter),
            compress2: sym!("ZSTD_compress2", Transform),
            decompress_dctx: sym!("ZSTD_decompressDCtx", Transform),
            is_error: sym!("ZSTD_isError", IsError),
            error_name: sym!("ZSTD_getErrorName", ErrorName),
            _lib: lib,
        };
        Ok(loaded)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ZSTD_versionNumber()`: 10507 for 1.5.7
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn version_string(&self) -> String {
        format!("{}.{}.{}", self.version / 10000, self.version / 100 % 100, self.version % 100)
    }

    /// `ZSTD_getParams(level, source_size, 0)`: the kernel's `zstd_get_params`
    pub fn params(&self, level: i32, source_size: u64) -> Params {
        // SAFETY: a pure function of its arguments
        unsafe { (self.get_params)(level, source_size, 0) }
    }

    /// A compression and a decompression context for `params`, in workspaces of their own.
    pub fn context(self: &Arc<Self>, params: Params) -> Result<LibContext, String> {
        // SAFETY: pure size queries
        let (c_size, d_size) = unsafe { ((self.estimate_cctx)(params.c), (self.estimate_dctx)()) };
        let mut cws = vec![0u64; c_size.div_ceil(8)];
        let mut dws = vec![0u64; d_size.div_ceil(8)];
        // SAFETY: each workspace is 8-byte aligned and at least the size the
        // library asked for; it lives (and never moves: a Vec's buffer stays
        // put when the Vec moves) as long as the context that points into it
        let (cctx, dctx) = unsafe {
            (
                (self.init_static_cctx)(cws.as_mut_ptr().cast(), c_size),
                (self.init_static_dctx)(dws.as_mut_ptr().cast(), d_size),
            )
        };
        if cctx.is_null() || dctx.is_null() {
            return Err(format!("{self:?} could not make its contexts in the room it asked for"));
        }
        Ok(LibContext { lib: Arc::clone(self), params, cctx, dctx, _cws: cws, _dws: dws })
    }

    fn error(&self, code: usize) -> Option<String> {
        // SAFETY: pure functions of the code; the name is a static C string
        unsafe {
            ((self.is_error)(code) != 0)
                .then(|| CStr::from_ptr((self.error_name)(code)).to_string_lossy().into_owned())
        }
    }
}

/// One thread's contexts in a loaded library.
pub struct LibContext {
    lib: Arc<ZstdLibrary>,
    params: Params,
    cctx: *mut c_void,
    dctx: *mut c_void,
    _cws: Vec<u64>,
    _dws: Vec<u64>,
}

impl LibContext {
    /// `zstd_cctx_init`: the context reset and given the parameters and the source's size.
    fn cctx_init(&mut self, source_size: usize) -> Option<()> {
        let (c, f) = (self.params.c, self.params.f);
        let (lib, cctx) = (&self.lib, self.cctx);
        // SAFETY: cctx is a static context in our workspace, used by this
        // thread alone (&mut self); the calls take plain values
        let set = |p: c_int, v: c_int| unsafe { (lib.set_parameter)(cctx, p, v) };
        // SAFETY: as above
        let (reset, pledged) = unsafe {
            (
                (lib.cctx_reset)(cctx, RESET_SESSION_AND_PARAMETERS),
                (lib.set_pledged_src_size)(cctx, source_size as u64),
            )
        };
        let results = [
            reset,
            pledged,
            set(C_WINDOW_LOG, c.window_log as c_int),
            set(C_HASH_LOG, c.hash_log as c_int),
            set(C_CHAIN_LOG, c.chain_log as c_int),
            set(C_SEARCH_LOG, c.search_log as c_int),
            set(C_MIN_MATCH, c.min_match as c_int),
            set(C_TARGET_LENGTH, c.target_length as c_int),
            set(C_STRATEGY, c.strategy),
            set(C_CONTENT_SIZE_FLAG, f.content_size_flag),
            set(C_CHECKSUM_FLAG, f.checksum_flag),
            set(C_DICT_ID_FLAG, (f.no_dict_id_flag == 0) as c_int),
        ];
        results.iter().all(|&r| lib.error(r).is_none()).then_some(())
    }

    /// Compress `src` into `dst` as `zstd_compress_cctx` does: its length, or None on an error (no room).
    pub fn compress(&mut self, dst: &mut [u8], src: &[u8]) -> Option<usize> {
        self.cctx_init(src.len())?;
        // SAFETY: as in cctx_init; dst and src are valid for the lengths given
        let n = unsafe {
            (self.lib.compress2)(
                self.cctx,
                dst.as_mut_ptr().cast(),
                dst.len(),
                src.as_ptr().cast(),
                src.len(),
            )
        };
        self.lib.error(n).is_none().then_some(n)
    }

    /// Decompress the frame `src` into `dst`: the bytes made, or the library's error.
    pub fn decompress(&mut self, dst: &mut [u8], src: &[u8]) -> Result<usize, String> {
        // SAFETY: as for compress, with the decompression context
        let n = unsafe {
            (self.lib.decompress_dctx)(
                self.dctx,
                dst.as_mut_ptr().cast(),
                dst.len(),
                src.as_ptr().cast(),
                src.len(),
            )
        };
        self.lib.error(n).map_or(Ok(n), Err)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_wrong_library_is_an_error_not_a_crash() {
        let e = ZstdLibrary::open(Path::new("/nonexistent/libzstd.so")).unwrap_err();
        assert!(e.contains("/nonexistent/libzstd.so"), "{e}");
        // a real shared object without zstd's symbols
        let e = ZstdLibrary::open(Path::new("libm.so.6")).unwrap_err();
        assert!(e.contains("has no ZSTD_versionNumber"), "{e}");
    }

    /// The libzstd 1.5.7 that `make zstd-library` leaves in the cache, if any: it round-trips a
    /// page in the kernel's frame and is opened once.  Without one the test says so and passes,
    /// unless `ZSMALLOC_REQUIRE_KERNEL_ZSTD` names 1.5.7 (CI) and makes that a failure.
    #[test]
    fn a_loaded_library_round_trips_a_page() {
        let path = std::env::var_os("ZSMALLOC_KERNEL_VM_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/zsmalloc-kernel-vm")))
            .map(|c| c.join("lib/zstd-1.5.7/libzstd.so"))
            .filter(|p| p.exists());
        let Some(path) = path else {
            let required = std::env::var("ZSMALLOC_REQUIRE_KERNEL_ZSTD").unwrap_or_default();
            assert!(!required.split(',').any(|v| v.trim() == "1.5.7"), "no libzstd 1.5.7");
            eprintln!("no libzstd 1.5.7 in the cache (make zstd-library): not tested");
            return;
        };
        let lib = ZstdLibrary::open(&path).unwrap();
        assert_eq!(lib.version(), 10507);
        assert!(Arc::ptr_eq(&lib, &ZstdLibrary::open(&path).unwrap()));
        let params = lib.params(3, 4096);
        assert_eq!(params.f.content_size_flag, 1);
        let mut ctx = lib.context(params).unwrap();
        let page: Vec<u8> = (0..4096).map(|i| b"zsmalloc zram "[i % 14]).collect();
        let mut out = vec![0u8; 4096 + 512];
        let n = ctx.compress(&mut out, &page).unwrap();
        assert_eq!(&out[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a standard frame starts with the magic");
        let mut back = vec![0u8; 4096];
        assert_eq!(ctx.decompress(&mut back, &out[..n]), Ok(4096));
        assert_eq!(back, page);
        assert!(ctx.decompress(&mut back, &out[..n / 2]).is_err());
        assert!(ctx.compress(&mut out[..8], &page).is_none(), "no room is None");
    }
}
