"""The protocol checker (zsmalloc.protocheck): it explores what it claims, and it has teeth.

- Every built-in scenario, explored exhaustively under "mainline" and "2016",
  finds no failure; the number of interleavings run is checked against the
  multinomial coefficient computed here from the actors' program lengths, and
  every step of every actor must have done something in at least one
  interleaving (a scenario whose steps are all no-ops would pass vacuously).
- A bigger scenario, 200 random interleavings per protocol, finds nothing.
- "2016-v3" (the reviewed patch's race) is caught, with the expected minimal
  sequence and check()'s message; the set of failing interleavings is exactly
  the one predicted here by hand.
- All of that on both implementations (the model and the engine), and v3's
  minimal failing sequence and the set of failing interleavings are the
  same on both.
- With Pool.check sabotaged, the other checks catch v3 only where its damage
  reaches an allocation (during the run, or in the end-of-run probe); in the
  plain seed race the damage is a counter of a freed zspage id, which only
  check() sees.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter

import pytest

from zsmalloc import engine, model
from zsmalloc import protocheck as pc

GOOD = ("mainline", "2016")
BACKENDS = tuple(pc.BACKENDS)


def expected_interleavings(scenario: pc.Scenario) -> int:
    """(n1 + ... + nk)! / (n1! ... nk!), from the programs themselves."""
    lengths = [len(actor.steps) for actor in scenario.actors]
    n = math.factorial(sum(lengths))
    for k in lengths:
        n //= math.factorial(k)
    return n


@functools.cache
def exhaustive(name: str, protocol: str, backend: str = "model") -> pc.Report:
    return pc.explore_exhaustive(pc.SCENARIOS[name], protocol, backend=backend)


def positions(schedule: tuple[int, ...]) -> dict[tuple[int, int], int]:
    """(actor, k) -> the turn at which actor's k-th step is scheduled."""
    seen: Counter[int] = Counter()
    where = {}
    for turn, a in enumerate(schedule):
        where[(a, seen[a])] = turn
        seen[a] += 1
    return where


# ----------------------------------------------------------------------
# the enumeration itself


@pytest.mark.parametrize("lengths", [(1,), (2, 1), (2, 2, 2), (3, 1, 2), (1, 1, 1, 1), (4, 0, 2)])
def test_interleavings_are_all_the_orderings_once(lengths):
    labels = [a for a, k in enumerate(lengths) for _ in range(k)]
    want = set(itertools.permutations(labels))
    got = list(pc.interleavings(lengths))
    assert len(got) == len(set(got)) == len(want) == pc.multinomial(lengths)
    assert set(got) == want


def test_builtin_scenarios_cover_the_brief():
    themes = {
        "seed-race": ["isolate", "putback", "migrate", "free"],
        "migrate-vs-malloc-free": ["isolate", "migrate", "free", "malloc"],
        "two-pages": ["isolate"],
        "compact-vs-migration": ["compact", "isolate", "migrate"],
        "deferred-vs-migration": ["flush", "lock", "migrate", "free"],
        "malloc-reuses-empty": ["malloc", "free", "lock"],
        "vm-compaction": ["mm_compact", "evacuate", "migrate"],
        "map-vs-migration": ["map_begin", "map_end", "migrate"],
        "map-spanning-vs-migration": ["map_begin", "map_end", "isolate", "migrate"],
    }
    for name, ops in themes.items():
        have = {step.op for actor in pc.SCENARIOS[name].actors for step in actor.steps}
        assert set(ops) <= have, name
    two = pc.SCENARIOS["two-pages"]
    isolated = {s.target for a in two.actors for s in a.steps if s.op == "isolate"}
    assert len(isolated) == 2
    assert set(pc.EXHAUSTIVE) == set(pc.SCENARIOS) - {"stress"}


# ----------------------------------------------------------------------
# the good protocols hold


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("protocol", GOOD)
@pytest.mark.parametrize("name", pc.EXHAUSTIVE)
def test_builtin_scenario_exhaustive_finds_nothing(name, protocol, backend):
    scenario = pc.SCENARIOS[name]
    report = exhaustive(name, protocol, backend)
    want = expected_interleavings(scenario)
    assert want > 1
    assert report.interleavings == want
    assert report.possible == want
    assert report.failing == 0, report.render()
    assert report.ok
    assert 0 < report.executions <= want
    assert report.idle_steps() == [], f"steps never exercised in {name}: {report.idle_steps()}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("protocol", GOOD)
def test_random_exploration_of_stress_finds_nothing(protocol, backend):
    scenario = pc.SCENARIOS["stress"]
    assert len(scenario.actors) >= 3
    report = pc.explore_random(scenario, protocol, n=200, seed=0, backend=backend)
    assert report.interleavings == 200
    assert report.possible == expected_interleavings(scenario) > 10_000
    assert report.failing == 0, report.render()
    assert report.executions > 150  # 200 draws from millions: nearly all distinct
    assert report.idle_steps() == []


def test_random_exploration_is_deterministic_and_draws_valid_interleavings():
    scenario = pc.SCENARIOS["seed-race-aftermath"]
    a = pc.explore_random(scenario, "2016-v3", n=20, seed=7)
    b = pc.explore_random(scenario, "2016-v3", n=20, seed=7)
    assert a.failed == b.failed and a.failing == b.failing > 0
    valid = set(pc.interleavings(scenario.lengths))
    assert set(a.failed) <= valid


def test_exhaustive_refuses_a_scenario_too_big():
    with pytest.raises(ValueError, match="explore_random"):
        pc.explore_exhaustive(pc.SCENARIOS["stress"], "mainline")


# ----------------------------------------------------------------------
# teeth: the reviewed patch (v3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_v3_seed_race_is_caught_with_a_minimal_sequence(backend):
    """The race as reported: the page is isolated, zs_free empties its zspage and destroys it.
    check() sees it at that very step: an isolated page still names a freed zspage (the
    putback that would follow then works on a zspage that no longer exists)."""
    report = exhaustive("seed-race", "2016-v3", backend)
    assert report.interleavings == expected_interleavings(pc.SCENARIOS["seed-race"]) == 90
    assert report.failing > 0
    assert not report.ok
    run = report.minimal
    assert run is not None and run.failure is not None
    assert run.executed == (
        ("vm", "isolate(mid)"),
        ("user", "free(b)"),
        ("user", "free(c)"),
    )
    assert run.failure.after == 3
    assert run.failure.where == "pool.check()"
    assert "CorruptionError" in run.failure.message
    assert "(isolated) is movable for this pool but names zspage" in run.failure.message
    assert "a free zspage id" in run.failure.message
    text = report.render()
    lines = [ln for ln in text.splitlines() if ln.strip()[:2] in ("1.", "2.", "3.")]
    assert ["isolate(mid)" in lines[0], "free(b)" in lines[1], "free(c)" in lines[2]] == [True] * 3
    assert "FAILED after step 3, pool.check(): CorruptionError" in text


@pytest.mark.parametrize("backend", BACKENDS)
def test_v3_fails_exactly_where_predicted(backend):
    """Fails iff the page is isolated (by vm or vm2) when the user's last free empties the
    zspage: v3's zs_free then destroys a zspage with an isolated page.  An isolation is refused
    while the other actor holds the page, after the zspage emptied, and after vm2 migrated the
    page away (the pfn then holds nothing)."""
    scenario = pc.SCENARIOS["seed-race"]
    vm, vm2, user = 0, 1, 2
    assert [a.name for a in scenario.actors] == ["vm", "vm2", "user"]
    predicted = set()
    for schedule in pc.interleavings(scenario.lengths):
        holder, emptied, moved, counter = None, False, False, [0, 0, 0]
        for actor in schedule:
            step = counter[actor]
            counter[actor] += 1
            if actor in (vm, vm2) and step == 0:
                if holder is None and not emptied and not moved:
                    holder = actor
            elif actor in (vm, vm2) and step == 1:
                if holder == actor:
                    holder = None
                    moved = actor == vm2
            elif actor == user and step == 1:
                emptied = True
                if holder is not None:
                    predicted.add(schedule)
                    break
    report = exhaustive("seed-race", "2016-v3", backend)
    assert set(report.failed) == predicted
    assert len(predicted) == 36


V3_CAUGHT = ["seed-race-reuse", "seed-race-aftermath", "two-pages", "malloc-reuses-empty"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", V3_CAUGHT)
def test_v3_is_caught_in_other_scenarios(name, backend):
    report = exhaustive(name, "2016-v3", backend)
    assert report.interleavings == expected_interleavings(pc.SCENARIOS[name])
    assert report.failing > 0
    assert report.minimal is not None and report.minimal.failure is not None
    assert "isolated" in report.minimal.failure.message


# ----------------------------------------------------------------------
# teeth without check(): what the read-back, the leak check and the probe see


@pytest.mark.parametrize("name", ["seed-race", *V3_CAUGHT, "deferred-vs-migration"])
def test_v3_fails_the_same_way_on_both_implementations(name):
    """The engine follows the model step for step: the same interleavings fail, and the minimal
    failing sequence is the same trace (steps, results, page counts) with the same message."""
    model_report, engine_report = (exhaustive(name, "2016-v3", b) for b in ("model", "engine"))
    assert model_report.failing > 0
    assert engine_report.failed == model_report.failed
    assert engine_report.kinds == model_report.kinds
    minimal = [r.to_dict()["minimal_failing_sequence"] for r in (model_report, engine_report)]
    assert minimal[0] == minimal[1]


@pytest.fixture(params=BACKENDS)
def no_check(request, monkeypatch):
    """check() sabotaged, on one implementation; the test explores on that one."""
    impl = {"model": model, "engine": engine}[request.param]
    monkeypatch.setattr(impl.Pool, "check", lambda self: None)
    return request.param


def test_without_check_the_plain_seed_race_goes_unseen(no_check):
    """The v3 damage in the plain race is a counter of a zspage id already freed (-1 isolated
    pages); no object, page or frame is wrong, and the next zspage built on that id resets it.
    Only check() sees it: read-back, the leak check and the probe do not."""
    report = pc.explore_exhaustive(pc.SCENARIOS["seed-race"], "2016-v3", backend=no_check)
    assert report.interleavings == 90
    assert report.failing == 0


def test_without_check_v3_is_caught_when_the_user_goes_on(no_check):
    report = pc.explore_exhaustive(pc.SCENARIOS["seed-race-aftermath"], "2016-v3", backend=no_check)
    assert report.failing > 0
    run = report.minimal
    assert run is not None and run.failure is not None
    assert run.failure.where == "step raised"
    steps = [step for _, step in run.executed]
    assert steps.index("isolate(mid)") < steps.index("free(c)") < steps.index("putback(mid)")
    assert steps[-1].startswith("malloc(")  # a later malloc takes the freed zspage off a list


def test_without_check_v3_is_caught_by_the_end_of_run_probe(no_check):
    report = pc.explore_exhaustive(pc.SCENARIOS["seed-race-reuse"], "2016-v3", backend=no_check)
    assert report.failing > 0
    assert set(report.kinds) == {"end of run, step raised"}
    run = report.minimal
    assert run is not None and run.trace[-1].step == "probe"
    steps = [step for _, step in run.executed]
    assert steps.index("isolate(mid)") < steps.index("free(c)") < steps.index("putback(mid)")
    assert steps.index("malloc(x, 3064)") < steps.index("putback(mid)")


def test_map_check_catches_migration_that_ignores_readers(monkeypatch):
    """Mainline with a zspage write-trylock that ignores readers: a page moves under a mapping
    (a mutant of the model's Python; the engine's callbacks cannot be swapped from Python)."""
    monkeypatch.setattr(model.Pool, "zspage_write_trylock", lambda self, zid: True)
    report = pc.explore_exhaustive(pc.SCENARIOS["map-vs-migration"], "mainline")
    assert report.failing > 0
    assert report.minimal is not None and report.minimal.failure is not None
    steps = [step for _, step in report.minimal.executed]
    assert steps.index("map_begin(a)") < steps.index("migrate(head)")
    assert "moved" in report.minimal.failure.message or "write-locked" in report.minimal.failure.message


def test_map_spanning_check_catches_the_2016_code_that_honoured_only_starting_pins(monkeypatch):
    """Issue 10, item 1: the 2016 migrate as it was before it took the zspage's migrate lock.

    It refused a page only when a pinned object *started* in it, so the second
    page of a mapped object that spans two pages moved under the mapping.
    The mutant (the model's Python: the engine's callbacks cannot be swapped
    from Python) is the fixed code with that lock taken away; the scenario
    must find it, with the mapping begun before the migration.
    """
    monkeypatch.setattr(model.Pool, "zspage_write_trylock", lambda self, zspage: True)
    report = pc.explore_exhaustive(pc.SCENARIOS["map-spanning-vs-migration"], "2016", backend="model")
    assert report.failing > 0
    run = report.minimal
    assert run is not None and run.failure is not None
    assert "moved while it was mapped" in run.failure.message
    steps = [step for _, step in run.executed]
    assert steps.index("map_begin(b, offset=1100, length=1000)") < steps.index("migrate(mid)")
    assert steps.index("migrate(mid)") < steps.index("map_end(b)")


# ----------------------------------------------------------------------
# the model: no-ops, waiting, deadlock


def test_steps_whose_precondition_fails_are_noops():
    scenario = pc.Scenario(
        "noops",
        "migrate and putback without isolation, double free, write of a freed object",
        pc.SCENARIOS["seed-race"].setup,
        (
            pc.Actor("vm", [pc.migrate("mid"), pc.putback("mid")]),
            pc.Actor("user", [pc.free("b"), pc.free("b"), pc.write("b")]),
        ),
    )
    run = pc.execute(scenario, "mainline", (0, 0, 1, 1, 1))
    assert run.failure is None, run.render()
    results = [e.result for e in run.trace if e.actor != "teardown"]
    assert results[0].startswith("no-op") and results[1].startswith("no-op")
    assert results[2] == "freed b"
    assert results[3].startswith("no-op") and results[4].startswith("no-op")
    assert run.effective == {(1, 0)}


def test_a_step_waits_for_the_page_lock_and_wakes_after_unlock():
    scenario = pc.SCENARIOS["deferred-vs-migration"]
    vm, locker, user, worker = range(4)
    run = pc.execute(scenario, "mainline", (locker, user, worker, vm, vm, locker))
    assert run.failure is None, run.render()
    lines = [(e.n, e.actor, e.step, e.result) for e in run.trace if e.actor != "teardown"]
    assert lines[2][0] is None and lines[2][1] == "worker" and lines[2][3].startswith("waits: ")
    assert [(a, s) for n, a, s, _ in lines if n is not None] == [
        ("locker", "lock(head)"),
        ("user", "free(c)"),
        ("vm", "isolate(mid)"),
        ("vm", "migrate(mid)"),
        ("locker", "unlock(head)"),
        ("worker", "flush()"),
    ]
    assert lines[-1][3].startswith("woke up; deferred free (requested: free) freed 1 zspages")


def test_a_write_waits_while_another_actor_maps_the_object():
    scenario = pc.Scenario(
        "write-under-map",
        "the user's own rule: an object is not changed under its reader",
        pc.SCENARIOS["map-vs-migration"].setup,
        (pc.Actor("reader", [pc.map_begin("a"), pc.map_end("a")]), pc.Actor("user", [pc.write("a")])),
    )
    run = pc.execute(scenario, "mainline", (0, 1, 0))
    assert run.failure is None, run.render()
    lines = [(e.n, e.actor, e.step, e.result) for e in run.trace if e.actor != "teardown"]
    assert lines[0][3] == "mapped a (3064 bytes, in place)"
    assert lines[1][0] is None and lines[1][3] == "waits: a is mapped by reader"
    assert lines[2][2] == "map_end(a)" and lines[3][2] == "write(a)"
    assert lines[3][3].startswith("woke up; wrote")


def test_a_lock_never_released_is_a_deadlock():
    base = pc.SCENARIOS["deferred-vs-migration"]
    scenario = pc.Scenario(
        "deadlock",
        "the locker never unlocks",
        base.setup,
        (
            pc.Actor("locker", [pc.lock("head")]),
            pc.Actor("user", [pc.free("c")]),
            pc.Actor("worker", [pc.flush()]),
        ),
    )
    report = pc.explore_exhaustive(scenario, "mainline")
    assert report.interleavings == 6
    assert report.kinds["deadlock"] > 0
    assert "wait forever" in report.minimal.failure.message


def test_run_named_prints_and_returns_a_status():
    out: list[str] = []
    assert pc.run_named("seed-race-aftermath", "mainline", echo=out.append) == 0
    assert "28 of 28 interleavings run" in out[0] and "no failure" in out[0]
    out.clear()
    assert pc.run_named("seed-race-aftermath", "2016-v3", echo=out.append) == 1
    assert "FAILED" in out[0] and "minimal failing sequence" in out[0]
    out.clear()
    assert pc.run_named("seed-race-aftermath", "2016", exhaustive=False, n=10, echo=out.append) == 0
    assert "10 of 28 interleavings run" in out[0]
    with pytest.raises(ValueError, match="unknown scenario"):
        pc.run_named("no-such-scenario")
