"""A model file for ``phobbit train`` may define Keras Tuner's ``build_model(hp)``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


# The same model file, noting in `WHERE` (a file every process sees) which process ran its
# top level and how many child processes that one had by then, and which ran build_model.
NOTING = """
import os
import psutil

with open(os.environ["WHERE"], "a") as out:
    out.write(f"loaded {os.getpid()} {len(psutil.Process().children())}\\n")
""" + MODEL_FILE.replace(
    "def build_model(hp):\n",
    'def build_model(hp):\n    with open(os.environ["WHERE"], "a") as out:\n'
    '        out.write(f"built {os.getpid()}\\n")\n',
)


@pytest.fixture(scope="module")
def noted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[list[str]], set[int]]:
    """One `phobbit train` of the noting file: the driver's pid, the notes, the pids of the
    processes that trained its segments."""
    folder = tmp_path_factory.mktemp("noted")
    model_file = folder / "kt_model.py"
    model_file.write_text(NOTING)
    where, repo = folder / "where.txt", folder / "repo"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "-1"}
    env["WHERE"] = str(where)
    command = [sys.executable, "-m", "phobbit", "train", str(model_file)]
    command += ["--jobs", "2", "--R", "3", "--eta", "3", "--repo", str(repo)]
    command += ["--progress", "plain"]
    driver = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _, err = driver.communicate(timeout=900)
    assert driver.returncode == 0, err[-3000:]
    notes = [line.split() for line in where.read_text().splitlines()]
    trained = {row.pid for row in open_repository(repo).repository.iter_results()}
    return driver.pid, notes, trained


def test_phobbit_train_starts_its_workers_before_it_loads_the_model_file(
    noted_run: tuple[int, list[list[str]], set[int]],
) -> None:
    # The file imports Keras at its top level: the workers' own import of Keras runs while
    # the driver loads it, not after.
    driver, notes, _ = noted_run
    children = [int(n[2]) for n in notes if n[0] == "loaded" and int(n[1]) == driver]
    assert children == [children[0]] and children[0] >= 2, notes


def test_phobbit_train_discovers_a_build_models_space_in_a_worker_that_trains(
    noted_run: tuple[int, list[list[str]], set[int]],
) -> None:
    # Not in a process of its own, which would import Keras once more before the pool.
    driver, notes, trained = noted_run
    builders = {int(n[1]) for n in notes if n[0] == "built"}
    assert driver not in builders
    assert builders <= trained, (builders, trained)
