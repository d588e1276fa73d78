"""The libzstd a kernel preset's zstd needs: found, or reported missing; and its ctypes binding.

A page's zstd bytes depend on the zstd version that compressed it, and
each kernel's lib/zstd is one version (:mod:`zsmalloc.zram.kernels`).  The
engine and python-zstandard bundle libzstd 1.5.5 (:data:`BUNDLED`), whose
output is that of 6.6's and 6.12's lib/zstd; 6.15 on has 1.5.7.  Two
versions cannot be linked into one process, so another one is loaded at
run time, from the first of::

    wanted version V (a preset's KernelPreset.zstd_versions)
      |  V is BUNDLED ------------------------------> the bundled library
      v
    1. $ZSMALLOC_ZSTD_LIBRARY     paths (':'-separated): the first that is V
    2. the system's libzstd.so.1, when it is V
    3. <cache>/lib/zstd-V/libzstd.so  (``zsmalloc zstd-library --fetch``;
       its provenance in SOURCE beside it)
    4. none: the bundled library and a KernelZstdWarning, or a KernelZstdError
       if V is in ZSMALLOC_REQUIRE_KERNEL_ZSTD (versions, comma-separated)

A loaded library is called as the kernel's lib/zstd/zstd_compress_module.c
calls its own, with no other entry point (a library built from a kernel's
own lib/zstd has these too)::

    ZSTD_getParams(level, 4096 or 0, 0)     zstd_get_params(level, PAGE_SIZE or 0)
    ZSTD_initStaticCCtx(workspace, size)    zstd_init_cctx(workspace, size)
    ZSTD_CCtx_reset, _setPledgedSrcSize,    zstd_compress_cctx(cctx, .., &params):
    _setParameter x 10, ZSTD_compress2        zstd_cctx_init, then ZSTD_compress2
    ZSTD_initStaticDCtx + ZSTD_decompressDCtx

:func:`library_codec` is that binding for the model (ctypes); the engine
has its own (engine/core/src/zram/zstd_lib.rs) and is given the path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import sysconfig
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import zstandard

from zsmalloc.cache import cache_dir

#: the libzstd version the engine (zstd-sys) and python-zstandard bundle
BUNDLED = ".".join(map(str, zstandard.ZSTD_VERSION))
LIBRARY_ENV = "ZSMALLOC_ZSTD_LIBRARY"
REQUIRE_ENV = "ZSMALLOC_REQUIRE_KERNEL_ZSTD"
#: a library's provenance, in the file of this name beside it in the cache
SOURCE_FILE = "SOURCE"
PAGE_SIZE = 4096


class KernelZstdError(ValueError):
    """A zstd library that cannot be used: missing when required, unloadable, or the wrong version.

    A ValueError, as the engine's device raises for a library it cannot load.
    """


class KernelZstdWarning(UserWarning):
    """A preset's zstd version is not here: its figures come from the bundled libzstd instead."""


@dataclass(frozen=True)
class ZstdLibrary:
    """A libzstd found for a version: where it is, its version, and where it came from."""

    path: Path
    version: str
    source: str

    def describe(self) -> str:
        """``1.5.7 (/path/libzstd.so: Debian libzstd1 1.5.7+dfsg-1 ...)``, for the stats."""
        return f"{self.version} ({self.path}: {self.source})"


def required_versions() -> set[str]:
    """The versions ``ZSMALLOC_REQUIRE_KERNEL_ZSTD`` says must be here (CI: those it fetched)."""
    return {v.strip() for v in os.environ.get(REQUIRE_ENV, "").split(",") if v.strip()}


def cached_path(version: str, cache: Path | None = None) -> Path:
    """Where the cache (:func:`zsmalloc.cache.cache_dir` by default) keeps libzstd ``version``."""
    return (cache or cache_dir()) / "lib" / f"zstd-{version}" / "libzstd.so"


def _version_string(number: int) -> str:
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


# ----------------------------------------------------------------------
# the binding


class _CParams(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint)
        for name in ("windowLog", "chainLog", "hashLog", "searchLog", "minMatch", "targetLength")
    ] + [("strategy", ctypes.c_int)]


class _FParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("contentSizeFlag", "checksumFlag", "noDictIDFlag")]


class _Params(ctypes.Structure):
    _fields_ = [("cParams", _CParams), ("fParams", _FParams)]


_P, _N, _S = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
#: zstd.h's ZSTD_reset_session_and_parameters and ZSTD_cParameter numbers (a stable API)
_RESET_SESSION_AND_PARAMETERS = 3
_C_WINDOW_LOG, _C_HASH_LOG, _C_CHAIN_LOG, _C_SEARCH_LOG, _C_MIN_MATCH, _C_TARGET_LENGTH, _C_STRATEGY = range(
    101, 108
)
_C_CONTENT_SIZE_FLAG, _C_CHECKSUM_FLAG, _C_DICT_ID_FLAG = 200, 201, 202
#: name -> (restype, argtypes): the only functions called
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "ZSTD_versionNumber": (ctypes.c_uint, []),
    "ZSTD_getParams": (_Params, [ctypes.c_int, ctypes.c_ulonglong, _N]),
    "ZSTD_estimateCCtxSize_usingCParams": (_N, [_CParams]),
    "ZSTD_estimateDCtxSize": (_N, []),
    "ZSTD_initStaticCCtx": (_P, [_P, _N]),
    "ZSTD_initStaticDCtx": (_P, [_P, _N]),
    "ZSTD_CCtx_reset": (_N, [_P, ctypes.c_int]),
    "ZSTD_CCtx_setPledgedSrcSize": (_N, [_P, ctypes.c_ulonglong]),
    "ZSTD_CCtx_setParameter": (_N, [_P, ctypes.c_int, ctypes.c_int]),
    "ZSTD_compress2": (_N, [_P, _P, _N, _S, _N]),
    "ZSTD_decompressDCtx": (_N, [_P, _P, _N, _S, _N]),
    "ZSTD_isError": (ctypes.c_uint, [_N]),
    "ZSTD_getErrorName": (_S, [_N]),
}


@cache
def _open(path: str) -> ctypes.CDLL:
    """The library at ``path``, loaded once, its functions typed; a KernelZstdError if it is not a libzstd."""
    mode = os.RTLD_NOW | os.RTLD_LOCAL | getattr(os, "RTLD_DEEPBIND", 0)
    try:
        lib = ctypes.CDLL(path, mode=mode)
    except OSError as exc:
        raise KernelZstdError(f"the zstd library {path}: {exc}") from None
    for name, (restype, argtypes) in _SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise KernelZstdError(f"the zstd library {path} has no {name}") from None
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def library_version(path: str | os.PathLike[str]) -> str:
    """The version the library at ``path`` reports (``ZSTD_versionNumber``)."""
    return _version_string(_open(os.fspath(path)).ZSTD_versionNumber())


def library_codec(
    path: str | os.PathLike[str], level: int, frame: str
) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    """``(compress, decompress)`` of a page through the library, in the kernel's ``frame``.

    ``page`` (zram's backend, 6.12 on) chooses the parameters for a 4 KiB
    source, ``crypto`` (the crypto API) for one of unknown size.  Each thread
    has its static contexts, made once; errors are ValueErrors.
    """
    if frame not in ("page", "crypto"):
        raise ValueError(f"a loaded libzstd makes the kernel's frames ('page', 'crypto'), not {frame!r}")
    lib = _open(os.fspath(path))
    params = lib.ZSTD_getParams(level, PAGE_SIZE if frame == "page" else 0, 0)
    local = threading.local()

    def contexts() -> tuple[int, int]:
        try:
            return local.ctx
        except AttributeError:
            pass
        c_size, d_size = lib.ZSTD_estimateCCtxSize_usingCParams(params.cParams), lib.ZSTD_estimateDCtxSize()
        # ctypes' buffers are malloc'd: aligned as zstd's static contexts need (8 bytes)
        local.workspaces = ctypes.create_string_buffer(c_size), ctypes.create_string_buffer(d_size)
        cctx = lib.ZSTD_initStaticCCtx(local.workspaces[0], c_size)
        dctx = lib.ZSTD_initStaticDCtx(local.workspaces[1], d_size)
        if not cctx or not dctx:
            raise KernelZstdError(f"the zstd library {path} made no context in the room it asked for")
        local.ctx = cctx, dctx
        return local.ctx

    def check(n: int) -> int:
        if lib.ZSTD_isError(n):
            raise ValueError(f"zstd ({path}): {lib.ZSTD_getErrorName(n).decode()}")
        return n

    c, f = params.cParams, params.fParams
    settings = (  # zstd_cctx_init's, in its order
        (_C_WINDOW_LOG, c.windowLog),
        (_C_HASH_LOG, c.hashLog),
        (_C_CHAIN_LOG, c.chainLog),
        (_C_SEARCH_LOG, c.searchLog),
        (_C_MIN_MATCH, c.minMatch),
        (_C_TARGET_LENGTH, c.targetLength),
        (_C_STRATEGY, c.strategy),
        (_C_CONTENT_SIZE_FLAG, f.contentSizeFlag),
        (_C_CHECKSUM_FLAG, f.checksumFlag),
        (_C_DICT_ID_FLAG, int(not f.noDictIDFlag)),
    )

    def compress(data: bytes) -> bytes:
        src = bytes(data)
        cctx = contexts()[0]
        check(lib.ZSTD_CCtx_reset(cctx, _RESET_SESSION_AND_PARAMETERS))
        check(lib.ZSTD_CCtx_setPledgedSrcSize(cctx, len(src)))
        for param, value in settings:
            check(lib.ZSTD_CCtx_setParameter(cctx, param, value))
        cap = len(src) + (len(src) >> 7) + 512  # above ZSTD_compressBound
        dst = ctypes.create_string_buffer(cap)
        n = check(lib.ZSTD_compress2(cctx, dst, cap, src, len(src)))
        return dst.raw[:n]

    def decompress(data: bytes) -> bytes:
        src = bytes(data)
        dst = ctypes.create_string_buffer(PAGE_SIZE)
        n = check(lib.ZSTD_decompressDCtx(contexts()[1], dst, PAGE_SIZE, src, len(src)))
        if n != PAGE_SIZE:
            raise ValueError(f"a zstd frame of {n} bytes, not a page")
        return dst.raw

    return compress, decompress


# ----------------------------------------------------------------------
# finding one


def _source_of(path: Path) -> str:
    try:
        return (path.parent / SOURCE_FILE).read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return "no SOURCE file"


def _system_library() -> Path | None:
    """The file of the system's libzstd.so.1, by its full path: dlopen of the bare name would
    give back any library of that soname already loaded (a cached one, say)."""
    if ctypes.util.find_library("zstd") is None:
        return None
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for d in (f"/usr/lib/{multiarch}", f"/lib/{multiarch}", "/usr/lib64", "/usr/lib"):
        path = Path(d) / "libzstd.so.1"
        if path.exists():
            return path.resolve()
    return None


def find_library(version: str) -> ZstdLibrary | None:
    """libzstd ``version``, from the environment, the system or the cache (see the header); None if none."""
    for given in filter(None, os.environ.get(LIBRARY_ENV, "").split(os.pathsep)):
        if library_version(given) == version:  # (one that is not a libzstd is an error)
            return ZstdLibrary(Path(given), version, LIBRARY_ENV)
    system = _system_library()
    if system is not None:
        try:
            if library_version(system) == version:
                return ZstdLibrary(system, version, "the system's libzstd")
        except KernelZstdError:
            pass
    return cached_library(version)


def cached_library(version: str, cache: Path | None = None) -> ZstdLibrary | None:
    """The cache's library of ``version``, checked to be that version; None if there is none."""
    path = cached_path(version, cache)
    if not path.exists():
        return None
    found = library_version(path)
    if found != version:
        raise KernelZstdError(f"{path} is libzstd {found}, not {version}: remove it and fetch it again")
    return ZstdLibrary(path, version, _source_of(path))


def install_library(built: Path, version: str, source: str, cache: Path | None = None) -> ZstdLibrary:
    """Put ``built`` into the cache as libzstd ``version``, with its SOURCE, once it loads as that version.

    ``built`` is copied; a copy that reports another version is removed and refused.
    """
    target = cached_path(version, cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    shutil.copyfile(built, partial)
    got = library_version(partial)
    if got != version:
        partial.unlink()
        raise KernelZstdError(f"{source} reports libzstd {got}, not {version}")
    (target.parent / SOURCE_FILE).write_text(source + "\n")
    os.replace(partial, target)
    return ZstdLibrary(target, version, source)


def reusable(version: str, cache: Path | None = None) -> ZstdLibrary | None:
    """What a fetch or a build may keep: the cache's library of ``version``, unless it is another."""
    try:
        return cached_library(version, cache)
    except KernelZstdError:
        return None  # fetched or built again over it


def find_any(versions: tuple[str, ...]) -> ZstdLibrary | None:
    """The first of ``versions`` that :func:`find_library` finds, or None."""
    return next(filter(None, map(find_library, versions)), None)


def library_for(versions: tuple[str, ...], what: str) -> ZstdLibrary | None:
    """The library to load for ``what`` (a preset), whose zstd is that of ``versions``; None: the bundled one.

    When none of them is here: the bundled library, with a KernelZstdWarning
    (a KernelZstdError for a version that ``ZSMALLOC_REQUIRE_KERNEL_ZSTD`` names).
    """
    if BUNDLED in versions:
        return None
    found = find_any(versions)
    if found is not None:
        return found
    message = (
        f"{what}'s zstd is libzstd {' or '.join(versions)}, which is not here (`zsmalloc zstd-library` "
        f"says where it is looked for); the bundled {BUNDLED} compresses instead, and a few pages "
        "come out a few bytes apart"
    )
    if set(versions) & required_versions():
        raise KernelZstdError(message)
    warnings.warn(message, KernelZstdWarning, stacklevel=5)  # the device's caller
    return None
