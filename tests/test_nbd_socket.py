"""The Unix socket of ``zsmalloc serve`` and long zeroing requests (issue 10, items 5, 6 and 10).

- Nobody but the owner can connect at any moment: the socket never exists
  at its path with the umask's mode.
- A path where another server answers is refused; a stale socket is
  replaced; a server removes only its own socket when it stops.
- NBD_CMD_WRITE_ZEROES of any length within the export succeeds, as TRIM does.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import tempfile

import pytest

from nbd_helpers import served
from zsmalloc.nbd import NbdClient, NbdServer, ServerThread
from zsmalloc.zram import ZramDevice

pytestmark = pytest.mark.timeout(60)


def _answers(path: str) -> bool:
    with NbdClient.open(path) as c:
        return c.read(0, 16) == bytes(16)


def test_the_socket_never_has_the_umask_mode(monkeypatch) -> None:
    """With umask 000, the path is either absent or mode 0600 whenever the server changes a mode."""
    seen: list[object] = []
    real_chmod = os.chmod
    with tempfile.TemporaryDirectory(prefix="nbd") as tmp:
        path = os.path.join(tmp, "s")

        def watching_chmod(target, mode, *args, **kwargs):  # the moment the old code raced
            try:
                seen.append(stat.S_IMODE(os.lstat(path).st_mode))
            except FileNotFoundError:
                seen.append(None)
            return real_chmod(target, mode, *args, **kwargs)

        old_umask = os.umask(0)
        monkeypatch.setattr(os, "chmod", watching_chmod)
        try:
            with ZramDevice(1 << 20) as dev, ServerThread(NbdServer(dev), unix_path=path):
                assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
                assert _answers(path)
        finally:
            os.umask(old_umask)
    assert seen and all(mode in (None, 0o600) for mode in seen), seen


def test_a_path_where_a_server_answers_is_refused() -> None:
    with served(1 << 20) as first:
        path = first.socket_path
        with ZramDevice(1 << 20) as dev:
            second = NbdServer(dev)
            with pytest.raises(FileExistsError, match="another server listens"):
                asyncio.run(second.listen_unix(path))
        assert _answers(path), "the first server's socket survives"


def test_a_path_that_is_no_socket_is_refused() -> None:
    with tempfile.TemporaryDirectory(prefix="nbd") as tmp, ZramDevice(1 << 20) as dev:
        path = os.path.join(tmp, "s")
        with open(path, "w") as f:
            f.write("precious")
        with pytest.raises(FileExistsError, match="not a socket"):
            asyncio.run(NbdServer(dev).listen_unix(path))
        with open(path) as f:
            assert f.read() == "precious"


def test_a_stale_socket_is_replaced() -> None:
    with tempfile.TemporaryDirectory(prefix="nbd") as tmp, ZramDevice(1 << 20) as dev:
        path = os.path.join(tmp, "s")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
            dead.bind(path)  # bound, never listening: a connect is refused
        with ServerThread(NbdServer(dev), unix_path=path):
            assert _answers(path)
        assert not os.path.exists(path)


def test_a_server_removes_only_its_own_socket() -> None:
    with tempfile.TemporaryDirectory(prefix="nbd") as tmp:
        path = os.path.join(tmp, "s")
        with ZramDevice(1 << 20) as dev_a, ZramDevice(1 << 20) as dev_b:
            first = ServerThread(NbdServer(dev_a), unix_path=path)
            first.__enter__()
            os.unlink(path)  # someone removed it; a second server takes the path
            with ServerThread(NbdServer(dev_b), unix_path=path):
                first.__exit__(None, None, None)
                assert os.path.exists(path), "the first server removed the second one's socket"
                assert _answers(path)


def test_write_zeroes_of_any_length_within_the_export() -> None:
    size = 80 << 20
    with served(size) as st, NbdClient.open(st.socket_path) as c:
        c.write(0, b"\xff" * 8192)
        c.write(size - 4096, b"\xee" * 4096)
        c.write_zeroes(4096, size - 8192)  # 80 MiB - 8 KiB: more than the 32 MiB maximum request
        assert c.read(0, 4096) == b"\xff" * 4096
        assert c.read(4096, 4096) == bytes(4096)
        assert c.read(size - 4096, 4096) == b"\xee" * 4096
