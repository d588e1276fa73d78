"""A handle is refused by every pool but its own (issue 10, item 4).

Each pool's handles carry its tag (``zsmalloc/pool/handles.py``), handed out
by one registry that both implementations share: live pools never share a
tag, and a closed pool's tag comes back only after every other one.
"""

from __future__ import annotations

import gc

import pytest

from zsmalloc import InvalidHandleError, Pool, engine, model
from zsmalloc.pool.handles import NR_HANDLE_TAGS

pytestmark = pytest.mark.usefixtures("each_backend")


def _calls(pool: Pool, h: int) -> dict:
    return {
        "free": lambda: pool.free(h),
        "read": lambda: pool.read(h),
        "write": lambda: pool.write(h, b"x"),
        "handle_size": lambda: pool.handle_size(h),
        "locate": lambda: pool.locate(h),
        "map": lambda: pool.map(h).__enter__(),
    }


def test_a_pool_refuses_the_handles_of_another() -> None:
    with Pool(name="a") as a, Pool(name="b") as b:
        assert a.handle_tag != b.handle_tag
        ha, hb = a.malloc(100), b.malloc(100)
        assert ha >> 32 == hb >> 32  # the same slot in each table: only the tag tells them apart
        a.write(ha, b"a" * 100)
        b.write(hb, b"b" * 100)
        for name, call in _calls(a, hb).items():
            with pytest.raises(InvalidHandleError):
                call()
            assert a.read(ha) == b"a" * 100 and b.read(hb) == b"b" * 100, name
        a.check()
        b.check()


def test_the_model_and_the_engine_refuse_each_others_handles() -> None:
    with model.Pool() as m, engine.Pool() as e:
        hm, he = m.malloc(50), e.malloc(50)
        with pytest.raises(InvalidHandleError):
            m.free(he)
        with pytest.raises(InvalidHandleError):
            e.free(hm)
        assert len(m) == len(e) == 1


def test_a_closed_pools_tag_is_not_the_next_ones() -> None:
    pool = Pool()
    tag, h = pool.handle_tag, pool.malloc(10)
    pool.close()
    del pool
    gc.collect()
    with Pool() as other:
        assert other.handle_tag != tag
        with pytest.raises(InvalidHandleError):
            other.free(h)


@pytest.mark.parametrize("bad", [-1, NR_HANDLE_TAGS, True, 1.5])
def test_an_explicit_tag_outside_the_range_is_refused(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        Pool(handle_tag=bad)  # type: ignore[arg-type]


def test_two_pools_given_one_tag_hand_out_the_same_handles() -> None:
    with Pool(handle_tag=9) as a, Pool(handle_tag=9) as b:
        assert a.malloc(10) == b.malloc(10)
        assert a.handle_tag == b.handle_tag == 9
