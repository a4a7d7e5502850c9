"""The objective (any logged metric, minimised or maximised): names, directions, best epochs.

Runs that rank by an objective or stop early are in ``tests/test_objective_runs.py``.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phobbit import Hyperparameter, InputError, ParallelHyperband
from phobbit.core.objective import Objective, infer_direction
from phobbit.testing import SyntheticTrainable

SPACE = [Hyperparameter("x", "uniform", (0.0, 1.0))]


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("val_loss", "min"),
        ("loss", "min"),
        ("val_accuracy", "max"),
        ("accuracy", "max"),
        ("val_acc", "max"),
        ("val_auc", "max"),
        ("val_auc_1", "max"),
        ("val_precision", "max"),
        ("recall", "max"),
        ("val_sparse_categorical_accuracy", "max"),
        ("val_mean_absolute_error", "min"),
        ("mse", "min"),
        ("val_categorical_crossentropy", "min"),
        ("val_false_negatives", "min"),
        ("val_true_positives", "max"),
        ("val_my_thing", None),
    ],
)
def test_directions_are_inferred_as_keras_tuner_infers_them(name: str, direction: str) -> None:
    assert infer_direction(name) == direction


def test_objective_arguments_are_checked() -> None:
    assert Objective.of("val_accuracy") == Objective("val_accuracy", "max")
    assert Objective.of(("val_my_thing", "max")) == Objective("val_my_thing", "max")
    assert Objective.of("val_my_thing", "min").direction == "min"
    with pytest.raises(InputError, match="cannot tell whether objective 'val_my_thing'"):
        Objective.of("val_my_thing")
    with pytest.raises(InputError, match="give one"):
        Objective.of(("val_accuracy", "max"), "min")
    with pytest.raises(InputError, match="must be 'min' or 'max'"):
        Objective.of("val_accuracy", "up")
    with pytest.raises(InputError, match="'val_loss' is the loss Keras minimises"):
        Objective.of("val_loss", "max")  # it would list a second Val Loss column
    with pytest.raises(InputError, match="metric name"):
        ParallelHyperband(None, SPACE, "unused", trainable=SyntheticTrainable(), objective=3)


values = st.floats(min_value=-3, max_value=3, allow_nan=False) | st.just(math.nan)


@given(st.lists(values, max_size=12), st.sampled_from(["min", "max"]))
def test_the_best_epoch_is_the_latest_of_the_best_finite_values(
    found: list[float], direction: str
) -> None:
    objective = Objective("m", direction)
    history = [{"m": v, "val_loss": 0.0} for v in found]
    finite = [(v if direction == "min" else -v, e) for e, v in enumerate(found, 1) if v == v]
    expected = None if not finite else max(e for v, e in finite if v == min(finite)[0])
    assert objective.best_epoch(history) == expected
