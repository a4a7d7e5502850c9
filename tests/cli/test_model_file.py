"""Model files: the names found, the errors, and references that work in other processes."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from phobbit.cli.model_file import (
    ModelFileRef,
    ModelFileTrainable,
    load_model_file,
    load_module,
    module_name,
    trains_keras,
)
from phobbit.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
HPARAMS = "from phobbit import Hyperparameter\nH = [Hyperparameter('x', 'uniform', (0, 1))]\n"


def write(folder: Path, body: str, name: str = "model.py") -> Path:
    path = folder / name
    path.write_text(HPARAMS + textwrap.dedent(body))
    return path


def test_hobbit_tutorial_names_are_found(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        import numpy as np
        my_hparam_ranges = H
        def my_model(hparams):
            return hparams
        my_dataset = ((np.zeros((4, 2)), np.zeros(4)), (np.zeros((2, 2)), np.zeros(2)))
    """,
    )
    model = load_model_file(path)
    assert model.model_function == ModelFileRef(str(path.resolve()), "my_model")
    assert [hp.name for hp in model.hparam_ranges] == ["x"]
    (x, _), _ = model.data["dataset"]
    assert isinstance(x, np.ndarray) and x.shape == (4, 2)
    assert model.trainable is None


def test_plain_names_and_load_dataset_become_references(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        hparam_ranges = H
        def model_function(hparams):
            return hparams
        def load_dataset():
            return "loaded in the worker"
    """,
    )
    model = load_model_file(path)
    assert model.model_function == ModelFileRef(str(path.resolve()), "model_function")
    assert model.data == {"dataset": ModelFileRef(str(path.resolve()), "load_dataset")}
    assert model.data["dataset"]() == "loaded in the worker"


def test_names_given_on_the_command_line_win(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        my_hparam_ranges = []
        def my_model(hparams):
            return 1
        def build(hparams):
            return 2
        def data():
            return 3
    """,
    )
    model = load_model_file(path, model_fn="build", hparams="H", dataset="data")
    assert model.model_function.attr == "build"
    assert len(model.hparam_ranges) == 1
    assert model.data["dataset"].attr == "data"


def test_generator_settings_are_passed_on(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        my_hparam_ranges = H
        def my_model(hparams):
            return hparams
        def generator_function(folder, batch):
            return iter(())
        train_gen_args = ("train", 32)
        valid_gen_args = ("valid", 32)
        steps_per_epoch = 10
        validation_steps = 2
    """,
    )
    data = load_model_file(path).data
    assert data["generator_function"].attr == "generator_function"
    assert data["train_gen_args"] == ("train", 32)
    assert (data["steps_per_epoch"], data["validation_steps"]) == (10, 2)


@pytest.mark.parametrize(
    ("body", "options", "message"),
    [
        (
            "def my_model(h): pass\nmy_dataset = 1\n",
            {},
            "looked for my_hparam_ranges, hparam_ranges",
        ),
        ("hparam_ranges = H\n", {}, "no model function: looked for my_model, model_function"),
        ("hparam_ranges = H\ndef my_model(h): pass\n", {}, "looked for my_dataset, dataset"),
        ("hparam_ranges = H\nmy_model = 3\n", {}, "my_model in model file"),
        ("hparam_ranges = H\n", {"model_fn": "build"}, "defines no 'build' (given by --model-fn)"),
        ("hparam_ranges = H\ntrainable = 1\n", {}, "trainable in model file"),
        ("hparam_ranges = H\n\n1 / 0\n", {}, "failed to load (line 5): ZeroDivisionError"),
        ("hparam_ranges = H\ndef f(:\n", {}, "failed to load (line 4): SyntaxError"),
    ],
)
def test_a_model_file_without_what_is_needed_is_bad_input(
    tmp_path: Path, body: str, options: dict, message: str
) -> None:
    path = write(tmp_path, body)
    with pytest.raises(InputError) as error:
        load_model_file(path, **options)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model file .*nothing.py does not exist"):
        load_model_file(tmp_path / "nothing.py")


def test_the_module_is_loaded_once_per_process(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, "print('loading')\ncount = [0]\n", name="once.py")
    assert load_module(path, quiet=True) is load_module(path)
    assert capsys.readouterr().out == ""  # quiet: the driver already showed it
    assert module_name(path) == module_name(tmp_path / "." / "once.py")
    assert module_name(path) != module_name(tmp_path / "other" / "once.py")


def _call_in_fresh_process(ref: ModelFileRef, *args: object) -> object:
    context = multiprocessing.get_context("spawn")  # nothing inherited but sys.path
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(ref, *args).result(timeout=300)


def test_reference_pickles_by_name_and_works_in_another_process(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        import dataclasses
        @dataclasses.dataclass
        class Scale:
            factor: float
        def my_model(hparams):
            return Scale(2.0).factor * hparams["x"]
    """,
    )
    ref = ModelFileRef(str(path.resolve()), "my_model")
    blob = pickle.dumps(ref)
    assert b"Scale" not in blob and len(blob) < 300  # the path and the name, not the code
    assert _call_in_fresh_process(ref, {"x": 0.25}) == 0.5


def test_model_file_trainable_trains_through_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        class Trainable:
            def train(self, hparams, checkpoint, initial_epoch, epochs):
                return [hparams["x"]] * (epochs - initial_epoch)
        trainable = Trainable()
        hparam_ranges = H
    """,
    )
    model = load_model_file(path)
    assert model.model_function is None and model.data == {}
    assert isinstance(model.trainable, ModelFileTrainable)
    restored = pickle.loads(pickle.dumps(model.trainable))
    assert restored.train({"x": 0.5}, str(tmp_path / "c"), 1, 3) == [0.5, 0.5]


def test_loading_the_example_keeps_tensorflow_out_of_the_driver() -> None:
    script = (
        "import sys\n"
        "from phobbit.api import ParallelHyperband\n"
        "from phobbit.cli.model_file import load_model_file\n"
        "m = load_model_file('examples/mnist_mlp.py')\n"
        "ParallelHyperband(m.model_function, m.hparam_ranges, 'unused', n_jobs=1, **m.data)\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "HOME": "/nonexistent"},
    )
    assert result.returncode == 0, result.stderr
    assert "mnist_mlp: using scikit-learn's digits" in result.stdout
    assert result.stdout.strip().endswith("False False")


@pytest.mark.parametrize("cached", [False, True], ids=["digits", "mnist-in-cache"])
def test_example_uses_mnist_only_from_the_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached: bool
) -> None:
    home = tmp_path / "keras"
    if cached:
        (home / "datasets").mkdir(parents=True)
        images = np.zeros((6, 28, 28), dtype="uint8")
        labels = np.arange(6) % 10
        np.savez(
            home / "datasets" / "mnist.npz",
            x_train=images,
            y_train=labels,
            x_test=images[:2],
            y_test=labels[:2],
        )
    monkeypatch.setenv("KERAS_HOME", str(home))
    example = tmp_path / "mnist_mlp.py"  # a copy: its own module, loaded with this KERAS_HOME
    example.write_text((ROOT / "examples" / "mnist_mlp.py").read_text())
    module = load_module(example, quiet=True)
    (x, y), (x_val, y_val) = module.load_dataset()
    assert module.N_FEATURES == x.shape[1] == x_val.shape[1] == (784 if cached else 64)
    assert len(x) == len(y) and len(x_val) == len(y_val)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert module.SOURCE.startswith("Keras' MNIST") == cached


@pytest.mark.parametrize(
    ("body", "model_fn", "keras"),
    [
        ("def my_model(hparams): ...", None, True),
        ("import keras\ndef build_model(hp): ...", None, True),
        ("class hypermodel: ...", None, True),
        ("model_function = lambda hparams: None", None, True),
        ("from mylib import my_model", None, True),
        ("def mine(hparams): ...", "mine", True),
        ("def my_model(hparams): ...", "mine", False),  # --model-fn names another
        ("class T:\n    def train(self, *a): ...\ntrainable = T()", None, False),
        ("globals()['my_model'] = print", None, False),  # made at run time: cannot tell
        ("def my_model(hparams):\n  return (", None, False),  # a syntax error: load says so
    ],
    ids=[
        "model-function",
        "build-model",
        "hypermodel-class",
        "assigned",
        "imported",
        "model-fn-named",
        "model-fn-other",
        "trainable",
        "run-time",
        "syntax-error",
    ],
)
def test_trains_keras_reads_the_top_level_names_without_running_the_file(
    tmp_path: Path, body: str, model_fn: str | None, keras: bool
) -> None:
    path = tmp_path / "model.py"
    path.write_text("raise SystemExit('the file ran')\n" + body + "\n")  # never run
    assert trains_keras(path, model_fn) is keras
    assert trains_keras(tmp_path / "missing.py") is False
