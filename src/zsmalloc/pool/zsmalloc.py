"""The allocator: mm/zsmalloc.c, function for function, on real frames.

What lives where
----------------
- Object bytes, in-page object headers and free-list links: in the frames of
  :class:`zsmalloc.mm.Memory`, exactly where the kernel keeps them.
- Per-page state (which zspage, next page of the chain, first object offset,
  the handle of a huge object, movable/locked/isolated): page descriptors in
  ``Memory``.
- Per-zspage state: struct-of-arrays indexed by a zspage id (``zid``), the
  kernel's ``struct zspage``: class, inuse, freeobj, first page, fullness group,
  the zspage lock.  Its ``list`` (the fullness-list link) is its membership in
  one of its class's fullness lists, dicts used as ordered sets.
- Handles: a table of arrays indexed by handle slot.
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

     63 62                  32 31                            1  0
    +--+----------------------+-------------------------------+---+
    |0 |      table slot      |          generation           | 0 |
    +--+----------------------+-------------------------------+---+

The slot is ``handle >> 32``, one shift.  The table maps the slot to the
object's location, ``(pfn << OBJ_INDEX_BITS) | obj_idx`` with pfn the page
the object starts in and obj_idx its index in the zspage (OBJ_INDEX_BITS is
PAGE_SHIFT, so ``location - obj_idx`` is the page's arena address).  Moving
an object (compaction, migration) rewrites only that table entry.  A freed
slot's generation is bumped before reuse, so a stale handle is refused, not
aliased to the new object.

Locking
-------
Lock order: page lock -> pool lock -> class lock -> zspage lock.

- ``pool._lock``: the kernel's ``pool->lock``.  Readers (zs_free, object
  access) take it to translate a handle into a location and to pin the zspage;
  writers (migration, compaction) take it to move objects.
- ``SizeClass.lock``: the class's zspage lists, counters, and every zspage's
  inuse/freeobj/fullness.
- zspage lock (``_zs_lock[zid]``): held for reading while a caller maps an
  object; migration and compaction only try it for writing and back off.
- ``_cache_lock``: the handle and zspage caches (kmem_cache's own lock); a leaf.

Implementation choice: in the kernel ``pool->lock`` is a reader/writer lock
so that zs_free on many CPUs does not serialize.  Under CPython's GIL no two
read sections run at once anyway, and they last a handful of bytecodes, so
here it is a plain mutex: the same exclusion against migration and compaction
at a third of the cost of a Python-level rwlock.  Likewise ``read``/``write``
copy the bytes inside that section instead of taking and dropping the zspage
read lock around the copy; ``map`` keeps the kernel's zspage read lock
because its caller holds the mapping for as long as it likes.

What the hot paths cost
-----------------------
Measured in instructions (callgrind, CPython 3.11, 1e5 live objects of the
kernel-build mix; the same at 1e4): one churn step, ``free(h); h =
malloc(n); write(h, data)`` plus the caller's loop, is ~38,000 instructions:
the loop and data slice ~3,300, free ~10,000, malloc + write ~19,500 (read
alone ~7,500), and building (8.7% of the steps, ~35,000 each) and
destroying (8%, ~26,000 each) zspages ~5,000.  Unit costs in CPython 3.11,
which set the budget: a ``threading.Lock`` acquire + release ~830 (a
``with`` block ~1,900: the build/destroy paths use acquire/release), a
Python call ~400, an int operation (``>>``, ``&``, ``|``, ``+`` on a
location or a handle) ~200-290, an array element ~360 to read and ~300-450
to write, a list or tuple element ~75, an attribute ~50, a dict
insert + delete ~600.  A churn step takes four locks (free: pool and class;
malloc: class; write: pool), ~3,300 instructions, and ~22 int operations,
~5,000: hence the tables of per-index offsets in ``SizeClass``, the handle
slot in the high word, and the zspage fields in lists (but the first page's
pfn, which stays in an array: see ``_zs_first``).  ``malloc`` and ``free``
call ``obj_malloc`` and ``obj_free`` rather than repeat them inline: one
place for the in-page header and free-list logic costs ~2,000 instructions
(~4%) of a step.
"""

from __future__ import annotations

import functools
import operator
import sys
import threading
from array import array
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from zsmalloc.errors import (
    InvalidHandleError,
    InvalidSizeError,
    OutOfFramesError,
    PoolClosedError,
    PoolFullError,
)
from zsmalloc.mm import PAGE_SHIFT, PAGE_SIZE, Memory
from zsmalloc.mm.counters import Counters
from zsmalloc.mm.heap import trim_process_heap
from zsmalloc.pool.compact import shrinker_count, shrinker_scan, zs_compact
from zsmalloc.pool.constants import (
    ALLOC_GROUPS_MASK,
    FG_NONE,
    FREE_LIST_END,
    HANDLE_FREED,
    HANDLE_GEN_MASK,
    HANDLE_GEN_SHIFT,
    HANDLE_LOW_MASK,
    HANDLE_SLOT_MASK,
    HANDLE_SLOT_SHIFT,
    NR_FULLNESS_GROUPS,
    OBJ_ALLOCATED_TAG,
    OBJ_INDEX_BITS,
    OBJ_INDEX_MASK,
    OBJ_TAG_BITS,
    ZS_INUSE_RATIO_0,
    ZS_INUSE_RATIO_10,
    get_fullness_group,
)
from zsmalloc.pool.migrate import movable_ops_for
from zsmalloc.pool.size_class import (
    RULE_MIN_WASTE,
    ZS_DEFAULT_CHAIN_SIZE,
    ZS_HANDLE_SIZE,
    ZS_MAX_ALLOC_SIZE,
    ZS_SIZE_CLASSES,
    ClassSpec,
    build_class_table,
    get_size_class_index,
)
from zsmalloc.pool.stats import ClassStats, PoolStats, format_classes

_WORD_SHIFT = 3  # bytes -> 8-byte words
_PAGE_MASK = PAGE_SIZE - 1
_AUTO_COMPACT_INTERVAL = 1024  # frees between two looks at the shrinker count
_TRIM_MIN = 256  # trim() leaves tables alone unless this many entries can go
_DICT_COPY_BYTES = 4096
# Tables never shrink below this many entries: their buffers then stay in the
# C heap proper, not in Python's small-object arenas, where a small block made
# late in a pool's life would keep a whole arena resident.
_TABLE_MIN = 1024
_WORDS_PER_PAGE_SHIFT = PAGE_SHIFT - _WORD_SHIFT
# handle -> the next generation's handle of its slot, from the slot's freed table entry
_NEXT_GENERATION = HANDLE_FREED - (1 << HANDLE_GEN_SHIFT)
# fullness group -> its bit in SizeClass.nonempty, and that bit cleared
_FG_BIT = tuple(1 << fg for fg in range(NR_FULLNESS_GROUPS))
_FG_CLEAR = tuple(~(1 << fg) for fg in range(NR_FULLNESS_GROUPS))
# SizeClass.nonempty -> the fullest group that can take an object (10 down to 0), or -1
_ALLOC_GROUP = tuple((m & ALLOC_GROUPS_MASK).bit_length() - 1 for m in range(1 << NR_FULLNESS_GROUPS))
# Unsigned 64-bit array items: "L" where it is 64 bits (LP64), whose items
# CPython stores through PyLong_AsUnsignedLong, much cheaper than "Q"'s
# PyLong_AsUnsignedLongLong.
_U64 = "L" if array("L").itemsize == 8 else "Q"


_INTS: dict[int, int] = {}  # one int object per value, shared by every table below


@functools.cache
def _obj_tables(
    size: int, hdr: int, nobjs: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Per object index: where ``obj_idx * size`` falls, looked up instead of computed on every call.

    For the object at location ``obj`` (which is its page's arena address
    plus ``obj_idx``): the chain page it starts in (``(idx * size) >>
    PAGE_SHIFT``), what to add to ``obj`` for the arena address of its
    header and of its data, and the bytes from its data to the end of that
    page.
    """
    offsets = [((idx * size) & _PAGE_MASK, idx) for idx in range(nobjs)]
    intern = _INTS.setdefault
    return (
        tuple(intern(v, v) for v in ((idx * size) >> PAGE_SHIFT for idx in range(nobjs))),
        tuple(intern(v, v) for v in (off - idx for off, idx in offsets)),
        tuple(intern(v, v) for v in (off + hdr - idx for off, idx in offsets)),
        tuple(intern(v, v) for v in (PAGE_SIZE - off - hdr for off, _ in offsets)),
    )


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


class SizeClass:
    """One canonical size class: its geometry, lock, fullness lists and counters."""

    __slots__ = (
        "fg_of_inuse",
        "fullness_list",
        "hdr",
        "huge",
        "index",
        "layout",
        "lock",
        "nonempty",
        "obj_data",
        "obj_hdr",
        "obj_page",
        "obj_room",
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
        #: one list per fullness group: dicts used as ordered sets of zids,
        #: the last inserted being the head of the list
        self.fullness_list: list[dict[int, None]] = [{} for _ in range(NR_FULLNESS_GROUPS)]
        #: bit g set while fullness_list[g] is not empty
        self.nonempty = 0
        self.objs_allocated = 0
        self.objs_inuse = 0
        n = self.objs_per_zspage
        #: the fullness group of each inuse count (a tuple: indexing one is cheaper than bytes)
        self.fg_of_inuse = tuple(get_fullness_group(i, n) for i in range(n + 1))
        self.layout = self._page_layout()
        #: per obj_idx: the chain page the object starts in; for its location
        #: ``obj``, ``obj + obj_hdr[idx]`` and ``obj + obj_data[idx]`` are the
        #: arena addresses of its header and its data; ``obj_room[idx]``
        #: bytes of its data lie in that page
        self.obj_page, self.obj_hdr, self.obj_data, self.obj_room = _obj_tables(self.size, self.hdr, n)

    def _page_layout(self) -> tuple[tuple[int, int, array], ...]:
        """Per chain page: (first_obj_offset, objects starting in it, their free links).

        The free list of a new zspage is the same for every zspage of the
        class, so its links are computed once here and stamped into each new
        zspage's pages.
        """
        size, nobjs = self.size, self.objs_per_zspage
        layout = []
        idx = 0
        for k in range(self.pages_per_zspage):
            first = (-(k << PAGE_SHIFT)) % size
            count = max(0, min(-(-(PAGE_SIZE - first) // size), nobjs - idx))
            links = array(_U64, range((idx + 1) << OBJ_TAG_BITS, (idx + count + 1) << OBJ_TAG_BITS, 2))
            idx += count
            if count and idx == nobjs:
                links[-1] = FREE_LIST_END
            layout.append((first, count, links))
        return tuple(layout)

    @property
    def nr_zspages(self) -> list[int]:
        """Zspages per fullness group (the 10%..100% columns of the stats are groups 1..11)."""
        return [len(lst) for lst in self.fullness_list]

    def __repr__(self) -> str:
        return (
            f"<SizeClass {self.index}: size {self.size}, "
            f"{self.pages_per_zspage} pages, {self.objs_per_zspage} objs>"
        )


class Pool:
    """A zsmalloc pool: allocate variable-size objects (1..4096 bytes) behind stable handles.

    ``memory`` is the :class:`~zsmalloc.mm.Memory` to take frames from (a new
    private one by default); ``max_pages`` caps the pool's pages.
    ``chain_size`` (4..16) and ``class_rule`` ("min-waste", or the pre-6.3
    "used-percentage") shape the size classes.  ``migration`` picks the
    movable-page protocol ("mainline", or "2016", see pool/migrate.py).
    ``auto_compact_pages`` runs compaction in the background once that many
    pages are freeable (the shrinker's count).  ``background_work=False``
    starts no worker thread: the deferred free and the background compaction
    the pool asks for are recorded in ``pending_work`` and run when the
    caller says (``run_pending_work``, ``flush_deferred``), which is what a
    deterministic checker needs.
    """

    def __init__(
        self,
        name: str = "zsmalloc",
        chain_size: int = ZS_DEFAULT_CHAIN_SIZE,
        memory: Memory | None = None,
        max_pages: int | None = None,
        *,
        class_rule: str = RULE_MIN_WASTE,
        migration: str = "mainline",
        auto_compact_pages: int | None = None,
        background_work: bool = True,
    ) -> None:
        canonical, specs, huge_size = build_class_table(chain_size, class_rule)
        if max_pages is not None and max_pages < 0:
            raise ValueError(f"max_pages must be >= 0, not {max_pages}")
        self.name = name
        self.chain_size = chain_size
        self.class_rule = class_rule
        self.max_pages = max_pages
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
        # user size -> class, with the handle header added (zs_malloc's lookup)
        self._class_for_size: list[SizeClass | None] = [None] + [
            self.size_class[get_size_class_index(s + ZS_HANDLE_SIZE)] for s in range(1, ZS_MAX_ALLOC_SIZE + 1)
        ]

        self._lock = threading.Lock()  # pool->lock
        self._cache_lock = threading.Lock()
        self._deferred_worker_lock = threading.Lock()
        self._deferred_batch: set[int] = set()
        self._work_requested: set[str] = set()
        self._worker_running = False
        self.background_work = background_work
        #: work asked for while background_work is False, in order ("free", "compact")
        self._pending: list[str] = []

        # struct zspage, as lists indexed by zid: one zspage holds several
        # objects, so lists cost little memory, and an element of a list is
        # read and written several times faster than one of an array.  Except
        # the first page's pfn: a list would keep one int object per zspage
        # alive, scattered over the interpreter's small-object arenas, which
        # then cannot be given back after the zspages go (RSS after freeing
        # everything: 1.078 x the start with a list, 1.048 with the array)
        self._zs_class: list[int] = []
        self._zs_inuse: list[int] = []
        self._zs_freeobj: list[int] = []
        self._zs_first = array("l")
        self._zs_fg: list[int] = []
        self._zs_lock: list[int] = []  # zspage lock: readers > 0, -1 write-locked
        self._zs_isolated: list[int] = []  # pages isolated by the VM (2016 protocol)
        self._zs_free = array("l")  # free zspage ids, a stack

        # handle table, indexed by slot (slot 0 unused: a handle is never 0)
        self._h_val = array(_U64, [HANDLE_FREED])
        self._h_obj = array(_U64, [0])
        self._h_size = array("H", [0])
        self._h_free = array("L")  # free slots, a stack
        self._gen_base = 0  # generation of fresh slots: above any handle of a trimmed slot
        #: handle slots pinned by a caller's map() (count per slot); the 2016
        #: protocol's migrate refuses to move them
        self._pinned: dict[int, int] = {}

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
    # handle and zspage caches

    # The handle cache is a list of free slots.  ``list.pop`` and
    # ``list.append`` are atomic in CPython (one C call under the GIL; in
    # free-threaded builds the list locks itself), so taking and returning a
    # slot needs no lock; only growing the table does.

    def _cache_alloc_handle(self) -> int:
        """A free handle slot (the kernel's ``cache_alloc_handle``)."""
        while True:
            try:
                return self._h_free.pop()
            except IndexError:
                self._grow_handle_table()

    def _grow_handle_table(self) -> None:
        with self._cache_lock:
            if self._h_free:  # another thread grew it meanwhile
                return
            old = len(self._h_val)
            new = min(HANDLE_SLOT_MASK + 1, max(1024, old + old // 4))  # +25%: the slack is resident
            if new <= old:
                raise PoolFullError("handle table is full")
            extra = new - old
            fresh = (self._gen_base << HANDLE_GEN_SHIFT) | HANDLE_FREED
            self._h_val.extend((slot << HANDLE_SLOT_SHIFT) | fresh for slot in range(old, new))
            self._h_obj.frombytes(bytes(8 * extra))
            self._h_size.frombytes(bytes(2 * extra))
            self._h_free.extend(range(new - 1, old - 1, -1))  # lowest slot pops first

    # Building and destroying a zspage takes the cache lock, the class lock
    # and Memory's lock a few times; there ``lock.acquire()`` and
    # ``try/finally`` stand for ``with lock``, which costs CPython 3.11 about
    # twice as much (it looks up __enter__ and __exit__ and calls __exit__
    # with three arguments).

    def _cache_alloc_zspage(self) -> int:
        cache_lock = self._cache_lock
        cache_lock.acquire()
        try:
            if self._zs_free:
                return self._zs_free.pop()
            zid = len(self._zs_class)
            self._zs_class.append(-1)
            self._zs_inuse.append(0)
            self._zs_freeobj.append(-1)
            self._zs_first.append(-1)
            self._zs_fg.append(FG_NONE)
            self._zs_lock.append(0)
            self._zs_isolated.append(0)
            return zid
        finally:
            cache_lock.release()

    # ------------------------------------------------------------------
    # fullness lists (caller holds the class lock)

    def insert_zspage(self, cls: SizeClass, zid: int, fg: int) -> None:
        """Put a zspage at the head of its fullness group's list."""
        cls.fullness_list[fg][zid] = None
        cls.nonempty |= 1 << fg
        self._zs_fg[zid] = fg

    def remove_zspage(self, cls: SizeClass, zid: int) -> None:
        fg = self._zs_fg[zid]
        lst = cls.fullness_list[fg]
        del lst[zid]
        if not lst:
            cls.nonempty &= ~(1 << fg)
        self._zs_fg[zid] = FG_NONE

    def obj_malloc(self, cls: SizeClass, zid: int, handle: int) -> int:
        """Pop the zspage's first free slot, tag it with ``handle``; return the location."""
        zs_freeobj = self._zs_freeobj
        idx = zs_freeobj[zid]
        mem = self.memory
        pfn = self._zs_first[zid]
        k = cls.obj_page[idx]
        while k:  # walk the chain to the page the object starts in
            pfn = mem.next[pfn]
            k -= 1
        obj = (pfn << OBJ_INDEX_BITS) | idx
        if cls.huge:
            zs_freeobj[zid] = -1
            mem.index[pfn] = handle | OBJ_ALLOCATED_TAG
        else:
            words = mem.words
            word = (obj + cls.obj_hdr[idx]) >> _WORD_SHIFT
            link = words[word]
            zs_freeobj[zid] = -1 if link == FREE_LIST_END else link >> OBJ_TAG_BITS
            words[word] = handle | OBJ_ALLOCATED_TAG
        self._zs_inuse[zid] += 1
        return obj

    def obj_free(self, cls: SizeClass, zid: int, obj: int) -> None:
        """Push the object's slot at the head of its zspage's free list."""
        idx = obj & OBJ_INDEX_MASK
        mem = self.memory
        if cls.huge:
            mem.index[obj >> OBJ_INDEX_BITS] = 0
        else:
            head = self._zs_freeobj[zid]
            mem.words[(obj + cls.obj_hdr[idx]) >> _WORD_SHIFT] = (
                FREE_LIST_END if head < 0 else head << OBJ_TAG_BITS
            )
        self._zs_freeobj[zid] = idx
        self._zs_inuse[zid] -= 1

    # ------------------------------------------------------------------
    # building and destroying zspages

    def alloc_zspage(self, cls: SizeClass) -> int:
        """Take ``pages_per_zspage`` frames and build an empty zspage on them."""
        n = cls.pages_per_zspage
        cache_lock = self._cache_lock
        cache_lock.acquire()
        try:
            if self.max_pages is not None and self.pages_allocated + n > self.max_pages:
                raise PoolFullError(
                    f"pool {self.name!r} would pass max_pages={self.max_pages} "
                    f"({self.pages_allocated} in use, {n} more needed)"
                )
            self.pages_allocated += n  # reserved; given back below on failure
        finally:
            cache_lock.release()
        try:
            pages = self.memory.alloc_pages(n)
        except OutOfFramesError as exc:
            with self._cache_lock:
                self.pages_allocated -= n
            raise PoolFullError(f"no page for a new zspage of class {cls.index}: {exc}") from exc
        zid = self._cache_alloc_zspage()
        self._zs_class[zid] = cls.index
        self._zs_inuse[zid] = 0
        self._zs_freeobj[zid] = 0
        self._zs_fg[zid] = FG_NONE
        self._zs_lock[zid] = 0
        self._zs_isolated[zid] = 0
        self.create_page_chain(cls, zid, pages)
        self.init_zspage(cls, pages)
        return zid

    def create_page_chain(self, cls: SizeClass, zid: int, pages: list[int]) -> None:
        """Link the frames into a chain and record each one's first object offset."""
        mem = self.memory
        private, nxt, first_obj_offset = mem.private, mem.next, mem.first_obj_offset
        self._zs_first[zid] = pages[0]
        prev = -1
        for pfn, (first, _, _) in zip(pages, cls.layout, strict=True):
            private[pfn] = zid
            first_obj_offset[pfn] = first
            if prev >= 0:
                nxt[prev] = pfn
            prev = pfn
        nxt[prev] = -1

    def init_zspage(self, cls: SizeClass, pages: list[int]) -> None:
        """Write the free list into the empty slots: 0 -> 1 -> ... -> N-1 -> end."""
        words = self.memory.words
        step = cls.size >> _WORD_SHIFT
        for pfn, (first, count, links) in zip(pages, cls.layout, strict=True):
            if count:
                start = (pfn << _WORDS_PER_PAGE_SHIFT) + (first >> _WORD_SHIFT)
                words[start : start + count * step : step] = links

    def zspage_pages(self, zid: int) -> list[int]:
        """The pfns of a zspage's chain, first page first."""
        nxt = self.memory.next
        pages = []
        pfn = self._zs_first[zid]
        while pfn >= 0:
            pages.append(pfn)
            pfn = nxt[pfn]
        return pages

    def SetZsPageMovable(self, zid: int) -> None:  # the kernel's name
        """Mark a fully set-up zspage's pages movable: from now on the VM may take them."""
        self.memory.set_pages_movable(self.zspage_pages(zid), self._ops_id)

    def trylock_zspage(self, zid: int) -> bool:
        """Trylock every page of the zspage, all or none."""
        return self.memory.trylock_pages(self.zspage_pages(zid))

    def lock_zspage(self, zid: int) -> None:
        """Take every page lock of the zspage, sleeping, safe against migration.

        A page not yet locked may be migrated out of the chain while we wait,
        so each page is looked up and trylocked under the pool lock; to sleep,
        we pin the page, drop the pool lock, wait for the page lock to be
        released, and look again (the 2022 fix).
        """
        mem = self.memory
        pool_lock = self._lock
        pool_lock.acquire()
        pfn = self._zs_first[zid]
        while not mem.trylock_page(pfn):
            mem.get_page(pfn)
            pool_lock.release()
            mem.wait_on_page_locked(pfn)
            mem.put_page(pfn)
            pool_lock.acquire()
            pfn = self._zs_first[zid]
        while (nxt := mem.next[pfn]) >= 0:
            if mem.trylock_page(nxt):
                pfn = nxt
                continue
            mem.get_page(nxt)
            pool_lock.release()
            mem.wait_on_page_locked(nxt)
            mem.put_page(nxt)
            pool_lock.acquire()
        pool_lock.release()

    def _free_zspage(self, cls: SizeClass, zid: int) -> None:
        """The kernel's ``__free_zspage``: give an empty zspage's frames back.

        Every page lock is held by the caller; they are dropped here.
        """
        pages = self.zspage_pages(zid)
        keep: tuple[int, ...] = ()
        if self.movable_ops.keeps_isolated_descriptor:
            keep = tuple(pfn for pfn in pages if self.memory.page_isolated(pfn))
        self.memory.unlock_and_free_pages(pages, keep)
        self._zs_isolated[zid] = 0
        self._zs_class[zid] = -1
        self._zs_first[zid] = -1
        cls.objs_allocated -= cls.objs_per_zspage
        cache_lock = self._cache_lock
        cache_lock.acquire()
        try:  # cache_free_zspage, and the page count
            self._zs_free.append(zid)
            self.pages_allocated -= cls.pages_per_zspage
        finally:
            cache_lock.release()

    def _free_in_isolated_zspage(self, cls: SizeClass, zid: int) -> None:
        """An object of an isolated zspage was freed (2016 protocol).

        The zspage stays off the lists; if it is now empty, the last putback
        or migrate of its pages frees it.  The broken v3 protocol destroys it
        here and now, isolated pages and all.
        """
        if self._zs_inuse[zid] == 0 and self.movable_ops.free_destroys_isolated and self.trylock_zspage(zid):
            self._free_zspage(cls, zid)

    def free_zspage(self, cls: SizeClass, zid: int) -> None:
        """Free an empty zspage now if all its page locks can be had, else defer it."""
        if not self.trylock_zspage(zid):
            self.kick_deferred_free()
            return
        self.remove_zspage(cls, zid)
        self._free_zspage(cls, zid)

    # ------------------------------------------------------------------
    # what migration and compaction need (callers hold the pool and class locks)

    def zspage_write_trylock(self, zid: int) -> bool:
        """Lock the zspage against readers, or fail at once if one maps an object."""
        if self._zs_lock[zid]:
            return False
        self._zs_lock[zid] = -1
        return True

    def zspage_write_unlock(self, zid: int) -> None:
        self._zs_lock[zid] = 0

    def objs_in_page(self, cls: SizeClass, zid: int, pfn: int) -> list[tuple[int, int]]:
        """(handle slot, object index) of every allocated object that starts in ``pfn``."""
        mem = self.memory
        if cls.huge:
            tag = mem.index[pfn]
            return [(tag >> HANDLE_SLOT_SHIFT, 0)] if tag & OBJ_ALLOCATED_TAG else []
        k = self.zspage_pages(zid).index(pfn)
        size = cls.size
        first = -(-(k << PAGE_SHIFT) // size)
        last = min(cls.objs_per_zspage, -(-((k + 1) << PAGE_SHIFT) // size))
        words = mem.words
        base = (pfn << PAGE_SHIFT) - (k << PAGE_SHIFT)
        found = []
        for idx in range(first, last):
            header = words[(base + idx * size) >> _WORD_SHIFT]
            if header & OBJ_ALLOCATED_TAG:
                found.append((header >> HANDLE_SLOT_SHIFT, idx))
        return found

    def record_obj(self, slot: int, pfn: int, idx: int) -> None:
        """Point a handle at its object's new location."""
        self._h_obj[slot] = (pfn << OBJ_INDEX_BITS) | idx

    def replace_sub_page(self, cls: SizeClass, zid: int, new: int, old: int) -> None:
        """Put frame ``new`` in the chain where ``old`` was, and make it movable."""
        mem = self.memory
        pages = [new if pfn == old else pfn for pfn in self.zspage_pages(zid)]
        self.create_page_chain(cls, zid, pages)
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
        only keeps two runs from taking the same zspages.
        """
        with self._deferred_worker_lock:
            batch = self._deferred_batch
            taken = []
            for cls in self.classes:
                with cls.lock:
                    for zid in list(cls.fullness_list[ZS_INUSE_RATIO_0]):
                        self.remove_zspage(cls, zid)
                        batch.add(zid)
                        taken.append(zid)
            for zid in taken:
                self.lock_zspage(zid)
                cls = self.size_class[self._zs_class[zid]]
                with cls.lock:
                    batch.discard(zid)
                    self._free_zspage(cls, zid)
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

    def malloc(self, size: int) -> int:
        """``zs_malloc``: allocate ``size`` bytes (1..4096); return a handle, never 0."""
        if size.__class__ is not int:
            size = operator.index(size)
        if not 0 < size <= ZS_MAX_ALLOC_SIZE:
            raise InvalidSizeError(f"size must be within 1..{ZS_MAX_ALLOC_SIZE}, not {size}")
        cls = self._class_for_size[size]
        if cls is None:
            raise PoolClosedError(f"pool {self.name!r} is closed")
        lock = cls.lock
        lock.acquire()
        try:
            # cache_alloc_handle, under the class lock only so that trim()
            # (which holds every class lock) never sees a slot half taken
            try:
                slot = self._h_free.pop()
            except IndexError:
                slot = self._cache_alloc_handle()
            h_val = self._h_val  # the slot's freed entry, less HANDLE_FREED, one generation on
            handle = h_val[slot] - _NEXT_GENERATION
            if not handle & HANDLE_LOW_MASK:  # the generation wrapped (carried into the slot)
                handle -= 1 << HANDLE_SLOT_SHIFT
            self._h_size[slot] = size
            # find_get_zspage: take the head of the fullest group with room off
            # its list.  The kernel peeks at it and lets fix_fullness_group move
            # it after obj_malloc; popping it and re-inserting it at the head of
            # the group its new inuse calls for leaves the lists in the same
            # state, and popitem() is O(1) amortized where peeking at a dict's
            # last entry after many removals is not.
            nonempty = cls.nonempty
            fg = _ALLOC_GROUP[nonempty]
            if fg >= 0:
                lists = cls.fullness_list
                lst = lists[fg]
                zid = lst.popitem()[0]
                self._h_obj[slot] = self.obj_malloc(cls, zid, handle)
                inuse = self._zs_inuse[zid]
                # insert_zspage at the head of its new group
                newfg = cls.fg_of_inuse[inuse]
                lists[newfg][zid] = None
                if newfg != fg:
                    self._zs_fg[zid] = newfg
                    nonempty |= _FG_BIT[newfg]
                    if not lst:
                        nonempty &= _FG_CLEAR[fg]
                    cls.nonempty = nonempty
                cls.objs_inuse += 1
                h_val[slot] = handle
                return handle
        finally:
            lock.release()
        return self._malloc_new_zspage(cls, handle, slot)

    def _malloc_new_zspage(self, cls: SizeClass, handle: int, slot: int) -> int:
        try:
            zid = self.alloc_zspage(cls)
        except PoolFullError:
            self._h_free.append(slot)
            raise
        lock = cls.lock
        lock.acquire()
        try:
            self._h_obj[slot] = self.obj_malloc(cls, zid, handle)
            self.insert_zspage(cls, zid, cls.fg_of_inuse[1])
            cls.objs_allocated += cls.objs_per_zspage
            cls.objs_inuse += 1
            self._h_val[slot] = handle
            # only now, fully set up, may the VM see its pages
            self.SetZsPageMovable(zid)
        finally:
            lock.release()
        return handle

    def free(self, handle: int) -> None:
        """``zs_free``: free the object; the handle becomes invalid."""
        slot = handle >> HANDLE_SLOT_SHIFT
        pool_lock = self._lock
        pool_lock.acquire()
        try:
            if self._h_val[slot] != handle:
                raise InvalidHandleError(self._bad_handle(handle))
            # mark it freed at once, so a racing second free is refused
            self._h_val[slot] = handle | HANDLE_FREED
            obj = self._h_obj[slot]
            zid = self.memory.private[obj >> OBJ_INDEX_BITS]
            cls = self.size_class[self._zs_class[zid]]
            cls.lock.acquire()
        except IndexError:
            raise InvalidHandleError(self._bad_handle(handle)) from None
        finally:
            pool_lock.release()
        try:
            cls.objs_inuse -= 1
            self.obj_free(cls, zid, obj)
            inuse = self._zs_inuse[zid]
            if self._zs_isolated[zid]:  # 2016 protocol: off the lists while isolated
                self._free_in_isolated_zspage(cls, zid)
            else:
                # fix_fullness_group: move the zspage to the list its inuse
                # count calls for (remove_zspage + insert_zspage, written out)
                newfg = cls.fg_of_inuse[inuse]
                zs_fg = self._zs_fg
                oldfg = zs_fg[zid]
                if newfg != oldfg:
                    lists = cls.fullness_list
                    old = lists[oldfg]
                    del old[zid]
                    lists[newfg][zid] = None
                    nonempty = cls.nonempty | _FG_BIT[newfg]
                    cls.nonempty = nonempty if old else nonempty & _FG_CLEAR[oldfg]
                    zs_fg[zid] = newfg
                    if newfg == ZS_INUSE_RATIO_0:
                        self.free_zspage(cls, zid)
            self._h_free.append(slot)  # cache_free_handle (under the class lock: see trim)
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
        if data.__class__ is not bytes and data.__class__ is not bytearray:
            data = memoryview(data).cast("B")
        n = len(data)
        slot = handle >> HANDLE_SLOT_SHIFT
        pool_lock = self._lock
        pool_lock.acquire()
        try:
            if self._h_val[slot] != handle:
                raise InvalidHandleError(self._bad_handle(handle))
            size = self._h_size[slot]
            end = offset + n
            if offset < 0 or end > size:
                raise ValueError(self._bad_range("write", handle, offset, n, size))
            # obj_addr, written out; the class of the object's zspage
            # (zspage_class) is the one its size maps to
            obj = self._h_obj[slot]
            idx = obj & OBJ_INDEX_MASK
            cls = self._class_for_size[size]
            if cls is None:  # a live handle's size has a class while the pool is open
                raise PoolClosedError(f"pool {self.name!r} is closed")
            if end <= cls.obj_room[idx]:
                start = obj + cls.obj_data[idx] + offset
                self.memory.arena[start : start + n] = data
            else:  # the bytes start in the next page, or span two pages
                self._write_span(self.obj_addr(obj, offset), data)
        except IndexError:
            raise InvalidHandleError(self._bad_handle(handle)) from None
        finally:
            pool_lock.release()

    def read(self, handle: int, length: int | None = None, offset: int = 0) -> bytes:
        """Return ``length`` bytes of the object from ``offset`` (default: to its end)."""
        slot = handle >> HANDLE_SLOT_SHIFT
        pool_lock = self._lock
        pool_lock.acquire()
        try:
            if self._h_val[slot] != handle:
                raise InvalidHandleError(self._bad_handle(handle))
            size = self._h_size[slot]
            if offset or length is not None:
                if length is None:
                    length = size - offset
                end = offset + length
                if offset < 0 or length < 0 or end > size:
                    raise ValueError(self._bad_range("read", handle, offset, length, size))
            else:  # the whole object, the common case
                end = length = size
            # obj_addr, written out, as in write()
            obj = self._h_obj[slot]
            idx = obj & OBJ_INDEX_MASK
            cls = self._class_for_size[size]
            if cls is None:  # as in write()
                raise PoolClosedError(f"pool {self.name!r} is closed")
            if end <= cls.obj_room[idx]:
                start = obj + cls.obj_data[idx] + offset
                return self.memory.arena[start : start + length]
            return self._read_span(self.obj_addr(obj, offset), length)
        except IndexError:
            raise InvalidHandleError(self._bad_handle(handle)) from None
        finally:
            pool_lock.release()

    def read_into(self, handle: int, buf, offset: int = 0) -> int:
        """Fill the writable buffer ``buf`` from the object at ``offset``; return its length."""
        out = memoryview(buf).cast("B")
        n = len(out)
        slot = handle >> HANDLE_SLOT_SHIFT
        pool_lock = self._lock
        pool_lock.acquire()
        try:
            if self._h_val[slot] != handle:
                raise InvalidHandleError(self._bad_handle(handle))
            if offset < 0 or offset + n > self._h_size[slot]:
                raise ValueError(self._bad_range("read", handle, offset, n, self._h_size[slot]))
            start = self.obj_addr(self._h_obj[slot], offset)
            src = self.memory.buf
            split = min(n, ((start | _PAGE_MASK) + 1) - start)
            out[:split] = src[start : start + split]
            if split < n:
                rest = self.memory.next[start >> PAGE_SHIFT] << PAGE_SHIFT
                out[split:] = src[rest : rest + n - split]
            return n
        except IndexError:
            raise InvalidHandleError(self._bad_handle(handle)) from None
        finally:
            pool_lock.release()

    @contextmanager
    def map(self, handle: int, length: int | None = None, offset: int = 0) -> Iterator[memoryview]:
        """Map the object for reading: a read-only memoryview, valid inside the ``with``.

        No copy is made when the bytes lie inside one page; an object that
        spans two pages is copied (the kernel's ``zs_obj_read_begin``).  While
        mapped, the object's zspage is read-locked: compaction and migration
        leave it alone.
        """
        slot = handle >> HANDLE_SLOT_SHIFT
        pool_lock = self._lock
        with pool_lock:
            try:
                valid = self._h_val[slot] == handle
            except IndexError:
                valid = False
            if not valid:
                raise InvalidHandleError(self._bad_handle(handle))
            size = self._h_size[slot]
            if length is None:
                length = size - offset
            if offset < 0 or length < 0 or offset + length > size:
                raise ValueError(self._bad_range("map", handle, offset, length, size))
            zid = self.memory.private[self._h_obj[slot] >> OBJ_INDEX_BITS]
            self._zs_lock[zid] += 1  # zspage_read_lock
            self._pinned[slot] = self._pinned.get(slot, 0) + 1  # pin_tag (2016)
            start = self.obj_addr(self._h_obj[slot], offset)
            page_end = (start | _PAGE_MASK) + 1
            rest = -1 if start + length <= page_end else self.memory.next[start >> PAGE_SHIFT] << PAGE_SHIFT
        try:
            src = self.memory.buf
            if rest < 0:
                view = src[start : start + length].toreadonly()
            else:
                view = memoryview(
                    bytes(src[start:page_end]) + bytes(src[rest : rest + start + length - page_end])
                ).toreadonly()
            try:
                yield view
            finally:
                try:
                    view.release()
                except BufferError:  # the caller kept an export; it dies with the view
                    pass
        finally:
            with pool_lock:
                self._zs_lock[zid] -= 1  # zspage_read_unlock
                if self._pinned[slot] == 1:  # unpin_tag
                    del self._pinned[slot]
                else:
                    self._pinned[slot] -= 1

    def obj_addr(self, obj: int, offset: int) -> int:
        """Arena address of byte ``offset`` of the caller's data in the object at location ``obj``.

        The bytes from there run to the end of that page at most; what lies
        beyond continues at the start of ``memory.next[addr >> PAGE_SHIFT]``.
        Caller holds the pool lock (or the class lock of the object's class).
        """
        idx = obj & OBJ_INDEX_MASK
        mem = self.memory
        cls = self.size_class[self._zs_class[mem.private[obj >> OBJ_INDEX_BITS]]]
        room = cls.obj_room[idx]
        if offset < room:
            return obj + cls.obj_data[idx] + offset
        return (mem.next[obj >> OBJ_INDEX_BITS] << PAGE_SHIFT) + offset - room

    def _read_span(self, start: int, n: int) -> bytes:
        """``n`` bytes of an object from arena address ``start``, across a page boundary."""
        page_end = (start | _PAGE_MASK) + 1
        arena = self.memory.arena
        if start + n <= page_end:
            return arena[start : start + n]
        rest = self.memory.next[start >> PAGE_SHIFT] << PAGE_SHIFT
        return arena[start:page_end] + arena[rest : rest + start + n - page_end]

    def _write_span(self, start: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` into an object from arena address ``start``, across a page boundary."""
        n = len(data)
        page_end = (start | _PAGE_MASK) + 1
        arena = self.memory.arena
        if start + n <= page_end:
            arena[start : start + n] = data
            return
        split = page_end - start
        rest = self.memory.next[start >> PAGE_SHIFT] << PAGE_SHIFT
        view = memoryview(data)
        arena[start:page_end] = view[:split]
        arena[rest : rest + n - split] = view[split:]

    def obj_copy(self, cls: SizeClass, dst: int, src: int) -> None:
        """Copy an object's data between two locations of its class (``zs_object_copy``)."""
        self._write_span(self.obj_addr(dst, 0), self._read_span(self.obj_addr(src, 0), cls.size - cls.hdr))

    def _bad_handle(self, handle: object) -> str:
        if self._closed:
            return f"pool {self.name!r} is closed"
        return f"invalid handle {handle!r}: unknown, freed or stale"

    @staticmethod
    def _bad_range(op: str, handle: int, offset: int, length: int, size: int) -> str:
        return (
            f"{op} of {length} bytes at offset {offset} is outside the {size} bytes "
            f"allocated for handle {handle:#x}"
        )

    def handle_size(self, handle: int) -> int:
        """The size ``malloc`` was asked for."""
        slot = handle >> HANDLE_SLOT_SHIFT
        with self._lock:
            try:
                if self._h_val[slot] == handle:
                    return self._h_size[slot]
            except IndexError:
                pass
        raise InvalidHandleError(self._bad_handle(handle))

    def locate(self, handle: int) -> tuple[int, int]:
        """(pfn of the page the object starts in, its index in the zspage)."""
        slot = handle >> HANDLE_SLOT_SHIFT
        with self._lock:
            try:
                if self._h_val[slot] == handle:
                    obj = self._h_obj[slot]
                    return obj >> OBJ_INDEX_BITS, obj & OBJ_INDEX_MASK
            except IndexError:
                pass
        raise InvalidHandleError(self._bad_handle(handle))

    def zspage_pfns(self, handle: int) -> list[int]:
        """The pfns of the object's zspage, head page first."""
        pfn, _ = self.locate(handle)
        with self._lock:
            return self.zspage_pages(self.memory.private[pfn])

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
                        inuse_ratio=tuple(cls.nr_zspages[ZS_INUSE_RATIO_10:]),
                        obj_allocated=cls.objs_allocated,
                        obj_used=cls.objs_inuse,
                        pages_per_zspage=cls.pages_per_zspage,
                        objs_per_zspage=cls.objs_per_zspage,
                        freeable=self.zs_can_compact(cls),
                        empty_zspages=cls.nr_zspages[ZS_INUSE_RATIO_0],
                    )
                )
        return rows

    def compact(self, policy: str = "ratio") -> int:
        """``zs_compact``: move objects so that zspages empty; return the pages freed.

        Then the tables give back their free tops (:meth:`trim`) and the C
        heap what it holds free (``malloc_trim``): a caller who compacts wants
        the process's memory to shrink, not only the pool's page count.
        """
        self._check_open()
        freed = zs_compact(self, policy)
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
        free = self._zs_free
        old = len(self._zs_class)
        keep = _top_free_run(free, old)
        if old - keep < _TRIM_MIN:
            return 0
        for arr in (
            self._zs_class,
            self._zs_inuse,
            self._zs_freeobj,
            self._zs_first,
            self._zs_fg,
            self._zs_lock,
            self._zs_isolated,
        ):
            del arr[keep:]
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
            self._class_for_size = [None] * len(self._class_for_size)
            for cls in self.classes:
                with cls.lock:
                    for fg in range(NR_FULLNESS_GROUPS):
                        for zid in list(cls.fullness_list[fg]):
                            self.remove_zspage(cls, zid)
                            self.lock_zspage_nowait(zid)
                            self._free_zspage(cls, zid)
                    cls.objs_inuse = 0
            for slot in range(1, len(self._h_val)):
                self._h_val[slot] |= HANDLE_FREED
        self.memory.unregister_movable_ops(self._ops_id)
        if self._own_memory:
            self.memory.close()

    def lock_zspage_nowait(self, zid: int) -> None:
        """Take every page lock of a zspage nobody else may touch any more."""
        if not self.trylock_zspage(zid):
            raise AssertionError(f"zspage {zid} has a page locked while its pool closes")

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
    "get_fullness_group",
]
