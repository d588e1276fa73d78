"""Debian's 6.12 (and 6.1) kernel under QEMU against ``zsmalloc stats``: the short form of the harness.

One boot (TCG, about half a minute): a small image of real files, written to
the guest's zram with lz4 and with zstd, discarded in part and compacted.
Every field of every stat file at every stage must be read from the guest,
``zsmalloc stats --kernel 6.12`` must run on the same image and operations,
and every field must be equal to the kernel's: the codec-dependent ones too
(compr_data_size, mem_used_total, huge_pages, pages_compacted), since the
preset compresses lz4 with the kernel's own compressor (``lz4-kernel``) and
zstd with the kernel's libzstd version, frame and parameters.  24 pages of
each run are read back while kprobes capture the compressed objects the
kernel decompresses: each must be byte-identical to the one our device
stores for that page.  Our
pool fed the kernel's own object sizes (kprobes on zs_malloc and zs_free in
the guest, ``zsmalloc replay``) must end each stage with the kernel's
mem_used_total, mem_used_max and pages_compacted.

A second boot, of 6.1, writes the same image with zstd alone: its lib/zstd is
1.4.10, which no libzstd release reproduces, and the 6.1 preset compresses
through 6.1's own lib/zstd built from its source (``make zstd-library``; the
test skips without that build, and fails instead when
``ZSMALLOC_REQUIRE_KERNEL_ZSTD`` names 1.4.10).

Skipped when qemu-system-x86_64 or the kernel package cannot be had; under
``ZSMALLOC_REQUIRE_KERNEL_VM=1`` (CI) it fails instead.  It runs on the
default backend only: ``zsmalloc stats`` is the same command on both.
"""

from __future__ import annotations

import os
import shutil

import pytest

from zsmalloc.kernelvm import STAGES, STAT_FIELDS, BootError, run_comparison
from zsmalloc.kernelvm.debian import PackageError
from zsmalloc.kernelvm.harness import REPLAY_FIELDS
from zsmalloc.zram.zstdlib import find_library, required_versions

pytestmark = pytest.mark.kernel_vm

REQUIRED = os.environ.get("ZSMALLOC_REQUIRE_KERNEL_VM") == "1"

if os.environ.get("ZSMALLOC_BACKEND") == "model":
    pytest.skip("the kernel VM comparison runs once, on the default backend", allow_module_level=True)


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"ZSMALLOC_REQUIRE_KERNEL_VM=1 but {reason}")
    pytest.skip(reason)


def _boot(series: str, algorithms: list[str]):
    """One boot of ``series`` with the files image and ``algorithms``, compared with our side."""
    if shutil.which("qemu-system-x86_64") is None:
        _unavailable("qemu-system-x86_64 is not installed (Debian: qemu-system-x86)")
    try:
        return run_comparison(series, ["files"], algorithms, pages=1024, seed=3, samples=24, timeout=600)
    except PackageError as exc:
        _unavailable(f"Debian's {series} kernel or busybox-static cannot be had: {exc}")
    except BootError as exc:
        pytest.fail(f"{exc}\n--- the guest's console ---\n{exc.console[-4000:]}")


@pytest.fixture(scope="module")
def comparison():
    return _boot("6.12", ["lz4", "zstd"])


@pytest.mark.timeout(900)
def test_the_guest_reports_every_field_of_every_stage(comparison):
    assert comparison.release.startswith("6.12.")
    assert comparison.chain_size == 8  # Debian's CONFIG_ZSMALLOC_CHAIN_SIZE
    n_fields = sum(len(f) for f in STAT_FIELDS.values())
    assert len(comparison.rows) == 2 * len(STAGES) * (n_fields + len(REPLAY_FIELDS)) + 2 * 2
    got = {(r.algorithm, r.stage, r.file, r.field) for r in comparison.rows}
    assert len(got) == len(comparison.rows)
    by_stage = {(r.algorithm, r.stage, r.field): r.kernel for r in comparison.rows if r.file == "mm_stat"}
    for alg in ("lz4", "zstd"):
        # the kernel stored the pages, the discards freed some, and compaction freed pool pages
        assert by_stage[alg, "fill", "orig_data_size"] == comparison.pages["files"] * 4096
        discarded = comparison.discards["files"] * 4096
        assert by_stage[alg, "discard", "orig_data_size"] == comparison.pages["files"] * 4096 - discarded
        assert by_stage[alg, "compact", "mem_used_total"] <= by_stage[alg, "discard", "mem_used_total"]
        assert by_stage[alg, "compact", "pages_compacted"] > 0


@pytest.mark.timeout(900)
def test_every_field_is_the_kernels(comparison):
    unequal = comparison.unequal()
    assert not unequal, "\n".join(
        f"{r.algorithm}/{r.stage}/{r.file}.{r.field}: kernel {r.kernel}, ours {r.ours}" for r in unequal
    )
    # the codec-dependent fields were compared, on pages that compressed
    compr = [r for r in comparison.rows if r.field == "compr_data_size"]
    assert len(compr) == 2 * len(STAGES) and all(r.kernel > 0 for r in compr)
    # and the sampled pages' objects, byte for byte: captured in the guest as the kernel
    # decompressed them on a read, and stored by our device
    objects = [r for r in comparison.rows if r.file == "objects"]
    assert {(r.algorithm, r.field) for r in objects} == {
        (a, f) for a in ("lz4", "zstd") for f in ("count", "identical")
    }
    assert all(r.kernel >= 10 for r in objects)


@pytest.mark.timeout(900)
def test_our_pool_fed_the_kernels_object_sizes_ends_each_stage_as_the_kernel(comparison):
    assert (comparison.replay_rule, comparison.replay_fullness) == ("min-waste", "ratio")
    replay = [r for r in comparison.rows if r.file == "replay"]
    assert len(replay) == 2 * len(STAGES) * len(REPLAY_FIELDS)
    # the trace holds one zs_malloc per page stored compressed or huge
    assert all(r.kernel > 0 for r in replay if r.field == "objects")
    unequal = [r for r in replay if r.diff]
    assert not unequal, "\n".join(
        f"{r.algorithm}/{r.stage}/{r.field}: kernel {r.kernel}, replayed {r.ours}" for r in unequal
    )


@pytest.fixture(scope="module")
def comparison_6_1():
    if find_library("1.4.10") is None:
        if "1.4.10" in required_versions():
            pytest.fail(
                "no build of 6.1's lib/zstd, which ZSMALLOC_REQUIRE_KERNEL_ZSTD requires (make zstd-library)"
            )
        pytest.skip("no build of 6.1's lib/zstd (make zstd-library)")
    return _boot("6.1", ["zstd"])


@pytest.mark.timeout(900)
def test_6_1s_zstd_figures_and_objects_are_its_own_lib_zstds(comparison_6_1):
    assert comparison_6_1.release.startswith("6.1.")
    assert comparison_6_1.chain_size == 4  # before CONFIG_ZSMALLOC_CHAIN_SIZE: ZS_MAX_ZSPAGE_ORDER 2
    unequal = comparison_6_1.unequal()
    assert not unequal, "\n".join(
        f"{r.algorithm}/{r.stage}/{r.file}.{r.field}: kernel {r.kernel}, ours {r.ours}" for r in unequal
    )
    objects = {r.field: (r.kernel, r.ours) for r in comparison_6_1.rows if r.file == "objects"}
    captured, identical = objects["identical"]
    assert captured >= 10 and identical == captured
