"""Fetching the libzstd a kernel preset's zstd needs into the cache, from Debian's packages.

What is looked for, and in which order, is :mod:`zsmalloc.zram.zstdlib`'s;
this module puts a release there, from the suite that packages it, through
the mirror's chain of trust (:mod:`zsmalloc.kernelvm.mirror`)::

    Suite(LIBZSTD_SUITES[V]).download("libzstd1")   InRelease (gpgv) -> Packages -> .deb (SHA256)
      -> dpkg-deb -x                                 <cache>/root/libzstd1_.../usr/lib/<triplet>/libzstd.so.V
      -> copy, load, check ZSTD_versionNumber == V   <cache>/lib/zstd-V/libzstd.so
      -> SOURCE                                      package, version, suite, the .deb's SHA256
"""

from __future__ import annotations

from pathlib import Path

from zsmalloc.cache import cache_dir
from zsmalloc.kernelvm import debian, mirror
from zsmalloc.kernelvm.mirror import PackageError
from zsmalloc.zram.zstdlib import ZstdLibrary, install_library, reusable

#: libzstd releases a preset needs -> the Debian suite whose libzstd1 is that release
LIBZSTD_SUITES = {"1.5.7": "trixie"}
PACKAGE = "libzstd1"


def fetch_libzstd(version: str, cache: Path | None = None, suite: mirror.Suite | None = None) -> ZstdLibrary:
    """libzstd ``version`` in the cache, fetched and checked if it is not there (else a PackageError)."""
    cache = cache or cache_dir()
    kept = reusable(version, cache)
    if kept is not None:
        return kept
    try:
        suite_name = LIBZSTD_SUITES[version]
    except KeyError:
        raise PackageError(
            f"no Debian suite is known to package libzstd {version} (known: {', '.join(LIBZSTD_SUITES)})"
        ) from None
    suite = suite or mirror.Suite(suite_name, cache)
    stanza = suite.stanza(PACKAGE)
    if not stanza["Version"].startswith(f"{version}+") and stanza["Version"] != version:
        raise PackageError(f"{suite.name}'s {PACKAGE} is {stanza['Version']}, not libzstd {version}")
    deb = suite.download(PACKAGE)
    root = debian.extract(deb, cache)
    found = sorted(root.glob(f"usr/lib/*/libzstd.so.{version}"))
    if not found:
        raise PackageError(f"{deb.name} holds no libzstd.so.{version}")
    source = (
        f"Debian {suite.name} {PACKAGE} {stanza['Version']} ({deb.name}, SHA256 {stanza['SHA256']}, "
        f"{found[0].relative_to(root)})"
    )
    return install_library(found[0], version, source, cache)
