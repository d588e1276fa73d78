"""Encodings shared by the allocator's modules: object tags, locations, handles, fullness groups.

Object location (what a handle's table entry holds)::

    (pfn << OBJ_INDEX_BITS) | obj_idx      pfn: the page the object starts in
                                           obj_idx: its index in the zspage

Handle (see pool/zsmalloc.py for the table, pool/handles.py for the tag)::

    (slot << HANDLE_SLOT_SHIFT) | (tag << HANDLE_TAG_SHIFT) | (generation << 1)
                                                         bit 0 always clear
"""

from zsmalloc.mm import PAGE_SHIFT, PAGE_SIZE
from zsmalloc.pool.handles import HANDLE_TAG_SHIFT
from zsmalloc.pool.size_class import ZS_MAX_CHAIN_SIZE, ZS_MIN_ALLOC_SIZE

OBJ_ALLOCATED_TAG = 1
OBJ_TAG_BITS = 1
# More than enough bits for the most objects a zspage can hold (16 pages of
# 32-byte objects: 2048), and exactly PAGE_SHIFT of them, so that a location
# minus its obj_idx is the arena address of the page it names.
OBJ_INDEX_BITS = PAGE_SHIFT
assert ZS_MAX_CHAIN_SIZE * PAGE_SIZE // ZS_MIN_ALLOC_SIZE <= 1 << OBJ_INDEX_BITS
OBJ_INDEX_MASK = (1 << OBJ_INDEX_BITS) - 1
FREE_LIST_END = ((1 << 64) - 1) & ~OBJ_ALLOCATED_TAG  # the kernel's -1UL << OBJ_TAG_BITS

HANDLE_SLOT_SHIFT = 32  # slot = handle >> HANDLE_SLOT_SHIFT: one shift, no mask
HANDLE_SLOT_BITS = 31
HANDLE_SLOT_MASK = (1 << HANDLE_SLOT_BITS) - 1  # the highest slot
HANDLE_GEN_SHIFT = 1
HANDLE_GEN_MASK = (1 << (HANDLE_TAG_SHIFT - HANDLE_GEN_SHIFT)) - 1  # 19 bits, below the pool tag
HANDLE_LOW_MASK = (1 << HANDLE_SLOT_SHIFT) - 1  # tag, generation and bit 0
# Bit 63 set in the table: the slot holds no live handle.  No handle has it
# (a slot is below 2**31), so a table entry of a freed slot never equals a
# handle passed in, whatever its low bits: one comparison validates a handle.
HANDLE_FREED = 1 << 63

# how a pool groups its zspages by fullness (``Pool(fullness=...)``)
FULLNESS_RATIO = "ratio"  # 6.4 and later: the groups below
FULLNESS_LEGACY = "legacy"  # 4.8 to 6.3: empty, almost empty, almost full, full (pool/legacy.py)
FULLNESS_GROUPINGS = (FULLNESS_RATIO, FULLNESS_LEGACY)

# fullness groups (6.4+): 0 empty, 1..10 by tenths of use, 11 full
ZS_INUSE_RATIO_0 = 0
ZS_INUSE_RATIO_10 = 1
ZS_INUSE_RATIO_99 = 10
ZS_INUSE_RATIO_100 = 11
NR_FULLNESS_GROUPS = 12
FG_NONE = -1  # a zspage on no fullness list (being built, or taken by the deferred free)
ALLOC_GROUPS_MASK = (1 << ZS_INUSE_RATIO_100) - 1  # groups 0..10 can take an object


def get_fullness_group(inuse: int, objs_per_zspage: int) -> int:
    """The fullness group of a zspage with ``inuse`` of its ``objs_per_zspage`` objects allocated."""
    if inuse == 0:
        return ZS_INUSE_RATIO_0
    if inuse == objs_per_zspage:
        return ZS_INUSE_RATIO_100
    return (100 * inuse // objs_per_zspage) // 10 + 1
