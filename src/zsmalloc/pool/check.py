"""``Pool.check()`` of the model: the snapshot's check, then the state only the model keeps.

The snapshot's check (``zsmalloc.debug.check_snapshot``) is the one every
implementation runs; it is taken under the pool lock and every class lock,
so it sees a consistent state.  What the snapshot format does not carry,
because it is the model's own bookkeeping, is checked here: the isolated
count of every zspage id in the cache (zero: a zspage's count is cleared
when it is freed).
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
    # consistent under the cache lock: a zspage is freed (its isolated count
    # cleared) before the cache takes its id back
    with pool._cache_lock:
        for zid in pool._free_zspage_ids:
            isolated = pool._zspages[zid].isolated
            if isolated:
                raise CorruptionError(f"free zspage id {zid} has {isolated} isolated pages")
