"""A model file for ``phobbit train`` may define Keras Tuner's ``build_model(hp)``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from phobbit.storage.view import open_repository

ROOT = Path(__file__).resolve().parents[1]

MODEL_FILE = """
import keras
from sklearn.datasets import load_digits

x, y = load_digits(return_X_y=True)
x = (x / 16).astype("float32")
dataset = ((x[:1400], y[:1400]), (x[1400:], y[1400:]))


def build_model(hp):
    model = keras.Sequential([keras.Input((64,))])
    for i in range(hp.Int("num_layers", 1, 2)):
        model.add(keras.layers.Dense(hp.Int(f"units_{i}", 16, 64, step=16), activation="relu"))
    model.add(keras.layers.Dense(10, activation="softmax"))
    model.compile(
        optimizer=keras.optimizers.Adam(hp.Float("lr", 1e-4, 1e-2, sampling="log")),
        loss="sparse_categorical_crossentropy",
    )
    return model
"""


def test_phobbit_train_tunes_a_model_files_build_model(tmp_path: Path) -> None:
    model_file = tmp_path / "kt_model.py"
    model_file.write_text(MODEL_FILE)
    repo = tmp_path / "repo"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "-1"}
    command = [sys.executable, "-m", "phobbit", "train", str(model_file)]
    command += ["--jobs", "2", "--R", "3", "--eta", "3", "--repo", str(repo)]
    command += ["--progress", "plain"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = open_repository(repo).results()
    assert len(table) == 5
    names = set().union(*(set(h) for h in table["Hparams"]))
    assert {"num_layers", "units_0", "units_1", "lr"} == names
