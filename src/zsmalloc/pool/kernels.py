"""The pool's part of a kernel preset: each version's chain size, class rule and fullness grouping.

``Pool(kernel="6.1")`` (model and engine) and ``zsmalloc replay --kernel``
take these; ``zsmalloc.zram.kernels`` adds zram's part (codecs, frames,
recompression) on top::

    kernel  chain  class rule        fullness   what changed
    6.1     4      used-percentage   legacy     (ZS_MAX_ZSPAGE_ORDER 2: at most 4 pages)
    6.6     8      min-waste         ratio      6.3: CONFIG_ZSMALLOC_CHAIN_SIZE, least tail waste;
                                                6.4: groups by tenths and their compaction
    6.12    8      min-waste         ratio
    6.17    8      min-waste         ratio

The chain size is the kernel's default (Debian keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass

from zsmalloc.pool.constants import FULLNESS_LEGACY, FULLNESS_RATIO
from zsmalloc.pool.size_class import RULE_MIN_WASTE, RULE_USED_PERCENTAGE, ZS_DEFAULT_CHAIN_SIZE


@dataclass(frozen=True)
class PoolShape:
    """How a pool is built: what a kernel version's zsmalloc fixes."""

    chain_size: int
    class_rule: str
    fullness: str


#: each kernel version's zsmalloc
POOL_KERNELS: dict[str, PoolShape] = {
    "6.1": PoolShape(4, RULE_USED_PERCENTAGE, FULLNESS_LEGACY),
    "6.6": PoolShape(8, RULE_MIN_WASTE, FULLNESS_RATIO),
    "6.12": PoolShape(8, RULE_MIN_WASTE, FULLNESS_RATIO),
    "6.17": PoolShape(8, RULE_MIN_WASTE, FULLNESS_RATIO),
}


def pool_kernel(version: str) -> PoolShape:
    """The pool of ``version``; a ValueError for a version that has no preset."""
    try:
        return POOL_KERNELS[version]
    except KeyError:
        raise ValueError(f"unknown kernel {version!r}; presets: {', '.join(POOL_KERNELS)}") from None


def pool_shape(
    kernel: str | None, chain_size: int | None, class_rule: str | None, fullness: str | None
) -> PoolShape:
    """A pool's shape from its arguments: the defaults, or ``kernel``'s.

    Under a kernel, a chain size, rule or grouping given as well must be that
    kernel's (a ValueError says which differs).
    """
    if kernel is None:
        return PoolShape(
            ZS_DEFAULT_CHAIN_SIZE if chain_size is None else chain_size,
            RULE_MIN_WASTE if class_rule is None else class_rule,
            FULLNESS_RATIO if fullness is None else fullness,
        )
    shape = pool_kernel(kernel)
    for what, given, want in (
        ("chain size", chain_size, shape.chain_size),
        ("class rule", class_rule, shape.class_rule),
        ("fullness grouping", fullness, shape.fullness),
    ):
        if given is not None and given != want:
            raise ValueError(f"kernel {kernel}'s zsmalloc has {what} {want}, not {given}")
    return shape
