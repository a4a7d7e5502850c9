"""Keras Tuner's documented examples, on scikit-learn's digits, run against the real
``keras_tuner`` and against ``phobbit.keras_tuner`` with only the import changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import phobbit.keras_tuner as kt
from phobbit.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

# Keras Tuner's getting-started build_model (hp.Int, hp.Choice, hp.Float(sampling="log"),
# a conditional layer count) and a HyperModel whose fit tunes the batch size.
SCRIPT = """
import sys
import numpy as np
import keras
from sklearn.datasets import load_digits
import {module} as kt

x, y = load_digits(return_X_y=True)
x = (x / 16).astype("float32")


def build_model(hp):
    model = keras.Sequential([keras.Input((64,))])
    for i in range(hp.Int("num_layers", 1, 3)):
        model.add(
            keras.layers.Dense(
                units=hp.Int(f"units_{{i}}", min_value=32, max_value=128, step=32),
                activation=hp.Choice("activation", ["relu", "tanh"]),
            )
        )
    if hp.Boolean("dropout"):
        model.add(keras.layers.Dropout(rate=0.25))
    model.add(keras.layers.Dense(10, activation="softmax"))
    learning_rate = hp.Float("lr", min_value=1e-4, max_value=1e-2, sampling="log")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class MyHyperModel(kt.HyperModel):
    def build(self, hp):
        return build_model(hp)

    def fit(self, hp, model, *args, **kwargs):
        return model.fit(*args, batch_size=hp.Choice("batch_size", [16, 32]), **kwargs)


hypermodel = build_model if sys.argv[1] == "function" else MyHyperModel()
tuner = kt.Hyperband(
    hypermodel,
    objective="val_accuracy",
    max_epochs=3,
    factor=3,
    seed=1,
    directory=sys.argv[2],
    project_name="digits",
    {extra}
)
tuner.search_space_summary()
tuner.search(x, y, epochs=3, validation_split=0.2)
tuner.results_summary(2)
best_hp = tuner.get_best_hyperparameters(1)[0]
model = tuner.get_best_models(1)[0]
n = len(x) - int(np.floor(len(x) * 0.8))
print("BEST", best_hp.values, best_hp.get("lr"))
print("SCORE", model.evaluate(x[-n:], y[-n:], verbose=0, return_dict=True)["accuracy"])
"""


def _run(tmp_path: Path, module: str, kind: str, extra: str = "") -> str:
    script = tmp_path / f"{module.replace('.', '_')}_{kind}.py"
    script.write_text(SCRIPT.format(module=module, extra=extra))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "-1"}
    done = subprocess.run(
        [sys.executable, str(script), kind, str(tmp_path / module)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("kind", ["function", "hypermodel"])
def test_a_keras_tuner_script_runs_on_phobbit_with_only_its_import_changed(
    tmp_path: Path, kind: str
) -> None:
    pytest.importorskip("keras_tuner")
    original = _run(tmp_path, "keras_tuner", kind)
    assert "BEST" in original and "SCORE" in original
    ported = _run(tmp_path, "phobbit.keras_tuner", kind, extra="n_jobs=2,")
    assert "BEST" in ported and "Results summary" in ported
    assert "units_2 (Int)" in ported  # the conditional layer count's last layer was found
    if kind == "hypermodel":
        # Declared in fit: discovered by search (summary() before it shows build's only).
        assert "'batch_size'" in ported.split("BEST")[1]
    repo = tmp_path / "phobbit.keras_tuner" / "digits"
    from phobbit.storage.view import open_repository

    view = open_repository(repo)
    table = view.results()
    assert len(table) == 5  # R=3, eta=3: brackets of 3 and 2 configurations
    status = view.status()
    assert status.epochs_done == status.epochs_total
    best = view.best(1)[0]
    # The best model evaluated on x[-n:] (the validation split) scores what the table lists.
    score = float(ported.split("SCORE")[1].split()[0])
    assert score == pytest.approx(best.objective, abs=1e-6)
    # Resume: the same script again trains nothing more.
    rows = (repo / "results.csv").read_text().count("\n")
    again = _run(tmp_path, "phobbit.keras_tuner", kind, extra="n_jobs=2,")
    assert "BEST" in again
    assert (repo / "results.csv").read_text().count("\n") == rows
    # The command line reads the repository: best --json and export.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "-1"}
    listed = subprocess.run(
        [sys.executable, "-m", "phobbit", "best", str(repo), "--json", "--top", "1"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert json.loads(listed.stdout)[0]["hparams"] == best.hparams
    out = tmp_path / "best.keras"
    subprocess.run(
        [sys.executable, "-m", "phobbit", "export", str(repo), str(out)], env=env, check=True
    )
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    "argument, value, instead",
    [
        ("executions_per_trial", 2, "trains each configuration once"),
        ("distribution_strategy", object(), "gpus_per_trial"),
        ("tuner_id", "chief", "gpus= or n_jobs="),
        ("max_model_size", 10**6, "narrow the ranges"),
        ("optimizer", "adam", "compile the model in build"),
        ("hyperparameters", object(), "declare every hyperparameter"),
        ("max_consecutive_failed_trials", 5, "goes on after failed trials"),
    ],
)
def test_an_unsupported_keras_tuner_argument_is_refused_naming_what_to_use(
    argument: str, value: object, instead: str
) -> None:
    with pytest.raises(InputError, match=instead) as info:
        kt.Hyperband(lambda hp: None, max_epochs=3, **{argument: value})
    assert "\n" not in str(info.value) and argument in str(info.value)


def test_search_refuses_missing_validation_and_a_fit_argument_phobbit_sets(tmp_path: Path) -> None:
    import numpy as np

    tuner = kt.Hyperband(lambda hp: None, max_epochs=3, directory=tmp_path)
    x, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(InputError, match="validation_split=0.2"):
        tuner.search(x, y)
    with pytest.raises(InputError, match="not both"):
        tuner.search(x, y, validation_split=0.2, validation_data=(x, y))
    with pytest.raises(InputError, match="validates every epoch"):
        tuner.search(x, y, validation_split=0.2, validation_freq=2)
    assert not any(tmp_path.iterdir())  # nothing written


def test_validation_split_takes_the_last_rows_as_keras_fit_does() -> None:
    import numpy as np

    from phobbit.keras_tuner import _split

    x, y = np.arange(10).reshape(10, 1), np.arange(10)
    (xt, yt), (xv, yv) = _split(x, y, 0.25)  # floor(10 * 0.75) = 7 rows train
    assert yt.tolist() == list(range(7)) and yv.tolist() == [7, 8, 9]
    (xt, _), (xv, _) = _split({"a": x}, y, 0.5)
    assert xv["a"].ravel().tolist() == [5, 6, 7, 8, 9]


def test_the_pool_is_shut_down_before_its_workers_log_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The log was copied (and its temporary folder removed) while the workers still ran,
    # so what they wrote as they ended was lost.
    import contextlib

    from phobbit.execution import worker_log

    events: list[str] = []

    class Pool:
        worker_log = True

        def make_executor(self, environment: dict) -> Any:
            return Executor()

    class Executor:
        slots = [-1]
        stderr_path: str | None = None

        def start(self, preload: Any) -> None:
            Path(self.stderr_path).write_text("written as the worker started\n")

        def shutdown(self, kill: bool = False) -> None:
            events.append("shutdown")
            with open(self.stderr_path, "a") as log:
                log.write("written as the worker ended\n")

    def keep(temporary: Path, *args: Any) -> bool:
        events.append("log copied: " + Path(temporary).read_text().replace("\n", " | "))
        return False

    monkeypatch.setattr(worker_log, "keep", keep)
    tuner = kt.Hyperband(lambda hp: None, objective="val_loss", max_epochs=3, directory=tmp_path)
    with contextlib.ExitStack() as stack:
        tuner._start_pool(Pool(), None, stack)
    assert events == [
        "shutdown",
        "log copied: written as the worker started | written as the worker ended | ",
    ]
