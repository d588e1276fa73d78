"""``Pool.check()``: walk every structure of a pool and cross-check it.

What is checked, each against an independent source of truth:

- every zspage: its page chain (length, descriptors pointing back at it, first
  object offsets, movable pages owned by this pool), its free list walked
  through the in-page links (indexes in range, no cycle, length = N - inuse),
  its allocated slots' headers against the handle table, its fullness group
  against its inuse count;
- every fullness list: links in both directions, membership, the per-group
  counters and the non-empty mask;
- every class: objs_allocated and objs_inuse against the zspages;
- the handle table: live handles against allocated slots (a bijection), sizes
  against the class, the free-slot cache;
- pages: the pool's page count against its zspages and, for a pool that owns
  its Memory, against the frames in use.

The check takes the pool lock and every class lock, so it sees a consistent
state (zspages the deferred free has taken off their lists are in
``_deferred_batch``, which changes only under those locks); a malloc that is building a new zspage (pages
taken, not yet on a list) is the one thing it cannot see, so run it between
calls, not during them.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

from zsmalloc.errors import CorruptionError
from zsmalloc.mm import PAGE_SHIFT, PAGE_SIZE, PG_isolated, PG_movable
from zsmalloc.pool.size_class import ZS_HANDLE_SIZE

if TYPE_CHECKING:
    from zsmalloc.pool.zsmalloc import Pool, SizeClass


def _fail(msg: str) -> None:
    raise CorruptionError(msg)


def check_pool(pool: Pool) -> None:
    with ExitStack() as stack:
        stack.enter_context(pool._lock)
        for cls in pool.classes:
            stack.enter_context(cls.lock)
        _check_locked(pool)


def _check_locked(pool: Pool) -> None:
    from zsmalloc.pool.zsmalloc import (
        FG_NONE,
        FREE_LIST_END,
        HANDLE_FREED,
        NR_FULLNESS_GROUPS,
        OBJ_ALLOCATED_TAG,
        OBJ_INDEX_BITS,
        OBJ_TAG_BITS,
    )

    mem = pool.memory
    words = mem.words
    free_zids = set(pool._zs_free)
    if len(free_zids) != len(pool._zs_free):
        _fail("zspage cache holds a zspage id twice")
    deferred = pool._deferred_batch

    per_class_zspages: dict[int, int] = {}
    off_list: dict[int, int] = {}  # isolated zspages, per class
    chain_pages: set[int] = set()  # every page of every live zspage
    per_class_inuse: dict[int, int] = {}
    live_objects: dict[int, tuple[int, int]] = {}  # handle slot -> (location, handle) in a header
    total_pages = 0

    for zid in range(len(pool._zs_class)):
        ci = pool._zs_class[zid]
        if ci < 0:
            if zid not in free_zids:
                _fail(f"zspage id {zid} is neither in use nor in the zspage cache")
            if pool._zs_isolated[zid]:
                _fail(f"free zspage id {zid} has {pool._zs_isolated[zid]} isolated pages")
            continue
        if zid in free_zids:
            _fail(f"zspage {zid} is in use and in the zspage cache")
        cls: SizeClass = pool.size_class[ci]
        where = f"zspage {zid} (class {ci}, first pfn {pool._zs_first[zid]})"
        if cls.index != ci:
            _fail(f"{where}: class {ci} is merged into {cls.index}, not canonical")
        n_objs = cls.objs_per_zspage
        inuse = pool._zs_inuse[zid]
        if not 0 <= inuse <= n_objs:
            _fail(f"{where}: inuse {inuse} outside 0..{n_objs}")
        if pool._zs_lock[zid] < 0:
            _fail(f"{where}: zspage lock left write-locked")

        # the page chain
        pages = []
        pfn = pool._zs_first[zid]
        while pfn >= 0:
            if len(pages) >= cls.pages_per_zspage:
                _fail(f"{where}: chain longer than {cls.pages_per_zspage} pages (cycle?)")
            if not mem.page_in_use(pfn):
                _fail(f"{where}: page {pfn} of its chain is a free frame")
            pages.append(pfn)
            pfn = mem.next[pfn]
        if len(pages) != cls.pages_per_zspage:
            _fail(f"{where}: chain has {len(pages)} pages, class needs {cls.pages_per_zspage}")
        for k, pfn in enumerate(pages):
            if mem.private[pfn] != zid:
                _fail(f"{where}: page {pfn} descriptor names zspage {mem.private[pfn]}")
            expect = (-(k << PAGE_SHIFT)) % cls.size
            if mem.first_obj_offset[pfn] != expect:
                _fail(f"{where}: page {pfn} first_obj_offset {mem.first_obj_offset[pfn]}, expected {expect}")
            if not mem.flags[pfn] & PG_movable or mem.movable_ops[pfn] != pool._ops_id:
                _fail(f"{where}: page {pfn} is not marked movable by this pool")
        total_pages += len(pages)
        chain_pages.update(pages)

        def slot_word(idx: int, pages: list[int] = pages, size: int = cls.size) -> tuple[int, int]:
            off = idx * size
            pfn = pages[off >> PAGE_SHIFT]
            return pfn, ((pfn << PAGE_SHIFT) + (off & (PAGE_SIZE - 1))) >> 3

        # the free list and the allocated slots
        if cls.huge:
            pfn = pages[0]
            tag = mem.index[pfn]
            if inuse == 1:
                if pool._zs_freeobj[zid] != -1:
                    _fail(f"{where}: full huge zspage has free object {pool._zs_freeobj[zid]}")
                if not tag & OBJ_ALLOCATED_TAG:
                    _fail(f"{where}: huge object's handle {tag:#x} in page {pfn} is not tagged")
                slot = _slot_of(tag, where, live_objects)
                live_objects[slot] = (pfn << OBJ_INDEX_BITS, tag & ~OBJ_ALLOCATED_TAG)
            elif pool._zs_freeobj[zid] != 0 or tag:
                _fail(f"{where}: empty huge zspage has freeobj {pool._zs_freeobj[zid]}, tag {tag}")
        else:
            free = set()
            idx = pool._zs_freeobj[zid]
            last_link = None
            while idx != -1:
                if not 0 <= idx < n_objs:
                    _fail(f"{where}: free list reaches object {idx}, outside 0..{n_objs - 1}")
                if idx in free:
                    _fail(f"{where}: free list visits object {idx} twice")
                free.add(idx)
                link = words[slot_word(idx)[1]]
                if link & OBJ_ALLOCATED_TAG:
                    _fail(f"{where}: object {idx} is on the free list but its header is tagged")
                last_link = link
                idx = -1 if link == FREE_LIST_END else link >> OBJ_TAG_BITS
            if free and last_link != FREE_LIST_END:
                _fail(f"{where}: free list does not end with the terminator")
            if len(free) != n_objs - inuse:
                _fail(
                    f"{where}: free list holds {len(free)} objects, "
                    f"inuse {inuse} of {n_objs} says {n_objs - inuse}"
                )
            for idx in range(n_objs):
                if idx in free:
                    continue
                pfn, word = slot_word(idx)
                header = words[word]
                if not header & OBJ_ALLOCATED_TAG:
                    _fail(f"{where}: object {idx} is not free but its header {header:#x} is untagged")
                slot = _slot_of(header, where, live_objects)
                live_objects[slot] = ((pfn << OBJ_INDEX_BITS) | idx, header & ~OBJ_ALLOCATED_TAG)

        # fullness group
        # isolation (2016 protocol): the count matches the VM's flags, and an
        # isolated zspage is on no list
        n_isolated = sum(1 for pfn in pages if mem.flags[pfn] & PG_isolated)
        isolated = pool._zs_isolated[zid]
        if pool.movable_ops.name == "mainline":
            if isolated:
                _fail(f"{where}: mainline protocol, but isolated count {isolated}")
        elif isolated != n_isolated:
            _fail(f"{where}: isolated count {isolated}, but {n_isolated} of its pages are isolated")
        fg = pool._zs_fg[zid]
        if isolated:
            if fg != FG_NONE:
                _fail(f"{where}: isolated, yet on the list of group {fg}")
            off_list[cls.index] = off_list.get(cls.index, 0) + 1
        elif zid in deferred:
            if fg != FG_NONE or inuse:
                _fail(f"{where}: taken by the deferred free but in group {fg}, inuse {inuse}")
        elif fg != cls.fg_of_inuse[inuse]:
            want = cls.fg_of_inuse[inuse]
            _fail(f"{where}: in fullness group {fg}, inuse {inuse}/{n_objs} calls for {want}")
        per_class_zspages[cls.index] = per_class_zspages.get(cls.index, 0) + 1
        per_class_inuse[cls.index] = per_class_inuse.get(cls.index, 0) + inuse

    # fullness lists
    for cls in pool.classes:
        for fg in range(NR_FULLNESS_GROUPS):
            lst = cls.fullness_list[fg]
            for zid in lst:
                if not 0 <= zid < len(pool._zs_class):
                    _fail(f"class {cls.index} group {fg}: list holds unknown zspage id {zid}")
                if pool._zs_class[zid] != cls.index or pool._zs_fg[zid] != fg:
                    _fail(
                        f"class {cls.index} group {fg}: list holds zspage {zid} of class "
                        f"{pool._zs_class[zid]}, group {pool._zs_fg[zid]}"
                    )
            if bool(cls.nonempty & (1 << fg)) != bool(lst):
                _fail(f"class {cls.index} group {fg}: non-empty mask disagrees with the list")
        n = per_class_zspages.get(cls.index, 0)
        if (
            sum(cls.nr_zspages)
            + sum(1 for z in deferred if pool._zs_class[z] == cls.index)
            + off_list.get(cls.index, 0)
            != n
        ):
            _fail(f"class {cls.index}: {n} zspages exist but the lists hold {sum(cls.nr_zspages)}")
        if cls.objs_allocated != n * cls.objs_per_zspage:
            _fail(
                f"class {cls.index}: objs_allocated {cls.objs_allocated}, "
                f"but {n} zspages hold {n * cls.objs_per_zspage}"
            )
        if cls.objs_inuse != per_class_inuse.get(cls.index, 0):
            _fail(
                f"class {cls.index}: objs_inuse {cls.objs_inuse}, "
                f"but its zspages hold {per_class_inuse.get(cls.index, 0)}"
            )

    # the handle table
    h_val, h_obj, h_size = pool._h_val, pool._h_obj, pool._h_size
    free_slots = set(pool._h_free)
    if len(free_slots) != len(pool._h_free):
        _fail("handle cache holds a slot twice")
    n_live = 0
    for slot in range(1, len(h_val)):
        val = h_val[slot]
        if val & HANDLE_FREED:
            if slot not in free_slots:
                _fail(f"handle slot {slot} is free but not in the handle cache")
            continue
        if slot in free_slots:
            _fail(f"handle slot {slot} is live and in the handle cache")
        n_live += 1
        if slot not in live_objects:
            _fail(f"handle {val:#x} is live but no object header holds it")
        location, header_handle = live_objects[slot]
        if header_handle != val:
            _fail(f"handle {val:#x}: the object header holds {header_handle:#x} (stale generation)")
        if h_obj[slot] != location:
            _fail(f"handle {val:#x}: table says location {h_obj[slot]:#x}, its header is at {location:#x}")
        zid = mem.private[h_obj[slot] >> OBJ_INDEX_BITS]
        cls = pool.size_class[pool._zs_class[zid]]
        room = cls.size if cls.huge else cls.size - ZS_HANDLE_SIZE
        if not 0 < h_size[slot] <= room:
            _fail(f"handle {val:#x}: size {h_size[slot]} does not fit class {cls.index}")
        if pool._class_for_size[h_size[slot]] is not cls:  # read and write find the class by the size
            _fail(f"handle {val:#x}: size {h_size[slot]} maps to another class than {cls.index}")
    for slot in pool._pinned:
        if not 0 < slot < len(h_val) or h_val[slot] & HANDLE_FREED:
            _fail(f"handle slot {slot} is pinned but holds no live handle")
    if n_live != len(live_objects):
        _fail(f"{len(live_objects)} objects are allocated but {n_live} handles are live")

    # pages: every page marked movable for this pool is in the chain of a live
    # zspage (an isolated page that still names a destroyed zspage is the
    # state the 2016 review's race left behind)
    ops_id = pool._ops_id
    for pfn in range(mem.hwm):
        if mem.flags[pfn] & PG_movable and mem.movable_ops[pfn] == ops_id and pfn not in chain_pages:
            zid = mem.private[pfn]
            state = "a free zspage id" if pool._zs_class[zid] < 0 else "a zspage whose chain lacks it"
            isolated = " (isolated)" if mem.flags[pfn] & PG_isolated else ""
            _fail(f"page {pfn}{isolated} is movable for this pool but names zspage {zid}, {state}")
    if pool.pages_allocated != total_pages:
        _fail(f"pool counts {pool.pages_allocated} pages, its zspages hold {total_pages}")
    if pool._own_memory:
        # frames the VM still holds (isolated) after the pool let them go are not the pool's
        held_by_vm = sum(
            1
            for pfn in range(mem.hwm)
            if mem.refcount[pfn] > 0 and mem.flags[pfn] & (PG_isolated | PG_movable) == PG_isolated
        )
        if mem.nr_used - held_by_vm != total_pages:
            _fail(
                f"memory has {mem.nr_used} frames in use ({held_by_vm} held by the VM only), "
                f"the pool holds {total_pages}"
            )


def _slot_of(header: int, where: str, seen: dict) -> int:
    from zsmalloc.pool.zsmalloc import HANDLE_SLOT_SHIFT

    handle = header & ~1
    slot = handle >> HANDLE_SLOT_SHIFT
    if slot in seen:
        _fail(f"{where}: handle {handle:#x} is in two object headers")
    return slot
