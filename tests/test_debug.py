"""``zsmalloc.debug``: the snapshot format, against what the pool's public API says, and
``check_snapshot`` on snapshots damaged by hand; on both implementations (the damage hooks:
the model only)."""

from __future__ import annotations

import copy
import re

import pytest

from zsmalloc import CorruptionError, Pool, debug
from zsmalloc.debug import check_snapshot
from zsmalloc.pool.size_class import get_size_class_index, size_classes
from zsmalloc.pool.zsmalloc import OBJ_ALLOCATED_TAG

pytestmark = pytest.mark.usefixtures("each_backend")

PAGE = 4096
SLOT_SHIFT = 32
TOP_KEYS = [
    "name",
    "chain_size",
    "class_rule",
    "fullness",
    "migration",
    "huge_class_size",
    "pages_allocated",
    "events",
    "ops_id",
    "classes",
    "class_of_size",
    "zspages",
    "free_zspage_ids",
    "nr_zspage_ids",
    "handles",
    "free_handle_slots",
    "nr_handle_slots",
    "pinned",
    "deferred",
    "pages",
    "memory",
    "closed",
]
CLASS_KEYS = [
    "index",
    "size",
    "pages_per_zspage",
    "objs_per_zspage",
    "huge",
    "objs_allocated",
    "objs_inuse",
    "fullness",
]
ZSPAGE_KEYS = ["class", "inuse", "freeobj", "fg", "lock", "isolated", "pages", "headers"]
PAGE_KEYS = ["flags", "refcount", "movable_ops", "private", "index", "next", "first_obj_offset"]
# one object per kind: a small class, a class whose object 2 spans pages 0 and 1
# (1568 bytes), a middling one, and a huge one (stored whole, no header)
SIZES = [24, 1560, 1560, 1560, 500, 4000]


def assert_plain(value: object, path: str = "snap") -> None:
    """Only dicts with int or str keys, lists, ints, strs, bools and bytes."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert type(k) in (int, str), f"{path}: key {k!r}"
            assert_plain(v, f"{path}[{k!r}]")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            assert_plain(v, f"{path}[{i}]")
    else:
        assert type(value) in (int, str, bool, bytes), f"{path}: {type(value).__name__}"


def class_served(size: int, chain_size: int = 8) -> int:
    """The canonical class malloc(size) uses, from the class table alone."""
    want = get_size_class_index(size + 8)
    return min(spec.index for spec in size_classes(chain_size) if spec.index >= want)


@pytest.fixture
def pool():
    with Pool(name="snap", chain_size=8) as pool:
        yield pool


@pytest.fixture
def filled(pool):
    handles = []
    for n, size in enumerate(SIZES):
        h = pool.malloc(size)
        pool.write(h, bytes((n * 31 + i) & 0xFF for i in range(size)))
        handles.append(h)
    return pool, handles


def test_empty_pool(pool):
    snap = debug.snapshot(pool)
    assert_plain(snap)
    assert list(snap) == TOP_KEYS
    assert (snap["name"], snap["chain_size"], snap["class_rule"], snap["migration"]) == (
        "snap",
        8,
        "min-waste",
        "mainline",
    )
    assert snap["huge_class_size"] == pool.huge_class_size
    assert snap["pages_allocated"] == 0
    assert snap["events"] == dict.fromkeys(
        ("pages_compacted", "objs_compacted", "compactions", "deferred_frees"), 0
    )
    specs = size_classes(8)
    assert [c["index"] for c in snap["classes"]] == [s.index for s in reversed(specs)]
    for cls, spec in zip(snap["classes"], reversed(specs), strict=True):
        assert list(cls) == CLASS_KEYS
        assert (cls["size"], cls["pages_per_zspage"], cls["objs_per_zspage"], cls["huge"]) == (
            spec.size,
            spec.pages_per_zspage,
            spec.objs_per_zspage,
            spec.huge,
        )
        assert (cls["objs_allocated"], cls["objs_inuse"]) == (0, 0)
        assert cls["fullness"] == [[] for _ in range(12)]
    assert len(snap["class_of_size"]) == 4097 and snap["class_of_size"][0] == -1
    assert snap["class_of_size"][1:] == [class_served(s) for s in range(1, 4097)]
    assert snap["zspages"] == {} and snap["handles"] == {} and snap["pages"] == {}
    assert snap["nr_zspage_ids"] == 0 and snap["free_zspage_ids"] == []
    assert snap["nr_handle_slots"] == 1 and snap["free_handle_slots"] == []
    assert snap["pinned"] == {} and snap["deferred"] == []
    assert snap["memory"] == {"hwm": 0, "nr_used": 0, "capacity": pool.memory.capacity, "own": True}
    assert snap["closed"] is False
    assert "data" not in snap
    check_snapshot(snap)


def test_objects_of_several_classes(filled):
    pool, handles = filled
    snap = debug.snapshot(pool, data=True)
    assert_plain(snap)
    assert list(snap) == [*TOP_KEYS, "data"]
    classes = {c["index"]: c for c in snap["classes"]}
    zspages, pages = snap["zspages"], snap["pages"]

    assert snap["data"] == {h: pool.read(h) for h in handles}
    for h, size in zip(handles, SIZES, strict=True):
        entry = snap["handles"][h >> SLOT_SHIFT]
        assert entry["handle"] == h and entry["size"] == size
        assert (entry["pfn"], entry["idx"]) == pool.locate(h)
        zid = pages[entry["pfn"]]["private"]
        zs = zspages[zid]
        assert zs["class"] == class_served(size)
        assert zs["pages"] == pool.zspage_pfns(h)
        cls = classes[zs["class"]]
        if cls["huge"]:
            assert zs["headers"] == []
            assert pages[entry["pfn"]]["index"] == h | OBJ_ALLOCATED_TAG
        else:
            # the header is where the kernel keeps it: in the page the object
            # starts in, at its offset in the zspage modulo the page size
            offset = (entry["idx"] * cls["size"]) % PAGE
            word = bytes(pool.memory.frame(entry["pfn"])[offset : offset + 8])
            assert zs["headers"][entry["idx"]] == int.from_bytes(word, "little") == h | OBJ_ALLOCATED_TAG
            assert len(zs["headers"]) == cls["objs_per_zspage"]
    [za] = (zs for zs in zspages.values() if zs["class"] == 96)  # the three 1560s share a zspage
    assert pool.locate(handles[3]) == (za["pages"][0], 2)  # object 2: bytes 3136..4703, pages 0 and 1
    assert [pages[pfn]["first_obj_offset"] for pfn in za["pages"]] == [0, 608, 1216, 256, 864]

    # every zspage is on exactly one list, its own group's, in its own class
    listed = [
        (c["index"], fg, z) for c in snap["classes"] for fg, lst in enumerate(c["fullness"]) for z in lst
    ]
    assert sorted(zid for _, _, zid in listed) == sorted(zspages)
    for ci, fg, zid in listed:
        assert (zspages[zid]["class"], zspages[zid]["fg"]) == (ci, fg)
    for zid, zs in zspages.items():
        assert list(zs) == ZSPAGE_KEYS
        for k, pfn in enumerate(zs["pages"]):
            assert list(pages[pfn]) == PAGE_KEYS
            assert pages[pfn]["private"] == zid
            assert pages[pfn]["next"] == (zs["pages"][k + 1] if k + 1 < len(zs["pages"]) else -1)
    assert sorted(pages) == sorted(pfn for zs in zspages.values() for pfn in zs["pages"])
    assert snap["pages_allocated"] == len(pages) == pool.total_pages
    assert sum(c["objs_inuse"] for c in snap["classes"]) == len(handles)
    check_snapshot(snap)


def test_fullness_lists_are_head_first(pool):
    first, second = pool.malloc(4000), pool.malloc(4000)  # two huge zspages, both full
    snap = debug.snapshot(pool)
    zid = {h: snap["pages"][pool.locate(h)[0]]["private"] for h in (first, second)}
    assert snap["classes"][0]["index"] == 254
    assert snap["classes"][0]["fullness"][11] == [zid[second], zid[first]]


def test_freed_slots_pins_and_locks(filled):
    pool, handles = filled
    pool.free(handles[0])
    snap = debug.snapshot(pool)
    slot = handles[0] >> SLOT_SHIFT
    assert slot not in snap["handles"] and snap["free_handle_slots"][-1] == slot
    assert len(snap["free_handle_slots"]) == snap["nr_handle_slots"] - 1 - (len(handles) - 1)
    h = handles[4]
    with pool.map(h):
        snap = debug.snapshot(pool)
        zid = snap["pages"][pool.locate(h)[0]]["private"]
        assert snap["pinned"] == {h >> SLOT_SHIFT: 1}
        assert snap["zspages"][zid]["lock"] == 1
        check_snapshot(snap)
    assert debug.snapshot(pool)["pinned"] == {}


def test_closed_pool():
    pool = Pool(name="gone")
    h = pool.malloc(100)
    pool.close()
    snap = debug.snapshot(pool, data=True)
    assert_plain(snap)
    assert snap["closed"] is True
    assert snap["zspages"] == {} and snap["handles"] == {} and snap["data"] == {} and snap["pages"] == {}
    assert snap["class_of_size"] == [-1] * 4097
    assert h >> SLOT_SHIFT not in snap["handles"]


# ----------------------------------------------------------------------
# check_snapshot on hand-damaged snapshots


def expect(snap: dict, message: str) -> None:
    with pytest.raises(CorruptionError, match="^" + re.escape(message) + "$"):
        check_snapshot(snap)


def zspage_of(snap: dict, handle: int) -> tuple[int, dict]:
    zid = snap["pages"][snap["handles"][handle >> SLOT_SHIFT]["pfn"]]["private"]
    return zid, snap["zspages"][zid]


def where(zid: int, zs: dict) -> str:
    return f"zspage {zid} (class {zs['class']}, first pfn {zs['pages'][0]})"


@pytest.fixture
def snap_and_handles(filled):
    pool, handles = filled
    snap = debug.snapshot(pool)
    check_snapshot(snap)
    return snap, handles


def test_damaged_header_word(snap_and_handles):
    snap, handles = snap_and_handles
    snap = copy.deepcopy(snap)
    h = handles[1]
    zid, zs = zspage_of(snap, h)
    idx = snap["handles"][h >> SLOT_SHIFT]["idx"]
    zs["headers"][idx] ^= OBJ_ALLOCATED_TAG
    expect(snap, f"{where(zid, zs)}: object {idx} is not free but its header {h:#x} is untagged")


def test_header_of_another_handle(snap_and_handles):
    snap, handles = snap_and_handles
    snap = copy.deepcopy(snap)
    zid, zs = zspage_of(snap, handles[1])
    zs["headers"][1] = zs["headers"][0]  # objects 0 and 1 both claim handle 1's slot
    expect(snap, f"{where(zid, zs)}: handle {handles[1]:#x} is in two object headers")


def test_zspage_in_two_groups(snap_and_handles):
    snap, handles = snap_and_handles
    zid, zs = zspage_of(snap, handles[0])
    cls = next(c for c in snap["classes"] if c["index"] == zs["class"])
    assert cls["fullness"][zs["fg"]] == [zid]
    other = (zs["fg"] + 3) % 12
    damaged = copy.deepcopy(snap)
    next(c for c in damaged["classes"] if c["index"] == zs["class"])["fullness"][other].insert(0, zid)
    ci = zs["class"]
    expect(damaged, f"class {ci} group {other}: list holds zspage {zid} of class {ci}, group {zs['fg']}")
    damaged = copy.deepcopy(snap)
    next(c for c in damaged["classes"] if c["index"] == zs["class"])["fullness"][zs["fg"]].append(zid)
    expect(damaged, f"class {zs['class']} group {zs['fg']}: list holds a zspage twice")


def test_isolated_count_per_protocol(snap_and_handles):
    snap, handles = snap_and_handles
    snap = copy.deepcopy(snap)
    zid, zs = zspage_of(snap, handles[4])
    zs["isolated"] = 1
    expect(snap, f"{where(zid, zs)}: mainline protocol, but isolated count 1")
    snap["migration"] = "2016"
    expect(snap, f"{where(zid, zs)}: isolated count 1, but 0 of its pages are isolated")


def test_live_handle_with_no_object(snap_and_handles):
    snap, handles = snap_and_handles
    snap = copy.deepcopy(snap)
    slot = handles[4] >> SLOT_SHIFT
    del snap["handles"][slot]
    expect(snap, f"handle slot {slot} is free but not in the handle cache")
    snap["free_handle_slots"].append(slot)
    expect(snap, f"{len(handles)} objects are allocated but {len(handles) - 1} handles are live")


def test_frames_held_by_the_vm_only(snap_and_handles):
    snap, _ = snap_and_handles
    snap = copy.deepcopy(snap)
    hwm = snap["memory"]["hwm"]
    # a frame an isolating VM still holds after the pool let it go: not the pool's
    snap["pages"][hwm] = {
        "flags": 0x04,
        "refcount": 1,
        "movable_ops": 0,
        "private": 0,
        "index": 0,
        "next": 0,
        "first_obj_offset": 0,
    }
    snap["memory"]["nr_used"] += 1
    check_snapshot(snap)
    snap["pages"][hwm]["flags"] = 0
    n = snap["pages_allocated"]
    expect(snap, f"memory has {n + 1} frames in use (0 held by the VM only), the pool holds {n}")


# ----------------------------------------------------------------------
# damage hooks


@pytest.mark.model_only
def test_damage_returns_the_old_value_and_heals(filled):
    pool, handles = filled
    slot = handles[0] >> SLOT_SHIFT
    assert debug.damage(pool, "handle.size", slot, value=25) == SIZES[0]
    with pytest.raises(CorruptionError):
        pool.check()
    assert debug.damage(pool, "handle.size", slot, value=SIZES[0]) == 25
    pool.check()
    with pytest.raises(ValueError, match="unknown damage 'nothing'"):
        debug.damage(pool, "nothing", value=0)
    assert "zspage.fg" in debug.DAMAGES and "slot.word" in debug.DAMAGES
