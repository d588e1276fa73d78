"""Pool tags: the part of every handle that names the pool it belongs to.

A handle is ``slot << 32 | tag << 20 | generation << 1`` (bit 0 clear)::

     63 62            32 31        20 19          1  0
    +--+----------------+------------+-------------+---+
    |0 |  table slot    |  pool tag  | generation  | 0 |
    +--+----------------+------------+-------------+---+

A pool refuses a handle whose tag is not its own, so one pool's handle
never frees or reads another pool's object.  Tags are handed out round
robin over 1..4095, skipping those of pools still alive: a handle of a
closed pool is refused by the next 4094 pools made too, and with 4095 pools
alive the next one cannot be made.  Tag 0 is for pools made with
``handle_tag=0`` (or by the engine without Python); a caller that gives two
pools the same tag says that their handles may be mistaken for each other.

This registry serves both implementations, so that a model pool and an
engine pool in one process never share a tag either.
"""

from __future__ import annotations

import threading
import weakref

from zsmalloc.errors import PoolFullError

HANDLE_TAG_SHIFT = 20
HANDLE_TAG_BITS = 12
NR_HANDLE_TAGS = 1 << HANDLE_TAG_BITS

_lock = threading.Lock()
_live: weakref.WeakValueDictionary[int, object] = weakref.WeakValueDictionary()
_reserved: set[int] = set()
_next = 1


def reserve_handle_tag() -> int:
    """A tag no live pool holds, the next one round robin: held until the pool that takes it
    is made (:func:`hold_handle_tag`) or its making fails (:func:`release_handle_tag`)."""
    global _next
    with _lock:
        for _ in range(NR_HANDLE_TAGS - 1):
            tag, _next = _next, _next % (NR_HANDLE_TAGS - 1) + 1
            if tag not in _live and tag not in _reserved:
                _reserved.add(tag)
                return tag
    raise PoolFullError(f"{NR_HANDLE_TAGS - 1} pools are alive: no handle tag is free for another")


def hold_handle_tag(tag: int, owner: object) -> None:
    """``owner`` (a pool) holds the reserved ``tag`` for as long as it lives."""
    with _lock:
        _reserved.discard(tag)
        _live[tag] = owner


def release_handle_tag(tag: int) -> None:
    """Give back a reserved tag whose pool could not be made."""
    with _lock:
        _reserved.discard(tag)


def handle_tag_arg(tag: object) -> int:
    """An explicit ``handle_tag``: an int within 0..4095."""
    if isinstance(tag, bool) or not isinstance(tag, int):
        raise TypeError(f"handle_tag must be an int, not {type(tag).__name__}")
    if not 0 <= tag < NR_HANDLE_TAGS:
        raise ValueError(f"handle_tag must be within 0..{NR_HANDLE_TAGS - 1}, not {tag}")
    return tag
