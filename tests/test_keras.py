"""Real Keras models: the seed tutorial's MLP on scikit-learn's digits, on two workers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from keras_models import HPARAMS, digits, mlp, not_a_model

from phobbit import ParallelHyperband, brackets

pytestmark = pytest.mark.keras
BATCH = 64


@pytest.fixture(scope="module")
def tutorial_run(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("keras") / "repo"
    tuner = ParallelHyperband(
        mlp, HPARAMS, repo, dataset=digits(), n_jobs=2, batch_size=BATCH, verbose=0
    )
    return repo, tuner.run(R=9, eta=3)


def test_tutorial_mlp_on_digits_learns(tutorial_run) -> None:
    _, results = tutorial_run
    assert len(results) == sum(b.n for b in brackets(9, 3))
    assert list(results.columns[:4]) == ["Hparams", "ID", "Run", "Val Loss"]
    assert (results["Status"] == "ok").all(), results["Error"].tolist()
    assert results["Val Loss"].min() < 0.3
    assert set(results["GPU"]) == {"-1"}


def test_checkpoint_continuation_keeps_optimizer_state(tutorial_run) -> None:
    import keras

    repo, results = tutorial_run
    steps = math.ceil(1437 / BATCH)
    for index in ["2-0", results.index[0]]:
        row = results.loc[index]
        run, config_id = map(int, index.split("-"))
        model = keras.saving.load_model(repo / "models" / f"0-{run}-{config_id}.keras")
        # a resumed configuration trains only its missing epochs, optimizer state included
        assert int(model.optimizer.iterations) == row["Epochs"] * steps


def test_a_model_function_that_returns_no_model_fails_its_trials(tmp_path: Path) -> None:
    tuner = ParallelHyperband(
        not_a_model, HPARAMS, tmp_path / "repo", dataset=digits(), n_jobs=1, verbose=0
    )
    results = tuner.run(R=3, eta=3)
    assert (results["Status"] == "failed").all()
    assert results["Error"].str.contains("returned NoneType, not a compiled keras.Model").all()


def test_large_arrays_travel_once_per_worker_not_once_per_trial(tmp_path: Path) -> None:
    import pickle

    import numpy as np

    from phobbit.keras_trainable import KerasTrainable, staged_dataset
    from phobbit.worker import Segment

    big = np.zeros((20_000, 100), dtype="float32")  # 8 MB
    dataset = ((big, np.zeros(20_000)), (big[:100], np.zeros(100)))
    with staged_dataset(dataset, str(tmp_path)) as path:
        trainable = KerasTrainable(mlp, data_path=path)
        segment = Segment(0, 2, 0, 0, {"x": 1.0}, 0, 1, str(tmp_path / "c"))
        task = pickle.dumps((trainable, segment), protocol=pickle.HIGHEST_PROTOCOL)
        assert len(task) < 20_000, "a trial's payload must not carry the arrays"
        first = trainable._arrays()
        assert trainable._arrays() is first  # loaded once per worker process
        assert isinstance(first[0][0], np.memmap)
    assert not Path(path).exists()


def test_a_segment_trains_alike_whichever_worker_runs_it(tmp_path: Path) -> None:
    from phobbit.keras_trainable import KerasTrainable

    trainable = KerasTrainable(mlp, load_dataset=digits, batch_size=BATCH)
    hparams = {"dropout1": 0.3, "dropout2": 0.3, "activation": "relu", "learning_rate": 0.01}
    first = trainable.train(hparams, str(tmp_path / "a"), 0, 2)
    trainable.train({**hparams, "dropout1": 0.1}, str(tmp_path / "other"), 0, 1)
    again = trainable.train(hparams, str(tmp_path / "b"), 0, 2)
    assert again == first
