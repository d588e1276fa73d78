"""The ``zsmalloc`` command line (click + rich): the top of the layer stack.

It may use every package below; nothing uses it.  One module per command
family, each registering on the group in :mod:`zsmalloc.cli.app`:

``pool_demo``  ``zsmalloc pool-demo``: the allocator alone
``classes``    ``zsmalloc classes``: the size-class table
``checks``     ``zsmalloc stress`` and ``zsmalloc protocheck``
``serve``      ``zsmalloc serve``: a zram device exported over NBD
"""

from zsmalloc.cli import checks, classes, pool_demo, serve
from zsmalloc.cli.app import main

__all__ = ["checks", "classes", "main", "pool_demo", "serve"]
