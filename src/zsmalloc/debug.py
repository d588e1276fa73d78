"""A pool's whole state as plain data, the consistency check that reads it, and damage hooks.

This module owns the *snapshot format*: the contract between an allocator
implementation and the tools that inspect one.  The model (the Python pool,
``zsmalloc.pool``) and the engine (Rust, whose pool takes its own snapshot
through ``_snapshot(data)``) produce the same dict, so :func:`check_snapshot`
(what ``Pool.check()`` runs) and the tests work on either.  A snapshot holds
only dicts, lists, ints, strs, bools and bytes; int keys stay ints::

    {
      "name", "chain_size", "class_rule", "fullness", "migration", "huge_class_size",
      "pages_allocated",
      "events": {"pages_compacted", "objs_compacted", "compactions", "deferred_frees"},
      "ops_id",                 # the pool's movable-ops id in its Memory
      "classes": [              # canonical classes, largest index first
        {"index", "size", "pages_per_zspage", "objs_per_zspage", "huge",
         "objs_allocated", "objs_inuse",
         "fullness": [[zid, ...] * 12]},        # per group, head first (legacy: groups 0..3)
      ],
      "class_of_size": [-1, c1, ..., c4096],    # the canonical class malloc(s) uses; -1 if none
      "zspages": {zid: {"class", "inuse", "freeobj", "fg", "lock", "isolated",
                        "pages": [pfn, ...],    # the chain, at most pages_per_zspage + 1 long
                        "headers": [word, ...]}},   # every slot's first word; [] if huge or broken
      "free_zspage_ids": [zid, ...],            # the zspage id cache, in stack order
      "nr_zspage_ids",
      "handles": {slot: {"handle", "pfn", "idx", "size"}},   # live slots only
      "free_handle_slots": [slot, ...],         # the handle cache, in stack order
      "nr_handle_slots",
      "pinned": {slot: count},
      "deferred": [zid, ...],                   # zspages the deferred free holds, sorted
      "pages": {pfn: {"flags", "refcount", "movable_ops", "private", "index", "next",
                      "first_obj_offset"}},     # frames in use below hwm, ascending
      "memory": {"hwm", "nr_used", "capacity", "own"},
      "closed",
      "data": {handle: bytes},                  # only with data=True
    }

A zspage's chain is followed from its first page through the descriptors'
``next`` links; it ends at a negative link, after a pfn at or above ``hwm``
(no descriptor to follow), or once it is ``pages_per_zspage + 1`` long, so a
cycle shows instead of hanging.  ``headers`` is read only when the chain has
exactly ``pages_per_zspage`` pages, all below ``hwm``.

What :func:`check_snapshot` checks, each against an independent source of truth:

- every zspage: its page chain (length, descriptors pointing back at it, first
  object offsets, movable pages owned by this pool), its free list walked
  through the in-page links (indexes in range, no cycle, length = N - inuse),
  its allocated slots' headers against the handle table, its fullness group
  against its inuse count;
- every fullness list: membership against the zspages' groups;
- every class: objs_allocated and objs_inuse against the zspages;
- the handle table: live handles against allocated slots (a bijection), sizes
  against the class, the free-slot cache;
- pages: the pool's page count against its zspages and, for a pool that owns
  its Memory, against the frames in use.

The layout is recomputed from the class geometry, not taken from the pool's
own tables: which page an object starts in and where its header is, from
``idx * size``; each page's first object offset, from its place in the chain.

The damage hooks (:func:`damage`, the model only) overwrite one field of a
live pool and return its old value, so that a test can break one invariant,
expect ``check()`` to name it, and put the value back.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from zsmalloc.errors import CorruptionError
from zsmalloc.mm.constants import PAGE_SHIFT, PAGE_SIZE, PG_isolated, PG_movable
from zsmalloc.pool import legacy
from zsmalloc.pool.constants import (
    FG_NONE,
    FREE_LIST_END,
    HANDLE_FREED,
    HANDLE_SLOT_SHIFT,
    OBJ_ALLOCATED_TAG,
    OBJ_INDEX_BITS,
    OBJ_INDEX_MASK,
    OBJ_TAG_BITS,
    get_fullness_group,
)
from zsmalloc.pool.size_class import ZS_HANDLE_SIZE, ZS_MAX_ALLOC_SIZE, get_size_class_index

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from zsmalloc.pool.zsmalloc import Pool

_WORD_SHIFT = 3  # bytes -> 8-byte words


@contextmanager
def frozen(pool: Pool) -> Iterator[None]:
    """Hold the model pool's lock, every class lock, the cache lock and its memory's lock.

    Inside, nothing in the pool changes; a malloc that is building a new
    zspage (pages taken, not yet on a list) is the one thing left half done.
    """
    with ExitStack() as stack:
        stack.enter_context(pool._lock)
        for cls in pool.classes:
            stack.enter_context(cls.lock)
        stack.enter_context(pool._cache_lock)
        stack.enter_context(pool.memory._lock)  # a leaf: the frames' refcounts and counters
        yield


class _SnapshotsItself(Protocol):
    """A pool that takes its own snapshot (the engine's)."""

    def _snapshot(self, data: bool = False) -> dict[str, Any]: ...


def _takes_own_snapshot(pool: Pool | _SnapshotsItself) -> TypeIs[_SnapshotsItself]:
    return getattr(pool, "_snapshot", None) is not None


def snapshot(pool: Pool | _SnapshotsItself, data: bool = False) -> dict:
    """The pool's state in the snapshot format above; with ``data``, every live object's bytes.

    A pool that takes its own snapshot (the engine's, through ``_snapshot``)
    is asked for it; the model's is read here, under :func:`frozen`.
    """
    if _takes_own_snapshot(pool):
        return pool._snapshot(data)
    with frozen(pool):
        # mappings whose last view is gone end here, as the engine's end at the release
        pool.reap_mappings()
        mem = pool.memory
        hwm = mem.hwm
        arena_open = not mem._closed
        snap: dict[str, Any] = {
            "name": pool.name,
            "chain_size": pool.chain_size,
            "class_rule": pool.class_rule,
            "fullness": pool.fullness,
            "migration": pool.movable_ops.name,
            "huge_class_size": pool.huge_class_size,
            "pages_allocated": pool.pages_allocated,
            "events": {
                name: pool.events[name]
                for name in ("pages_compacted", "objs_compacted", "compactions", "deferred_frees")
            },
            "ops_id": pool._ops_id,
            "classes": [
                {
                    "index": cls.index,
                    "size": cls.size,
                    "pages_per_zspage": cls.pages_per_zspage,
                    "objs_per_zspage": cls.objs_per_zspage,
                    "huge": cls.huge,
                    "objs_allocated": cls.objs_allocated,
                    "objs_inuse": cls.objs_inuse,
                    "fullness": [[zspage.zid for zspage in reversed(lst)] for lst in cls.fullness_list],
                }
                for cls in pool.classes
            ],
            "class_of_size": [-1]
            + [
                -1 if pool._closed else pool.size_class[get_size_class_index(size + ZS_HANDLE_SIZE)].index
                for size in range(1, ZS_MAX_ALLOC_SIZE + 1)
            ],
        }
        zspages = {}
        for zspage in pool._zspages:
            ci = zspage.class_idx
            if ci < 0:
                continue
            cls = pool.size_class[ci]
            chain = _chain(pool, zspage.first_page, cls.pages_per_zspage + 1)
            headers = []
            if arena_open and not cls.huge and len(chain) == cls.pages_per_zspage and max(chain) < hwm:
                words = mem.words
                headers = [words[_word_at(chain, idx * cls.size)] for idx in range(cls.objs_per_zspage)]
            zspages[zspage.zid] = {
                "class": ci,
                "inuse": zspage.inuse,
                "freeobj": zspage.freeobj,
                "fg": zspage.fullness,
                "lock": zspage.lock,
                "isolated": zspage.isolated,
                "pages": chain,
                "headers": headers,
            }
        h_val, h_obj, h_size = pool._h_val, pool._h_obj, pool._h_size
        handles = {
            slot: {
                "handle": h_val[slot],
                "pfn": h_obj[slot] >> OBJ_INDEX_BITS,
                "idx": h_obj[slot] & OBJ_INDEX_MASK,
                "size": h_size[slot],
            }
            for slot in range(1, len(h_val))
            if not h_val[slot] & HANDLE_FREED
        }
        snap |= {
            "zspages": zspages,
            "free_zspage_ids": list(pool._free_zspage_ids),
            "nr_zspage_ids": len(pool._zspages),
            "handles": handles,
            "free_handle_slots": list(pool._h_free),
            "nr_handle_slots": len(h_val),
            "pinned": dict(pool._pinned),
            "deferred": sorted(zspage.zid for zspage in pool._deferred_batch),
            "pages": {
                pfn: {
                    "flags": mem.flags[pfn],
                    "refcount": mem.refcount[pfn],
                    "movable_ops": mem.movable_ops[pfn],
                    "private": mem.private[pfn],
                    "index": mem.index[pfn],
                    "next": mem.next[pfn],
                    "first_obj_offset": mem.first_obj_offset[pfn],
                }
                for pfn in range(hwm)
                if mem.refcount[pfn] > 0
            },
            "memory": {"hwm": hwm, "nr_used": mem.nr_used, "capacity": mem.capacity, "own": pool._own_memory},
            "closed": pool._closed,
        }
        if data:
            # as read() does: from the data's first byte, across a page boundary if need be
            snap["data"] = {
                h["handle"]: pool._read_span(pool.obj_addr(h_obj[slot], 0), h["size"])
                for slot, h in handles.items()
            }
        return snap


def _chain(pool: Pool, first_page: int, limit: int) -> list[int]:
    """A zspage's pages from its first through the ``next`` links, at most ``limit`` of them."""
    mem = pool.memory
    chain: list[int] = []
    pfn = first_page
    while pfn >= 0 and len(chain) < limit:
        chain.append(pfn)
        if pfn >= mem.hwm:  # no descriptor to follow
            break
        pfn = mem.next[pfn]
    return chain


def _word_at(chain: list[int], offset: int) -> int:
    """The arena word index of byte ``offset`` of a zspage laid over the pages of ``chain``."""
    pfn = chain[offset >> PAGE_SHIFT]
    return ((pfn << PAGE_SHIFT) + (offset & (PAGE_SIZE - 1))) >> _WORD_SHIFT


# ----------------------------------------------------------------------
# the check


def _fail(msg: str) -> NoReturn:
    raise CorruptionError(msg)


def check_snapshot(snap: dict) -> None:
    """Raise CorruptionError on the first inconsistency in a pool's snapshot (see the module's doc)."""
    classes = {c["index"]: c for c in snap["classes"]}
    canonical = sorted(classes)
    zspages: dict[int, dict] = snap["zspages"]
    pages: dict[int, dict] = snap["pages"]
    ops_id = snap["ops_id"]
    free_zids = set(snap["free_zspage_ids"])
    if len(free_zids) != len(snap["free_zspage_ids"]):
        _fail("zspage cache holds a zspage id twice")
    deferred = set(snap["deferred"])
    group_of = legacy.get_fullness_group if snap["fullness"] == "legacy" else get_fullness_group

    per_class_zspages: dict[int, int] = {}
    off_list: dict[int, int] = {}  # isolated zspages, per class
    chain_pages: set[int] = set()  # every page of every live zspage
    per_class_inuse: dict[int, int] = {}
    live_objects: dict[int, tuple[int, int]] = {}  # handle slot -> (location, handle) in a header
    total_pages = 0

    for zid in range(snap["nr_zspage_ids"]):
        zs = zspages.get(zid)
        if zs is None:
            if zid not in free_zids:
                _fail(f"zspage id {zid} is neither in use nor in the zspage cache")
            continue
        if zid in free_zids:
            _fail(f"zspage {zid} is in use and in the zspage cache")
        ci = zs["class"]
        chain = zs["pages"]
        where = f"zspage {zid} (class {ci}, first pfn {chain[0] if chain else -1})"
        # the class slot ci is served by the nearest canonical class at or above it
        merged = bisect_left(canonical, ci)
        if merged == len(canonical):
            _fail(f"{where}: class {ci} does not exist")
        cls = classes[canonical[merged]]
        if cls["index"] != ci:
            _fail(f"{where}: class {ci} is merged into {cls['index']}, not canonical")
        size, n_objs, n_pages = cls["size"], cls["objs_per_zspage"], cls["pages_per_zspage"]
        inuse = zs["inuse"]
        if not 0 <= inuse <= n_objs:
            _fail(f"{where}: inuse {inuse} outside 0..{n_objs}")
        if zs["lock"] < 0:
            _fail(f"{where}: zspage lock left write-locked")

        # the page chain
        for k, pfn in enumerate(chain):
            if k >= n_pages:
                _fail(f"{where}: chain longer than {n_pages} pages (cycle?)")
            if pfn not in pages:
                _fail(f"{where}: page {pfn} of its chain is a free frame")
        if len(chain) != n_pages:
            _fail(f"{where}: chain has {len(chain)} pages, class needs {n_pages}")
        for k, pfn in enumerate(chain):
            page = pages[pfn]
            if page["private"] != zid:
                _fail(f"{where}: page {pfn} descriptor names zspage {page['private']}")
            expect = (-(k << PAGE_SHIFT)) % size
            if page["first_obj_offset"] != expect:
                _fail(f"{where}: page {pfn} first_obj_offset {page['first_obj_offset']}, expected {expect}")
            if not page["flags"] & PG_movable or page["movable_ops"] != ops_id:
                _fail(f"{where}: page {pfn} is not marked movable by this pool")
        total_pages += len(chain)
        chain_pages.update(chain)

        def location(idx: int, chain: list[int] = chain, size: int = size) -> int:
            """The location of object ``idx``: the page it starts in, and its index."""
            return (chain[(idx * size) >> PAGE_SHIFT] << OBJ_INDEX_BITS) | idx

        # the free list and the allocated slots
        if cls["huge"]:
            pfn = chain[0]
            tag = pages[pfn]["index"]
            if inuse == 1:
                if zs["freeobj"] != -1:
                    _fail(f"{where}: full huge zspage has free object {zs['freeobj']}")
                if not tag & OBJ_ALLOCATED_TAG:
                    _fail(f"{where}: huge object's handle {tag:#x} in page {pfn} is not tagged")
                slot = _slot_of(tag, where, live_objects)
                live_objects[slot] = (pfn << OBJ_INDEX_BITS, tag & ~OBJ_ALLOCATED_TAG)
            elif zs["freeobj"] != 0 or tag:
                _fail(f"{where}: empty huge zspage has freeobj {zs['freeobj']}, tag {tag}")
        else:
            headers = zs["headers"]
            if len(headers) != n_objs:
                _fail(f"{where}: the snapshot has {len(headers)} slot headers for {n_objs} objects")
            free = set()
            idx = zs["freeobj"]
            last_link = None
            while idx != -1:
                if not 0 <= idx < n_objs:
                    _fail(f"{where}: free list reaches object {idx}, outside 0..{n_objs - 1}")
                if idx in free:
                    _fail(f"{where}: free list visits object {idx} twice")
                free.add(idx)
                link = headers[idx]
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
                header = headers[idx]
                if not header & OBJ_ALLOCATED_TAG:
                    _fail(f"{where}: object {idx} is not free but its header {header:#x} is untagged")
                slot = _slot_of(header, where, live_objects)
                live_objects[slot] = (location(idx), header & ~OBJ_ALLOCATED_TAG)

        # fullness group
        # isolation (2016 protocol): the count matches the VM's flags, and an
        # isolated zspage is on no list
        n_isolated = sum(1 for pfn in chain if pages[pfn]["flags"] & PG_isolated)
        isolated = zs["isolated"]
        if snap["migration"] == "mainline":
            if isolated:
                _fail(f"{where}: mainline protocol, but isolated count {isolated}")
        elif isolated != n_isolated:
            _fail(f"{where}: isolated count {isolated}, but {n_isolated} of its pages are isolated")
        fg = zs["fg"]
        if isolated:
            if fg != FG_NONE:
                _fail(f"{where}: isolated, yet on the list of group {fg}")
            off_list[ci] = off_list.get(ci, 0) + 1
        elif zid in deferred:
            if fg != FG_NONE or inuse:
                _fail(f"{where}: taken by the deferred free but in group {fg}, inuse {inuse}")
        elif fg != (want := group_of(inuse, n_objs)):
            _fail(f"{where}: in fullness group {fg}, inuse {inuse}/{n_objs} calls for {want}")
        per_class_zspages[ci] = per_class_zspages.get(ci, 0) + 1
        per_class_inuse[ci] = per_class_inuse.get(ci, 0) + inuse

    # fullness lists
    for cls in snap["classes"]:
        ci = cls["index"]
        for fg, lst in enumerate(cls["fullness"]):
            if not lst:
                continue
            if len(set(lst)) != len(lst):
                _fail(f"class {ci} group {fg}: list holds a zspage twice")
            for zid in lst:
                if not 0 <= zid < snap["nr_zspage_ids"]:
                    _fail(f"class {ci} group {fg}: list holds unknown zspage id {zid}")
                zs = zspages.get(zid, {"class": -1, "fg": FG_NONE})
                if zs["class"] != ci or zs["fg"] != fg:
                    _fail(
                        f"class {ci} group {fg}: list holds zspage {zid} of class "
                        f"{zs['class']}, group {zs['fg']}"
                    )
        listed = sum(map(len, cls["fullness"]))
        n = per_class_zspages.get(ci, 0)
        taken = sum(1 for z in deferred if z in zspages and zspages[z]["class"] == ci)
        if listed + taken + off_list.get(ci, 0) != n:
            _fail(f"class {ci}: {n} zspages exist but the lists hold {listed}")
        if cls["objs_allocated"] != n * cls["objs_per_zspage"]:
            _fail(
                f"class {ci}: objs_allocated {cls['objs_allocated']}, "
                f"but {n} zspages hold {n * cls['objs_per_zspage']}"
            )
        if cls["objs_inuse"] != per_class_inuse.get(ci, 0):
            _fail(
                f"class {ci}: objs_inuse {cls['objs_inuse']}, "
                f"but its zspages hold {per_class_inuse.get(ci, 0)}"
            )

    # the handle table
    handles: dict[int, dict] = snap["handles"]
    free_slots = set(snap["free_handle_slots"])
    if len(free_slots) != len(snap["free_handle_slots"]):
        _fail("handle cache holds a slot twice")
    for slot in range(1, snap["nr_handle_slots"]):
        h = handles.get(slot)
        if h is None:
            if slot not in free_slots:
                _fail(f"handle slot {slot} is free but not in the handle cache")
            continue
        val = h["handle"]
        if slot in free_slots:
            _fail(f"handle slot {slot} is live and in the handle cache")
        if slot not in live_objects:
            _fail(f"handle {val:#x} is live but no object header holds it")
        header_location, header_handle = live_objects[slot]
        if header_handle != val:
            _fail(f"handle {val:#x}: the object header holds {header_handle:#x} (stale generation)")
        table = (h["pfn"] << OBJ_INDEX_BITS) | h["idx"]
        if table != header_location:
            _fail(f"handle {val:#x}: table says location {table:#x}, its header is at {header_location:#x}")
        cls = classes[zspages[pages[h["pfn"]]["private"]]["class"]]
        room = cls["size"] if cls["huge"] else cls["size"] - ZS_HANDLE_SIZE
        if not 0 < h["size"] <= room:
            _fail(f"handle {val:#x}: size {h['size']} does not fit class {cls['index']}")
        if snap["class_of_size"][h["size"]] != cls["index"]:  # read and write find the class by the size
            _fail(f"handle {val:#x}: size {h['size']} maps to another class than {cls['index']}")
    for slot in snap["pinned"]:
        if slot not in handles:
            _fail(f"handle slot {slot} is pinned but holds no live handle")
    if len(handles) != len(live_objects):
        _fail(f"{len(live_objects)} objects are allocated but {len(handles)} handles are live")

    # pages: every page marked movable for this pool is in the chain of a live
    # zspage (an isolated page that still names a destroyed zspage is the
    # state the 2016 review's race left behind)
    for pfn, page in pages.items():
        if page["flags"] & PG_movable and page["movable_ops"] == ops_id and pfn not in chain_pages:
            zid = page["private"]
            state = "a zspage whose chain lacks it" if zid in zspages else "a free zspage id"
            isolated = " (isolated)" if page["flags"] & PG_isolated else ""
            _fail(f"page {pfn}{isolated} is movable for this pool but names zspage {zid}, {state}")
    if snap["pages_allocated"] != total_pages:
        _fail(f"pool counts {snap['pages_allocated']} pages, its zspages hold {total_pages}")
    memory = snap["memory"]
    if memory["own"]:
        # frames the VM still holds (isolated) after the pool let them go are not the pool's
        held_by_vm = sum(
            1 for page in pages.values() if page["flags"] & (PG_isolated | PG_movable) == PG_isolated
        )
        if memory["nr_used"] - held_by_vm != total_pages:
            _fail(
                f"memory has {memory['nr_used']} frames in use ({held_by_vm} held by the VM only), "
                f"the pool holds {total_pages}"
            )


def _slot_of(header: int, where: str, seen: dict) -> int:
    handle = header & ~1
    slot = handle >> HANDLE_SLOT_SHIFT
    if slot in seen:
        _fail(f"{where}: handle {handle:#x} is in two object headers")
    return slot


# ----------------------------------------------------------------------
# damage hooks

#: the stored fields damage() overwrites: where each lives, as (container, index) or (object, attribute)
_FIELDS: dict[str, Callable[..., tuple[Any, int | str]]] = {
    "pages_allocated": lambda pool: (pool, "pages_allocated"),
    "class.objs_allocated": lambda pool, ci: (pool.size_class[ci], "objs_allocated"),
    "class.objs_inuse": lambda pool, ci: (pool.size_class[ci], "objs_inuse"),
    "zspage.inuse": lambda pool, zid: (pool._zspages[zid], "inuse"),
    "zspage.freeobj": lambda pool, zid: (pool._zspages[zid], "freeobj"),
    "zspage.lock": lambda pool, zid: (pool._zspages[zid], "lock"),
    "zspage.isolated": lambda pool, zid: (pool._zspages[zid], "isolated"),
    "slot.word": lambda pool, zid, idx: (
        pool.memory.words,
        _word_at(pool.zspage_pages(pool._zspages[zid]), idx * pool.zspage_class(pool._zspages[zid]).size),
    ),
    "handle.location": lambda pool, slot: (pool._h_obj, slot),
    "handle.size": lambda pool, slot: (pool._h_size, slot),
    "page.flags": lambda pool, pfn: (pool.memory.flags, pfn),
    "page.movable_ops": lambda pool, pfn: (pool.memory.movable_ops, pfn),
    "page.private": lambda pool, pfn: (pool.memory.private, pfn),
    "page.index": lambda pool, pfn: (pool.memory.index, pfn),
    "page.next": lambda pool, pfn: (pool.memory.next, pfn),
    "page.first_obj_offset": lambda pool, pfn: (pool.memory.first_obj_offset, pfn),
}
#: every damage() knows: the stored fields, and two moves
DAMAGES = (*_FIELDS, "zspage.fg", "handle_cache")


def damage(pool: Pool, what: str, *key: int, value: int) -> int:
    """Overwrite one piece of the pool's state with ``value``; return the value it had.

    ``what`` names the piece and ``key`` where it is: ``"pages_allocated"``
    (no key); ``"class.objs_allocated"``, ``"class.objs_inuse"`` (class index);
    ``"zspage.inuse"``, ``"zspage.freeobj"``, ``"zspage.lock"``,
    ``"zspage.isolated"`` (zid); ``"slot.word"`` (zid, object index: the
    slot's first word in the page bytes, its header or its free-list link);
    ``"handle.location"`` (slot: ``pfn << OBJ_INDEX_BITS | idx``),
    ``"handle.size"`` (slot); ``"page.flags"``, ``"page.movable_ops"``,
    ``"page.private"``, ``"page.index"``, ``"page.next"``,
    ``"page.first_obj_offset"`` (pfn).  Two are moves, not stores:
    ``"zspage.fg"`` (zid) takes the zspage off its fullness list and puts it
    at the head of group ``value``'s (-1: on no list); ``"handle_cache"``
    (slot) takes the slot out of the free-slot cache (``value`` 0) or pushes
    it (1).
    """
    with frozen(pool):
        if what == "zspage.fg":
            (zid,) = key
            zspage = pool._zspages[zid]
            cls = pool.zspage_class(zspage)
            old = zspage.fullness
            if old != FG_NONE:
                pool.remove_zspage(cls, zspage)
            if value != FG_NONE:
                pool.insert_zspage(cls, zspage, value)
            return old
        if what == "handle_cache":
            (slot,) = key
            old = int(slot in pool._h_free)
            if old and not value:
                pool._h_free.remove(slot)
            elif value and not old:
                pool._h_free.append(slot)
            return old
        if what not in _FIELDS:
            raise ValueError(f"unknown damage {what!r}; one of {', '.join(DAMAGES)}")
        target, item = _FIELDS[what](pool, *key)
        if isinstance(item, str):
            old = getattr(target, item)
            setattr(target, item, value)
        else:
            old = target[item]
            target[item] = value
        return old
