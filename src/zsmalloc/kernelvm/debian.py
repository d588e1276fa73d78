"""Debian's kernel and busybox packages on the host: find, download, extract, pick modules.

This module owns everything the harness takes from Debian:

    bookworm's own (6.1, 6.12), through the host's apt:
    apt-cache search  ->  the newest linux-image-<series>...-amd64-unsigned   (find_kernel_package)
    apt-get download  ->  <cache>/debs/*.deb                                   (download)
    other suites (6.16 trixie-backports, 7.2 sid), from the mirror:
    mirror.Suite      ->  the newest linux-image-<series>...-amd64 and the     (fetch_mirror_kernel)
                          packages of its release it depends on, verified
    then:
    dpkg-deb -x       ->  <cache>/root/<image deb>/{boot,[usr/]lib/modules/R}  (extract)
                          vmlinuz, config, kernel/**/*.ko[.xz], modules.builtin
    .modinfo depends= ->  the modules zram needs, dependencies first          (module_depends, resolve)
    lzma              ->  plain .ko bytes for busybox's insmod                 (module_bytes)

Debian's image packages carry no modules.dep (depmod runs at install), so
the dependencies are read from each module's ``.modinfo`` ELF section, the
``depends=`` line that modpost writes.  Modules listed in modules.builtin
are in vmlinuz already.  Kernels from trixie on keep their modules under
/usr/lib, and sid's split packages keep vmlinuz and config there too
(``/usr/lib/modules/R/vmlinuz``, ``.../config``).  The cache lives outside
the work tree: ``$ZSMALLOC_KERNEL_VM_CACHE`` or ``~/.cache/zsmalloc-kernel-vm``.
"""

from __future__ import annotations

import gzip
import lzma
import re
import struct
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from zsmalloc.cache import cache_dir as cache_dir
from zsmalloc.kernelvm import mirror
from zsmalloc.kernelvm.mirror import PackageError as PackageError

#: a kernel series -> the name pattern of Debian bookworm's image packages of it (unsigned: same
#: kernel as the signed one, without the shim's signature, so no extra package is needed)
KERNEL_PACKAGES = {
    "6.12": r"linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned",
    "6.1": r"linux-image-6\.1\.0-[0-9]+-amd64-unsigned",
}
#: a kernel series from a suite the host's apt does not list -> (suite, the name pattern of its image
#: package: signed, as the suites have no unsigned one; QEMU does not look at the signature)
MIRROR_KERNELS = {
    "6.16": ("trixie-backports", r"linux-image-6\.16\.[0-9]+\+deb13-amd64"),
    "7.2": ("sid", r"linux-image-7\.2\.[0-9]+\+deb14-amd64"),
}
#: every series the harness can boot
SERIES = (*KERNEL_PACKAGES, *MIRROR_KERNELS)


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise PackageError(f"{cmd[0]} is not installed ({exc})") from None
    if done.returncode != 0:
        raise PackageError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"[0-9]+", name))


def newest(names: Iterable[str], pattern: str) -> str | None:
    """The name matching ``pattern`` whole with the highest version numbers in it, or None."""
    matching = [n for n in names if re.fullmatch(pattern, n)]
    return max(matching, key=_version_key) if matching else None


def find_kernel_package(series: str) -> str:
    """The newest image package of ``series`` (``6.12``, ``6.1``) that apt knows."""
    try:
        pattern = KERNEL_PACKAGES[series]
    except KeyError:
        known = ", ".join(KERNEL_PACKAGES)
        raise PackageError(f"no package pattern for kernel {series!r}; known: {known}") from None
    out = _run(["apt-cache", "search", "--names-only", f"^{pattern}$"])
    name = newest((line.split(" ", 1)[0] for line in out.splitlines()), pattern)
    if name is None:
        raise PackageError(f"apt knows no package like {pattern} (is bookworm-security in sources?)")
    return name


def download(package: str, cache: Path | None = None) -> Path:
    """The package's .deb in the cache, downloaded by ``apt-get download`` when it is not there yet."""
    debs = (cache or cache_dir()) / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        _run(["apt-get", "download", package], cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise PackageError(f"apt-get download {package} left no .deb in {debs}")
    return found[-1]


def extract(deb: Path, cache: Path | None = None, root: Path | None = None) -> Path:
    """The package's files under ``root`` (``<cache>/root/<deb name>``), unpacked once by ``dpkg-deb -x``.

    Several packages of one kernel are unpacked into the same ``root``.
    """
    root = root or (cache or cache_dir()) / "root" / deb.stem
    done = root / f".extracted-{deb.stem}"
    if not done.exists():
        root.mkdir(parents=True, exist_ok=True)
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        done.touch()
    return root


def parse_config(text: str) -> dict[str, str]:
    """A kernel .config: ``CONFIG_X=value`` lines (strings unquoted); "is not set" lines are left out."""
    config = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            config[key] = value.strip('"')
    return config


def module_name(path: Path | str) -> str:
    """``lz4_compress`` for ``.../lz4_compress.ko.xz``: the name modprobe and depends= use."""
    base = Path(path).name
    return base.split(".ko", 1)[0].replace("-", "_")


def module_bytes(path: Path) -> bytes:
    """The module's ELF bytes, decompressed from .ko.xz or .ko.gz."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def modinfo(elf: bytes) -> dict[str, str]:
    """The ``key=value`` strings of an ELF64 module's ``.modinfo`` section (the last value of a key)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:  # name offset, file offset, size
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    names = elf[str_off : str_off + str_size]
    for i in range(shnum):
        name_off, offset, size = section(i)
        if names[name_off : names.index(b"\0", name_off)] == b".modinfo":
            info = {}
            for item in elf[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info[key] = value
            return info
    raise ValueError("the ELF file has no .modinfo section")


def module_depends(elf: bytes) -> list[str]:
    return [d for d in modinfo(elf).get("depends", "").split(",") if d]


def resolve(wanted: Iterable[str], depends: Callable[[str], list[str]]) -> list[str]:
    """``wanted`` and everything they depend on, each after its dependencies (an insmod order)."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            raise ValueError(f"modules depend on each other in a cycle: {' -> '.join((*path, name))}")
        state[name] = "open"
        for dep in depends(name):
            visit(dep, (*path, name))
        state[name] = "done"
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order


@dataclass
class Kernel:
    """One extracted kernel package: its vmlinuz, .config and modules (name -> path)."""

    package: str
    release: str
    vmlinuz: Path
    config: dict[str, str]
    modules: dict[str, Path]
    builtin: set[str] = field(default_factory=set)

    @property
    def series(self) -> str:
        return ".".join(self.release.split(".")[:2])

    def chain_size(self) -> int:
        """CONFIG_ZSMALLOC_CHAIN_SIZE; kernels before 6.3 have no such option and chain 4 pages."""
        return int(self.config.get("CONFIG_ZSMALLOC_CHAIN_SIZE", "4"))

    def module_order(self, wanted: Iterable[str]) -> list[str]:
        """The loadable modules among ``wanted`` and their dependencies, in insmod order."""
        cache: dict[str, list[str]] = {}

        def deps(name: str) -> list[str]:
            if name not in cache:
                if name in self.builtin:
                    cache[name] = []
                elif name not in self.modules:
                    raise PackageError(f"{self.package} has no module {name}")
                else:
                    cache[name] = module_depends(module_bytes(self.modules[name]))
            return cache[name]

        return [m for m in resolve(wanted, deps) if m not in self.builtin]


def _find_vmlinuz(root: Path) -> tuple[Path, str]:
    """vmlinuz under ``root`` and its release R: ``boot/vmlinuz-R`` or ``[usr/]lib/modules/R/vmlinuz``."""
    boot = sorted((root / "boot").glob("vmlinuz-*"))
    if boot:
        return boot[-1], boot[-1].name.removeprefix("vmlinuz-")
    merged = sorted([*root.glob("usr/lib/modules/*/vmlinuz"), *root.glob("lib/modules/*/vmlinuz")])
    if merged:
        return merged[-1], merged[-1].parent.name
    raise PackageError(f"no boot/vmlinuz-* nor lib/modules/*/vmlinuz under {root}")


def _module_dir(root: Path, release: str) -> Path:
    for base in ("lib", "usr/lib"):
        moddir = root / base / "modules" / release
        if moddir.is_dir():
            return moddir
    raise PackageError(f"no lib/modules/{release} nor usr/lib/modules/{release} under {root}")


def load_kernel(root: Path, package: str = "") -> Kernel:
    """The kernel unpacked under ``root``: its vmlinuz, config and ``[usr/]lib/modules/<release>``."""
    vmlinuz, release = _find_vmlinuz(root)
    moddir = _module_dir(root, release)
    config_file = root / "boot" / f"config-{release}"
    config = parse_config((config_file if config_file.exists() else moddir / "config").read_text())
    modules = {module_name(p): p for p in moddir.rglob("*.ko*")}
    builtin_list = moddir / "modules.builtin"
    builtin = (
        {module_name(line) for line in builtin_list.read_text().split()} if builtin_list.exists() else set()
    )
    return Kernel(package or root.name, release, vmlinuz, config, modules, builtin)


def fetch_mirror_kernel(series: str, cache: Path | None = None) -> Kernel:
    """The newest kernel of ``series`` in its suite on the mirror (:data:`MIRROR_KERNELS`), verified.

    The image package and those of its release it depends on (sid's
    linux-binary, linux-modules and linux-base) are unpacked into one root.
    """
    cache = cache or cache_dir()
    suite_name, pattern = MIRROR_KERNELS[series]
    suite = mirror.Suite(suite_name, cache)
    image = newest(suite.packages, pattern)
    if image is None:
        raise PackageError(f"{suite_name} has no package like {pattern}")
    debs = [suite.download(name) for name in mirror.kernel_packages(suite, image)]
    root = cache / "root" / debs[0].stem
    for deb in debs:
        extract(deb, cache, root)
    return load_kernel(root, image)


def fetch_kernel(series: str, cache: Path | None = None) -> Kernel:
    """Debian's newest kernel of ``series``, downloaded and unpacked into the cache when needed.

    Bookworm's series through apt: without apt's lists (no ``apt-get
    update``), a package already in the cache is used.  The others from the
    mirror (:func:`fetch_mirror_kernel`).
    """
    if series in MIRROR_KERNELS:
        return fetch_mirror_kernel(series, cache)
    try:
        package = find_kernel_package(series)
    except PackageError:
        debs = (cache or cache_dir()) / "debs"
        cached = newest(
            (p.name.split("_", 1)[0] for p in debs.glob("*.deb")), KERNEL_PACKAGES.get(series, "-")
        )
        if cached is None:
            raise
        package = cached
    return load_kernel(extract(download(package, cache), cache), package)


def fetch_busybox(cache: Path | None = None) -> Path:
    """The statically linked busybox of Debian's busybox-static package."""
    binary = extract(download("busybox-static", cache), cache) / "bin" / "busybox"
    if not binary.exists():
        raise PackageError(f"busybox-static has no bin/busybox ({binary})")
    return binary
