"""A mapped object stays pinned while any view of it lives (issue 10, item 2).

``with pool.map(h) as view`` pins the object: compaction and migration leave
its zspage alone.  Views derived from the mapping (``view[:]``,
``memoryview(view)``, ``numpy.frombuffer(view)``) may outlive the ``with``;
the pin then lasts until the last of them is released, so no view ever sees
bytes that are not its object's:

- ``free`` of a pinned object raises ``ObjectMappedError`` and changes nothing;
- migration and compaction back off from its pages;
- once the last view is gone, the object is an ordinary one again.
"""

from __future__ import annotations

import gc

import numpy
import pytest

from zsmalloc import Memory, ObjectMappedError, Pool

pytestmark = pytest.mark.usefixtures("each_backend")

SIZE = 3000  # class 3072: its objects span two pages


def _pool() -> Pool:
    return Pool(name="pins", memory=Memory(256))


def _filled(pool: Pool, n: int = 8) -> list[tuple[int, bytes]]:
    out = []
    for i in range(n):
        h = pool.malloc(SIZE)
        data = bytes([i + 1]) * SIZE
        pool.write(h, data)
        out.append((h, data))
    return out


def test_free_inside_the_mapping_is_refused() -> None:
    with _pool() as pool:
        (h, data), *_ = _filled(pool)
        with pool.map(h) as view:
            with pytest.raises(ObjectMappedError):
                pool.free(h)
            assert bytes(view) == data
        assert pool.read(h) == data
        pool.check()
        pool.free(h)


@pytest.mark.parametrize(
    "derive",
    [
        lambda v: v[:],
        lambda v: memoryview(v),
        lambda v: v[100:200],
        lambda v: numpy.frombuffer(v, dtype=numpy.uint8),
    ],
    ids=["slice", "memoryview", "sub-slice", "numpy"],
)
def test_a_derived_view_keeps_the_pin_after_the_with(derive) -> None:
    with _pool() as pool:
        (h, data), *_ = _filled(pool)
        with pool.map(h) as view:
            kept = derive(view)
        with pytest.raises(ObjectMappedError):
            pool.free(h)
        assert bytes(kept) == data[: len(bytes(kept))] or bytes(kept) == data[100:200]
        pool.check()
        del kept
        gc.collect()
        pool.free(h)
        pool.check()


def test_migration_and_compaction_leave_a_pinned_object_alone() -> None:
    with _pool() as pool:
        objs = _filled(pool, 12)
        h, data = objs[5]
        with pool.map(h) as view:
            kept = memoryview(view)
        pfns = pool.zspage_pfns(h)
        where = pool.locate(h)
        result = pool.memory.move_pages(pfns)
        assert result.succeeded == 0, "a page of a pinned zspage moved"
        for other, _ in objs[:5] + objs[6:]:
            pool.free(other)
        pool.compact()
        assert pool.locate(h) == where
        assert pool.zspage_pfns(h) == pfns
        assert bytes(kept) == data
        del kept
        gc.collect()
        moved = pool.memory.move_pages(pool.zspage_pfns(h))
        assert moved.succeeded > 0, "the pages of an unpinned zspage move again"
        assert pool.read(h) == data
        pool.check()
