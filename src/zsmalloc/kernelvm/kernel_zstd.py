"""A kernel's own lib/zstd, built in userspace into a libzstd, for a kernel whose zstd no release is.

6.1's lib/zstd is zstd "1.4.10", a version made for the kernel's import
(5.16) and never released: no libzstd reproduces its output.  So it is
built from the kernel's source, Debian's ``linux-source-<series>``, with
small headers of our own standing in for the kernel's (:data:`SHIMS`)::

    apt-get download linux-source-6.1       <cache>/debs/linux-source-6.1_*.deb
      -> dpkg-deb --fsys-tarfile | tar       usr/src/linux-source-6.1.tar.xz
      -> tar xJf (only what lib/zstd needs)  <cache>/root/linux-source-6.1/{lib/zstd,lib/xxhash.c,
                                             include/linux/{zstd,zstd_errors,zstd_lib,xxhash}.h}
      -> cc -O2 -fPIC -shared, shims first   <cache>/lib/zstd-1.4.10/libzstd.so  (+ SOURCE)
      -> load, check ZSTD_versionNumber

The library has the upstream entry points the kernel's zstd_compress_module.c
wraps (``ZSTD_getParams``, ``ZSTD_initStaticCCtx``, ``ZSTD_CCtx_setParameter``,
``ZSTD_compress2``, ...), which :mod:`zsmalloc.zram.zstdlib` calls as the
kernel's zram does.  The kernel builds lib/zstd with -O2 and no SIMD; the
compressor's output does not depend on either (zstd's vector and BMI2 paths
choose the same matches as its scalar ones).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from zsmalloc.cache import cache_dir
from zsmalloc.kernelvm import debian
from zsmalloc.kernelvm.mirror import PackageError, sha256_of
from zsmalloc.zram.zstdlib import ZstdLibrary, install_library, reusable

#: kernel series -> the lib/zstd version it has (what its built library must report)
KERNEL_ZSTD = {"6.1": "1.4.10"}

#: the kernel headers lib/zstd and lib/xxhash.c include, as userspace stand-ins
SHIMS = {
    "linux/types.h": """
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef uint64_t u64;
typedef int8_t s8; typedef int16_t s16; typedef int32_t s32; typedef int64_t s64;
#ifndef __LITTLE_ENDIAN
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define __LITTLE_ENDIAN 1234
#endif
#endif
""",
    "linux/stddef.h": "#include <stddef.h>\n#include <stdbool.h>\n",
    "linux/limits.h": "#include <limits.h>\n#include <stdint.h>\n",
    "linux/string.h": "#include <string.h>\n",
    # (not <errno.h>: glibc's includes <linux/errno.h>, which would be this file again)
    "linux/errno.h": "#define EINVAL 22\n",
    "linux/compiler.h": """
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#ifndef fallthrough
#define fallthrough __attribute__((__fallthrough__))
#endif
#define __always_inline inline __attribute__((__always_inline__))
#define noinline __attribute__((__noinline__))
""",
    "linux/kernel.h": """
#include <linux/types.h>
#include <linux/compiler.h>
#include <linux/limits.h>
#define WARN_ON(condition) ((void)(condition))
""",
    "linux/module.h": """
#define EXPORT_SYMBOL(sym) extern int zsmalloc_shim_export_unused
#define MODULE_LICENSE(text) extern int zsmalloc_shim_export_unused
#define MODULE_DESCRIPTION(text) extern int zsmalloc_shim_export_unused
""",
    "linux/printk.h": "#define pr_debug(...) ((void)0)\n",
    "linux/math64.h": """
#include <stdint.h>
static inline uint64_t div_u64(uint64_t dividend, uint32_t divisor) { return dividend / divisor; }
""",
    "linux/swab.h": """
#define swab32(x) __builtin_bswap32(x)
#define swab64(x) __builtin_bswap64(x)
""",
    "asm/unaligned.h": """
#include <stdint.h>
#include <string.h>
#define get_unaligned(p) ({ __typeof__(*(p)) v_; memcpy(&v_, (p), sizeof(v_)); v_; })
#define put_unaligned(v, p) do { __typeof__(*(p)) v_ = (v); memcpy((p), &v_, sizeof(v_)); } while (0)
#define SHIM_LE(bits) \\
static inline uint##bits##_t get_unaligned_le##bits(const void *p) \\
{ uint##bits##_t v; memcpy(&v, p, sizeof(v)); return v; } \\
static inline void put_unaligned_le##bits(uint##bits##_t v, void *p) { memcpy(p, &v, sizeof(v)); }
SHIM_LE(16) SHIM_LE(32) SHIM_LE(64)
static inline uint32_t get_unaligned_be32(const void *p) { return __builtin_bswap32(get_unaligned_le32(p)); }
static inline uint64_t get_unaligned_be64(const void *p) { return __builtin_bswap64(get_unaligned_le64(p)); }
static inline void put_unaligned_be32(uint32_t v, void *p) { put_unaligned_le32(__builtin_bswap32(v), p); }
static inline void put_unaligned_be64(uint64_t v, void *p) { put_unaligned_le64(__builtin_bswap64(v), p); }
""",
}

#: what is taken out of the source tarball (under its top directory)
MEMBERS = ("lib/zstd/", "lib/xxhash.c", "include/linux/zstd", "include/linux/xxhash.h")
#: the sources compiled: lib/zstd's compress, decompress and common objects (not the module
#: wrappers, which need the kernel), and the kernel's xxhash that 6.1's zstd uses
SOURCES = ("lib/zstd/common/*.c", "lib/zstd/compress/*.c", "lib/zstd/decompress/*.c", "lib/xxhash.c")
CFLAGS = ("-O2", "-fPIC", "-shared", "-std=gnu11", "-fno-strict-aliasing", "-w")


class BuildError(PackageError):
    """The kernel's lib/zstd could not be unpacked, compiled or loaded."""


def _extract(deb: Path, root: Path) -> Path:
    """lib/zstd and what it includes, from the package's source tarball, under ``root``."""
    done = root / ".extracted"
    if done.exists():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        fs = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=False)
        if fs.returncode != 0:
            raise BuildError(f"dpkg-deb --fsys-tarfile {deb.name}: {fs.stderr.decode().strip()}")
        outer = Path(tmp) / "outer.tar"
        outer.write_bytes(fs.stdout)
        with tarfile.open(outer) as tar:
            inner = next((m for m in tar.getmembers() if m.name.endswith(".tar.xz")), None)
            if inner is None:
                raise BuildError(f"{deb.name} holds no source tarball")
            tar.extract(inner, tmp, filter="data")
        with tarfile.open(Path(tmp) / inner.name) as src:
            for member in src:
                _, _, rel = member.name.partition("/")
                if member.isfile() and rel.startswith(MEMBERS):
                    member.name = rel
                    src.extract(member, root, filter="data")
    if not (root / "lib/zstd/compress/zstd_compress.c").exists():
        raise BuildError(f"{deb.name}'s source has no lib/zstd")
    done.touch()
    return root


def _compile(root: Path, out: Path) -> None:
    shims = root / "shim"
    for name, text in SHIMS.items():
        (shims / name).parent.mkdir(parents=True, exist_ok=True)
        (shims / name).write_text(f"#pragma once\n{text}")
    sources = sorted(str(p) for pattern in SOURCES for p in root.glob(pattern))
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BuildError("no C compiler (cc or gcc) to build the kernel's lib/zstd")
    cmd = [cc, *CFLAGS, "-I", str(shims), "-I", str(root / "include"), "-o", str(out), *sources]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-12:])
        raise BuildError(f"compiling the kernel's lib/zstd failed:\n{tail}")


def build_kernel_zstd(series: str = "6.1", cache: Path | None = None) -> ZstdLibrary:
    """The kernel ``series``'s lib/zstd as a libzstd in the cache, built when it is not there."""
    try:
        version = KERNEL_ZSTD[series]
    except KeyError:
        known = ", ".join(KERNEL_ZSTD)
        raise BuildError(f"no kernel lib/zstd to build for {series} (known: {known})") from None
    cache = cache or cache_dir()
    kept = reusable(version, cache)
    if kept is not None:
        return kept
    deb = debian.download(f"linux-source-{series}", cache)
    root = _extract(deb, cache / "root" / deb.stem)
    built = root / "libzstd.so"
    _compile(root, built)
    source = f"Linux {series}'s lib/zstd, built from Debian {deb.name} (SHA256 {sha256_of(deb)})"
    return install_library(built, version, source, cache)
