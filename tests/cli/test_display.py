"""What ``best``, ``status`` and ``train`` show (issue 22, items 1, 2 and 5), in this process.

The repositories are filled on the simulated executor (``helpers.tuner``); the commands
that only read them run through ``cli.main``, as a user's would.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
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
    assert _budget_words(Budget("10m", 500)) == "time limit 10m, at most 500 epochs"


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
