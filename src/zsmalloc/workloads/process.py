"""Pages of a live process's anonymous memory, read through ``/proc``: what it would swap to zram.

:func:`snapshot_pages` reads the private writable anonymous mappings of a
process (``rw-p`` lines of ``/proc/PID/maps`` with no file: the ``[heap]``, and
the anonymous mmaps, named ``[anon:...]`` or not, where malloc and pymalloc
keep their arenas; not the stack), in address order, page by page from ``/proc/PID/mem``.  Only resident
or swapped pages are read (bits 63 and 62 of ``/proc/PID/pagemap``): a page
never touched has no memory behind it and would never reach swap.  Reading
stops at ``max_bytes``.  A page that cannot be read (``EIO``) is skipped.

Permission: reading another process's memory is a ptrace access
(``PTRACE_MODE_ATTACH``): the same user and a dumpable target, or
``CAP_SYS_PTRACE``; with Yama's ``ptrace_scope`` at 1 only a descendant may be
read, at 3 none.  When the kernel refuses, :class:`SnapshotNotPermitted` (a
:class:`PermissionError`) is raised before any page is read, so a caller can
fall back to another page source.

:func:`process_pages` without a pid starts a child Python (``-S``, hash seed
0) that builds a heap of about ``max_bytes`` of dicts of strings and ints,
lists of ints, text strings, tuples of floats and bytes, then reads it: as a
child of the caller it stays readable under ``ptrace_scope`` 1.  Every wait is
bounded by ``timeout`` and the child is killed and reaped on the way out,
whatever happens.  The seed fixes what the child builds, not the bytes read:
addresses (ASLR) and allocator state differ between runs.
"""

from __future__ import annotations

import array
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from zsmalloc.workloads.sizes import PAGE_SIZE

_PRESENT_OR_SWAPPED = (1 << 63) | (1 << 62)

#: the child: builds a heap of about argv[2] bytes from seed argv[1], says "ready", waits for stdin to close
_HEAP_CHILD = r"""
import random, sys

rng = random.Random(int(sys.argv[1]))
budget = int(sys.argv[2])
words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(2000)]
heap = []
size = 0
while size < budget:
    kind = rng.random()
    n = rng.randint(4, 64)
    if kind < 0.3:
        heap.append({f"zsmalloc-heap-{rng.choice(words)}-{i}": rng.randrange(1 << 20) for i in range(n)})
        size += 120 * n
    elif kind < 0.55:
        heap.append([rng.randrange(1 << rng.choice((8, 16, 31, 62))) for _ in range(n)])
        size += 40 * n
    elif kind < 0.8:
        heap.append(" ".join(rng.choices(words, k=n)))
        size += 50 + 7 * n
    elif kind < 0.9:
        heap.append(tuple(rng.random() * 1000 for _ in range(n)))
        size += 32 * n
    else:
        heap.append(rng.randbytes(8 * n))
        size += 40 + 8 * n
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.read()
"""


class SnapshotNotPermitted(PermissionError):
    """The kernel refused to let this process read the other's memory (ptrace access)."""


def _anonymous_regions(maps: str) -> Iterator[tuple[int, int]]:
    """(start, end) of the private writable anonymous mappings listed in a ``/proc/PID/maps`` text."""
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5].strip() if len(fields) == 6 else ""
        if fields[1] == "rw-p" and (path in ("", "[heap]") or path.startswith("[anon:")):
            start, end = fields[0].split("-")
            yield int(start, 16), int(end, 16)


def snapshot_pages(pid: int, max_bytes: int) -> list[bytes]:
    """The resident anonymous pages of process ``pid``, in address order, at most ``max_bytes // 4096``.

    Raises :class:`SnapshotNotPermitted` when the kernel refuses the access,
    :class:`ProcessLookupError` when there is no such process.
    """
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read()
        mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except PermissionError as e:
        raise SnapshotNotPermitted(
            f"may not read the memory of process {pid} (ptrace access: same user and dumpable, "
            f"or CAP_SYS_PTRACE; Yama ptrace_scope): {e}"
        ) from e
    except FileNotFoundError as e:
        raise ProcessLookupError(f"no process {pid}") from e
    pages: list[bytes] = []
    left = max_bytes // PAGE_SIZE
    try:
        with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
            for start, end in _anonymous_regions(maps):
                if left <= 0:
                    break
                entries = array.array("Q")
                pagemap.seek(start // PAGE_SIZE * 8)
                entries.frombytes(pagemap.read((end - start) // PAGE_SIZE * 8))
                for i, entry in enumerate(entries):
                    if not entry & _PRESENT_OR_SWAPPED:
                        continue
                    try:
                        page = os.pread(mem, PAGE_SIZE, start + i * PAGE_SIZE)
                    except OSError:
                        continue
                    if len(page) == PAGE_SIZE:
                        pages.append(page)
                        left -= 1
                        if left <= 0:
                            break
    finally:
        os.close(mem)
    return pages


@contextmanager
def heap_child(heap_bytes: int, seed: int = 0, timeout: float = 30.0) -> Iterator[int]:
    """Start a child Python that builds a heap of about ``heap_bytes``; yield its pid once it is built.

    Raises :class:`TimeoutError` when the heap is not built within
    ``timeout`` seconds, :class:`RuntimeError` when the child dies first.
    The child is killed and reaped on exit.
    """
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", _HEAP_CHILD, str(seed), str(heap_bytes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    err = b""
    try:
        out = proc.stdout
        if out is None:  # cannot happen: stdout=PIPE
            raise RuntimeError("the heap child has no stdout pipe")
        if not select.select([out], [], [], timeout)[0]:
            raise TimeoutError(f"the heap child did not build its heap within {timeout} s")
        if out.readline() == b"ready\n":
            yield proc.pid
            return
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=timeout)
    why = err.decode(errors="replace").strip()
    raise RuntimeError(f"the heap child died before its heap was built: {why}")


def process_pages(
    pid: int | None = None, max_bytes: int = 16 << 20, seed: int = 0, timeout: float = 30.0
) -> list[bytes]:
    """A snapshot of the anonymous pages of ``pid``, or of a heap child built from ``seed`` when None.

    See :func:`snapshot_pages` for what is read and raised, :func:`heap_child`
    for the child (a heap of about ``max_bytes``).
    """
    if pid is not None:
        return snapshot_pages(pid, max_bytes)
    with heap_child(max_bytes, seed, timeout) as child:
        return snapshot_pages(child, max_bytes)
