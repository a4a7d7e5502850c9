"""When TPE draws: a shallower bracket's configurations wait for the results the model needs
while the deepest bracket's first rung can keep the workers busy, and a run stopped halfway
then resumed draws what an uninterrupted one draws. Pure plans, or the simulated executor."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from helpers import space
from synthetic import x_curve

from phobbit import ParallelHyperband
from phobbit.core import samplers
from phobbit.core.dispatch import AnytimePolicy
from phobbit.core.hyperband import SynchronousHyperband
from phobbit.core.plan import Plan
from phobbit.core.records import ConfigKey, Segment, SegmentResult, Tuning
from phobbit.core.samplers import TPESampler
from phobbit.core.space import Hyperparameter, Space
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.storage.decisions import DecisionLog
from phobbit.storage.repository import Repository
from phobbit.testing import SyntheticTrainable

pytest.importorskip("optuna")

TOY = Space(
    [Hyperparameter("x", "uniform", (0.0, 1.0)), Hyperparameter("y", "uniform", (0.0, 1.0))]
)


class Spy(TPESampler):
    """A TPE sampler that notes, for every draw, how many results it had observed."""

    def __init__(self, space: Space, seed: int = 0) -> None:
        super().__init__(space, seed)
        self.seen_at: dict[ConfigKey, int] = {}
        self._results = 0

    def observe(self, key: ConfigKey, hparams: dict[str, Any], epochs: int, loss: Any) -> None:
        self._results += 1
        super().observe(key, hparams, epochs, loss)

    def draw(self, key: ConfigKey) -> dict[str, Any]:
        self.seen_at[key] = self._results
        return super().draw(key)


def tpe_plan(workers: int, R: int = 9) -> tuple[Plan, Spy]:
    tuning = Tuning.of(TOY, R=R, eta=3, seed=0)
    sampler = Spy(TOY, seed=0)
    machine = SynchronousHyperband(tuning, sampler=sampler)
    policy = AnytimePolicy(machine.schedule, tuning.iterations, workers)
    return Plan.of(machine, policy, workers), sampler


def result(segment: Segment) -> SegmentResult:
    loss = (segment.hparams["x"] - 0.3) ** 2 + 1.0 / segment.epochs
    return SegmentResult(
        iteration=segment.iteration,
        s=segment.s,
        id=segment.id,
        rung=segment.rung,
        epochs=segment.epochs,
        start_epoch=segment.start_epoch,
        val_loss=loss,
        last_val_loss=loss,
        status="ok",
        error="",
        hparams=segment.hparams,
    )


def test_shallower_brackets_draw_after_the_results_the_model_needs() -> None:
    """R=9 on four workers: before, the straight-to-R bracket's first configuration was drawn
    third, with no result at all. Now every configuration of the shallower brackets is drawn
    once the model has its points (5 for two hyperparameters), while the deepest bracket's
    nine first-rung segments keep the four workers busy; and no worker waits for it."""
    plan, sampler = tpe_plan(workers=4)
    running: list[Segment] = []
    order: list[tuple[int, int]] = []
    while not plan.done:
        while len(running) < 4 and (segment := plan.next_segment()) is not None:
            running.append(segment)
            order.append((segment.s, segment.rung))
        assert running, "a worker waits while nothing runs"
        plan.record(result(running.pop(0)))  # the oldest finishes first
    shallow = {k: n for k, n in sampler.seen_at.items() if k[1] < 2}
    assert len(shallow) == 5 + 3
    assert min(shallow.values()) >= sampler.min_points
    assert order[:4] == [(2, 0)] * 4  # before: (0, 0) third, drawn on no result


def test_without_other_work_a_deferred_draw_goes_ahead() -> None:
    """One worker and no result: the deepest bracket's first rung goes first, then the
    others (nothing else is ready), never a worker left waiting for the model."""
    plan, _ = tpe_plan(workers=1)
    handed = [plan.next_segment() for _ in range(17)]
    assert all(segment is not None for segment in handed)
    assert [seg.s for seg in handed if seg is not None][:9] == [2] * 9
    assert plan.next_segment() is None  # every first rung is out: wait for results


def run(repo: Path, executor: SimulatedExecutor) -> ParallelHyperband:
    trainable = SyntheticTrainable(curve=x_curve, epoch_seconds=1.0)
    return ParallelHyperband(
        None, space(), repo, trainable=trainable, executor=executor, verbose=0, sampler="tpe"
    )


def drawn(repo: Path) -> dict[tuple[int, int, int], dict[str, Any]]:
    return {(d.iteration, d.s, d.id): d.hparams for d in DecisionLog(Repository(repo)).read()}


@pytest.mark.parametrize("victim_at", [4, 10, 16, 25])
def test_a_tpe_run_stopped_halfway_and_resumed_draws_what_an_uninterrupted_run_draws(
    tmp_path: Path, victim_at: int
) -> None:
    """One worker (so the order of results is the run's own): stopped while the shallower
    brackets still wait for the model (4), around the first model draws (10, 16) and in the
    second iteration (25), the resumed run draws every configuration the uninterrupted one
    drew, deferred draws included."""
    whole = tmp_path / "whole"
    run(whole, SimulatedExecutor(1)).run(R=9, eta=3, iterations=2)
    expected = drawn(whole)
    victim = DecisionLog(Repository(whole)).read()[victim_at].key
    repo = tmp_path / "repo"
    killed = run(repo, SimulatedExecutor(1, fail={victim: [KeyboardInterrupt()]}))
    with pytest.raises(KeyboardInterrupt):
        killed.run(R=9, eta=3, iterations=2)
    assert len(drawn(repo)) < len(expected)
    run(repo, SimulatedExecutor(1)).run(R=9, eta=3, iterations=2)
    assert drawn(repo) == expected
    assert all(math.isfinite(r.val_loss) for r in Repository(repo).iter_results())


def test_the_model_waits_for_five_results_and_counts_the_best_thirty_percent_good() -> None:
    """Two hyperparameters: BOHB's rule alone (3) fit a model on 3 results, whose draws on
    Branin were worse than random ones; now 4 results still give the random draw."""
    sampler = TPESampler(TOY, seed=0)
    assert sampler.min_points == 5
    for i in range(4):
        hparams = TOY.sample(0, 0, 2, i)
        sampler.observe((0, 2, i), hparams, 1, (hparams["x"] - 0.3) ** 2)
    assert not sampler.informed
    assert sampler.draw((0, 1, 0)) == TOY.sample(0, 0, 1, 0)
    assert [samplers._good_points(n) for n in (5, 9, 18, 200)] == [2, 3, 6, 25]  # noqa: SLF001
