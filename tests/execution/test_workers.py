"""Workers that die and user code that fails: the trial says why, the run finishes."""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_settings
from helpers import (
    STEPS,
    DyingTrainable,
    HangingTrainable,
    bad_curve,
    exiting_curve,
    interrupting_curve,
    space,
    tuner,
    x_curve,
)

from phobbit.core.budget import Budget
from phobbit.core.plan import Plan
from phobbit.core.records import Segment, Tuning
from phobbit.core.space import Space
from phobbit.errors import InputError, StorageError
from phobbit.execution.executor import LocalExecutor
from phobbit.execution.resources import Resources
from phobbit.execution.scheduler import Scheduler
from phobbit.execution.trainable import Losses
from phobbit.execution.worker import train_segment
from phobbit.storage.repository import Repository
from phobbit.testing import SyntheticTrainable

COLUMNS = ["Hparams", "ID", "Run", "Val Loss", "Epochs", "Rung", "Status"]


def dying(tmp_path: Path, victim: str, **kwargs) -> DyingTrainable:
    tally = tmp_path / "tally"
    tally.mkdir(parents=True)
    return DyingTrainable(
        curve=x_curve,
        epoch_seconds=0.005,
        steps_per_epoch=STEPS,
        victim=victim,
        tally_dir=str(tally),
        **kwargs,
    )


def deaths(tmp_path: Path) -> int:
    return len(list((tmp_path / "tally").iterdir()))


def test_worker_that_always_dies_is_retried_max_retries_times_then_failed_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainable = dying(tmp_path, victim="0-2-1", how="exit")
    results = tuner(tmp_path / "repo", real=True, trainable=trainable, gpus=[0, 1], verbose=1).run(
        9, 3
    )
    out = capsys.readouterr().out
    # Charged: only the victim, once per retry. A death with two trials in flight charges
    # nobody (which one died is not known), so the victim may run once more than that.
    charged = [line for line in out.splitlines() if line.startswith("worker died running")]
    assert len(charged) == 2 and all("run 2 id 1 rung 0" in line for line in charged)
    assert charged[-1].endswith("retry 2")
    requeued = out.count("requeued run 2 id 1 rung 0")
    assert requeued <= 1 and deaths(tmp_path) == 1 + 2 + requeued  # max_retries=2
    assert "FAILED run 2 id 1 rung 0: its worker died 3 times" in out
    victim = results.loc["2-1"]
    assert victim["Status"] == "failed" and pd.isna(victim["Val Loss"])
    assert victim["Error"].startswith("its worker died 3 times: the worker process died")
    assert "exit code" in victim["Error"] and "\n" not in victim["Error"]
    assert results.index[-1] == "2-1", "a failed trial ranks last"
    others = results.drop(index="2-1")
    assert others["Status"].eq("ok").all(), "no innocent trial was charged"
    # Every other trial is what a run whose victim failed in user code gives.
    failing = dying(tmp_path / "ref", victim="0-2-1", how="raise")
    reference = tuner(tmp_path / "ref" / "repo", real=True, trainable=failing, n_jobs=1).run(9, 3)
    pd.testing.assert_frame_equal(
        others[COLUMNS].sort_index(), reference.drop(index="2-1")[COLUMNS].sort_index()
    )


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_worker_killed_mid_segment_is_retried_from_its_last_epoch_and_loses_nothing(
    tmp_path: Path, how: str
) -> None:
    # Bracket 0 trains 3 configurations 9 epochs each: the victim dies after 4 of them.
    trainable = dying(tmp_path, victim="0-0-1", how=how, deaths=1, after_epochs=4)
    results = tuner(tmp_path / "repo", real=True, trainable=trainable, n_jobs=2).run(9, 3)
    assert deaths(tmp_path) == 1
    reference = tuner(tmp_path / "ref", real=True, n_jobs=1).run(9, 3)
    pd.testing.assert_frame_equal(results[COLUMNS].sort_index(), reference[COLUMNS].sort_index())
    for index, row in results.iterrows():
        run, config_id = index.split("-")
        state = json.loads(
            (tmp_path / "repo" / "models" / f"0-{run}-{config_id}.json").read_text()
        )
        # The optimizer-like count: no epoch trained twice, even by the retried victim.
        assert (state["epoch"], state["iterations"]) == (row["Epochs"], row["Epochs"] * STEPS)
    rows = list(Repository(tmp_path / "repo").iter_results())
    assert len(rows) == len({r.key for r in rows}), "no segment written twice"


def test_user_code_failures_say_why_rank_last_reach_the_console_and_the_run_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tuner(
        tmp_path / "repo", real=True, curve=bad_curve, n_jobs=2, verbose=1, seed=1
    ).run(9, 3)
    failed = results[results["Status"] == "failed"]
    errors = set(failed["Error"])
    assert any(e.startswith("ValueError: user code broke on x=") for e in errors)
    assert any(e == "val loss is nan at epoch 1; the model diverged" for e in errors)
    assert any(e == "val loss is inf at epoch 1; the model diverged" for e in errors)
    assert not any("\n" in e for e in errors)
    assert failed["Val Loss"].isna().all()
    assert list(results["Status"]) == sorted(results["Status"], key=lambda s: s != "ok")
    assert (results["Status"] == "ok").any()
    out = capsys.readouterr().out
    for _, row in failed.iterrows():
        assert f"FAILED run {row['Run']} id {row['ID']} rung 0: {row['Error']}" in out
    assert "Finished" in out


def test_user_code_that_calls_sys_exit_fails_its_trial_not_the_worker(tmp_path: Path) -> None:
    results = tuner(tmp_path / "repo", real=True, curve=exiting_curve, n_jobs=1).run(9, 3)
    failed = results[results["Status"] == "failed"]
    assert len(failed) > 0 and set(failed["Error"]) == {"SystemExit: 3"}


def _segment(hparams: dict, checkpoint: Path, start: int = 0, epochs: int = 1) -> Segment:
    return Segment(
        iteration=0,
        s=0,
        id=0,
        rung=0,
        hparams=hparams,
        start_epoch=start,
        epochs=epochs,
        checkpoint=str(checkpoint),
    )


def test_a_long_error_is_cut_to_one_short_line(tmp_path: Path) -> None:
    Repository(tmp_path).create(run_settings(1))

    def long_curve(hparams: dict, epoch: int) -> float:
        raise RuntimeError("x" * 5000 + "\n" + "y" * 5000)

    result = train_segment(
        SyntheticTrainable(curve=long_curve), _segment({}, tmp_path / "c"), str(tmp_path)
    )
    assert result.status == "failed" and len(result.error) <= 500 and "\n" not in result.error
    assert result.error.startswith("RuntimeError: xxx") and result.error.endswith("...")


def not_a_model(hparams: dict) -> object:
    return "a string"


def uncompiled_model(hparams: dict) -> object:
    import keras

    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])


@pytest.mark.keras
@pytest.mark.parametrize(
    ("model_function", "error"),
    [
        (not_a_model, "TypeError: model function returned str, not a compiled keras.Model"),
        (uncompiled_model, "TypeError: model function returned a model that is not compiled"),
    ],
)
def test_model_function_returning_no_compiled_keras_model_fails_the_trial(
    tmp_path: Path, model_function, error: str
) -> None:
    from phobbit.keras_adapter.trainable import KerasTrainable

    data = (([[0.0, 1.0]] * 4, [0.0] * 4), ([[1.0, 0.0]] * 2, [1.0] * 2))
    trainable = KerasTrainable(model_function, load_dataset=lambda: data)
    Repository(tmp_path).create(run_settings(1))
    result = train_segment(trainable, _segment({}, tmp_path / "c"), str(tmp_path))
    assert result.status == "failed" and result.error.startswith(error)
    assert [r.error for r in Repository(tmp_path).iter_results()] == [result.error]


def test_a_full_disk_stops_the_run_without_failing_the_trial_and_a_rerun_resumes(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    full = dying(tmp_path, victim="0-1-2", how="disk-full")
    with pytest.raises(StorageError, match=r"no space left .* run the same command again"):
        tuner(repo, real=True, trainable=full, n_jobs=2).run(9, 3)
    assert all(row.ok for row in Repository(repo).iter_results()), "no trial was failed"
    results = tuner(repo, real=True, n_jobs=2).run(9, 3)
    reference = tuner(tmp_path / "ref", real=True, n_jobs=2).run(9, 3)
    pd.testing.assert_frame_equal(results[COLUMNS].sort_index(), reference[COLUMNS].sort_index())


@pytest.mark.parametrize("written", ["short", "raises"])
def test_a_row_the_disk_cannot_hold_stops_with_a_message_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str
) -> None:
    repository = Repository(tmp_path)
    repository.create(run_settings(1))
    result = train_segment(SyntheticTrainable(), _segment({}, tmp_path / "c"), str(tmp_path))

    def write(fd: int, data: bytes) -> int:
        if written == "short":
            return len(data) // 2
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("phobbit.storage.repository.os.write", write)
    with pytest.raises(StorageError, match=r"(is the disk full|No space left on device)"):
        repository.append(result)


def test_a_worker_killed_while_idle_breaks_no_trial_and_the_pool_is_rebuilt(
    tmp_path: Path,
) -> None:
    executor = LocalExecutor(n_jobs=1)
    idle = executor.submit(os.getpid).result()
    os.kill(idle, signal.SIGKILL)  # e.g. the out-of-memory killer, between two trials
    time.sleep(0.5)  # loky marks the pool broken; the next submit raises at once
    repository = Repository(tmp_path / "repo")
    repository.create(run_settings(3))
    plan = Plan(Tuning.of(Space(space()), R=3, eta=3, checkpoint_of=repository.checkpoint_stem))
    trainable = SyntheticTrainable(curve=x_curve, steps_per_epoch=STEPS)
    try:
        Scheduler(trainable, plan, repository, executor).drive()
    finally:
        executor.shutdown()  # the scheduler leaves an executor it is handed to its owner
    assert plan.done and all(row.ok for row in repository.iter_results())
    assert len(repository.results()) == plan.total_segments()


def test_keyboard_interrupt_or_another_base_exception_in_user_code_fails_its_trial_only(
    tmp_path: Path,
) -> None:
    results = tuner(tmp_path / "repo", real=True, curve=interrupting_curve, n_jobs=2, seed=1).run(
        9, 3
    )
    failed = results[results["Status"] == "failed"]
    errors = set(failed["Error"])
    assert any(e.startswith("KeyboardInterrupt: user code stopped on x=") for e in errors)
    assert "UserStop: a BaseException of its own" in errors
    assert (results["Status"] == "ok").any()
    assert len(results) == 17  # every configuration of R=9, eta=3 got its row


TIMEOUT_S = 8.0  # many times what a synthetic segment and a worker's start-up take


def test_a_hung_segment_is_killed_at_its_timeout_retried_then_failed_and_the_run_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tally = tmp_path / "tally"
    tally.mkdir()
    hanging = HangingTrainable(
        curve=x_curve, steps_per_epoch=STEPS, victim="0-1-2", tally_dir=str(tally)
    )
    repo = tmp_path / "repo"
    results = tuner(
        repo,
        real=True,
        trainable=hanging,
        n_jobs=2,
        max_retries=1,
        segment_timeout=TIMEOUT_S,
        verbose=1,
    ).run(9, 3)
    assert len(list(tally.iterdir())) == 2  # max_retries + 1 attempts
    victim = results.loc["1-2"]
    assert victim["Status"] == "failed" and pd.isna(victim["Val Loss"])
    assert victim["Error"] == "timed out after 8s 2 times (segment_timeout); its worker was killed"
    out = capsys.readouterr().out
    assert "worker died running run 1 id 2 rung 0 (timed out after 8s" in out
    assert "FAILED run 1 id 2 rung 0: timed out after 8s 2 times" in out
    # Every other trial is what a run whose victim failed in user code gives.
    others = results.drop(index="1-2")
    assert others["Status"].eq("ok").all()
    failing = dying(tmp_path / "ref", victim="0-1-2", how="raise")
    reference = tuner(tmp_path / "ref" / "repo", real=True, trainable=failing, n_jobs=1).run(9, 3)
    pd.testing.assert_frame_equal(
        others[COLUMNS].sort_index(), reference.drop(index="1-2")[COLUMNS].sort_index()
    )
    # The failed row is final: running again trains nothing, and does not hang.
    records = tmp_path / "records"
    records.mkdir()
    again = tuner(repo, records, real=True, n_jobs=2, segment_timeout=TIMEOUT_S).run(9, 3)
    assert list(records.iterdir()) == []
    pd.testing.assert_frame_equal(again, results)


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "10 minutes", "0s", True])
def test_a_segment_timeout_that_is_not_a_positive_duration_is_refused(value: object) -> None:
    with pytest.raises(InputError, match="segment_timeout must be"):
        tuner("unused", real=True, segment_timeout=value)


@pytest.mark.parametrize(
    ("value", "seconds"), [(90, 90.0), ("90", 90.0), ("8h", 28800.0), ("1h30m", 5400.0)]
)
def test_segment_timeout_reads_the_duration_grammar_of_time_limit(
    value: object, seconds: float
) -> None:
    assert Resources(segment_timeout=value).segment_timeout == seconds
    assert Budget(time_limit=value).time_limit == seconds


class OddLogs:
    """A trainable of one's own whose logs hold more than numbers (a note, a matrix)."""

    def train(self, hparams: dict, checkpoint: str, initial_epoch: int, epochs: int) -> Losses:
        logs = {"val_loss": 0.5, "val_accuracy": 0.75, "val_note": "x", "val_cm": [[1, 2]]}
        return Losses([0.5] * (epochs - initial_epoch), history=[logs] * epochs)


def test_logs_that_are_no_numbers_do_not_fail_a_segment_that_trained(tmp_path: Path) -> None:
    Repository(tmp_path).create(run_settings(1))
    result = train_segment(OddLogs(), _segment({}, tmp_path / "c"), str(tmp_path))
    assert result.status == "ok", result.error
    assert result.metrics == {"val_loss": 0.5, "val_accuracy": 0.75}  # the numbers alone
