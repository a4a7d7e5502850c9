"""The estimate of what is left (issue 21 item 4), on the simulated executor's virtual clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tuner

from phobbit.core.plan import Plan
from phobbit.core.records import Segment, SegmentResult
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.reporting.progress import ProgressTracker

START_UP = 60.0  # a fresh worker's framework import and first trace, as on a loaded machine
EPOCH = 2.0  # seconds per epoch of every configuration: a stationary workload
BUILD = 1.0  # seconds each segment spends building or restoring its model


class Recorder:
    """A reporter that feeds a ``ProgressTracker`` on the executor's clock and keeps, after
    each result, (virtual time, fraction of the epochs done, estimated seconds left)."""

    def __init__(self, executor: SimulatedExecutor) -> None:
        self.tracker = ProgressTracker(executor.slots, clock=executor.clock)
        self.seen: list[tuple[float, float, float | None]] = []

    def started(self, plan: Plan, resumed: int) -> None:
        self.tracker.started(plan, resumed)

    def dispatched(self, segment: Segment) -> None:
        self.tracker.dispatched(segment)

    def finished(self, result: SegmentResult) -> None:
        self.tracker.finished(result)
        self.seen.append((self.tracker.clock(), self.tracker.fraction(), self.tracker.left()))

    def retrying(self, segment: Segment, cause: str, attempt: int) -> None:
        self.tracker.retrying(segment)

    def replaced(self, count: int) -> None:
        pass

    def closed(self) -> None:
        pass


def stationary(workers: int):
    """A cost model: EPOCH per epoch and BUILD per segment, plus START_UP on the first segment
    each worker takes (the first ``workers`` submitted: every worker is fresh at the start)."""
    submitted = 0

    def duration(segment: Segment) -> float:
        nonlocal submitted
        submitted += 1
        fresh = START_UP if submitted <= workers else 0.0
        return fresh + BUILD + EPOCH * (segment.epochs - segment.start_epoch)

    return duration


@pytest.mark.parametrize(
    ("workers", "R", "iterations"), [(2, 9, 2), (4, 27, 1), (3, 9, 3), (8, 27, 1)]
)
def test_left_after_a_tenth_of_the_work_is_within_30_percent_of_the_true_remaining_time(
    tmp_path: Path, workers: int, R: int, iterations: int
) -> None:
    executor = SimulatedExecutor(workers, duration=stationary(workers))
    recorder = Recorder(executor)
    tuner(tmp_path / "repo", executor=executor, reporter=recorder).run(
        R=R, eta=3, iterations=iterations
    )
    end = executor.makespan()
    at, fraction, left = next(seen for seen in recorder.seen if seen[1] >= 0.1)
    assert fraction < 0.5, "a tenth of the work was never reported on its own"
    truth = end - at
    assert left is not None
    assert 0.7 * truth <= left <= 1.3 * truth, (at, fraction, left, truth)


def test_segment_cost_separates_the_per_segment_build_from_the_time_per_epoch() -> None:
    from phobbit.reporting.progress import SegmentCost

    cost = SegmentCost()
    assert cost.fit() is None
    cost.learn(1, 3.0)
    assert cost.fit() == (0.0, 3.0)  # one length: the build folded into the epoch, erring long
    cost.learn(3, 7.0)
    cost.learn(9, 19.0)
    per_segment, per_epoch = cost.fit()
    assert per_segment == pytest.approx(BUILD) and per_epoch == pytest.approx(EPOCH)
    assert cost.seconds(27) == pytest.approx(BUILD + 27 * EPOCH)
