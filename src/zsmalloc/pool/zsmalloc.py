"""The allocator: mm/zsmalloc.c, function for function, on real frames.

Which kernel this models
------------------------
Mainline 6.15 to 6.17 unless a function says otherwise: fullness groups by
tenths of use (6.4; ``fullness="legacy"`` groups as 4.8 to 6.3 did, as
pool/legacy.py says), the min-waste chain size (6.3), the pool lock as a
reader/writer lock with per-zspage locks (5.17, the zspage lock of 6.15),
object access through ``zs_obj_read_begin`` / ``zs_obj_read_end`` /
``zs_obj_write`` (6.15; ``map`` below is the read pair, ``zs_map_object``
before), the deferred free of empty zspages (4.8), ``lock_zspage`` with the
2022 fix.  The movable-page callbacks and the 2016 protocol (4.8) live in
pool/migrate.py, compaction in pool/compact.py, the class table in
pool/size_class.py.

Names: the kernel calls the page of a zspage a ``zpdesc`` (a view of its
``struct page``); here it is a pfn with its descriptor in ``Memory``.  Since
6.17 the VM side is ``isolate_movable_ops_page`` (was
``isolate_movable_page``) and the isolation flag ``PageMovableOpsIsolated``
(was ``PG_isolated``): see zsmalloc/mm/migrate.py.  ``Pool`` methods keep
the kernel's names; where a name differs (a Python-private one, a
``__``-prefixed kernel name), the docstring gives the kernel's.

What lives where
----------------
- Object bytes, in-page object headers and free-list links: in the frames of
  :class:`zsmalloc.mm.Memory`, exactly where the kernel keeps them.
- Per-page state (which zspage, next page of the chain, first object offset,
  the handle of a huge object, movable/locked/isolated): page descriptors in
  ``Memory``: ``private`` is the zspage id, ``next`` the chain link, ``index``
  the huge object's handle.
- Per-zspage state: :class:`Zspage` (the kernel's ``struct zspage``), one per
  zspage id (``zid``), kept in ``Pool._zspages``; freed ids are reused, like
  the kernel's zspage kmem_cache.  Its ``list`` is its membership in one of
  its class's fullness lists, dicts used as ordered sets.
- Handles: a table of arrays indexed by handle slot (the kernel's handle
  kmem_cache, whose objects each hold one location word).
- Per-class state: :class:`SizeClass` (fullness lists and counters).

A zspage of class size 1568 (5 pages, 13 objects) laid over its frames; the
frames are anywhere in the arena, linked through ``Memory.next``::

      page 0 (pfn 17)      page 1 (pfn 3)       page 2 (pfn 40)  ...  page 4
    +------+------+----+ +-+------+------+---+ +----+------+---+    +--+------+--+
    | obj0 | obj1 |obj2| |2| obj3 | obj4 |ob5| |obj5| obj6 |ob7|    |o1| obj12|//|
    +------+------+----+ +-+------+------+---+ +----+------+---+    +--+------+--+
    first_obj_offset 0      1568*2+1568-4096=608  ...                      tail waste 96
                            (obj2 spans pages 0 and 1)

Every slot of a non-huge class starts with one 8-byte little-endian word::

    allocated:  handle | OBJ_ALLOCATED_TAG      (handles are even, bit 0 = 1)
    free:       next_free_index << 1            (bit 0 = 0; FREE_LIST_END ends it)

and the caller's bytes follow it.  Huge zspages (one page, one object) keep
no header: the handle lives in the page descriptor's ``index`` word.

A handle is a stable, opaque even integer::

     63 62                  32 31          20 19             1  0
    +--+----------------------+--------------+----------------+---+
    |0 |      table slot      |   pool tag   |   generation   | 0 |
    +--+----------------------+--------------+----------------+---+

The table maps the slot to the object's location, ``(pfn << OBJ_INDEX_BITS)
| obj_idx`` with pfn the page the object starts in and obj_idx its index in
the zspage (``obj_to_location`` / ``location_to_obj``).  Moving an object
(compaction, migration) rewrites only that table entry (``record_obj``).  A
freed slot's generation is bumped before reuse, so a stale handle is
refused, not aliased to the new object; the pool's tag
(``zsmalloc.pool.handles``) makes every other pool refuse it.  (The kernel's
handle is the address of a slab object: it has neither.)

Locking
-------
Lock order: page lock -> pool lock -> class lock -> zspage lock.

- ``pool._lock``: the kernel's ``pool->lock``.  Readers (zs_free, object
  access) take it to translate a handle into a location and to pin the zspage;
  writers (migration, compaction) take it to move objects.
- ``SizeClass.lock``: the class's zspage lists, counters, and every zspage's
  inuse/freeobj/fullness.
- zspage lock (``Zspage.lock``): held for reading while a caller maps an
  object; migration and compaction only try it for writing and back off.
- ``_cache_lock``: the handle and zspage caches (kmem_cache's own lock) and
  the pool's page count; a leaf.

Two choices of the model: ``pool._lock`` is a plain mutex (under the GIL no
two read sections run at once anyway), and ``read``/``write`` copy the bytes
inside that section instead of taking and dropping the zspage read lock
around the copy; ``map`` keeps the kernel's zspage read lock, because its
caller holds the mapping for as long as it likes.
"""

from __future__ import annotations

import operator
import sys
import threading
from array import array
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from zsmalloc.errors import (
    InvalidHandleError,
    InvalidSizeError,
    ObjectMappedError,
    OutOfFramesError,
    PoolClosedError,
    PoolFullError,
)
from zsmalloc.mm import PAGE_SHIFT, PAGE_SIZE, Memory
from zsmalloc.mm.counters import Counters
from zsmalloc.mm.heap import trim_process_heap
from zsmalloc.pool import legacy
from zsmalloc.pool.common import PoolProtocols
from zsmalloc.pool.compact import check_policy, shrinker_count, shrinker_scan, zs_compact
from zsmalloc.pool.constants import (
    FG_NONE,
    FREE_LIST_END,
    FULLNESS_GROUPINGS,
    FULLNESS_LEGACY,
    HANDLE_FREED,
    HANDLE_GEN_MASK,
    HANDLE_GEN_SHIFT,
    HANDLE_SLOT_MASK,
    HANDLE_SLOT_SHIFT,
    NR_FULLNESS_GROUPS,
    OBJ_ALLOCATED_TAG,
    OBJ_INDEX_BITS,
    OBJ_INDEX_MASK,
    OBJ_TAG_BITS,
    ZS_INUSE_RATIO_0,
    ZS_INUSE_RATIO_10,
    ZS_INUSE_RATIO_100,
    get_fullness_group,
)
from zsmalloc.pool.handles import HANDLE_TAG_SHIFT, handle_tag_arg, hold_handle_tag, reserve_handle_tag
from zsmalloc.pool.kernels import pool_shape
from zsmalloc.pool.migrate import movable_ops_for
from zsmalloc.pool.size_class import (
    ZS_HANDLE_SIZE,
    ZS_MAX_ALLOC_SIZE,
    ZS_SIZE_CLASSES,
    ClassSpec,
    build_class_table,
    get_size_class_index,
)
from zsmalloc.pool.stats import ClassStats, PoolStats, format_classes

_WORD_SHIFT = 3  # bytes -> 8-byte words
_AUTO_COMPACT_INTERVAL = 1024  # frees between two looks at the shrinker count
_TRIM_MIN = 256  # trim() leaves tables alone unless this many entries can go
_DICT_COPY_BYTES = 4096
# Tables never shrink below this many entries: their buffers then stay in the
# C heap proper, not in Python's small-object arenas, where a small block made
# late in a pool's life would keep a whole arena resident.
_TABLE_MIN = 1024


def obj_to_location(obj: int) -> tuple[int, int]:
    """(pfn of the page the object starts in, its index in the zspage)."""
    return obj >> OBJ_INDEX_BITS, obj & OBJ_INDEX_MASK


def location_to_obj(pfn: int, obj_idx: int) -> int:
    """The location word of object ``obj_idx`` that starts in page ``pfn``."""
    return (pfn << OBJ_INDEX_BITS) | obj_idx


def offset_in_page(offset: int) -> int:
    """Byte ``offset`` of a zspage, as an offset inside the page that holds it."""
    return offset & (PAGE_SIZE - 1)


def _word(pfn: int, offset: int) -> int:
    """The index in ``Memory.words`` of the 8-byte word at byte ``offset`` of page ``pfn``."""
    return ((pfn << PAGE_SHIFT) + offset) >> _WORD_SHIFT


def _top_free_run(free: array, n: int) -> int:
    """Where the run of free entries at the top of a table of ``n`` begins (not below _TABLE_MIN).

    ``free`` is the table's free stack.  A bitmap, not a set: a set of a big
    stack would leave thousands of int objects' worth of arenas and a large
    table behind in the heap, the opposite of what trimming is for.
    """
    mark = bytearray(n)
    for i in free:
        mark[i] = 1
    keep = n
    while keep > _TABLE_MIN and mark[keep - 1]:
        keep -= 1
    return keep


def _drop_from(free: array, keep: int) -> None:
    """Remove the entries at ``keep`` and above from a free stack, in place, order kept."""
    kept = array(free.typecode, (i for i in free if i < keep))
    del free[:]  # in place: malloc and free use the stack without the cache lock
    free.extend(kept)


class Zspage:
    """``struct zspage``: a chain of pages of one class and the objects laid over it."""

    __slots__ = ("class_idx", "first_page", "freeobj", "fullness", "inuse", "isolated", "lock", "zid")

    def __init__(self, zid: int) -> None:
        #: the zspage id: its index in ``Pool._zspages`` and its pages' ``private`` word
        self.zid = zid
        #: the class index (the kernel's ``class``); -1 while the id is free
        self.class_idx = -1
        #: allocated objects
        self.inuse = 0
        #: index of the first free object; -1 when none is free
        self.freeobj = -1
        #: pfn of the first page (``first_zpdesc``); -1 while the id is free
        self.first_page = -1
        #: the fullness group whose list holds it; FG_NONE when on no list
        self.fullness = FG_NONE
        #: the zspage lock: readers > 0, -1 write-locked
        self.lock = 0
        #: pages of it isolated by the VM (2016 protocol)
        self.isolated = 0

    def __repr__(self) -> str:
        return f"<Zspage {self.zid}: class {self.class_idx}, inuse {self.inuse}, group {self.fullness}>"


class _Mapping:
    """One ``map()`` of an object: what its end undoes, and the copy its views read."""

    __slots__ = ("copy", "handle", "zspage")

    def __init__(self, handle: int, zspage: Zspage, copy: bytearray) -> None:
        self.handle, self.zspage, self.copy = handle, zspage, copy

    def viewed(self) -> bool:
        """Does a view of the copy live?  (A bytearray with views cannot be resized.)"""
        try:
            self.copy.append(0)
        except BufferError:
            return True
        del self.copy[-1]
        return False


class SizeClass:
    """``struct size_class``: one canonical class, its geometry, lock, fullness lists and counters."""

    __slots__ = (
        "fullness_list",
        "hdr",
        "huge",
        "index",
        "lock",
        "objs_allocated",
        "objs_inuse",
        "objs_per_zspage",
        "pages_per_zspage",
        "size",
    )

    def __init__(self, spec: ClassSpec) -> None:
        self.index = spec.index
        self.size = spec.size
        self.pages_per_zspage = spec.pages_per_zspage
        self.objs_per_zspage = spec.objs_per_zspage
        self.huge = spec.huge
        #: bytes before the caller's data in a slot: the handle header, none for huge objects
        self.hdr = 0 if spec.huge else ZS_HANDLE_SIZE
        self.lock = threading.Lock()
        #: one list per fullness group: dicts used as ordered sets of zspages,
        #: the last inserted being the head of the list
        self.fullness_list: list[dict[Zspage, None]] = [{} for _ in range(NR_FULLNESS_GROUPS)]
        self.objs_allocated = 0
        self.objs_inuse = 0

    @property
    def nr_zspages(self) -> list[int]:
        """Zspages per fullness group (the 10%..100% columns of the stats are groups 1..11;
        under the legacy grouping groups 0..3 are used, pool/legacy.py)."""
        return [len(lst) for lst in self.fullness_list]

    def __repr__(self) -> str:
        return (
            f"<SizeClass {self.index}: size {self.size}, "
            f"{self.pages_per_zspage} pages, {self.objs_per_zspage} objs>"
        )


class Pool(PoolProtocols):
    """A zsmalloc pool: allocate variable-size objects (1..4096 bytes) behind stable handles.

    ``memory`` is the :class:`~zsmalloc.mm.Memory` to take frames from (a new
    private one by default); ``max_pages`` caps the pool's pages.
    ``chain_size`` (4..16) and ``class_rule`` ("min-waste", or the pre-6.3
    "used-percentage") shape the size classes.  ``fullness`` is how zspages
    are grouped, allocated from and compacted: "ratio" (6.4 and later) or
    "legacy" (4.8 to 6.3, pool/legacy.py).  ``kernel`` ("6.1", "6.6",
    "6.12", "6.17") sets all three as that kernel's zsmalloc has them
    (pool/kernels.py).  ``migration`` picks the
    movable-page protocol ("mainline", or "2016", see pool/migrate.py).
    ``auto_compact_pages`` runs compaction in the background once that many
    pages are freeable (the shrinker's count).  ``background_work=False``
    starts no worker thread: the deferred free and the background compaction
    the pool asks for are recorded in ``pending_work`` and run when the
    caller says (``run_pending_work``, ``flush_deferred``), which is what a
    deterministic checker needs.  ``handle_tag`` (0..4095) is the tag in the
    pool's handles, by which it refuses other pools' handles: by default one
    that no live pool holds (pool/handles.py).
    """

    def __init__(
        self,
        name: str = "zsmalloc",
        chain_size: int | None = None,
        memory: Memory | None = None,
        max_pages: int | None = None,
        *,
        class_rule: str | None = None,
        fullness: str | None = None,
        kernel: str | None = None,
        migration: str = "mainline",
        auto_compact_pages: int | None = None,
        background_work: bool = True,
        handle_tag: int | None = None,
    ) -> None:
        shape = pool_shape(kernel, chain_size, class_rule, fullness)
        chain_size, class_rule, fullness = shape.chain_size, shape.class_rule, shape.fullness
        canonical, specs, huge_size = build_class_table(chain_size, class_rule)
        if fullness not in FULLNESS_GROUPINGS:
            raise ValueError(f"fullness must be one of {FULLNESS_GROUPINGS}, not {fullness!r}")
        #: how zspages are grouped: "ratio" (6.4+) or "legacy" (before 6.4)
        self.fullness = fullness
        self._legacy = fullness == FULLNESS_LEGACY
        #: the group of full zspages: find_get_zspage looks below it
        self._zs_full = legacy.ZS_FULL if self._legacy else ZS_INUSE_RATIO_100
        self.max_pages = max_pages
        self.name = name
        self.chain_size = chain_size
        self.class_rule = class_rule
        #: run compaction in the background once this many pages are freeable
        self.auto_compact_pages = auto_compact_pages
        self._auto_countdown = _AUTO_COMPACT_INTERVAL
        self._own_memory = memory is None
        self.memory = Memory() if memory is None else memory
        self._huge_class_size = huge_size

        by_index = {i: SizeClass(spec) for i, spec in specs.items()}
        #: all 255 class slots; merged slots share the canonical SizeClass
        self.size_class: list[SizeClass] = [by_index[canonical[i]] for i in range(ZS_SIZE_CLASSES)]
        #: canonical classes, largest first (the order compaction walks them)
        self.classes: list[SizeClass] = [by_index[i] for i in sorted(by_index, reverse=True)]

        self._lock = threading.Lock()  # pool->lock
        self._cache_lock = threading.Lock()
        self._deferred_worker_lock = threading.Lock()
        #: zspages the deferred free has taken off their lists and not yet freed
        self._deferred_batch: set[Zspage] = set()
        self._work_requested: set[str] = set()
        self._worker_running = False
        self.background_work = background_work
        #: work asked for while background_work is False, in order ("free", "compact")
        self._pending: list[str] = []

        #: every zspage id ever handed out, indexed by zid, and the free ids, a stack
        self._zspages: list[Zspage] = []
        self._free_zspage_ids = array("l")

        # handle table, indexed by slot (slot 0 unused: a handle is never 0):
        # the handle a slot holds (HANDLE_FREED set while it holds none), the
        # location of its object, and the size malloc was asked for
        self._h_val = array("Q", [HANDLE_FREED])
        self._h_obj = array("Q", [0])
        self._h_size = array("H", [0])
        self._h_free = array("L")  # free slots, a stack
        self._gen_base = 0  # generation of fresh slots: above any handle of a trimmed slot
        #: the pool's tag, in every handle it hands out (pool/handles.py)
        if handle_tag is None:
            self.handle_tag = reserve_handle_tag()
            hold_handle_tag(self.handle_tag, self)
        else:
            self.handle_tag = handle_tag_arg(handle_tag)
        self._tag_bits = self.handle_tag << HANDLE_TAG_SHIFT
        #: handle slots pinned by a caller's map() (count per slot); the 2016
        #: protocol's migrate refuses to move them
        self._pinned: dict[int, int] = {}
        # mappings whose with has ended while a view of them lives on
        self._lingering: list[_Mapping] = []

        self.pages_allocated = 0
        #: compaction and deferred-free events
        self.events = Counters(("pages_compacted", "objs_compacted", "compactions", "deferred_frees"))
        self._closed = False
        #: the movable-page callbacks the VM calls (pool/migrate.py)
        self.movable_ops = movable_ops_for(self, migration)
        self.migration = migration
        self._ops_id = self.memory.register_movable_ops(self.movable_ops)

    # ------------------------------------------------------------------
    # public properties

    @property
    def total_pages(self) -> int:
        """``zs_get_total_pages``: pages the pool holds, fragmentation included."""
        return self.pages_allocated

    @property
    def pages_compacted(self) -> int:
        """Pages freed by compaction so far (zram's mm_stat field)."""
        return self.events["pages_compacted"]

    @property
    def objs_compacted(self) -> int:
        """Objects moved by compaction so far."""
        return self.events["objs_compacted"]

    @property
    def nr_compactions(self) -> int:
        """Calls of compact() (and of the background shrinker) so far."""
        return self.events["compactions"]

    @property
    def nr_deferred_frees(self) -> int:
        """Empty zspages freed by the deferred free so far."""
        return self.events["deferred_frees"]

    @property
    def huge_class_size(self) -> int:
        """``zs_huge_class_size``: objects of this size or more get a page of their own."""
        return self._huge_class_size

    def class_index(self, size: int) -> int:
        """``zs_lookup_class_index``: the canonical class index serving ``size`` bytes."""
        if not 0 < size <= ZS_MAX_ALLOC_SIZE:
            raise InvalidSizeError(f"size must be within 1..{ZS_MAX_ALLOC_SIZE}, not {size}")
        return self.size_class[get_size_class_index(size)].index

    # ------------------------------------------------------------------
    # handles: the handle cache, and what a handle's slot holds

    def cache_alloc_handle(self) -> int:
        """A free handle slot, the table grown if none is left.

        ``array.pop`` and ``array.append`` are single C calls under the GIL,
        so taking and returning a slot needs no lock; growing the table does.
        """
        while True:
            try:
                return self._h_free.pop()
            except IndexError:
                self._grow_handle_table()

    def _grow_handle_table(self) -> None:
        """Add free slots to the handle table (+25%: its slack is resident)."""
        with self._cache_lock:
            if self._h_free:  # another thread grew it meanwhile
                return
            old = len(self._h_val)
            new = min(HANDLE_SLOT_MASK + 1, max(1024, old + old // 4))
            if new <= old:
                raise PoolFullError("handle table is full")
            extra = new - old
            fresh = self._tag_bits | (self._gen_base << HANDLE_GEN_SHIFT) | HANDLE_FREED
            self._h_val.extend((slot << HANDLE_SLOT_SHIFT) | fresh for slot in range(old, new))
            self._h_obj.frombytes(bytes(8 * extra))
            self._h_size.frombytes(bytes(2 * extra))
            self._h_free.extend(range(new - 1, old - 1, -1))  # lowest slot pops first

    def cache_free_handle(self, slot: int) -> None:
        """Give a handle slot back to the handle cache."""
        self._h_free.append(slot)

    def _next_handle(self, slot: int) -> int:
        """The handle a free slot hands out next: its last one's generation plus one, wrapping."""
        last = self._h_val[slot] & ~HANDLE_FREED
        generation = ((last >> HANDLE_GEN_SHIFT) + 1) & HANDLE_GEN_MASK
        return (slot << HANDLE_SLOT_SHIFT) | self._tag_bits | (generation << HANDLE_GEN_SHIFT)

    def _live_slot(self, handle: int) -> int:
        """The handle's table slot; InvalidHandleError unless the slot holds this very handle."""
        slot = handle >> HANDLE_SLOT_SHIFT
        try:
            live = self._h_val[slot] == handle
        except IndexError:
            live = False
        if not live:
            self._check_open()
            raise InvalidHandleError(f"invalid handle {handle!r}: unknown, freed or stale")
        return slot

    def handle_to_obj(self, handle: int) -> int:
        """The location the handle's slot holds."""
        return self._h_obj[handle >> HANDLE_SLOT_SHIFT]

    def record_obj(self, handle: int, obj: int) -> None:
        """Point the handle at a new location of its object."""
        self._h_obj[handle >> HANDLE_SLOT_SHIFT] = obj

    def pin_tag(self, handle: int) -> None:
        """Pin the handle's object where it is (4.8's ``pin_tag``, for the 2016 protocol)."""
        slot = handle >> HANDLE_SLOT_SHIFT
        self._pinned[slot] = self._pinned.get(slot, 0) + 1

    def unpin_tag(self, handle: int) -> None:
        """Drop one pin of the handle's object (4.8's ``unpin_tag``)."""
        slot = handle >> HANDLE_SLOT_SHIFT
        if self._pinned[slot] == 1:
            del self._pinned[slot]
        else:
            self._pinned[slot] -= 1

    def tag_pinned(self, handle: int) -> bool:
        """Is the handle's object pinned (what 4.8's ``trypin_tag`` would fail on)?"""
        return (handle >> HANDLE_SLOT_SHIFT) in self._pinned

    # ------------------------------------------------------------------
    # zspages and their pages

    def get_zspage(self, pfn: int) -> Zspage:
        """The zspage page ``pfn`` belongs to."""
        return self._zspages[self.memory.private[pfn]]

    def zspage_class(self, zspage: Zspage) -> SizeClass:
        """The class of a zspage."""
        return self.size_class[zspage.class_idx]

    def get_first_obj_offset(self, pfn: int) -> int:
        """Where in page ``pfn`` the first object that starts in it begins."""
        return self.memory.first_obj_offset[pfn]

    def set_first_obj_offset(self, pfn: int, offset: int) -> None:
        """Record where in page ``pfn`` the first object that starts in it begins."""
        self.memory.first_obj_offset[pfn] = offset

    def zspage_pages(self, zspage: Zspage) -> list[int]:
        """The pfns of a zspage's chain, first page first (``get_next_zpdesc`` from the first)."""
        nxt = self.memory.next
        pages = []
        pfn = zspage.first_page
        while pfn >= 0:
            pages.append(pfn)
            pfn = nxt[pfn]
        return pages

    def cache_alloc_zspage(self) -> Zspage:
        """A free zspage id's Zspage, or a new one."""
        with self._cache_lock:
            if self._free_zspage_ids:
                return self._zspages[self._free_zspage_ids.pop()]
            zspage = Zspage(len(self._zspages))
            self._zspages.append(zspage)
            return zspage

    def cache_free_zspage(self, zspage: Zspage) -> None:
        """Give a freed zspage's id back to the cache (caller holds the cache lock)."""
        self._free_zspage_ids.append(zspage.zid)

    # ------------------------------------------------------------------
    # fullness lists (caller holds the class lock)

    def get_fullness_group(self, cls: SizeClass, zspage: Zspage) -> int:
        """The group the zspage's inuse calls for, in the pool's grouping."""
        if self._legacy:
            return legacy.get_fullness_group(zspage.inuse, cls.objs_per_zspage)
        return get_fullness_group(zspage.inuse, cls.objs_per_zspage)

    def insert_zspage(self, cls: SizeClass, zspage: Zspage, fullness: int) -> None:
        """Put a zspage at the head of its fullness group's list (legacy: pool/legacy.py)."""
        if self._legacy:
            legacy.insert_zspage(cls, zspage, fullness)
            return
        cls.fullness_list[fullness][zspage] = None
        zspage.fullness = fullness

    def remove_zspage(self, cls: SizeClass, zspage: Zspage) -> None:
        """Take a zspage off its fullness group's list."""
        lst = cls.fullness_list[zspage.fullness]
        # The head leaves through popitem(), which also drops the holes that
        # deletions leave at the end of a dict: so finding the head stays O(1).
        if next(reversed(lst)) is zspage:
            lst.popitem()
        else:
            del lst[zspage]
        zspage.fullness = FG_NONE

    def fix_fullness_group(self, cls: SizeClass, zspage: Zspage) -> int:
        """Move the zspage to the list its inuse count calls for; return that group."""
        newfg = self.get_fullness_group(cls, zspage)
        if newfg != zspage.fullness:
            self.remove_zspage(cls, zspage)
            self.insert_zspage(cls, zspage, newfg)
        return newfg

    def putback_zspage(self, cls: SizeClass, zspage: Zspage) -> int:
        """Put a zspage back on the list its inuse calls for; return that group."""
        fg = self.get_fullness_group(cls, zspage)
        self.insert_zspage(cls, zspage, fg)
        return fg

    def find_get_zspage(self, cls: SizeClass) -> Zspage | None:
        """The head of the fullest group that has room (99% down to empty), or None.

        Legacy: almost full, almost empty, then empty.
        """
        for fg in range(self._zs_full - 1, ZS_INUSE_RATIO_0 - 1, -1):
            lst = cls.fullness_list[fg]
            if lst:
                return next(reversed(lst))
        return None

    # ------------------------------------------------------------------
    # objects in a zspage (caller holds the class lock)

    def obj_malloc(self, zspage: Zspage, handle: int) -> int:
        """Pop the zspage's first free object, tag it with ``handle``, record and return its location."""
        cls = self.zspage_class(zspage)
        mem = self.memory
        obj_idx = zspage.freeobj
        offset = obj_idx * cls.size
        pfn = zspage.first_page
        for _ in range(offset >> PAGE_SHIFT):  # to the page the object starts in
            pfn = mem.next[pfn]
        if cls.huge:
            zspage.freeobj = -1
            mem.index[pfn] = handle | OBJ_ALLOCATED_TAG
        else:
            word = _word(pfn, offset_in_page(offset))
            link = mem.words[word]
            zspage.freeobj = -1 if link == FREE_LIST_END else link >> OBJ_TAG_BITS
            mem.words[word] = handle | OBJ_ALLOCATED_TAG
        zspage.inuse += 1
        obj = location_to_obj(pfn, obj_idx)
        self.record_obj(handle, obj)
        return obj

    def obj_free(self, cls: SizeClass, obj: int) -> None:
        """Push the object's slot at the head of its zspage's free list."""
        pfn, obj_idx = obj_to_location(obj)
        zspage = self.get_zspage(pfn)
        mem = self.memory
        if cls.huge:
            mem.index[pfn] = 0
        else:
            link = FREE_LIST_END if zspage.freeobj < 0 else zspage.freeobj << OBJ_TAG_BITS
            mem.words[_word(pfn, offset_in_page(obj_idx * cls.size))] = link
        zspage.freeobj = obj_idx
        zspage.inuse -= 1

    def obj_to_head(self, cls: SizeClass, pfn: int, offset: int) -> int:
        """The first word of the slot at ``offset`` in page ``pfn`` (a huge one's: in its descriptor)."""
        if cls.huge:
            return self.memory.index[pfn]
        return self.memory.words[_word(pfn, offset)]

    def obj_allocated(self, cls: SizeClass, pfn: int, offset: int) -> int:
        """The handle of the object at byte ``offset`` of page ``pfn`` if it is allocated, else 0."""
        head = self.obj_to_head(cls, pfn, offset)
        return head & ~OBJ_ALLOCATED_TAG if head & OBJ_ALLOCATED_TAG else 0

    def migrate_obj(self, cls: SizeClass, dst: Zspage, handle: int) -> None:
        """Move the handle's object into ``dst``: the step of either ``migrate_zspage``."""
        used_obj = self.handle_to_obj(handle)
        free_obj = self.obj_malloc(dst, handle)
        self.zs_object_copy(cls, free_obj, used_obj)
        self.obj_free(cls, used_obj)

    def objs_in_page(self, cls: SizeClass, zspage: Zspage, pfn: int) -> list[tuple[int, int]]:
        """(handle, obj_idx) of every allocated object that starts in page ``pfn``.

        The kernel's ``find_alloced_obj``, called until the page is done: from
        the page's first object offset, one class size at a time, to the end
        of the page or of the zspage's objects.
        """
        page_start = self.zspage_pages(zspage).index(pfn) << PAGE_SHIFT  # in the zspage's bytes
        end = min(page_start + PAGE_SIZE, cls.objs_per_zspage * cls.size)
        found = []
        for offset in range(page_start + self.get_first_obj_offset(pfn), end, cls.size):
            handle = self.obj_allocated(cls, pfn, offset - page_start)
            if handle:
                found.append((handle, offset // cls.size))
        return found

    # ------------------------------------------------------------------
    # building and destroying zspages

    def alloc_zspage(self, cls: SizeClass) -> Zspage:
        """Take ``pages_per_zspage`` frames and build an empty zspage on them.

        The pool's page count is reserved first, so that ``max_pages`` (the
        model's cap; zram checks its own limit in the kernel) is never passed.
        """
        n = cls.pages_per_zspage
        with self._cache_lock:
            if self.max_pages is not None and self.pages_allocated + n > self.max_pages:
                raise PoolFullError(
                    f"pool {self.name!r} would pass max_pages={self.max_pages} "
                    f"({self.pages_allocated} in use, {n} more needed)"
                )
            self.pages_allocated += n
        try:
            pages = self.memory.alloc_pages(n)
        except OutOfFramesError as exc:
            with self._cache_lock:
                self.pages_allocated -= n
            raise PoolFullError(f"no page for a new zspage of class {cls.index}: {exc}") from exc
        zspage = self.cache_alloc_zspage()
        zspage.class_idx = cls.index
        zspage.inuse = 0
        zspage.freeobj = 0
        zspage.fullness = FG_NONE
        zspage.lock = 0
        zspage.isolated = 0
        self.create_page_chain(zspage, pages)
        self.init_zspage(cls, zspage)
        return zspage

    def create_page_chain(self, zspage: Zspage, pages: list[int]) -> None:
        """Link the frames into the zspage's chain, each descriptor naming the zspage."""
        mem = self.memory
        zspage.first_page = pages[0]
        for pfn, nxt in zip(pages, [*pages[1:], -1], strict=True):
            mem.private[pfn] = zspage.zid
            mem.next[pfn] = nxt

    def init_zspage(self, cls: SizeClass, zspage: Zspage) -> None:
        """Record each page's first object offset; link the free list 0 -> 1 -> ... -> N-1 -> end."""
        pages = self.zspage_pages(zspage)
        for k, pfn in enumerate(pages):
            # the first object that starts in page k is the first whose start idx * size >= k pages
            self.set_first_obj_offset(pfn, (-(k << PAGE_SHIFT)) % cls.size)
        words = self.memory.words
        last = cls.objs_per_zspage - 1
        for obj_idx in range(cls.objs_per_zspage):
            offset = obj_idx * cls.size
            link = FREE_LIST_END if obj_idx == last else (obj_idx + 1) << OBJ_TAG_BITS
            words[_word(pages[offset >> PAGE_SHIFT], offset_in_page(offset))] = link
        zspage.freeobj = 0

    def SetZsPageMovable(self, zspage: Zspage) -> None:  # the kernel's name
        """Mark a fully set-up zspage's pages movable: from now on the VM may take them."""
        self.memory.set_pages_movable(self.zspage_pages(zspage), self._ops_id)

    def trylock_zspage(self, zspage: Zspage) -> bool:
        """Trylock every page of the zspage, all or none."""
        return self.memory.trylock_pages(self.zspage_pages(zspage))

    def lock_zspage(self, zspage: Zspage) -> None:
        """Take every page lock of the zspage, sleeping, safe against migration.

        A page not yet locked may be migrated out of the chain while we wait,
        so each page is looked up and trylocked under the pool lock; to sleep,
        we pin the page, drop the pool lock, wait for the page lock to be
        released, and look again (the 2022 fix).
        """
        mem = self.memory
        locked = -1  # the last page locked, in chain order
        while True:
            with self._lock:
                pfn = zspage.first_page if locked < 0 else mem.next[locked]
                while pfn >= 0 and mem.trylock_page(pfn):
                    locked = pfn
                    pfn = mem.next[pfn]
                if pfn < 0:
                    return
                mem.get_page(pfn)
            mem.wait_on_page_locked(pfn)
            mem.put_page(pfn)

    def _free_zspage(self, cls: SizeClass, zspage: Zspage) -> None:
        """``__free_zspage``: give an empty zspage's frames back.

        Every page lock is held by the caller; they are dropped here.
        """
        pages = self.zspage_pages(zspage)
        keep: tuple[int, ...] = ()
        if self.movable_ops.keeps_isolated_descriptor:
            keep = tuple(pfn for pfn in pages if self.memory.page_isolated(pfn))
        self.memory.unlock_and_free_pages(pages, keep)
        zspage.isolated = 0
        zspage.class_idx = -1
        zspage.first_page = -1
        cls.objs_allocated -= cls.objs_per_zspage
        with self._cache_lock:
            self.cache_free_zspage(zspage)
            self.pages_allocated -= cls.pages_per_zspage

    def _free_in_isolated_zspage(self, cls: SizeClass, zspage: Zspage) -> None:
        """An object of an isolated zspage was freed (2016 protocol).

        The zspage stays off the lists; if it is now empty, the last putback
        or migrate of its pages frees it.  The broken v3 protocol destroys it
        here and now, isolated pages and all.
        """
        if zspage.inuse == 0 and self.movable_ops.free_destroys_isolated and self.trylock_zspage(zspage):
            self._free_zspage(cls, zspage)

    def free_zspage(self, cls: SizeClass, zspage: Zspage) -> None:
        """Free an empty zspage now if all its page locks can be had, else defer it."""
        if not self.trylock_zspage(zspage):
            self.kick_deferred_free()
            return
        self.remove_zspage(cls, zspage)
        self._free_zspage(cls, zspage)

    # ------------------------------------------------------------------
    # the zspage lock (what object access, migration and compaction take)

    def zspage_read_lock(self, zspage: Zspage) -> None:
        """Keep migration and compaction off the zspage while an object of it is mapped."""
        zspage.lock += 1

    def zspage_read_unlock(self, zspage: Zspage) -> None:
        zspage.lock -= 1

    def zspage_write_trylock(self, zspage: Zspage) -> bool:
        """Lock the zspage against readers, or fail at once if one maps an object."""
        if zspage.lock > 0 and self._lingering:
            self.reap_mappings()
        if zspage.lock:
            return False
        zspage.lock = -1
        return True

    def zspage_write_unlock(self, zspage: Zspage) -> None:
        zspage.lock = 0

    # ------------------------------------------------------------------
    # what migration needs (callers hold the pool and class locks)

    def replace_sub_page(self, cls: SizeClass, zspage: Zspage, new: int, old: int) -> None:
        """Put frame ``new`` in the chain where ``old`` was, and make it movable."""
        mem = self.memory
        pages = [new if pfn == old else pfn for pfn in self.zspage_pages(zspage)]
        self.create_page_chain(zspage, pages)
        self.set_first_obj_offset(new, self.get_first_obj_offset(old))
        if cls.huge:
            mem.index[new] = mem.index[old]
        mem.set_page_movable(new, self._ops_id)

    # ------------------------------------------------------------------
    # the deferred free of empty zspages (async_free_zspage)

    def kick_deferred_free(self) -> None:
        """Schedule the deferred free (the kernel's ``schedule_work(&pool->free_work)``)."""
        self._schedule_work("free")

    def _schedule_work(self, work: str) -> None:
        """Queue background work ("free" or "compact") for the pool's worker thread."""
        with self._cache_lock:
            if not self.background_work:
                self._pending.append(work)
                return
            self._work_requested.add(work)
            if self._worker_running:
                return
            self._worker_running = True
        threading.Thread(target=self._worker, name=f"zs-work-{self.name}", daemon=True).start()

    @property
    def worker_running(self) -> bool:
        """Whether the pool's background worker (deferred free, auto compaction) is running now."""
        with self._cache_lock:
            return self._worker_running

    @property
    def pending_work(self) -> list[str]:
        """Work asked for and not yet run, with ``background_work=False``: one entry per request."""
        with self._cache_lock:
            return list(self._pending)

    def run_pending_work(self) -> list[str]:
        """Run the work ``pending_work`` lists, in the caller; return what was run."""
        with self._cache_lock:
            work, self._pending = self._pending, []
        for name in dict.fromkeys(work):
            self._run_work(name)
        return work

    def _run_work(self, work: str) -> None:
        if work == "free":
            self.async_free_zspage()
        elif self.shrinker_count() >= (self.auto_compact_pages or 0):
            zs_compact(self)

    def _worker(self) -> None:
        while True:
            with self._cache_lock:
                if not self._work_requested or self._closed:
                    self._worker_running = False
                    return
                work = self._work_requested.pop()
            self._run_work(work)

    def async_free_zspage(self) -> int:
        """Free every empty zspage left on a group-0 list; return how many were freed.

        The zspages are taken off their lists under their class lock and kept
        in ``_deferred_batch`` (which ``check()`` reads under the same locks);
        the page locks are then taken the sleeping way, holding no pool lock,
        and each zspage is freed under its class lock.  ``_deferred_worker_lock``
        only keeps two runs from taking the same zspages.  They are freed in
        the kernel's order: it splices each class's list, from class 0 up, at
        the front of its batch, so the highest class comes first (as
        ``self.classes`` runs), and each list from its head (a dict's last
        key here).
        """
        with self._deferred_worker_lock:
            batch = self._deferred_batch
            taken = []
            for cls in self.classes:
                with cls.lock:
                    for zspage in list(reversed(cls.fullness_list[ZS_INUSE_RATIO_0])):
                        self.remove_zspage(cls, zspage)
                        batch.add(zspage)
                        taken.append(zspage)
            for zspage in taken:
                self.lock_zspage(zspage)
                cls = self.zspage_class(zspage)
                with cls.lock:
                    batch.discard(zspage)
                    self._free_zspage(cls, zspage)
            self.events["deferred_frees"] += len(taken)
            return len(taken)

    def flush_deferred(self) -> int:
        """Run the deferred free now, in the caller; return the zspages it freed.

        It answers every pending request for it (``pending_work``).
        """
        self._check_open()
        with self._cache_lock:
            self._pending = [w for w in self._pending if w != "free"]
        freed = self.async_free_zspage()
        self.trim()
        return freed

    # ------------------------------------------------------------------
    # the public API

    @property
    def max_pages(self) -> int | None:
        """The pool's page cap, or None; writable (zram's mem_limit changes it)."""
        return self._max_pages

    @max_pages.setter
    def max_pages(self, value: int | None) -> None:
        if value is not None:
            if isinstance(value, bool):
                raise TypeError("max_pages must be an int or None, not bool")
            value = operator.index(value)
            if value < 0:
                raise ValueError(f"max_pages must be >= 0, not {value}")
        self._max_pages = value

    def malloc(self, size: int) -> int:
        """``zs_malloc``: allocate ``size`` bytes (1..4096); return a handle, never 0."""
        if isinstance(size, bool):
            raise TypeError("size must be an int, not bool")
        size = operator.index(size)
        if not 0 < size <= ZS_MAX_ALLOC_SIZE:
            raise InvalidSizeError(f"size must be within 1..{ZS_MAX_ALLOC_SIZE}, not {size}")
        if self._closed:
            raise PoolClosedError(f"pool {self.name!r} is closed")
        cls = self.size_class[get_size_class_index(size + ZS_HANDLE_SIZE)]
        with cls.lock:
            # a close that began since the check above has emptied this
            # class or will: under the class lock, no object is made after it
            self._check_open()
            # cache_alloc_handle, under the class lock only so that trim()
            # (which holds every class lock) never sees a slot half taken
            slot = self.cache_alloc_handle()
            handle = self._next_handle(slot)
            self._h_size[slot] = size
            zspage = self.find_get_zspage(cls)
            if zspage is not None:
                self.obj_malloc(zspage, handle)
                self.fix_fullness_group(cls, zspage)
                cls.objs_inuse += 1
                self._h_val[slot] = handle
                return handle

        try:
            zspage = self.alloc_zspage(cls)
        except PoolFullError:
            self.cache_free_handle(slot)
            self._check_open()
            raise
        with cls.lock:
            if self._closed:  # it closed while the frames were taken: they go back
                cls.objs_allocated += cls.objs_per_zspage
                self.lock_zspage_nowait(zspage)
                self._free_zspage(cls, zspage)
                self.cache_free_handle(slot)
                self._check_open()
            self.obj_malloc(zspage, handle)
            self.insert_zspage(cls, zspage, self.get_fullness_group(cls, zspage))
            cls.objs_allocated += cls.objs_per_zspage
            cls.objs_inuse += 1
            self._h_val[slot] = handle
            # only now, fully set up, may the VM see its pages
            self.SetZsPageMovable(zspage)
        return handle

    def free(self, handle: int) -> None:
        """``zs_free``: free the object; the handle becomes invalid."""
        handle = operator.index(handle)  # numpy integers too
        with self._lock:
            slot = self._live_slot(handle)
            if self._lingering:
                self.reap_mappings()
            if self.tag_pinned(handle):
                raise ObjectMappedError(
                    f"handle {handle} is mapped: free it once the mapping and every view of it are released"
                )
            # mark it freed at once, so a racing second free is refused
            self._h_val[slot] = handle | HANDLE_FREED
            obj = self.handle_to_obj(handle)
            zspage = self.get_zspage(obj_to_location(obj)[0])
            cls = self.zspage_class(zspage)
            # the class lock is taken before the pool lock is dropped, so that
            # no migration or compaction moves the object in between
            cls.lock.acquire()
        try:
            cls.objs_inuse -= 1
            self.obj_free(cls, obj)
            if zspage.isolated:  # 2016 protocol: off the lists while isolated
                self._free_in_isolated_zspage(cls, zspage)
            elif self.fix_fullness_group(cls, zspage) == ZS_INUSE_RATIO_0:
                self.free_zspage(cls, zspage)
            self.cache_free_handle(slot)  # under the class lock: see trim()
        finally:
            cls.lock.release()
        if self.auto_compact_pages is not None:
            self._auto_countdown -= 1
            if self._auto_countdown <= 0:
                self._auto_countdown = _AUTO_COMPACT_INTERVAL
                if self.shrinker_count() >= self.auto_compact_pages:
                    self._schedule_work("compact")

    def write(self, handle: int, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        """Copy ``data`` into the object at ``offset``; it must fit in the size allocated."""
        data = memoryview(data).cast("B")
        n = len(data)
        with self._lock:
            slot = self._live_slot(handle)
            size = self._h_size[slot]
            end = offset + n
            if offset < 0 or end > size:
                raise ValueError(self._bad_range("write", handle, offset, n, size))
            self.zs_obj_write(handle, data, offset)

    def zs_obj_write(self, handle: int, data: memoryview, offset: int) -> None:
        """Copy ``data`` into the object from byte ``offset`` of its data (caller holds the pool lock)."""
        self._write_span(self.obj_addr(self.handle_to_obj(handle), offset), data)

    def read(self, handle: int, length: int | None = None, offset: int = 0) -> bytes:
        """Return ``length`` bytes of the object from ``offset`` (default: to its end).

        The kernel's ``zs_obj_read_begin``, a copy and ``zs_obj_read_end``, in
        one section under the pool lock.
        """
        with self._lock:
            slot = self._live_slot(handle)
            size = self._h_size[slot]
            if offset or length is not None:
                if length is None:
                    length = size - offset
                end = offset + length
                if offset < 0 or length < 0 or end > size:
                    raise ValueError(self._bad_range("read", handle, offset, length, size))
            else:
                length = size
            return self._read_span(self.obj_addr(self.handle_to_obj(handle), offset), length)

    def read_into(self, handle: int, buf, offset: int = 0) -> int:
        """Fill the writable buffer ``buf`` from the object at ``offset``; return its length."""
        out = memoryview(buf).cast("B")
        n = len(out)
        with self._lock:
            slot = self._live_slot(handle)
            size = self._h_size[slot]
            if offset < 0 or offset + n > size:
                raise ValueError(self._bad_range("read", handle, offset, n, size))
            start = self.obj_addr(self.handle_to_obj(handle), offset)
            src = self.memory.buf
            split = min(n, PAGE_SIZE - offset_in_page(start))
            out[:split] = src[start : start + split]
            if split < n:
                rest = self.memory.next[start >> PAGE_SHIFT] << PAGE_SHIFT
                out[split:] = src[rest : rest + n - split]
            return n

    @contextmanager
    def map(self, handle: int, length: int | None = None, offset: int = 0) -> Iterator[memoryview]:
        """Map the object for reading: a read-only memoryview of its bytes.

        While mapped, the object is pinned and its zspage read-locked:
        ``free`` refuses it, compaction and migration leave it alone.  The
        mapping ends with the ``with`` and the last view derived from it
        (``view[:]``, ``memoryview(view)``, ``numpy.frombuffer(view)``).

        The model's view is of a copy of the bytes: CPython 3.11 lets Python
        code lend a buffer but not learn when its last view is released (PEP
        688 arrives in 3.12), so the copy is what a view that outlives the
        ``with`` keeps, and the pin is dropped once the copy has no view left,
        which :meth:`reap_mappings` sees at its next look.  The kernel maps
        in place when the object lies in one page, and so does the engine.
        """
        view, mapping = self.zs_obj_read_begin(handle, length, offset)
        try:
            yield view
        finally:
            try:
                view.release()
            except BufferError:  # the caller holds a buffer of it (numpy): it keeps the mapping
                pass
            del view
            self.zs_obj_read_end(mapping)

    def zs_obj_read_begin(self, handle: int, length: int | None, offset: int) -> tuple[memoryview, _Mapping]:
        """Read-lock the object's zspage and pin it; return a view of (a copy of) its bytes."""
        with self._lock:
            slot = self._live_slot(handle)
            size = self._h_size[slot]
            if length is None:
                length = size - offset
            if offset < 0 or length < 0 or offset + length > size:
                raise ValueError(self._bad_range("map", handle, offset, length, size))
            obj = self.handle_to_obj(handle)
            zspage = self.get_zspage(obj_to_location(obj)[0])
            self.zspage_read_lock(zspage)
            self.pin_tag(handle)  # 2016
            copy = bytearray(self._read_span(self.obj_addr(obj, offset), length))
        return memoryview(copy).toreadonly(), _Mapping(handle, zspage, copy)

    def zs_obj_read_end(self, mapping: _Mapping) -> None:
        """End the mapping now, or once the last view of it is released."""
        with self._lock:
            if mapping.viewed():
                self._lingering.append(mapping)
            else:
                self._unmap(mapping)

    def _unmap(self, mapping: _Mapping) -> None:
        """Unpin the object and drop its zspage's read lock (caller holds the pool lock)."""
        self.zspage_read_unlock(mapping.zspage)
        self.unpin_tag(mapping.handle)

    def reap_mappings(self) -> None:
        """End the mappings whose last view is gone since their ``with`` ended (pool lock held)."""
        still = []
        for mapping in self._lingering:
            if mapping.viewed():
                still.append(mapping)
            else:
                self._unmap(mapping)
        self._lingering = still

    def obj_addr(self, obj: int, offset: int) -> int:
        """Arena address of byte ``offset`` of the caller's data in the object at location ``obj``.

        The bytes from there run to the end of that page at most; what lies
        beyond continues at the start of ``memory.next[addr >> PAGE_SHIFT]``.
        Caller holds the pool lock (or the class lock of the object's class).
        """
        pfn, obj_idx = obj_to_location(obj)
        cls = self.zspage_class(self.get_zspage(pfn))
        off = offset_in_page(obj_idx * cls.size) + cls.hdr + offset  # from the start of page pfn
        if off < PAGE_SIZE:
            return (pfn << PAGE_SHIFT) + off
        return (self.memory.next[pfn] << PAGE_SHIFT) + off - PAGE_SIZE

    def _read_span(self, start: int, n: int) -> bytes:
        """``n`` bytes of an object from arena address ``start``, across a page boundary."""
        split = PAGE_SIZE - offset_in_page(start)
        arena = self.memory.arena
        if n <= split:
            return arena[start : start + n]
        rest = self.memory.next[start >> PAGE_SHIFT] << PAGE_SHIFT
        return arena[start : start + split] + arena[rest : rest + n - split]

    def _write_span(self, start: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` into an object from arena address ``start``, across a page boundary."""
        n = len(data)
        split = PAGE_SIZE - offset_in_page(start)
        arena = self.memory.arena
        if n <= split:
            arena[start : start + n] = data
            return
        rest = self.memory.next[start >> PAGE_SHIFT] << PAGE_SHIFT
        view = memoryview(data)
        arena[start : start + split] = view[:split]
        arena[rest : rest + n - split] = view[split:]

    def zs_object_copy(self, cls: SizeClass, dst: int, src: int) -> None:
        """Copy an object's data between two locations of its class."""
        self._write_span(self.obj_addr(dst, 0), self._read_span(self.obj_addr(src, 0), cls.size - cls.hdr))

    @staticmethod
    def _bad_range(op: str, handle: int, offset: int, length: int, size: int) -> str:
        return (
            f"{op} of {length} bytes at offset {offset} is outside the {size} bytes "
            f"allocated for handle {handle:#x}"
        )

    def handle_size(self, handle: int) -> int:
        """The size ``malloc`` was asked for."""
        with self._lock:
            return self._h_size[self._live_slot(handle)]

    def locate(self, handle: int) -> tuple[int, int]:
        """(pfn of the page the object starts in, its index in the zspage)."""
        with self._lock:
            return obj_to_location(self._h_obj[self._live_slot(handle)])

    def zspage_pfns(self, handle: int) -> list[int]:
        """The pfns of the object's zspage, head page first."""
        pfn, _ = self.locate(handle)
        with self._lock:
            return self.zspage_pages(self.get_zspage(pfn))

    def __len__(self) -> int:
        """The number of live objects."""
        return sum(cls.objs_inuse for cls in self.classes)

    # ------------------------------------------------------------------
    # statistics

    def class_stats(self) -> list[ClassStats]:
        """One row per canonical class: the columns of debugfs ``classes``."""
        rows = []
        for cls in reversed(self.classes):
            with cls.lock:
                rows.append(
                    ClassStats(
                        index=cls.index,
                        size=cls.size,
                        inuse_ratio=tuple(cls.nr_zspages[ZS_INUSE_RATIO_10 : self._zs_full + 1]),
                        obj_allocated=cls.objs_allocated,
                        obj_used=cls.objs_inuse,
                        pages_per_zspage=cls.pages_per_zspage,
                        objs_per_zspage=cls.objs_per_zspage,
                        freeable=self.zs_can_compact(cls),
                        empty_zspages=cls.nr_zspages[ZS_INUSE_RATIO_0],
                        fullness=self.fullness,
                    )
                )
        return rows

    def compact(self, policy: str | None = None) -> int:
        """``zs_compact``: move objects so that zspages empty; return the pages freed.

        Compaction follows the pool's grouping (``fullness``); ``policy``, if
        given, must name it (a ValueError otherwise).

        Then the tables give back their free tops (:meth:`trim`) and the C
        heap what it holds free (``malloc_trim``): a caller who compacts wants
        the process's memory to shrink, not only the pool's page count.
        """
        check_policy(self.fullness, policy)
        self._check_open()
        freed = zs_compact(self)
        if not self.trim():
            trim_process_heap()
        return freed

    def shrinker_count(self) -> int:
        """Pages compaction could free now (the shrinker's ``count_objects``)."""
        return shrinker_count(self)

    def shrinker_scan(self) -> int:
        """Compact for the shrinker: pages freed, or -1 (SHRINK_STOP) if none."""
        self._check_open()
        return shrinker_scan(self)

    def zs_can_compact(self, cls: SizeClass) -> int:
        """Pages that compacting this class could free (caller holds the class lock)."""
        wasted = cls.objs_allocated - cls.objs_inuse
        if wasted <= 0:
            return 0
        return (wasted // cls.objs_per_zspage) * cls.pages_per_zspage

    def format_classes(self) -> str:
        """The kernel's debugfs ``zsmalloc/<pool>/classes`` text."""
        return format_classes(self.class_stats())

    def stats(self) -> PoolStats:
        rows = self.class_stats()
        return PoolStats(
            name=self.name,
            pages_allocated=self.pages_allocated,
            pages_compacted=self.events["pages_compacted"],
            objs_allocated=sum(r.obj_allocated for r in rows),
            objs_inuse=sum(r.obj_used for r in rows),
            bytes_requested=self._bytes_requested(),
            freeable_pages=sum(r.freeable for r in rows),
            objs_compacted=self.events["objs_compacted"],
            compactions=self.events["compactions"],
            deferred_frees=self.events["deferred_frees"],
            chain_size=self.chain_size,
            huge_class_size=self._huge_class_size,
        )

    def _bytes_requested(self) -> int:
        with self._lock:
            h_val, h_size = self._h_val, self._h_size
            return sum(h_size[s] for s in range(1, len(h_val)) if not h_val[s] & HANDLE_FREED)

    # ------------------------------------------------------------------
    # consistency check, life cycle

    def trim(self) -> bool:
        """Give back the table space held by free handle slots and zspage ids at the top.

        Run by ``flush_deferred()``, ``compact()`` and ``close()``.  It stops the
        world (the pool lock and every class lock), so that no slot or id is
        half taken while the tables shrink.  Generations survive: a fresh slot
        starts above every generation a trimmed slot ever had, so a stale
        handle stays stale.  Returns whether anything was given back (the C
        heap is then trimmed too).
        """
        with ExitStack() as stack:
            stack.enter_context(self._lock)
            for cls in self.classes:
                stack.enter_context(cls.lock)
            stack.enter_context(self._cache_lock)
            trimmed = self._trim_handles() + self._trim_zspages()
            for cls in self.classes:
                lists = cls.fullness_list
                for fg, lst in enumerate(lists):
                    # a dict never shrinks by deletion: clear an empty one (that
                    # frees its table), copy a big one
                    if not lst:
                        lst.clear()
                    elif sys.getsizeof(lst) > _DICT_COPY_BYTES:
                        lists[fg] = dict(lst)
        if trimmed:
            trim_process_heap()
        return bool(trimmed)

    def _trim_handles(self) -> int:
        h_val, free = self._h_val, self._h_free
        old = len(h_val)
        keep = _top_free_run(free, old)
        if old - keep < _TRIM_MIN:
            return 0
        top = max((h_val[slot] >> HANDLE_GEN_SHIFT) & HANDLE_GEN_MASK for slot in range(keep, old))
        self._gen_base = max(self._gen_base, top)
        del h_val[keep:]
        del self._h_obj[keep:]
        del self._h_size[keep:]
        _drop_from(free, keep)
        return old - keep

    def _trim_zspages(self) -> int:
        free = self._free_zspage_ids
        old = len(self._zspages)
        keep = _top_free_run(free, old)
        if old - keep < _TRIM_MIN:
            return 0
        del self._zspages[keep:]
        _drop_from(free, keep)
        return old - keep

    def check(self) -> None:
        """Walk every structure and raise CorruptionError on any inconsistency."""
        from zsmalloc.pool.check import check_pool

        self._check_open()
        check_pool(self)

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosedError(f"pool {self.name!r} is closed")

    def close(self) -> None:
        """Free every page of the pool.  Handles become invalid."""
        if self._closed:
            return
        self.flush_deferred()
        with self._lock:
            self._closed = True
            for cls in self.classes:
                with cls.lock:
                    for fg in range(NR_FULLNESS_GROUPS):
                        for zspage in list(cls.fullness_list[fg]):
                            self.remove_zspage(cls, zspage)
                            self.lock_zspage_nowait(zspage)
                            self._free_zspage(cls, zspage)
                    cls.objs_inuse = 0
            for slot in range(1, len(self._h_val)):
                self._h_val[slot] |= HANDLE_FREED
        self.memory.unregister_movable_ops(self._ops_id)
        if self._own_memory:
            self.memory.close()

    def lock_zspage_nowait(self, zspage: Zspage) -> None:
        """Take every page lock of a zspage nobody else may touch any more."""
        if not self.trylock_zspage(zspage):
            raise AssertionError(f"zspage {zspage.zid} has a page locked while its pool closes")

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.pages_allocated} pages"
        return f"<Pool {self.name!r}: {state}>"


# re-exported for tests and tools that decode handles and headers
__all__ = [
    "FREE_LIST_END",
    "NR_FULLNESS_GROUPS",
    "OBJ_ALLOCATED_TAG",
    "OBJ_INDEX_BITS",
    "Pool",
    "SizeClass",
    "Zspage",
    "get_fullness_group",
    "location_to_obj",
    "obj_to_location",
]
