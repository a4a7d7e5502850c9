"""The best line of ``train``'s displays names the other validation metrics of the best's
scoring epoch, as ``best`` shows them (a loose end of issue 22: the live table lacked them).

Runs train on the simulated executor in this process (``simulated_train`` of
``test_display``), with a synthetic trainable whose val loss is best at epoch 2 and rises
after it, so a configuration's scoring epoch is not its last.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import tuner

from phobbit import open_repository
from phobbit.cli.terminal import best_line
from phobbit.core.objective import VAL_LOSS, Objective
from phobbit.core.records import SegmentResult
from phobbit.reporting.plain import PlainReporter, metrics_words

MODEL_FILE = """
from phobbit import Hyperparameter
from phobbit.testing import SyntheticTrainable

hparam_ranges = [Hyperparameter("x", "uniform", (0.0, 1.0))]


def curve(hparams, epoch):
    # Best at epoch 2, worse after: a configuration of 3 or 9 epochs scores at epoch 2.
    return abs(hparams["x"] - 0.3) + abs(epoch - 2) / 10 + 0.1


def metrics(hparams, epoch):
    return {
        "accuracy": round(0.6 + epoch / 50, 6),
        "val_accuracy": round(0.5 + epoch / 100 + hparams["x"] / 10, 6),
        "val_auc": round(0.7 + epoch / 1000, 6),
    }


trainable = SyntheticTrainable(curve=curve, metrics=METRICS)
"""


def words_of(metrics: dict[str, float]) -> str:
    """What a best line says of the val metrics (the objective's and val_loss aside)."""
    return f"val_accuracy {metrics['val_accuracy']:.4g}, val_auc {metrics['val_auc']:.4g})"


@pytest.fixture
def simulated_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``phobbit train`` on two simulated workers in this process; cwd is tmp_path."""
    from phobbit.cli import commands
    from phobbit.execution.simulated import SimulatedExecutor

    @contextlib.contextmanager
    def simulated(args: object) -> Iterator[SimulatedExecutor]:
        yield SimulatedExecutor(2, duration=lambda segment: segment.epochs - segment.start_epoch)

    monkeypatch.setattr(commands, "_dask_executor", simulated)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def train(*extra: object, metrics: bool = True) -> str:
    """``phobbit train model.py --R 9 --repo repo EXTRA`` through ``cli.main``: its stdout."""
    from phobbit.cli.commands import main

    Path("model.py").write_text(MODEL_FILE.replace("METRICS", "metrics" if metrics else "None"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", "model.py", "--R", "9", "--repo", "repo", *map(str, extra)])
    assert code == 0, err.getvalue()
    return out.getvalue()


def scoring_and_last(repo: str) -> tuple[dict[str, float], dict[str, float]]:
    """The best configuration's metrics at its scoring epoch (``best``'s) and at its last."""
    best = open_repository(repo).best(1)[0]
    assert best.metrics, "the run records the scoring epoch's metrics"
    from phobbit.storage.repository import Repository

    epochs = Repository(Path(repo)).epochs_of([(best.iteration, best.s, best.id)])
    last = epochs[(best.iteration, best.s, best.id, best.epochs)].metrics
    assert best.epochs > 2 and last["val_accuracy"] != best.metrics["val_accuracy"]
    return best.metrics, last


def test_plain_train_lines_name_the_scoring_epochs_val_metrics_not_the_last_epochs(
    simulated_train: Path,
) -> None:
    out = train("--progress", "plain")
    scoring, last = scoring_and_last("repo")
    bests = [line for line in out.splitlines() if "best so far:" in line]
    assert words_of(scoring) in bests[-1], bests[-1]
    assert words_of(last) not in out
    assert not re.search(r"[ (]accuracy ", out)  # training metrics are left out
    assert "val_loss " not in bests[-1]  # the objective is not repeated


def test_live_display_best_line_names_the_scoring_epochs_val_metrics(
    simulated_train: Path,
) -> None:
    out = train("--progress", "live")  # off a terminal, rich prints the last frame once
    scoring, _ = scoring_and_last("repo")
    best = next(line for line in out.splitlines() if line.startswith("Best Val Loss (min)"))
    assert words_of(scoring) in best, best


def test_a_resumed_runs_best_line_shows_the_metrics_from_epochs_csv(
    simulated_train: Path,
) -> None:
    train("--progress", "plain")
    out = train("--progress", "live")  # nothing left: the best is the repository's
    assert "Nothing left to train" in out
    scoring, _ = scoring_and_last("repo")
    best = next(line for line in out.splitlines() if line.startswith("Best Val Loss (min)"))
    assert words_of(scoring) in best, best


def test_status_best_line_shows_the_metrics_of_the_scoring_epoch(simulated_train: Path) -> None:
    from phobbit.cli.commands import main

    train("--progress", "plain")
    scoring, last = scoring_and_last("repo")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["status", "repo"]) == 0
    best = next(line for line in out.getvalue().splitlines() if line.startswith("Best "))
    assert words_of(scoring) in best, best
    assert words_of(last) not in best


BEST_SO_FAR = re.compile(
    r"^\[ *[\d.]+s\] best so far: val loss [\d.e-]+ \(run \d id \d+ rung \d, \d epochs\) "
    r"x=[\d.e-]+$"
)
BEST_LIVE = re.compile(r"^Best Val Loss \(min\) [\d.e-]+ \(run \d id \d+, \d epochs\) x=[\d.e-]+$")


def test_a_model_logging_only_its_losses_keeps_todays_best_lines(simulated_train: Path) -> None:
    out = train("--progress", "plain", metrics=False)
    bests = [line for line in out.splitlines() if "best so far:" in line]
    assert bests and all(BEST_SO_FAR.match(line) for line in bests), bests
    out = train("--progress", "live", metrics=False)
    best = next(line for line in out.splitlines() if line.startswith("Best Val Loss"))
    assert BEST_LIVE.match(best), best


def test_the_librarys_plain_lines_name_the_scoring_epochs_val_metrics(tmp_path: Path) -> None:
    namespace: dict = {}
    exec(MODEL_FILE.replace("METRICS", "metrics"), namespace)  # the model file's trainable
    trainable = namespace["trainable"]
    stream = io.StringIO()
    hyperband = tuner(tmp_path / "repo", n_jobs=2, trainable=trainable)
    hyperband.reporter = PlainReporter(stream)
    hyperband.run(R=9, eta=3)
    scoring, last = scoring_and_last(str(tmp_path / "repo"))
    bests = [line for line in stream.getvalue().splitlines() if "best so far:" in line]
    assert words_of(scoring) in bests[-1], bests[-1]
    assert words_of(last) not in stream.getvalue()


def test_metrics_words_leave_out_the_objective_val_loss_and_training_metrics() -> None:
    logged = {
        "loss": 0.1,
        "accuracy": 0.9,
        "val_loss": 0.2,
        "val_accuracy": 0.85,
        "val_auc": 0.91234,
        "val_precision": 0.7,
        "val_recall": 0.6,
        "val_f1": 0.5,
    }
    assert metrics_words(logged) == (
        ", val_accuracy 0.85, val_auc 0.9123, val_precision 0.7, +2 more"
    )
    by_accuracy = Objective("val_accuracy", "max")
    assert metrics_words(logged, by_accuracy) == (
        ", val_auc 0.9123, val_precision 0.7, val_recall 0.6, +1 more"
    )
    assert metrics_words({"loss": 0.1, "val_loss": 0.2}) == ""
    assert metrics_words({}, VAL_LOSS) == ""


def test_best_line_with_another_objective_names_val_loss_then_the_other_metrics() -> None:
    row = SegmentResult(
        0, 1, 3, 0, 0, 3, 0.25, 0.3, "ok", "", {"x": 0.5}, objective=0.875,
        metrics={"loss": 0.2, "val_loss": 0.25, "val_accuracy": 0.875, "val_auc": 0.9},
    )  # fmt: skip
    assert best_line(row, Objective("val_accuracy", "max")) == (
        "0.875 (run 1 id 3, 3 epochs, val loss 0.25, val_auc 0.9) x=0.5"
    )
    assert best_line(row) == "0.25 (run 1 id 3, 3 epochs, val_accuracy 0.875, val_auc 0.9) x=0.5"


def test_the_metrics_travel_in_memory_alone_results_csv_keeps_its_bytes() -> None:
    import dataclasses

    from phobbit.storage.repository import encode_row

    row = SegmentResult(0, 1, 3, 0, 0, 3, 0.25, 0.3, "ok", "", {"x": 0.5}, objective=0.25)
    carried = dataclasses.replace(row, metrics={"val_loss": 0.25, "val_accuracy": 0.875})
    assert encode_row(carried) == encode_row(row)
    assert carried == row  # a row read back (without them) equals the one returned
