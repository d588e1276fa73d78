"""Size classes: which class an allocation lands in, and how big its zspages are.

Pure functions, no state; the pool builds its class table from them once.

There are 255 classes, class i holding objects of 32 + 16*i bytes (the last
one, 254, is 4096).  A request of ``size`` bytes grows by the 8-byte handle
header before the lookup (``zs_malloc``), so the largest request, 4096, lands
in class 254::

    index(size) = 0                         if size <= 32
                = ceil((size - 32) / 16)    otherwise, at most 254

Pages per zspage (the "chain size") for a class of ``s`` bytes, with a limit
of C pages (CONFIG_ZSMALLOC_CHAIN_SIZE, 4..16, default 8):

- ``min-waste`` (mainline since 6.3, ``calculate_zspage_chain_size``): 1 page
  if s is a power of two, otherwise the n in 1..C whose tail waste
  ``n*4096 mod s`` is smallest, the smaller n on a tie;
- ``used-percentage`` (before 6.3, ``get_pages_per_zspage``): the n in 1..C
  with the highest integer percentage of the zspage filled by objects, the
  smaller n on a tie.

Classes are built from 254 down; a class with the same pages_per_zspage and
objs_per_zspage as the class just above it is merged into it ("canonical"
classes are the ones that remain).  Classes with one page and one object are
*huge*: they all merge into class 254 and store objects without the header.
The huge threshold ``zs_huge_class_size`` is the size of the largest class that
has more than one page and more than one object, minus 7.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from zsmalloc.mm import PAGE_SIZE

ZS_MIN_ALLOC_SIZE = 32
ZS_MAX_ALLOC_SIZE = PAGE_SIZE
ZS_SIZE_CLASS_DELTA = 16
ZS_SIZE_CLASSES = (ZS_MAX_ALLOC_SIZE - ZS_MIN_ALLOC_SIZE) // ZS_SIZE_CLASS_DELTA + 1  # 255
ZS_HANDLE_SIZE = 8
ZS_MIN_CHAIN_SIZE = 4
ZS_MAX_CHAIN_SIZE = 16
ZS_DEFAULT_CHAIN_SIZE = 8

RULE_MIN_WASTE = "min-waste"
RULE_USED_PERCENTAGE = "used-percentage"
RULES = (RULE_MIN_WASTE, RULE_USED_PERCENTAGE)


@dataclass(frozen=True)
class ClassSpec:
    """One canonical size class."""

    index: int
    size: int
    pages_per_zspage: int
    objs_per_zspage: int
    huge: bool


def get_size_class_index(size: int) -> int:
    """The class index for an object of ``size`` bytes (header already included)."""
    if size <= ZS_MIN_ALLOC_SIZE:
        return 0
    idx = -(-(size - ZS_MIN_ALLOC_SIZE) // ZS_SIZE_CLASS_DELTA)
    return min(idx, ZS_SIZE_CLASSES - 1)


def class_size(index: int) -> int:
    return min(ZS_MIN_ALLOC_SIZE + index * ZS_SIZE_CLASS_DELTA, ZS_MAX_ALLOC_SIZE)


def calculate_zspage_chain_size(size: int, chain_size: int) -> int:
    """Pages per zspage under the min-waste rule (mainline)."""
    if size & (size - 1) == 0:
        return 1
    best, best_waste = 1, PAGE_SIZE
    for n in range(1, chain_size + 1):
        waste = (n * PAGE_SIZE) % size
        if waste < best_waste:
            best, best_waste = n, waste
    return best


def get_pages_per_zspage(size: int, chain_size: int) -> int:
    """Pages per zspage under the older used-percentage rule."""
    best, best_used = 1, 0
    for n in range(1, chain_size + 1):
        zspage_size = n * PAGE_SIZE
        used = (zspage_size - zspage_size % size) * 100 // zspage_size
        if used > best_used:
            best, best_used = n, used
    return best


def _check_args(chain_size: int, rule: str) -> None:
    if not ZS_MIN_CHAIN_SIZE <= chain_size <= ZS_MAX_CHAIN_SIZE:
        raise ValueError(
            f"chain_size must be within {ZS_MIN_CHAIN_SIZE}..{ZS_MAX_CHAIN_SIZE}, not {chain_size}"
        )
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")


def build_class_table(
    chain_size: int = ZS_DEFAULT_CHAIN_SIZE, rule: str = RULE_MIN_WASTE
) -> tuple[list[int], dict[int, ClassSpec], int]:
    """Build the pool's class table as ``zs_create_pool`` does.

    Returns ``(canonical, specs, huge_class_size)``: ``canonical[i]`` is the
    index of the class that serves class i after merging, ``specs`` maps each
    canonical index to its :class:`ClassSpec`.
    """
    _check_args(chain_size, rule)
    canonical, specs, huge = _class_table(chain_size, rule)
    return list(canonical), dict(specs), huge


@functools.cache
def _class_table(chain_size: int, rule: str) -> tuple[tuple[int, ...], dict[int, ClassSpec], int]:
    pages_for = calculate_zspage_chain_size if rule == RULE_MIN_WASTE else get_pages_per_zspage
    canonical = [0] * ZS_SIZE_CLASSES
    specs: dict[int, ClassSpec] = {}
    huge_class_size = 0
    prev: ClassSpec | None = None
    for i in range(ZS_SIZE_CLASSES - 1, -1, -1):
        size = class_size(i)
        pages = pages_for(size, chain_size)
        objs = pages * PAGE_SIZE // size
        if pages != 1 and objs != 1 and not huge_class_size:
            huge_class_size = size - (ZS_HANDLE_SIZE - 1)
        if prev is not None and prev.pages_per_zspage == pages and prev.objs_per_zspage == objs:
            canonical[i] = prev.index
            continue
        prev = ClassSpec(i, size, pages, objs, huge=(pages == 1 and objs == 1))
        specs[i] = prev
        canonical[i] = i
    return tuple(canonical), specs, huge_class_size


def size_classes(chain_size: int = ZS_DEFAULT_CHAIN_SIZE, rule: str = RULE_MIN_WASTE) -> list[ClassSpec]:
    """The canonical classes for a chain limit and rule, smallest first."""
    _, specs, _ = build_class_table(chain_size, rule)
    return [specs[i] for i in sorted(specs)]


def huge_class_size(chain_size: int = ZS_DEFAULT_CHAIN_SIZE, rule: str = RULE_MIN_WASTE) -> int:
    """``zs_huge_class_size``: requests of this many bytes or more are stored whole."""
    return build_class_table(chain_size, rule)[2]
