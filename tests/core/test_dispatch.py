"""Dispatch policies alone: the latest-start order, give back, discard; no promotions."""

from __future__ import annotations

import hashlib
import heapq
import importlib.util
import itertools
import random
import sys
from pathlib import Path

import pytest
from test_plan import SPACE

from phobbit.core.dispatch import AnytimePolicy, LatestStartPolicy, latest_starts, nominal_run
from phobbit.core.hyperband import SynchronousHyperband
from phobbit.core.plan import Plan
from phobbit.core.records import Segment, SegmentResult, Status, Tuning
from phobbit.core.schedule import brackets

# The order in which the Plan of phobbit 0.1 (before the state machine and the
# policy were split apart) handed out segments in ``dispatch_order``, which
# latest start kept until issue 12 and keeps with ``iterations_first=False``:
# the tests below compare the order of today with it.
ORDER_BEFORE_THE_SPLIT = {1: "9b9906d9ceea50d3", 4: "da7ba79e23d46ad2", 16: "242f4581e0b59272"}


def _result(segment: Segment) -> SegmentResult:
    loss = random.Random(f"{segment.key}").random()
    ok = loss > 0.05
    return segment.result(
        val_loss=loss if ok else None,
        last_val_loss=None,
        status=Status.OK if ok else Status.FAILED,
        error="",
    )


def dispatch_order(plan: Plan, workers: int) -> list[tuple[int, int, int, int]]:
    """Runs ``plan`` on a virtual clock with a resume, failures and give-backs; what it hands out.

    Every 17th segment ready at the start has its row already (a resume); every
    11th segment handed out is given back once (its worker died).
    """
    rng = random.Random(workers)
    for segment in plan.ready()[::17]:
        plan.record(_result(segment))
    order, clock, tick = [], 0.0, itertools.count()
    running: list[tuple[float, int, Segment]] = []
    given_back = set()
    while not plan.done:
        while len(running) < workers and (segment := plan.next_segment()) is not None:
            order.append(segment.key)
            if len(order) % 11 == 0 and segment.key not in given_back:
                given_back.add(segment.key)
                plan.give_back(segment)
                continue
            length = segment.epochs - segment.start_epoch
            heapq.heappush(running, (clock + rng.uniform(0.5, 1.5) * length, next(tick), segment))
        clock, _, segment = heapq.heappop(running)
        plan.record(_result(segment))
    return order


def _latest_start(workers: int, iterations_first: bool = True):
    return lambda machine: LatestStartPolicy(
        machine.schedule, machine.iterations, workers, iterations_first
    )


@pytest.mark.parametrize("workers", [1, 4, 16])
def test_depth_first_latest_start_on_R81_is_the_order_of_the_plan_before_the_split(
    workers: int,
) -> None:
    plan = Plan(
        Tuning.of(SPACE, R=81, eta=3, iterations=2),
        workers=workers,
        policy=_latest_start(workers, False),
    )
    order = dispatch_order(plan, workers)
    assert len(order) == 434
    assert hashlib.sha256(repr(order).encode()).hexdigest()[:16] == ORDER_BEFORE_THE_SPLIT[workers]


@pytest.mark.parametrize("workers", [1, 4, 16])
def test_with_one_iteration_latest_start_hands_out_what_it_did_before(workers: int) -> None:
    orders = [
        dispatch_order(
            Plan(Tuning.of(SPACE, R=81, eta=3), workers=workers, policy=policy), workers
        )
        for policy in (_latest_start(workers), _latest_start(workers, False))
    ]
    assert orders[0] == orders[1]


def _timeline(
    workers: int, iterations: int, iterations_first: bool
) -> tuple[float, dict[int, list[float]]]:
    """R=81 on a virtual clock, segments as long as their epochs +-30%: the makespan, and
    when each iteration's full-fidelity (81-epoch) results came, by iteration."""
    plan = Plan(
        Tuning.of(SPACE, R=81, eta=3, iterations=iterations),
        workers=workers,
        policy=_latest_start(workers, iterations_first),
    )
    clock, tick = 0.0, itertools.count()
    running: list[tuple[float, int, Segment]] = []
    answers: dict[int, list[float]] = {i: [] for i in range(iterations)}
    while not plan.done:
        while len(running) < workers and (segment := plan.next_segment()) is not None:
            factor = random.Random(repr(segment.key)).uniform(0.7, 1.3)
            length = (segment.epochs - segment.start_epoch) * factor
            heapq.heappush(running, (clock + length, next(tick), segment))
        clock, _, segment = heapq.heappop(running)
        plan.record(_result(segment))
        if segment.epochs == 81:
            answers[segment.iteration].append(clock)
    return clock, answers


@pytest.mark.parametrize("iterations", [2, 3])
def test_iterations_first_keeps_the_makespan_of_depth_first_within_1pct(iterations: int) -> None:
    """On W = 2..16 it is never 1% longer, and shorter over all of them together."""
    new, old = (
        [_timeline(workers, iterations, first)[0] for workers in (2, 4, 8, 16)]
        for first in (True, False)
    )
    assert all(a <= 1.01 * b for a, b in zip(new, old))
    assert sum(new) < sum(old)


@pytest.mark.parametrize(("workers", "iterations"), [(2, 2), (4, 2), (8, 2), (4, 3)])
def test_iterations_first_finishes_each_iteration_before_the_next_one_answers(
    workers: int, iterations: int
) -> None:
    """Up to 8 workers every full-fidelity answer of an iteration comes before any of the
    next one's; depth first, the first iteration was still answering at the end."""
    makespan, answers = _timeline(workers, iterations, True)
    for earlier, later in itertools.pairwise(range(iterations)):
        assert max(answers[earlier]) < min(answers[later])
    before, old_answers = _timeline(workers, iterations, False)
    assert max(answers[0]) / makespan < max(old_answers[0]) / before


def test_a_plan_of_its_parts_hands_out_what_the_plan_does() -> None:
    machine = SynchronousHyperband(Tuning.of(SPACE, R=27, eta=3, iterations=2))
    policy = AnytimePolicy(machine.schedule, machine.iterations, 4)  # the default since issue 21
    parts = Plan.of(machine, policy, workers=4)
    whole = Plan(Tuning.of(SPACE, R=27, eta=3, iterations=2), workers=4)
    assert dispatch_order(parts, 4) == dispatch_order(whole, 4)


def _policy(workers: int = 4) -> tuple[LatestStartPolicy, list[Segment]]:
    machine = SynchronousHyperband(Tuning.of(SPACE, R=27, eta=3))
    policy = LatestStartPolicy(machine.schedule, 1, workers)
    segments = machine.start()
    for segment in segments:
        policy.push(segment)
    return policy, segments


def test_pop_takes_the_ready_segment_of_highest_priority_until_none_is_left() -> None:
    policy, segments = _policy()
    popped = []
    while policy.ready():
        best = max(policy.ready(), key=policy.priority)
        segment = policy.pop()
        assert segment == best
        popped.append(segment)
    assert policy.pop() is None and len(policy) == 0
    assert sorted(s.key for s in popped) == sorted(s.key for s in segments)


def test_a_segment_given_back_is_popped_again_first_in_its_rung() -> None:
    policy, _ = _policy()
    first = policy.pop()
    assert first is not None and first.key not in policy
    policy.give_back(first)
    assert first.key in policy
    assert policy.pop() == first


def test_a_discarded_segment_is_never_popped_and_counts_as_started() -> None:
    policy, segments = _policy(workers=1)
    gone = segments[3]
    policy.discard(gone.key)
    assert gone.key not in policy and len(policy) == len(segments) - 1
    popped = []
    while (segment := policy.pop()) is not None:
        popped.append(segment.key)
    assert gone.key not in popped and len(popped) == len(segments) - 1


def test_segments_hash_so_a_policy_may_keep_them_in_sets() -> None:
    policy, segments = _policy()
    assert set(policy.ready()) == set(segments)


def test_pop_prefers_a_warm_configuration_of_the_rung_it_takes_and_no_other() -> None:
    policy, _ = _policy()
    expected = max(policy.ready(), key=policy.priority)
    same_rung = [s for s in policy.ready() if s.rung_key == expected.rung_key and s != expected]
    other_rung = [s for s in policy.ready() if s.rung_key != expected.rung_key]
    assert same_rung and other_rung
    warm = same_rung[-1]
    # A configuration warm elsewhere but of a lower-ranked rung changes nothing.
    lower = other_rung[0]
    taken = policy.pop(prefer={(lower.iteration, lower.s, lower.id)})
    assert taken == expected
    next_expected = max(policy.ready(), key=policy.priority)
    assert next_expected.rung_key == warm.rung_key and next_expected != warm
    assert policy.pop(prefer={(warm.iteration, warm.s, warm.id)}) == warm
    # The segment it passed over is next, and the warm one is never handed out twice.
    assert policy.pop() == next_expected
    rest = []
    while (segment := policy.pop()) is not None:
        rest.append(segment.key)
    assert warm.key not in rest and expected.key not in rest


# -- the W=16 bound and the offline search of benchmarks/simulation.py -------------------------

SIMULATION = Path(__file__).resolve().parents[2] / "benchmarks" / "simulation.py"


@pytest.fixture(scope="module")
def sim():
    spec = importlib.util.spec_from_file_location("simulation", SIMULATION)
    module = importlib.util.module_from_spec(spec)
    sys.modules["simulation"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("simulation", None)


def _durations(sim, jitter: float = 0.3):
    return lambda segment: sim.segment_time(segment, 1.0, jitter)


def _makespan(sim, R: int, eta: int, iterations: int, workers: int, policy, duration) -> float:
    machine = SynchronousHyperband(Tuning.of(sim.Space(sim.SPACE), R, eta, 0, iterations))
    plan = Plan.of(machine, policy(machine), workers)
    return sim.list_schedule(plan, workers, duration).makespan


@pytest.mark.parametrize(
    ("R", "eta", "iterations", "workers"),
    [(9, 3, 1, 2), (9, 3, 1, 8), (27, 3, 1, 4), (27, 3, 1, 16), (27, 3, 2, 16), (16, 4, 1, 8)],
)
def test_energetic_bound_is_below_the_makespan_of_every_order_tried(
    sim, R: int, eta: int, iterations: int, workers: int
) -> None:
    """Latest start, the barrier baseline, FIFO and random priority vectors: none beats it."""
    space, duration = sim.Space(sim.SPACE), _durations(sim)
    bound = sim.energetic_bound(space, R, eta, 0, iterations, workers, 1.0, 0.3)
    simple = sim.lower_bound(space, R, eta, 0, iterations, workers, 1.0, 0.3).value
    assert bound >= simple * (1 - 1e-6)
    rng = random.Random(R * workers + iterations)
    machine = SynchronousHyperband(Tuning.of(space, R, eta, 0, iterations))
    latest = Plan.of(machine, LatestStartPolicy(machine.schedule, iterations, workers), workers)
    makespans = [sim.simulate_barriers(space, R, eta, 0, iterations, workers, duration).makespan]
    run = sim.list_schedule(latest, workers, duration)
    makespans.append(run.makespan)
    policies = [lambda m: sim.FifoPolicy()]
    for _ in range(30):
        ranks = {key: rng.random() for key in run.order}
        policies.append(lambda m, ranks=ranks: sim.RankPolicy(ranks))
    makespans += [_makespan(sim, R, eta, iterations, workers, p, duration) for p in policies]
    assert min(makespans) >= bound * (1 - 1e-6)


def test_energetic_bound_sees_the_idle_workers_max_work_chain_misses_at_R81_W16(sim) -> None:
    """One iteration on 16 workers: every order leaves workers idle, and the bound says so."""
    space = sim.Space(sim.SPACE)
    simple = sim.lower_bound(space, 81, 3, 0, 1, 16, 1.0, 0.3).value
    bound = sim.energetic_bound(space, 81, 3, 0, 1, 16, 1.0, 0.3)
    phobbit = sim.simulate_plan(space, 81, 3, 0, 1, 16, _durations(sim)).makespan
    assert simple < bound <= phobbit
    # With two iterations there is work enough to hide the structure: nothing to add.
    assert sim.energetic_bound(space, 81, 3, 0, 2, 16, 1.0, 0.3) == pytest.approx(
        sim.lower_bound(space, 81, 3, 0, 2, 16, 1.0, 0.3).value, rel=1e-5
    )


@pytest.mark.parametrize("workers", [3, 16])
def test_list_schedule_gives_the_makespan_of_the_scheduler_on_the_simulated_executor(
    sim, workers: int
) -> None:
    space, duration = sim.Space(sim.SPACE), _durations(sim)
    for policy in (
        lambda m: LatestStartPolicy(m.schedule, 1, workers),
        lambda m: AnytimePolicy(m.schedule, 1, workers),
    ):
        fast = _makespan(sim, 27, 3, 1, workers, policy, duration)
        # The list schedule hands a segment only to a free worker: the scheduler without its
        # queued segment (which decides one result early, and so changes the order wherever
        # a deadline is set: R=27 W=3 since anytime5).
        slow = sim.simulate_plan(
            space, 27, 3, 0, 1, workers, duration, policy=policy, queue_ahead=0
        )
        assert fast == pytest.approx(slow.makespan)


def test_best_offline_is_never_longer_than_phobbit_and_its_ranks_replay_its_makespan(sim) -> None:
    space, duration = sim.Space(sim.SPACE), _durations(sim)
    found = sim.best_offline(space, 27, 3, 0, 1, 16, duration, evaluations=40)
    assert found.best <= found.start
    assert found.start == pytest.approx(
        sim.simulate_plan(space, 27, 3, 0, 1, 16, duration).makespan
    )
    replay = _makespan(sim, 27, 3, 1, 16, lambda m: sim.RankPolicy(found.ranks), duration)
    assert replay == found.best


@pytest.mark.parametrize(
    ("R", "workers", "release"),
    [
        (9, 2, {}),
        (27, 3, {(0, 3): 50}),
        (27, 4, {}),
        (81, 2, {(0, 4): 150}),
        (81, 16, {(0, 4): 150}),
    ],
)
def test_nominal_run_has_the_makespan_of_the_scheduler_and_its_queued_segment(
    sim, R: int, workers: int, release: dict
) -> None:
    """On exact epochs, ``nominal_run`` (what ``anytime_release`` judges deadlines on) runs
    the order as the ``Scheduler`` does on the simulated executor: with one segment queued
    ahead (chosen one result early: 95 epochs at R=27 W=4, where a free worker would take
    90) and without."""
    schedule = brackets(R, 3)
    latest = latest_starts(schedule, 1, workers, release=release)
    space = sim.Space(sim.SPACE)
    for ahead in (1, 0):
        policy = lambda m: LatestStartPolicy(m.schedule, 1, workers, release=release)  # noqa: E731
        scheduler = sim.simulate_plan(
            space, R, 3, 0, 1, workers, _exact, policy=policy, queue_ahead=ahead
        )
        assert (
            nominal_run(schedule, 1, workers, latest, queue_ahead=ahead)[0] == scheduler.makespan
        )


def _exact(segment: Segment) -> float:
    return segment.epochs - segment.start_epoch
