"""Arguments a hostile or careless caller passes (issue 10, items 12 and 13, the pool's part).

Each is refused with a typed error and changes nothing, or (a numpy
integer handle) accepted as the int it is; a closed Memory answers every
VM call with PoolClosedError.
"""

from __future__ import annotations

import numpy
import pytest

from zsmalloc import Pool, PoolClosedError

pytestmark = pytest.mark.usefixtures("each_backend")


def test_malloc_of_a_bool_is_refused() -> None:
    with Pool() as pool:
        for size in (True, False):
            with pytest.raises(TypeError, match="not bool"):
                pool.malloc(size)
        assert len(pool) == 0 and pool.total_pages == 0
        pool.check()


@pytest.mark.parametrize("bad", [1.5, True, "10"])
def test_a_page_cap_that_is_no_int_is_refused(bad: object) -> None:
    with pytest.raises(TypeError):
        Pool(max_pages=bad)  # type: ignore[arg-type]
    with Pool(max_pages=10) as pool:
        with pytest.raises(TypeError):
            pool.max_pages = bad  # type: ignore[assignment]
        assert pool.max_pages == 10


def test_a_negative_page_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="max_pages must be >= 0"):
        Pool(max_pages=-1)
    with Pool() as pool:
        with pytest.raises(ValueError):
            pool.max_pages = -1
        assert pool.max_pages is None
        pool.max_pages = numpy.int64(7)  # any integer
        assert pool.max_pages == 7


def test_numpy_integers_are_handles() -> None:
    with Pool() as pool:
        h = pool.malloc(100)
        pool.write(numpy.uint64(h), b"n" * 100)
        assert pool.read(numpy.int64(h)) == b"n" * 100
        pool.free(numpy.int64(h))
        assert len(pool) == 0
        pool.check()


def test_a_closed_memory_refuses_the_vm_calls() -> None:
    pool = Pool()
    h = pool.malloc(3000)
    pfn, _ = pool.locate(h)
    memory = pool.memory
    pool.close()  # the pool made its Memory, and closes it with itself
    calls = {
        "compact": memory.compact,
        "evacuate": lambda: memory.evacuate(0, 8),
        "move_pages": lambda: memory.move_pages([pfn]),
        "migrate_pages": lambda: memory.migrate_pages([pfn]),
        "isolate_movable_page": lambda: memory.isolate_movable_page(pfn),
        "putback_movable_page": lambda: memory.putback_movable_page(pfn),
        "shrink_arena": memory.shrink_arena,
        "drain_pages": memory.drain_pages,
    }
    for name, call in calls.items():
        with pytest.raises(PoolClosedError):
            call()
        assert memory.nr_used == 0, name
