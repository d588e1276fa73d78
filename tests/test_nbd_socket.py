"""The Unix socket of ``zsmalloc serve`` and long zeroing requests (issue 10, items 5, 6 and 10).

The sockets are made by :mod:`zsmalloc.nbd.server` and handed to nbdkit.

- Nobody but the owner can connect at any moment: the socket is bound with
  umask 177 in a private directory, and never exists at its path with the
  caller's umask mode.
- A path where another server answers is refused; a stale socket is
  replaced; a server removes only its own socket when it stops.
- NBD_CMD_WRITE_ZEROES of any length within the export succeeds, as TRIM does.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile

import pytest

from nbd_client import NbdClient
from nbd_helpers import need_tools, served
from zsmalloc.nbd import NbdServer
from zsmalloc.nbd import server as nbd_server

pytestmark = pytest.mark.timeout(60)


def _answers(path: str) -> bool:
    with NbdClient.open(path) as c:
        return c.read(0, 16) == bytes(16)


def test_the_socket_never_has_the_umask_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """With umask 000, the socket is 0600 from its bind, and its directory 0700, before it takes the path."""
    need_tools("nbdkit")
    seen: list[tuple[int, int]] = []
    real_rename = os.rename

    def watching_rename(src, dst, *args, **kwargs):  # the moment the socket becomes reachable at its path
        seen.append(
            (stat.S_IMODE(os.lstat(src).st_mode), stat.S_IMODE(os.stat(os.path.dirname(src)).st_mode))
        )
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(nbd_server.os, "rename", watching_rename)
    with tempfile.TemporaryDirectory(prefix="nbd") as tmp:
        path = os.path.join(tmp, "s")
        old_umask = os.umask(0)
        try:
            with NbdServer(1 << 20, unix_path=path):
                assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
                assert _answers(path)
        finally:
            os.umask(old_umask)
    assert seen == [(0o600, 0o700)]


def test_a_path_where_a_server_answers_is_refused() -> None:
    with served(1 << 20) as first:
        path = first.socket_path
        assert path is not None
        with pytest.raises(FileExistsError, match="another server listens"):
            NbdServer(1 << 20, unix_path=path).start()
        assert _answers(path), "the first server's socket survives"


def test_a_path_that_is_no_socket_is_refused() -> None:
    with tempfile.TemporaryDirectory(prefix="nbd") as tmp:
        path = os.path.join(tmp, "s")
        with open(path, "w") as f:
            f.write("precious")
        with pytest.raises(FileExistsError, match="not a socket"):
            NbdServer(1 << 20, unix_path=path).start()
        with open(path) as f:
            assert f.read() == "precious"


def test_a_stale_socket_is_replaced() -> None:
    need_tools("nbdkit")
    with tempfile.TemporaryDirectory(prefix="nbd") as tmp:
        path = os.path.join(tmp, "s")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
            dead.bind(path)  # bound, never listening: a connect is refused
        with NbdServer(1 << 20, unix_path=path):
            assert _answers(path)
        assert not os.path.exists(path)


def test_a_server_removes_only_its_own_socket() -> None:
    need_tools("nbdkit")
    with tempfile.TemporaryDirectory(prefix="nbd") as tmp:
        path = os.path.join(tmp, "s")
        first = NbdServer(1 << 20, unix_path=path).start()
        try:
            os.unlink(path)  # someone removed it; a second server takes the path
            with NbdServer(1 << 20, unix_path=path):
                assert first.stop()["check"] == "ok"
                assert os.path.exists(path), "the first server removed the second one's socket"
                assert _answers(path)
        finally:
            first.stop()


def test_write_zeroes_and_trim_of_any_length_within_the_export() -> None:
    size = 80 << 20
    with served(size) as st, NbdClient.open(st.socket_path) as c:
        c.write(0, b"\xff" * 8192)
        c.write(size - 4096, b"\xee" * 4096)
        c.write_zeroes(4096, size - 8192)  # 80 MiB - 8 KiB: more than the 32 MiB maximum request
        assert c.read(0, 4096) == b"\xff" * 4096
        assert c.read(4096, 4096) == bytes(4096)
        assert c.read(size - 4096, 4096) == b"\xee" * 4096
        c.write(8192, b"\xdd" * 4096)
        c.trim(0, size)  # the whole export at once
        assert c.read(0, 16384) == bytes(16384)
