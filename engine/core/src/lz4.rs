//! The liblz4 functions that lz4-sys links (its bundled liblz4) but does
//! not declare: the ones that take a caller's state (lz4.h, lz4hc.h).

use std::ffi::{c_char, c_int, c_void};

extern "C" {
    /// major * 10000 + minor * 100 + release
    pub(crate) fn LZ4_versionNumber() -> c_int;
    pub(crate) fn LZ4_sizeofState() -> c_int;
    /// `LZ4_compress_fast` on a caller's state: the kernel's call (with its
    /// per-CPU work memory), which clears the table for every page
    pub(crate) fn LZ4_compress_fast_extState(
        state: *mut c_void,
        src: *const c_char,
        dst: *mut c_char,
        src_size: c_int,
        dst_capacity: c_int,
        acceleration: c_int,
    ) -> c_int;
    /// an `LZ4_stream_t` of `size` bytes (LZ4_sizeofState) at `buffer`, reset
    pub(crate) fn LZ4_initStream(buffer: *mut c_void, size: usize) -> *mut c_void;
    /// the stream's dictionary: the caller keeps `dict` in place until the next call on the stream
    pub(crate) fn LZ4_loadDict(stream: *mut c_void, dict: *const c_char, dict_size: c_int) -> c_int;
    pub(crate) fn LZ4_compress_fast_continue(
        stream: *mut c_void,
        src: *const c_char,
        dst: *mut c_char,
        src_size: c_int,
        dst_capacity: c_int,
        acceleration: c_int,
    ) -> c_int;
    pub(crate) fn LZ4_decompress_safe_usingDict(
        src: *const c_char,
        dst: *mut c_char,
        src_size: c_int,
        dst_capacity: c_int,
        dict_start: *const c_char,
        dict_size: c_int,
    ) -> c_int;
    pub(crate) fn LZ4_sizeofStateHC() -> c_int;
    pub(crate) fn LZ4_compress_HC_extStateHC(
        state: *mut c_void,
        src: *const c_char,
        dst: *mut c_char,
        src_size: c_int,
        dst_capacity: c_int,
        level: c_int,
    ) -> c_int;
}
