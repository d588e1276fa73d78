"""``pool.check()`` has teeth: each kind of damage is caught, with its precise message.

Every test builds the same healthy pool (check passes), damages one thing,
expects CorruptionError with the exact message, repairs the damage, and
expects check to pass again with every object intact.

The pool, chain size 8:

- zspage A: class 96 (1568 bytes: 5 pages, 13 objects), objects 0..9 allocated,
  then object 4 freed: free list 4 -> 10 -> 11 -> 12 -> end, inuse 9;
- zspage B: class 0 (32 bytes: 1 page, 128 objects), objects 0..19, then
  object 3 freed: inuse 19;
- zspage C: a huge object (4096 bytes, no header).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import pytest

from zsmalloc import CorruptionError, Pool
from zsmalloc.pool.zsmalloc import FREE_LIST_END, OBJ_ALLOCATED_TAG, OBJ_INDEX_BITS

PAGE = 4096
SLOT_SHIFT = 32  # handle = slot << 32 | generation << 1
IDX_MASK = (1 << OBJ_INDEX_BITS) - 1


def slot_of(handle: int) -> int:
    return handle >> SLOT_SHIFT


@dataclass
class Healthy:
    pool: Pool
    a: list[int]  # handles by object index (A: 1568-byte class)
    b: list[int]  # (B: 32-byte class)
    c: int  # the huge object
    data: dict[int, bytes] = field(default_factory=dict)

    def zid(self, h: int) -> int:
        return self.pool.memory.private[self.loc(h) >> OBJ_INDEX_BITS]

    def loc(self, h: int) -> int:
        return self.pool._h_obj[slot_of(h)]

    def where(self, zid: int) -> str:
        return f"zspage {zid} (class {self.pool._zs_class[zid]}, first pfn {self.pool._zs_first[zid]})"

    def header_word(self, h: int) -> int:
        """Word index of an allocated object's header, from its location alone."""
        loc = self.loc(h)
        pfn, idx = loc >> OBJ_INDEX_BITS, loc & IDX_MASK
        cls = self.pool.size_class[self.pool._zs_class[self.pool.memory.private[pfn]]]
        return (pfn * PAGE + (idx * cls.size) % PAGE) // 8

    def slot_word(self, zid: int, idx: int, size: int) -> int:
        """Word index of object ``idx``'s first word, walking the zspage's pages."""
        pages = self.pool.zspage_pages(zid)
        off = idx * size
        return (pages[off // PAGE] * PAGE + off % PAGE) // 8

    def verify(self) -> None:
        self.pool.check()
        for h, d in self.data.items():
            assert self.pool.read(h) == d


@pytest.fixture
def healthy():
    rng = random.Random(0)
    with Pool(name="damage", chain_size=8) as pool:
        a = [pool.malloc(1560) for _ in range(10)]
        b = [pool.malloc(24) for _ in range(20)]
        c = pool.malloc(4096)
        st = Healthy(pool, a, b, c)
        for h in [*a, *b, c]:
            d = rng.randbytes(pool.handle_size(h))
            pool.write(h, d)
            st.data[h] = d
        for lst, idx in ((b, 3), (a, 4)):
            pool.free(lst[idx])
            del st.data[lst[idx]]
        # the layout the tests rely on
        za, zb, zc = st.zid(a[0]), st.zid(b[0]), st.zid(c)
        assert (pool._zs_class[za], pool._zs_class[zb], pool._zs_class[zc]) == (96, 0, 254)
        assert (pool._zs_inuse[za], pool._zs_inuse[zb], pool._zs_inuse[zc]) == (9, 19, 1)
        assert pool._zs_freeobj[za] == 4
        for k, h in enumerate(a):
            if k != 4:
                assert st.loc(h) & IDX_MASK == k
        st.verify()
        yield st


def expect_corruption(st: Healthy, message: str) -> None:
    with pytest.raises(CorruptionError, match="^" + re.escape(message) + "$"):
        st.pool.check()


# ----------------------------------------------------------------------
# object headers and free lists (in the page bytes)


@pytest.mark.parametrize(("which", "idx"), [("b", 5), ("a", 7), ("a", 2)])  # a2, a7: spanning objects
def test_allocated_tag_cleared(healthy, which, idx):
    st = healthy
    h = getattr(st, which)[idx]
    words = st.pool.memory.words
    w = st.header_word(h)
    assert words[w] == h | OBJ_ALLOCATED_TAG  # the header is where the kernel keeps it
    words[w] ^= OBJ_ALLOCATED_TAG
    zid = st.zid(h)
    expect_corruption(st, f"{st.where(zid)}: object {idx} is not free but its header {h:#x} is untagged")
    words[w] ^= OBJ_ALLOCATED_TAG
    st.verify()


def test_header_holds_a_stale_generation(healthy):
    st = healthy
    h = st.b[7]
    words = st.pool.memory.words
    w = st.header_word(h)
    words[w] = (h + (1 << 1)) | OBJ_ALLOCATED_TAG  # the next generation
    expect_corruption(st, f"handle {h:#x}: the object header holds {h + (1 << 1):#x} (stale generation)")
    words[w] = h | OBJ_ALLOCATED_TAG
    st.verify()


def test_huge_handle_untagged(healthy):
    st = healthy
    zid = st.zid(st.c)
    pfn = st.pool._zs_first[zid]
    assert st.pool.memory.index[pfn] == st.c | OBJ_ALLOCATED_TAG
    st.pool.memory.index[pfn] ^= OBJ_ALLOCATED_TAG
    expect_corruption(st, f"{st.where(zid)}: huge object's handle {st.c:#x} in page {pfn} is not tagged")
    st.pool.memory.index[pfn] ^= OBJ_ALLOCATED_TAG
    st.verify()


def _a_free_links(st: Healthy):
    zid = st.zid(st.a[0])
    words = st.pool.memory.words
    link = {idx: st.slot_word(zid, idx, 1568) for idx in (4, 10, 11, 12)}
    # the free list, read straight from the page bytes: 4 -> 10 -> 11 -> 12 -> end
    assert [words[link[i]] for i in (4, 10, 11, 12)] == [10 << 1, 11 << 1, 12 << 1, FREE_LIST_END]
    return zid, words, link


def test_free_list_cycle(healthy):
    st = healthy
    zid, words, link = _a_free_links(st)
    words[link[12]] = 10 << 1
    expect_corruption(st, f"{st.where(zid)}: free list visits object 10 twice")
    words[link[12]] = FREE_LIST_END
    st.verify()


def test_free_list_self_loop(healthy):
    st = healthy
    zid, words, link = _a_free_links(st)
    words[link[4]] = 4 << 1
    expect_corruption(st, f"{st.where(zid)}: free list visits object 4 twice")
    words[link[4]] = 10 << 1
    st.verify()


def test_free_list_link_out_of_range(healthy):
    st = healthy
    zid, words, link = _a_free_links(st)
    words[link[11]] = 16 << 1
    expect_corruption(st, f"{st.where(zid)}: free list reaches object 16, outside 0..12")
    words[link[11]] = 12 << 1
    st.verify()


def test_free_list_into_an_allocated_object(healthy):
    st = healthy
    zid, words, link = _a_free_links(st)
    words[link[10]] = 2 << 1
    expect_corruption(st, f"{st.where(zid)}: object 2 is on the free list but its header is tagged")
    words[link[10]] = 11 << 1
    st.verify()


def test_free_list_cut_short(healthy):
    st = healthy
    zid, words, link = _a_free_links(st)
    words[link[10]] = FREE_LIST_END  # 11 and 12 fall off the list
    expect_corruption(st, f"{st.where(zid)}: free list holds 2 objects, inuse 9 of 13 says 4")
    words[link[10]] = 11 << 1
    st.verify()


# ----------------------------------------------------------------------
# zspage and class bookkeeping


@pytest.mark.parametrize("delta", [1, -1])
def test_wrong_inuse_count(healthy, delta):
    st = healthy
    zid = st.zid(st.a[0])
    st.pool._zs_inuse[zid] += delta
    expect_corruption(
        st, f"{st.where(zid)}: free list holds 4 objects, inuse {9 + delta} of 13 says {4 - delta}"
    )
    st.pool._zs_inuse[zid] -= delta
    st.verify()


def test_zspage_on_the_wrong_fullness_list(healthy):
    st = healthy
    pool = st.pool
    zid = st.zid(st.b[0])
    cls = pool.size_class[0]
    right = (100 * 19 // 128) // 10 + 1  # KERNEL.md section 3: 19 of 128 in use -> group 2
    assert right == 2 and cls.nr_zspages[right] == 1
    pool.remove_zspage(cls, zid)
    pool.insert_zspage(cls, zid, 7)
    expect_corruption(st, f"{st.where(zid)}: in fullness group 7, inuse 19/128 calls for 2")
    pool.remove_zspage(cls, zid)
    pool.insert_zspage(cls, zid, right)
    st.verify()


def test_full_zspage_listed_as_partial(healthy):
    st = healthy
    pool = st.pool
    zid = st.zid(st.c)
    cls = pool.size_class[254]
    pool.remove_zspage(cls, zid)
    pool.insert_zspage(cls, zid, 10)
    expect_corruption(st, f"{st.where(zid)}: in fullness group 10, inuse 1/1 calls for 11")
    pool.remove_zspage(cls, zid)
    pool.insert_zspage(cls, zid, 11)
    st.verify()


def test_wrong_objs_allocated(healthy):
    st = healthy
    cls = st.pool.size_class[0]
    cls.objs_allocated += 128
    expect_corruption(st, "class 0: objs_allocated 256, but 1 zspages hold 128")
    cls.objs_allocated -= 128
    st.verify()


def test_wrong_objs_inuse(healthy):
    st = healthy
    cls = st.pool.size_class[96]
    cls.objs_inuse -= 1
    expect_corruption(st, "class 96: objs_inuse 8, but its zspages hold 9")
    cls.objs_inuse += 1
    st.verify()


def test_zspage_lock_left_write_locked(healthy):
    st = healthy
    zid = st.zid(st.b[0])
    st.pool._zs_lock[zid] = -1
    expect_corruption(st, f"{st.where(zid)}: zspage lock left write-locked")
    st.pool._zs_lock[zid] = 0
    st.verify()


# ----------------------------------------------------------------------
# the handle table


def test_handle_points_at_the_wrong_location(healthy):
    st = healthy
    h6, h7 = st.b[6], st.b[7]
    loc6, loc7 = st.loc(h6), st.loc(h7)
    st.pool._h_obj[slot_of(h6)] = loc7
    expect_corruption(st, f"handle {h6:#x}: table says location {loc7:#x}, its header is at {loc6:#x}")
    st.pool._h_obj[slot_of(h6)] = loc6
    st.verify()


def test_handle_size_too_big_for_its_class(healthy):
    st = healthy
    h = st.b[0]
    st.pool._h_size[slot_of(h)] = 25  # class 32 holds 24 bytes after the header
    expect_corruption(st, f"handle {h:#x}: size 25 does not fit class 0")
    st.pool._h_size[slot_of(h)] = 24
    st.verify()


def test_handle_size_of_a_smaller_class(healthy):
    # read and write find an object's class by its size: a size that fits
    # the object's class but maps to a smaller one would misplace their bytes
    st = healthy
    h = st.a[0]
    size = st.pool.handle_size(h)
    st.pool._h_size[slot_of(h)] = 24
    expect_corruption(st, f"handle {h:#x}: size 24 maps to another class than 96")
    st.pool._h_size[slot_of(h)] = size
    st.verify()


def test_freed_handle_slot_missing_from_the_cache(healthy):
    st = healthy
    slot = slot_of(st.b[3])  # freed in the fixture
    saved = list(st.pool._h_free)
    st.pool._h_free.remove(slot)
    expect_corruption(st, f"handle slot {slot} is free but not in the handle cache")
    del st.pool._h_free[:]
    st.pool._h_free.extend(saved)
    st.verify()


# ----------------------------------------------------------------------
# pages


def test_page_descriptor_names_the_wrong_zspage(healthy):
    st = healthy
    zid = st.zid(st.a[0])
    pfn = st.pool.zspage_pages(zid)[2]
    st.pool.memory.private[pfn] = zid + 77
    expect_corruption(st, f"{st.where(zid)}: page {pfn} descriptor names zspage {zid + 77}")
    st.pool.memory.private[pfn] = zid
    st.verify()


@pytest.mark.parametrize(("page", "expected"), [(1, 3 * 1568 - PAGE), (2, 6 * 1568 - 2 * PAGE)])
def test_wrong_first_obj_offset(healthy, page, expected):
    st = healthy
    zid = st.zid(st.a[0])
    pfn = st.pool.zspage_pages(zid)[page]
    mem = st.pool.memory
    assert mem.first_obj_offset[pfn] == expected  # 608, 1216
    mem.first_obj_offset[pfn] = expected - 8
    expect_corruption(st, f"{st.where(zid)}: page {pfn} first_obj_offset {expected - 8}, expected {expected}")
    mem.first_obj_offset[pfn] = expected
    st.verify()


def test_chain_cycle(healthy):
    st = healthy
    zid = st.zid(st.a[0])
    pages = st.pool.zspage_pages(zid)
    mem = st.pool.memory
    mem.next[pages[4]] = pages[0]
    expect_corruption(st, f"{st.where(zid)}: chain longer than 5 pages (cycle?)")
    mem.next[pages[4]] = -1
    st.verify()


def test_wrong_pages_allocated(healthy):
    st = healthy
    n = st.pool.pages_allocated
    assert n == 5 + 1 + 1
    st.pool.pages_allocated = n + 1
    expect_corruption(st, f"pool counts {n + 1} pages, its zspages hold {n}")
    st.pool.pages_allocated = n
    st.verify()


def test_stray_frame_in_the_pools_memory(healthy):
    st = healthy
    mem = st.pool.memory
    pfn = mem.alloc_page()  # a frame nobody accounts for
    used = st.pool.pages_allocated + 1
    expect_corruption(st, f"memory has {used} frames in use (0 held by the VM only), the pool holds 7")
    mem.free_page(pfn)
    st.verify()


def test_page_not_marked_movable(healthy):
    st = healthy
    zid = st.zid(st.a[0])
    pfn = st.pool.zspage_pages(zid)[3]
    mem = st.pool.memory
    mem.clear_page_movable(pfn)
    expect_corruption(st, f"{st.where(zid)}: page {pfn} is not marked movable by this pool")
    mem.set_page_movable(pfn, st.pool._ops_id)
    st.verify()


def test_page_movable_for_another_owner(healthy):
    st = healthy
    zid = st.zid(st.b[0])
    pfn = st.pool.zspage_pages(zid)[0]
    mem = st.pool.memory
    other = mem.register_movable_ops(object())
    mem.set_page_movable(pfn, other)
    expect_corruption(st, f"{st.where(zid)}: page {pfn} is not marked movable by this pool")
    mem.set_page_movable(pfn, st.pool._ops_id)
    mem.unregister_movable_ops(other)
    st.verify()
