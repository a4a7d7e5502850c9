"""TPE's kernels: how far a model draw strays from a tight cluster of good results. Pure: the
sampler alone."""

from __future__ import annotations

import pytest

from phobbit.core.samplers import TPESampler
from phobbit.core.space import Hyperparameter, Space

pytest.importorskip("optuna")

TOY = Space(
    [Hyperparameter("x", "uniform", (0.0, 1.0)), Hyperparameter("y", "uniform", (0.0, 1.0))]
)
GOOD = [(0.6, 0.6), (0.61, 0.61), (0.62, 0.62)]
BAD = [(0.1, 0.9), (0.9, 0.1), (0.3, 0.2), (0.2, 0.4), (0.8, 0.8), (0.95, 0.5), (0.05, 0.05)]


def test_model_draws_reach_beyond_a_tight_cluster_of_good_results() -> None:
    """The outermost good results' kernels reach to the range's ends, so some model draws
    leave the cluster's strip: with kernels as wide as the inner neighbour only, 3 of 40
    draws left it by more than 0.1, and on the Keras surrogate's grid such draws landed on
    the same grid points again (benchmarks/README.md, issue 21.2 (tpe4))."""
    sampler = TPESampler(TOY, seed=0, random_fraction=0.0, min_random_fraction=0.0)
    for i, (x, y) in enumerate(GOOD + BAD):
        sampler.observe((0, 0, i), {"x": x, "y": y}, 1, 0.1 if i < len(GOOD) else 1.0)
    away = 0
    for j in range(40):
        hparams = sampler.draw((1, 0, j))
        sampler.observe((1, 0, j), hparams, 1, None)  # a failure: not in flight, not modelled
        away += max(abs(hparams["x"] - 0.61), abs(hparams["y"] - 0.61)) > 0.1
    assert away >= 6
