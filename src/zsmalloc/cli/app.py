"""The ``zsmalloc`` click group and what its commands share (the console, RSS).

Every command module registers itself on :data:`main`; ``zsmalloc.cli``
imports them all, so the console script sees every command.
"""

from __future__ import annotations

import click
import psutil
from rich.console import Console

console = Console()


def rss() -> int:
    """This process's resident set size in bytes."""
    return psutil.Process().memory_info().rss


@click.group()
@click.version_option(package_name="zsmalloc")
def main() -> None:
    """zsmalloc: the kernel's compressed-memory allocator, in Python, on real memory."""
