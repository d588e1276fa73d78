"""The ``zsmalloc`` click group and what its commands share (the console, RSS, option types).

Every command module registers itself on :data:`main`; ``zsmalloc.cli``
imports them all, so the console script sees every command.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click
import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.rule import Rule

from zsmalloc.zram.kernels import KERNELS

#: The console of every command.  The program's own text is never read as
#: markup or emoji codes (a trace's ``[pool 3 pages, 3 frames]`` prints as it
#: is; styles are given with ``style=``), and a long line is never re-wrapped
#: by rich (``soft_wrap``): a terminal folds it, a pipe gets it whole.
console = Console(markup=False, emoji=False, soft_wrap=True)

#: the console's width when the output is not a terminal: wide enough that no
#: table is squeezed, no cell cut short with an ellipsis
PIPE_WIDTH = 10_000
#: a rule's width when the output is not a terminal
PIPE_RULE_WIDTH = 80


def rss() -> int:
    """This process's resident set size in bytes."""
    return psutil.Process().memory_info().rss


def print_rule(title: str) -> None:
    """A titled horizontal rule, the terminal's width (80 columns in a pipe)."""
    console.print(Rule(title), width=None if console.is_terminal else PIPE_RULE_WIDTH)


def progress_bars(disable: bool) -> Progress:
    """The commands' progress bars: gone when done, and none at all in a pipe."""
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=disable or not console.is_terminal,  # (no bars, nor their blank lines, in a pipe)
    )


class FiniteFloat(click.FloatRange):
    """A ``click.FloatRange`` that also refuses ``nan`` and the infinities."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = float(super().convert(value, param, ctx))
        if not math.isfinite(number):  # nan passes every comparison of the range; inf may pass one
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


#: a share of something: a finite float within 0..1
SHARE = FiniteFloat(0, 1)

F = TypeVar("F", bound=Callable[..., Any])


def device_shape_options(command: F) -> F:
    """``--chain-size`` and ``--kernel``, as the commands that make a zram device take them."""
    command = click.option(
        "--kernel",
        type=click.Choice(list(KERNELS)),
        help="configure zram and zsmalloc as this kernel does (zsmalloc.zram.kernels)",
    )(command)
    return click.option(
        "--chain-size", type=click.IntRange(4, 16), help="zspage chain size (default: 8, or the kernel's)"
    )(command)


#: a duration in seconds: finite, positive, and within what a thread wait accepts
SECONDS = FiniteFloat(0, threading.TIMEOUT_MAX, min_open=True)


@click.group()
@click.version_option(package_name="zsmalloc")
def main() -> None:
    """zsmalloc: the kernel's compressed-memory allocator, in Python, on real memory."""
    console.width = None if console.is_terminal else PIPE_WIDTH  # type: ignore[assignment]
