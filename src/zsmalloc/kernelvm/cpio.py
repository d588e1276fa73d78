"""A writer of the "newc" cpio archives that the kernel unpacks as an initramfs.

This module owns the archive format only (what the kernel's init/initramfs.c
reads): each member is a 110-byte ASCII header, its name and its data, both
padded to 4 bytes; a member named ``TRAILER!!!`` ends the archive::

    "070701" ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
     magic   13 fields of 8 hex digits each (check is 0 for newc)
    name\\0 [pad to 4]   data [pad to 4]   ... next member ...   TRAILER!!!\\0 [pad]

Directories, regular files, symbolic links and character devices are enough
for a boot (``/dev/console`` must exist before init opens its console).
Members are streamed to a binary file: a file member's data may be a path,
copied in chunks, so that disk images of tens of MiB never sit in memory.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_CHUNK = 1 << 20


class CpioWriter:
    """Appends members to ``out`` in newc format; :meth:`close` writes the trailer."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 1
        self._offset = 0
        self._names: set[str] = set()

    def _header(
        self, name: str, mode: int, size: int, rdev: tuple[int, int] = (0, 0), nlink: int = 1
    ) -> None:
        name = name.strip("/")
        if name in self._names:
            raise ValueError(f"{name!r} is already in the archive")
        self._names.add(name)
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._ino += 1
        self._write(MAGIC + b"".join(b"%08X" % f for f in fields) + encoded)
        self._pad()

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._offset += len(data)

    def _pad(self) -> None:
        self._write(b"\0" * (-self._offset % 4))

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._header(name, stat.S_IFDIR | perm, 0, nlink=2)

    def file(self, name: str, data: bytes | Path, perm: int = 0o644) -> None:
        """A regular file whose contents are ``data``, or the contents of the file at that path."""
        if isinstance(data, bytes):
            self._header(name, stat.S_IFREG | perm, len(data))
            self._write(data)
        else:
            size = data.stat().st_size
            self._header(name, stat.S_IFREG | perm, size)
            copied = 0
            with data.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    self._write(chunk)
                    copied += len(chunk)
            if copied != size:
                raise OSError(f"{data} changed size while it was archived ({size} -> {copied} bytes)")
        self._pad()

    def symlink(self, name: str, target: str) -> None:
        encoded = target.encode()
        self._header(name, stat.S_IFLNK | 0o777, len(encoded))
        self._write(encoded)
        self._pad()

    def char_device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._header(name, stat.S_IFCHR | perm, 0, rdev=(major, minor))

    def close(self) -> None:
        self._header(TRAILER, 0, 0, nlink=1)


def read_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    """The members of a newc archive as (name, mode, data), the trailer left out; for checks and tests."""
    members: list[tuple[str, int, bytes]] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != MAGIC:
            raise ValueError(f"no newc header at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        body = name_start + namesize + (-(110 + namesize) % 4)
        if name == TRAILER:
            return members
        members.append((name, mode, data[body : body + size]))
        pos = body + size + (-size % 4)
