"""``pool.check()`` has teeth: each kind of damage is caught, with its precise message.

Every test builds the same healthy pool (check passes), damages one thing
through ``zsmalloc.debug.damage``, expects CorruptionError with the exact
message, repairs the damage, and expects check to pass again with every
object intact.  What the tests know of the pool they read from its snapshot
(``zsmalloc.debug.snapshot``), not from its private tables.

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

from zsmalloc import CorruptionError, debug
from zsmalloc.mm import PG_movable
from zsmalloc.model import Pool  # the damage hooks reach into the model's tables
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

    def snap(self) -> dict:
        return debug.snapshot(self.pool)

    def zid(self, h: int) -> int:
        snap = self.snap()
        return snap["pages"][snap["handles"][slot_of(h)]["pfn"]]["private"]

    def loc(self, h: int) -> int:
        entry = self.snap()["handles"][slot_of(h)]
        return (entry["pfn"] << OBJ_INDEX_BITS) | entry["idx"]

    def zspage(self, zid: int) -> dict:
        return self.snap()["zspages"][zid]

    def where(self, zid: int) -> str:
        zs = self.zspage(zid)
        return f"zspage {zid} (class {zs['class']}, first pfn {zs['pages'][0]})"

    def damage(self, what: str, *key: int, value: int) -> int:
        return debug.damage(self.pool, what, *key, value=value)

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
        za, zb, zc = (st.zspage(st.zid(h)) for h in (a[0], b[0], c))
        assert (za["class"], zb["class"], zc["class"]) == (96, 0, 254)
        assert (za["inuse"], zb["inuse"], zc["inuse"]) == (9, 19, 1)
        assert za["freeobj"] == 4
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
    zid = st.zid(h)
    assert st.zspage(zid)["headers"][idx] == h | OBJ_ALLOCATED_TAG
    header = st.damage("slot.word", zid, idx, value=h)
    assert header == h | OBJ_ALLOCATED_TAG
    expect_corruption(st, f"{st.where(zid)}: object {idx} is not free but its header {h:#x} is untagged")
    st.damage("slot.word", zid, idx, value=header)
    st.verify()


def test_header_holds_a_stale_generation(healthy):
    st = healthy
    h = st.b[7]
    zid = st.zid(h)
    idx = st.loc(h) & IDX_MASK
    header = st.damage("slot.word", zid, idx, value=(h + (1 << 1)) | OBJ_ALLOCATED_TAG)  # the next generation
    expect_corruption(st, f"handle {h:#x}: the object header holds {h + (1 << 1):#x} (stale generation)")
    st.damage("slot.word", zid, idx, value=header)
    st.verify()


def test_huge_handle_untagged(healthy):
    st = healthy
    zid = st.zid(st.c)
    pfn = st.zspage(zid)["pages"][0]
    tag = st.damage("page.index", pfn, value=st.c)
    assert tag == st.c | OBJ_ALLOCATED_TAG
    expect_corruption(st, f"{st.where(zid)}: huge object's handle {st.c:#x} in page {pfn} is not tagged")
    st.damage("page.index", pfn, value=tag)
    st.verify()


def _a_free_links(st: Healthy) -> int:
    zid = st.zid(st.a[0])
    headers = st.zspage(zid)["headers"]
    # the free list, read straight from the page bytes: 4 -> 10 -> 11 -> 12 -> end
    assert [headers[i] for i in (4, 10, 11, 12)] == [10 << 1, 11 << 1, 12 << 1, FREE_LIST_END]
    return zid


def test_free_list_cycle(healthy):
    st = healthy
    zid = _a_free_links(st)
    st.damage("slot.word", zid, 12, value=10 << 1)
    expect_corruption(st, f"{st.where(zid)}: free list visits object 10 twice")
    st.damage("slot.word", zid, 12, value=FREE_LIST_END)
    st.verify()


def test_free_list_self_loop(healthy):
    st = healthy
    zid = _a_free_links(st)
    st.damage("slot.word", zid, 4, value=4 << 1)
    expect_corruption(st, f"{st.where(zid)}: free list visits object 4 twice")
    st.damage("slot.word", zid, 4, value=10 << 1)
    st.verify()


def test_free_list_link_out_of_range(healthy):
    st = healthy
    zid = _a_free_links(st)
    st.damage("slot.word", zid, 11, value=16 << 1)
    expect_corruption(st, f"{st.where(zid)}: free list reaches object 16, outside 0..12")
    st.damage("slot.word", zid, 11, value=12 << 1)
    st.verify()


def test_free_list_into_an_allocated_object(healthy):
    st = healthy
    zid = _a_free_links(st)
    st.damage("slot.word", zid, 10, value=2 << 1)
    expect_corruption(st, f"{st.where(zid)}: object 2 is on the free list but its header is tagged")
    st.damage("slot.word", zid, 10, value=11 << 1)
    st.verify()


def test_free_list_cut_short(healthy):
    st = healthy
    zid = _a_free_links(st)
    st.damage("slot.word", zid, 10, value=FREE_LIST_END)  # 11 and 12 fall off the list
    expect_corruption(st, f"{st.where(zid)}: free list holds 2 objects, inuse 9 of 13 says 4")
    st.damage("slot.word", zid, 10, value=11 << 1)
    st.verify()


# ----------------------------------------------------------------------
# zspage and class bookkeeping


@pytest.mark.parametrize("delta", [1, -1])
def test_wrong_inuse_count(healthy, delta):
    st = healthy
    zid = st.zid(st.a[0])
    inuse = st.damage("zspage.inuse", zid, value=9 + delta)
    expect_corruption(
        st, f"{st.where(zid)}: free list holds 4 objects, inuse {9 + delta} of 13 says {4 - delta}"
    )
    st.damage("zspage.inuse", zid, value=inuse)
    st.verify()


def test_zspage_on_the_wrong_fullness_list(healthy):
    st = healthy
    zid = st.zid(st.b[0])
    right = (100 * 19 // 128) // 10 + 1  # KERNEL.md section 3: 19 of 128 in use -> group 2
    [cls] = (c for c in st.snap()["classes"] if c["index"] == 0)
    assert right == 2 and cls["fullness"][right] == [zid]
    assert st.damage("zspage.fg", zid, value=7) == right
    expect_corruption(st, f"{st.where(zid)}: in fullness group 7, inuse 19/128 calls for 2")
    st.damage("zspage.fg", zid, value=right)
    st.verify()


def test_full_zspage_listed_as_partial(healthy):
    st = healthy
    zid = st.zid(st.c)
    assert st.damage("zspage.fg", zid, value=10) == 11
    expect_corruption(st, f"{st.where(zid)}: in fullness group 10, inuse 1/1 calls for 11")
    st.damage("zspage.fg", zid, value=11)
    st.verify()


def test_wrong_objs_allocated(healthy):
    st = healthy
    assert st.damage("class.objs_allocated", 0, value=256) == 128
    expect_corruption(st, "class 0: objs_allocated 256, but 1 zspages hold 128")
    st.damage("class.objs_allocated", 0, value=128)
    st.verify()


def test_wrong_objs_inuse(healthy):
    st = healthy
    assert st.damage("class.objs_inuse", 96, value=8) == 9
    expect_corruption(st, "class 96: objs_inuse 8, but its zspages hold 9")
    st.damage("class.objs_inuse", 96, value=9)
    st.verify()


def test_zspage_lock_left_write_locked(healthy):
    st = healthy
    zid = st.zid(st.b[0])
    assert st.damage("zspage.lock", zid, value=-1) == 0
    expect_corruption(st, f"{st.where(zid)}: zspage lock left write-locked")
    st.damage("zspage.lock", zid, value=0)
    st.verify()


def test_free_zspage_id_with_isolated_pages(healthy):
    st = healthy
    zid = st.zid(st.c)
    st.pool.free(st.c)  # its zspage goes at once: the id is back in the cache
    del st.data[st.c]
    assert zid in st.snap()["free_zspage_ids"]
    assert st.damage("zspage.isolated", zid, value=1) == 0
    expect_corruption(st, f"free zspage id {zid} has 1 isolated pages")
    st.damage("zspage.isolated", zid, value=0)
    st.verify()


# ----------------------------------------------------------------------
# the handle table


def test_handle_points_at_the_wrong_location(healthy):
    st = healthy
    h6, h7 = st.b[6], st.b[7]
    loc6, loc7 = st.loc(h6), st.loc(h7)
    assert st.damage("handle.location", slot_of(h6), value=loc7) == loc6
    expect_corruption(st, f"handle {h6:#x}: table says location {loc7:#x}, its header is at {loc6:#x}")
    st.damage("handle.location", slot_of(h6), value=loc6)
    st.verify()


def test_handle_size_too_big_for_its_class(healthy):
    st = healthy
    h = st.b[0]
    assert st.damage("handle.size", slot_of(h), value=25) == 24  # class 32 holds 24 bytes after the header
    expect_corruption(st, f"handle {h:#x}: size 25 does not fit class 0")
    st.damage("handle.size", slot_of(h), value=24)
    st.verify()


def test_handle_size_of_a_smaller_class(healthy):
    # read and write find an object's class by its size: a size that fits
    # the object's class but maps to a smaller one would misplace their bytes
    st = healthy
    h = st.a[0]
    size = st.damage("handle.size", slot_of(h), value=24)
    expect_corruption(st, f"handle {h:#x}: size 24 maps to another class than 96")
    st.damage("handle.size", slot_of(h), value=size)
    st.verify()


def test_freed_handle_slot_missing_from_the_cache(healthy):
    st = healthy
    slot = slot_of(st.b[3])  # freed in the fixture
    assert st.damage("handle_cache", slot, value=0) == 1
    expect_corruption(st, f"handle slot {slot} is free but not in the handle cache")
    st.damage("handle_cache", slot, value=1)
    st.verify()


# ----------------------------------------------------------------------
# pages


def test_page_descriptor_names_the_wrong_zspage(healthy):
    st = healthy
    zid = st.zid(st.a[0])
    pfn = st.zspage(zid)["pages"][2]
    assert st.damage("page.private", pfn, value=zid + 77) == zid
    expect_corruption(st, f"{st.where(zid)}: page {pfn} descriptor names zspage {zid + 77}")
    st.damage("page.private", pfn, value=zid)
    st.verify()


@pytest.mark.parametrize(("page", "expected"), [(1, 3 * 1568 - PAGE), (2, 6 * 1568 - 2 * PAGE)])
def test_wrong_first_obj_offset(healthy, page, expected):
    st = healthy
    zid = st.zid(st.a[0])
    pfn = st.zspage(zid)["pages"][page]
    assert st.damage("page.first_obj_offset", pfn, value=expected - 8) == expected  # 608, 1216
    expect_corruption(st, f"{st.where(zid)}: page {pfn} first_obj_offset {expected - 8}, expected {expected}")
    st.damage("page.first_obj_offset", pfn, value=expected)
    st.verify()


def test_chain_cycle(healthy):
    st = healthy
    zid = st.zid(st.a[0])
    pages = st.zspage(zid)["pages"]
    assert st.damage("page.next", pages[4], value=pages[0]) == -1
    expect_corruption(st, f"{st.where(zid)}: chain longer than 5 pages (cycle?)")
    st.damage("page.next", pages[4], value=-1)
    st.verify()


def test_wrong_pages_allocated(healthy):
    st = healthy
    n = st.damage("pages_allocated", value=5 + 1 + 1 + 1)
    assert n == 5 + 1 + 1
    expect_corruption(st, f"pool counts {n + 1} pages, its zspages hold {n}")
    st.damage("pages_allocated", value=n)
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
    pfn = st.zspage(zid)["pages"][3]
    flags = st.snap()["pages"][pfn]["flags"]
    assert flags & PG_movable
    st.damage("page.flags", pfn, value=flags & ~PG_movable)
    expect_corruption(st, f"{st.where(zid)}: page {pfn} is not marked movable by this pool")
    st.damage("page.flags", pfn, value=flags)
    st.verify()


def test_page_movable_for_another_owner(healthy):
    st = healthy
    zid = st.zid(st.b[0])
    pfn = st.zspage(zid)["pages"][0]
    mem = st.pool.memory
    other = mem.register_movable_ops(object())
    ours = st.damage("page.movable_ops", pfn, value=other)
    assert ours == st.snap()["ops_id"] != other
    expect_corruption(st, f"{st.where(zid)}: page {pfn} is not marked movable by this pool")
    st.damage("page.movable_ops", pfn, value=ours)
    mem.unregister_movable_ops(other)
    st.verify()
