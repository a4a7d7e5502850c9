"""Hyperparameters: validation, seeded sampling, JSON round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from phobbit import Hyperparameter, InputError
from phobbit.space import Space


def test_choice_accepts_hobbit_and_plain_forms() -> None:
    hobbit = Hyperparameter("act", "choice", [("relu", "tanh", "elu")])
    plain = Hyperparameter("act", "choice", ["relu", "tanh", "elu"])
    assert hobbit == plain
    assert hobbit.distr_args == ("relu", "tanh", "elu")


def test_samples_lie_in_their_distributions() -> None:
    rng = np.random.default_rng(1)
    u = Hyperparameter("u", "uniform", (0.1, 0.5))
    lu = Hyperparameter("lu", "log-uniform", (1e-4, 1e-1))
    ri = Hyperparameter("ri", "randint", (2, 4))
    ch = Hyperparameter("ch", "choice", ["a", "b"])
    us = [u.sample(rng) for _ in range(500)]
    lus = [lu.sample(rng) for _ in range(2000)]
    ris = [ri.sample(rng) for _ in range(300)]
    assert all(0.1 <= v < 0.5 for v in us)
    assert all(1e-4 <= v <= 1e-1 for v in lus)
    # uniform in log space: about a third of the draws in each decade
    decade = sum(1e-3 <= v < 1e-2 for v in lus) / len(lus)
    assert 0.28 < decade < 0.39
    assert set(ris) == {2, 3, 4} and all(isinstance(v, int) for v in ris)
    assert {ch.sample(rng) for _ in range(100)} == {"a", "b"}
    normal = [Hyperparameter("n", "normal", (5.0, 2.0)).sample(rng) for _ in range(3000)]
    assert abs(np.mean(normal) - 5.0) < 0.15 and abs(np.std(normal) - 2.0) < 0.15


def test_sampling_depends_on_seed_iteration_run_and_id_only(space: Space) -> None:
    first = space.sample(7, 0, 2, 5)
    assert space.sample(7, 0, 2, 5) == first
    others = [
        space.sample(8, 0, 2, 5),
        space.sample(7, 1, 2, 5),
        space.sample(7, 0, 1, 5),
        space.sample(7, 0, 2, 6),
    ]
    assert all(o != first for o in others)
    assert json.loads(json.dumps(first)) == first


def test_space_round_trips_through_json_and_fingerprints(space: Space) -> None:
    again = Space.from_list(json.loads(json.dumps(space.to_list())))
    assert again == space and again.fingerprint() == space.fingerprint()
    changed = Space([*space.hparams[:-1], Hyperparameter("units", "randint", (8, 65))])
    assert changed.fingerprint() != space.fingerprint()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("lr", "loguniform", (1, 2)),
            "distribution 'loguniform' of hyperparameter 'lr' is unknown; "
            "use one of uniform, log-uniform, choice, randint, normal",
        ),
        (("x", "uniform", (1.0, 1.0)), "needs lo < hi"),
        (("x", "uniform", (2.0, 1.0)), "needs lo < hi"),
        (("x", "uniform", (0.0, math.inf)), "two finite numbers"),
        (("x", "uniform", (0.0,)), "two finite numbers"),
        (("lr", "log-uniform", (0.0, 1.0)), "needs lo > 0"),
        (("c", "choice", []), "has no options"),
        (("c", "choice", [()]), "has no options"),
        (("c", "choice", [object()]), "must be JSON values"),
        (("n", "randint", (1.5, 4)), "integer bounds"),
        (("s", "normal", (0.0, 0.0)), "sigma > 0"),
        (("s", "normal", (0.0, "1")), "two finite numbers"),
        (("", "uniform", (0, 1)), "non-empty string"),
        (("x", "uniform", "0,1"), "must be a list or tuple"),
    ],
)
def test_bad_hyperparameters_name_the_problem(args: tuple, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")) as info:
        Hyperparameter(*args)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_bad_spaces_are_refused(hparams: list[Hyperparameter]) -> None:
    with pytest.raises(InputError, match="search space is empty"):
        Space([])
    with pytest.raises(InputError, match="'x' is listed twice"):
        Space([*hparams, Hyperparameter("x", "uniform", (0, 2))])
    with pytest.raises(InputError, match="not a phobbit.Hyperparameter"):
        Space([*hparams, ("y", "uniform", (0, 1))])
