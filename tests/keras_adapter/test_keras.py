"""Real Keras models: the seed tutorial's MLP on scikit-learn's digits, on two workers."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from keras_models import DROPOUT, HPARAMS, digits, mlp, not_a_model, small_digits

from phobbit import ParallelHyperband, brackets

pytestmark = pytest.mark.keras
BATCH = 64
TESTS = Path(__file__).resolve().parents[1]


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

    from phobbit.core.records import Segment
    from phobbit.keras_adapter.data import staged_dataset
    from phobbit.keras_adapter.trainable import KerasTrainable

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
    from phobbit.keras_adapter.trainable import KerasTrainable

    trainable = KerasTrainable(mlp, load_dataset=digits, batch_size=BATCH)
    hparams = {"dropout1": 0.3, "dropout2": 0.3, "activation": "relu", "learning_rate": 0.01}
    first = trainable.train(hparams, str(tmp_path / "a"), 0, 2)
    trainable.train({**hparams, "dropout1": 0.1}, str(tmp_path / "other"), 0, 1)
    again = trainable.train(hparams, str(tmp_path / "b"), 0, 2)
    assert again == first


class Killed(Exception):
    """What a callback raises to stop training mid-segment, as a kill would."""


def kill_after(epoch: int):
    """A callback that stops training once epoch ``epoch`` (from 1) has ended and been saved.

    It raises as the next epoch begins: phobbit saves an epoch after the user's callbacks
    have seen its end.
    """
    import keras

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, index: int, logs=None) -> None:
            if index == epoch:
                raise Killed

    return Kill()


def held_epoch(path: Path) -> int:
    """The epoch a .keras checkpoint holds, read from its progress member."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("phobbit.json"))["epoch"]


KILLED_IN_A_PROCESS = """
import os, sys
import keras
from keras_models import DROPOUT, mlp, small_digits
import phobbit.keras_adapter.trainable as kt

kt.SAVE_BUDGET = float("inf")

class Exit(keras.callbacks.Callback):
    def on_epoch_begin(self, index, logs=None):
        if index == 2:  # epoch 2 has ended and been saved
            os._exit(0)  # no cleanup at all, as SIGKILL

kt.KerasTrainable(
    mlp, load_dataset=small_digits, batch_size=32, fit_kwargs={"callbacks": [Exit()]}
).train(DROPOUT, sys.argv[1], 0, 4)
"""


def test_a_segment_resumed_after_any_epoch_trains_bit_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropout and shuffled batches: a resumed segment must draw what an uninterrupted one does."""
    from phobbit.keras_adapter.trainable import KerasTrainable

    monkeypatch.setattr(
        "phobbit.keras_adapter.trainable.SAVE_BUDGET", math.inf
    )  # save every epoch
    trainable = KerasTrainable(mlp, load_dataset=small_digits, batch_size=32)
    whole = trainable.train(DROPOUT, str(tmp_path / "whole"), 0, 4)
    for epoch in (1, 2, 3):
        stem = tmp_path / f"killed-after-{epoch}"
        killed = KerasTrainable(
            mlp,
            load_dataset=small_digits,
            batch_size=32,
            fit_kwargs={"callbacks": [kill_after(epoch)]},
        )
        with pytest.raises(Killed):
            killed.train(DROPOUT, str(stem), 0, 4)
        assert held_epoch(Path(f"{stem}.keras")) == epoch
        assert trainable.train(DROPOUT, str(stem), 0, 4) == whole, f"killed after {epoch}"
    # A promoted configuration goes on in a new segment: as if it were one fit.
    rungs = str(tmp_path / "rungs")
    assert trainable.train(DROPOUT, rungs, 0, 2) + trainable.train(DROPOUT, rungs, 2, 4) == whole
    # Killed in a process of its own, which exits without a word, and resumed here.
    process = str(tmp_path / "process")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    run = subprocess.run(
        [sys.executable, "-c", KILLED_IN_A_PROCESS, process], env=env, capture_output=True
    )
    assert run.returncode == 0 and held_epoch(Path(f"{process}.keras")) == 2, run.stderr[-2000:]
    assert trainable.train(DROPOUT, process, 0, 4) == whole


def spoil(path: Path, how: str) -> None:
    """What a crash, a full disk or a stray process can leave of a .keras checkpoint."""
    if how == "deleted":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random bytes":
        path.write_bytes(os.urandom(4096))
    else:  # its progress intact, its weights not
        with zipfile.ZipFile(path) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, os.urandom(len(data)) if name.endswith(".h5") else data)


def test_a_bad_keras_checkpoint_is_retrained_to_the_losses_of_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    from phobbit.keras_adapter.trainable import KerasTrainable

    trainable = KerasTrainable(mlp, load_dataset=small_digits, batch_size=32)
    whole = trainable.train(DROPOUT, str(tmp_path / "whole"), 0, 4)
    for how in ("deleted", "empty", "random bytes", "bad weights"):
        stem = tmp_path / how.replace(" ", "-")
        trainable.train(DROPOUT, str(stem), 0, 2)
        spoil(Path(f"{stem}.keras"), how)
        again = trainable.train(DROPOUT, str(stem), 2, 4)
        assert again == whole[2:], how
        what = "is missing" if how == "deleted" else "is unreadable ("
        assert again.note.startswith(f"checkpoint {stem.name}.keras {what}"), again.note
        assert again.note.endswith("retrained from scratch")
        assert held_epoch(Path(f"{stem}.keras")) == 4


def test_the_checkpoint_best_lists_evaluates_to_the_listed_val_loss(
    tutorial_run, capsys: pytest.CaptureFixture
) -> None:
    import keras

    from phobbit.cli.commands import main

    repo, results = tutorial_run
    assert main(["best", str(repo), "--top", str(len(results)), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    (_, _), (x_val, y_val) = digits()
    listed = [r for r in records if r["checkpoint"] is not None]
    # The 10 best keep their best epoch; past them, only files whose last epoch is the best.
    assert [r["trial"] for r in records[:10]] == [r["trial"] for r in listed[:10]]
    assert any(r["checkpoint"].endswith(".best.keras") for r in listed), "no best-epoch file"
    for record in listed:
        model = keras.saving.load_model(repo / record["checkpoint"], safe_mode=True)
        loss = model.evaluate(x_val, y_val, batch_size=BATCH, verbose=0)[0]
        assert loss == pytest.approx(record["val_loss"], rel=1e-6), record
    assert len(list((repo / "models").glob("*.best.keras"))) <= 10
    assert main(["best", str(repo), "--top", "1"]) == 0
    assert f"Best model: {repo / records[0]['checkpoint']}" in capsys.readouterr().out


def test_a_fresh_or_restored_model_traces_its_train_step_once_and_trains_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keras traces the train step again when its first trace created the optimizer's and
    the metrics' variables; phobbit creates them before fit, changing no number."""
    from phobbit.keras_adapter import trainable as keras_trainable
    from phobbit.keras_adapter.trainable import KerasTrainable

    traces: list[int] = []

    def counted(hparams: dict) -> object:
        model = mlp(hparams)
        step = model.train_step

        def train_step(data: object) -> object:
            traces.append(1)  # Python runs here only while TensorFlow traces the step
            return step(data)

        model.train_step = train_step
        return model

    # Without models kept warm: the resumed segment restores its model from the checkpoint.
    trainable = KerasTrainable(counted, load_dataset=small_digits, batch_size=32, warm_bytes=0)
    fresh = trainable.train(DROPOUT, str(tmp_path / "built"), 0, 2)
    assert len(traces) == 1
    resumed = trainable.train(DROPOUT, str(tmp_path / "built"), 2, 3)
    assert len(traces) == 2
    # Kept warm, the model its worker holds is traced already: no trace at all.
    kept = dataclasses.replace(trainable, warm_bytes=1 << 30)
    assert kept.train(DROPOUT, str(tmp_path / "kept"), 0, 2) == fresh
    assert len(traces) == 3
    assert kept.train(DROPOUT, str(tmp_path / "kept"), 2, 3) == resumed
    assert len(traces) == 3
    monkeypatch.setattr(keras_trainable, "build_compiled_state", lambda model, spec: None)
    alone = str(tmp_path / "keras-alone")
    assert trainable.train(DROPOUT, alone, 0, 2) == fresh
    assert trainable.train(DROPOUT, alone, 2, 3) == resumed
