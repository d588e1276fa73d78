"""zram on the pool: a compressed RAM block store of 4 KiB pages (drivers/block/zram).

::

    from zsmalloc.zram import ZramDevice

    with ZramDevice(64 << 20, algorithm="lz4", mem_limit=32 << 20) as dev:
        dev.write_page(0, page)              # 4096 bytes
        assert dev.read_page(0) == page
        dev.pwrite(5000, b"any alignment")
        print(dev.format_mm_stat(), end="")  # /sys/block/zram0/mm_stat

The slot table, the write and read paths and the locking are described in
:mod:`zsmalloc.zram.device`; the codecs in :mod:`zsmalloc.zram.codecs`; the
statistics formats in :mod:`zsmalloc.zram.stats`.  This layer sits on
:mod:`zsmalloc.pool` and imports nothing above it.
"""

from zsmalloc.zram.backing import BackingFile
from zsmalloc.zram.codecs import Codec, available_codecs, get_codec, register_codec
from zsmalloc.zram.device import (
    ZRAM_HUGE,
    ZRAM_IDLE,
    ZRAM_INCOMPRESSIBLE,
    ZRAM_SAME,
    ZRAM_WB,
    SlotInfo,
    ZramDevice,
)
from zsmalloc.zram.errors import (
    InvalidIOError,
    NoBackingDeviceError,
    ZramError,
    ZramFullError,
    ZramIOError,
)
from zsmalloc.zram.stats import BdStat, IoStat, MmStat, RecompStat

__all__ = [
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
    "register_codec",
]
