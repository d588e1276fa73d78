"""NBD: a :class:`~zsmalloc.zram.ZramDevice` exported to real block clients (nbdcopy, qemu-img, nbdfuse).

::

    from zsmalloc.nbd import NbdServer, ServerThread
    from zsmalloc.zram import ZramDevice

    dev = ZramDevice(1 << 30, algorithm="lz4")
    with ServerThread(NbdServer(dev), unix_path="/tmp/zram.sock"):
        ...   # nbdcopy - "nbd+unix:///?socket=/tmp/zram.sock" < disk.img

:mod:`zsmalloc.nbd.protocol` holds the wire format, :mod:`zsmalloc.nbd.server`
the asyncio server, :mod:`zsmalloc.nbd.client` a small blocking client.  The
command line is ``zsmalloc serve``.  This layer sits on :mod:`zsmalloc.zram`
and imports nothing above it.
"""

from zsmalloc.nbd.client import ExportInfo, NbdClient, NbdError, NbdProtocolError
from zsmalloc.nbd.server import Limits, NbdServer, ServerStats, ServerThread

__all__ = [
    "ExportInfo",
    "Limits",
    "NbdClient",
    "NbdError",
    "NbdProtocolError",
    "NbdServer",
    "ServerStats",
    "ServerThread",
]
