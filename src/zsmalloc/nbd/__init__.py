"""NBD: a zram device exported to real block clients (nbdcopy, qemu-img, nbdfuse) by nbdkit.

::

    from zsmalloc.nbd import NbdServer

    with NbdServer(1 << 30, unix_path="/tmp/zram.sock") as srv:
        ...   # nbdcopy disk.img "nbd+unix:///?socket=/tmp/zram.sock"
        print(srv.stats()["mm_stat"])

nbdkit (Debian's) speaks the protocol; the device is the engine's, inside
the plugin built from ``engine/nbdkit`` (``make`` puts it beside this
package).  :mod:`zsmalloc.nbd.server` starts and stops nbdkit and reads the
plugin's statistics.  The command line is ``zsmalloc serve``.  This layer
sits on :mod:`zsmalloc.zram` (the algorithms' names) and imports nothing
above it; the device lives in nbdkit's process, not in Python's.
"""

from zsmalloc.nbd.server import Limits, NbdServer, ServerThread, plugin_path

__all__ = ["Limits", "NbdServer", "ServerThread", "plugin_path"]
