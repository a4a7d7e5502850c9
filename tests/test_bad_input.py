"""Bad input stops before any training, with a message naming the problem, and writes nothing.

Also the safety contract: nothing read from a repository is evaluated.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import mislabelled_dataset, no_model, space, tuner

from phobbit import Hyperparameter, InputError, ParallelHyperband, RepositoryError
from phobbit.core.records import RunSettings
from phobbit.core.space import Space
from phobbit.storage.repository import Repository

PACKAGE = Path(__file__).resolve().parent.parent / "phobbit"
ARRAYS = (([[0.0, 1.0]] * 4, [0] * 4), ([[1.0, 0.0]] * 2, [1] * 2))


def keras_tuner(repo: Path, **kwargs) -> ParallelHyperband:
    kwargs.setdefault("dataset", ARRAYS)
    return ParallelHyperband(lambda hp: None, space(), repo, verbose=0, **kwargs)


class Array:
    """Just enough of an array for the dataset check: a length and a shape."""

    def __init__(self, *shape: int) -> None:
        self.shape = shape

    def __len__(self) -> int:
        return self.shape[0]


# Each case: what to call, and what the message must say.
BEFORE_ANY_REPOSITORY: dict[str, tuple[Callable[[Path], object], str]] = {
    "unknown distribution": (
        lambda r: Hyperparameter("lr", "loguniform", (1e-4, 1e-1)),
        r"distribution 'loguniform' of hyperparameter 'lr' is unknown; use one of uniform",
    ),
    "lo equal to hi": (
        lambda r: Hyperparameter("x", "uniform", (1.0, 1.0)),
        r"uniform hyperparameter 'x' needs lo < hi, got lo=1.0, hi=1.0",
    ),
    "lo above hi": (
        lambda r: Hyperparameter("n", "randint", (9, 2)),
        r"randint hyperparameter 'n' needs lo < hi",
    ),
    "log-uniform from 0": (
        lambda r: Hyperparameter("lr", "log-uniform", (0.0, 0.1)),
        r"log-uniform hyperparameter 'lr' needs lo > 0, got lo=0.0",
    ),
    "log-uniform below 0": (
        lambda r: Hyperparameter("lr", "log-uniform", (-1.0, 0.1)),
        r"log-uniform hyperparameter 'lr' needs lo > 0",
    ),
    "empty choice": (
        lambda r: Hyperparameter("act", "choice", []),
        r"choice hyperparameter 'act' has no options",
    ),
    "empty choice, Hobbit's form": (
        lambda r: Hyperparameter("act", "choice", [()]),
        r"choice hyperparameter 'act' has no options",
    ),
    "duplicate names": (
        lambda r: ParallelHyperband(
            None, space() + [Hyperparameter("x", "uniform", (0, 2))], r, trainable=_synthetic()
        ),
        r"hyperparameter 'x' is listed twice; names must be unique",
    ),
    "dataset with fewer labels than inputs": (
        lambda r: keras_tuner(r, dataset=(([[0.0]] * 4, [0] * 3), ([[0.0]], [0]))),
        r"dataset has 4 training inputs for 3 labels",
    ),
    "dataset that is not a pair of pairs": (
        lambda r: keras_tuner(r, dataset=([[0.0]] * 4, [0] * 4)),
        r"dataset must be \(\(x_train, y_train\), \(x_val, y_val\)\)",
    ),
    "validation inputs of another shape": (
        lambda r: keras_tuner(r, dataset=((Array(8, 64), Array(8)), (Array(2, 32), Array(2)))),
        r"training inputs of shape \(64,\) per sample but validation inputs of shape \(32,\)",
    ),
    "validation labels of another shape": (
        lambda r: keras_tuner(r, dataset=((Array(8, 4), Array(8, 10)), (Array(2, 4), Array(2)))),
        r"training labels of shape \(10,\) per sample but validation labels of shape \(\)",
    ),
    "generator without steps_per_epoch": (
        lambda r: keras_tuner(r, dataset=None, generator_function=iter, validation_steps=2),
        r"steps_per_epoch must be an integer >= 1, got None",
    ),
    "generator without validation_steps": (
        lambda r: keras_tuner(r, dataset=None, generator_function=iter, steps_per_epoch=2),
        r"validation_steps must be an integer >= 1, got None",
    ),
    "GPU id repeated": (
        lambda r: keras_tuner(r, gpus=[0, 1, 0]),
        r"GPU id 0 is listed twice in \[0, 1, 0\]; use jobs_per_gpu",
    ),
    "GPU id repeated in a string": (
        lambda r: keras_tuner(r, gpus="1,1"),
        r"GPU id 1 is listed twice",
    ),
    "GPU id out of range": (
        lambda r: keras_tuner(r, gpus=[0, 2]),
        r"GPU id 2 does not exist: this machine has 2 GPU\(s\), ids 0-1",
    ),
    "negative GPU id": (
        lambda r: keras_tuner(r, gpus=[-1]),
        r"holds a negative id",
    ),
    "malformed GPU list": (
        lambda r: keras_tuner(r, gpus="0;1"),
        r"^gpus '0;1' is malformed",  # the argument's name, not the CLI's flag
    ),
    "R below 1": (lambda r: tuner(r).run(R=0, eta=3), r"R must be an integer >= 1, got 0"),
    "eta below 2": (lambda r: tuner(r).run(R=9, eta=1), r"eta must be an integer >= 2, got 1"),
    "eta not an integer": (
        lambda r: tuner(r).run(R=9, eta=2.5),
        r"eta must be an integer >= 2, got 2.5",
    ),
    "eta a float that looks whole": (
        lambda r: tuner(r).run(R=9, eta=3.0),
        r"eta must be an integer >= 2, got 3.0",
    ),
    "eta a string": (lambda r: tuner(r).run(R=9, eta="3"), r"eta must be an integer >= 2"),
}


def _synthetic():
    from phobbit.testing import SyntheticTrainable

    return SyntheticTrainable()


@pytest.fixture(autouse=True)
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine, as far as the GPU check can tell, has GPUs 0 and 1."""
    monkeypatch.setattr("phobbit.execution.executor.visible_gpu_count", lambda: 2)


@pytest.mark.parametrize("case", BEFORE_ANY_REPOSITORY)
def test_bad_input_is_refused_with_its_name_and_no_repository_is_made(
    repo: Path, case: str
) -> None:
    call, message = BEFORE_ANY_REPOSITORY[case]
    with pytest.raises(InputError, match=message) as raised:
        call(repo)
    assert isinstance(raised.value, ValueError)
    assert "\n" not in str(raised.value)
    assert not repo.exists()


def test_a_dataset_function_returning_a_bad_dataset_stops_the_run_at_its_first_trial(
    repo: Path,
) -> None:
    hyperband = ParallelHyperband(
        no_model, space(), repo, dataset=mislabelled_dataset, n_jobs=1, verbose=0
    )
    with pytest.raises(InputError, match=r"dataset has 4 training inputs for 3 labels"):
        hyperband.run(R=3, eta=3)
    assert not repo.exists(), "the run made the folder: it removes it again"


def test_a_bad_dataset_leaves_an_existing_empty_folder_empty_and_a_resumed_run_untouched(
    repo: Path,
) -> None:
    def run() -> None:
        hyperband = ParallelHyperband(
            no_model, space(), repo, dataset=mislabelled_dataset, n_jobs=1, verbose=0
        )
        with pytest.raises(InputError, match=r"dataset has 4 training inputs for 3 labels"):
            hyperband.run(R=3, eta=3)

    repo.mkdir()
    (repo / "notes.txt").write_text("mine")
    run()
    assert [p.name for p in repo.iterdir()] == ["notes.txt"]

    Repository(repo).create(RunSettings.of(Space(space()), R=3, eta=3, seed=0))
    (repo / "models" / "0-1-0.json").write_text("{}")
    before = snapshot(repo)
    run()
    after = snapshot(repo)
    for made_by_every_driver in ("driver.json", ".driver.lock", ".results.lock"):
        after.pop(made_by_every_driver)
    assert after == before


def snapshot(folder: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every path under ``folder`` with its bytes (None for folders) and modification time."""
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of a finished run, R=3 eta=3 seed=3, to copy (one run for all cases)."""
    repo = tmp_path_factory.mktemp("finished") / "repo"
    tuner(repo, n_jobs=1, seed=3).run(R=3, eta=3)
    return repo


def _finished_run(repo: Path) -> None:
    pass  # the copy of ``finished`` is all it takes


def _results_a_folder(repo: Path) -> None:
    _finished_run(repo)
    (repo / "results.csv").unlink()
    (repo / "results.csv").mkdir()


def _results_garbage(repo: Path) -> None:
    _finished_run(repo)
    (repo / "results.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff garbage\n")


def _results_without_run_json(repo: Path) -> None:
    _finished_run(repo)
    (repo / "run.json").unlink()


def _run_json_garbage(repo: Path) -> None:
    _finished_run(repo)
    (repo / "run.json").write_text("{not json")


def _run_json_emptied(repo: Path) -> None:
    (repo / "run.json").write_text("{}")


def _run_json_nested_deep(repo: Path) -> None:
    (repo / "run.json").write_text("[" * 60_000 + "]" * 60_000)


def _run_json_iterations_absurd(repo: Path) -> None:
    settings = json.loads((repo / "run.json").read_text())
    (repo / "run.json").write_text(json.dumps({**settings, "iterations": 10**9}))


# Each case: how to spoil a finished repository, the run that meets it, the message.
EXISTING_REPOSITORY = {
    "another R": (_finished_run, lambda r: tuner(r, seed=3).run(9, 3), r"R=3 there, 9 here"),
    "another eta": (_finished_run, lambda r: tuner(r, seed=3).run(3, 2), r"eta=3 there, 2 here"),
    "another seed": (_finished_run, lambda r: tuner(r, seed=4).run(3, 3), r"seed=3 there, 4 here"),
    "another space": (
        _finished_run,
        lambda r: ParallelHyperband(None, space()[:1], r, trainable=_synthetic(), seed=3).run(
            3, 3
        ),
        r"holds another run \(search space differs \(removed [a-z_, ]+\)\)",
    ),
    "results.csv a folder": (
        _results_a_folder,
        lambda r: tuner(r, seed=3).run(3, 3),
        r"results.csv is a folder, not a regular file; .*: move it away",
    ),
    "results.csv of garbage": (
        _results_garbage,
        lambda r: tuner(r, seed=3).run(3, 3),
        r"results.csv is not a phobbit results file",
    ),
    "results.csv without run.json": (
        _results_without_run_json,
        lambda r: tuner(r, seed=3).run(3, 3),
        r"has a results.csv but no run.json",
    ),
    "run.json of garbage": (
        _run_json_garbage,
        lambda r: tuner(r, seed=3).run(3, 3),
        r"run.json is not valid JSON",
    ),
    "run.json emptied, another seed": (
        _run_json_emptied,
        lambda r: tuner(r, seed=5).run(3, 3),
        r"run.json lacks R, eta, seed, iterations, space_fingerprint, space; restore it",
    ),
    "run.json nested 60,000 deep": (
        _run_json_nested_deep,
        lambda r: tuner(r, seed=3).run(3, 3),
        r"run.json is not valid JSON",
    ),
    "run.json with 10**9 iterations": (
        _run_json_iterations_absurd,
        lambda r: tuner(r, seed=3).run(3, 3),
        r"run.json is not valid: R=3, eta=3 and iterations=1000000000 make more than",
    ),
}


@pytest.mark.parametrize("case", EXISTING_REPOSITORY)
def test_repository_of_another_run_or_unreadable_is_refused_and_left_unchanged(
    finished: Path, repo: Path, case: str
) -> None:
    spoil, call, message = EXISTING_REPOSITORY[case]
    shutil.copytree(finished, repo)
    spoil(repo)
    before = snapshot(repo)
    with pytest.raises(RepositoryError, match=message) as raised:
        call(repo)
    assert "\n" not in str(raised.value)
    assert snapshot(repo) == before


@pytest.mark.parametrize("spoil", [_results_a_folder, _results_garbage])
def test_readers_of_an_unreadable_results_csv_get_a_repository_error(
    finished: Path, repo: Path, spoil
) -> None:
    shutil.copytree(finished, repo)
    spoil(repo)
    with pytest.raises(RepositoryError, match="results.csv"):
        Repository(repo).results()


def test_run_json_is_plain_data(finished: Path) -> None:
    settings = json.loads((finished / "run.json").read_text())
    names = {"R", "eta", "seed", "iterations", "space_fingerprint", "space", "run_id"}
    assert set(settings) == names
    assert re.fullmatch("[0-9a-f]{32}", settings["run_id"])  # names the run, once


def test_nothing_read_from_a_repository_is_evaluated_or_unpickled() -> None:
    """No eval/exec/compile in the package; no pickle; Keras loads only weights or safe mode."""
    scanned = sorted(PACKAGE.rglob("*.py"))
    assert len(scanned) > 40 and PACKAGE / "keras_adapter" / "trainable.py" in scanned
    for path in scanned:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in {"eval", "exec", "compile", "__import__"}, (
                    f"{path.name}:{node.lineno} calls {node.func.id}"
                )
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "marshal", "shelve", "dill", "cloudpickle"} & set(names), (
                    f"{path.name}:{node.lineno} imports a deserializer of code"
                )
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "load_model":
                    safe = {k.arg: k.value for k in node.keywords}.get("safe_mode")
                    assert isinstance(safe, ast.Constant) and safe.value is True, (
                        f"{path.name}:{node.lineno} loads a Keras model without safe_mode=True"
                    )
                if node.func.attr == "load" and getattr(node.func.value, "id", "") == "joblib":
                    # The only joblib.load reads the dataset a driver staged in a temp folder.
                    assert path == PACKAGE / "keras_adapter" / "trainable.py", (
                        f"{path.name}:{node.lineno}"
                    )
