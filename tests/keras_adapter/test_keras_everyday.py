"""Everyday Keras: objectives, callbacks, fit hyperparameters, export and input forms.

Tiny models on 300 digits, R=3 and eta=3 (five configurations, eleven epochs).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from everyday_keras import (
    HPARAMS,
    TRAIN,
    VALIDATION_BATCH,
    batches,
    digits,
    early_stopping,
    py_datasets,
    split_inputs,
    tf_datasets,
    tiny,
    two_inputs,
)

import phobbit
from phobbit import Hyperparameter, ParallelHyperband
from phobbit.cli.commands import main

pytestmark = pytest.mark.keras
R, ETA = 3, 3


@pytest.fixture(scope="module")
def accuracy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ParallelHyperband]:
    repo = tmp_path_factory.mktemp("accuracy") / "repo"
    tuner = ParallelHyperband(
        tiny, HPARAMS, repo, dataset=digits(), n_jobs=2, verbose=0, objective="val_accuracy"
    )
    tuner.run(R=R, eta=ETA)
    return repo, tuner


def evaluated(model: Any) -> tuple[float, float]:
    """(val loss, val accuracy) of a model on the validation digits, as fit validated it."""
    (_, _), (x_val, y_val) = digits()
    loss, accuracy = model.evaluate(x_val, y_val, batch_size=VALIDATION_BATCH, verbose=0)
    return loss, accuracy


def test_best_model_evaluates_to_the_listed_val_accuracy_and_val_loss(accuracy_run) -> None:
    repo, tuner = accuracy_run
    table = tuner.results()
    assert list(table.columns[3:5]) == ["Val Loss", "Val Accuracy"]
    assert (table["Status"] == "ok").all(), table["Error"].tolist()
    best = table.iloc[0]
    assert best["Val Accuracy"] == table["Val Accuracy"].max()
    loss, accuracy = evaluated(tuner.best_model())
    assert accuracy == pytest.approx(best["Val Accuracy"], rel=1e-6)
    assert loss == pytest.approx(best["Val Loss"], rel=1e-6)
    assert tuner.best_hparams(1) == [best["Hparams"]]


def test_export_writes_a_keras_file_that_evaluates_to_the_listed_objective(
    accuracy_run, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import keras

    repo, tuner = accuracy_run
    table = tuner.results()
    for trial in [None, table.index[-1]]:
        path = tmp_path / f"{trial}.keras"
        assert main(["export", str(repo), str(path), *(["--trial", trial] if trial else [])]) == 0
        row = table.iloc[0] if trial is None else table.loc[trial]
        loss, accuracy = evaluated(keras.saving.load_model(path, safe_mode=True))
        assert accuracy == pytest.approx(row["Val Accuracy"], rel=1e-6)
        assert loss == pytest.approx(row["Val Loss"], rel=1e-6)
    assert main(["export", str(repo), str(tmp_path / "x.keras"), "--trial", "9-9"]) == 2
    assert "trial '9-9' is not in repository" in capsys.readouterr().err


def test_every_epoch_of_a_keras_run_is_recorded_with_its_metrics(accuracy_run) -> None:
    repo, tuner = accuracy_run
    curves = phobbit.open_repository(repo).curves()
    assert list(curves.columns[5:]) == ["loss", "val_loss", "accuracy", "val_accuracy"]
    assert len(curves) == 3 * 1 + 1 * 2 + 2 * 3  # the epochs the plan trains
    assert curves[["loss", "val_loss", "accuracy", "val_accuracy"]].notna().all().all()


def test_early_stopping_ends_a_configuration_and_its_row_says_so(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tuner = ParallelHyperband(
        tiny, HPARAMS, repo, dataset=digits, n_jobs=2, verbose=0, callbacks=early_stopping
    )
    table = tuner.run(R=R, eta=ETA)
    assert (table["Status"] == "ok").all(), table["Error"].tolist()
    rows = list(phobbit.open_repository(repo).repository.iter_results())
    # Bracket 0 trains epochs 1-3 in one segment: EarlyStopping stops it after epoch 2.
    stopped = [r for r in rows if r.s == 0]
    assert [(r.epochs, r.stopped_early) for r in stopped] == [(2, True), (2, True)]
    # Bracket 1's last rung trains epochs 2-3 in a new fit: EarlyStopping stops it at
    # epoch 3, the segment's last. That ends the configuration too (it is never promoted).
    last = [r for r in rows if r.s == 1 and r.rung == 1]
    assert last and all(r.stopped_early and r.epochs == 3 for r in last)
    assert all("its segment's last" in r.note for r in last)
    assert list(table.loc[["0-0", "0-1"], "Epochs"]) == [2, 2]


def test_a_batch_size_hyperparameter_reaches_fit(tmp_path: Path) -> None:
    import keras

    hparams = [*HPARAMS, Hyperparameter("batch_size", "choice", [(25, 100)])]
    repo = tmp_path / "repo"
    table = ParallelHyperband(tiny, hparams, repo, dataset=digits(), n_jobs=2, verbose=0).run(
        R=R, eta=ETA
    )
    assert (table["Status"] == "ok").all(), table["Error"].tolist()
    assert set(h["batch_size"] for h in table["Hparams"]) == {25, 100}
    for trial, row in table.iterrows():
        s, config_id = trial.split("-")
        model = keras.saving.load_model(repo / "models" / f"0-{s}-{config_id}.keras")
        steps = math.ceil(TRAIN / row["Hparams"]["batch_size"])
        assert int(model.optimizer.iterations) == row["Epochs"] * steps


@pytest.mark.parametrize(
    "form",
    ["arrays", "dataset function", "generators", "tf.data function", "PyDataset function"],
)
def test_every_input_form_trains_and_resumes(tmp_path: Path, form: str) -> None:
    data: dict[str, Any] = {
        "arrays": {"dataset": digits()},
        "dataset function": {"dataset": digits},
        "generators": {
            "generator_function": batches,
            "train_gen_args": ("train", 30),
            "valid_gen_args": ("validation", 50),
            "steps_per_epoch": 10,
            "validation_steps": 2,
        },
        "tf.data function": {"dataset": tf_datasets},
        "PyDataset function": {"dataset": py_datasets},
    }[form]
    repo = tmp_path / "repo"
    table = ParallelHyperband(tiny, HPARAMS, repo, n_jobs=1, verbose=0, **data).run(R=R, eta=ETA)
    assert (table["Status"] == "ok").all(), table["Error"].tolist()
    assert table["Val Loss"].max() < math.log(10) + 0.5  # it learned something, or at least ran
    curves = phobbit.open_repository(repo).curves()
    # The promoted configuration went on from its checkpoint: epochs 2 and 3 of rung 1.
    promoted = curves[(curves["Run"] == 1) & (curves["Rung"] == 1)]
    assert list(promoted["Epoch"]) == [2, 3]


def test_a_model_of_two_inputs_trains_on_a_dict_of_arrays(tmp_path: Path) -> None:
    table = ParallelHyperband(
        two_inputs, HPARAMS, tmp_path / "repo", dataset=split_inputs(), n_jobs=1, verbose=0
    ).run(R=R, eta=ETA)
    assert (table["Status"] == "ok").all(), table["Error"].tolist()


def halving_on_every_plateau(hparams: dict[str, Any]) -> list[Any]:
    """ReduceLROnPlateau that halves the learning rate at each epoch after a segment's first."""
    import keras

    return [keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=0, min_delta=10.0)]


def test_a_learning_rate_reduce_lr_on_plateau_set_survives_continuation(tmp_path: Path) -> None:
    import keras

    from phobbit.keras_adapter.trainable import KerasTrainable

    trainable = KerasTrainable(tiny, load_dataset=digits, callbacks=halving_on_every_plateau)
    hparams = {"learning_rate": 0.01, "activation": "relu"}

    def learning_rate(stem: Path) -> float:
        model = keras.saving.load_model(f"{stem}.keras", safe_mode=True)
        return float(model.optimizer.learning_rate)

    trainable.train(hparams, str(tmp_path / "rungs"), 0, 2)
    assert learning_rate(tmp_path / "rungs") == pytest.approx(0.005)  # halved at epoch 2
    trainable.train(hparams, str(tmp_path / "rungs"), 2, 4)
    # Epoch 2's halving went on with the optimizer; the plateau counter began afresh, so
    # epoch 3 (the segment's first) halved nothing, and epoch 4 halved it again.
    assert learning_rate(tmp_path / "rungs") == pytest.approx(0.0025)
    trainable.train(hparams, str(tmp_path / "whole"), 0, 4)
    assert learning_rate(tmp_path / "whole") == pytest.approx(0.00125)  # one fit: 3 halvings
