"""``zsmalloc fragsim --png``: pageblock maps and success curves (matplotlib, Agg).

::

    +------------------+------------------+ ...   one row per mode
    | pageblock map at | pageblock map at |       a cell per pageblock, coloured
    | the first tick   | the next tick    |       by migratetype; darker where it
    +------------------+------------------+       holds pages of another type
    | order 3: served per interval, a line per mode | order 9: ... |
    +-----------------------------------------------+--------------+

The maps show where unmovable pages have spread into movable pageblocks (the
blocks compaction can never empty), the curves what that costs each order.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only

import matplotlib.pyplot as plt
import numpy as np

from zsmalloc.fragsim import PAGEBLOCK_PAGES, FragsimResult

#: migratetype colours: unmovable, movable, reclaimable
_COLOURS = np.array([[0.84, 0.15, 0.16], [0.17, 0.63, 0.17], [0.12, 0.47, 0.71]])


def _map_image(block_map: dict, width: int) -> np.ndarray:
    """An RGB image of a pageblock map, ``width`` pageblocks a row."""
    mt = np.frombuffer(bytes(block_map["migratetype"]), dtype=np.uint8)
    foreign = np.asarray(block_map["foreign"], dtype=float) / PAGEBLOCK_PAGES
    free = np.asarray(block_map["free"], dtype=float) / PAGEBLOCK_PAGES
    rgb = _COLOURS[mt]
    # lighter the freer, darker the more pages of another type
    rgb = rgb + (1 - rgb) * (0.6 * free)[:, None]
    rgb = rgb * (1 - 0.75 * np.minimum(1, 4 * foreign))[:, None]
    rows = math.ceil(len(mt) / width)
    pad = rows * width - len(mt)
    rgb = np.vstack([rgb, np.ones((pad, 3))])
    return rgb.reshape(rows, width, 3)


def plot_fragsim(result: FragsimResult, path: Path) -> None:
    """Write the maps of every mode and the success curves of every requested order to ``path``."""
    sc = result.scenario
    modes = list(result.runs)
    n_maps = max(len(r.maps) for r in result.runs.values())
    orders = sc.orders()
    cols = max(n_maps, len(orders), 1)
    fig = plt.figure(figsize=(4.2 * cols, 2.6 * len(modes) + 3.2))
    grid = fig.add_gridspec(len(modes) + 1, cols, height_ratios=[1] * len(modes) + [1.2])
    for i, mode in enumerate(modes):
        for j, block_map in enumerate(result.runs[mode].maps):
            ax = fig.add_subplot(grid[i, j])
            blocks = len(block_map["migratetype"])
            ax.imshow(_map_image(block_map, max(8, int(math.sqrt(blocks * 2)))), interpolation="nearest")
            ax.set_title(f"{mode}, tick {block_map['tick']}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    for j, order in enumerate(orders):
        ax = fig.add_subplot(grid[len(modes), j])
        for mode in modes:
            ivs = result.runs[mode].intervals
            ticks = [iv["tick"] for iv in ivs]
            rates = [
                iv["served"][order] / iv["requests"][order] if iv["requests"][order] else np.nan for iv in ivs
            ]
            ax.plot(ticks, rates, label=mode, linewidth=1.2)
        ax.axvline(sc.fill_ticks, color="grey", linewidth=0.8, linestyle=":")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"order {order}: share of requests served", fontsize=9)
        ax.set_xlabel("tick")
        if j == 0:
            ax.legend(fontsize=8)
    fig.suptitle(
        f"fragsim {sc.name}: pageblocks red unmovable, green movable, blue reclaimable; "
        "darker = holds pages of another type, lighter = free",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
