"""The TPE sampler's study stays bounded, and a resumed run draws what an uninterrupted one
draws (its in-flight configurations are liars again). No TensorFlow: the synthetic trainable
on the simulated executor."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from helpers import space
from synthetic import x_curve

from phobbit import ParallelHyperband
from phobbit.core.records import Tuning
from phobbit.core.samplers import TPESampler
from phobbit.core.space import Hyperparameter, Space
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.storage.decisions import DecisionLog
from phobbit.storage.repository import Repository
from phobbit.testing import SyntheticTrainable

optuna = pytest.importorskip("optuna")

TOY = Space(
    [Hyperparameter("x", "uniform", (0.0, 1.0)), Hyperparameter("y", "uniform", (0.0, 1.0))]
)


def bowl(hparams: dict[str, Any]) -> float:
    return (hparams["x"] - 0.3) ** 2 + (hparams["y"] - 0.7) ** 2


def test_the_tpe_study_holds_only_the_results_and_the_configurations_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four configurations always in flight, 60 draws: every study the sampler asks holds
    at most the results and those four, not a liar per draw made so far."""
    studies: list[Any] = []
    create = optuna.create_study

    def spy(*args: Any, **kwargs: Any) -> Any:
        studies.append(create(*args, **kwargs))
        return studies[-1]

    monkeypatch.setattr(optuna, "create_study", spy)
    sampler = TPESampler(TOY, seed=0)
    in_flight: list[tuple[tuple[int, int, int], dict[str, Any]]] = []
    results = 0
    for i in range(60):
        key = (0, 0, i)
        in_flight.append((key, sampler.draw(key)))
        biggest = max((len(s.get_trials(deepcopy=False)) for s in studies), default=0)
        assert biggest <= results + len(in_flight), f"draw {i}"
        if len(in_flight) == 4:
            done, hparams = in_flight.pop(0)
            sampler.observe(done, hparams, 1, bowl(hparams))
            results += 1
    assert studies  # the model drew


def run(repo: Path, executor: SimulatedExecutor, **kwargs: Any) -> ParallelHyperband:
    trainable = SyntheticTrainable(curve=x_curve, epoch_seconds=1.0)
    tuner = ParallelHyperband(
        None, space(), repo, trainable=trainable, executor=executor, verbose=0, **kwargs
    )
    return tuner


def drawn(repo: Path) -> dict[tuple[int, int, int], dict[str, Any]]:
    return {(d.iteration, d.s, d.id): d.hparams for d in DecisionLog(Repository(repo)).read()}


@pytest.mark.parametrize("victim_at", [6, 12, 20, 27])
def test_a_resumed_tpe_run_draws_the_configurations_an_uninterrupted_run_draws(
    tmp_path: Path, victim_at: int
) -> None:
    """One worker and one segment queued ahead: at the interruption a configuration is in
    flight beside the victim; the resume must model it as a liar again, as the run that
    went on did, so every later draw is the same."""
    whole = tmp_path / "whole"
    run(whole, SimulatedExecutor(1), sampler="tpe").run(R=9, eta=3, iterations=2)
    expected = drawn(whole)
    victim = DecisionLog(Repository(whole)).read()[victim_at].key
    repo = tmp_path / "repo"
    killed = run(repo, SimulatedExecutor(1, fail={victim: [KeyboardInterrupt()]}), sampler="tpe")
    with pytest.raises(KeyboardInterrupt):
        killed.run(R=9, eta=3, iterations=2)
    before = drawn(repo)
    assert len(before) < len(expected)
    run(repo, SimulatedExecutor(1), sampler="tpe").run(R=9, eta=3, iterations=2)
    after = drawn(repo)
    assert after == expected
    assert all(math.isfinite(r.val_loss) for r in Repository(repo).iter_results())


def test_a_replayed_configuration_is_in_flight_until_its_result() -> None:
    """The sampler hook: a configuration replayed on resume is a liar until observed."""
    tuning = Tuning.of(TOY, R=9, eta=3)
    sampler = TPESampler(tuning.space, seed=0)
    sampler.replayed((0, 2, 0), {"x": 0.5, "y": 0.5})
    assert sampler._pending == {(0, 2, 0): {"x": 0.5, "y": 0.5}}  # noqa: SLF001
    sampler.observe((0, 2, 0), {"x": 0.5, "y": 0.5}, 1, 0.3)
    assert sampler._pending == {}  # noqa: SLF001
