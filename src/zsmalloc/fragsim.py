"""The fragmentation simulation: what zsmalloc's page migration buys the VM.

A scenario puts a zsmalloc pool (zram's) in one zone beside the other users of
a machine's memory and sends high-order requests at it; the same seeded run is
made with zsmalloc's pages in each :data:`MODES` entry, and the results say how
many of the requests of each order were served, what compaction did, and how
fragmented the zone was (the kernel's extfrag indices, pagetypeinfo's counts,
pageblock maps).  The run itself is the engine's (``zsmalloc_core::fragsim``,
over the buddy allocator of ``mm/zone.rs``); this module holds the scenarios,
reads them from TOML files, and sums the runs up::

    scenario (TOML or a named one)
        |  sizes drawn from a zsmalloc.workloads mix
        v
    _engine.fragsim_run(mode, ...)   one run per mode, the GIL released
        |  intervals: requests/served per order, compaction, indices
        v                pageblock maps at chosen ticks
    FragsimResult.summary()          success rates per order, per mode

Modes: ``mainline`` and ``2016`` (movable pages, migrated with that protocol),
``placed`` (movable placement, never migrated: what grouping by mobility does
alone), ``unmovable`` (before page migration, 4.8).
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from zsmalloc import _engine
from zsmalloc.mm.zone import WATERMARK_BOOST_FACTOR
from zsmalloc.workloads import get_mix

#: zsmalloc's pages in each run, in the order they are run and reported
MODES = ("mainline", "2016", "placed", "unmovable")
MIGRATETYPES = ("unmovable", "movable", "reclaimable")
PAGE_SIZE = 4096
PAGEBLOCK_PAGES = 512
MAX_ORDER = 10


@dataclass(frozen=True)
class Level:
    """An order-0 user: its pages as a share of the zone, and the share of them replaced each tick."""

    share: float
    churn: float


@dataclass(frozen=True)
class Request:
    """One kind of high-order request: ``per_tick`` blocks of ``order``, each held ``lifetime`` ticks."""

    order: int
    migratetype: str
    per_tick: float
    lifetime: int
    #: a failure runs direct compaction (else it only wakes kcompactd)
    direct_compaction: bool = True


@dataclass(frozen=True)
class Scenario:
    """Everything a run does; every mode runs the same one."""

    name: str
    zone_mib: int
    seed: int
    mix: str
    zram: Level
    anon: Level
    kernel: Level
    reclaimable: Level
    requests: tuple[Request, ...]
    #: the page cache takes the free memory above the high watermark each tick (and is reclaimed)
    page_cache: bool
    fill_ticks: int
    churn_ticks: int
    report_every: int
    pool_compact_every: int
    maps_at: tuple[int, ...]
    chain_size: int = 8
    #: ``vm.watermark_boost_factor``: a fallback into a pageblock of another type boosts the
    #: watermarks by a pageblock, up to this many ten-thousandths of the high watermark (0: never)
    watermark_boost_factor: int = WATERMARK_BOOST_FACTOR
    description: str = ""

    @property
    def zone_pages(self) -> int:
        return self.zone_mib * (1 << 20) // PAGE_SIZE

    @property
    def ticks(self) -> int:
        return self.fill_ticks + self.churn_ticks

    def orders(self) -> list[int]:
        """The orders requested, ascending, each once."""
        return sorted({r.order for r in self.requests})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _standard() -> Scenario:
    return Scenario(
        name="standard",
        description=(
            "a 1 GiB zone: zram filled to 40% of it (kernel-build sizes), anonymous memory at 30%, "
            "unmovable and reclaimable kernel memory at 5% and 3%, all churning; network buffers "
            "and slab (orders 2-4, unmovable, no direct compaction: a failure wakes kcompactd) and "
            "transparent huge pages (order 9, movable, direct compaction) throughout"
        ),
        zone_mib=1024,
        seed=1,
        mix="kernel-build",
        zram=Level(0.40, 0.005),
        anon=Level(0.30, 0.02),
        kernel=Level(0.05, 0.01),
        reclaimable=Level(0.03, 0.01),
        # the kernel's own requests of orders 2-4 do not stall in direct compaction: SLUB's
        # attempt at a cache's higher order (allocate_slab) clears __GFP_RECLAIM and falls
        # back to the minimum order, and the network stack's page frags (skb_page_frag_refill,
        # sk_page_frag_refill) clear __GFP_DIRECT_RECLAIM; a failure here only wakes kcompactd
        requests=(
            Request(2, "unmovable", 4.0, 2, direct_compaction=False),
            Request(3, "unmovable", 4.0, 5, direct_compaction=False),
            Request(4, "unmovable", 1.0, 5, direct_compaction=False),
            Request(9, "movable", 0.5, 40),
        ),
        page_cache=True,
        fill_ticks=200,
        churn_ticks=800,
        report_every=20,
        pool_compact_every=50,
        maps_at=(200, 1000),
    )


#: the named scenarios (``zsmalloc fragsim --scenario NAME``)
SCENARIOS: dict[str, Scenario] = {
    "standard": _standard(),
    "atomic": replace(
        _standard(),
        name="atomic",
        description=(
            "the standard scenario with a burst of order-3 requests that may neither reclaim nor "
            "compact (60 a tick, held 2 ticks: network receive buffers)"
        ),
        requests=(
            Request(2, "unmovable", 4.0, 2, direct_compaction=False),
            Request(3, "unmovable", 60.0, 2, direct_compaction=False),
            Request(4, "unmovable", 1.0, 5, direct_compaction=False),
            Request(9, "movable", 0.5, 40),
        ),
    ),
    "unboosted": replace(
        _standard(),
        name="unboosted",
        description=(
            "the standard scenario on an allocator without watermark boosting "
            "(vm.watermark_boost_factor = 0; boosting came with 5.0: the allocator of 2016)"
        ),
        watermark_boost_factor=0,
    ),
    "small": replace(
        _standard(),
        name="small",
        description="the standard scenario's mix in a 64 MiB zone over 300 ticks: a quick look",
        zone_mib=64,
        fill_ticks=60,
        churn_ticks=240,
        report_every=10,
        pool_compact_every=20,
        maps_at=(60, 300),
        requests=(
            Request(2, "unmovable", 1.0, 2),
            Request(3, "unmovable", 1.0, 5),
            Request(4, "unmovable", 0.25, 5),
            Request(9, "movable", 0.1, 20),
        ),
    ),
}


class ScenarioError(ValueError):
    """A scenario file or value that cannot be run."""


def _level(d: object, name: str) -> Level:
    if not isinstance(d, dict) or set(d) != {"share", "churn"}:
        raise ScenarioError(f"[{name}] needs exactly share and churn")
    return Level(_number(d["share"], f"{name}.share", 0, 1), _number(d["churn"], f"{name}.churn", 0, 1))


def _number(v: object, what: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise ScenarioError(f"{what} must be a number within {lo}..{hi}, not {v!r}")
    return float(v)


def _int(v: object, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ScenarioError(f"{what} must be an integer within {lo}..{hi}, not {v!r}")
    return v


def _request(d: object, i: int) -> Request:
    known = {f.name for f in fields(Request)}
    if not isinstance(d, dict) or not {"order", "migratetype", "per_tick", "lifetime"} <= set(d) <= known:
        raise ScenarioError(
            f"requests[{i}] needs order, migratetype, per_tick, lifetime (and direct_compaction)"
        )
    mt = d["migratetype"]
    if mt not in MIGRATETYPES:
        raise ScenarioError(f"requests[{i}].migratetype must be one of {MIGRATETYPES}, not {mt!r}")
    direct = d.get("direct_compaction", True)
    if not isinstance(direct, bool):
        raise ScenarioError(f"requests[{i}].direct_compaction must be true or false")
    return Request(
        order=_int(d["order"], f"requests[{i}].order", 1, MAX_ORDER),
        migratetype=mt,
        per_tick=_number(d["per_tick"], f"requests[{i}].per_tick", 0, 1000),
        lifetime=_int(d["lifetime"], f"requests[{i}].lifetime", 1, 1 << 30),
        direct_compaction=direct,
    )


def scenario_from_dict(d: dict[str, Any], name: str = "custom") -> Scenario:
    """A scenario from a TOML document's table: the standard scenario's values where a key is absent."""
    base = SCENARIOS["standard"]
    known = {f.name for f in fields(Scenario)}
    unknown = set(d) - known
    if unknown:
        raise ScenarioError(f"unknown keys: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    values: dict[str, Any] = {"name": str(d.get("name", name)), "description": str(d.get("description", ""))}
    for key in ("zram", "anon", "kernel", "reclaimable"):
        values[key] = _level(d[key], key) if key in d else getattr(base, key)
    if "requests" in d:
        if not isinstance(d["requests"], list):
            raise ScenarioError("requests must be an array of tables ([[requests]])")
        values["requests"] = tuple(_request(r, i) for i, r in enumerate(d["requests"]))
    else:
        values["requests"] = base.requests
    values["zone_mib"] = _int(d.get("zone_mib", base.zone_mib), "zone_mib", 8, 1 << 16)
    values["seed"] = _int(d.get("seed", base.seed), "seed", 0, (1 << 64) - 1)
    values["fill_ticks"] = _int(d.get("fill_ticks", base.fill_ticks), "fill_ticks", 1, 1 << 24)
    values["churn_ticks"] = _int(d.get("churn_ticks", base.churn_ticks), "churn_ticks", 0, 1 << 24)
    values["report_every"] = _int(d.get("report_every", base.report_every), "report_every", 1, 1 << 24)
    values["pool_compact_every"] = _int(
        d.get("pool_compact_every", base.pool_compact_every), "pool_compact_every", 0, 1 << 24
    )
    values["chain_size"] = _int(d.get("chain_size", base.chain_size), "chain_size", 4, 16)
    values["watermark_boost_factor"] = _int(
        d.get("watermark_boost_factor", base.watermark_boost_factor), "watermark_boost_factor", 0, 1 << 31
    )
    cache = d.get("page_cache", base.page_cache)
    if not isinstance(cache, bool):
        raise ScenarioError("page_cache must be true or false")
    values["page_cache"] = cache
    maps = d.get("maps_at", list(base.maps_at))
    if not isinstance(maps, list):
        raise ScenarioError("maps_at must be an array of ticks")
    values["maps_at"] = tuple(_int(t, "maps_at[]", 1, 1 << 24) for t in maps)
    mix = d.get("mix", base.mix)
    try:
        get_mix(str(mix))
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    values["mix"] = str(mix)
    sc = Scenario(**values)
    shares = sc.zram.share + sc.anon.share + sc.kernel.share + sc.reclaimable.share
    if shares > 0.95:
        raise ScenarioError(f"the users' shares add up to {shares:.2f}, more than 0.95 of the zone")
    return sc


def load_scenario(path: str | Path) -> Scenario:
    """A scenario from a TOML file (see ``benchmarks/fragsim_standard.toml`` for every key)."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read {p}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p} is not valid TOML: {exc}") from None
    return scenario_from_dict(doc, name=p.stem)


@dataclass
class ModeRun:
    """One mode's run: its intervals and pageblock maps as the engine reported them."""

    mode: str
    intervals: list[dict[str, Any]]
    maps: list[dict[str, Any]]
    objects_checked: int
    seconds: float

    def totals(self, first_tick: int = 0) -> dict[str, Any]:
        """Sums over the intervals that end after ``first_tick``."""
        ivs = [iv for iv in self.intervals if iv["tick"] > first_tick]
        out: dict[str, Any] = {
            "requests": [sum(iv["requests"][o] for iv in ivs) for o in range(MAX_ORDER + 1)],
            "served": [sum(iv["served"][o] for iv in ivs) for o in range(MAX_ORDER + 1)],
        }
        for key in (
            "compact_stall",
            "compact_success",
            "compact_fail",
            "compact_deferred",
            "kcompactd_runs",
            "pages_migrated",
            "zspages_migrated",
            "order0_failed",
            "reclaimed",
            "alloc_fallbacks",
            "blocks_claimed",
            "watermark_boosts",
            "boosts_reclaimed",
        ):
            out[key] = sum(iv[key] for iv in ivs)
        return out


def success_rate(served: int, requests: int) -> float | None:
    """Served over requested, or None when nothing was requested."""
    return served / requests if requests else None


@dataclass
class FragsimResult:
    """Every mode's run of one scenario."""

    scenario: Scenario
    runs: dict[str, ModeRun] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per mode, over the churn phase: success per requested order, compaction, migration, indices."""
        out: dict[str, dict[str, Any]] = {}
        for mode, run in self.runs.items():
            t = run.totals(first_tick=self.scenario.fill_ticks)
            last = run.intervals[-1]
            out[mode] = {
                "success": {
                    o: success_rate(t["served"][o], t["requests"][o]) for o in self.scenario.orders()
                },
                "requests": {o: t["requests"][o] for o in self.scenario.orders()},
                "compact_stall": t["compact_stall"],
                "compact_success": t["compact_success"],
                "compact_fail": t["compact_fail"],
                "kcompactd_runs": t["kcompactd_runs"],
                "pages_migrated": t["pages_migrated"],
                "alloc_fallbacks": t["alloc_fallbacks"],
                "blocks_claimed": t["blocks_claimed"],
                "watermark_boosts": t["watermark_boosts"],
                "boosts_reclaimed": t["boosts_reclaimed"],
                "zspages_migrated": t["zspages_migrated"],
                "unusable_index": {o: last["unusable_index"][o] / 1000 for o in self.scenario.orders()},
                "fragmentation_index": {
                    o: last["fragmentation_index"][o] / 1000 for o in self.scenario.orders()
                },
                "pageblocks": last["pageblocks"],
                "objects_checked": run.objects_checked,
                "seconds": run.seconds,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.to_dict(),
            "summary": self.summary(),
            "runs": {
                m: {
                    "intervals": r.intervals,
                    "maps": [{**mp, "migratetype": list(mp["migratetype"])} for mp in r.maps],
                    "objects_checked": r.objects_checked,
                    "seconds": r.seconds,
                }
                for m, r in self.runs.items()
            },
        }


def object_sizes(sc: Scenario) -> list[int]:
    """The run's object sizes: enough of the scenario's mix for the fill and the churn, seeded."""
    mean = 1500
    n = int(sc.zone_pages * PAGE_SIZE * sc.zram.share / mean * (1 + sc.zram.churn * sc.churn_ticks)) + 1024
    return get_mix(sc.mix).sizes(min(n, 4_000_000), seed=sc.seed)


def run_mode(
    sc: Scenario, mode: str, sizes: Sequence[int], progress: Callable[[int], None] | None = None
) -> ModeRun:
    """One mode's run of ``sc`` in the engine; ``progress(tick)`` after each tick."""
    if mode not in MODES:
        raise ScenarioError(f"mode must be one of {MODES}, not {mode!r}")
    t0 = time.perf_counter()
    out = _engine.fragsim_run(
        mode,
        list(sizes),
        zone_pages=sc.zone_pages,
        seed=sc.seed,
        zram=(sc.zram.share, sc.zram.churn),
        anon=(sc.anon.share, sc.anon.churn),
        kernel=(sc.kernel.share, sc.kernel.churn),
        reclaimable=(sc.reclaimable.share, sc.reclaimable.churn),
        requests=[(r.order, r.migratetype, r.per_tick, r.lifetime, r.direct_compaction) for r in sc.requests],
        page_cache=sc.page_cache,
        fill_ticks=sc.fill_ticks,
        churn_ticks=sc.churn_ticks,
        pool_compact_every=sc.pool_compact_every,
        report_every=sc.report_every,
        maps_at=list(sc.maps_at),
        chain_size=sc.chain_size,
        watermark_boost_factor=sc.watermark_boost_factor,
        progress=progress,
    )
    return ModeRun(mode, out["intervals"], out["maps"], out["objects_checked"], time.perf_counter() - t0)


def run_scenario(
    sc: Scenario, modes: Sequence[str] = MODES, progress: Callable[[str, int], None] | None = None
) -> FragsimResult:
    """Every mode of ``modes`` on the same seeded scenario, one after the other."""
    sizes = object_sizes(sc)
    result = FragsimResult(sc)
    for mode in modes:
        result.runs[mode] = run_mode(sc, mode, sizes, None if progress is None else _ticker(progress, mode))
    return result


def _ticker(progress: Callable[[str, int], None], mode: str) -> Callable[[int], None]:
    def tick(t: int) -> None:
        progress(mode, t)

    return tick
