"""Helpers shared by the test modules: bounded waits and recognisable byte patterns."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

WAIT = 10.0  # seconds any test waits for another thread before it fails


def wait_until(cond: Callable[[], bool], timeout: float = WAIT, poll: float = 0.005) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return cond()


@functools.cache
def _unit(tag: int) -> bytes:
    return bytes((tag * 131 + i * 7) & 0xFF for i in range(251))


def pattern(tag: int, size: int) -> bytes:
    """``size`` bytes that differ from tag to tag and never repeat within a page."""
    return (_unit(tag % 4096) * (size // 251 + 1))[:size]
