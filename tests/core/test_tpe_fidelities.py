"""TPE's one model over every fidelity: each configuration ranks by how far Hyperband let it
go, then by its loss there, so a promotion counts before its result and a thin top budget
does not throw away who was promoted. Pure: the sampler, or a plan with no executor."""

from __future__ import annotations

from typing import Any

import pytest
from test_tpe_draws import result  # the toy loss: (x - 0.3)^2 + 1 / epochs

from phobbit.core.dispatch import AnytimePolicy
from phobbit.core.hyperband import SynchronousHyperband
from phobbit.core.plan import Plan
from phobbit.core.records import ConfigKey, Tuning
from phobbit.core.samplers import TPESampler
from phobbit.core.space import Hyperparameter, Space

optuna = pytest.importorskip("optuna")

TOY = Space(
    [Hyperparameter("x", "uniform", (0.0, 1.0)), Hyperparameter("y", "uniform", (0.0, 1.0))]
)


def studied(monkeypatch: pytest.MonkeyPatch, sampler: TPESampler, key: ConfigKey) -> list[Any]:
    """The complete trials of the study ``sampler`` fits for its draw of ``key``, best first."""
    studies: list[Any] = []
    create = optuna.create_study

    def spy(*args: Any, **kwargs: Any) -> Any:
        studies.append(create(*args, **kwargs))
        return studies[-1]

    monkeypatch.setattr(optuna, "create_study", spy)
    sampler.draw(key)
    assert len(studies) == 1, "a model draw"
    done = [t for t in studies[0].get_trials(deepcopy=False) if t.value is not None]
    return sorted(done, key=lambda t: t.value)


def test_a_promoted_configuration_ranks_above_one_stopped_below_it_before_its_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two iterations' one-epoch rungs, no result yet at 3 epochs: iteration 0's three
    promoted configurations (x near 0.9) ranked below iteration 1's stopped ones, whose
    one-epoch losses were lower (x near 0.1), so the model's good set was those Hyperband
    had already dropped. Now the promoted three are the good set (30% of 10 results)."""
    sampler = TPESampler(TOY, seed=0, random_fraction=0.0)
    for i in range(5):  # iteration 0: five at x = 0.90.., the first three promoted
        sampler.observe((0, 2, i), {"x": 0.9 + i / 100, "y": 0.5}, 1, 0.5 + i / 100)
    for i in range(3):
        sampler.promoted((0, 2, i), 3)
    for i in range(5):  # iteration 1: five at x = 0.10.., lower losses, none promoted yet
        sampler.observe((1, 2, 5 + i), {"x": 0.1 + i / 100, "y": 0.5}, 1, 0.3 + i / 100)
    good = studied(monkeypatch, sampler, (1, 1, 0))[:3]
    assert sorted(t.params["x"] for t in good) == pytest.approx([0.90, 0.91, 0.92])


def test_a_thin_top_budget_joins_the_lower_ones_instead_of_being_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nine results at 1 epoch and two at 9 (fewer than the 5 a budget needs): BOHB's rule
    fit the model on the one-epoch results alone and never saw the two that went furthest.
    Now all eleven are the model's, the two at 9 epochs ranked best."""
    sampler = TPESampler(TOY, seed=0, random_fraction=0.0)
    for i in range(9):
        sampler.observe((0, 2, i), {"x": i / 10, "y": 0.5}, 1, 0.1 + i / 100)
    for i in range(2):  # worse losses than any at 1 epoch, but they reached R
        sampler.observe((0, 0, i), {"x": 0.95, "y": 0.1 + i / 10}, 9, 0.9 + i / 100)
    trials = studied(monkeypatch, sampler, (0, 1, 0))
    assert len(trials) == 11
    assert [t.params["y"] for t in trials[:2]] == pytest.approx([0.1, 0.2])


class Promotions(TPESampler):
    """A TPE sampler that notes the promotions it is told of."""

    def __init__(self, space: Space, seed: int = 0) -> None:
        super().__init__(space, seed)
        self.told: list[tuple[ConfigKey, int]] = []

    def promoted(self, key: ConfigKey, epochs: int) -> None:
        self.told.append((key, epochs))
        super().promoted(key, epochs)


def test_hyperband_tells_its_sampler_each_promotion_and_the_epochs_it_gives() -> None:
    """R=9 run serially: the sampler hears of every promotion (3 + 1 in bracket 2, 1 in
    bracket 1), with the epochs of the rung it is promoted to, as the promotions table has
    them."""
    tuning = Tuning.of(TOY, R=9, eta=3, seed=0)
    sampler = Promotions(TOY, seed=0)
    machine = SynchronousHyperband(tuning, sampler=sampler)
    plan = Plan.of(machine, AnytimePolicy(machine.schedule, tuning.iterations, 1), 1)
    while not plan.done:
        segment = plan.next_segment()
        assert segment is not None
        plan.record(result(segment))
    expected = [
        ((it, s, config_id), machine.bracket(it, s).rungs[rung + 1].epochs)
        for (it, s, rung), ids in machine.promotions().items()
        for config_id in ids
    ]
    assert sorted(sampler.told) == sorted(expected)
    assert len(expected) == 5
