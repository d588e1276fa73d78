"""The one cache directory of downloads and builds: kernels, packages, libraries.

``$ZSMALLOC_KERNEL_VM_CACHE``, or ``~/.cache/zsmalloc-kernel-vm``::

    debs/    .deb packages, checked against their index's SHA256 each use
    dists/   a mirror's verified InRelease and Packages index, per suite
    root/    unpacked kernels and busybox
    lib/     libraries: lib/zstd-<version>/libzstd.so and its SOURCE
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "ZSMALLOC_KERNEL_VM_CACHE"


def cache_dir() -> Path:
    """The cache's root (not created here)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "zsmalloc-kernel-vm")
