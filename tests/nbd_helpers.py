"""What the NBD tests share: a served device, reading it back, the real-client tool check, test images."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from nbd_client import NbdClient
from zsmalloc.nbd import Limits, NbdServer

#: when "1" (CI), a missing client tool fails the test instead of skipping it
REQUIRE_CLIENTS = os.environ.get("ZSMALLOC_REQUIRE_NBD_CLIENTS") == "1"


def need_tools(*tools: str) -> None:
    """Skip the test (or fail it under ZSMALLOC_REQUIRE_NBD_CLIENTS=1) unless every tool is on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    why = f"NBD client tools missing: {', '.join(missing)} (Debian: libnbd-bin, qemu-utils, nbdfuse, nbdkit)"
    if REQUIRE_CLIENTS:
        pytest.fail(why + "; ZSMALLOC_REQUIRE_NBD_CLIENTS=1 requires them")
    pytest.skip(why)


@contextlib.contextmanager
def served(size: int = 16 << 20, limits: Limits | None = None, **server_args: object) -> Iterator[NbdServer]:
    """A fresh device served by nbdkit on a Unix socket in a short temporary directory.

    On exit the server is stopped, and the plugin's final check must have passed.
    """
    need_tools("nbdkit")
    with tempfile.TemporaryDirectory(prefix="nbd") as tmp:
        path = os.path.join(tmp, "s")
        srv = NbdServer(size, unix_path=path, limits=limits, **server_args)  # type: ignore[arg-type]
        with srv:
            yield srv
        assert srv.summary is not None and srv.summary["check"] == "ok", srv.summary
        assert srv.summary["exit_status"] == 0, srv.summary


def read_back(srv: NbdServer, offset: int, length: int, step: int = 8 << 20) -> bytes:
    """``length`` bytes at ``offset`` of the export, read by a fresh connection."""
    assert srv.socket_path is not None
    out = bytearray()
    with NbdClient.open(srv.socket_path) as c:
        for at in range(offset, offset + length, step):
            out += c.read(at, min(step, offset + length - at))
    return bytes(out)


def image(size: int, seed: int) -> bytes:
    """``size`` bytes of disk image: runs of random, zero and text-like pages, from ``seed``."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghij klmnop") for _ in range(rng.randint(2, 9))) for _ in range(64)]
    out = bytearray()
    while len(out) < size:
        kind = rng.random()
        run = rng.randint(1, 16) * 4096 + rng.choice((0, 0, 0, rng.randrange(4096)))  # sometimes unaligned
        if kind < 0.3:
            out += rng.randbytes(run)
        elif kind < 0.5:
            out += bytes(run)
        else:
            text = b" ".join(rng.choice(words) for _ in range(run // 4))
            out += text[:run].ljust(run, b".")
    return bytes(out[:size])
