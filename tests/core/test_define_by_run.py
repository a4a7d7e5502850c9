"""Keras Tuner's define-by-run hyperparameters mapped onto phobbit's Space (pure)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from phobbit.core.define_by_run import HyperParameters, Spec, discover
from phobbit.core.samplers import make_sampler
from phobbit.core.space import Hyperparameter, Space
from phobbit.errors import InputError


def getting_started(hp: HyperParameters) -> None:
    """Keras Tuner's getting-started build_model, without Keras: what it declares."""
    for i in range(hp.Int("num_layers", 1, 3)):
        hp.Int(f"units_{i}", min_value=32, max_value=512, step=32)
        hp.Choice("activation", ["relu", "tanh"])
    if hp.Boolean("dropout"):
        hp.Float("dropout_rate", 0.1, 0.5, step=0.1)
    hp.Float("lr", min_value=1e-4, max_value=1e-2, sampling="log")


def scoped(hp: HyperParameters) -> None:
    """Keras Tuner's conditional_scope example: a model type and its own ranges."""
    model_type = hp.Choice("model_type", ["mlp", "cnn"])
    with hp.conditional_scope("model_type", ["mlp"]):
        if model_type == "mlp":
            hp.Int("units", 32, 128, step=32)
    with hp.conditional_scope("model_type", ["cnn"]):
        if model_type == "cnn":
            hp.Int("filters", 8, 64, sampling="log")
            hp.Choice("kernel", [3, 5], parent_name="filters", parent_values=[8, 16])


def test_each_keras_tuner_range_maps_to_the_distribution_it_samples_from() -> None:
    hp = HyperParameters()
    assert hp.Int("a", 1, 5) == 1  # Keras Tuner's defaults: min_value, values[0], False
    assert hp.Int("b", 32, 128, step=32, default=64) == 64
    assert hp.Int("c", 2, 64, sampling="log") == 2
    assert hp.Int("d", 2, 32, step=2, sampling="log") == 2
    assert hp.Float("e", 0.0, 0.5) == 0.0
    assert hp.Float("f", 1e-4, 1e-1, sampling="log") == 1e-4
    assert hp.Float("g", 0.1, 0.9, sampling="reverse_log") == 0.1
    assert hp.Float("h", 0.0, 0.3, step=0.1) == 0.0
    assert hp.Choice("i", ["x", "y"]) == "x"
    assert hp.Boolean("j") is False
    assert hp.Fixed("k", 7) == 7
    got = {h.name: (h.distribution, h.distr_args) for h in hp.to_space().hparams}
    assert got == {
        "a": ("randint", (1, 5)),
        "b": ("choice", (32, 64, 96, 128)),
        "c": ("log-randint", (2, 64)),
        "d": ("choice", (2, 4, 8, 16, 32)),  # Keras Tuner's log grid: min * step**i
        "e": ("uniform", (0.0, 0.5)),
        "f": ("log-uniform", (1e-4, 1e-1)),
        "g": ("reverse-log-uniform", (0.1, 0.9)),
        "h": ("choice", (0.0, 0.1, 0.2, 0.30000000000000004)),  # max kept, unlike KT
        "i": ("choice", ("x", "y")),
        "j": ("choice", (False, True)),
        "k": ("choice", (7,)),
    }
    assert hp.values["b"] == 64 and hp.get("k") == 7 and "k" in hp


def test_new_distributions_draw_within_their_bounds_with_keras_tuners_shape() -> None:
    space = Space(
        [
            Hyperparameter("n", "log-randint", (1, 1000)),
            Hyperparameter("r", "reverse-log-uniform", (0.1, 0.999)),
        ]
    )
    draws = [space.sample(0, 0, 0, i) for i in range(2000)]
    assert all(space.refuses(d) is None for d in draws)
    ns = np.array([d["n"] for d in draws])
    assert 0.4 < np.mean(ns < 32) < 0.6  # log: half below sqrt(1000)
    rs = np.array([d["r"] for d in draws])
    mirror = 0.999 + 0.1 - math.sqrt(0.1 * 0.999)  # log-uniform's median, mirrored
    assert abs(np.median(rs) - mirror) < 0.02 and np.mean(rs > 0.9) > 0.25  # dense at the top


def test_discovery_finds_the_layers_a_larger_layer_count_declares() -> None:
    specs, complete = discover(getting_started)
    assert complete
    names = [s.name for s in specs]
    assert {"units_0", "units_1", "units_2", "dropout_rate"} <= set(names)
    space = HyperParameters.from_specs(specs).to_space()
    assert all(space.refuses(space.sample(3, 0, 2, i)) is None for i in range(50))


def test_conditional_scope_keeps_a_child_only_while_its_parent_holds_its_value() -> None:
    specs, _ = discover(scoped)
    space = HyperParameters.from_specs(specs).to_space()
    assert space.conditional
    draws = [space.sample(0, 0, 1, i) for i in range(200)]
    for d in draws:
        assert ("units" in d) == (d["model_type"] == "mlp")
        assert ("filters" in d) == (d["model_type"] == "cnn")
        assert ("kernel" in d) == (d.get("filters") in (8, 16))
        assert space.refuses(d) is None
    assert any("kernel" in d for d in draws)
    assert "is given, but its conditions" in space.refuses(
        {"model_type": "mlp", "units": 32, "filters": 8}
    )
    assert space.refuses({"model_type": "mlp"}) == "it lacks units"


def test_a_conditional_draw_is_a_function_of_seed_iteration_bracket_and_id_alone() -> None:
    space = HyperParameters.from_specs(discover(scoped)[0]).to_space()
    keys = [(0, s, i) for s in range(3) for i in range(9)]
    forward = {k: space.sample(5, *k) for k in keys}
    backward = {k: space.sample(5, *k) for k in reversed(keys)}
    assert forward == backward
    # The drawn values of an unconditional hyperparameter do not depend on conditions.
    plain = Space([Hyperparameter("model_type", "choice", [("mlp", "cnn")])])
    assert [forward[k]["model_type"] for k in keys] == [
        plain.sample(5, *k)["model_type"] for k in keys
    ]


def test_tpe_draws_only_valid_configurations_of_a_conditional_space() -> None:
    pytest.importorskip("optuna")
    space = HyperParameters.from_specs(discover(scoped)[0]).to_space()
    sampler = make_sampler("tpe", space, seed=0)
    for i in range(40):
        key = (0, 2, i)
        hparams = sampler.draw(key)
        assert space.refuses(hparams) is None, hparams
        loss = 1.0 if hparams["model_type"] == "cnn" else 0.1 + 0.001 * hparams.get("units", 0)
        sampler.observe(key, hparams, epochs=1, loss=loss)
    late = [sampler.draw((1, 2, i)) for i in range(20)]
    assert all(space.refuses(h) is None for h in late)


def test_an_unconditional_space_keeps_its_fingerprint() -> None:
    hp = Hyperparameter("lr", "log-uniform", (1e-4, 1e-1))
    assert "conditions" not in hp.to_dict()
    assert Space([hp]).fingerprint() == Space.from_list([hp.to_dict()]).fingerprint()
    child = Hyperparameter("u", "randint", (1, 4), (("lr", (0.1,)),))
    assert Hyperparameter.from_dict(child.to_dict()) == child


def test_a_trial_gets_its_configuration_and_none_for_an_inactive_child() -> None:
    specs, _ = discover(scoped)
    hp = HyperParameters.from_specs(specs, {"model_type": "mlp", "units": 96})
    seen: dict[str, object] = {}
    model_type = hp.Choice("model_type", ["mlp", "cnn"])
    with hp.conditional_scope("model_type", ["mlp"]):
        seen["units"] = hp.Int("units", 32, 128, step=32)
    with hp.conditional_scope("model_type", ["cnn"]):
        seen["filters"] = hp.Int("filters", 8, 64, sampling="log")
    assert model_type == "mlp" and seen == {"units": 96, "filters": None}
    with pytest.raises(ValueError, match="inactive"):
        hp.get("filters")
    with pytest.raises(KeyError):
        hp.get("nothing")


@pytest.mark.parametrize(
    "declare, message",
    [
        (lambda hp: hp.Int("a", 5, 1), "min_value 5 is greater than max_value 1"),
        (lambda hp: hp.Int("a", 1.5, 3), "must be an integer"),
        (lambda hp: hp.Float("a", 0.0, 1.0, sampling="log"), "needs min_value > 0"),
        (lambda hp: hp.Float("a", 0.1, 1.0, sampling="cubic"), "sampling must be one of"),
        (lambda hp: hp.Int("a", 1, 9, sampling="reverse_log"), "give step="),
        (lambda hp: hp.Choice("a", [1, "x"]), "of one type"),
        (lambda hp: hp.Choice("a", [1, 2], default=3), "default 3 is none"),
        (lambda hp: (hp.Int("a", 1, 3), hp.Int("a", 1, 4)), "declared twice, differently"),
        (lambda hp: hp.Int("a", 1, 3, parent_name="b", parent_values=[1]), "declare the parent"),
    ],
)
def test_a_bad_declaration_is_refused_in_one_line(declare, message) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match=message) as info:
        declare(HyperParameters())
    assert "\n" not in str(info.value)


def test_a_spec_round_trips_as_plain_data_for_the_worker() -> None:
    specs, _ = discover(scoped)
    assert [Spec.from_dict(s.to_dict()) for s in specs] == specs
    assert all(math.isfinite(len(s.summary())) for s in specs)
