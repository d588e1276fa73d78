"""Kernel presets: a zram device configured as a given kernel version's zram and zsmalloc are.

``ZramDevice(..., kernel="6.12")`` and ``zsmalloc stats --kernel 6.12`` take
one.  What each part of a preset follows::

    preset   class rule   chain   zstd in zram                                    zstd level
    6.6      min-waste    8       crypto API: standard frame, params for a        3 only
                                  source of unknown size
    6.12     min-waste    8       zram's backend: standard frame, params for      any
                                  a 4 KiB source
    6.17     min-waste    8       as 6.12                                         any

- The class rule and the chain size (CONFIG_ZSMALLOC_CHAIN_SIZE, whose default
  of 8 Debian keeps) are 6.3's; the fullness groups, allocation order and
  compaction (the ``ratio`` policy) are 6.4's; every preset here is later
  than both, so the pool is the project's default pool in each.
- zram's own compression backends arrived in 6.12; before, zram compressed
  through the crypto API, whose zstd runs at level 3 with parameters for a
  source of unknown size.  Both keep a standard zstd frame (magic number and
  content size), where this project's default frame drops them.
- zstd's bytes also depend on the libzstd version.  The engine (zstd-sys)
  and the model (python-zstandard 0.22) are pinned to libzstd 1.5.5, whose
  output is 6.12's on every page compared in a booted 6.12 (``zsmalloc
  kernel-vm``); 6.15 imported 1.5.7 into lib/zstd, so under the 6.17 preset
  zstd pages may come out a few bytes apart (libzstd 1.5.7 against 6.12's:
  11-14% of pages differ, by 1-16 bytes).
- lz4 is the kernel's lib/lz4 (LZ4 1.7.3's compressor, unchanged in its
  output since 4.11) at acceleration 1 in every version: under a preset,
  ``lz4`` is the ``lz4-kernel`` codec, which makes the kernel's bytes, where
  liblz4 1.9.4 (the ``lz4`` codec) makes other blocks of the same format.
- 6.1 is refused: before 6.4 zsmalloc grouped zspages as almost empty and
  almost full, and allocated from those lists in another order, which the
  model does not have yet; a 6.1 preset would not give 6.1's page counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

A = TypeVar("A")


@dataclass(frozen=True)
class KernelPreset:
    """What one kernel version's zram and zsmalloc do, as this project's options."""

    version: str
    chain_size: int
    class_rule: str
    #: zstd's framing (:data:`zsmalloc.zram.codecs.ZSTD_FRAMES`)
    zstd_frame: str
    #: whether that zram takes a zstd level (algorithm_params)
    zstd_level: bool
    #: the libzstd version of its lib/zstd, where known: pages compress to the kernel's bytes
    #: only with the same version (the engine and python-zstandard are pinned to 1.5.5)
    zstd_library: str | None = None


#: the presets, by version
KERNELS: dict[str, KernelPreset] = {
    p.version: p
    for p in (
        KernelPreset("6.6", 8, "min-waste", "crypto", zstd_level=False),
        KernelPreset("6.12", 8, "min-waste", "page", zstd_level=True, zstd_library="1.5.5"),
        KernelPreset("6.17", 8, "min-waste", "page", zstd_level=True, zstd_library="1.5.7"),
    )
}

#: versions asked for that cannot be modelled yet, and why
NOT_MODELLED = {
    "6.1": "before 6.4 zsmalloc kept zspages on almost-empty and almost-full lists and allocated "
    "from them in another order; the model does not have that grouping yet",
}


def kernel_preset(version: str) -> KernelPreset:
    """The preset of ``version``; a ValueError that says why for one that is not modelled."""
    try:
        return KERNELS[version]
    except KeyError:
        why = NOT_MODELLED.get(version)
        if why:
            raise ValueError(f"kernel {version} is not modelled: {why}") from None
        raise ValueError(f"unknown kernel {version!r}; presets: {', '.join(KERNELS)}") from None


@dataclass(frozen=True)
class DeviceSetup:
    """What a device makes of its arguments and a preset: its pool's shape and its algorithm's params."""

    chain_size: int
    class_rule: str
    #: the primary algorithm (a name or a model codec): as given, or the kernel's own codec for it
    algorithm: Any
    params: dict | None


def preset_algorithm(version: str | None, algorithm: A) -> A | str:
    """The codec that compresses as ``version``'s zram does for ``algorithm``: ``lz4`` -> ``lz4-kernel``."""
    return "lz4-kernel" if version is not None and algorithm == "lz4" else algorithm


def apply_kernel(
    version: str | None, algorithm: object, chain_size: int | None, params: dict | None
) -> DeviceSetup:
    """The pool's chain size and class rule, and the primary algorithm and its params, under ``version``.

    Without a preset: chain 8 unless given, the current class rule, and the
    algorithm and params as given.  With one, ``lz4`` is the kernel's own
    compressor (``lz4-kernel``).  With one, a chain size or a zstd frame given that
    disagrees with the preset, or a zstd level that its zram cannot take, is
    a ValueError.
    """
    if version is None:
        return DeviceSetup(8 if chain_size is None else chain_size, "min-waste", algorithm, params)
    preset = kernel_preset(version)
    if chain_size is not None and chain_size != preset.chain_size:
        raise ValueError(f"kernel {version} has chain size {preset.chain_size}, not {chain_size}")
    if algorithm != "zstd":
        return DeviceSetup(preset.chain_size, preset.class_rule, preset_algorithm(version, algorithm), params)
    merged = dict(params or {})
    frame = merged.setdefault("frame", preset.zstd_frame)
    if frame != preset.zstd_frame:
        raise ValueError(f"kernel {version}'s zram frames zstd as {preset.zstd_frame!r}, not {frame!r}")
    if merged.get("level") is not None and not preset.zstd_level:
        raise ValueError(f"kernel {version}'s zram runs zstd at level 3 and takes no level")
    return DeviceSetup(preset.chain_size, preset.class_rule, algorithm, merged)
