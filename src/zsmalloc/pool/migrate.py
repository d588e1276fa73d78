"""zsmalloc's movable-page callbacks: two protocols, and the broken one the review caught.

A pool registers one of these with its :class:`~zsmalloc.mm.Memory`; the VM
calls ``isolate`` / ``migrate`` / ``putback`` (the kernel's ``zs_page_isolate``
/ ``zs_page_migrate`` / ``zs_page_putback``, see ``zsmalloc.mm.migrate``).
The VM's side has the 6.17 names: ``isolate_movable_ops_page`` (was
``isolate_movable_page``) sets ``PageMovableOpsIsolated`` (was
``PG_isolated``, still our flag's name).

``mainline`` (default; 5.17 and later, as in 6.17)
    isolate: accept, unless the page no longer belongs to a zspage.
    migrate: pool lock, class lock, zspage write-trylock (busy: -EAGAIN while a
    reader maps an object of the zspage); copy the page; point the handle of
    every allocated object that starts in it at the new page (same index);
    ``replace_sub_page``; drop the old page.  A page whose zspage was destroyed
    while it was isolated is "migrated" without a copy.
    putback: nothing to do.
    The zspage stays on its fullness list throughout, so zs_free may empty and
    destroy it while one of its pages is isolated: the VM's reference keeps
    the frame alive, and the callbacks tolerate the destroyed page.

``2016`` (the design merged in 4.8, from the reviewed patch)
    isolate: refuse an empty zspage; the first isolated page takes the zspage
    off its fullness list (no allocation or compaction can pick it), and the
    zspage counts its isolated pages.
    migrate: freeze (pin) every allocated object that starts in the page
    (busy if one is pinned: a caller maps it), take the zspage's migrate lock
    for writing (busy while any object of the zspage is mapped: 4.8's
    migrate rwlock, which also keeps the second page of a mapped object that
    spans two pages in place), copy, re-point, replace the page; the last
    isolated page to leave (migrated or put back) puts the zspage back on the
    list its inuse calls for, and an empty one goes to the deferred free.
    zs_free never destroys an isolated zspage.

``2016-v3`` (deliberately broken, for the checker's tests)
    The 2016 protocol as reviewed in v3 of the patch: zs_free destroys a
    zspage even while one of its pages is isolated, and the isolated page keeps
    its stale descriptor; the putback that follows then works on a zspage
    that no longer exists (the race Chulmin Kim reported in April 2016).

Locking, for both: page lock (held by the VM) -> pool lock -> class lock ->
zspage lock.  In the 2016 kernel the pool lock did not exist: a per-zspage
migrate rwlock and per-handle pin bits did its job.  Here the pool lock is
taken by both protocols, and the 2016 pins are kept as a set of pinned handle
slots that ``map`` adds to and migrate checks, so that a mapped object stops
its page from moving in both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zsmalloc.mm import EAGAIN, MIGRATEPAGE_SUCCESS, PAGE_SHIFT, PAGE_SIZE, MigrateMode, PG_movable
from zsmalloc.pool.constants import OBJ_INDEX_BITS

if TYPE_CHECKING:
    from zsmalloc.pool.zsmalloc import Pool, SizeClass, Zspage

PROTOCOLS = ("mainline", "2016", "2016-v3")


class MainlineMovableOps:
    """zs_page_isolate / zs_page_migrate / zs_page_putback, current mainline."""

    name = "mainline"
    #: zs_free may destroy a zspage that has isolated pages
    free_destroys_isolated = True
    #: an isolated page keeps its descriptor when its zspage is destroyed (the v3 bug)
    keeps_isolated_descriptor = False

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def page_is_ours(self, pfn: int) -> bool:
        """Does the page still belong to a zspage of this pool?"""
        mem = self.pool.memory
        return bool(mem.flags[pfn] & PG_movable) and mem.movable_ops[pfn] == self.pool._ops_id

    def isolate(self, pfn: int, mode: MigrateMode) -> bool:
        """``zs_page_isolate`` (6.17): accept a page that still belongs to a zspage."""
        # The page is locked, so its zspage cannot be destroyed now:
        # free_zspage needs every page lock of the zspage.
        return self.page_is_ours(pfn)

    def migrate(self, dst: int, src: int, mode: MigrateMode) -> int:
        """``zs_page_migrate`` (6.17): move page ``src`` of a zspage to ``dst``."""
        pool = self.pool
        if not self.page_is_ours(src):  # destroyed while isolated: nothing to move
            return MIGRATEPAGE_SUCCESS
        with pool._lock:  # the write side
            zspage = pool.get_zspage(src)
            cls = pool.zspage_class(zspage)
            with cls.lock:
                if not pool.zspage_write_trylock(zspage):
                    return EAGAIN
                try:
                    self.move_page(cls, zspage, dst, src)
                finally:
                    pool.zspage_write_unlock(zspage)
                self.after_migrate(cls, zspage)
        self.release_old_page(src)
        return MIGRATEPAGE_SUCCESS

    def putback(self, pfn: int) -> None:
        """``zs_page_putback`` (6.17): nothing to do."""

    # ------------------------------------------------------------------

    def move_page(
        self, cls: SizeClass, zspage: Zspage, dst: int, src: int, objs: list[tuple[int, int]] | None = None
    ) -> None:
        """Copy ``src`` into ``dst``, re-point its objects' handles, and swap it in the chain.

        The body of ``zs_page_migrate`` under its locks.  ``objs`` is
        ``pool.objs_in_page(cls, zspage, src)`` when the caller already has it.
        """
        pool = self.pool
        mem = pool.memory
        buf = mem.buf
        d, s = dst << PAGE_SHIFT, src << PAGE_SHIFT
        buf[d : d + PAGE_SIZE] = buf[s : s + PAGE_SIZE]  # copy_page
        if objs is None:
            objs = pool.objs_in_page(cls, zspage, src)
        for handle, obj_idx in objs:
            pool.record_obj(handle, (dst << OBJ_INDEX_BITS) | obj_idx)
        pool.replace_sub_page(cls, zspage, dst, src)
        mem.get_page(dst)  # the pool's reference on its new page

    def after_migrate(self, cls: SizeClass, zspage: Zspage) -> None:
        """Protocol hook, under the class lock, after a page of the zspage moved."""

    def release_old_page(self, src: int) -> None:
        """``reset_zpdesc`` and ``zpdesc_put`` of the page that moved away."""
        mem = self.pool.memory
        mem.reset_page(src)
        mem.put_page(src)  # the pool's reference; the VM drops its own


class Seed2016MovableOps(MainlineMovableOps):
    """The merged 2016 design: list isolation, isolated-page counts, pinned objects."""

    name = "2016"
    free_destroys_isolated = False

    def isolate(self, pfn: int, mode: MigrateMode) -> bool:
        """``zs_page_isolate`` (4.8): take the zspage off its list at its first isolated page."""
        if not self.page_is_ours(pfn):
            return False
        pool = self.pool
        zspage = pool.get_zspage(pfn)
        cls = pool.zspage_class(zspage)
        with cls.lock:
            if zspage.inuse == 0:  # an empty zspage is about to be freed
                return False
            if zspage.isolated == 0:
                pool.remove_zspage(cls, zspage)  # no allocation, no compaction may pick it now
            zspage.isolated += 1
        return True

    def migrate(self, dst: int, src: int, mode: MigrateMode) -> int:
        """``zs_page_migrate`` (4.8): freeze the page's objects, move it, put the zspage back."""
        pool = self.pool
        if not self.page_is_ours(src):
            return MIGRATEPAGE_SUCCESS
        with pool._lock:
            zspage = pool.get_zspage(src)
            cls = pool.zspage_class(zspage)
            with cls.lock:
                # trypin_tag on every object that starts in the page: one that a
                # caller has mapped (pinned) keeps the page where it is.  The
                # copy below runs under the pool lock, which stands for the pins
                # the 2016 code held on the other objects meanwhile.
                objs = pool.objs_in_page(cls, zspage, src)
                if any(pool.tag_pinned(handle) for handle, _ in objs):
                    return EAGAIN
                # migrate_write_lock: 4.8's per-zspage migrate rwlock, which
                # zs_map_object held for reading across the whole mapping, so
                # that no page of the zspage moves under a mapped object (the
                # second page of an object that spans two pages included; the
                # pins above only cover objects that start in this page)
                if not pool.zspage_write_trylock(zspage):
                    return EAGAIN
                try:
                    self.move_page(cls, zspage, dst, src, objs)
                finally:
                    pool.zspage_write_unlock(zspage)
                self.after_migrate(cls, zspage)
        self.release_old_page(src)
        return MIGRATEPAGE_SUCCESS

    def after_migrate(self, cls: SizeClass, zspage: Zspage) -> None:
        self.dec_isolation(cls, zspage)

    def putback(self, pfn: int) -> None:
        """``zs_page_putback`` (4.8): the last isolated page puts the zspage back on its list."""
        pool = self.pool
        zspage = pool.get_zspage(pfn)
        cls = pool.zspage_class(zspage)
        with cls.lock:
            self.dec_isolation(cls, zspage)

    def dec_isolation(self, cls: SizeClass, zspage: Zspage) -> None:
        """One isolated page left; the last one puts the zspage back (``putback_zspage_deferred``)."""
        pool = self.pool
        zspage.isolated -= 1
        if zspage.isolated == 0:
            fg = pool.putback_zspage(cls, zspage)
            if fg == 0:
                pool.kick_deferred_free()


class BrokenV3MovableOps(Seed2016MovableOps):
    """The 2016 protocol with the race the review found.  Never use it but to test the checker."""

    name = "2016-v3"
    free_destroys_isolated = True
    keeps_isolated_descriptor = True  # so the putback below reads a stale zspage id


def movable_ops_for(pool: Pool, protocol: str) -> MainlineMovableOps:
    """The callbacks of ``protocol`` for ``pool`` (the kernel registers ``zsmalloc_mops``)."""
    try:
        cls = {
            "mainline": MainlineMovableOps,
            "2016": Seed2016MovableOps,
            "2016-v3": BrokenV3MovableOps,
        }[protocol]
    except KeyError:
        raise ValueError(f"migration protocol must be one of {PROTOCOLS}, not {protocol!r}") from None
    return cls(pool)
