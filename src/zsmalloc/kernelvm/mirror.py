"""Packages straight from a Debian mirror, for suites the host's apt does not list, verified as apt does.

This module owns the archive's chain of trust, the one apt follows::

    dists/<suite>/InRelease       gpgv against the archive keyring   -> the signed Release text
                                  (Suite or Codename is <suite>; Valid-Until not past)
    main/binary-amd64/Packages.xz its SHA256 and size in that Release -> the package stanzas
    pool/.../<package>.deb        its SHA256 and size in its stanza   -> <cache>/debs/

Nothing is trusted before its check: only the text gpgv writes out (the
signed part) is read, an index or .deb that does not match its hash is
removed and refused with a :class:`PackageError`.  Files are kept in the
cache (``<cache>/dists/<suite>/``, ``<cache>/debs/``) and checked again each
time they are used; when the mirror cannot be reached the cached InRelease
is verified and used in its place.  The mirror is
``$ZSMALLOC_KERNEL_VM_MIRROR`` or deb.debian.org; an expired Release is
accepted only with ``ZSMALLOC_KERNEL_VM_ACCEPT_EXPIRED=1`` (apt's
``Acquire::Check-Valid-Until=false``).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

MIRROR_ENV = "ZSMALLOC_KERNEL_VM_MIRROR"
ACCEPT_EXPIRED_ENV = "ZSMALLOC_KERNEL_VM_ACCEPT_EXPIRED"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PACKAGES_INDEX = "main/binary-amd64/Packages.xz"


class PackageError(RuntimeError):
    """A package could not be found, downloaded, verified or unpacked (no apt, no network, no such name)."""


#: a function that stores the bytes at a URL in a file (urllib's, or a test's)
Fetcher = Callable[[str, Path], None]


def mirror_url() -> str:
    return (os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR).rstrip("/")


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """The paragraphs of a deb822 file (Release, Packages): field -> value, continued lines joined by \\n."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif line[0] in " \t":
            if not key:
                raise PackageError(f"a continuation line outside any field: {line[:80]!r}")
            current[key] += "\n" + line.strip()
        else:
            key, sep, value = line.partition(":")
            if not sep:
                raise PackageError(f"not a deb822 field: {line[:80]!r}")
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def release_hashes(release: dict[str, str]) -> dict[str, tuple[str, int]]:
    """A Release's ``SHA256`` field: path -> (hash, size)."""
    hashes = {}
    for line in release.get("SHA256", "").splitlines():
        parts = line.split()
        if len(parts) == 3:
            digest, size, path = parts
            hashes[path] = (digest.lower(), int(size))
    return hashes


def check_release(release: dict[str, str], suite: str, now: datetime, accept_expired: bool) -> None:
    """The Release must be ``suite``'s (its Suite or Codename) and, unless accepted, not expired."""
    names = {release.get("Suite"), release.get("Codename")}
    if suite not in names:
        found = " / ".join(sorted(map(str, names)))
        raise PackageError(f"the Release fetched for {suite} is that of {found}")
    valid_until = release.get("Valid-Until")
    if valid_until and not accept_expired and parsedate_to_datetime(valid_until) < now:
        raise PackageError(
            f"the mirror's {suite} Release expired on {valid_until} (Valid-Until), as apt would say too; "
            f"{ACCEPT_EXPIRED_ENV}=1 accepts it"
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: Path, sha256: str, size: int, what: str) -> None:
    """``path`` must have ``size`` bytes and the SHA256 ``sha256``: else it is removed and refused."""
    got_size = path.stat().st_size
    got = sha256_of(path) if got_size == size else ""
    if got != sha256.lower():
        path.unlink()
        found = f"SHA256 {got}" if got else f"{got_size} bytes"
        raise PackageError(
            f"{what} does not match its signed hash (want {size} bytes, SHA256 {sha256}; found {found}); "
            f"refused and removed from the cache"
        )


def urllib_fetch(url: str, dest: Path) -> None:
    """Download ``url`` into ``dest`` (through ``dest``.part, so a broken download leaves nothing)."""
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise PackageError(f"cannot download {url}: {exc}") from None
    part.replace(dest)


def verify_inrelease(inrelease: Path, keyring: Path = KEYRING) -> str:
    """The signed text of an InRelease file, once gpgv has found a good signature from ``keyring``."""
    if not keyring.exists():
        raise PackageError(f"no archive keyring at {keyring} (Debian: debian-archive-keyring)")
    with tempfile.TemporaryDirectory(prefix="zsmalloc-gpgv-") as tmp:
        out = Path(tmp) / "Release"
        cmd = ["gpgv", "--keyring", str(keyring), "--output", str(out), str(inrelease)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise PackageError("gpgv is not installed (Debian: gpgv)") from None
        if done.returncode != 0 or not out.exists():
            said = done.stderr.strip().splitlines()[-1:] or ["nothing"]
            raise PackageError(f"{inrelease} has no good signature from {keyring}: gpgv said {said[0]}")
        return out.read_text()


class Suite:
    """One suite of the mirror, its verified Release and package stanzas (name -> the newest stanza)."""

    def __init__(
        self,
        name: str,
        cache: Path,
        *,
        mirror: str | None = None,
        keyring: Path = KEYRING,
        fetch: Fetcher = urllib_fetch,
        now: datetime | None = None,
    ) -> None:
        self.name = name
        self.mirror = mirror or mirror_url()
        self.cache = cache
        self.fetch = fetch
        self.dir = cache / "dists" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        release = self._release(keyring, now or datetime.now(UTC))
        self.packages = self._packages(release)

    def _release(self, keyring: Path, now: datetime) -> dict[str, str]:
        inrelease = self.dir / "InRelease"
        try:
            self.fetch(f"{self.mirror}/dists/{self.name}/InRelease", inrelease)
        except PackageError:
            if not inrelease.exists():
                raise
        stanzas = parse_stanzas(verify_inrelease(inrelease, keyring))
        if not stanzas:
            raise PackageError(f"the {self.name} Release is empty")
        check_release(stanzas[0], self.name, now, os.environ.get(ACCEPT_EXPIRED_ENV) == "1")
        return stanzas[0]

    def _packages(self, release: dict[str, str]) -> dict[str, dict[str, str]]:
        try:
            sha256, size = release_hashes(release)[PACKAGES_INDEX]
        except KeyError:
            raise PackageError(f"the {self.name} Release lists no {PACKAGES_INDEX}") from None
        index = self.dir / f"Packages-{sha256[:16]}.xz"  # a new Release, a new index
        if not index.exists():
            self.fetch(f"{self.mirror}/dists/{self.name}/{PACKAGES_INDEX}", index)
        check_file(index, sha256, size, f"{self.name}'s {PACKAGES_INDEX}")
        for old in self.dir.glob("Packages-*.xz"):
            if old != index:
                old.unlink()
        packages: dict[str, dict[str, str]] = {}
        for stanza in parse_stanzas(lzma.decompress(index.read_bytes()).decode()):
            packages.setdefault(stanza["Package"], stanza)
        return packages

    def stanza(self, package: str) -> dict[str, str]:
        try:
            return self.packages[package]
        except KeyError:
            raise PackageError(f"{self.name} has no package {package}") from None

    def download(self, package: str) -> Path:
        """The package's .deb in ``<cache>/debs``, downloaded when missing, checked against its stanza."""
        stanza = self.stanza(package)
        debs = self.cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        deb = debs / Path(stanza["Filename"]).name
        if not deb.exists():
            self.fetch(f"{self.mirror}/{stanza['Filename']}", deb)
        check_file(deb, stanza["SHA256"], int(stanza["Size"]), f"{deb.name} ({self.name})")
        return deb


def depends(stanza: dict[str, str]) -> list[str]:
    """The package names of a stanza's Depends and Pre-Depends, every alternative, without versions."""
    names = []
    for fld in ("Pre-Depends", "Depends"):
        for item in stanza.get(fld, "").split(","):
            for alternative in item.split("|"):
                name = alternative.strip().split(" ", 1)[0].split(":", 1)[0]
                if name:
                    names.append(name)
    return names


def kernel_packages(suite: Suite, image: str) -> list[str]:
    """``image`` and the packages of the same kernel release it depends on, directly or not.

    Since 6.17 Debian splits a kernel: ``linux-image-R`` depends on
    ``linux-binary-R`` (vmlinuz), ``linux-modules-R`` and ``linux-base-R``
    (config, modules.builtin); before, the image package holds them all.
    """
    release = image.removeprefix("linux-image-")
    order: list[str] = []
    todo = [image]
    while todo:
        name = todo.pop(0)
        if name in order:
            continue
        order.append(name)
        todo += [d for d in depends(suite.stanza(name)) if d.endswith("-" + release) and d in suite.packages]
    return order
