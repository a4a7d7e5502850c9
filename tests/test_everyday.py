"""Everyday Keras options checked at the boundary, without TensorFlow: callbacks,
fit arguments, fit hyperparameters, objectives with other trainables, dataset forms,
model-file names, and the CLI's tables."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic import x_curve

from phobbit import Hyperparameter, InputError, ParallelHyperband, RepositoryError
from phobbit.cli.commands import main
from phobbit.cli.model_file import ModelFileRef, load_model_file
from phobbit.core.records import RunSettings
from phobbit.core.space import Space
from phobbit.keras_adapter.data import check_dataset
from phobbit.keras_adapter.trainable import fit_arguments
from phobbit.storage.repository import Repository
from phobbit.testing import SyntheticTrainable

SPACE = [
    Hyperparameter("x", "uniform", (0.0, 1.0)),
    Hyperparameter("batch_size", "choice", [(16, 32)]),
    Hyperparameter("shuffle", "choice", [(True,)]),
]
X, Y = np.zeros((10, 4), "float32"), np.zeros(10)
ARRAYS = ((X, Y), (X[:4], Y[:4]))


def model(hparams: dict[str, Any]) -> Any:
    raise AssertionError("never built: these tests stop before training")


class Callback:
    """Just enough of a Keras callback for the check: a set_model method."""

    def set_model(self, model: Any) -> None:
        pass


def tuner(repo: Path, **kwargs: Any) -> ParallelHyperband:
    kwargs.setdefault("dataset", ARRAYS)
    return ParallelHyperband(model, SPACE, repo, verbose=0, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fit_kwargs": {"epochs": 3}}, "fit_kwargs may not set 'epochs'"),
        ({"fit_kwargs": {"callbacks": []}}, "it is set by callbacks="),
        ({"fit_kwargs": {"batch_size": 8}}, "batch_size hyperparameter"),
        ({"fit_kwargs": {"steps_per_epoch": 5}}, "fit_kwargs may not set 'steps_per_epoch'"),
        ({"fit_kwargs": {"validation_freq": 2}}, "every epoch is validated"),
        ({"fit_kwargs": [("class_weight", {})]}, "fit_kwargs must be a dict"),
        ({"callbacks": "EarlyStopping"}, "callbacks must be a list of Keras callbacks"),
        ({"callbacks": [Callback(), 3]}, "callbacks holds 3, which is no Keras callback"),
        ({"fit_hparams": ["lr"]}, "fit_hparams names 'lr', which is no hyperparameter"),
        ({"objective": "val_thing"}, "cannot tell whether objective 'val_thing'"),
    ],
)
def test_bad_everyday_options_stop_before_anything_is_written(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message) as refused:
        tuner(tmp_path / "repo", **kwargs)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "repo").exists()


def test_good_everyday_options_reach_the_keras_trainable(tmp_path: Path) -> None:
    def make(hparams: dict[str, Any]) -> list[Any]:
        return [Callback()]

    built = tuner(
        tmp_path / "repo",
        objective="val_accuracy",
        callbacks=make,
        fit_kwargs={"sample_weight": None},
        fit_hparams=["shuffle"],
    )
    kwargs = built._keras_kwargs
    assert kwargs["objective"].name == "val_accuracy" and kwargs["objective"].maximize
    assert kwargs["callbacks"] is make and kwargs["fit_kwargs"] == {"sample_weight": None}
    assert kwargs["fit_hparams"] == ("shuffle",)
    with pytest.raises(InputError, match="fit_hparams may not name 'x': it is set by the data"):
        tuner(tmp_path / "repo", fit_hparams=["x"])


def test_fit_arguments_take_batch_size_and_the_named_hparams() -> None:
    hparams = {"batch_size": np.int64(64), "x": 0.5, "momentum": 0.9}
    assert fit_arguments(hparams) == {"batch_size": 64}
    assert fit_arguments(hparams, ["momentum"]) == {"batch_size": 64, "momentum": 0.9}
    assert fit_arguments({"batch_size": 32.0}) == {"batch_size": 32}
    for bad in (0, 12.5, "32", True):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            fit_arguments({"batch_size": bad})


def test_a_trainable_that_cannot_take_the_objective_is_refused(tmp_path: Path) -> None:
    class Plain:
        def train(self, hparams: dict, checkpoint: str, initial: int, epochs: int) -> list:
            return []

    with pytest.raises(InputError, match="has no objective field"):
        ParallelHyperband(None, SPACE, tmp_path / "r", trainable=Plain(), objective="val_acc")
    assert ParallelHyperband(None, SPACE, tmp_path / "r", trainable=Plain()).objective.is_val_loss
    synthetic = ParallelHyperband(
        None, SPACE, tmp_path / "r", trainable=SyntheticTrainable(), objective="val_acc"
    )
    assert synthetic.trainable.objective.name == "val_acc"
    with pytest.raises(InputError, match="a trainable trains itself"):
        ParallelHyperband(None, SPACE, tmp_path / "r", trainable=Plain(), callbacks=[])


class FakeTfDataset:
    """Looks like a tf.data.Dataset to the dataset check (it has an element_spec)."""

    element_spec = None

    def __iter__(self) -> Any:
        raise AssertionError("a dataset must never be iterated by the check")


def test_dataset_forms_are_told_apart_without_tensorflow(tmp_path: Path) -> None:
    assert check_dataset(ARRAYS) == "arrays"
    assert check_dataset((FakeTfDataset(), FakeTfDataset())) == "batches"
    assert check_dataset((FakeTfDataset(), (X, Y))) == "batches"
    two = ({"a": X, "b": X}, Y), ({"a": X[:4], "b": X[:4]}, Y[:4])
    assert check_dataset(two) == "arrays"
    assert check_dataset((([X, X], Y), ([X[:4], X[:4]], Y[:4]))) == "arrays"  # a list too
    with pytest.raises(InputError, match="got one FakeTfDataset"):
        check_dataset(FakeTfDataset())
    with pytest.raises(InputError, match="arrays for training and batches for validation"):
        check_dataset(((X, Y), FakeTfDataset()))
    with pytest.raises(InputError, match=r"training inputs arrays of different lengths"):
        check_dataset((({"a": X, "b": X[:5]}, Y), ({"a": X, "b": X}, Y)))
    with pytest.raises(InputError, match="2 training inputs arrays but 1 validation"):
        check_dataset((({"a": X, "b": X}, Y), ({"a": X}, Y)))
    with pytest.raises(InputError, match="must come from a function"):
        tuner(tmp_path / "repo", dataset=(FakeTfDataset(), FakeTfDataset()))
    assert not (tmp_path / "repo").exists()


def test_model_files_give_objective_callbacks_and_fit_options(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(
        textwrap.dedent(
            """
            from phobbit import Hyperparameter
            my_hparam_ranges = [Hyperparameter("x", "uniform", (0, 1))]
            objective = "val_accuracy"
            fit_kwargs = {"class_weight": {0: 2.0}}
            fit_hparams = ["x"]
            def my_model(hparams): ...
            def load_dataset(): ...
            def callbacks(hparams): return []
            """
        )
    )
    found = load_model_file(path)
    assert found.options["objective"] == "val_accuracy"
    assert found.options["callbacks"] == ModelFileRef(str(path.resolve()), "callbacks")
    assert found.options["fit_kwargs"] == {"class_weight": {0: 2.0}}
    assert found.options["fit_hparams"] == ["x"]


def test_run_json_keeps_an_objective_and_an_old_one_reads_as_val_loss(tmp_path: Path) -> None:
    space = Space(SPACE)
    default = RunSettings.of(space, 9, 3, 0)
    assert "objective" not in default.to_dict()  # what older versions wrote and read
    assert RunSettings.from_dict(default.to_dict()).goal.is_val_loss
    from phobbit.core.objective import Objective

    accuracy = RunSettings.of(space, 9, 3, 0, objective=Objective("val_accuracy", "max"))
    assert RunSettings.from_dict(json.loads(json.dumps(accuracy.to_dict()))) == accuracy
    broken = {**accuracy.to_dict(), "direction": "up"}
    with pytest.raises(RepositoryError, match="direction must be min or max"):
        RunSettings.from_dict(broken)
    repository = Repository(tmp_path / "repo")
    repository.create(accuracy)
    with pytest.raises(RepositoryError, match="objective='val_accuracy' there, 'val_loss' here"):
        repository.check_settings(default)


def accuracy(hparams: dict[str, Any], epoch: int) -> dict[str, float]:
    return {"val_accuracy": round(1.0 - abs(hparams["x"] - 0.7) - 0.5 / epoch, 3)}


def test_the_cli_shows_the_objective_beside_the_val_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    repo = tmp_path / "repo"
    trainable = SyntheticTrainable(curve=x_curve, metrics=accuracy)
    ParallelHyperband(
        None, SPACE, repo, trainable=trainable, n_jobs=1, verbose=0, objective="val_accuracy"
    ).run(R=3, eta=3)
    capsys.readouterr()
    assert main(["best", str(repo), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "Val Loss" in out and "Val Accuracy" in out
    assert main(["status", str(repo)]) == 0
    assert "Best Val Accuracy " in capsys.readouterr().out
    assert main(["best", str(repo), "--json", "--top", "1"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert record["objective_name"] == "val_accuracy" and record["checkpoint"].endswith(".json")
    assert main(["export", str(repo), str(tmp_path / "m.keras")]) == 2
    assert "is not a Keras model" in capsys.readouterr().err


def test_train_takes_an_objective_and_a_resume_with_another_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loading a model file puts its folder on sys.path, as `python model.py` would; there
    # its synthetic.py would shadow tests/synthetic.py in the workers of later tests.
    monkeypatch.setattr(sys, "path", list(sys.path))
    synthetic = Path(__file__).parent / "models" / "synthetic.py"
    repo = tmp_path / "repo"
    train = ["train", str(synthetic), "--jobs", "1", "--R", "3", "--repo", str(repo)]
    assert main([*train, "--progress", "plain", "--objective", "loss"]) == 0
    out = capsys.readouterr().out
    assert "best so far: loss " in out and "Loss" in out
    assert main([*train, "--progress", "plain"]) == 2
    error = capsys.readouterr().err
    assert "objective='loss' there, 'val_loss' here" in error and error.count("\n") == 1
    other = tmp_path / "other"
    unknown = ["train", str(synthetic), "--jobs", "1", "--R", "3", "--repo", str(other)]
    assert main([*unknown, "--progress", "plain", "--objective", "val_auc"]) == 2
    error = capsys.readouterr().err
    assert "objective 'val_auc' is not a metric this model logs (it logs loss, val_loss" in error
    assert not other.exists()
