"""``Pool.check()`` of the model: the snapshot's check, then the state only the model keeps.

The snapshot's check (``zsmalloc.debug.check_snapshot``) is the one every
implementation runs; it is taken under the pool lock and every class lock,
so it sees a consistent state.  What the snapshot format does not carry,
because it is the model's own bookkeeping, is checked here: each class's
non-empty mask (the index of its fullness lists that malloc reads) against
its lists, and the isolated count of every zspage id in the cache (zero: a
zspage's count is cleared when it is freed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zsmalloc.debug import check_snapshot, snapshot
from zsmalloc.errors import CorruptionError

if TYPE_CHECKING:
    from zsmalloc.pool.zsmalloc import Pool


def check_pool(pool: Pool) -> None:
    """Raise CorruptionError on the first inconsistency in the pool."""
    check_snapshot(snapshot(pool))
    # each consistent under one lock: a zspage id is freed (its isolated count
    # cleared) before the cache takes it, and a class's lists and mask change
    # together under its lock
    with pool._cache_lock:
        for zid in pool._zs_free:
            if pool._zs_isolated[zid]:
                raise CorruptionError(f"free zspage id {zid} has {pool._zs_isolated[zid]} isolated pages")
    for cls in pool.classes:
        with cls.lock:
            wrong = cls.nonempty ^ sum(1 << fg for fg, lst in enumerate(cls.fullness_list) if lst)
        if wrong:
            fg = (wrong & -wrong).bit_length() - 1
            raise CorruptionError(f"class {cls.index} group {fg}: non-empty mask disagrees with the list")
