"""The Keras input check: a dataset that does not fit the model stops the run before training."""

from __future__ import annotations

from pathlib import Path

import pytest
from keras_models import HPARAMS, digits, mlp

from phobbit import InputError, ParallelHyperband

pytestmark = pytest.mark.keras


def test_a_feature_count_that_does_not_fit_the_model_stops_the_run_as_bad_input(
    tmp_path: Path,
) -> None:
    """20 features for a model of 64 inputs: one line naming the model function, the
    shapes and Keras' message (no terminal escape), exit 2, nothing written."""
    (x, y), (x_val, y_val) = digits()
    narrow = ((x[:, :20], y), (x_val[:, :20], y_val))
    repo = tmp_path / "repo"
    tuner = ParallelHyperband(mlp, HPARAMS, repo, dataset=narrow, n_jobs=1, verbose=0)
    with pytest.raises(InputError) as caught:
        tuner.run(R=3, eta=3)
    message = str(caught.value)
    assert message.startswith("the training data does not fit the model of mlp: inputs ")
    assert "(1437, 20), labels (1437,)" in message
    assert "incompatible" in message and "fix the dataset or the model function" in message
    assert "\x1b" not in message and "\n" not in message
    assert caught.value.exit_code == 2
    assert not repo.exists()
