"""Compaction work: objects moved per page freed, the 6.4 source/destination choice against the old one.

What it measures
----------------
``pool.compact()`` on a pool of ``fullness="ratio"`` (6.4 and later:
destination from the fullest partial group, source from the emptiest, over
ten fullness groups) against one of ``fullness="legacy"`` (6.1: two lists,
"almost empty" and "almost full", and 6.1's compaction loop), churned alike:
filled with a mix (fixed seed), a random fraction of its objects freed
(fixed seed, random order), deferred frees run.  The pool is built twice
from the same seed, in two fresh subprocesses, one per grouping; the two
groupings place objects in other zspages, so the states differ as the two
kernels' would.
Reported per configuration: pages freed, objects moved (``pool.objs_compacted``),
objects moved per page freed, the reduction of that figure in % for
"ratio" against "legacy" (the 2023 kernel rework reported 34% fewer moves),
the pages the shrinker counted as freeable before, and the time.

Configurations: the churned pool of ``bench_churn.py`` (``kernel-build``,
140k objects, half freed; 10k with ``--quick``), then ``kernel-build`` and
``android-zstd`` with a quarter, half and three quarters freed (50k objects;
5k with ``--quick``).

Targets: in every configuration both groupings free the same number of pages
(or the difference is shown); on the churned pool of ``bench_churn.py``, the
"ratio" grouping moves fewer objects per page freed than "legacy".

Counts are deterministic (one build per grouping and configuration); times
are one measurement each.

Run: ``.venv/bin/python benchmarks/bench_compaction_work.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import bench_churn
import common
from common import fmt, fmt_int, md_table

NAME = "compaction_work"
POLICIES = ("ratio", "legacy")
KERNEL_REDUCTION = 0.34  # the 2023 rework: 34% fewer objects moved
SEED = bench_churn.SEED
FULL = {"churn_n": bench_churn.FULL_N, "n": 50_000}
QUICK = {"churn_n": bench_churn.QUICK_N, "n": 5_000}
SWEEP = (
    ("kernel-build", 0.25),
    ("kernel-build", 0.75),
    ("android-zstd", 0.25),
    ("android-zstd", 0.5),
    ("android-zstd", 0.75),
)


def worker(mix: str, n: int, free_fraction: float, policy: str) -> dict:
    inp = bench_churn.Inputs(mix, n, SEED, free_fraction)
    pool, handles, _, _ = bench_churn.build_churned(inp, fullness=policy)
    freeable = pool.shrinker_count()
    pages_before = pool.total_pages
    t0 = time.perf_counter()
    freed = pool.compact()
    seconds = time.perf_counter() - t0
    pool.flush_deferred()
    intact, why = bench_churn.verify_live(pool, inp, handles)
    return {
        "mix": mix,
        "objects": n,
        "free_fraction": free_fraction,
        "policy": policy,
        "pages_before": pages_before,
        "freeable_before": freeable,
        "pages_freed": freed,
        "pages_after": pool.total_pages,
        "freeable_after": pool.shrinker_count(),
        "objects_moved": pool.objs_compacted,
        "moved_per_page_freed": pool.objs_compacted / freed if freed else None,
        "seconds": seconds,
        "intact": intact,
        "intact_detail": why,
    }


def run(quick: bool = False) -> dict:
    cfg = QUICK if quick else FULL
    script = Path(__file__).resolve()
    configs = [("kernel-build", cfg["churn_n"], bench_churn.FREE_FRACTION, True)]
    configs += [(mix, cfg["n"], frac, False) for mix, frac in SWEEP]
    rows = []
    for mix, n, frac, is_churn in configs:
        by = {}
        for policy in POLICIES:
            common.log(f"compaction_work: {mix}, {n:,} objects, {frac:.0%} freed, fullness {policy}")
            by[policy] = common.run_worker(script, [mix, str(n), str(frac), policy])
        r, leg = by["ratio"], by["legacy"]
        reduction = (
            1 - r["moved_per_page_freed"] / leg["moved_per_page_freed"]
            if r["moved_per_page_freed"] and leg["moved_per_page_freed"]
            else None
        )
        rows.append(
            {
                "mix": mix,
                "objects": n,
                "free_fraction": frac,
                "churn_pool": is_churn,
                "ratio": r,
                "legacy": leg,
                "reduction": reduction,
                "pages_freed_difference": r["pages_freed"] - leg["pages_freed"],
            }
        )

    targets = []
    churn = rows[0]
    config = f"{churn['mix']}, {churn['objects']:,} objects, {churn['free_fraction']:.0%} freed (churn pool)"
    targets.append(
        {
            "name": "objects moved per page freed, ratio vs legacy (kernel: -34%)",
            "config": config,
            "value": f"{fmt(churn['ratio']['moved_per_page_freed'])} vs "
            f"{fmt(churn['legacy']['moved_per_page_freed'])} ({_pct(churn['reduction'])})",
            "limit": "ratio < legacy",
            "ok": churn["reduction"] is not None and churn["reduction"] > 0,
        }
    )
    diffs = [row for row in rows if row["pages_freed_difference"]]
    targets.append(
        {
            "name": "pages freed, ratio == legacy",
            "config": f"all {len(rows)} configurations",
            "value": "equal in all"
            if not diffs
            else "; ".join(f"{_label(row)}: {row['pages_freed_difference']:+,}" for row in diffs),
            "limit": "equal",
            "ok": not diffs,
        }
    )
    bad = [row for row in rows for p in POLICIES if not row[p]["intact"]]
    targets.append(
        {
            "name": "live objects intact after compaction, check() clean",
            "config": f"all {len(rows)} configurations, both groupings",
            "value": "yes" if not bad else f"{len(bad)} damaged",
            "limit": "yes",
            "ok": not bad,
        }
    )
    return {
        "name": NAME,
        "quick": quick,
        "seed": SEED,
        "kernel_reduction": KERNEL_REDUCTION,
        "configs": rows,
        "targets": targets,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{-x:+.1%}"


def _label(row: dict) -> str:
    return f"{row['mix']}, {row['objects']:,}, {row['free_fraction']:.0%} freed"


def markdown(doc: dict) -> str:
    out = [
        "## Compaction work (`bench_compaction_work.py`)",
        "",
        "Method: for each configuration a churned pool (a mix, fixed seed "
        f"{doc['seed']}, a random fraction of the objects freed in random order, deferred frees run) "
        'is built twice, in two fresh subprocesses, once with `fullness="ratio"` (6.4+: destination '
        "from the fullest of ten fullness groups, source from the emptiest) and once with "
        '`fullness="legacy"` (6.1: "almost empty" and "almost full" lists and its compaction loop), '
        "and compacted once with `pool.compact()`. Objects moved = `pool.objs_compacted`; the first "
        "row is the churned pool of the churn benchmark. Counts are deterministic; times are single "
        "measurements. Every live object is read back and `pool.check()` run afterwards.",
        "",
    ]
    rows = []
    for row in doc["configs"]:
        r, leg = row["ratio"], row["legacy"]
        rows.append(
            [
                row["mix"] + (" (churn pool)" if row["churn_pool"] else ""),
                fmt_int(row["objects"]),
                f"{row['free_fraction']:.0%}",
                fmt_int(r["freeable_before"]),
                f"{fmt_int(r['pages_freed'])} / {fmt_int(leg['pages_freed'])}",
                f"{fmt_int(r['objects_moved'])} / {fmt_int(leg['objects_moved'])}",
                f"{fmt(r['moved_per_page_freed'])} / {fmt(leg['moved_per_page_freed'])}",
                f"**{_pct(row['reduction'])}**",
                f"{r['seconds']:.2f} / {leg['seconds']:.2f}",
            ]
        )
    out.append(
        md_table(
            [
                "mix",
                "objects",
                "freed",
                "freeable before (shrinker)",
                "pages freed, ratio / legacy",
                "objects moved, ratio / legacy",
                "moved per page freed, ratio / legacy",
                "change, ratio vs legacy",
                "seconds, ratio / legacy",
            ],
            rows,
            align="lrrrrrrrr",
        )
    )
    out += [
        "",
        f"For context: the 2023 kernel rework (fine-grained fullness groups, 6.4) reported "
        f"{doc['kernel_reduction']:.0%} fewer objects moved by compaction. Negative changes are fewer "
        "moves for the same pages freed.",
    ]
    return "\n".join(out)


def _dispatch(args: list[str]) -> dict:
    mix, n, frac, policy = args
    return worker(mix, int(n), float(frac), policy)


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(__doc__, argv, NAME, run, markdown, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
