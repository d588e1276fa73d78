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
- lz4 is ``LZ4_compress_fast`` at acceleration 1 in every version; the bytes
  it makes still depend on the liblz4 version (the kernel's lib/lz4 is older
  than the engine's liblz4 1.9.4).
- 6.1 is refused: before 6.4 zsmalloc grouped zspages as almost empty and
  almost full, and allocated from those lists in another order, which the
  model does not have yet; a 6.1 preset would not give 6.1's page counts.
"""

from __future__ import annotations

from dataclasses import dataclass


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


#: the presets, by version
KERNELS: dict[str, KernelPreset] = {
    p.version: p
    for p in (
        KernelPreset("6.6", 8, "min-waste", "crypto", zstd_level=False),
        KernelPreset("6.12", 8, "min-waste", "page", zstd_level=True),
        KernelPreset("6.17", 8, "min-waste", "page", zstd_level=True),
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
    params: dict | None


def apply_kernel(
    version: str | None, algorithm: object, chain_size: int | None, params: dict | None
) -> DeviceSetup:
    """The pool's chain size and class rule, and the primary algorithm's params, under ``version``.

    Without a preset: chain 8 unless given, the current class rule, and the
    params as given.  With one, a chain size or a zstd frame given that
    disagrees with the preset, or a zstd level that its zram cannot take, is
    a ValueError.
    """
    if version is None:
        return DeviceSetup(8 if chain_size is None else chain_size, "min-waste", params)
    preset = kernel_preset(version)
    if chain_size is not None and chain_size != preset.chain_size:
        raise ValueError(f"kernel {version} has chain size {preset.chain_size}, not {chain_size}")
    if algorithm != "zstd":
        return DeviceSetup(preset.chain_size, preset.class_rule, params)
    merged = dict(params or {})
    frame = merged.setdefault("frame", preset.zstd_frame)
    if frame != preset.zstd_frame:
        raise ValueError(f"kernel {version}'s zram frames zstd as {preset.zstd_frame!r}, not {frame!r}")
    if merged.get("level") is not None and not preset.zstd_level:
        raise ValueError(f"kernel {version}'s zram runs zstd at level 3 and takes no level")
    return DeviceSetup(preset.chain_size, preset.class_rule, merged)
