"""A deterministic checker for the page-migration protocol: every interleaving of a few actors.

The 2016 review of "zsmalloc: page migration support" found a race that no
single-threaded test shows: the VM isolates a page, zs_free meanwhile frees
the last object of that page's zspage and destroys it, and then the putback
(or a second isolation) works on a zspage that no longer exists.  This module
finds such races by brute force, on a model small enough to enumerate.

The model
---------
A :class:`Scenario` is

- a *setup*: a function that builds a :class:`World` for a protocol name
  ("mainline", "2016", "2016-v3"): a :class:`~zsmalloc.Pool` on its own small
  :class:`~zsmalloc.Memory`, a few objects of one size class with known
  contents, and names for the interesting pages ("head", "mid", "tail" of a
  zspage, "A.head", "B.mid", ...);
- a few *actors*, each a short program of protocol *steps* run in order:

  ==============  =====================================================================
  VM              ``isolate(P)``, ``migrate(P)`` (``migrate_pages([P], putback=False)``:
                  a failed migration leaves the page isolated), ``putback(P)``,
                  ``lock(P)`` / ``unlock(P)`` (a page-lock holder: the VM between
                  ``lock_page`` and the owner's callback, or any other kernel path)
  user            ``malloc(x, size)``, ``write(x)``, ``free(x)``, ``map_begin(x)``,
                  ``map_end(x)``
  pool            ``compact()`` (zs_compact), ``flush()`` (the deferred free's worker)
  VM compaction   ``mm_compact()`` (``Memory.compact``), ``evacuate(P, n)`` (the pfn
                  range of ``n`` frames from P, as offlining and CMA do)
  ==============  =====================================================================

  Pages are named at setup and stay bound to their pfn: after a migration,
  ``isolate(mid)`` is about the frame that was ``mid``, whoever owns it now,
  just as the VM only knows pfns.

Each step runs atomically, in the calling thread.  A step whose precondition
no longer holds is a no-op and the trace says why: ``migrate(P)`` or
``putback(P)`` by an actor that did not manage to isolate P, ``free(x)`` of an
object already freed, ``lock(P)`` of a free frame, ...  The pool's background
worker is not started: the request is recorded, and the deferred free runs
only as a ``flush()`` step (and at the end of the run).

Steps that would sleep on a page lock (``migrate`` and ``putback`` lock the
page, ``flush`` locks every page of the zspages it frees, ``lock`` itself)
are not enabled while another actor holds that lock; nor are ``write(x)`` and
``free(x)`` while another actor maps x (the user's own rule, zram's slot
lock: an object is not changed under its reader).  An actor whose turn
comes while its step is not enabled *waits*: the trace notes it, and it runs
as soon as a step of another actor makes it enabled, as a sleeping thread
would after the unlock.  So every schedule is a real execution, and the
executions where the waiter runs later are other schedules.  Should a step
still try to sleep on a held page lock (a lock the model did not foresee), it
raises :class:`WouldSleep` instead of hanging, and that run fails.

What is checked
---------------
After every step (but a no-op, which calls nothing):

- ``pool.check()``, which cross-checks every structure of the pool;
- a byte-exact read-back of every live object against the model
  (objects malloc'd but not yet written only have to be readable);
- for ``map_end``: an object mapped in place (inside one page) did not move
  while mapped, and the view still shows the bytes it showed at
  ``map_begin`` (a page migrated under its reader would not).

At the end of every run: open mappings are closed, held page locks dropped,
every page still isolated is put back, the deferred free is flushed, everything
is checked and read back, every live object is freed, the deferred free is
flushed again and everything checked again; then the *probe*: the emptied pool
must still serve a malloc, write, read-back and free of every size the run
used (damage to the fullness lists shows here even when check() is blind);
and at last the pool must hold no page and the Memory no frame
(``pool.total_pages == 0`` and ``memory.nr_used == 0``).  Any exception, in a
step or in a check, fails the run.

Exploring
---------
:func:`explore_exhaustive` runs every interleaving of the actors' programs
(each program in its own order: the multinomial coefficient
``(n1 + ... + nk)! / (n1! ... nk!)`` of the program lengths), each on a fresh
setup.  :func:`explore_random` runs ``n`` interleavings drawn uniformly with a
seeded RNG, for scenarios too big to enumerate.  Both return a
:class:`Report`.

Reading a failure
-----------------
The report gives the number of interleavings run, the number that failed (by
kind: "pool.check()", "read-back", "step raised", "end of run", "deadlock", or
"determinism" if the pool started its worker thread), and the *minimal
failing sequence*: the shortest executed prefix that fails
(among runs failing equally early, the first in enumeration order).  It is a
numbered trace, one line per step: the actor, the step, and what it did (with
the pool's pages and the Memory's frames in use after it), then the failure:
which check failed after which step, and the message (``check()``'s own
message for a corruption), for example::

      1. vm     isolate(mid)  isolated pfn 1  [pool 3 pages, 3 frames]
      2. user   free(b)       freed b         [pool 3 pages, 3 frames]
      3. user   free(c)       freed c         [pool 0 pages, 1 frames]
    FAILED after step 3, pool.check(): CorruptionError: page 1 (isolated) is movable
    for this pool but names zspage 0, a free zspage id

(the reviewed v3 patch: zs_free destroyed a zspage whose page the VM holds
isolated; the putback that would come next works on a zspage that no longer
exists, and ``check()`` says so at the step that broke the invariant).

Use :func:`run_named` (``zsmalloc protocheck``) for the built-in scenarios
(:data:`SCENARIOS`), or build your own from :class:`World`, :class:`Actor` and
the step constructors (:func:`isolate`, :func:`free`, ...).
"""

from __future__ import annotations

import contextvars
import json
import math
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from zsmalloc import engine, model
from zsmalloc.debug import snapshot
from zsmalloc.errors import CorruptionError, WouldSleepError
from zsmalloc.mm import PAGE_SIZE, MigrateMode
from zsmalloc.pool.migrate import PROTOCOLS
from zsmalloc.pool.size_class import ZS_HANDLE_SIZE

__all__ = [
    "BACKENDS",
    "SCENARIOS",
    "Actor",
    "Failure",
    "Report",
    "Run",
    "Scenario",
    "Step",
    "TraceEntry",
    "World",
    "WouldSleep",
    "compact",
    "evacuate",
    "execute",
    "explore_exhaustive",
    "explore_random",
    "flush",
    "free",
    "interleavings",
    "isolate",
    "lock",
    "malloc",
    "map_begin",
    "map_end",
    "migrate",
    "mm_compact",
    "multinomial",
    "putback",
    "run_named",
    "unlock",
    "write",
]


#: what a step's result starts with when its precondition failed and it called nothing
NOOP = "no-op: "


class WouldSleep(WouldSleepError):
    """A step tried to sleep on a page lock that only another (suspended) actor can release."""


#: the implementations a scenario runs on: the model and the engine
BACKENDS = {"model": model, "engine": engine}
#: the implementation the next World is built on (set by execute for its setup)
_backend: contextvars.ContextVar[str] = contextvars.ContextVar("protocheck_backend", default="model")


# ----------------------------------------------------------------------
# steps


@dataclass(frozen=True)
class Step:
    """One protocol step: an operation and its page or object name."""

    op: str
    target: str = ""
    size: int = 0  # malloc: bytes; evacuate: pages; map_begin: bytes mapped (0: to the end)
    offset: int = 0  # map_begin: the first byte mapped

    def __str__(self) -> str:
        if self.op == "malloc":
            return f"malloc({self.target}, {self.size})"
        if self.op == "map_begin" and (self.offset or self.size):
            return f"map_begin({self.target}, offset={self.offset}, length={self.size})"
        if self.op == "evacuate" and self.size != 1:
            return f"evacuate({self.target}, {self.size})"
        return f"{self.op}({self.target})"


def isolate(page: str) -> Step:
    return Step("isolate", page)


def migrate(page: str) -> Step:
    return Step("migrate", page)


def putback(page: str) -> Step:
    return Step("putback", page)


def lock(page: str) -> Step:
    return Step("lock", page)


def unlock(page: str) -> Step:
    return Step("unlock", page)


def malloc(obj: str, size: int) -> Step:
    return Step("malloc", obj, size)


def write(obj: str) -> Step:
    return Step("write", obj)


def free(obj: str) -> Step:
    return Step("free", obj)


def map_begin(obj: str, offset: int = 0, length: int = 0) -> Step:
    """Map ``length`` bytes of the object from ``offset`` (0: the whole object)."""
    return Step("map_begin", obj, length, offset)


def map_end(obj: str) -> Step:
    return Step("map_end", obj)


def compact() -> Step:
    return Step("compact")


def flush() -> Step:
    return Step("flush")


def mm_compact() -> Step:
    return Step("mm_compact")


def evacuate(page: str, npages: int = 1) -> Step:
    return Step("evacuate", page, npages)


@dataclass(frozen=True)
class Actor:
    """A named program of steps, run in order."""

    name: str
    steps: tuple[Step, ...]

    def __init__(self, name: str, steps: Sequence[Step]) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "steps", tuple(steps))


@dataclass(frozen=True)
class Scenario:
    """A setup and the actors that race on it."""

    name: str
    description: str
    setup: Callable[[str], World]
    actors: tuple[Actor, ...]

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(len(a.steps) for a in self.actors)


# ----------------------------------------------------------------------
# the world one run plays in


def payload(name: str, version: int, size: int) -> bytes:
    """The deterministic bytes write number ``version`` of object ``name`` stores."""
    return random.Random(f"{name}/{version}").randbytes(size)


@dataclass
class _Mapping:
    actor: str
    cm: AbstractContextManager
    view: memoryview
    shown: bytes  # the bytes the view showed at map_begin
    where: tuple[int, int]  # (pfn, idx) at map_begin
    in_place: bool  # a view of the object's page, not a copy
    pfns: tuple[int, ...]  # the object's zspage at map_begin: none of its pages may move meanwhile


class World:
    """A pool on its own Memory, the model of its objects, and the actors' holdings.

    Build one in a scenario's setup: ``World(protocol)``, then ``malloc`` /
    ``write`` / ``free`` objects and ``name_pages`` the pages the actors will
    work on.  Steps are run with :meth:`do`; :meth:`verify` checks the pool.
    """

    def __init__(
        self, protocol: str, *, chain_size: int = 4, capacity: int = 128, backend: str | None = None
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self.protocol = protocol
        self.backend = _backend.get() if backend is None else backend
        impl = BACKENDS[self.backend]
        # one thread runs every actor: a wait for a page lock raises instead of
        # sleeping forever, and the pool starts no worker (flush() steps run it)
        self.memory = impl.Memory(capacity=capacity, sleep_on_page_lock=False)
        self.pool = impl.Pool(
            name="protocheck",
            chain_size=chain_size,
            memory=self.memory,
            migration=protocol,
            background_work=False,
        )

        self.handles: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self.contents: dict[str, bytes | None] = {}
        self.versions: Counter[str] = Counter()
        self.pages: dict[str, int] = {}
        #: actor -> pfns it holds isolated
        self.isolated: dict[str, set[int]] = {}
        #: pfn -> actor holding its page lock across steps
        self.locked: dict[int, str] = {}
        self.maps: dict[str, _Mapping] = {}
        #: every size malloc'd, for the end-of-run probe
        self.sizes_used: set[int] = set()

    def _holder(self, pfn: int) -> str:
        return self.locked.get(pfn, "nobody the model knows of")

    # -- setup helpers ----------------------------------------------------

    def name_pages(self, obj: str, prefix: str = "") -> list[str]:
        """Name the pages of ``obj``'s zspage ``{prefix}head``, ``{prefix}mid`` ..., ``{prefix}tail``."""
        pfns = self.pool.zspage_pfns(self.handles[obj])
        names = []
        for k, pfn in enumerate(pfns):
            if k == 0:
                name = "head"
            elif k == len(pfns) - 1:
                name = "tail"
            elif len(pfns) == 3:
                name = "mid"
            else:
                name = f"p{k}"
            names.append(prefix + name)
            self.pages[prefix + name] = pfn
        return names

    def malloc(self, name: str, size: int) -> int:
        self._do_malloc(Step("malloc", name, size))
        return self.handles[name]

    def write(self, name: str) -> None:
        self._do_write(Step("write", name))

    def free(self, name: str) -> None:
        self._do_free(Step("free", name))

    def pfn(self, page: str) -> int:
        return self.pages[page]

    # -- steps -------------------------------------------------------------

    def blocked(self, actor: str, step: Step) -> str | None:
        """Why ``step`` would sleep now (on a page lock another actor holds), or None."""
        op = step.op
        if op in ("migrate", "putback", "lock"):
            pfn = self.pages[step.target]
            if op != "lock" and pfn not in self.isolated.get(actor, ()):
                return None  # a no-op: it locks nothing
            holder = self.locked.get(pfn)
            if holder is not None and holder != actor:
                return f"page {step.target} (pfn {pfn}) is locked by {holder}"
        elif op == "flush":
            snap = snapshot(self.pool)
            for cls in snap["classes"]:
                for zid in cls["fullness"][0]:
                    for pfn in snap["zspages"][zid]["pages"]:
                        if pfn in self.locked:
                            return f"pfn {pfn} of empty zspage {zid} is locked by {self.locked[pfn]}"
        elif op in ("free", "write") and step.target in self.maps and self.maps[step.target].actor != actor:
            # the user's own protocol (zram's slot lock): a mapped object is not changed under its reader
            return f"{step.target} is mapped by {self.maps[step.target].actor}"
        return None

    def do(self, actor: str, step: Step) -> tuple[str, bool]:
        """Run one step; return (what it did, whether it had an effect).

        A step whose precondition failed calls nothing and says so: its result
        starts with :data:`NOOP`.  One that calls into the pool or the VM and
        finds nothing to do (a refused isolation, a compaction that moves
        nothing) is not a no-op, but has no effect.
        """
        return getattr(self, f"_do_{step.op}")(step, actor)

    def _state(self) -> str:
        return f"[pool {self.pool.total_pages} pages, {self.memory.nr_used} frames]"

    def _do_isolate(self, step: Step, actor: str = "") -> tuple[str, bool]:
        pfn = self.pages[step.target]
        if self.memory.isolate_movable_page(pfn):
            self.isolated.setdefault(actor, set()).add(pfn)
            return f"isolated pfn {pfn}", True
        return f"refused: pfn {pfn} not isolated", False

    def _do_migrate(self, step: Step, actor: str = "") -> tuple[str, bool]:
        pfn = self.pages[step.target]
        held = self.isolated.get(actor, set())
        if pfn not in held:
            return f"{NOOP}{actor} holds no isolated pfn {pfn}", False
        res = self.memory.migrate_pages([pfn], MigrateMode.SYNC, putback=False)
        if res.succeeded:
            held.discard(pfn)
            if pfn in res.moved:
                return f"moved pfn {pfn} -> pfn {res.moved[pfn]}", True
            return f"released pfn {pfn}: its owner had let it go", True
        return f"failed after {res.retried} retries: pfn {pfn} stays isolated", True

    def _do_putback(self, step: Step, actor: str = "") -> tuple[str, bool]:
        pfn = self.pages[step.target]
        held = self.isolated.get(actor, set())
        if pfn not in held:
            return f"{NOOP}{actor} holds no isolated pfn {pfn}", False
        self.memory.putback_movable_page(pfn)
        held.discard(pfn)
        return f"put back pfn {pfn}", True

    def _do_lock(self, step: Step, actor: str = "") -> tuple[str, bool]:
        pfn = self.pages[step.target]
        mem = self.memory
        if not mem.page_in_use(pfn):
            return f"{NOOP}pfn {pfn} is a free frame", False
        mem.get_page(pfn)
        if not mem.trylock_page(pfn):
            mem.put_page(pfn)
            raise WouldSleep(f"lock({step.target}): pfn {pfn} is locked by {self._holder(pfn)}")
        self.locked[pfn] = actor
        return f"locked pfn {pfn} (and holds a reference)", True

    def _do_unlock(self, step: Step, actor: str = "") -> tuple[str, bool]:
        pfn = self.pages[step.target]
        if self.locked.get(pfn) != actor:
            return f"{NOOP}{actor} holds no lock on pfn {pfn}", False
        del self.locked[pfn]
        self.memory.unlock_page(pfn)
        self.memory.put_page(pfn)
        return f"unlocked pfn {pfn}", True

    def _do_malloc(self, step: Step, actor: str = "") -> tuple[str, bool]:
        name = step.target
        if name in self.handles:
            return f"{NOOP}{name} is live", False
        h = self.pool.malloc(step.size)
        self.sizes_used.add(step.size)
        self.handles[name] = h
        self.sizes[name] = step.size
        self.contents[name] = None
        pfn, idx = self.pool.locate(h)
        return f"{name} = handle {h:#x}, object {idx} at pfn {pfn}", True

    def _do_write(self, step: Step, actor: str = "") -> tuple[str, bool]:
        name = step.target
        if name not in self.handles:
            return f"{NOOP}{name} is not live", False
        self.versions[name] += 1
        data = payload(name, self.versions[name], self.sizes[name])
        self.pool.write(self.handles[name], data)
        self.contents[name] = data
        m = self.maps.get(name)
        if m is not None and m.in_place:  # the actor writes what it maps itself: its view shows it
            m.shown = data
        return f"wrote {len(data)} bytes (version {self.versions[name]})", True

    def _do_free(self, step: Step, actor: str = "") -> tuple[str, bool]:
        name = step.target
        if name not in self.handles:
            return f"{NOOP}{name} is not live", False
        self.pool.free(self.handles.pop(name))
        del self.sizes[name], self.contents[name]
        return f"freed {name}", True

    def _do_map_begin(self, step: Step, actor: str = "") -> tuple[str, bool]:
        name = step.target
        if name not in self.handles or name in self.maps:
            return f"{NOOP}{name} is {'mapped' if name in self.maps else 'not live'}", False
        h = self.handles[name]
        length = step.size or self.pool.handle_size(h) - step.offset
        cm = self.pool.map(h, length, step.offset)
        view = cm.__enter__()
        # mapped in place when the bytes lie in one page, else a copy
        in_place = self._in_one_page(h, step.offset, length)
        pfns = tuple(self.pool.zspage_pfns(h))
        self.maps[name] = _Mapping(actor, cm, view, bytes(view), self.pool.locate(h), in_place, pfns)
        how = "in place" if in_place else "copied: it spans two pages"
        start = f" from {step.offset}" if step.offset else ""
        return f"mapped {name} ({len(view)} bytes{start}, {how})", True

    def _in_one_page(self, h: int, offset: int, length: int) -> bool:
        """Do bytes [offset, offset + length) of the object lie in one page (a view of the page itself)?"""
        snap = snapshot(self.pool)
        pfn, idx = self.pool.locate(h)
        index = snap["zspages"][snap["pages"][pfn]["private"]]["class"]
        cls = next(c for c in snap["classes"] if c["index"] == index)
        start = (idx * cls["size"]) % PAGE_SIZE + (0 if cls["huge"] else ZS_HANDLE_SIZE) + offset
        return start // PAGE_SIZE == (start + max(length, 1) - 1) // PAGE_SIZE

    def _do_map_end(self, step: Step, actor: str = "") -> tuple[str, bool]:
        name = step.target
        m = self.maps.get(name)
        if m is None or m.actor != actor:
            return f"{NOOP}{actor} has not mapped {name}", False
        del self.maps[name]
        now = bytes(m.view)
        h = self.handles.get(name)
        where = self.pool.locate(h) if h is not None else None
        pfns = tuple(self.pool.zspage_pfns(h)) if h is not None else m.pfns
        m.cm.__exit__(None, None, None)
        if pfns != m.pfns:
            moved = sorted(set(m.pfns) - set(pfns))
            raise AssertionError(
                f"page(s) {moved} of {name}'s zspage moved while it was mapped (zspage {m.pfns} -> "
                f"{pfns}): a reader's view can point at a frame the object left"
            )
        if m.in_place and where != m.where:
            raise AssertionError(
                f"{name} moved from (pfn, idx) {m.where} to {where} while mapped in place: "
                "its reader's view points at a page the object left"
            )
        if now != m.shown:
            raise AssertionError(f"the view of {name} changed while mapped: {_diff(m.shown, now)}")
        return f"unmapped {name}: it did not move, its view did not change", True

    def _do_compact(self, step: Step, actor: str = "") -> tuple[str, bool]:
        moved0 = self.pool.objs_compacted
        freed = self.pool.compact()
        moved = self.pool.objs_compacted - moved0
        return f"zs_compact moved {moved} objects, freed {freed} pages", bool(moved or freed)

    def _do_flush(self, step: Step, actor: str = "") -> tuple[str, bool]:
        asked = ", ".join(self.pool.pending_work) or "nothing"
        n = self.pool.flush_deferred()
        return f"deferred free (requested: {asked}) freed {n} zspages", n > 0

    def _do_mm_compact(self, step: Step, actor: str = "") -> tuple[str, bool]:
        res = self.memory.compact()
        return (
            f"moved {res.succeeded} pages, {res.failed} failed, hwm {res.hwm_before} -> {res.hwm_after}",
            res.succeeded > 0,
        )

    def _do_evacuate(self, step: Step, actor: str = "") -> tuple[str, bool]:
        start = self.pages[step.target]
        res = self.memory.evacuate(start, start + step.size)
        left = f", still in use: {res.remaining}" if res.remaining else ""
        return (
            f"pfns [{start}, {start + step.size}): moved {res.succeeded}, failed {res.failed}{left}",
            res.succeeded > 0,
        )

    # -- checks ------------------------------------------------------------

    def verify(self) -> tuple[str, str] | None:
        """pool.check() and a read-back of every live object; (what failed, message) or None."""
        try:
            self.pool.check()
        except Exception as exc:
            return "pool.check()", _describe(exc)
        for name, h in self.handles.items():
            try:
                data = self.pool.read(h)
            except Exception as exc:
                return "read-back", f"reading {name}: {_describe(exc)}"
            want = self.contents[name]
            if len(data) != self.sizes[name]:
                return "read-back", f"{name}: read {len(data)} bytes, it has {self.sizes[name]}"
            if want is not None and data != want:
                return "read-back", f"{name}: {_diff(want, data)}"
        return None

    def teardown_steps(self) -> Iterator[tuple[str, Callable[[], str]]]:
        """The end of a run, as (label, action) pairs; each action returns what it did."""
        # named functions, not lambdas: the type checker cannot infer a lambda's
        # default-bound arguments; the defaults bind each loop's values
        for name, m in list(self.maps.items()):

            def map_end(name: str = name, m: _Mapping = m) -> str:
                return self._do_map_end(Step("map_end", name), m.actor)[0]

            yield f"map_end({name})", map_end
        for pfn, actor in list(self.locked.items()):

            def unlock(pfn: int = pfn, actor: str = actor) -> str:
                return self._unlock_pfn(pfn, actor)

            yield f"unlock(pfn {pfn})", unlock
        for held in self.isolated.values():
            for pfn in sorted(held):

                def putback(pfn: int = pfn, held: set[int] = held) -> str:
                    return self._putback_pfn(pfn, held)

                yield f"putback(pfn {pfn})", putback
        yield "flush()", lambda: self._do_flush(Step("flush"))[0]
        yield "verify", self._verify_or_raise
        for name in list(self.handles):

            def free(name: str = name) -> str:
                return self._do_free(Step("free", name))[0]

            yield f"free({name})", free
        yield "flush()", lambda: self._do_flush(Step("flush"))[0]
        yield "verify", self._verify_or_raise
        yield "probe", self._probe
        yield "leak check", self._leak_check

    def _unlock_pfn(self, pfn: int, actor: str) -> str:
        del self.locked[pfn]
        self.memory.unlock_page(pfn)
        self.memory.put_page(pfn)
        return f"unlocked pfn {pfn} ({actor} still held it)"

    def _putback_pfn(self, pfn: int, held: set[int]) -> str:
        self.memory.putback_movable_page(pfn)
        held.discard(pfn)
        return f"put back pfn {pfn}"

    def _verify_or_raise(self) -> str:
        bad = self.verify()
        if bad:
            raise _CheckFailed(*bad)
        return "check() and read-back passed"

    def _probe(self) -> str:
        """The emptied pool must still serve: malloc, write, read back and free each size used."""
        sizes = sorted(self.sizes_used)
        handles = []
        for k, size in enumerate(sizes):
            h = self.pool.malloc(size)
            data = payload("probe", k, size)
            self.pool.write(h, data)
            handles.append((h, data))
        for h, data in handles:
            got = self.pool.read(h)
            if got != data:
                raise _CheckFailed(
                    "probe", f"a fresh object of {len(data)} bytes reads back wrong: {_diff(data, got)}"
                )
        for h, _ in handles:
            self.pool.free(h)
        self.pool.flush_deferred()
        return f"malloc/write/read/free of sizes {sizes} worked"

    def _leak_check(self) -> str:
        pages, frames = self.pool.total_pages, self.memory.nr_used
        if pages or frames:
            raise _CheckFailed(
                "end of run",
                f"leak: every object freed, yet the pool holds {pages} pages and {frames} frames are in use",
            )
        return "no page, no frame left"

    def close(self) -> None:
        for m in self.maps.values():
            try:
                m.cm.__exit__(None, None, None)
            except Exception:
                pass
        self.maps.clear()
        self.memory.close()


class _CheckFailed(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message


def _describe(exc: BaseException) -> str:
    """The exception, and where it was raised unless it is check()'s own verdict."""
    msg = f"{type(exc).__name__}: {exc}"
    tb = traceback.extract_tb(exc.__traceback__)
    if tb and not isinstance(exc, CorruptionError):
        last = tb[-1]
        msg += f" (in {last.name}, {last.filename.rsplit('/', 1)[-1]}:{last.lineno})"
    return msg


def _diff(want: bytes, got: bytes) -> str:
    if len(want) != len(got):
        return f"{len(got)} bytes where {len(want)} were expected"
    bad = [i for i, (a, b) in enumerate(zip(want, got, strict=True)) if a != b]
    return f"{len(bad)} of {len(want)} bytes differ, the first at offset {bad[0]}"


# ----------------------------------------------------------------------
# one run


@dataclass(frozen=True)
class TraceEntry:
    """One line of a trace: a numbered step, or (n None) a note such as a wait."""

    n: int | None
    actor: str
    step: str
    result: str
    state: str = ""


@dataclass(frozen=True)
class Failure:
    after: int  # steps executed (teardown steps included) when it failed
    where: str  # "pool.check()", "read-back", "step raised", "end of run", "deadlock"
    message: str


@dataclass
class Run:
    """One interleaving: the schedule (actor indexes, one per step), its trace, its failure."""

    schedule: tuple[int, ...]
    trace: list[TraceEntry] = field(default_factory=list)
    failure: Failure | None = None
    #: (actor index, step index) of every step that did something (was not a no-op)
    effective: set[tuple[int, int]] = field(default_factory=set)

    @property
    def executed(self) -> tuple[tuple[str, str], ...]:
        """(actor, step) of every scenario step in the order it ran."""
        return tuple((e.actor, e.step) for e in self.trace if e.n is not None and e.actor != "teardown")

    def render(self) -> str:
        aw = max([len(e.actor) for e in self.trace] + [5])
        sw = max([len(e.step) for e in self.trace] + [4])
        rw = max([len(e.result) for e in self.trace if e.n is not None] + [10])
        lines = []
        for e in self.trace:
            if e.n is None:
                lines.append(f"    {'':>3}  {e.actor:<{aw}}  {e.step:<{sw}}  ({e.result})")
            else:
                lines.append(f"    {e.n:>3}. {e.actor:<{aw}}  {e.step:<{sw}}  {e.result:<{rw}}  {e.state}")
        if self.failure:
            f = self.failure
            lines.append(f"    FAILED after step {f.after}, {f.where}: {f.message}")
        return "\n".join(lines)


def execute(scenario: Scenario, protocol: str, schedule: Sequence[int], backend: str = "model") -> Run:
    """Run one schedule (the actor to run at each turn) on a fresh setup, on ``backend``."""
    run = Run(tuple(schedule))
    token = _backend.set(backend)
    try:
        world = scenario.setup(protocol)
    finally:
        _backend.reset(token)
    try:
        _validate(scenario, world)
    except ValueError:
        world.close()
        raise
    actors = scenario.actors
    pc = [0] * len(actors)
    owed = [0] * len(actors)
    waiting: list[int] = []  # actors whose turn came while their step was not enabled
    n = 0
    trace = run.trace

    def advance(a: int, woken: bool) -> bool:
        """Run actor a's next step if it is enabled; raise _Stop on failure."""
        nonlocal n
        actor = actors[a]
        step = actor.steps[pc[a]]
        reason = world.blocked(actor.name, step)
        if reason is not None:
            if not woken and a not in waiting:
                waiting.append(a)
                trace.append(TraceEntry(None, actor.name, str(step), f"waits: {reason}"))
            return False
        n += 1
        pc[a] += 1
        owed[a] -= 1
        try:
            result, changed = world.do(actor.name, step)
            if changed:
                run.effective.add((a, pc[a] - 1))
        except Exception as exc:
            trace.append(TraceEntry(n, actor.name, str(step), "raised", world._state()))
            raise _Stop(Failure(n, "step raised", _describe(exc))) from None
        shown = "woke up; " + result if woken else result
        trace.append(TraceEntry(n, actor.name, str(step), shown, world._state()))
        busy = _worker_threads()
        if busy:
            raise _Stop(
                Failure(
                    n,
                    "determinism",
                    f"the pool started a worker thread ({busy}): the model "
                    "no longer controls when the deferred free runs",
                )
            )
        if not result.startswith(NOOP):
            bad = world.verify()
            if bad:
                raise _Stop(Failure(n, *bad))
        return True

    try:
        try:
            bad = world.verify()
            if bad:
                raise _Stop(Failure(0, "setup: " + bad[0], bad[1]))
            for a in schedule:
                owed[a] += 1
                progressed = False
                while owed[a] and advance(a, False):
                    progressed = True
                if a in waiting and not owed[a]:
                    waiting.remove(a)
                while progressed:  # a step ran: wake whoever it unblocked, in the order they waited
                    progressed = False
                    for b in list(waiting):
                        while owed[b] and advance(b, True):
                            progressed = True
                        if not owed[b]:
                            waiting.remove(b)
            if waiting:
                who = ", ".join(f"{actors[b].name} at {actors[b].steps[pc[b]]}" for b in waiting)
                raise _Stop(Failure(n, "deadlock", f"no actor can run: {who} wait forever"))
            for label, action in world.teardown_steps():
                n += 1
                try:
                    result = action()
                except _CheckFailed as exc:
                    trace.append(TraceEntry(n, "teardown", label, "failed", world._state()))
                    raise _Stop(Failure(n, f"end of run, {exc.where}", exc.message)) from None
                except Exception as exc:
                    trace.append(TraceEntry(n, "teardown", label, "raised", world._state()))
                    raise _Stop(Failure(n, "end of run, step raised", _describe(exc))) from None
                trace.append(TraceEntry(n, "teardown", label, result, world._state()))
        except _Stop as stop:
            run.failure = stop.failure
    finally:
        world.close()
    return run


_PAGE_OPS = frozenset({"isolate", "migrate", "putback", "lock", "unlock", "evacuate"})


def _validate(scenario: Scenario, world: World) -> None:
    """A step naming a page the setup did not name is a mistake in the scenario, not a finding."""
    for actor in scenario.actors:
        for step in actor.steps:
            if step.op in _PAGE_OPS and step.target not in world.pages:
                raise ValueError(
                    f"scenario {scenario.name!r}: {actor.name}'s {step} names no page of the setup "
                    f"(it names {sorted(world.pages)})"
                )
            if not hasattr(world, f"_do_{step.op}"):
                raise ValueError(f"scenario {scenario.name!r}: {actor.name}'s {step}: unknown operation")


def _worker_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("zs-work-protocheck")]


class _Stop(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


# ----------------------------------------------------------------------
# exploring


def multinomial(lengths: Sequence[int]) -> int:
    """The number of interleavings of programs of these lengths."""
    return math.factorial(sum(lengths)) // math.prod(math.factorial(k) for k in lengths)


def interleavings(lengths: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Every interleaving of programs of these lengths: actor indexes, in lexicographic order."""
    left = list(lengths)
    total = sum(lengths)
    seq: list[int] = []

    def rec() -> Iterator[tuple[int, ...]]:
        if len(seq) == total:
            yield tuple(seq)
            return
        for a in range(len(left)):
            if left[a]:
                left[a] -= 1
                seq.append(a)
                yield from rec()
                seq.pop()
                left[a] += 1

    return rec()


@dataclass
class Report:
    """What an exploration found."""

    scenario: Scenario
    protocol: str
    mode: str  # "exhaustive" or "random (n, seed)"
    backend: str = "model"
    interleavings: int = 0  # schedules run
    possible: int = 0  # the multinomial: all interleavings there are
    executions: int = 0  # distinct executed step sequences among them
    failing: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    minimal: Run | None = None
    seconds: float = 0.0
    #: the schedules that failed, in the order they ran
    failed: list[tuple[int, ...]] = field(default_factory=list)
    #: (actor index, step index) -> in how many interleavings that step did something
    effective: Counter[tuple[int, int]] = field(default_factory=Counter)

    def idle_steps(self) -> list[str]:
        """Steps that were a no-op in every interleaving run: a scenario that never exercises them."""
        return [
            f"{actor.name}: {step}"
            for a, actor in enumerate(self.scenario.actors)
            for k, step in enumerate(actor.steps)
            if not self.effective[(a, k)]
        ]

    @property
    def ok(self) -> bool:
        return self.failing == 0 and self.interleavings > 0

    def add(self, run: Run) -> None:
        self.interleavings += 1
        self.effective.update(run.effective)
        f = run.failure
        if f is None:
            return
        self.failed.append(run.schedule)
        self.failing += 1
        self.kinds[f.where] += 1
        if self.minimal is None or f.after < self.minimal.failure.after:  # type: ignore[union-attr]
            self.minimal = run

    def to_dict(self) -> dict:
        """The figures of :meth:`render`, for ``zsmalloc protocheck --json``."""
        run = self.minimal
        minimal = None
        if run is not None and run.failure is not None:
            minimal = {
                "steps": [
                    {"n": e.n, "actor": e.actor, "step": e.step, "result": e.result, "state": e.state}
                    for e in run.trace
                ],
                "failed_after": run.failure.after,
                "where": run.failure.where,
                "message": run.failure.message,
            }
        return {
            "scenario": self.scenario.name,
            "protocol": self.protocol,
            "backend": self.backend,
            "mode": self.mode,
            "interleavings": self.interleavings,
            "possible": self.possible,
            "executions": self.executions,
            "failing": self.failing,
            "failures_by_kind": dict(self.kinds),
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "minimal_failing_sequence": minimal,
        }

    def render(self) -> str:
        sc = self.scenario
        lines = [
            f"scenario {sc.name!r}, protocol {self.protocol!r}, on the {self.backend}, {self.mode}: "
            f"{sc.description}",
            "actors: " + "; ".join(f"{a.name}: " + ", ".join(map(str, a.steps)) for a in sc.actors),
            f"{self.interleavings} of {self.possible} interleavings run "
            f"({self.executions} distinct executions) in {self.seconds:.2f} s: "
            + (f"{self.failing} FAILED" if self.failing else "no failure"),
        ]
        if self.failing:
            lines.append("failures by kind: " + ", ".join(f"{k}: {v}" for k, v in self.kinds.most_common()))
            run = self.minimal
            assert run is not None and run.failure is not None
            order = " ".join(sc.actors[a].name for a in run.schedule)
            lines.append(f"minimal failing sequence ({run.failure.after} steps; schedule: {order}):")
            lines.append(run.render())
        return "\n".join(lines)


def _explore(
    scenario: Scenario, protocol: str, schedules: Iterator[tuple[int, ...]], mode: str, backend: str
) -> Report:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, not {backend!r}")
    report = Report(scenario, protocol, mode, backend, possible=multinomial(scenario.lengths))
    seen: set[tuple[tuple[str, str], ...]] = set()
    t0 = time.perf_counter()
    for schedule in schedules:
        run = execute(scenario, protocol, schedule, backend)
        seen.add(run.executed)
        report.add(run)
    report.executions = len(seen)
    report.seconds = time.perf_counter() - t0
    return report


def explore_exhaustive(
    scenario: Scenario, protocol: str = "mainline", *, limit: int = 20_000, backend: str = "model"
) -> Report:
    """Run every interleaving of the scenario's actors, each on a fresh setup."""
    total = multinomial(scenario.lengths)
    if total > limit:
        raise ValueError(
            f"scenario {scenario.name!r} has {total} interleavings, more than limit={limit}: "
            "use explore_random, or raise the limit"
        )
    return _explore(scenario, protocol, interleavings(scenario.lengths), "exhaustive", backend)


def explore_random(
    scenario: Scenario, protocol: str = "mainline", n: int = 200, seed: int = 0, *, backend: str = "model"
) -> Report:
    """Run ``n`` interleavings drawn uniformly at random (seeded: the same ones every time)."""
    rng = random.Random(seed)
    base = [a for a, k in enumerate(scenario.lengths) for _ in range(k)]

    def draws() -> Iterator[tuple[int, ...]]:
        for _ in range(n):
            seq = base[:]
            rng.shuffle(seq)
            yield tuple(seq)

    return _explore(scenario, protocol, draws(), f"random ({n} interleavings, seed {seed})", backend)


# ----------------------------------------------------------------------
# built-in scenarios
#
# One size class: 3064-byte objects land in class 190 (3072-byte slots, 3
# pages, 4 objects per zspage, chain 4 or 8).  Object k of a zspage starts at
# byte 3072*k of the chain: object 0 in the head page, object 1 in the head
# page spilling into the middle one, object 2 in the middle page spilling into
# the tail, object 3 in the tail page.  The pools use chain 4 (fewer classes:
# a cheaper setup, the same class).

BIG = 3064
SMALL = 3000  # the same class


def _one_zspage_bc(protocol: str) -> World:
    """One zspage holding b (object 1: head -> mid) and c (object 2: mid -> tail); 2 free slots."""
    w = World(protocol)
    for name in ("a", "b", "c"):
        w.malloc(name, BIG)
        w.write(name)
    w.free("a")
    w.name_pages("b")
    return w


def _one_zspage_c(protocol: str) -> World:
    """One zspage holding only c (object 2: mid -> tail); the next malloc gets object 1 (head -> mid)."""
    w = World(protocol)
    for name in ("a", "b", "c"):
        w.malloc(name, BIG)
        w.write(name)
    w.free("a")
    w.free("b")
    w.name_pages("c")
    return w


def _one_zspage_abc(protocol: str) -> World:
    """One zspage holding a, b, c (objects 0, 1, 2), one free slot (object 3, in the tail page)."""
    w = World(protocol)
    for name in ("a", "b", "c"):
        w.malloc(name, BIG)
        w.write(name)
    w.name_pages("a")
    return w


def _two_sparse_zspages(protocol: str) -> World:
    """Zspage A holds a0 only, zspage B holds b0 only: zs_compact can free one of them."""
    w = World(protocol)
    for name in ("a0", "a1", "a2", "a3", "b0"):
        w.malloc(name, BIG)
        w.write(name)
    for name in ("a1", "a2", "a3"):
        w.free(name)
    w.name_pages("a0", "A.")
    w.name_pages("b0", "B.")
    return w


def _hole_below(protocol: str) -> World:
    """Zspage B (b0, b1, b2) above the three free frames zspage A left: Memory.compact has work."""
    w = World(protocol)
    for name in ("a0", "a1", "a2", "a3", "b0", "b1", "b2"):
        w.malloc(name, BIG)
    for name in ("a0", "a1", "a2", "a3"):  # zspage A, built first on the lowest frames, goes
        w.free(name)
    for name in ("b0", "b1", "b2"):
        w.write(name)
    w.name_pages("b0", "B.")
    return w


def _stress_setup(protocol: str) -> World:
    """Zspage A holds a0, a1 (objects 0, 1); zspage B holds b0: zs_compact could free one."""
    w = World(protocol)
    for name in ("a0", "a1", "a2", "a3", "b0"):
        w.malloc(name, BIG)
        w.write(name)
    w.free("a2")
    w.free("a3")
    w.name_pages("a0", "A.")
    w.name_pages("b0", "B.")
    return w


SCENARIOS: dict[str, Scenario] = {}


def _add(name: str, description: str, setup: Callable[[str], World], *actors: Actor) -> None:
    SCENARIOS[name] = Scenario(name, description, setup, tuple(actors))


_add(
    "seed-race",
    "the 2016 race: a page is isolated, the user frees every object of its zspage, "
    "then putback, migrate, or a second isolation of the page",
    _one_zspage_bc,
    Actor("vm", [isolate("mid"), putback("mid")]),
    Actor("vm2", [isolate("mid"), migrate("mid")]),
    Actor("user", [free("b"), free("c")]),
)
_add(
    "seed-race-reuse",
    "the 2016 race, with a malloc that may build a new zspage on the freed frames and zspage id, "
    "and a second isolation that may land on the new zspage",
    _one_zspage_c,
    Actor("vm", [isolate("mid"), putback("mid")]),
    Actor("user", [free("c"), malloc("x", BIG)]),
    Actor("vm2", [isolate("head")]),
)
_add(
    "seed-race-aftermath",
    "the 2016 race, then the user goes on allocating, writing and freeing in the class: "
    "a broken protocol's damage shows as a later malloc failing, even to a checker without check()",
    _one_zspage_c,
    Actor("vm", [isolate("mid"), putback("mid")]),
    Actor("user", [free("c"), malloc("x", BIG), write("x"), free("x"), malloc("y", BIG), write("y")]),
)
_add(
    "migrate-vs-malloc-free",
    "isolate and migrate the middle page while two users free and malloc in the same class "
    "(a new object may land in the isolated page before it is copied)",
    _one_zspage_abc,
    Actor("vm", [isolate("mid"), migrate("mid")]),
    Actor("user", [free("c"), malloc("x", SMALL), write("x")]),
    Actor("user2", [free("b")]),
)
_add(
    "two-pages",
    "two pages of one zspage isolated at once, one migrated and one put back, while its objects go",
    _one_zspage_bc,
    Actor("vm", [isolate("head"), migrate("head")]),
    Actor("vm2", [isolate("mid"), putback("mid")]),
    Actor("user", [free("b"), free("c")]),
)
_add(
    "compact-vs-migration",
    "zs_compact empties one of two sparse zspages while a page of each is isolated "
    "(one then migrated, the other put back)",
    _two_sparse_zspages,
    Actor("compactor", [compact()]),
    Actor("vm", [isolate("A.head"), migrate("A.head")]),
    Actor("vm2", [isolate("B.head"), putback("B.head")]),
)
_add(
    "deferred-vs-migration",
    "a page lock held while the zspage empties defers its free; the deferred free races with the "
    "migration of another page of that zspage",
    _one_zspage_c,
    Actor("vm", [isolate("mid"), migrate("mid")]),
    Actor("locker", [lock("head"), unlock("head")]),
    Actor("user", [free("c")]),
    Actor("worker", [flush()]),
)
_add(
    "malloc-reuses-empty",
    "a zspage emptied while a page of it is locked (its free deferred: it waits on the empty list) "
    "or isolated; a malloc may take it back",
    _one_zspage_c,
    Actor("vm", [isolate("mid"), putback("mid")]),
    Actor("locker", [lock("tail"), unlock("tail")]),
    Actor("user", [free("c"), malloc("x", SMALL)]),
)
_add(
    "map-vs-migration",
    "a reader maps an object in place while its page is isolated and migrated: migration must back "
    "off (busy) until the reader is done, and the object must not move under it",
    _one_zspage_abc,
    Actor("vm", [isolate("head"), migrate("head"), putback("head")]),
    Actor("reader", [map_begin("a"), map_end("a")]),
    Actor("user", [write("b")]),
)
_add(
    "map-spanning-vs-migration",
    "a reader maps, in place, the part of object b that lies in the middle page (b starts in the "
    "head page and spans the two) while the middle page is isolated and migrated: no page of b's "
    "zspage may move while it is mapped (issue 10, item 1: the 2016 code honoured only the pins "
    "of the objects that start in the page it moves)",
    _one_zspage_abc,
    Actor("vm", [isolate("mid"), migrate("mid"), putback("mid")]),
    Actor("reader", [map_begin("b", offset=1100, length=1000), map_end("b")]),
)
_add(
    "vm-compaction",
    "Memory.compact and evacuate move a zspage's pages while the VM holds one of them isolated "
    "and the user frees",
    _hole_below,
    Actor("mm", [mm_compact()]),
    Actor("offline", [evacuate("B.tail")]),
    Actor("vm", [isolate("B.mid"), migrate("B.mid")]),
    Actor("user", [free("b1")]),
)
_add(
    "stress",
    "a bigger mix for random exploration: two zspages; isolation, migration and putback of a page "
    "of each, a page lock that may defer a free, a user freeing, allocating and writing, "
    "zs_compact, the deferred free and Memory.compact",
    _stress_setup,
    Actor("vm", [isolate("A.mid"), migrate("A.mid"), isolate("B.head"), putback("B.head")]),
    Actor("user", [free("a1"), malloc("x", SMALL), write("x"), free("b0"), free("a0")]),
    Actor("pool", [compact(), flush(), mm_compact()]),
    Actor("locker", [lock("B.tail"), unlock("B.tail")]),
)

#: the scenarios small enough to explore exhaustively in a few seconds
EXHAUSTIVE = tuple(name for name in SCENARIOS if name != "stress")


def run_named(
    name: str,
    protocol: str = "mainline",
    exhaustive: bool = True,
    *,
    n: int = 200,
    seed: int = 0,
    echo: Callable[[str], object] = print,
    as_json: bool = False,
    backend: str = "both",
) -> int:
    """Explore a built-in scenario (or "all") and print the report; 0 if nothing failed, else 1.

    The entry point of ``zsmalloc protocheck``; ``as_json`` prints one JSON
    list of :meth:`Report.to_dict` instead of the text.  ``backend`` is
    "model", "engine" or "both" (each scenario on the model, then on the
    engine).
    """
    backends = list(BACKENDS) if backend == "both" else [backend]
    if not set(backends) <= set(BACKENDS):
        raise ValueError(f"backend must be one of {(*BACKENDS, 'both')}, not {backend!r}")
    if name == "all":
        names = list(EXHAUSTIVE if exhaustive else SCENARIOS)
    elif name in SCENARIOS:
        names = [name]
    else:
        raise ValueError(f"unknown scenario {name!r}; the scenarios are {', '.join(SCENARIOS)} (or 'all')")
    status = 0
    reports = []
    runs = [(sc_name, b) for sc_name in names for b in backends]
    for i, (sc_name, b) in enumerate(runs):
        sc = SCENARIOS[sc_name]
        if exhaustive:
            report = explore_exhaustive(sc, protocol, backend=b)
        else:
            report = explore_random(sc, protocol, n, seed, backend=b)
        reports.append(report.to_dict())
        if not as_json:
            if i:
                echo("")
            echo(report.render())
        if not report.ok:
            status = 1
    if as_json:
        echo(json.dumps(reports, indent=2))
    return status
