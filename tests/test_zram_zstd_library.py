"""The libzstd of a kernel preset's zstd (zsmalloc.zram.zstdlib): found, loaded, used, fetched.

Tests that need libzstd 1.5.7 take it from the cache (``make zstd-library``)
and skip without it, unless ``ZSMALLOC_REQUIRE_KERNEL_ZSTD`` names 1.5.7
(CI), which makes its absence a failure.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.test_kernelvm_parts import FakeMirror, signer  # noqa: F401 (a fixture)
from tests.zram_pages import any_page, text_page

from zsmalloc.cli import main
from zsmalloc.kernelvm.kernel_zstd import CFLAGS, SHIMS
from zsmalloc.kernelvm.libzstd import fetch_libzstd
from zsmalloc.kernelvm.mirror import PackageError
from zsmalloc.zram import ZramDevice, zstdlib
from zsmalloc.zram.codecs import get_codec
from zsmalloc.zram.zstdlib import (
    BUNDLED,
    KernelZstdError,
    KernelZstdWarning,
    cached_library,
    cached_path,
    install_library,
    library_codec,
    library_for,
    library_version,
    required_versions,
    reusable,
)

pytestmark = pytest.mark.usefixtures("each_backend")

PAGE = 4096
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LIBM = Path("/lib/x86_64-linux-gnu/libm.so.6")


def _cached(version: str) -> Path:
    """The cache's library of ``version`` (``make zstd-library``), or a skip (a failure if required)."""
    path = cached_path(version)
    if not path.exists():
        if version in required_versions():
            pytest.fail(f"no zstd library {version} at {path} (make zstd-library)")
        pytest.skip(f"no zstd library {version} at {path}: make zstd-library")
    return path


@pytest.fixture(scope="module")
def lib157() -> Path:
    """libzstd 1.5.7 (Debian trixie's), where the real cache keeps it (the tests point theirs elsewhere)."""
    return _cached("1.5.7")


@pytest.fixture
def no_system_zstd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty cache of its own, no environment override and no system library: a clean lookup."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ZSMALLOC_KERNEL_VM_CACHE", str(cache))
    monkeypatch.delenv(zstdlib.LIBRARY_ENV, raising=False)
    monkeypatch.delenv(zstdlib.REQUIRE_ENV, raising=False)
    monkeypatch.setattr(zstdlib, "_system_library", lambda: None)
    return cache


def _install(lib: Path, cache: Path, version: str = "1.5.7") -> Path:
    target = cached_path(version, cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lib, target)
    (target.parent / zstdlib.SOURCE_FILE).write_text("a test's copy\n")
    return target


def _stored(dev: ZramDevice, index: int) -> bytes:
    info = dev.slot_info(index)
    return dev.pool.read(info.handle, info.size)


@pytest.mark.model_only  # the lookup is the same Python code for both devices
def test_the_lookup_goes_environment_then_cache_then_warns(no_system_zstd, lib157, monkeypatch):
    cache = no_system_zstd
    with pytest.warns(KernelZstdWarning, match="1.5.7, which is not here"):
        assert library_for(("1.5.7",), "kernel 6.17") is None
    monkeypatch.setenv(zstdlib.REQUIRE_ENV, "1.4.10, 1.5.7")
    with pytest.raises(KernelZstdError, match="not here"):
        library_for(("1.5.7",), "kernel 6.17")
    target = _install(lib157, cache)
    found = library_for(("1.5.7",), "kernel 6.17")
    assert found is not None and found.path == target and found.source == "a test's copy"
    # the bundled version needs nothing
    assert library_for((BUNDLED,), "kernel 6.12") is None
    # the environment comes first: the first of its paths that is the version wanted
    monkeypatch.setenv(zstdlib.LIBRARY_ENV, f"{cache / 'nothing-here.so'}")
    with pytest.raises(KernelZstdError, match="nothing-here"):
        library_for(("1.5.7",), "kernel 6.17")
    monkeypatch.setenv(zstdlib.LIBRARY_ENV, f"{lib157}:{target}")
    env = library_for(("1.5.7",), "kernel 6.17")
    assert env is not None and env.path == lib157 and env.source == zstdlib.LIBRARY_ENV
    monkeypatch.delenv(zstdlib.REQUIRE_ENV)
    with pytest.warns(KernelZstdWarning):  # none of them is 1.4.10: on to the cache, which has none
        assert library_for(("1.4.10",), "kernel 6.1") is None


@pytest.mark.model_only
def test_a_library_that_is_not_a_libzstd_is_an_error_not_a_crash(no_system_zstd, tmp_path):
    with pytest.raises(KernelZstdError, match="nonexistent"):
        library_version(tmp_path / "nonexistent.so")
    (tmp_path / "junk.so").write_bytes(b"not an ELF file")
    with pytest.raises(KernelZstdError, match=r"junk\.so"):
        library_version(tmp_path / "junk.so")
    if LIBM.exists():
        with pytest.raises(KernelZstdError, match="has no ZSTD_versionNumber"):
            library_version(LIBM)


def test_a_preset_device_compresses_through_the_loaded_library(no_system_zstd, lib157):
    _install(lib157, no_system_zstd)
    compress, decompress = library_codec(lib157, 3, "page")
    rng = random.Random(11)
    pages = [any_page(rng) for _ in range(200)]
    with (
        ZramDevice(len(pages) * PAGE, algorithm="zstd", kernel="6.17") as dev,
        ZramDevice(len(pages) * PAGE, algorithm="zstd", kernel="6.12") as bundled,
    ):
        assert dev.zstd_library is not None and dev.zstd_library.version == "1.5.7"
        assert bundled.zstd_library is None
        differ = 0
        for i, page in enumerate(pages):
            dev.write_page(i, page)
            bundled.write_page(i, page)
            assert dev.read_page(i) == page
            info = dev.slot_info(i)
            if info.same or info.huge:
                continue
            mine = _stored(dev, i)
            assert mine == compress(page) and decompress(mine) == page
            differ += mine != _stored(bundled, i)
        # 1.5.7 and 1.5.5 choose other matches on some pages (10-13% of real ones)
        assert differ > 0
        dev.check()


@pytest.mark.engine_only
def test_the_engine_device_reports_the_library_it_loaded(no_system_zstd, lib157):
    target = _install(lib157, no_system_zstd)
    with ZramDevice(16 * PAGE, algorithm="zstd", kernel="6.17") as dev:
        assert dev._dev.libraries == [(target, "1.5.7")]
    with ZramDevice(16 * PAGE, algorithm="zstd", kernel="6.12") as dev:
        assert dev._dev.libraries == [None]


def test_recompression_under_a_preset_is_zstd_in_the_kernels_frame(no_system_zstd, lib157):
    _install(lib157, no_system_zstd)
    page = text_page(random.Random(2))
    compress, _ = library_codec(lib157, 3, "page")
    with ZramDevice(16 * PAGE, algorithm="lz4", recompress_algorithm="zstd", kernel="6.17") as dev:
        dev.write_page(0, page)
        dev.recompress()
        assert dev.slot_info(0).priority == 1
        assert _stored(dev, 0) == compress(page)
        assert _stored(dev, 0)[:4] == ZSTD_MAGIC
        assert dev.read_page(0) == page


def test_a_loaded_library_takes_only_the_kernels_frames_and_no_dictionary(lib157):
    with pytest.raises(ValueError, match="magicless"):
        ZramDevice(16 * PAGE, algorithm="zstd", algorithm_params={"library": lib157})
    with pytest.raises(ValueError, match="dictionary"):
        ZramDevice(
            16 * PAGE,
            algorithm="zstd",
            algorithm_params={"library": lib157, "frame": "page", "dictionary": b"x" * 64},
        )
    with pytest.raises(ValueError, match="only zstd"):
        get_codec("lz4", library=str(lib157))
    # without a preset, a library and a kernel frame may be chosen by hand
    page = text_page(random.Random(4))
    by_hand = {"library": lib157, "frame": "crypto"}
    with ZramDevice(16 * PAGE, algorithm="zstd", algorithm_params=by_hand) as dev:
        dev.write_page(0, page)
        assert _stored(dev, 0) == library_codec(lib157, 3, "crypto")[0](page)


def test_a_library_that_cannot_be_loaded_fails_the_device_and_leaves_nothing(tmp_path, lib157):
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"\x7fELF but not really")
    for library in (junk, LIBM, tmp_path / "missing.so"):
        with pytest.raises(ValueError, match=str(library.name)):
            ZramDevice(16 * PAGE, algorithm="zstd", algorithm_params={"library": library, "frame": "page"})
    with pytest.raises(TypeError):
        ZramDevice(16 * PAGE, algorithm="zstd", algorithm_params={"library": 7, "frame": "page"})
    # and a good one still loads after them
    good = {"library": lib157, "frame": "page"}
    with ZramDevice(16 * PAGE, algorithm="zstd", algorithm_params=good) as dev:
        dev.write_page(0, text_page(random.Random(6)))
        dev.check()


def test_a_missing_library_warns_and_the_bundled_one_compresses(no_system_zstd):
    with pytest.warns(KernelZstdWarning, match="bundled"):
        dev = ZramDevice(16 * PAGE, algorithm="zstd", kernel="6.17")
    with dev:
        assert dev.zstd_library is None
        dev.write_page(0, text_page(random.Random(1)))
        assert _stored(dev, 0)[:4] == ZSTD_MAGIC


@pytest.mark.model_only  # the command picks its device by ZSMALLOC_BACKEND
def test_zsmalloc_stats_names_the_library_that_compressed(no_system_zstd, lib157):
    target = _install(lib157, no_system_zstd)
    args = ["stats", "--workload", "kernel-build", "--pages", "64", "--algorithm", "zstd", "--kernel", "6.17"]
    out = CliRunner().invoke(main, [*args, "--json"])
    assert out.exit_code == 0, out.output
    libraries = json.loads(out.output)["libraries"]
    assert libraries["zstd"] == "1.5.7" and str(target) in libraries["zstd_library"]
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0 and f"compressed by libzstd 1.5.7 ({target}: a test's copy)" in text.output
    table = CliRunner().invoke(main, ["zstd-library", "--json"])
    rows = {r["kernel"]: r for r in json.loads(table.output)}
    assert rows["6.17"]["path"] == str(target) and rows["6.12"]["library"] == BUNDLED
    assert rows["6.1"]["library"] is None


def _deb(tmp_path: Path, lib: Path, version: str) -> Path:
    """A libzstd1 package holding ``lib`` as libzstd.so.1.5.7, built by dpkg-deb."""
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: libzstd1\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@example.org>\n"
        "Description: a test's package\n"
    )
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    shutil.copyfile(lib, libdir / "libzstd.so.1.5.7")
    deb = tmp_path / "libzstd1.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(root), str(deb)], check=True, capture_output=True)
    return deb


@pytest.mark.model_only
def test_fetch_installs_the_verified_package_library_and_its_source(signer, tmp_path, lib157):  # noqa: F811
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb builds the test's package")
    sign, keyring = signer
    body = _deb(tmp_path, lib157, "1.5.7+dfsg-1").read_bytes()
    fake = FakeMirror(sign, suite="trixie", packages={"libzstd1": ("", body)})
    cache = tmp_path / "cache"
    suite = fake.suite(cache, keyring, name="trixie")
    suite.packages["libzstd1"]["Version"] = "1.5.7+dfsg-1"
    lib = fetch_libzstd("1.5.7", cache, suite)
    assert lib.path == cached_path("1.5.7", cache) and library_version(lib.path) == "1.5.7"
    assert "trixie libzstd1 1.5.7+dfsg-1" in lib.source and suite.stanza("libzstd1")["SHA256"] in lib.source
    assert (lib.path.parent / "SOURCE").read_text().strip() == lib.source
    # a second fetch uses what is there
    assert fetch_libzstd("1.5.7", cache, suite) == lib
    # another release under that name, or a .deb that does not match its index, is refused
    other = tmp_path / "other"
    suite.packages["libzstd1"]["Version"] = "1.5.6+dfsg-1"
    with pytest.raises(PackageError, match=r"not libzstd 1\.5\.7"):
        fetch_libzstd("1.5.7", other, suite)
    suite.packages["libzstd1"]["Version"] = "1.5.7+dfsg-1"
    fake.files["pool/main/l/linux/libzstd1_1_amd64.deb"] = body[:-1] + b"!"
    with pytest.raises(PackageError):
        fetch_libzstd("1.5.7", other, fake.suite(other, keyring, name="trixie"))
    assert not cached_path("1.5.7", other).exists()
    with pytest.raises(PackageError, match="no Debian suite"):
        fetch_libzstd("1.4.10", other)


def test_no_warning_without_a_preset_or_for_the_bundled_version(no_system_zstd):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kernel in (None, "6.6", "6.12"):
            ZramDevice(16 * PAGE, algorithm="zstd", kernel=kernel).close()


# ----------------------------------------------------------------------
# 6.1's own lib/zstd, built from the kernel's source (zsmalloc.kernelvm.kernel_zstd)


def _probe_shims(tmp_path: Path) -> str:
    """A C program using each shim's macros, compiled as the lib/zstd build compiles; its output."""
    shims = tmp_path / "shim"
    for name, text in SHIMS.items():
        (shims / name).parent.mkdir(parents=True, exist_ok=True)
        (shims / name).write_text(f"#pragma once\n{text}")
    program = tmp_path / "probe.c"
    program.write_text(
        "#include <linux/types.h>\n#include <linux/kernel.h>\n#include <linux/errno.h>\n"
        "#include <linux/swab.h>\n#include <linux/math64.h>\n#include <asm/unaligned.h>\n#include <stdio.h>\n"
        "int main(void) {\n"
        "  u8 b[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8}; u8 out[8] = {0};\n"
        "  put_unaligned_be32(0x0a0b0c0d, out + 1);\n"
        '  printf("%x %x %llx %x %x %llu %d %d %x\\n",\n'
        "         get_unaligned_le32(b + 1), get_unaligned_be32(b + 1),\n"
        "         (unsigned long long)get_unaligned_le64(b + 1), swab32(0x11223344), out[1],\n"
        "         (unsigned long long)div_u64(1000000007ULL, 10), EINVAL, likely(1),\n"
        "         get_unaligned((const u16 *)(b + 3)));\n"
        "  return 0;\n}\n"
    )
    exe = tmp_path / "probe"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    flags = [f for f in CFLAGS if f not in ("-shared", "-fPIC")]
    subprocess.run(
        [cc, *flags, "-I", str(shims), "-o", str(exe), str(program)], check=True, capture_output=True
    )
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()


@pytest.mark.model_only  # no device in it
def test_the_kernel_header_shims_mean_what_the_kernels_headers_mean(tmp_path):
    assert _probe_shims(tmp_path) == [
        "4030201",  # little-endian load from an odd address
        "1020304",  # big-endian
        "807060504030201",
        "44332211",
        "a",  # big-endian store: the high byte first
        "100000000",
        "22",
        "1",
        "403",
    ]


@pytest.fixture(scope="module")
def lib1410() -> Path:
    """6.1's lib/zstd, as the real cache holds its build."""
    return _cached("1.4.10")


def test_the_6_1_preset_compresses_through_6_1s_own_lib_zstd(no_system_zstd, lib1410):
    """The built library is 1.4.10, and compresses a page otherwise than any release here.

    (With it, `zsmalloc kernel-vm --kernel 6.1` finds every zstd field and
    sampled object of a booted 6.1 equal: benchmarks/RESULTS.md.)
    """
    _install(lib1410, no_system_zstd, "1.4.10")
    assert library_version(lib1410) == "1.4.10"
    page = text_page(random.Random(3))
    compress, decompress = library_codec(lib1410, 3, "crypto")
    kernels = compress(page)
    assert decompress(kernels) == page
    assert len(kernels) == 1863  # 1.5.5 and 1.5.7 make 1861 bytes of this page
    assert len(get_codec("zstd", frame="crypto").compress(page)) == 1861
    with ZramDevice(16 * PAGE, algorithm="zstd", kernel="6.1") as dev:
        assert dev.zstd_library is not None and dev.zstd_library.version == "1.4.10"
        dev.write_page(0, page)
        assert _stored(dev, 0) == kernels
        assert dev.read_page(0) == page


@pytest.mark.model_only  # no device in it
def test_the_cache_takes_a_library_only_as_the_version_it_reports(tmp_path, lib157):
    cache = tmp_path / "cache"
    with pytest.raises(KernelZstdError, match=r"reports libzstd 1\.5\.7, not 1\.4\.10"):
        install_library(lib157, "1.4.10", "a test's mislabelled copy", cache)
    assert not cached_path("1.4.10", cache).exists()
    assert not cached_path("1.4.10", cache).with_suffix(".partial").exists()
    # one put there by other means is refused where it is looked for, and built again over
    _install(lib157, cache, "1.4.10")
    with pytest.raises(KernelZstdError, match="remove it and fetch it again"):
        cached_library("1.4.10", cache)
    assert reusable("1.4.10", cache) is None
    lib = install_library(lib157, "1.5.7", "a test's copy", cache)
    assert reusable("1.5.7", cache) == lib == cached_library("1.5.7", cache)
