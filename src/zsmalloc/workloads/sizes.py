"""Object-size mixes that stand for real zsmalloc workloads (KERNEL.md section 8).

Each mix is a seeded distribution of stored-object sizes in bytes (1..4096),
the sizes zram hands to zs_malloc after compression.  They are models fitted to
published figures, not traces:

``kernel-build``
    A kernel build's anonymous memory on zram with lzo-rle: compression ratio
    about 2.7x, so the mean stored object is about 1.5 KB; most of the mass
    between 1.1 and 2.5 KB; about 8% incompressible pages stored whole.
    Model: 8% are 4096 bytes (huge); 65% normal(1700, 400) clipped to
    [600, 3600]; 27% log-normal (median 420, sigma 0.6) clipped to [32, 1100].
    Mean about 1.5 KB.

``android-zstd``
    Android anonymous memory compressed with zstd: mean about 0.95 KB per
    stored page.  Model: 3% huge (4096 bytes); 97% log-normal (median 680,
    sigma 0.7) clipped to [32, 3600].  Mean about 0.95 KB.

``uniform``
    Sizes uniform over 1..4096, every class equally likely: a stress mix, not
    a workload.

The module is a leaf: it imports nothing from the layers, and anything may use
it (the CLI, benchmarks, tests, and :mod:`zsmalloc.workloads.pages`, which
turns these sizes into page contents).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

#: the page size of every workload here (zram's, on x86-64)
PAGE_SIZE = 4096
#: the largest stored object: a whole page
MAX_SIZE = PAGE_SIZE


def _clip(x: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(x)))


def _kernel_build(rng: random.Random) -> int:
    u = rng.random()
    if u < 0.08:
        return MAX_SIZE
    if u < 0.73:
        return _clip(rng.gauss(1700, 400), 600, 3600)
    return _clip(rng.lognormvariate(6.04, 0.6), 32, 1100)  # median e^6.04 = 420


def _android_zstd(rng: random.Random) -> int:
    if rng.random() < 0.03:
        return MAX_SIZE
    return _clip(rng.lognormvariate(6.52, 0.7), 32, 3600)  # median e^6.52 = 680


def _uniform(rng: random.Random) -> int:
    return rng.randint(1, MAX_SIZE)


@dataclass(frozen=True)
class SizeMix:
    name: str
    description: str
    draw: Callable[[random.Random], int]

    def sizes(self, n: int, seed: int = 0) -> list[int]:
        """``n`` object sizes drawn with a fixed seed."""
        rng = random.Random(seed)
        draw = self.draw
        return [draw(rng) for _ in range(n)]


MIXES: dict[str, SizeMix] = {
    m.name: m
    for m in (
        SizeMix("kernel-build", "kernel build on zram, lzo-rle (mean ~1.5 KB, 8% huge)", _kernel_build),
        SizeMix("android-zstd", "Android anonymous memory, zstd (mean ~0.95 KB, 3% huge)", _android_zstd),
        SizeMix("uniform", "uniform over 1..4096 (stress, not a workload)", _uniform),
    )
}


def get_mix(name: str) -> SizeMix:
    try:
        return MIXES[name]
    except KeyError:
        raise ValueError(f"unknown size mix {name!r}; known: {', '.join(MIXES)}") from None
