"""The demo's picture: the pool before and after compaction, as a PNG (matplotlib, Agg).

Four panels::

    +------------------------------+------------------------------+
    | zspages per class and        | the same, after compaction   |
    | fullness group, before       |                              |
    |  y: group 0% 10% .. 99% 100% |                              |
    |  x: class size (bytes)       |                              |
    +------------------------------+------------------------------+
    | frames in use across the     | the same, after: the arena's |
    | arena, before: one cell per  | high-water mark has come     |
    | frame, rows of 256 frames    | down, the holes are gone     |
    +------------------------------+------------------------------+

Both halves share their colour scale and extent, so what compaction did reads
directly: zspages leave the low-fullness rows, frames leave the top of the
arena.  Input is the demo's snapshots (``classes`` rows with ``inuse_ratio``
and ``empty``, ``used_pfns``, ``hwm``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only

import matplotlib.pyplot as plt
from matplotlib.colors import ListedColormap, LogNorm

GROUP_LABELS = ["0%", "10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "99%", "100%"]
ARENA_ROW = 256  # frames per row of the arena map


def _fullness_grid(snapshot: dict, sizes: list[int]) -> list[list[float]]:
    """Rows: fullness groups 0..11; columns: the classes in ``sizes``; cells: zspage counts."""
    by_size = {c["size"]: c for c in snapshot["classes"]}
    grid = [[0.0] * len(sizes) for _ in GROUP_LABELS]
    for col, size in enumerate(sizes):
        c = by_size.get(size)
        if c is None:
            continue
        grid[0][col] = c["empty"]
        for g, count in enumerate(c["inuse_ratio"], start=1):
            grid[g][col] = count
    return grid


def _arena_grid(snapshot: dict, frames: int) -> list[list[int]]:
    """0 free, 1 in use, 2 above the arena's high-water mark; ``frames`` cells in rows."""
    rows = max(1, -(-frames // ARENA_ROW))
    cells = [2] * (rows * ARENA_ROW)
    cells[: snapshot["hwm"]] = [0] * snapshot["hwm"]
    for pfn in snapshot["used_pfns"]:
        cells[pfn] = 1
    return [cells[r * ARENA_ROW : (r + 1) * ARENA_ROW] for r in range(rows)]


def plot_before_after(before: dict, after: dict, path: Path, title: str = "") -> Path:
    """Write the four-panel PNG to ``path`` and return it."""
    sizes = sorted({c["size"] for c in before["classes"]} | {c["size"] for c in after["classes"]})
    grids = [_fullness_grid(s, sizes) for s in (before, after)]
    peak = max([1.0] + [v for g in grids for row in g for v in row])
    frames = max(before["hwm"], after["hwm"], 1)

    fig, axes = plt.subplots(2, 2, figsize=(14, 9), constrained_layout=True)
    norm = LogNorm(vmin=1, vmax=peak)
    step = max(1, len(sizes) // 12)
    for ax, grid, snap, when in zip(axes[0], grids, (before, after), ("before", "after"), strict=True):
        masked = [[v if v else float("nan") for v in row] for row in grid]
        im = ax.imshow(
            masked, aspect="auto", origin="lower", cmap="viridis", norm=norm, interpolation="nearest"
        )
        ax.set_yticks(range(len(GROUP_LABELS)), GROUP_LABELS)
        ax.set_xticks(range(0, len(sizes), step), [str(s) for s in sizes[::step]], rotation=45)
        ax.set_xlabel("size class (bytes)")
        ax.set_ylabel("fullness group")
        ax.set_title(f"zspages per class and fullness, {when} compaction: {snap['pool_pages']:,} pool pages")
    fig.colorbar(im, ax=axes[0].tolist(), label="zspages", shrink=0.9)

    cmap = ListedColormap(["#d9d9d9", "#1f4e79", "#ffffff"])
    for ax, snap, when in zip(axes[1], (before, after), ("before", "after"), strict=True):
        ax.imshow(
            _arena_grid(snap, frames), aspect="auto", cmap=cmap, vmin=0, vmax=2, interpolation="nearest"
        )
        ax.set_xlabel(f"frame within row ({ARENA_ROW} frames per row)")
        ax.set_ylabel("row of the arena")
        ax.set_title(
            f"frames in use {when} compaction: {len(snap['used_pfns']):,} of high-water mark {snap['hwm']:,}"
        )
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
