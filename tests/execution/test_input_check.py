"""The input check before a run (``ChecksInput.preflight``), on the simulated executor and a
real pool: a mismatch stops the run as bad input, a pass changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tuner
from synthetic import x_curve

from phobbit import InputError
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.storage.repository import Repository
from phobbit.testing import InputCheckedTrainable, SyntheticTrainable

DRIVER = "driver.json"
MISMATCH = "the training data does not fit the model of my_model: inputs (1797, 20)"


def test_a_mismatch_stops_a_new_run_before_training_and_leaves_no_folder(
    tmp_path: Path,
) -> None:
    executor = SimulatedExecutor(2)
    trainable = InputCheckedTrainable(curve=x_curve, input_error=MISMATCH)
    repo = tmp_path / "repo"
    with pytest.raises(InputError, match="does not fit the model of my_model") as caught:
        tuner(repo, trainable=trainable, executor=executor).run(R=9, eta=3)
    assert caught.value.exit_code == 2
    assert [entry.key for entry in executor.trace] == [None]  # the check alone ran
    assert not repo.exists()


def test_a_mismatch_leaves_a_resumed_repository_as_it_was(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tuner(repo, trainable=SyntheticTrainable(curve=x_curve), max_epochs=10).run(R=9, eta=3)

    # driver.json names the last driver, whatever it did (as for any bad input on a resume).
    def files() -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and p.name != DRIVER}

    before = files()
    trainable = InputCheckedTrainable(curve=x_curve, input_error=MISMATCH)
    with pytest.raises(InputError):
        tuner(repo, trainable=trainable).run(R=9, eta=3)
    assert files() == before


def test_a_check_that_passes_changes_no_result_and_runs_once(tmp_path: Path) -> None:
    plain = tuner(tmp_path / "plain", trainable=SyntheticTrainable(curve=x_curve), n_jobs=3)
    expected = plain.run(R=9, eta=3).drop(columns=["Start", "End", "Train Time"])
    records = tmp_path / "records"
    records.mkdir()
    checked = InputCheckedTrainable(curve=x_curve, record_dir=str(records))
    table = tuner(tmp_path / "checked", trainable=checked, n_jobs=3).run(R=9, eta=3)
    assert table.drop(columns=["Start", "End", "Train Time"]).equals(expected)
    assert len(list(records.glob("preflight-*.json"))) == 1
    # It checked the first configuration the plan trains, and wrote nothing of its own.
    rows = list(Repository(tmp_path / "checked").iter_results())
    first = json.loads(next(records.glob("preflight-*.json")).read_text())
    assert first["hparams"] in [row.hparams for row in rows]


def test_a_finished_run_does_not_check_again(tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    checked = InputCheckedTrainable(curve=x_curve, record_dir=str(records))
    tuner(tmp_path / "repo", trainable=checked).run(R=9, eta=3)
    executor = SimulatedExecutor(1)
    tuner(tmp_path / "repo", trainable=checked, executor=executor).run(R=9, eta=3)
    assert executor.trace == []  # nothing to train: no worker is asked anything
    assert len(list(records.glob("preflight-*.json"))) == 1


def test_the_check_runs_in_the_pool_that_trains(tmp_path: Path) -> None:
    """No process of its own (a second TensorFlow import): one of the training workers."""
    records = tmp_path / "records"
    records.mkdir()
    checked = InputCheckedTrainable(curve=x_curve, record_dir=str(records))
    tuner(tmp_path / "repo", trainable=checked, real=True, n_jobs=2).run(R=9, eta=3)
    [check] = [json.loads(p.read_text()) for p in records.glob("preflight-*.json")]
    trained = {json.loads(p.read_text())["pid"] for p in records.glob("[0-9]*.json")}
    assert check["pid"] in trained
