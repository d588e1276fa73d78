"""The engine's Pool and Memory: ``zsmalloc._engine`` (Rust) behind the model's API.

``zsmalloc._engine`` does the work: the arena, the descriptors, the page
allocator and the page locks (``Memory``), and the allocator itself
(``Pool``: size classes, zspages, handles, fullness groups, object access,
compaction, the deferred free), all in Rust structs and tables.  This module
adds what is formatting rather than allocation: the stats as the
dataclasses of ``zsmalloc.pool.stats``, the kernel's debugfs text, the
consistency check (``zsmalloc.debug``, shared with the model), and the
context-manager protocol.

The engine's ``Memory`` has the model's VM calls too (``isolate_movable_page``,
``migrate_pages``, ``putback_movable_page``, ``move_pages``, ``evacuate``,
``compact``), and takes movable-page owners written in Python
(``register_movable_ops``); its pools answer the VM with the mainline, 2016
or 2016-v3 callbacks in Rust.  The result types are the model's dataclasses
(``zsmalloc.mm.migrate.MigrateResult`` and the compaction results).
"""

from __future__ import annotations

from typing import Any

from zsmalloc import _engine
from zsmalloc.errors import PoolClosedError
from zsmalloc.pool import legacy
from zsmalloc.pool.common import PoolProtocols
from zsmalloc.pool.constants import FULLNESS_LEGACY, ZS_INUSE_RATIO_100
from zsmalloc.pool.handles import handle_tag_arg, hold_handle_tag, release_handle_tag, reserve_handle_tag
from zsmalloc.pool.kernels import pool_shape
from zsmalloc.pool.stats import ClassStats, PoolStats

Memory = _engine.Memory
#: the zone's buddy allocator (zsmalloc_core::mm::zone), with the API of ``zsmalloc.model.Zone``
Zone = _engine.Zone

__all__ = ["Memory", "Pool", "Zone"]


class Pool(_engine.Pool, PoolProtocols):
    """A zsmalloc pool on the engine: the same API as ``zsmalloc.model.Pool``.

    ``Pool(name="zsmalloc", chain_size=8, memory=None, max_pages=None, *,
    class_rule="min-waste", fullness="ratio", kernel=None, migration="mainline",
    auto_compact_pages=None, background_work=True, handle_tag=None)``;
    ``kernel`` sets the chain size, class rule and grouping as that kernel's
    zsmalloc has them (pool/kernels.py).
    """

    def __new__(
        cls,
        name: str = "zsmalloc",
        chain_size: int | None = None,
        memory: Memory | None = None,
        max_pages: int | None = None,
        *,
        class_rule: str | None = None,
        fullness: str | None = None,
        kernel: str | None = None,
        handle_tag: int | None = None,
        **kwargs: Any,
    ) -> Pool:
        shape = pool_shape(kernel, chain_size, class_rule, fullness)
        args = (name, shape.chain_size, memory, max_pages)
        kwargs.update(class_rule=shape.class_rule, fullness=shape.fullness)
        # the tag comes from the registry both implementations share (pool/handles.py)
        if handle_tag is not None:
            return super().__new__(cls, *args, handle_tag=handle_tag_arg(handle_tag), **kwargs)
        tag = reserve_handle_tag()
        try:
            pool = super().__new__(cls, *args, handle_tag=tag, **kwargs)
        except BaseException:
            release_handle_tag(tag)
            raise
        hold_handle_tag(tag, pool)
        return pool

    def class_stats(self) -> list[ClassStats]:
        """One row per canonical class: the columns of debugfs ``classes``."""
        top = legacy.ZS_FULL if self.fullness == FULLNESS_LEGACY else ZS_INUSE_RATIO_100
        return [
            ClassStats(
                index=index,
                size=size,
                inuse_ratio=tuple(groups[1 : top + 1]),
                obj_allocated=allocated,
                obj_used=used,
                pages_per_zspage=pages,
                objs_per_zspage=objs,
                freeable=freeable,
                empty_zspages=groups[0],
                fullness=self.fullness,
            )
            for index, size, groups, allocated, used, pages, objs, freeable in self._class_rows()
        ]

    def stats(self) -> PoolStats:
        rows = self.class_stats()
        return PoolStats(
            name=self.name,
            pages_allocated=self.pages_allocated,
            pages_compacted=self.pages_compacted,
            objs_allocated=sum(r.obj_allocated for r in rows),
            objs_inuse=sum(r.obj_used for r in rows),
            bytes_requested=self._bytes_requested(),
            freeable_pages=sum(r.freeable for r in rows),
            objs_compacted=self.objs_compacted,
            compactions=self.nr_compactions,
            deferred_frees=self.nr_deferred_frees,
            chain_size=self.chain_size,
            huge_class_size=self.huge_class_size,
        )

    def format_classes(self) -> str:
        """The kernel's debugfs ``zsmalloc/<pool>/classes`` text, formatted by the engine."""
        return self._format_classes()

    def check(self) -> None:
        """Walk every structure and raise CorruptionError on any inconsistency."""
        from zsmalloc.debug import check_snapshot, snapshot

        if self.closed:
            raise PoolClosedError(f"pool {self.name!r} is closed")
        check_snapshot(snapshot(self))

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.pages_allocated} pages"
        return f"<Pool {self.name!r}: {state}>"
