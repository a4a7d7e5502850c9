"""The plan: early promotion, the dispatch (backfill) order, and promotions equal to a serial run.

Tests drive ``Plan`` directly with synthetic results, or run it with the real
``Scheduler`` on a ``SimulatedExecutor`` (a virtual clock): no processes, no
sleeping, no wall time. The reference is ``phobbit.testing.reference``'s serial Hyperband.
"""

from __future__ import annotations

import dataclasses
import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phobbit import Hyperparameter
from phobbit.core import reducer
from phobbit.core.dispatch import latest_starts
from phobbit.core.plan import Plan
from phobbit.core.records import RunSettings, Segment, SegmentResult, Tuning
from phobbit.core.schedule import brackets
from phobbit.core.space import Space
from phobbit.execution.scheduler import Scheduler, SilentReporter
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.execution.trainable import Losses
from phobbit.execution.worker import train_segment
from phobbit.storage.repository import Repository
from phobbit.testing import serial_hyperband

Promotions = dict[tuple[int, int, int], list[int]]
Outcome = Callable[[Segment], SegmentResult]

# A module-level space (it is immutable): hypothesis reruns a test without its fixtures.
SPACE = Space(
    [Hyperparameter("x", "uniform", (0.0, 1.0)), Hyperparameter("lr", "log-uniform", (1e-4, 0.1))]
)


def outcome(seed: int, fail_rate: float = 0.0, levels: int = 0) -> Outcome:
    """Results that depend on the segment alone: the same whatever the order of finishing.

    ``levels`` > 0 rounds losses to that many values (ties); ``fail_rate`` fails
    some segments, half of them with a NaN loss and half with an error.
    """

    def result(segment: Segment) -> SegmentResult:
        rng = random.Random(f"{seed}-{segment.key}")
        loss = rng.random()
        if levels:
            loss = round(loss * levels) / levels
        status, value = "ok", loss
        if rng.random() < fail_rate:
            status, value = "failed", None if rng.random() < 0.5 else math.nan
        return segment.result(
            val_loss=value,
            last_val_loss=value,
            status=status,
            error="" if status == "ok" else "boom",
        )

    return result


def serial_promotions(
    space: Space, R: int, eta: int, iterations: int, result: Outcome, seed: int = 0
) -> Promotions:
    """What a serial Hyperband (``phobbit.testing``) promotes when segments give ``result``."""
    return serial_hyperband(Tuning.of(space, R, eta, seed, iterations), result).promotions


@dataclass(frozen=True)
class Drawn:
    """A trainable whose losses depend on the segment alone (its configuration and epochs).

    ``levels`` > 0 rounds losses to that many values (ties); ``fail_rate`` fails
    some segments, half of them with a NaN loss and half by raising.
    """

    seed: int
    fail_rate: float = 0.0
    levels: int = 0

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> Losses:
        rng = random.Random(f"{self.seed}-{Path(checkpoint).name}-{epochs}")
        loss = rng.random()
        if self.levels:
            loss = round(loss * self.levels) / self.levels
        if rng.random() < self.fail_rate:
            if rng.random() < 0.5:
                raise ValueError("boom")
            loss = math.nan
        return Losses([loss] * (epochs - initial_epoch))


def _repository(folder: str, space: Space, plan: Plan) -> Repository:
    machine = plan.machine
    repository = Repository(folder)
    repository.create(
        RunSettings.of(space, machine.R, machine.eta, machine.seed, machine.iterations)
    )
    return repository


class Watch(SilentReporter):
    """Notes when each segment is handed out (virtual time); calls ``each`` after each result."""

    def __init__(
        self, plan: Plan, executor: SimulatedExecutor, each: Callable[[Plan], None] | None
    ) -> None:
        self.plan, self.executor, self.each = plan, executor, each
        self.handed: list[tuple[float, Segment]] = []

    def dispatched(self, segment: Segment) -> None:
        self.handed.append((self.executor.clock(), segment))

    def finished(self, result: SegmentResult) -> None:
        if self.each is not None:
            self.each(self.plan)


def run(
    plan: Plan,
    space: Space,
    trainable: Drawn,
    duration: Callable[[Segment], float],
    each: Callable[[Plan], None] | None = None,
) -> list[tuple[float, Segment]]:
    """Runs ``plan`` with the real ``Scheduler`` on a ``SimulatedExecutor`` of its workers.

    Returns (start time, segment) in the order handed out; ``each`` is called
    after every result is recorded.
    """
    executor = SimulatedExecutor(plan.workers, duration)
    watch = Watch(plan, executor, each)
    with tempfile.TemporaryDirectory(prefix="phobbit-test-") as folder:
        repository = _repository(folder, space, plan)
        Scheduler(trainable, plan, repository, executor, reporter=watch).drive()
    return watch.handed


def random_times(rng: random.Random) -> Callable[[Segment], float]:
    """Segments that take random times, drawn as they are handed out."""
    return lambda segment: rng.random()


def serial_run(space: Space, plan: Plan, trainable: Drawn) -> Promotions:
    """What a serial Hyperband (``phobbit.testing.reference``) of ``plan``'s settings promotes."""
    machine = plan.machine
    with tempfile.TemporaryDirectory(prefix="phobbit-test-") as folder:
        repository = _repository(folder, space, plan)
        return serial_hyperband(
            dataclasses.replace(machine.tuning, checkpoint_of=repository.checkpoint_stem),
            lambda segment: train_segment(trainable, segment, folder),
        ).promotions


def sorted_promotions(plan: Plan) -> Promotions:
    return {key: sorted(ids) for key, ids in plan.promotions().items()}


# -- early promotion ---------------------------------------------------------------------


losses = st.one_of(
    st.none(),
    st.just(math.nan),
    st.sampled_from([0.1, 0.2, 0.3]),  # ties
    st.floats(min_value=0, max_value=10),
)


@given(st.lists(losses, min_size=1, max_size=40), st.data())
def test_early_promotion_never_chooses_what_the_whole_rung_would_not(
    values: list[float | None], data: st.DataObject
) -> None:
    n = len(values)
    k = data.draw(st.integers(0, n), label="k")
    order = data.draw(st.permutations(range(n)), label="finish order")
    serial = reducer.serial_promotions(dict(enumerate(values)), k)
    finished: dict[int, float | None] = {}
    early: list[int] = []
    for config_id in order:
        finished[config_id] = values[config_id]
        now = reducer.certain_promotions(finished, k, unfinished=n - len(finished))
        assert set(now) <= set(serial)
        assert set(early) <= set(now), "a promotion was taken back"
        early = now
    assert early == serial


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    workers=st.integers(2, 6),
    shape=st.sampled_from([(9, 3), (20, 3), (27, 3), (16, 2)]),
    fail_rate=st.sampled_from([0.0, 0.2]),
    levels=st.sampled_from([0, 4]),
)
def test_plan_never_promotes_what_a_serial_run_would_not(
    seed: int, workers: int, shape: tuple[int, int], fail_rate: float, levels: int
) -> None:
    R, eta, space = *shape, SPACE
    trainable = Drawn(seed, fail_rate, levels)
    plan = Plan(Tuning.of(space, R, eta, iterations=2), workers=workers)
    serial = serial_run(space, plan, trainable)

    def check(plan: Plan) -> None:
        for key, ids in plan.promotions().items():
            assert set(ids) <= set(serial[key]), f"rung {key} promoted {ids}, serial {serial[key]}"

    run(plan, space, trainable, random_times(random.Random(seed)), each=check)
    assert sorted_promotions(plan) == serial


def test_a_configuration_is_promoted_before_its_rung_has_finished(space: Space) -> None:
    plan = Plan(Tuning.of(space, R=9, eta=3))  # bracket 2: 9 configurations, 3 go on
    rung0 = [s for s in plan.ready() if s.s == 2 and s.rung == 0]
    best = {s.id: 0.1 * s.id for s in rung0}  # ID 0 is best
    made_ready = []
    for segment in sorted(rung0, key=lambda s: s.id)[:7]:
        made_ready += plan.record(_result(segment, best[segment.id]))
    # With 2 of 9 unfinished, IDs 0 (best) is certain to be among the best 3: it goes on now.
    assert [(s.s, s.id, s.rung) for s in made_ready] == [(2, 0, 1)]
    assert plan.promotions()[(0, 2, 0)] == [0]


def _result(segment: Segment, loss: float | None) -> SegmentResult:
    return segment.result(
        val_loss=loss,
        last_val_loss=loss,
        status="ok" if loss is not None else "failed",
        error="",
    )


# -- equal promotions whatever the number of workers ------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_promotions_equal_between_one_and_four_workers_under_random_finish_orders(
    space: Space, seed: int
) -> None:
    trainable = Drawn(seed, fail_rate=0.1, levels=8)
    one = Plan(Tuning.of(space, R=27, eta=3, iterations=2), workers=1)
    four = Plan(Tuning.of(space, R=27, eta=3, iterations=2), workers=4)
    run(one, space, trainable, random_times(random.Random(seed)))
    trained = run(four, space, trainable, random_times(random.Random(seed + 1000)))
    assert sorted_promotions(one) == sorted_promotions(four)
    assert sorted_promotions(four) == serial_run(space, four, trainable)
    assert len(trained) == len({s.key for _, s in trained}), "a segment ran twice"


# -- the dispatch (backfill) order --------------------------------------------------------------


def test_next_segment_takes_the_ready_segment_of_highest_priority(space: Space) -> None:
    plan = Plan(Tuning.of(space, R=27, eta=3, iterations=2), workers=4)
    rng, result = random.Random(0), outcome(0)
    running: list[Segment] = []
    while not plan.done:
        while len(running) < 4 and plan.ready():
            best = max(plan.ready(), key=plan.priority)
            segment = plan.next_segment()
            assert segment is not None and segment.key == best.key
            running.append(segment)
        plan.record(result(running.pop(rng.randrange(len(running)))))


def test_free_workers_backfill_across_brackets_and_iterations(space: Space) -> None:
    plan = Plan(Tuning.of(space, R=27, eta=3, iterations=2), workers=4)
    started = run(plan, space, Drawn(1), random_times(random.Random(1)))
    first = {}  # when each (iteration, bracket) first started, and when it last started
    last = {}
    for when, segment in started:
        first.setdefault((segment.iteration, segment.s), when)
        last[(segment.iteration, segment.s)] = when
    # No bracket waits for the ones before it: each starts before another has ended.
    overlapping = [a for a in first for b in first if a != b and first[a] < last[b] < last[a]]
    assert len(overlapping) >= len(first) - 1
    # The second iteration starts before the first has handed out its last segment.
    assert min(w for (i, _), w in first.items() if i == 1) < max(
        w for (i, _), w in last.items() if i == 0
    )


def test_deep_chains_go_first_and_the_last_brackets_long_segments_fill_the_end(
    space: Space,
) -> None:
    plan = Plan(Tuning.of(space, R=81, eta=3), workers=8)
    first = plan.next_segment()
    assert first is not None and first.s == 4  # 81x1, 27x2, ...: the longest chain of rungs
    plan.give_back(first)
    started = run(plan, space, Drawn(2), random_times(random.Random(2)))
    order = [s.s for _, s in started if s.rung == 0]
    # Bracket 0 (5 segments of 81 epochs, nothing after them) starts after the deepest.
    assert order.index(0) > order.index(4)


def test_a_segment_given_back_is_handed_out_again_first_in_its_rung(space: Space) -> None:
    plan = Plan(Tuning.of(space, R=9, eta=3), workers=2)
    segment = plan.next_segment()
    assert segment is not None
    plan.give_back(segment)
    assert plan.outstanding == 0
    again = plan.next_segment()
    assert again == segment


def test_a_result_recorded_without_being_handed_out_is_not_handed_out(space: Space) -> None:
    plan = Plan(Tuning.of(space, R=9, eta=3), workers=2)
    ready = plan.ready()
    plan.record(_result(ready[0], 0.5))  # e.g. a row already in the repository
    handed = []
    while (segment := plan.next_segment()) is not None:
        handed.append(segment.key)
    assert ready[0].key not in handed
    assert len(handed) == len(ready) - 1


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_latest_starts_read_forwards_are_a_schedule_on_the_workers(workers: int) -> None:
    schedule = brackets(81, 3)
    table = latest_starts(schedule, iterations=2, workers=workers)
    by_run = {b.s: b for b in schedule}
    events = []
    for (iteration, run_, rung), starts in table.items():
        bracket = by_run[run_]
        assert len(starts) == bracket.rungs[rung].n
        epochs = bracket.segment_epochs(rung)
        events += [(t, 1) for t in starts] + [(t + epochs, -1) for t in starts]
        if rung + 1 < len(bracket.rungs):  # a rung ends before the next one starts
            assert max(starts) + epochs <= min(table[(iteration, run_, rung + 1)])
    busy = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):
        busy += change
        assert busy <= workers
    assert min(t for t, _ in events) == 0


@pytest.mark.parametrize(("workers", "at_least"), [(2, 0.97), (4, 0.95), (8, 0.93)])
def test_simulated_run_comes_close_to_the_lower_bound(
    space: Space, workers: int, at_least: float
) -> None:
    """R=81, eta=3, segments as long as their epochs (+-30%): a virtual clock, not a timing."""
    rng = random.Random(7)
    jitter = {}

    def duration(segment: Segment) -> float:
        key = segment.key
        if key not in jitter:
            jitter[key] = (segment.epochs - segment.start_epoch) * rng.uniform(0.7, 1.3)
        return jitter[key]

    plan = Plan(Tuning.of(space, R=81, eta=3), workers=workers)
    started = run(plan, space, Drawn(7), duration)
    clock = max(when + jitter[segment.key] for when, segment in started)
    work = sum(jitter.values())
    assert len(jitter) == 206
    assert max(work / workers, 81 * 0.7) / clock >= at_least
