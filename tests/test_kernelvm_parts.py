"""The kernel VM harness's pure parts: cpio, the mirror's checks, modules, the init script, the parser.

No VM here (tests/test_kernel_vm.py boots one): these run everywhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import random
import shutil
import stat
import struct
import subprocess
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from zram_pages import text_page
from zsmalloc.cli import kernelvm as cli_kernelvm
from zsmalloc.cli import main
from zsmalloc.kernelvm import BootError, Comparison, debian, mirror
from zsmalloc.kernelvm.cpio import CpioWriter, read_newc
from zsmalloc.kernelvm.guest import MARK, STAGES, STAT_FIELDS, Run, init_script, parse_console
from zsmalloc.kernelvm.harness import (
    IMAGE_KINDS,
    MODELS,
    Row,
    discard_ranges,
    make_image,
    model_of,
    our_objects,
    replay_preset,
    replay_stats,
    sample_pages,
    stage_traces,
)
from zsmalloc.zram.lz4_kernel import lz4_compress_fast


def test_cpio_round_trips_every_kind_of_member(tmp_path):
    big = tmp_path / "big.img"
    big.write_bytes(bytes(range(256)) * 5000 + b"odd")  # not a multiple of 4: padding
    buf = io.BytesIO()
    cpio = CpioWriter(buf)
    cpio.directory("bin")
    cpio.file("bin/busybox", b"\x7fELF-ish", perm=0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.char_device("dev/console", 5, 1)
    cpio.file("images/big.img", big)
    cpio.close()
    data = buf.getvalue()
    assert len(data) % 4 == 0 and data.startswith(b"070701")
    members = {name: (mode, body) for name, mode, body in read_newc(data)}
    assert list(members) == ["bin", "bin/busybox", "bin/sh", "dev/console", "images/big.img"]
    assert stat.S_ISDIR(members["bin"][0])
    assert members["bin/busybox"] == (stat.S_IFREG | 0o755, b"\x7fELF-ish")
    assert stat.S_ISLNK(members["bin/sh"][0]) and members["bin/sh"][1] == b"busybox"
    assert stat.S_ISCHR(members["dev/console"][0])
    assert members["images/big.img"][1] == big.read_bytes()
    # the device numbers of /dev/console: rdevmajor and rdevminor, the 10th and 11th fields
    at = data.index(b"dev/console") - 110
    assert int(data[at + 6 + 8 * 9 : at + 6 + 8 * 10], 16) == 5
    assert int(data[at + 6 + 8 * 10 : at + 6 + 8 * 11], 16) == 1


def test_cpio_refuses_a_name_twice():
    cpio = CpioWriter(io.BytesIO())
    cpio.file("init", b"x")
    with pytest.raises(ValueError, match="already"):
        cpio.file("/init", b"y")


def _elf_with_modinfo(modinfo: bytes) -> bytes:
    """A minimal ELF64 file with a section string table and a .modinfo section."""
    shstr = b"\0.shstrtab\0.modinfo\0"
    body_off = 64
    shstr_off, mod_off = body_off, body_off + len(shstr)
    shoff = mod_off + len(modinfo)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 1)
    sections = bytes(64)  # the null section
    sections += struct.pack("<IIQQQQ", 1, 3, 0, 0, shstr_off, len(shstr)).ljust(64, b"\0")
    sections += struct.pack("<IIQQQQ", 11, 1, 0, 0, mod_off, len(modinfo)).ljust(64, b"\0")
    return bytes(header) + shstr + modinfo + sections


def test_modinfo_depends_are_read_from_the_modinfo_section():
    elf = _elf_with_modinfo(b"license=GPL\0depends=lz4hc_compress,lz4_compress\0vermagic=6.12 SMP\0")
    assert debian.modinfo(elf)["license"] == "GPL"
    assert debian.module_depends(elf) == ["lz4hc_compress", "lz4_compress"]
    assert debian.module_depends(_elf_with_modinfo(b"depends=\0")) == []
    with pytest.raises(ValueError, match="ELF64"):
        debian.modinfo(b"not an elf file at all, not at all")


def test_kernel_module_order_reads_compressed_modules_and_skips_builtins(tmp_path):
    moddir = tmp_path / "lib" / "modules" / "6.12.9+deb12-amd64"
    (moddir / "kernel").mkdir(parents=True)
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "vmlinuz-6.12.9+deb12-amd64").write_bytes(b"kernel")
    (tmp_path / "boot" / "config-6.12.9+deb12-amd64").write_text(
        'CONFIG_ZRAM=m\n# CONFIG_ZSMALLOC_STAT is not set\nCONFIG_ZSMALLOC_CHAIN_SIZE=8\nCONFIG_X="a b"\n'
    )
    (moddir / "modules.builtin").write_text("kernel/mm/zsmalloc.ko\n")
    for name, deps in (
        ("zram", "lz4hc_compress,lz4_compress,zsmalloc"),
        ("lz4_compress", ""),
        ("lz4hc_compress", ""),
    ):
        elf = _elf_with_modinfo(f"depends={deps}\0".encode())
        (moddir / "kernel" / f"{name}.ko.xz").write_bytes(lzma.compress(elf))
    kernel = debian.load_kernel(tmp_path, "linux-image-test")
    assert kernel.release == "6.12.9+deb12-amd64" and kernel.series == "6.12"
    assert kernel.chain_size() == 8 and kernel.config["CONFIG_X"] == "a b"
    assert "CONFIG_ZSMALLOC_STAT" not in kernel.config
    assert kernel.module_order(["zram"]) == ["lz4hc_compress", "lz4_compress", "zram"]
    with pytest.raises(debian.PackageError, match="no module lz4"):
        kernel.module_order(["lz4"])


def test_resolve_puts_dependencies_first_and_finds_cycles():
    deps = {"a": ["b", "c"], "b": ["c"], "c": [], "d": ["a"]}
    assert debian.resolve(["d", "c"], deps.__getitem__) == ["c", "b", "a", "d"]
    with pytest.raises(ValueError, match="cycle: x -> y -> x"):
        debian.resolve(["x"], {"x": ["y"], "y": ["x"]}.__getitem__)


def test_newest_compares_version_numbers_not_text():
    names = [
        "linux-image-6.12.9+deb12-amd64-unsigned",
        "linux-image-6.12.107+deb12-amd64-unsigned",
        "linux-image-6.12.107+deb12-cloud-amd64-unsigned",
        "linux-image-6.12.41+deb12-amd64-unsigned",
    ]
    assert debian.newest(names, debian.KERNEL_PACKAGES["6.12"]) == names[1]
    assert debian.newest(names, debian.KERNEL_PACKAGES["6.1"]) is None
    assert debian.module_name("kernel/lib/lz4/lz4-compress.ko.xz") == "lz4_compress"


def test_init_script_performs_each_run_in_order():
    runs = [
        Run("files-lz4", "/images/files.img", "lz4", 64 * 4096, ((0, 4), (10, 1))),
        Run("files-zstd", "/images/files.img", "zstd", 64 * 4096, ()),
    ]
    script = init_script(["lz4_compress", "zram"], runs)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/busybox sh" and lines[-1] == "poweroff -f"
    assert lines.index("insmod /lib/modules/lz4_compress.ko || fail insmod lz4_compress") < lines.index(
        "insmod /lib/modules/zram.ko || fail insmod zram"
    )
    first = script.index("echo lz4 > /sys/block/zram0/comp_algorithm")
    second = script.index("echo zstd > /sys/block/zram0/comp_algorithm")
    assert first < script.index("blkdiscard -o 0 -l 16384 /dev/zram0") < second
    assert script.index("blkdiscard -o 40960 -l 4096 /dev/zram0") < second
    assert script.count("echo 1 > /sys/block/zram0/compact") == 2
    assert script.count("echo 1 > /sys/block/zram0/reset") == 2
    assert "echo 262144 > /sys/block/zram0/disksize" in script


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("a b", "/i", "lz4", 4096, ()), "plain name"),
        (("a", "/i", "lz4;reboot", 4096, ()), "plain name"),
        (("a", "/i", "lz4", 4000, ()), "multiple of 4096"),
        (("a", "/i", "lz4", 4096 * 4, ((3, 2),)), "outside the device"),
    ],
)
def test_run_refuses_what_the_script_could_not_do_safely(args, message):
    with pytest.raises(ValueError, match=message):
        Run(*args)


def _stat_lines(name: str, stage: str, base: int) -> list[str]:
    return [
        f"{MARK} stat {name} {stage} {f} " + " ".join(f"{base + i:8d}" for i in range(len(fields)))
        for f, fields in STAT_FIELDS.items()
    ]


def test_parse_console_reads_every_stage_among_kernel_noise():
    lines = ["SeaBIOS (version 1.16)", f"{MARK} begin 6.12.9+deb12-amd64", f"{MARK} run r1"]
    for n, stage in enumerate(STAGES):
        lines += _stat_lines("r1", stage, 100 * n)
    lines.insert(5, "[    3.141] zram0: detected capacity change from 0 to 512")
    lines += [f"{MARK} end", "[    9.0] reboot: Power down"]
    report = parse_console("\r\n".join(lines))
    assert report.release == "6.12.9+deb12-amd64" and report.ended and not report.errors
    assert report.missing(["r1"]) == []
    assert report.runs["r1"]["discard"]["mm_stat"]["orig_data_size"] == 100
    assert report.runs["r1"]["compact"]["mm_stat"]["huge_pages_since"] == 208
    assert report.runs["r1"]["fill"]["io_stat"] == {
        "failed_reads": 0,
        "failed_writes": 1,
        "invalid_io": 2,
        "notify_free": 3,
    }
    assert report.missing(["r1", "r2"])[0] == "r2/fill/mm_stat"


def test_parse_console_reports_a_short_or_missing_stat_file_and_errors():
    text = "\n".join(
        [
            f"{MARK} stat r1 fill mm_stat 1 2 3",
            f"{MARK} stat r1 fill bd_stat missing",
            f"{MARK} stat r1 fill io_stat 0 0 0 0",
            f"{MARK} stat r1 later io_stat 0 0 0 0",
            f"{MARK} error r1 blkdiscard 40",
        ]
    )
    report = parse_console(text)
    assert not report.ended and report.release is None
    assert report.errors == [
        "r1/fill/mm_stat: 1 2 3",
        "r1/fill/bd_stat: missing",
        f"unknown stat line: {MARK} stat r1 later io_stat 0 0 0 0",
        "r1 blkdiscard 40",
    ]
    assert set(report.missing(["r1"])) >= {"r1/fill/mm_stat", "r1/fill/bd_stat", "r1/discard/io_stat"}
    assert "r1/fill/io_stat" not in report.missing(["r1"])


def test_discard_ranges_are_seeded_disjoint_and_inside_the_device():
    ranges = discard_ranges(4096, 7)
    assert ranges == discard_ranges(4096, 7) and ranges != discard_ranges(4096, 8)
    ends = [first + count for first, count in ranges]
    assert all(1 <= c <= 64 for _, c in ranges) and ends[-1] <= 4096
    assert all(end < nxt for end, (nxt, _) in zip(ends, ranges[1:], strict=False))
    share = sum(c for _, c in ranges) / 4096
    assert 0.25 < share < 0.55


def test_images_of_each_kind_are_whole_seeded_pages(tmp_path):
    for kind in IMAGE_KINDS:
        path = tmp_path / f"{kind}.img"
        assert make_image(kind, 32, 3, path) == 32
        data = path.read_bytes()
        assert len(data) == 32 * 4096
        assert make_image(kind, 32, 3, tmp_path / "again.img") == 32
        assert (tmp_path / "again.img").read_bytes() == data
    same = (tmp_path / "same-filled.img").read_bytes()
    pages = [same[i : i + 4096] for i in range(0, len(same), 4096)]
    assert sum(p == p[:8] * 512 for p in pages) >= 10  # 60% same-filled, seeded
    with pytest.raises(ValueError, match="unknown image kind"):
        make_image("nope", 1, 0, tmp_path / "x")


def test_row_difference_and_its_share():
    assert Row("files", "lz4", "fill", "mm_stat", "compr_data_size", 200, 198).relative == -0.01
    assert Row("files", "lz4", "fill", "mm_stat", "same_pages", 0, 0).relative is None


def test_init_script_with_trace_records_the_fill_and_the_discards_only():
    run = Run("r", "/images/r.img", "zstd", 8 * 4096, ((2, 3),))
    assert "kprobe_events" not in init_script(["zram"], [run])
    script = init_script(["zram"], [run], trace=True)
    lines = script.splitlines()
    assert (
        "echo 'p:zsm zs_malloc size=%si:u64' >> /sys/kernel/tracing/kprobe_events"
        " || fail kprobe p:zsm on zs_malloc refused: no such function in this kernel, or its arguments moved"
        in lines
    )
    enable = lines.index("echo 1 > /sys/kernel/tracing/events/kprobes/enable || fail r kprobes")
    dd = next(i for i, line in enumerate(lines) if line.startswith("dd if=/images/r.img"))
    assert enable < dd < lines.index("dump_trace r fill") < lines.index("dump_trace r discard")
    disable = lines.index("echo 0 > /sys/kernel/tracing/events/kprobes/enable")
    assert (
        lines.index("dump_trace r discard")
        < disable
        < lines.index("echo 1 > /sys/block/zram0/compact || fail r compact")
    )


def test_parse_console_collects_traces_and_lost_events():
    text = "\n".join(
        [
            f"{MARK} trace r fill m ffff888004a3c000 1234",
            f"{MARK} trace r fill m ffff888004a3c010 4096",
            f"{MARK} overrun r fill overrun: 0",
            f"{MARK} trace r discard f ffff888004a3c000",
            f"{MARK} overrun r discard overrun: 17",
        ]
    )
    report = parse_console(text)
    assert report.traces == {
        "r": {
            "fill": ["m ffff888004a3c000 1234", "m ffff888004a3c010 4096"],
            "discard": ["f ffff888004a3c000"],
        }
    }
    assert report.errors == ["r/discard: the trace buffer lost 17 events"]
    stages = stage_traces(report.traces["r"])
    assert stages["fill"] == report.traces["r"]["fill"]
    assert stages["discard"] == [*stages["fill"], "f ffff888004a3c000"]
    assert stages["compact"] == [*stages["discard"], "c"]


def test_init_script_with_samples_reads_them_back_under_the_byte_probes():
    run = Run("r", "/images/r.img", "lz4", 8 * 4096, (), samples=(1, 6))
    lines = init_script(["zram"], [run], trace=True).splitlines()
    probes = [line for line in lines if "LZ4_decompress_safe" in line or "zstd_decompress_dctx" in line]
    assert len(probes) == 8 and all("x64[64]" in line for line in probes)
    reads = [i for i, line in enumerate(lines) if "iflag=direct" in line]
    assert [lines[i].split()[4] for i in reads] == ["skip=1", "skip=6"]
    assert (
        lines.index("dump_trace r fill")
        < reads[0]
        < lines.index("dump_bytes r")
        < lines.index("dump_trace r discard")
    )
    # without samples there are no byte probes at all
    plain = init_script(["zram"], [Run("r", "/images/r.img", "lz4", 8 * 4096, ())], trace=True)
    assert "LZ4_decompress_safe" not in plain
    with pytest.raises(ValueError, match="sampled page"):
        Run("r", "/images/r.img", "lz4", 8 * 4096, (), samples=(8,))


def test_parse_console_puts_each_object_together_from_its_parts():
    head = [0x0706050403020100, 0x0F0E0D0C0B0A0908]
    text = "\n".join(
        [
            f"{MARK} bytes r lz4d1 20  0x1  ",  # the parts may come in any order
            f"{MARK} bytes r lz4d0 20  " + " ".join(hex(w) for w in head) + " 0x131211100f",
            f"{MARK} bytes r lz4d3 20 0x0",
            f"{MARK} bytes r lz4d2 20 0x0",
            *(f"{MARK} bytes r zstdd{p} 3 {'0x636261' if p == 0 else '0x0'}" for p in range(4)),
            f"{MARK} bytes q lz4d0 9 0x12 [LINE TOO BIG]",
        ]
    )
    report = parse_console(text)
    obj = bytes(range(16)) + bytes([0x0F, 0x10, 0x11, 0x12])
    assert report.objects("r") == [obj, b"abc"]
    assert report.objects("other") == [] and report.objects("q") == []
    assert report.errors == [f"q: an unreadable capture of lz4d0: {MARK} bytes q lz4d0 9 0x12 [LINE TOO BIG]"]


def test_parse_console_reports_captures_whose_parts_do_not_pair_up():
    lines = [f"{MARK} bytes r lz4d{p} 3 0x616263" for p in range(4)]
    text = "\n".join([*lines, f"{MARK} bytes r lz4d0 3 0x0"])  # part 0 twice
    assert parse_console(text).errors == ["r: the parts of lz4d's captures do not pair up: [1, 2]"]


def test_sampled_pages_are_seeded_sorted_and_inside_the_device():
    picks = sample_pages(100, 10, 3)
    assert picks == sample_pages(100, 10, 3) and list(picks) == sorted(set(picks))
    assert all(0 <= i < 100 for i in picks) and len(picks) == 10
    assert sample_pages(5, 10, 3) == (0, 1, 2, 3, 4)


def test_our_objects_leave_out_same_filled_and_huge_pages(tmp_path):
    rng = random.Random(4)
    pages = [bytes(4096), text_page(rng), rng.randbytes(4096), text_page(rng)]
    image = tmp_path / "i.img"
    image.write_bytes(b"".join(pages))
    objects = our_objects(image, "lz4", "6.12", range(4))
    assert objects == [lz4_compress_fast(pages[1]), lz4_compress_fast(pages[3])]


def test_replay_preset_follows_the_kernel_versions():
    assert replay_preset("6.12.118+deb12-amd64") == ("min-waste", "ratio")
    assert replay_preset("6.3.0") == ("min-waste", "legacy")
    assert replay_preset("6.1.0-57-amd64") == ("used-percentage", "legacy")


def test_replay_stats_runs_zsmalloc_replay_on_a_trace(tmp_path):
    trace = tmp_path / "t.trace"
    # 40 objects of 3000 bytes, every other one freed (no zspage empties), then compaction
    lines = [f"m {i:x} 3000" for i in range(40)] + [f"f {i:x}" for i in range(0, 40, 2)]
    trace.write_text("\n".join(lines) + "\nc\n")
    got = replay_stats(trace, 8, "min-waste", "ratio")
    assert got["objects"] == 20
    assert got["mem_used_max"] >= got["mem_used_total"] > 0
    assert got["pages_compacted"] * 4096 == got["mem_used_max"] - got["mem_used_total"]


def _fake_comparison() -> Comparison:
    rows = [
        Row("files", alg, stage, f, fld, 1000, 1000 + (7 if fld == "compr_data_size" else 0))
        for alg in ("lz4", "zstd")
        for stage in STAGES
        for f, fields in STAT_FIELDS.items()
        for fld in fields
    ]
    return Comparison("linux-image-x", "6.12.1", 8, "6.12", {"files": 64}, {"files": 10}, rows, 1.0, 2.0)


def test_the_kernel_vm_command_prints_every_mm_stat_field_with_its_difference(monkeypatch):
    seen = {}

    def fake_run(series, kinds, algorithms, **kw):
        seen.update(series=series, kinds=list(kinds), algorithms=list(algorithms), **kw)
        return _fake_comparison()

    monkeypatch.setattr(cli_kernelvm, "run_comparison", fake_run)
    result = CliRunner().invoke(main, ["kernel-vm", "--image-kind", "files", "--pages", "64"])
    assert result.exit_code == 0, result.output
    assert seen["series"] == "6.12" and seen["kinds"] == ["files"] and seen["algorithms"] == ["lz4", "zstd"]
    assert seen["pages"] == 64
    for fld in STAT_FIELDS["mm_stat"]:
        assert fld in result.output
    assert "+7 (+0.70%)" in result.output
    assert "io_stat: all 24 values equal" in result.output
    out = CliRunner().invoke(main, ["kernel-vm", "--json"])
    doc = json.loads(out.output)
    assert doc["release"] == "6.12.1" and len(doc["rows"]) == len(_fake_comparison().rows)
    assert {r["diff"] for r in doc["rows"]} == {0, 7}


def test_the_kernel_vm_command_reports_a_failed_boot(monkeypatch):
    def fail(*args, **kw):
        raise BootError("the guest did not power off within 5 s", "console text")

    monkeypatch.setattr(cli_kernelvm, "run_comparison", fail)
    result = CliRunner().invoke(main, ["kernel-vm"])
    assert result.exit_code == 1 and "did not power off" in result.output


# --- kernels from the mirror (kernelvm.mirror): a signed suite of our own, no network ---

RELEASE_ABI = "7.2.13+deb14-amd64"
SPLIT = {  # sid's split kernel: package -> (Depends, the .deb's bytes)
    f"linux-image-{RELEASE_ABI}": (
        f"dracut | initramfs-tools (>= 0.120), linux-base-{RELEASE_ABI} (= 7.2.13-1), "
        f"linux-binary-{RELEASE_ABI} (= 7.2.13-1), linux-modules-{RELEASE_ABI} (= 7.2.13-1)",
        b"image",
    ),
    f"linux-binary-{RELEASE_ABI}": (f"linux-base-{RELEASE_ABI} (= 7.2.13-1)", b"vmlinuz"),
    f"linux-modules-{RELEASE_ABI}": (f"kmod, linux-base-{RELEASE_ABI} (= 7.2.13-1)", b"modules"),
    f"linux-base-{RELEASE_ABI}": ("", b"config"),
    "linux-image-7.2.9+deb14-amd64": ("", b"older"),
}
VALID_UNTIL = "Fri, 06 Nov 2026 08:08:01 UTC"
BEFORE = datetime(2026, 11, 1, tzinfo=UTC)


def _packages_text(packages: dict[str, tuple[str, bytes]]) -> str:
    stanzas = []
    for name, (deps, body) in packages.items():
        stanza = f"Package: {name}\nVersion: 1\n"
        stanza += f"Depends: {deps}\n" if deps else ""
        stanza += "Description: Linux 7.2 for 64-bit PCs\n a second line of the description\n"
        stanza += f"Filename: pool/main/l/linux/{name}_1_amd64.deb\nSize: {len(body)}\n"
        stanza += f"SHA256: {hashlib.sha256(body).hexdigest()}\n"
        stanzas.append(stanza)
    return "\n".join(stanzas)


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    """A throwaway OpenPGP key (gpg): ``sign(text) -> InRelease bytes``, and its keyring for gpgv."""
    if shutil.which("gpg") is None or shutil.which("gpgv") is None:
        pytest.skip("gpg and gpgv are needed to sign and verify a test suite (Debian: gpg, gpgv)")
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}

    def gpg(*args: str, data: bytes = b"") -> bytes:
        return subprocess.run(
            ["gpg", "--batch", *args], input=data, env=env, capture_output=True, check=True
        ).stdout

    gpg("--passphrase", "", "--quick-gen-key", "zsmalloc test <test@example.org>", "ed25519", "sign", "never")
    keyring = home / "keyring.gpg"
    keyring.write_bytes(gpg("--export"))
    yield (lambda text: gpg("--clearsign", data=text.encode())), keyring
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)


class FakeMirror:
    """The files of a mirror by path, served to mirror.Suite as its fetcher; counts the fetches."""

    def __init__(self, sign, *, suite: str = "sid", packages: dict | None = None) -> None:
        self.packages = SPLIT if packages is None else packages
        index = lzma.compress(_packages_text(self.packages).encode())
        release = (
            f"Suite: unstable\nCodename: {suite}\nValid-Until: {VALID_UNTIL}\nSHA256:\n"
            f" {hashlib.sha256(index).hexdigest()} {len(index)} main/binary-amd64/Packages.xz\n"
            f" {'0' * 64} 12 main/binary-i386/Packages.xz\n"
        )
        self.files = {
            f"dists/{suite}/InRelease": sign(release),
            f"dists/{suite}/{mirror.PACKAGES_INDEX}": index,
        }
        for name, (_deps, body) in self.packages.items():
            self.files[f"pool/main/l/linux/{name}_1_amd64.deb"] = body
        self.fetched: list[str] = []
        self.offline = False

    def __call__(self, url: str, dest) -> None:
        path = url.removeprefix("http://mirror.test/")
        self.fetched.append(path)
        if self.offline or path not in self.files:
            raise mirror.PackageError(f"cannot download {url}: no such file")
        dest.write_bytes(self.files[path])

    def suite(self, cache, keyring, name: str = "sid", now: datetime = BEFORE) -> mirror.Suite:
        return mirror.Suite(name, cache, mirror="http://mirror.test", keyring=keyring, fetch=self, now=now)


def test_parse_stanzas_reads_fields_continuations_and_paragraphs():
    text = "Package: a\nDescription: one\n two\n .\n\n\nPackage: b\nSHA256:\n ab 3 x/y\n 0C 4 z\n"
    stanzas = mirror.parse_stanzas(text)
    assert stanzas == [
        {"Package": "a", "Description": "one\ntwo\n."},
        {"Package": "b", "SHA256": "\nab 3 x/y\n0C 4 z"},
    ]
    assert mirror.release_hashes(stanzas[1]) == {"x/y": ("ab", 3), "z": ("0c", 4)}
    with pytest.raises(mirror.PackageError, match="not a deb822 field"):
        mirror.parse_stanzas("Package: a\nno colon here\n")
    with pytest.raises(mirror.PackageError, match="continuation"):
        mirror.parse_stanzas(" leading continuation\n")


def test_depends_lists_every_alternative_without_versions():
    stanza = {
        "Pre-Depends": "linux-base (>= 4.17~)",
        "Depends": "dracut | initramfs-tools (>= 0.1), kmod:any",
    }
    assert mirror.depends(stanza) == ["linux-base", "dracut", "initramfs-tools", "kmod"]
    assert mirror.depends({}) == []


def test_a_split_kernel_is_the_image_and_the_packages_of_its_release(signer, tmp_path):
    sign, keyring = signer
    fake = FakeMirror(sign)
    suite = fake.suite(tmp_path, keyring)
    image = debian.newest(suite.packages, debian.MIRROR_KERNELS["7.2"][1])
    assert image == f"linux-image-{RELEASE_ABI}"  # 7.2.13 over 7.2.9; not dracut nor kmod below
    names = mirror.kernel_packages(suite, image)
    assert names == [image, *(f"linux-{p}-{RELEASE_ABI}" for p in ("base", "binary", "modules"))]
    debs = [suite.download(n) for n in names]
    assert [d.read_bytes() for d in debs] == [b"image", b"config", b"vmlinuz", b"modules"]
    assert all(d.parent == tmp_path / "debs" for d in debs)
    # a second look uses the cache: only the InRelease is fetched again
    fake.fetched.clear()
    again = fake.suite(tmp_path, keyring)
    assert again.download(image) == debs[0] and fake.fetched == ["dists/sid/InRelease"]
    # and without the mirror, the cached InRelease is verified and used
    fake.offline = True
    assert fake.suite(tmp_path, keyring).download(names[2]).read_bytes() == b"vmlinuz"


def test_a_tampered_packages_index_is_refused_and_removed(signer, tmp_path):
    sign, keyring = signer
    fake = FakeMirror(sign)
    path = f"dists/sid/{mirror.PACKAGES_INDEX}"
    fake.files[path] = lzma.compress(
        _packages_text({**SPLIT, "linux-image-7.2.99+deb14-amd64": ("", b"evil")}).encode()
    )
    with pytest.raises(mirror.PackageError, match=r"Packages\.xz does not match its signed hash"):
        fake.suite(tmp_path, keyring)
    assert not list((tmp_path / "dists" / "sid").glob("Packages-*"))


def test_a_tampered_deb_is_refused_and_removed(signer, tmp_path):
    sign, keyring = signer
    fake = FakeMirror(sign)
    suite = fake.suite(tmp_path, keyring)
    name = f"linux-modules-{RELEASE_ABI}"
    fake.files[f"pool/main/l/linux/{name}_1_amd64.deb"] = b"modulez"  # same size, other bytes
    with pytest.raises(mirror.PackageError, match=r"linux-modules-.*does not match its signed hash.*SHA256"):
        suite.download(name)
    assert not (tmp_path / "debs" / f"{name}_1_amd64.deb").exists()
    # a cached .deb altered afterwards is refused too, the next time it is used
    fake.files[f"pool/main/l/linux/{name}_1_amd64.deb"] = b"modules"
    deb = suite.download(name)
    deb.write_bytes(b"modules, and more")
    with pytest.raises(mirror.PackageError, match="17 bytes"):
        suite.download(name)


def test_a_release_without_a_good_signature_is_refused(signer, tmp_path):
    sign, keyring = signer
    fake = FakeMirror(sign)
    inrelease = fake.files["dists/sid/InRelease"]
    fake.files["dists/sid/InRelease"] = inrelease.replace(b"Codename: sid", b"Codename: sie")
    with pytest.raises(mirror.PackageError, match="no good signature"):
        fake.suite(tmp_path, keyring)
    other = tmp_path / "empty.gpg"
    other.write_bytes(b"")
    fake.files["dists/sid/InRelease"] = inrelease
    with pytest.raises(mirror.PackageError, match="no good signature"):
        fake.suite(tmp_path, other)
    with pytest.raises(mirror.PackageError, match="no archive keyring"):
        fake.suite(tmp_path, tmp_path / "missing.gpg")


def test_a_release_of_another_suite_or_past_its_valid_until_is_refused(signer, tmp_path, monkeypatch):
    sign, keyring = signer
    other = FakeMirror(sign, suite="trixie-backports")
    other.files["dists/sid/InRelease"] = other.files["dists/trixie-backports/InRelease"]
    with pytest.raises(mirror.PackageError, match="fetched for sid is that of trixie-backports / unstable"):
        other.suite(tmp_path, keyring, name="sid")
    fake = FakeMirror(sign)
    later = datetime(2026, 12, 2, tzinfo=UTC)
    monkeypatch.delenv(mirror.ACCEPT_EXPIRED_ENV, raising=False)
    with pytest.raises(mirror.PackageError, match=f"expired on {VALID_UNTIL}.*{mirror.ACCEPT_EXPIRED_ENV}=1"):
        fake.suite(tmp_path, keyring, now=later)
    monkeypatch.setenv(mirror.ACCEPT_EXPIRED_ENV, "1")
    assert fake.suite(tmp_path, keyring, now=later).packages


def test_load_kernel_reads_the_usr_lib_layout_of_split_packages(tmp_path):
    release = RELEASE_ABI
    moddir = tmp_path / "usr" / "lib" / "modules" / release
    (moddir / "kernel" / "drivers").mkdir(parents=True)
    (moddir / "vmlinuz").write_bytes(b"kernel")
    (moddir / "config").write_text("CONFIG_ZSMALLOC_CHAIN_SIZE=8\nCONFIG_LZ4_COMPRESS=y\n")
    (moddir / "modules.builtin").write_text("kernel/lib/lz4/lz4_compress.ko\nkernel/mm/zsmalloc.ko\n")
    elf = _elf_with_modinfo(b"depends=lz4hc_compress,lz4_compress\0")
    (moddir / "kernel" / "drivers" / "zram.ko.xz").write_bytes(lzma.compress(elf))
    (moddir / "kernel" / "drivers" / "lz4hc_compress.ko.xz").write_bytes(
        lzma.compress(_elf_with_modinfo(b"depends=\0"))
    )
    kernel = debian.load_kernel(tmp_path, f"linux-image-{release}")
    assert (kernel.release, kernel.series, kernel.vmlinuz) == (release, "7.2", moddir / "vmlinuz")
    assert kernel.chain_size() == 8
    assert kernel.module_order(["zram"]) == ["lz4hc_compress", "zram"]  # lz4_compress is built in
    with pytest.raises(debian.PackageError, match="no boot/vmlinuz"):
        debian.load_kernel(tmp_path / "usr" / "lib" / "modules")
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "vmlinuz-7.2.1").write_bytes(b"kernel")  # boot/ first, and its modules lack
    with pytest.raises(debian.PackageError, match=r"no lib/modules/7\.2\.1 nor usr/lib/modules/7\.2\.1"):
        debian.load_kernel(tmp_path)


def test_every_series_runs_under_a_preset_of_its_chain_size():
    assert set(MODELS) == set(debian.SERIES)
    assert model_of("6.16", 8) == model_of("7.2", 8) == "6.17"
    assert model_of("6.1", 4) == "6.1"
    with pytest.raises(ValueError, match=r"no kernel preset models 5\.10"):
        model_of("5.10", 4)
    with pytest.raises(ValueError, match=r"CONFIG_ZSMALLOC_CHAIN_SIZE=16, its preset 6\.17 chain size 8"):
        model_of("6.16", 16)


def test_the_kernel_vm_command_takes_the_mirrors_series(monkeypatch):
    seen = []
    monkeypatch.setattr(
        cli_kernelvm, "run_comparison", lambda series, *a, **kw: seen.append(series) or _fake_comparison()
    )
    for series in ("6.16", "7.2"):
        assert CliRunner().invoke(main, ["kernel-vm", "--kernel", series]).exit_code == 0
    assert seen == ["6.16", "7.2"]
    assert CliRunner().invoke(main, ["kernel-vm", "--kernel", "6.6"]).exit_code == 2  # no package for it
