"""Retrying failed configurations (``run(retry_failed=True)``, ``--retry-failed``).

Every test runs the real ``Scheduler``, ``Plan`` and ``train_segment`` on a
``SimulatedExecutor``. The trainable fails chosen configurations while a flag
file exists (``SyntheticTrainable.fails`` and ``fail_flag``): the first run
fails them, the user "fixes the code" (the flag is deleted) and runs again.
"""

from __future__ import annotations

import math
import os
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from helpers import space, tuner
from synthetic import x_curve

from phobbit.core.plan import Plan
from phobbit.core.records import RunSettings, SegmentResult, Status, Tuning
from phobbit.core.space import Space
from phobbit.execution.scheduler import Scheduler
from phobbit.execution.simulated import Fault, SimulatedExecutor
from phobbit.storage.framing import read_framed
from phobbit.storage.repository import Repository, decode_row
from phobbit.testing import SyntheticTrainable, serial_hyperband, synthetic_result

R, ETA, SEED, ITERATIONS = 9, 3, 0, 2


def fails_near_the_best(hparams: dict[str, Any], epoch: int) -> bool:
    """Fails configurations that a serial run promotes (x near 0.3 is ``x_curve``'s best;
    R=9, eta=3, seed 0): one at its first epoch, others mid-way through a segment, after
    a checkpoint, in a first and a later rung, and one in the last rung."""
    x = hparams["x"]
    return (
        (0.35 < x < 0.37 and epoch == 1)  # iteration 0, bracket 2, id 4: rung 0
        or (0.38 < x < 0.39 and epoch == 2)  # iteration 0, bracket 2, id 7: rung 1
        or (0.19 < x < 0.2 and epoch == 2)  # iteration 1, bracket 1, id 1: rung 0
        or (0.29 < x < 0.3 and epoch == 5)  # iteration 0, bracket 0, id 1: the last rung
    )


def settings() -> RunSettings:
    return RunSettings.of(Space(space()), R, ETA, SEED, ITERATIONS)


def drive(
    repository: Repository,
    flag: Path,
    retry_failed: bool = False,
    workers: int = 3,
    fail: dict | None = None,
) -> tuple[Plan, SimulatedExecutor]:
    """One invocation on ``repository``: a fresh plan (a resume), driven to its end."""
    repository.create(settings())
    plan = Plan(Tuning(settings(), repository.checkpoint_stem), workers)
    executor = SimulatedExecutor(workers, fail=fail)
    trainable = SyntheticTrainable(curve=x_curve, fails=fails_near_the_best, fail_flag=str(flag))
    Scheduler(
        trainable, plan, repository, executor, max_retries=1, retry_failed=retry_failed
    ).drive()
    return plan, executor


def serial_promotions() -> dict:
    """The promotions of a serial Hyperband in which nothing failed."""
    tuning = Tuning(settings())
    return serial_hyperband(tuning, lambda s: synthetic_result(s, x_curve)).promotions


def every_row(repository: Repository) -> list[SegmentResult]:
    """Every intact row of ``results.csv``, superseded ones too."""
    return list(read_framed(repository.results_path, decode_row))


def promoted(plan: Plan) -> dict:
    return {key: sorted(ids) for key, ids in plan.promotions().items()}


@pytest.fixture
def flag(tmp_path: Path) -> Path:
    path = tmp_path / "broken"
    path.touch()
    return path


def test_retried_failures_promote_exactly_as_a_run_in_which_they_never_failed(
    tmp_path: Path, flag: Path
) -> None:
    repository = Repository(tmp_path / "repo")
    first, _ = drive(repository, flag)
    failed = [r for r in every_row(repository) if not r.ok]
    assert failed, "the flag failed nothing: the test proves nothing"
    assert promoted(first) != serial_promotions()  # the failures cost promotions

    flag.unlink()  # the user's fix
    again, executor = drive(repository, flag, retry_failed=True)

    assert promoted(again) == serial_promotions()
    rows = every_row(repository)
    assert [r for r in rows if not r.ok] == failed  # what was trained stays recorded
    results = repository.results()
    assert all(r.ok for r in results.values())
    # Each failed segment trained once more, from its rung's start or a later checkpoint;
    # the rows the serial run has are its rows, to the last digit.
    retried = {r.key for r in failed if r.key in {k for k in results}}
    assert retried <= {entry.key for entry in executor.trace}
    serial = serial_hyperband(Tuning(settings()), lambda s: synthetic_result(s, x_curve))
    for key, row in serial.results.items():
        assert results[key].val_loss == pytest.approx(row.val_loss, abs=0, rel=1e-12)
    # Configurations promoted only because another had failed: their rows stay, they train
    # no further (the retry trained only segments of the new promotions).
    now = promoted(again)

    def made(key: tuple[int, int, int, int]) -> bool:
        iteration, s, config_id, rung = key
        return rung == 0 or config_id in now[(iteration, s, rung - 1)]

    displaced = [r.key for r in rows if r.ok and not made(r.key)]
    assert displaced == [(0, 2, 3, 1), (0, 2, 2, 2), (1, 1, 4, 1)]
    assert all(results[key].ok for key in displaced)
    assert all(made(entry.key) for entry in executor.trace)


def test_without_the_option_failed_rows_stay_final_after_a_fix(tmp_path: Path, flag: Path) -> None:
    repository = Repository(tmp_path / "repo")
    first, _ = drive(repository, flag)
    before = every_row(repository)
    flag.unlink()
    again, executor = drive(repository, flag)
    assert executor.trace == []  # nothing trained
    assert every_row(repository) == before
    assert promoted(again) == promoted(first)


def test_a_retry_that_fails_again_keeps_the_newest_failure_and_the_good_rows(
    tmp_path: Path, flag: Path
) -> None:
    repository = Repository(tmp_path / "repo")
    drive(repository, flag)
    good = {k: r for k, r in repository.results().items() if r.ok}
    failed = {k for k, r in repository.results().items() if not r.ok}
    _, executor = drive(repository, flag, retry_failed=True)  # not fixed yet
    assert {e.key for e in executor.trace} == failed  # only the failed ones trained again
    results = repository.results()
    assert {k: r for k, r in results.items() if r.ok} == good
    raw = every_row(repository)
    for key in failed:
        attempts = [r for r in raw if r.key == key]
        assert len(attempts) == 2 and results[key] == attempts[-1]  # the newest says why


def test_a_worker_death_while_a_failed_segment_is_retried_is_no_result_of_it(
    tmp_path: Path, flag: Path
) -> None:
    """The old failed row is read back after the pool broke: it must not stand for the retry."""
    repository = Repository(tmp_path / "repo")
    drive(repository, flag, workers=1)
    victim = next(k for k, r in repository.results().items() if not r.ok)
    flag.unlink()
    died: dict[Any, Fault] = {victim: [BrokenProcessPool("the worker died")]}
    again, _ = drive(repository, flag, retry_failed=True, workers=1, fail=died)
    assert repository.results()[victim].status is Status.OK
    assert promoted(again) == serial_promotions()


def test_retry_failed_through_the_tuner_and_asha(tmp_path: Path, flag: Path) -> None:
    """ASHA replays its decisions: the failed ones are decided segments without a result,
    handed out again; the decisions already recorded stand."""
    trainable = SyntheticTrainable(curve=x_curve, fails=fails_near_the_best, fail_flag=str(flag))
    repo = tmp_path / "repo"
    tuner(repo, trainable=trainable, algorithm="asha", n_jobs=2).run(R=R, eta=ETA)
    repository = Repository(repo)
    failed = {k for k, r in repository.results().items() if not r.ok}
    assert failed
    decisions = (repo / "decisions.csv").read_bytes()
    flag.unlink()
    table = tuner(repo, trainable=trainable, algorithm="asha", n_jobs=2).run(
        R=R, eta=ETA, retry_failed=True
    )
    assert (repo / "decisions.csv").read_bytes().startswith(decisions)
    results = repository.results()
    assert all(results[key].ok for key in failed)
    assert (table["Status"] == "ok").all()


def test_retry_failed_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retry_failed must be True or False, got 'yes'"):
        tuner(tmp_path / "repo").run(R=R, eta=ETA, retry_failed="yes")
    assert not (tmp_path / "repo").exists()


def diverging_curve(hparams: dict[str, Any], epoch: int) -> float:
    """``x_curve``, but NaN at epoch 5 near the best while ``PHOBBIT_TEST_NAN_FLAG`` exists:
    the diverged epoch is checkpointed before the segment fails."""
    flag = os.environ.get("PHOBBIT_TEST_NAN_FLAG", "")
    if 0.29 < hparams["x"] < 0.4 and epoch == 5 and flag and os.path.exists(flag):
        return math.nan
    return x_curve(hparams, epoch)


def test_a_retry_does_not_go_on_from_a_diverged_checkpoint(
    tmp_path: Path, flag: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint that records a NaN loss is no good checkpoint: the retry goes on from the
    best-epoch file or from scratch, and ends where a run that never diverged ends."""
    monkeypatch.setenv("PHOBBIT_TEST_NAN_FLAG", str(flag))
    repository = Repository(tmp_path / "repo")

    def once(retry_failed: bool) -> Plan:
        repository.create(settings())
        plan = Plan(Tuning(settings(), repository.checkpoint_stem), 2)
        trainable = SyntheticTrainable(curve=diverging_curve)
        executor = SimulatedExecutor(2)
        Scheduler(trainable, plan, repository, executor, retry_failed=retry_failed).drive()
        return plan

    once(False)
    failed = [r for r in repository.results().values() if not r.ok]
    assert failed and all("diverged" in r.error for r in failed)
    flag.unlink()
    again = once(True)
    assert promoted(again) == serial_promotions()
    serial = serial_hyperband(Tuning(settings()), lambda s: synthetic_result(s, x_curve))
    results = repository.results()
    for key, row in serial.results.items():
        assert results[key].ok and results[key].val_loss == row.val_loss
