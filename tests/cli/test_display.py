"""What ``best``, ``status`` and ``train`` show (issue 22, items 1, 2 and 5), in this process.

The repositories are filled on the simulated executor (``helpers.tuner``); the commands
that only read them run through ``cli.main``, as a user's would.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import tuner

from phobbit import open_repository


def cli(*args: object) -> tuple[int, str, str]:
    """``phobbit ARGS`` through ``cli.main``: (exit code, stdout, stderr)."""
    from phobbit.cli.commands import main

    out, err = io.StringIO(), io.StringIO()
    columns = os.environ.pop("COLUMNS", None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(arg) for arg in args])
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        if columns is not None:
            os.environ["COLUMNS"] = columns
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A finished R=9 run in ``tmp_path/repo``, trained by two CPU workers; cwd is tmp_path."""
    tuner(tmp_path / "repo", n_jobs=2).run(R=9, eta=3)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "repo"


def test_best_json_and_the_api_name_one_absolute_checkpoint_and_no_gpu_for_a_cpu_worker(
    trained: Path,
) -> None:
    code, out, err = cli("best", "repo", "--top", 3, "--json")
    assert code == 0, err
    records = json.loads(out)
    api = open_repository("repo").best(3)  # a relative path, as a script would give
    assert [r["trial"] for r in records] == [b.trial for b in api]
    for record, best in zip(records, api, strict=True):
        assert record["checkpoint"] is not None and Path(record["checkpoint"]).is_absolute()
        assert record["checkpoint"] == str(best.checkpoint)
        assert Path(record["checkpoint"]).is_file()
        assert record["gpu"] is None and best.gpu is None  # a CPU worker: no GPU, not "-1"


def accuracy(hparams: dict, epoch: int) -> dict[str, float]:
    """An accuracy best near x = 0.7 (the val loss is best near 0.3), rising with epochs."""
    value = round(1.0 - abs(hparams["x"] - 0.7) - 0.5 / epoch, 6)
    return {"accuracy": value + 0.01, "val_accuracy": value}


@pytest.fixture
def by_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A finished R=9 run ranked by val_accuracy, recording loss, accuracy and their val_."""
    from synthetic import x_curve

    from phobbit.testing import SyntheticTrainable

    trainable = SyntheticTrainable(curve=x_curve, metrics=accuracy)
    tuner(tmp_path / "repo", n_jobs=2, trainable=trainable, objective="val_accuracy").run(
        R=9, eta=3
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path / "repo"


def header_of(table: str) -> list[str]:
    """The column names of a printed table (the line above its rule), split on 2+ spaces."""
    lines = table.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.strip().startswith("─"))
    return [name for name in lines[rule - 1].strip().split("  ") if name.strip()]


def test_best_shows_the_objective_first_with_its_direction_then_the_recorded_metrics(
    by_accuracy: Path,
) -> None:
    code, out, err = cli("best", "repo", "--top", 3)
    assert code == 0, err
    heads = [h.strip() for h in header_of(out)]
    assert heads[:3] == ["Trial", "Val Accuracy (max)", "Val Loss"], heads
    assert "Accuracy" not in heads  # by default the validation metrics only

    code, out, err = cli("best", "repo", "--top", 3, "--columns", "accuracy,loss")
    assert code == 0, err
    heads = [h.strip() for h in header_of(out)]
    assert heads[:4] == ["Trial", "Val Accuracy (max)", "Accuracy", "Loss"], heads

    code, out, err = cli("status", "repo")
    assert code == 0, err
    assert "Best Val Accuracy (max) " in out


def test_best_json_carries_every_metric_of_the_scoring_epoch_and_the_direction(
    by_accuracy: Path,
) -> None:
    code, out, err = cli("best", "repo", "--top", 5, "--json")
    assert code == 0, err
    for record in json.loads(out):
        assert record["objective_name"] == "val_accuracy" and record["direction"] == "max"
        metrics = record["metrics"]
        assert set(metrics) == {"loss", "val_loss", "accuracy", "val_accuracy"}
        assert metrics["val_accuracy"] == record["objective"]
        assert metrics["val_loss"] == record["val_loss"]


def test_best_columns_naming_a_metric_the_run_never_recorded_is_one_line_exit_2(
    by_accuracy: Path,
) -> None:
    code, out, err = cli("best", "repo", "--columns", "val_auc")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "--columns val_auc: the run records no such metric; it records accuracy" in err


def test_status_header_says_the_algorithm_the_sampler_and_where_it_trained(trained: Path) -> None:
    code, out, err = cli("status", "repo")
    assert code == 0, err
    header = out.splitlines()[0]
    assert "hyperband, random sampling" in header
    assert "trained on CPU workers" in header


def test_train_header_words_name_the_backend_and_the_budget() -> None:
    from phobbit.cli.commands import _backend_name, _budget_words
    from phobbit.core.budget import Budget

    assert _backend_name("jax") == "JAX" and _backend_name("tensorflow") == "TensorFlow"
    assert _budget_words(Budget()) == "no time or epoch limit"
    # The time limit says what is left of it after the time earlier invocations used.
    assert _budget_words(Budget("10m", 500)) == "time limit 10m, 10m left, at most 500 epochs"
    assert _budget_words(Budget("10m", time_used=180.0)) == "time limit 10m, 7m left"


def test_no_line_that_best_or_status_print_ends_in_spaces(trained: Path) -> None:
    for command in (("best", "repo"), ("status", "repo"), ("best", "repo", "--columns", "loss")):
        code, out, err = cli(*command)
        assert code == 0, err
        assert out and not [line for line in out.splitlines() if line != line.rstrip()], out


class FullDisk(io.StringIO):
    """Standard output as ``> /dev/full`` has it: every write fails with ENOSPC."""

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize(
    "command", [("best", "repo"), ("best", "repo", "--json"), ("status", "repo"), ("brackets",)]
)
def test_a_full_standard_output_is_one_line_not_a_traceback(
    trained: Path, command: tuple[str, ...]
) -> None:
    from phobbit.cli.commands import main

    err = io.StringIO()
    with contextlib.redirect_stdout(FullDisk()), contextlib.redirect_stderr(err):
        code = main(list(command))
    assert code == 1
    assert err.getvalue() == (
        "phobbit: error: cannot write to standard output: No space left on device\n"
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_on_a_narrow_terminal_break_the_title_between_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from phobbit.cli.terminal import fit_to_terminal

    monkeypatch.setenv("COLUMNS", "60")
    title = (
        "phobbit train examples/mnist_mlp.py: R=9 eta=3 seed=0, hyperband, random sampling, "
        "no time or epoch limit; TensorFlow on 2 workers (CPU 0, CPU 1); repository phobbit_repo"
    )
    lines = fit_to_terminal(title, Terminal())
    assert len(lines) > 1 and all(len(line) <= 60 for line in lines)
    assert " ".join(lines) == title  # broken only where a space was
    assert fit_to_terminal(title, io.StringIO()) == [title]  # a file or a pipe: one line


MODEL_FILE = """
from phobbit import Hyperparameter
from phobbit.testing import SyntheticTrainable

hparam_ranges = [Hyperparameter("x", "uniform", (0.0, 1.0))]
trainable = SyntheticTrainable()
"""


@pytest.fixture
def simulated_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``phobbit train`` runs on two simulated workers in this process, an epoch taking a
    virtual second; cwd is tmp_path, which holds the model file ``model.py``."""
    from phobbit.cli import commands
    from phobbit.execution.simulated import SimulatedExecutor

    @contextlib.contextmanager
    def simulated(args: object) -> Iterator[SimulatedExecutor]:
        yield SimulatedExecutor(2, duration=lambda segment: segment.epochs - segment.start_epoch)

    monkeypatch.setattr(commands, "_dask_executor", simulated)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.py").write_text(MODEL_FILE)
    return tmp_path


def test_train_header_says_the_time_limit_and_what_earlier_invocations_left(
    simulated_train: Path,
) -> None:
    from phobbit.core.units import format_duration
    from phobbit.storage.repository import Repository
    from phobbit.storage.time_used import TimeLog

    train = ("train", "model.py", "--R", 9, "--repo", "repo", "--time-limit", "10m")
    code, out, err = cli(*train, "--max-epochs", 20)
    assert code == 0, err
    assert "time limit 10m, 10m left, at most 20 epochs" in out.splitlines()[0]
    used = TimeLog(Repository(simulated_train / "repo")).used()
    assert 0 < used < 600
    code, out, err = cli(*train, "--max-epochs", 40)
    assert code == 0, err
    left = format_duration(round(600 - used))
    assert f"time limit 10m, {left} left, at most 40 epochs" in out.splitlines()[0]


def test_status_header_names_the_backend_workers_budget_and_time_used(
    simulated_train: Path,
) -> None:
    from phobbit.core.units import format_duration
    from phobbit.storage.repository import Repository
    from phobbit.storage.time_used import TimeLog

    train = ("train", "model.py", "--R", 9, "--repo", "repo", "--algorithm", "asha")
    code, out, err = cli(*train, "--time-limit", "10m", "--max-epochs", 30)
    assert code == 0, err
    code, out, err = cli("status", "repo")
    assert code == 0, err
    header = out.splitlines()[0]
    used = TimeLog(Repository(simulated_train / "repo")).used()
    assert "TensorFlow on 2 workers (CPU 0, CPU 1)" in header
    assert f"time limit 10m, {format_duration(round(600 - used))} left" in header
    assert "at most 30 epochs" in header
    done = open_repository("repo").status().epochs_done
    assert f"{done}/{max(done, 30)} epochs (" in out  # ASHA: against its budget
    code, out, err = cli(*train, "--max-epochs", 45)  # no time limit: the time used
    assert code == 0, err
    used = TimeLog(Repository(simulated_train / "repo")).used()
    header = cli("status", "repo")[1].splitlines()[0]
    assert f"at most 45 epochs, time used {format_duration(round(used))}" in header


def test_status_of_an_older_run_says_its_budget_is_unknown(trained: Path) -> None:
    driver = trained / "driver.json"
    record = json.loads(driver.read_text())
    del record["about"]  # as a version before the driver recorded it
    driver.write_text(json.dumps(record))
    code, out, err = cli("status", "repo")
    assert code == 0, err
    header = out.splitlines()[0]
    assert "budget unknown, time used 0s; trained on CPU workers" in header
    assert " on 2 workers" not in header


def test_the_live_display_off_a_terminal_ends_its_last_frame_with_a_line_break(
    simulated_train: Path,
) -> None:
    # `phobbit train ... --progress live > log`: rich leaves the cursor after its last frame
    # off a terminal, so the summary after it ran on ("left ~0:00:00Trained 22 segments").
    train = ("train", "model.py", "--R", 9, "--repo", "repo", "--progress", "live")
    for summary in ("Trained 22 segments", "Nothing left to train"):  # the run, then again
        code, out, err = cli(*train)
        assert code == 0, err
        lines = out.splitlines()
        assert any(line.startswith(summary) for line in lines), out
        assert not any("left ~" in line and summary in line for line in lines), out
