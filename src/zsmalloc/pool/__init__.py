"""The allocator (mm/zsmalloc.c): size classes, zspages, handles, fullness groups, stats."""

from zsmalloc.pool.constants import FULLNESS_LEGACY, FULLNESS_RATIO
from zsmalloc.pool.size_class import (
    RULE_MIN_WASTE,
    RULE_USED_PERCENTAGE,
    ClassSpec,
    huge_class_size,
    size_classes,
)
from zsmalloc.pool.stats import ClassStats, PoolStats, format_classes
from zsmalloc.pool.zsmalloc import Pool, SizeClass

__all__ = [
    "FULLNESS_LEGACY",
    "FULLNESS_RATIO",
    "RULE_MIN_WASTE",
    "RULE_USED_PERCENTAGE",
    "ClassSpec",
    "ClassStats",
    "Pool",
    "PoolStats",
    "SizeClass",
    "format_classes",
    "huge_class_size",
    "size_classes",
]
