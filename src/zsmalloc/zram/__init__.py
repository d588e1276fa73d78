"""zram on the pool: a compressed RAM block store of 4 KiB pages (drivers/block/zram).

::

    from zsmalloc.zram import ZramDevice

    with ZramDevice(64 << 20, algorithm="lz4", mem_limit=32 << 20) as dev:
        dev.write_page(0, page)              # 4096 bytes
        assert dev.read_page(0) == page
        dev.pwrite(5000, b"any alignment")
        print(dev.format_mm_stat(), end="")  # /sys/block/zram0/mm_stat

Two implementations of one device, as for the pool: ``ZramDevice`` is the
engine's (:mod:`zsmalloc.zram.engine`, the Rust core's slot table, codecs and
paths, with multi-page calls that release the GIL) under the default backend,
and the model's (:mod:`zsmalloc.zram.device`, Python, runs on any pool and
any codec registered in :mod:`zsmalloc.zram.codecs`) under
``ZSMALLOC_BACKEND=model``; both modules name their class ``ZramDevice``.
The slot table, the write and read paths and the locking are described in
:mod:`zsmalloc.zram.device`; the statistics formats in
:mod:`zsmalloc.zram.stats`.  This layer sits on :mod:`zsmalloc.pool` and
imports nothing above it.
"""

from typing import TYPE_CHECKING

from zsmalloc import backend as _backend
from zsmalloc.zram.backing import BackingFile
from zsmalloc.zram.codecs import Codec, available_codecs, get_codec, register_codec
from zsmalloc.zram.common import (
    ZRAM_HUGE,
    ZRAM_IDLE,
    ZRAM_INCOMPRESSIBLE,
    ZRAM_SAME,
    ZRAM_WB,
    SlotInfo,
)
from zsmalloc.zram.errors import (
    InvalidIOError,
    NoBackingDeviceError,
    ZramError,
    ZramFullError,
    ZramIOError,
)
from zsmalloc.zram.kernels import KERNELS, KernelPreset
from zsmalloc.zram.stats import BdStat, IoStat, MmStat, RecompStat

if TYPE_CHECKING or _backend == "model":  # one static type (the model's) names both devices
    from zsmalloc.zram.codecs import library_versions
    from zsmalloc.zram.device import SLOT_BYTES, ZramDevice
else:
    from zsmalloc.zram.engine import SLOT_BYTES, ZramDevice, library_versions

__all__ = [
    "KERNELS",
    "SLOT_BYTES",
    "ZRAM_HUGE",
    "ZRAM_IDLE",
    "ZRAM_INCOMPRESSIBLE",
    "ZRAM_SAME",
    "ZRAM_WB",
    "BackingFile",
    "BdStat",
    "Codec",
    "InvalidIOError",
    "IoStat",
    "KernelPreset",
    "MmStat",
    "NoBackingDeviceError",
    "RecompStat",
    "SlotInfo",
    "ZramDevice",
    "ZramError",
    "ZramFullError",
    "ZramIOError",
    "available_codecs",
    "get_codec",
    "library_versions",
    "register_codec",
]
