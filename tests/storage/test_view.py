"""``phobbit.open_repository``: what ``phobbit status`` and ``best`` print, for library users."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_settings

import phobbit
from phobbit import RepositoryError, open_repository
from phobbit.core.records import SegmentResult
from phobbit.storage.repository import Repository

ROOT = Path(__file__).resolve().parents[2]


def row(config_id: int, rung: int = 0, epochs: int = 1, loss: float | None = 0.5, **changes):
    values = dict(
        iteration=0,
        s=2,
        id=config_id,
        rung=rung,
        start_epoch=0,
        epochs=epochs,
        val_loss=loss,
        last_val_loss=loss,
        status="ok" if loss is not None else "failed",
        error="" if loss is not None else "ValueError: boom",
        hparams={"x": config_id / 10},
        gpu="0",
        start=100.0 + config_id,
        end=200.0 + config_id,
    )
    values.update(changes)
    return SegmentResult(**values)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    repository = Repository(tmp_path / "repo")
    repository.create(run_settings(R=9, eta=3, seed=4))
    return repository


def test_open_repository_refuses_a_missing_folder_and_one_without_run_json(
    tmp_path: Path,
) -> None:
    with pytest.raises(RepositoryError, match="repository .*nothing does not exist"):
        open_repository(tmp_path / "nothing")
    with pytest.raises(RepositoryError, match="holds no phobbit run \\(it has no run.json\\)"):
        open_repository(tmp_path)


def test_status_counts_segments_epochs_and_failures_per_rung(repo: Repository) -> None:
    repo.append(row(0, loss=0.3))
    repo.append(row(1, loss=0.1))
    repo.append(row(2, loss=None))
    run = open_repository(repo.path)
    assert run.settings == run_settings(R=9, eta=3, seed=4)
    status = run.status()
    assert (status.segments_done, status.segments_total) == (3, 22)
    # The failed segment trained nothing its row tells: 2 epochs done of 68 (69 planned).
    assert (status.epochs_done, status.epochs_total) == (2, 68)
    assert status.failed == 1
    assert (status.first_start, status.last_end) == (100.0, 202.0)
    first = next(r for r in status.rungs if (r.s, r.rung) == (2, 0))
    assert (first.done, first.n, first.epochs) == (3, 9, 1)
    assert status.best is not None and (status.best.id, status.best.val_loss) == (1, 0.1)
    assert status.driver.running is False and status.seconds_left is None


def test_status_of_an_empty_run_has_no_times_and_no_best(repo: Repository) -> None:
    status = open_repository(repo.path).status()
    assert status.segments_done == 0 and status.first_start is None and status.best is None


def test_driver_is_running_while_a_driver_holds_the_lock_and_ended_after(
    repo: Repository,
) -> None:
    with repo.driver_lock():
        driver = open_repository(repo.path).driver()
        assert driver.running is True and driver.started is not None
        assert driver.describe().startswith("running (pid ")
    driver = open_repository(repo.path).driver()
    assert driver.running is False and driver.ended is not None
    assert driver.describe() == "not running"


def test_a_damaged_driver_json_reads_as_unknown(repo: Repository) -> None:
    (repo.path / "driver.json").write_text("[" * 60_000 + "]" * 60_000)
    assert open_repository(repo.path).driver().name == "unknown"


def test_running_driver_gives_an_estimate_of_time_left(repo: Repository) -> None:
    with repo.driver_lock():
        now = time.time()
        repo.append(row(0, start=now, end=now))
        status = open_repository(repo.path).status()
    assert status.driver.running and status.seconds_left is not None
    assert status.seconds_left >= 0


def test_best_lists_configurations_best_first_with_their_scoring_checkpoint(
    repo: Repository,
) -> None:
    for config_id, loss in [(0, 0.3), (1, 0.1), (2, None)]:
        repo.append(row(config_id, loss=loss))
    run = open_repository(repo.path)
    best = run.best(5)
    assert [(b.id, b.val_loss) for b in best] == [(1, 0.1), (0, 0.3), (2, None)]
    assert best[2].status == "failed" and best[2].checkpoint is None
    data = best[0].to_dict(run.path)
    assert json.loads(json.dumps(data))["trial"] == "2-1"
    assert data["hparams"] == {"x": 0.1} and data["train_time_s"] == 100.0
    assert data["checkpoint"] is None  # no file holds that epoch
    assert len(run.results()) == 3 and len(run.best(1)) == 1


def test_best_names_the_file_that_scores_the_listed_val_loss(tmp_path: Path) -> None:
    from helpers import tuner

    frame = tuner(tmp_path / "repo", n_jobs=1).run(R=3, eta=3)
    run = open_repository(tmp_path / "repo")
    (best,) = run.best(1)
    assert best.trial == frame.index[0] and best.val_loss == frame["Val Loss"].iloc[0]
    assert best.checkpoint == Repository(run.path).scoring_checkpoint(
        best.iteration, best.s, best.id, best.val_loss
    )
    assert best.checkpoint is not None and best.checkpoint.is_file()
    assert (run.path / best.to_dict(run.path)["checkpoint"]) == best.checkpoint


def test_package_exports_open_repository_lazily() -> None:
    assert "open_repository" in phobbit.__all__ and "open_repository" in dir(phobbit)
    assert set(phobbit.__all__) <= set(dir(phobbit))
    assert all(getattr(phobbit, name) is not None for name in phobbit.__all__)
    with pytest.raises(AttributeError):
        phobbit.TrialFailedError  # noqa: B018 - nothing raised it; it is gone


def _modules_loaded(code: str) -> list[str]:
    check = (
        f"{code}\nimport sys\n"
        "print(sorted(m for m in ('pandas', 'joblib', 'loky', 'rich', 'tensorflow', 'keras')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_import_schedule_loads_no_pandas_joblib_rich_or_tensorflow() -> None:
    assert _modules_loaded("import phobbit.core.schedule") == []
    assert _modules_loaded("import phobbit") == []


def test_brackets_command_loads_no_pandas_joblib_rich_or_tensorflow() -> None:
    code = "from phobbit.cli.commands import main\nassert main(['brackets', '--R', '81']) == 0"
    assert _modules_loaded(code) == []


def _train_on(checkpoint: Path) -> None:
    """What a live run does to a configuration it trains on past its best epoch: the
    epoch goes to the best-epoch file, and the checkpoint becomes a later, worse epoch."""
    import os

    from phobbit.storage import checkpoints

    stem = str(checkpoint)[: -len(".json")]
    checkpoints.keep_checkpoint_as_best(str(checkpoint), checkpoints.best_path(stem, ".json"))
    record = json.loads(checkpoint.read_text())
    record["val_losses"].append(record["val_losses"][-1] + 1.0)
    record["metrics"].append({**record["metrics"][-1], "val_loss": record["val_losses"][-1]})
    record["epoch"] += 1
    temp = checkpoint.with_name(checkpoint.name + ".tmp")
    temp.write_text(json.dumps(record))
    os.replace(temp, checkpoint)


@pytest.mark.parametrize("change", ["replaced", "pruned"])
def test_the_scoring_copy_holds_the_listed_epoch_whatever_a_live_run_does_in_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    import shutil

    from helpers import tuner

    from phobbit.execution.simulated import SimulatedExecutor
    from phobbit.storage import checkpoints, view

    tuner(tmp_path / "repo", executor=SimulatedExecutor(2)).run(R=9, eta=3)
    run = open_repository(tmp_path / "repo")
    (best,) = run.best(1)
    listed = run.scoring_file()
    assert listed.name == f"0-{best.s}-{best.id}.json"  # its checkpoint holds its best epoch
    if change == "pruned":
        _train_on(listed)  # now its best-epoch file holds it...
        listed = run.scoring_file()
        assert listed.name.endswith(".best.json")
    copies: list[Path] = []
    copyfile = shutil.copyfile

    def between_finding_and_opening(source: Path, target: Path) -> None:
        if not copies:  # the first open comes after a live run changed the file
            if change == "replaced":
                _train_on(Path(source))
            else:
                Path(source).unlink()  # ...which keep_best deletes
        copies.append(Path(source))
        copyfile(source, target)

    monkeypatch.setattr(view.shutil, "copyfile", between_finding_and_opening)
    if change == "pruned":  # no file holds the epoch any more: said so, in one error
        with pytest.raises(RepositoryError, match="no file holds the best epoch of trial"):
            with run.scoring_copy():
                pass
        return
    with run.scoring_copy() as (source, copy):
        # Not the checkpoint any more (a later epoch): the best-epoch file that took it.
        assert copies == [listed, source] and source.name.endswith(".best.json")
        progress = checkpoints.read_progress(copy)
        assert progress is not None and progress.val_loss == best.val_loss
        assert progress.epoch == best.epochs


def test_rows_no_schedule_of_the_run_makes_are_skipped_by_every_reader_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from helpers import forge_rows, tuner

    repo = tmp_path / "repo"
    honest = tuner(repo, n_jobs=2).run(R=9, eta=3)
    curves = open_repository(repo).curves()
    results, epochs = forge_rows(repo)
    assert len(list(Repository(repo).iter_results())) == 22 + results  # the raw reader
    run = open_repository(repo)
    with caplog.at_level("WARNING", logger="phobbit.skipped"):
        pd.testing.assert_frame_equal(run.results(), honest)
        assert run.best(1)[0].trial == honest.index[0] and run.best(1)[0].val_loss > 0
        status = run.status()
        pd.testing.assert_frame_equal(run.curves(), curves)
        run.results()  # read again: no second warning
    assert (status.segments_done, status.epochs_done) == (22, 69)
    assert status.best is not None and status.best.val_loss == honest["Val Loss"].iloc[0]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"{repo / 'results.csv'}: skipped {results} row(s) that")
    assert "(the first: rung 999 is not one of bracket 2's (0 to 2))" in warnings[0]
    assert warnings[1].startswith(f"{repo / 'epochs.csv'}: skipped {epochs} row(s) that")
    # A resume trains nothing again, counts none of them, and gives the honest table.
    again = tuner(repo, n_jobs=2)
    pd.testing.assert_frame_equal(again.run(R=9, eta=3), honest)
    assert len(list(Repository(repo).iter_results())) == 22 + results


def test_a_resume_with_fewer_iterations_still_reads_the_rows_of_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from helpers import tuner

    repo = tmp_path / "repo"
    both = tuner(repo, n_jobs=2).run(R=3, eta=3, iterations=2)
    with caplog.at_level("WARNING", logger="phobbit.skipped"):
        again = tuner(repo, n_jobs=2).run(R=3, eta=3, iterations=1)
        pd.testing.assert_frame_equal(open_repository(repo).results(), both)
    pd.testing.assert_frame_equal(again, both)
    assert set(both["Iteration"]) == {0, 1} and not caplog.records


# -- issue 22 item 3: status counts what happened ------------------------------------


def test_status_counts_the_epochs_trained_not_those_planned(repo: Repository) -> None:
    # R=9, eta=3, bracket 2: rung 0 trains 1 epoch, rung 1 trains 3 (epochs 1 to 3).
    repo.append(row(0, loss=0.3))
    repo.append(
        row(
            0,
            rung=1,
            start_epoch=1,
            epochs=2,
            loss=0.2,
            note="stopped early by a callback after epoch 2 of 3",
        )
    )
    repo.append(
        row(1, rung=1, start_epoch=1, epochs=3, loss=None)
    )  # failed: trained nothing known
    status = open_repository(repo.path).status()
    assert status.epochs_done == 1 + 1  # not 1 + 2 + 2 planned
    assert status.epochs_total == 69 - (1 + 2 + 2) + status.epochs_done
    assert status.segments_done == 3 and status.failed == 1


def test_status_tells_a_live_driver_whose_lock_file_was_deleted(repo: Repository) -> None:
    with repo.driver_lock():
        (repo.path / ".driver.lock").unlink()
        driver = open_repository(repo.path).driver()
        assert driver.running is True and driver.describe().startswith("running (pid ")


def test_a_dead_drivers_lock_and_driver_json_read_as_not_running(repo: Repository) -> None:
    code = (
        "import os, sys\n"
        "from phobbit.storage.repository import Repository\n"
        "lock = Repository(sys.argv[1]).driver_lock()\n"
        "lock.__enter__()\n"
        "os._exit(0)  # killed: driver.json never says it ended\n"
    )
    subprocess.run([sys.executable, "-c", code, str(repo.path)], check=True, env=_env())
    assert (repo.path / ".driver.lock").exists()
    record = json.loads((repo.path / "driver.json").read_text())
    assert record["token"] and record.get("ended") is None
    assert open_repository(repo.path).driver().running is False


def _env() -> dict[str, str]:
    import os

    return dict(os.environ, PYTHONPATH=str(ROOT))


# -- what the driver ran with (issue 22 items 1, 3 and 5) -----------------------------------


class StatusMidRun:
    """A reporter that reads ``status`` once ``after`` segments have finished, mid-run."""

    def __init__(self, repo: Path, after: int) -> None:
        self.repo, self.after, self.done = repo, after, 0
        self.seen: phobbit.RunStatus | None = None

    def started(self, plan, resumed) -> None:  # noqa: ANN001 - the Reporter protocol's
        pass

    def dispatched(self, segment) -> None:  # noqa: ANN001
        pass

    def finished(self, result) -> None:  # noqa: ANN001
        self.done += 1
        if self.done == self.after:
            self.seen = open_repository(self.repo).status()

    def retrying(self, segment, cause, attempt) -> None:  # noqa: ANN001
        pass

    def replaced(self, count) -> None:  # noqa: ANN001
        pass

    def closed(self) -> None:
        pass


def test_status_of_asha_mid_run_counts_against_its_epoch_budget(tmp_path: Path) -> None:
    from helpers import tuner

    from phobbit.core.budget import Budget

    repo = tmp_path / "repo"
    watch = StatusMidRun(repo, after=6)
    run = tuner(repo, n_jobs=2, search="asha", budget=Budget(max_epochs=120))
    run.reporter = watch
    run.run(R=9, eta=3)
    seen = watch.seen
    assert seen is not None and seen.driver.running
    # Not what ASHA has decided so far (~100%), but its budget.
    assert seen.epochs_total == 120 and 0 < seen.epochs_done < 60
    assert seen.budget is not None and seen.budget.max_epochs == 120
    after = open_repository(repo).status()
    assert not after.driver.running and after.epochs_total == max(120, after.epochs_done)


def test_driver_json_keeps_the_budget_backend_and_workers_after_the_run(tmp_path: Path) -> None:
    from helpers import tuner

    from phobbit.core.budget import Budget
    from phobbit.storage.time_used import TimeLog

    repo = tmp_path / "repo"
    limits = Budget(time_limit="10m", max_epochs=40)
    tuner(repo, n_jobs=2, budget=limits, epoch_seconds=1.0).run(R=9, eta=3)
    record = json.loads((repo / "driver.json").read_text())
    assert record["ended"] is not None and record["token"] is None
    assert record["about"] == {
        "budget": {"max_epochs": 40, "epochs_name": "max_epochs", "time_limit": 600.0},
        "backend": "tensorflow",
        "workers": 2,
        "devices": ["-1", "-1"],  # the simulated executor's CPU slots
    }
    status = open_repository(repo).status()
    about = status.driver.about
    assert about is not None and (about.backend, about.workers) == ("tensorflow", 2)
    used = TimeLog(Repository(repo)).used()
    assert used > 0 and status.time_used == used
    assert status.budget == Budget(600.0, 40, time_used=used)


def test_an_older_driver_json_without_about_reads_as_before(tmp_path: Path) -> None:
    from helpers import tuner

    from phobbit.core.budget import Budget

    repo = tmp_path / "repo"
    tuner(repo, n_jobs=2, search="asha", budget=Budget(max_epochs=200)).run(R=9, eta=3)
    known = open_repository(repo).status()
    driver = repo / "driver.json"
    record = json.loads(driver.read_text())
    del record["about"]
    driver.write_text(json.dumps(record))
    older = open_repository(repo).status()
    assert known.epochs_total == 200 and older.budget is None and older.driver.about is None
    # No budget known: ASHA's total is what it decided, as an older version read it.
    assert older.epochs_total == sum(r.n * r.segment_epochs for r in older.rungs)
    # A damaged about reads as none, field by field.
    driver.write_text(
        json.dumps({**record, "about": {"budget": {"max_epochs": -3}, "workers": "x"}})
    )
    damaged = open_repository(repo).status()
    assert damaged.budget is None and damaged.driver.about is not None
    assert damaged.driver.about.workers is None


def test_status_names_every_device_of_a_run_with_more_workers_than_device_rows(
    tmp_path: Path,
) -> None:
    """Issue 21 (a loose end): ``status`` read the devices from the latest ``DEVICE_ROWS``
    rows alone; a run of 80 GPU workers (a Dask cluster's ids, one row each) named only
    the 64 that wrote those rows. driver.json's ``about`` lists every worker's device."""
    from phobbit.storage.view import DEVICE_ROWS

    repo = Repository(tmp_path / "repo")
    repo.create(run_settings(R=9, eta=3, seed=4, iterations=10))
    workers = DEVICE_ROWS + 16
    for n in range(workers):
        iteration, config_id = divmod(n, 9)
        repo.append(row(config_id, iteration=iteration, gpu=str(n), pid=1000 + n))
    only_rows = open_repository(repo.path).status().devices
    assert len(only_rows) == DEVICE_ROWS  # no driver.json: what the rows name
    about = {"workers": workers, "devices": [str(n) for n in range(workers)]}
    (repo.path / "driver.json").write_text(json.dumps({"pid": 1, "about": about}))
    status = open_repository(repo.path).status()
    assert status.devices == tuple(sorted(str(n) for n in range(workers)))
    # Rows of CPU workers stay "CPU workers"; the about of a Dask driver whose slots are
    # CPU ("-1", its workers pin GPUs on their hosts) adds none.
    repo.append(row(0, iteration=9, gpu="-1", pid=7))
    about = {"workers": 2, "devices": ["-1", "-1"]}
    (repo.path / "driver.json").write_text(json.dumps({"pid": 1, "about": about}))
    assert open_repository(repo.path).status().devices[-1:] == (None,)
