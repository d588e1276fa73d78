"""zram on real kernels: boot Debian's kernel under QEMU and compare its figures with ``zsmalloc stats``.

A harness, not part of the allocator: nothing in the library imports it::

    host: images ─┐   Debian .debs (vmlinuz, zram.ko + deps, busybox-static)
                  ▼              ▼
           initramfs (newc cpio: /init, busybox, *.ko, /images/*.img)      cpio.py, debian.py
                  ▼
    guest (qemu-system-x86_64 -accel tcg): per run, comp_algorithm,        guest.py
           disksize, dd, mm_stat/io_stat/bd_stat; blkdiscard; again;
           compact; again; reset; "@@ZSVM ..." lines on the serial console
                  ▼
    host: parse_console ──► kernel figures ──┐
          zsmalloc stats --image --json ─────┴─► compare(): a Row per field   harness.py

``cpio``     the newc archive writer the initramfs is made with
``debian``   finding, downloading and unpacking the packages; the modules zram needs
``mirror``   suites the host's apt does not list, from the mirror: InRelease, Packages, .debs verified
``guest``    the init script and the parser of what it prints
``harness``  images, initramfs, boot, our side, the comparison and its tables
``libzstd``  Debian's libzstd release a preset's zstd needs (6.17: trixie's 1.5.7), into the cache
``kernel_zstd``  a kernel's own lib/zstd built in userspace from its source package (6.1's 1.4.10)

``zsmalloc kernel-vm`` (``zsmalloc.cli.kernelvm``) runs it from the command line.
"""

from __future__ import annotations

from zsmalloc.kernelvm.guest import STAGES, STAT_FIELDS, ConsoleReport, Run, init_script, parse_console
from zsmalloc.kernelvm.harness import (
    CODEC_FREE_FIELDS,
    IMAGE_KINDS,
    BootError,
    Comparison,
    Row,
    run_comparison,
)

__all__ = [
    "CODEC_FREE_FIELDS",
    "IMAGE_KINDS",
    "STAGES",
    "STAT_FIELDS",
    "BootError",
    "Comparison",
    "ConsoleReport",
    "Row",
    "Run",
    "init_script",
    "parse_console",
    "run_comparison",
]
