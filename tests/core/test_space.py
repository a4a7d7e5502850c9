"""Hyperparameters: validation, seeded sampling, JSON round trips."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phobbit import Hyperparameter, InputError
from phobbit.core.space import Space


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


# -- hostile and odd values: numpy scalars, overflow, NaN, JSON round trips ------------


def test_numpy_scalars_are_taken_as_the_python_numbers_they_hold() -> None:
    randint = Hyperparameter("n", "randint", (np.int64(16), np.int64(128)))
    assert randint.distr_args == (16, 128) and type(randint.distr_args[0]) is int
    options = [np.float32(0.5), np.int8(3), np.bool_(True), np.str_("relu"), np.float64(0.1)]
    choice = Hyperparameter("c", "choice", options)
    assert [type(v) for v in choice.distr_args] == [float, int, bool, str, float]
    assert json.loads(json.dumps(Space([randint, choice]).to_list()))  # serialisable
    assert Hyperparameter("u", "uniform", (np.float32(0.25), np.float16(0.5))).distr_args == (
        0.25,
        0.5,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("n", "randint", (0, 10**20)), "bounds within [-2**63, 2**63 - 1]"),
        (("n", "randint", (-(2**64), 0)), "bounds within [-2**63, 2**63 - 1]"),
        (("n", "randint", (0, 1e19)), "bounds within [-2**63, 2**63 - 1]"),
        (("u", "uniform", (-1e308, 1e308)), "hi - lo to be a finite float"),
        (("u", "uniform", (0, 10**400)), "two finite numbers"),
        (("lr", "log-uniform", (1e-3, 10**400)), "two finite numbers"),
        (("s", "normal", (0.0, 1e308)), "would draw infinite values"),
        (("s", "normal", (1.7e308, 1e306)), "would draw infinite values"),
        (("c", "choice", [1.0, math.nan]), "has the option nan; options must be finite"),
        (("c", "choice", [("a", [math.inf])]), "has the option inf"),
        (("c", "choice", [{1: "a"}]), "must be JSON values"),
        (("c", "choice", [[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]), "nest deeper than 16"),
    ],
)
def test_values_that_would_overflow_or_not_round_trip_are_refused(
    args: tuple, message: str
) -> None:
    with pytest.raises(InputError, match=re.escape(message)) as info:
        Hyperparameter(*args)
    assert "\n" not in str(info.value)


def test_a_choice_of_one_list_round_trips_as_one_option() -> None:
    single = Hyperparameter("layers", "choice", [[[64, 32]]])
    assert single.distr_args == ((64, 32),)
    assert Hyperparameter.from_dict(json.loads(json.dumps(single.to_dict()))) == single


def _numbers() -> st.SearchStrategy:
    """Bounds as users write them: ints of any size, floats of any kind, numpy scalars."""
    return st.one_of(
        st.integers(),
        st.floats(),
        st.integers(-(2**63), 2**63 - 1).map(np.int64),
        st.floats(width=32).map(np.float32),
        st.floats().map(np.float64),
        st.sampled_from([10**20, -(10**20), 1e308, -1e308, 5e-324, 2**63 - 1, -(2**63)]),
    )


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.integers(-(2**31), 2**31 - 1).map(np.int32),
    st.floats(width=32).map(np.float32),
)
_options = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
    ),
    max_leaves=12,
)
_hyperparameters = st.one_of(
    st.tuples(
        st.text(max_size=30),
        st.sampled_from(["uniform", "log-uniform", "randint", "normal"]),
        st.tuples(_numbers(), _numbers()),
    ),
    st.tuples(st.text(max_size=30), st.just("choice"), st.lists(_options, max_size=5)),
)


@settings(max_examples=400, deadline=None)
@given(_hyperparameters, st.integers(0, 2**32))
def test_any_accepted_hyperparameter_samples_serialises_and_round_trips(
    args: tuple, seed: int
) -> None:
    try:
        hp = Hyperparameter(*args)
    except InputError:
        return  # refused with a message: fine; any other exception fails the test
    text = json.dumps(hp.to_dict(), allow_nan=False)
    again = Hyperparameter.from_dict(json.loads(text))
    assert again == hp and hash(again) == hash(hp)
    assert json.dumps(again.to_dict(), allow_nan=False) == text
    space = Space([hp])
    assert Space.from_list(json.loads(json.dumps(space.to_list()))).fingerprint() == (
        space.fingerprint()
    )
    for config_id in range(3):
        value = space.sample(seed, 0, 0, config_id)[hp.name]
        assert json.loads(json.dumps(value, allow_nan=False)) == value
        # As a row reads it back, every draw is one the space contains.
        assert space.refuses(json.loads(json.dumps({hp.name: value}))) is None
        if hp.distribution != "choice":
            assert type(value) is (int if hp.distribution == "randint" else float)
            assert math.isfinite(value)
        if hp.distribution in ("uniform", "randint"):
            lo, hi = hp.distr_args
            assert lo <= value <= hi


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (5.0, "u=5.0 is outside [0.1, 0.5]"),
        (float("nan"), "u=nan is not a finite number"),
        (True, "u=True is not a finite number"),
        ("0.2", "u='0.2' is not a finite number"),
        (10**400, "is not a finite number"),
    ],
    ids=["above", "nan", "bool", "text", "10**400"],
)
def test_a_value_outside_a_bounded_hyperparameter_is_refused(value: object, why: str) -> None:
    space = Space([Hyperparameter("u", "uniform", (0.1, 0.5))])
    assert space.refuses({"u": 0.3}) is None and space.refuses({"u": 0.5}) is None
    assert why in space.refuses({"u": value})


def test_the_space_refuses_what_none_of_its_configurations_holds() -> None:
    space = Space(
        [
            Hyperparameter("n", "randint", (2, 4)),
            Hyperparameter("lr", "log-uniform", (1e-4, 1e-1)),
            Hyperparameter("g", "normal", (0.0, 1.0)),
            Hyperparameter("c", "choice", [(1, "a", [1, 2], {"k": 0.5})]),
        ]
    )
    good = {"n": 3, "lr": 0.01, "g": -40.0, "c": [1, 2]}
    assert space.refuses(good) is None and space.refuses({**good, "c": {"k": 0.5}}) is None
    assert space.refuses({**good, "n": 5}) == "n=5 is outside [2, 4]"
    assert space.refuses({**good, "n": 3.0}) == "n=3.0 is not an integer"
    assert space.refuses({**good, "lr": 1.0}) == "lr=1.0 is outside [0.0001, 0.1]"
    assert space.refuses({**good, "g": "x"}) == "g='x' is not a finite number"
    # Exactly as JSON writes the options: true is not 1, nor 1.0; a list not its tuple's twin.
    for value in (True, 1.0, "b", [2, 1], {"k": 1}):
        assert space.refuses({**good, "c": value}).startswith("c=")
    assert space.refuses({**good, "extra": 1}) == "the space has no extra"
    assert space.refuses({"n": 3}) == "it lacks lr, g, c"
    assert space.refuses([1]) == "[1] is not a configuration"
    assert len(space.refuses({**good, "c": "z" * 10_000})) < 100  # a hostile value, cut short
