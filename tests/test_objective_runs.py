"""Runs that rank by an objective other than the val loss, and EarlyStopping, without Keras.

Runs use ``SyntheticTrainable`` with a made-up accuracy whose best configuration
is not the val loss's, so a ranking by the wrong metric shows. The reference is
a serial Hyperband that ranks by the same objective (``phobbit.testing.reference``).
What is decided runs on the simulated executor; one run of each kind goes through a
real process pool, where the metrics and stop callbacks cross to worker processes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from synthetic import x_curve

import phobbit
from phobbit import Hyperparameter, InputError, ParallelHyperband, RepositoryError
from phobbit.core.objective import VAL_LOSS, Objective
from phobbit.core.records import STOPPED_EARLY, Tuning
from phobbit.core.space import Space
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.execution.worker import train_segment
from phobbit.storage.repository import Repository
from phobbit.storage.results import results_frame
from phobbit.testing import SyntheticTrainable, serial_hyperband

SPACE = [Hyperparameter("x", "uniform", (0.0, 1.0))]
R, ETA = 9, 3


def accuracy(hparams: dict[str, Any], epoch: int) -> dict[str, float]:
    """Best near x = 0.7 (the val loss is best near 0.3), rising with epochs in steps of 1/8:
    equal values across epochs are common, as with a real accuracy."""
    value = math.floor(8 * (1.0 - abs(hparams["x"] - 0.7) - 0.5 / epoch)) / 8
    return {"accuracy": value, "val_accuracy": value}


def stops_when_far(hparams: dict[str, Any], epoch: int) -> bool:
    """A callback stopping configurations with x > 0.6 after their epoch 2."""
    return hparams["x"] > 0.6 and epoch >= 2


def stops_at_the_first_epoch(hparams: dict[str, Any], epoch: int) -> bool:
    """A callback stopping every configuration after epoch 1: bracket 2's first segment
    (1 epoch at R=9) ends there, the others go on past it."""
    return epoch == 1


def stops_the_best(hparams: dict[str, Any], epoch: int) -> bool:
    """A callback stopping the configurations nearest x = 0.3 (the best) after epoch 2."""
    return abs(hparams["x"] - 0.3) < 0.15 and epoch >= 2


def tuner(repo: Path, n_jobs: int, real: bool = False, **options: Any) -> ParallelHyperband:
    """A tuner on ``n_jobs`` workers: simulated ones in this process, or with ``real`` a
    process pool (the metrics and stop callbacks then travel to worker processes)."""
    extra = {k: options.pop(k) for k in ("metrics", "stops") if k in options}
    trainable = SyntheticTrainable(curve=x_curve, metrics=accuracy, **extra)
    workers = {"n_jobs": n_jobs} if real else {"executor": SimulatedExecutor(n_jobs)}
    return ParallelHyperband(
        None, SPACE, repo, trainable=trainable, verbose=0, **workers, **options
    )


def serial_table(folder: Path, objective: Objective, **extra: Any) -> pd.DataFrame:
    """The table of a serial Hyperband that ranks by ``objective``, trained one by one."""
    folder.mkdir()
    trainable = SyntheticTrainable(curve=x_curve, metrics=accuracy, objective=objective, **extra)
    tuning = Tuning.of(
        Space(SPACE),
        R,
        ETA,
        objective=objective,
        checkpoint_of=lambda i, s, c: str(folder / f"{i}-{s}-{c}"),
    )
    run = serial_hyperband(
        tuning, train=lambda segment: train_segment(trainable, segment, str(folder))
    )
    return results_frame(run.results.values(), objective)


COLUMNS = ["Hparams", "ID", "Run", "Val Loss", "Val Accuracy", "Epochs", "Rung", "Status"]


@pytest.mark.parametrize(("n_jobs", "real"), [(1, False), (3, False), (3, True)])
def test_a_maximised_objective_ranks_the_run_as_a_serial_run_ranks_it(
    tmp_path: Path, n_jobs: int, real: bool
) -> None:
    table = tuner(tmp_path / "repo", n_jobs, real, objective="val_accuracy").run(R=R, eta=ETA)
    reference = serial_table(tmp_path / "serial", Objective("val_accuracy", "max"))
    pd.testing.assert_frame_equal(table[COLUMNS], reference[COLUMNS])
    by_loss = serial_table(tmp_path / "by_loss", VAL_LOSS)
    assert table.index[0] != by_loss.index[0]  # the objective, not the val loss, decided
    ok = table[table["Status"] == "ok"]
    assert list(ok["Val Accuracy"]) == sorted(ok["Val Accuracy"], reverse=True)


def test_each_row_lists_its_best_epoch_by_objective_and_that_epochs_val_loss(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    tuner(repo, 2, objective="val_accuracy").run(R=R, eta=ETA)
    view = phobbit.open_repository(repo)
    curves = view.curves()
    for _, row in view.results().iterrows():
        epochs = curves[
            (curves["Iteration"] == row["Iteration"])
            & (curves["Run"] == row["Run"])
            & (curves["ID"] == row["ID"])
        ]
        best = epochs[epochs["val_accuracy"] == epochs["val_accuracy"].max()].iloc[-1]
        assert (row["Val Accuracy"], row["Val Loss"]) == (best["val_accuracy"], best["val_loss"])
    for best in view.best(5):
        # The file `best` names holds that very epoch: its objective and its val loss.
        held = phobbit.storage.checkpoints.read_progress(best.checkpoint)
        assert held.history[-1]["val_accuracy"] == best.objective
        assert held.val_loss == best.val_loss
        assert best.objective_name == "val_accuracy"


def test_rows_carry_the_objective_in_results_csv(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tuner(repo, 2, objective="val_accuracy").run(R=R, eta=ETA)
    csv = pd.read_csv(repo / "results.csv")
    assert "objective" in csv.columns
    ok = csv[csv["status"] == "ok"]
    assert ok["objective"].between(-1, 1).all()


def test_a_resume_with_another_objective_is_refused_in_one_line(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tuner(repo, 2, objective="val_accuracy").run(R=R, eta=ETA)
    for other in ({}, {"objective": "val_accuracy", "direction": "min"}):
        with pytest.raises(RepositoryError) as refused:
            tuner(repo, 2, **other).run(R=R, eta=ETA)
        assert "objective" in str(refused.value) or "direction" in str(refused.value)
        assert "\n" not in str(refused.value)
    assert phobbit.open_repository(repo).settings.goal == Objective("val_accuracy", "max")


@pytest.mark.parametrize("algorithm", ["hyperband", "asha"])
def test_an_objective_no_epoch_logs_stops_the_run_naming_it_and_what_is_logged(
    tmp_path: Path, algorithm: str
) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(InputError) as refused:  # ASHA records decisions before training
        tuner(repo, 2, objective="val_auc", algorithm=algorithm).run(R=R, eta=ETA)
    message = str(refused.value)
    assert "'val_auc'" in message and "val_accuracy" in message and "first epoch" in message
    assert not repo.exists()  # a new folder is left as it was


@pytest.mark.parametrize(("stops", "real"), [(stops_when_far, True), (stops_the_best, False)])
def test_early_stopping_ends_a_configuration_where_it_stopped_and_gives_its_place_away(
    tmp_path: Path, stops: Any, real: bool
) -> None:
    repo = tmp_path / "repo"
    table = tuner(repo, 3, real, stops=stops).run(R=R, eta=ETA)
    reference = serial_table(tmp_path / "serial", VAL_LOSS, stops=stops)
    columns = ["Hparams", "ID", "Run", "Val Loss", "Epochs", "Rung", "Status"]
    pd.testing.assert_frame_equal(table[columns], reference[columns])
    rows = list(phobbit.open_repository(repo).repository.iter_results())
    stopped = [r for r in rows if r.stopped_early]
    assert stopped, "no configuration stopped: the test proves nothing"
    curves = phobbit.open_repository(repo).curves()
    for row in stopped:
        assert row.ok and STOPPED_EARLY in row.note and not row.retrained
        assert row.epochs == max(row.start_epoch + 1, 2) < R
        config = (row.iteration, row.s, row.id)
        later = [r for r in rows if (r.iteration, r.s, r.id) == config and r.rung > row.rung]
        assert not later  # never promoted past where it stopped
        trained = curves[
            (curves["Run"] == row.s) & (curves["ID"] == row.id) & (curves["Iteration"] == 0)
        ]
        assert trained["Epoch"].max() == row.epochs
    if stops is stops_the_best:
        # A stopped configuration that beat one promoted from its rung: its place went on.
        promoted = {(r.iteration, r.s, r.id, r.rung - 1): r for r in rows if r.rung > 0}
        given_away = [
            row
            for row in stopped
            for other in rows
            if (other.iteration, other.s, other.id, other.rung) in promoted
            and (other.iteration, other.s, other.rung) == (row.iteration, row.s, row.rung)
            and other.val_loss > row.val_loss
        ]
        assert given_away


def test_a_stop_at_a_segments_last_epoch_ends_the_configuration_too(tmp_path: Path) -> None:
    table = tuner(tmp_path / "repo", 2, stops=stops_at_the_first_epoch).run(R=9, eta=3)
    assert (table["Rung"] == 0).all() and (table["Epochs"] == 1).all()  # none promoted
    rows = Repository(tmp_path / "repo").results().values()
    assert rows and all(row.stopped_early for row in rows)


def test_a_stopped_segment_run_again_after_its_row_was_lost_trains_nothing(
    tmp_path: Path,
) -> None:
    trainable = SyntheticTrainable(curve=x_curve, stops=stops_when_far)
    stem = str(tmp_path / "0-2-0")
    first = trainable.train({"x": 0.9}, stem, 0, 9)
    again = trainable.train({"x": 0.9}, stem, 0, 9)
    assert first == again and len(first) == 2 and again.stopped_early
    assert phobbit.storage.checkpoints.read_progress(stem + ".json").epoch == 2
