"""Dispatch policies alone: the latest-start order, give back, discard; no promotions."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random

import pytest
from test_plan import SPACE

from phobbit.dispatch import LatestStartPolicy
from phobbit.hyperband import SynchronousHyperband
from phobbit.plan import Plan
from phobbit.records import Segment, SegmentResult, Status

# The order in which the Plan of phobbit 0.1 (before the state machine and the
# policy were split apart) handed out segments in ``dispatch_order``: the split
# must not change it (the README's and benchmarks' efficiency figures rest on it).
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


@pytest.mark.parametrize("workers", [1, 4, 16])
def test_latest_start_order_on_R81_is_that_of_the_plan_before_the_split(workers: int) -> None:
    order = dispatch_order(Plan(SPACE, R=81, eta=3, iterations=2, workers=workers), workers)
    assert len(order) == 434
    assert hashlib.sha256(repr(order).encode()).hexdigest()[:16] == ORDER_BEFORE_THE_SPLIT[workers]


def test_a_plan_of_its_parts_hands_out_what_the_plan_does() -> None:
    machine = SynchronousHyperband(SPACE, R=27, eta=3, iterations=2)
    policy = LatestStartPolicy(machine.schedule, machine.iterations, 4)
    parts = Plan.of(machine, policy, workers=4)
    whole = Plan(SPACE, R=27, eta=3, iterations=2, workers=4)
    assert dispatch_order(parts, 4) == dispatch_order(whole, 4)


def _policy(workers: int = 4) -> tuple[LatestStartPolicy, list[Segment]]:
    machine = SynchronousHyperband(SPACE, R=27, eta=3)
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
