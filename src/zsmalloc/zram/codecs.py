"""Compression backends for zram, and a small registry of them (the kernel's zcomp).

A :class:`Codec` is a pair of plain callables, ``compress(page) -> bytes``
and ``decompress(data) -> bytes`` (the 4096-byte page), plus the exception
types its decompressor raises on damaged input.  The device binds the two
callables to locals on its hot paths, so a codec costs one call each way.

Registered names (the kernel's ``comp_algorithm`` names):

``lz4`` (default)
    The LZ4 *block* format with no size prefix, as the kernel stores it:
    ``lz4.block.compress(page, store_size=False)``, decompressed with
    ``uncompressed_size=4096``.  Thread-safe module functions.
``lz4-kernel``
    The same block format, compressed as the kernel's lib/lz4 compresses
    (:mod:`zsmalloc.zram.lz4_kernel`): the bytes zram stores on a little-endian
    kernel, where liblz4 1.9 makes other blocks.  Pure Python here (the
    model; a few milliseconds a page), decompressed by python-lz4.  Level > 1
    is the acceleration, as for ``lz4``.
``lz4hc``
    LZ4's high-compression mode, same block format (level 1..12, default 9).
``zstd``
    Zstandard at a fixed level (1..22, default 3, the kernel's default), with one
    compressor and one decompressor object per thread (they are not
    thread-safe).  Optional dictionary (``dictionary=bytes``), as the kernel's
    ``algorithm_params dict=``.  Three framings (``frame=``, :data:`ZSTD_FRAMES`):
    ``magicless`` (the default, this project's own: no magic number, content
    size, checksum or dictionary id, since the page size is known; parameters
    for a source of unknown size), ``page`` (zram's zstd backend since 6.12: a
    standard frame with the content size and the dictionary's id, parameters
    tuned for a 4 KiB source) and ``crypto`` (zram through the crypto API
    before 6.12: a standard frame, parameters for a source of unknown size, at
    level 3 only).  ``library=`` a path: compress through that libzstd
    instead of python-zstandard's, as the kernel calls its lib/zstd, in the
    kernel's frames only and without a dictionary (:mod:`zsmalloc.zram.zstdlib`).
``deflate``
    Raw deflate (zlib with ``wbits=-15``, no header or trailer), default level 6.
``lzo``, ``lzo-rle``
    Only when ``python-lzo`` imports.  python-lzo has no RLE variant, so
    ``lzo-rle`` is LZO1X as well: the format is private to the device anyway.

``register_codec(name, factory)`` adds one; ``factory(level, dictionary)``
returns a :class:`Codec`.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import lz4.block
import zstandard

from zsmalloc.zram.lz4_kernel import lz4_compress_fast
from zsmalloc.zram.zstdlib import library_codec

PAGE_SIZE = 4096


@dataclass(frozen=True)
class Codec:
    """One configured compression algorithm."""

    name: str
    #: page bytes (any buffer) -> compressed bytes
    compress: Callable[..., bytes]
    #: compressed bytes -> the page (4096 bytes)
    decompress: Callable[..., bytes]
    level: int | None = None
    #: what ``decompress`` raises on damaged input
    errors: tuple[type[BaseException], ...] = (ValueError,)

    def __repr__(self) -> str:
        level = "" if self.level is None else f" level {self.level}"
        return f"<Codec {self.name}{level}>"


CodecFactory = Callable[[int | None, bytes | None], Codec]
_REGISTRY: dict[str, CodecFactory] = {}


def register_codec(name: str, factory: CodecFactory) -> None:
    """Make ``name`` available to :func:`get_codec` (replacing any earlier one)."""
    _REGISTRY[name] = factory


def available_codecs() -> list[str]:
    """The names :func:`get_codec` accepts, in registration order."""
    return list(_REGISTRY)


def get_codec(
    name: str,
    level: int | None = None,
    dictionary: bytes | None = None,
    frame: str | None = None,
    library: str | None = None,
) -> Codec:
    """A configured codec: ``level`` (None: the default) and, for zstd, a dictionary, a frame, a libzstd."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown compression algorithm {name!r}; available: {available_codecs()}") from None
    if frame is not None or library is not None:
        if name != "zstd":
            what = "frame to choose" if frame is not None else "zstd library to load"
            raise ValueError(f"{name} has no {what} (only zstd has)")
        return _zstd(level, dictionary, frame or "magicless", library)
    return factory(level, dictionary)


def library_versions() -> dict[str, str]:
    """The C libraries behind these codecs: their versions decide a page's compressed bytes."""
    return {"lz4": lz4.library_version_string(), "zstd": ".".join(map(str, zstandard.ZSTD_VERSION))}


def _no_dictionary(name: str, dictionary: bytes | None) -> None:
    if dictionary is not None:
        raise ValueError(f"{name} does not take a dictionary here (only zstd does)")


# ----------------------------------------------------------------------
# lz4, lz4hc


def _lz4(level: int | None, dictionary: bytes | None) -> Codec:
    _no_dictionary("lz4", dictionary)
    if level is None or level <= 1:
        compress = partial(lz4.block.compress, store_size=False)
    else:  # the kernel's lz4 level is an acceleration factor
        compress = partial(lz4.block.compress, mode="fast", acceleration=level, store_size=False)
    return Codec(
        "lz4",
        compress,
        partial(lz4.block.decompress, uncompressed_size=PAGE_SIZE),
        level,
        (lz4.block.LZ4BlockError, ValueError),
    )


def _lz4_kernel(level: int | None, dictionary: bytes | None) -> Codec:
    _no_dictionary("lz4-kernel", dictionary)
    return Codec(
        "lz4-kernel",
        partial(lz4_compress_fast, acceleration=1 if level is None else level),
        partial(lz4.block.decompress, uncompressed_size=PAGE_SIZE),
        level,
        (lz4.block.LZ4BlockError, ValueError),
    )


def _lz4hc(level: int | None, dictionary: bytes | None) -> Codec:
    _no_dictionary("lz4hc", dictionary)
    level = 9 if level is None else level
    if not 1 <= level <= 12:
        raise ValueError(f"lz4hc level must be within 1..12, not {level}")
    return Codec(
        "lz4hc",
        partial(lz4.block.compress, mode="high_compression", compression=level, store_size=False),
        partial(lz4.block.decompress, uncompressed_size=PAGE_SIZE),
        level,
        (lz4.block.LZ4BlockError, ValueError),
    )


# ----------------------------------------------------------------------
# zstd


#: zstd's framings (see the module's docstring)
ZSTD_FRAMES = ("magicless", "page", "crypto")


def _zstd(
    level: int | None, dictionary: bytes | None, frame: str = "magicless", library: str | None = None
) -> Codec:
    if frame not in ZSTD_FRAMES:
        raise ValueError(f"zstd frame must be one of {ZSTD_FRAMES}, not {frame!r}")
    if frame == "crypto" and level not in (None, 3):
        raise ValueError("the crypto API's zstd runs at level 3 only")
    level = 3 if level is None else level
    if not 1 <= level <= zstandard.MAX_COMPRESSION_LEVEL:
        raise ValueError(f"zstd level must be within 1..{zstandard.MAX_COMPRESSION_LEVEL}, not {level}")
    if library is not None:
        if dictionary is not None:
            raise ValueError("a zstd dictionary is not supported with a loaded libzstd")
        return Codec("zstd", *library_codec(library, level, frame), level, (ValueError,))
    standard = frame != "magicless"
    fmt = zstandard.FORMAT_ZSTD1 if standard else zstandard.FORMAT_ZSTD1_MAGICLESS
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        source_size=PAGE_SIZE if frame == "page" else 0,
        format=fmt,
        write_content_size=standard,
        write_checksum=False,
        write_dict_id=standard,
    )
    zdict = None if dictionary is None else zstandard.ZstdCompressionDict(bytes(dictionary))
    local = threading.local()

    def compress(data, _local=local) -> bytes:
        try:
            cctx = _local.cctx
        except AttributeError:
            cctx = _local.cctx = zstandard.ZstdCompressor(dict_data=zdict, compression_params=params)
        return cctx.compress(data)

    def decompress(data, _local=local) -> bytes:
        try:
            dctx = _local.dctx
        except AttributeError:
            dctx = _local.dctx = zstandard.ZstdDecompressor(dict_data=zdict, format=fmt)
        if standard:
            return dctx.decompress(data, max_output_size=PAGE_SIZE)
        # a magicless frame names no content size, which ZstdDecompressor.decompress
        # wants (python-zstandard 0.22); a decompressobj reads up to the frame's end
        page = dctx.decompressobj().decompress(data)
        if len(page) != PAGE_SIZE:
            raise ValueError(f"a zstd frame of {len(page)} bytes, not a page")
        return page

    return Codec("zstd", compress, decompress, level, (zstandard.ZstdError, ValueError))


# ----------------------------------------------------------------------
# deflate


def _deflate(level: int | None, dictionary: bytes | None) -> Codec:
    _no_dictionary("deflate", dictionary)
    level = 6 if level is None else level
    if not 0 <= level <= 9:
        raise ValueError(f"deflate level must be within 0..9, not {level}")
    return Codec(
        "deflate",
        partial(zlib.compress, level=level, wbits=-15),
        partial(zlib.decompress, wbits=-15, bufsize=PAGE_SIZE),
        level,
        (zlib.error, ValueError),
    )


register_codec("lz4", _lz4)
register_codec("lz4hc", _lz4hc)
register_codec("zstd", _zstd)
register_codec("deflate", _deflate)
register_codec("lz4-kernel", _lz4_kernel)


# ----------------------------------------------------------------------
# lzo, only with python-lzo

try:  # pragma: no cover - depends on an optional package
    import lzo as _lzo_module
except ImportError:  # pragma: no cover
    _lzo_module = None

if _lzo_module is not None:  # pragma: no cover - python-lzo is not a dependency

    def _make_lzo(name: str) -> CodecFactory:
        def factory(level: int | None, dictionary: bytes | None) -> Codec:
            _no_dictionary(name, dictionary)
            lvl = 1 if level is None else level

            def compress(data, _c=_lzo_module.compress, _l=lvl) -> bytes:
                return _c(bytes(data), _l, False)

            def decompress(data, _d=_lzo_module.decompress) -> bytes:
                return _d(bytes(data), False, PAGE_SIZE)

            return Codec(name, compress, decompress, lvl, (_lzo_module.error, ValueError))

        return factory

    register_codec("lzo", _make_lzo("lzo"))
    register_codec("lzo-rle", _make_lzo("lzo-rle"))


__all__ = ["Codec", "available_codecs", "get_codec", "register_codec"]
