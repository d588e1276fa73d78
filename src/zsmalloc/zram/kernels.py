"""Kernel presets: a zram device configured as a given kernel version's zram and zsmalloc are.

``ZramDevice(..., kernel="6.12")`` and ``zsmalloc stats --kernel 6.12`` take
one.  What each part of a preset follows::

    preset  class rule        chain  fullness  zstd in zram                                  zstd level
    6.1     used-percentage   4      legacy    crypto API: standard frame, params for a      3 only
                                               source of unknown size
    6.6     min-waste         8      ratio     as 6.1                                        3 only
    6.12    min-waste         8      ratio     zram's backend: standard frame, params for    any
                                               a 4 KiB source
    6.17    min-waste         8      ratio     as 6.12                                       any

- The pool's part (chain size, class rule, grouping) is
  zsmalloc.pool.kernels', which ``Pool(kernel=...)`` takes alone.
- The class rule and the chain size: before 6.3 a zspage had at most 4
  pages (``ZS_MAX_ZSPAGE_ORDER`` 2) and the count that used the highest
  percentage of them (``get_pages_per_zspage``); 6.3 made the limit
  CONFIG_ZSMALLOC_CHAIN_SIZE (default 8, which Debian keeps) and the rule the
  least tail waste.  The huge threshold (``zs_huge_class_size``) follows from
  the class table in each.
- The fullness grouping (``Pool(fullness=...)``): before 6.4 zspages were
  almost empty or almost full, allocated from and compacted as
  zsmalloc/pool/legacy.py says; 6.4 brought the groups by tenths and the
  compaction of zsmalloc/pool/compact.py.
- zram's own compression backends arrived in 6.12; before, zram compressed
  through the crypto API, whose zstd runs at level 3 with parameters for a
  source of unknown size.  Both keep a standard zstd frame (magic number and
  content size), where this project's default frame drops them.
- zstd's bytes also depend on the libzstd version.  The engine (zstd-sys)
  and the model (python-zstandard 0.22) bundle libzstd 1.5.5, whose
  output is 6.12's on every page compared in a booted 6.12 (``zsmalloc
  kernel-vm``), though that kernel's lib/zstd is 1.5.2 (imported in 6.2, so
  6.6 has it too, with the crypto API's parameters: not booted here).
  6.15 imported 1.5.7 into lib/zstd: in booted 6.16 and 7.2 (which the
  6.17 preset models, ``zsmalloc.kernelvm.harness.MODELS``) 87-90% of zstd
  pages get the kernel's size from 1.5.5.  So the 6.17 preset loads
  libzstd 1.5.7 (:mod:`zsmalloc.zram.zstdlib`, ``zsmalloc zstd-library
  --fetch``: Debian trixie's) and compresses through it as the kernel calls
  its lib/zstd; :attr:`KernelPreset.zstd_versions` is what a preset looks
  for.  6.1's lib/zstd is 1.4.10 (imported in 5.16, a tag made for the
  kernel): libzstd 1.5.5 gives 6.1's size on 30-34% of its zstd pages, and
  1.4.9, the last 1.4 release, on only 43-69%, so no release reproduces
  it, and the 6.1 preset compresses through 6.1's own lib/zstd, built from
  Debian's linux-source-6.1 (:mod:`zsmalloc.kernelvm.kernel_zstd`).  With
  these, every zstd figure of a booted 6.1, 6.12, 6.16 and 7.2 is ours.
- lz4 is the kernel's lib/lz4 (LZ4 1.7.3's compressor, unchanged in its
  output since 4.11) at acceleration 1 in every version (the crypto API's
  ``LZ4_compress_default`` before 6.12): under a preset,
  ``lz4`` is the ``lz4-kernel`` codec, which makes the kernel's bytes, where
  liblz4 1.9.4 (the ``lz4`` codec) makes other blocks of the same format.
- zram's write path is the same in all four for what the presets touch: a
  page of one repeated 8-byte word is same-filled, a page that compresses to
  ``zs_huge_class_size`` or more is stored whole (huge), and the new object is
  allocated before the slot's old one is freed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from zsmalloc.pool.kernels import POOL_KERNELS
from zsmalloc.zram.zstdlib import ZstdLibrary, library_for

A = TypeVar("A")


@dataclass(frozen=True)
class KernelPreset:
    """What one kernel version's zram and zsmalloc do, as this project's options."""

    version: str
    chain_size: int
    class_rule: str
    #: the pool's fullness grouping (``zsmalloc.Pool(fullness=...)``)
    fullness: str
    #: zstd's framing (:data:`zsmalloc.zram.codecs.ZSTD_FRAMES`)
    zstd_frame: str
    #: whether that zram takes a zstd level (algorithm_params)
    zstd_level: bool
    #: the zstd version of its lib/zstd (the version string in its vmlinux)
    zstd_library: str | None = None
    #: the libzstd releases whose output is that lib/zstd's, as far as measured against a booted
    #: kernel or its lib/zstd version (the engine and python-zstandard bundle 1.5.5)
    zstd_reproduced_by: tuple[str, ...] = ()
    #: whether that zram recompresses with a second algorithm (recomp_algorithm, 6.2 on)
    recompress: bool = True

    @property
    def zstd_versions(self) -> tuple[str, ...]:
        """The libzstd versions that compress as its lib/zstd: those measured, else its own."""
        return self.zstd_reproduced_by or ((self.zstd_library,) if self.zstd_library else ())


def _preset(
    version: str,
    zstd_frame: str,
    zstd_level: bool,
    zstd_library: str,
    reproduced_by: tuple[str, ...],
    recompress: bool = True,
) -> KernelPreset:
    """A preset: the pool of zsmalloc.pool.kernels, and zram's part."""
    pool = POOL_KERNELS[version]
    return KernelPreset(
        version,
        pool.chain_size,
        pool.class_rule,
        pool.fullness,
        zstd_frame,
        zstd_level,
        zstd_library,
        reproduced_by,
        recompress,
    )


#: the presets, by version
KERNELS: dict[str, KernelPreset] = {
    p.version: p
    for p in (
        _preset("6.1", "crypto", False, "1.4.10", (), recompress=False),
        _preset("6.6", "crypto", False, "1.5.2", ("1.5.5",)),
        _preset("6.12", "page", True, "1.5.2", ("1.5.5",)),
        _preset("6.17", "page", True, "1.5.7", ("1.5.7",)),
    )
}


def kernel_preset(version: str) -> KernelPreset:
    """The preset of ``version``; a ValueError for a version that has none."""
    try:
        return KERNELS[version]
    except KeyError:
        raise ValueError(f"unknown kernel {version!r}; presets: {', '.join(KERNELS)}") from None


@dataclass(frozen=True)
class DeviceSetup:
    """What a device makes of its arguments and a preset: its pool's shape and its algorithm's params."""

    chain_size: int
    class_rule: str
    fullness: str
    #: the primary algorithm (a name or a model codec): as given, or the kernel's own codec for it
    algorithm: Any
    params: dict | None
    #: the libzstd loaded for the preset's zstd (None: the bundled one, or no zstd)
    zstd_library: ZstdLibrary | None = None

    def check_pool(self, pool: Any, version: str | None) -> None:
        """A pool given to a device under a preset must be shaped as that kernel's is."""
        if version is None:
            return
        given = (pool.chain_size, pool.class_rule, pool.fullness)
        want = (self.chain_size, self.class_rule, self.fullness)
        if given != want:
            raise ValueError(
                f"kernel {version}'s zsmalloc has chain size {want[0]}, the {want[1]} rule and the "
                f"{want[2]} grouping; the pool given has chain size {given[0]}, {given[1]}, {given[2]}"
            )


def preset_algorithm(version: str | None, algorithm: A) -> A | str:
    """The codec that compresses as ``version``'s zram does for ``algorithm``: ``lz4`` -> ``lz4-kernel``."""
    return "lz4-kernel" if version is not None and algorithm == "lz4" else algorithm


def preset_secondary(version: str | None, algorithms: list[A]) -> list[tuple[A | str, dict | None]]:
    """The recompression algorithms under ``version`` and their params, each as the primary's would be.

    A ValueError for a kernel whose zram has no recompression (before 6.2).
    """
    if version is not None and algorithms and not kernel_preset(version).recompress:
        raise ValueError(f"kernel {version}'s zram has no recompression (it came with 6.2)")
    return [_preset_codec(version, a, None)[:2] for a in algorithms]


def _preset_codec(version: str | None, algorithm: A, params: dict | None) -> tuple[A | str, dict | None, Any]:
    """(codec, params, libzstd) of ``algorithm`` under ``version``: lz4 the kernel's, zstd in its frame."""
    if version is None:
        return algorithm, params, None
    preset = kernel_preset(version)
    if algorithm != "zstd":
        return preset_algorithm(version, algorithm), params, None
    merged = dict(params or {})
    frame = merged.setdefault("frame", preset.zstd_frame)
    if frame != preset.zstd_frame:
        raise ValueError(f"kernel {version}'s zram frames zstd as {preset.zstd_frame!r}, not {frame!r}")
    if merged.get("level") is not None and not preset.zstd_level:
        raise ValueError(f"kernel {version}'s zram runs zstd at level 3 and takes no level")
    library = None
    if merged.get("library") is None:
        library = library_for(preset.zstd_versions, f"kernel {version}")
        if library is not None:
            merged["library"] = str(library.path)
    return algorithm, merged, library


def apply_kernel(
    version: str | None, algorithm: object, chain_size: int | None, params: dict | None
) -> DeviceSetup:
    """The pool's chain size and class rule, and the primary algorithm and its params, under ``version``.

    Without a preset: chain 8 unless given, the current class rule and
    grouping, and the algorithm and params as given.  With one, ``lz4`` is the
    kernel's own compressor (``lz4-kernel``), zstd is framed as that zram frames it and
    compressed by the libzstd of its lib/zstd's version when one is here
    (:func:`zsmalloc.zram.zstdlib.library_for`: else the bundled one, with a warning), and a
    chain size or a zstd frame given that disagrees with the preset, or a zstd level that its
    zram cannot take, is a ValueError.
    """
    if version is None:
        return DeviceSetup(8 if chain_size is None else chain_size, "min-waste", "ratio", algorithm, params)
    preset = kernel_preset(version)
    if chain_size is not None and chain_size != preset.chain_size:
        raise ValueError(f"kernel {version} has chain size {preset.chain_size}, not {chain_size}")
    codec, merged, library = _preset_codec(version, algorithm, params)
    return DeviceSetup(preset.chain_size, preset.class_rule, preset.fullness, codec, merged, library)
