"""The scheduler's logic on a virtual clock: crash attribution, retries, timeouts, resume.

Every test runs the real ``Scheduler``, ``Plan`` and ``train_segment`` on a
``SimulatedExecutor``, which raises ``BrokenProcessPool`` /
``TerminatedWorkerError`` on chosen segments and attempts as a loky pool
would: deterministic, in milliseconds. ``test_workers.py`` proves the same
paths with real processes that are killed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import space
from joblib.externals.loky.process_executor import TerminatedWorkerError
from synthetic import x_curve

from phobbit import ParallelHyperband
from phobbit.core.budget import Budget
from phobbit.core.plan import Plan
from phobbit.core.records import RunSettings, Segment, SegmentKey, Tuning
from phobbit.core.space import Space
from phobbit.errors import StorageError
from phobbit.execution.scheduler import (
    KILLED_FOR_OTHER,
    UNKNOWN_CULPRIT,
    Scheduler,
    SilentReporter,
)
from phobbit.execution.simulated import Fault, SimulatedExecutor, TraceEntry
from phobbit.execution.worker import WorkerNotPinnedError, train_segment
from phobbit.reporting.plain import PlainReporter
from phobbit.storage.repository import Repository
from phobbit.storage.results import results_frame
from phobbit.testing import SyntheticTrainable, serial_hyperband

COLUMNS = ["Hparams", "ID", "Run", "Val Loss", "Epochs", "Rung", "Status"]
OOM = (
    "A worker process managed by the executor was unexpectedly terminated. This could be "
    "caused by a segmentation fault while calling the function or by an excessive memory "
    "usage causing the Operating System to kill the worker.\n\nThe exit codes of the "
    "workers are {SIGKILL(-9)}"
)


def one_second(segment: Segment) -> float:
    """Every segment takes 1 s: those handed out together end together, first handed first."""
    return 1.0


class Retries(SilentReporter):
    """A reporter that keeps what ``retrying`` is told: (segment key, cause, attempt)."""

    def __init__(self) -> None:
        self.calls: list[tuple[SegmentKey, str, int]] = []

    def retrying(self, segment: Segment, cause: str, attempt: int) -> None:
        self.calls.append((segment.key, cause, attempt))

    def charged(self) -> list[tuple[SegmentKey, int]]:
        return [(key, attempt) for key, _, attempt in self.calls if attempt]


class Run:
    """A repository, a plan, a simulated executor and a scheduler over them (R=9, eta=3)."""

    def __init__(
        self,
        folder: Path,
        workers: int = 3,
        fail: dict[SegmentKey, Fault] | None = None,
        duration: Callable[[Segment], float] = one_second,
        can_kill_one: bool = False,
        **scheduler: Any,
    ) -> None:
        self.repository = Repository(folder)
        self.repository.create(RunSettings.of(Space(space()), 9, 3, 0, 1))
        self.plan = plan(workers, self.repository)
        self.executor = SimulatedExecutor(workers, duration, fail, can_kill_one=can_kill_one)
        self.reporter = Retries()
        self.scheduler = Scheduler(
            SyntheticTrainable(curve=x_curve),
            self.plan,
            self.repository,
            self.executor,
            reporter=self.reporter,
            **scheduler,
        )

    def __call__(self) -> Run:
        self.scheduler.drive()
        return self

    def table(self) -> pd.DataFrame:
        return results_frame(self.repository.iter_results())[COLUMNS].sort_index()

    def traced(self, key: SegmentKey) -> list[TraceEntry]:
        return [entry for entry in self.executor.trace if entry.key == key]


def plan(workers: int, repository: Repository | None = None) -> Plan:
    checkpoint_of = {} if repository is None else {"checkpoint_of": repository.checkpoint_stem}
    return Plan(Tuning.of(Space(space()), 9, 3, 0, 1, **checkpoint_of), workers)


def handed_out_first(workers: int, count: int = 1) -> list[SegmentKey]:
    """The keys of the first ``count`` segments a fresh plan hands out."""
    fresh = plan(workers)
    return [segment.key for segment in (fresh.next_segment() for _ in range(count)) if segment]


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The table of a serial Hyperband (``phobbit.testing.reference``) of the same trainable."""
    repository = Repository(tmp_path_factory.mktemp("serial"))
    settings = RunSettings.of(Space(space()), 9, 3, 0, 1)
    repository.create(settings)
    trainable, folder = SyntheticTrainable(curve=x_curve), str(repository.path)
    run = serial_hyperband(
        Tuning(settings, repository.checkpoint_stem),
        lambda segment: train_segment(trainable, segment, folder),
    )
    return results_frame(run.results.values())[COLUMNS].sort_index()


# -- crash attribution ------------------------------------------------------------------------


@pytest.mark.parametrize("error", [BrokenProcessPool(OOM), TerminatedWorkerError(OOM)])
def test_a_crash_with_one_segment_in_flight_charges_that_segment(
    tmp_path: Path, serial: pd.DataFrame, error: BrokenProcessPool
) -> None:
    [victim] = handed_out_first(1)
    run = Run(tmp_path, workers=1, fail={victim: [error]})()
    assert run.reporter.charged() == [(victim, 1)]
    cause = run.reporter.calls[0][1]
    assert cause.startswith("the worker process died (exit code SIGKILL(-9))")
    assert [entry.outcome for entry in run.traced(victim)] == ["crashed", "done"]
    pd.testing.assert_frame_equal(run.table(), serial)


def test_a_crash_with_several_in_flight_charges_none_and_runs_them_one_at_a_time(
    tmp_path: Path, serial: pd.DataFrame
) -> None:
    first, *others = handed_out_first(3, 3)
    run = Run(tmp_path, workers=3, fail={first: [TerminatedWorkerError(OOM)]})()
    lost = {first, *others}
    assert run.reporter.charged() == []
    assert {(key, cause) for key, cause, _ in run.reporter.calls} == {
        (key, UNKNOWN_CULPRIT) for key in lost
    }
    reruns = sorted(
        (entry.start, entry.end) for key in lost for entry in run.traced(key) if entry.start > 0
    )
    assert len(reruns) == 3
    assert all(end <= start for (_, end), (start, _) in zip(reruns, reruns[1:], strict=False)), (
        f"suspects overlapped: {reruns}"
    )
    assert run.scheduler._suspects == set(), "a suspect that finished is cleared"
    pd.testing.assert_frame_equal(run.table(), serial)


def test_a_second_crash_with_its_suspect_in_flight_charges_that_suspect(
    tmp_path: Path, serial: pd.DataFrame
) -> None:
    first, *_ = handed_out_first(3, 3)
    twice = [TerminatedWorkerError(OOM), TerminatedWorkerError(OOM)]
    run = Run(tmp_path, workers=3, fail={first: twice})()
    assert run.reporter.charged() == [(first, 1)]
    assert [entry.outcome for entry in run.traced(first)] == ["crashed", "crashed", "done"]
    pd.testing.assert_frame_equal(run.table(), serial)


@pytest.mark.parametrize("queue_ahead", [0, 1])
def test_where_a_death_ends_one_task_alone_the_others_run_on_and_freed_workers_take_new_work(
    tmp_path: Path, serial: pd.DataFrame, queue_ahead: int
) -> None:
    victim, long = handed_out_first(2, 2)
    run = Run(
        tmp_path,
        workers=2,
        fail={victim: [TerminatedWorkerError(OOM)]},
        duration=lambda segment: 50.0 if segment.key == long else 1.0,
        can_kill_one=True,  # Dask: a lost worker loses its own task, nothing else
        queue_ahead=queue_ahead,
    )()
    assert run.reporter.charged() == [(victim, 1)], "one task lost alone names its culprit"
    [crash, rerun] = run.traced(victim)
    [long_one] = run.traced(long)
    assert crash.outcome == "crashed" and long_one.outcome == "done"
    started_meanwhile = [
        entry
        for entry in run.executor.trace
        if entry.key != long and crash.end <= entry.start < long_one.end
    ]
    # The driver did not wait for the long segment before handing out the next ones.
    assert rerun in started_meanwhile and len(started_meanwhile) > 1
    pd.testing.assert_frame_equal(run.table(), serial)


@pytest.mark.parametrize(("max_retries", "tries"), [(0, "once"), (2, "3 times")])
def test_a_trial_whose_worker_dies_more_than_max_retries_times_fails_and_the_run_goes_on(
    tmp_path: Path, serial: pd.DataFrame, max_retries: int, tries: str
) -> None:
    [victim] = handed_out_first(1)
    run = Run(
        tmp_path, workers=1, fail={victim: TerminatedWorkerError(OOM)}, max_retries=max_retries
    )
    run()
    row = run.repository.results()[victim]
    assert not row.ok
    assert row.error.startswith(
        f"its worker died {tries}: the worker process died (exit code SIGKILL(-9))"
    )
    assert len(run.traced(victim)) == max_retries + 1
    name = f"{victim[1]}-{victim[2]}"
    table = run.table()
    assert table.loc[name, "Status"] == "failed"
    # The trial failed at its first rung; everything else trained as a serial run does,
    # up to what the failure changed in its own bracket.
    others = table.drop(index=[n for n in table.index if n.startswith(f"{victim[1]}-")])
    expected = serial.drop(index=[n for n in serial.index if n.startswith(f"{victim[1]}-")])
    pd.testing.assert_frame_equal(others, expected)


def test_a_worker_that_died_while_idle_charges_no_trial(
    tmp_path: Path, serial: pd.DataFrame
) -> None:
    run = Run(tmp_path, workers=2)
    run.executor.break_pool()  # e.g. killed for memory between two trials
    run()
    assert run.reporter.calls == []
    pd.testing.assert_frame_equal(run.table(), serial)


# -- timeouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("can_kill_one", [False, True])
def test_a_hung_segment_is_charged_at_its_timeout_and_the_others_are_requeued_free(
    tmp_path: Path, serial: pd.DataFrame, can_kill_one: bool
) -> None:
    first, *_ = handed_out_first(3, 3)

    def duration(segment: Segment) -> float:
        return 1e9 if segment.key == first else 1.5

    run = Run(
        tmp_path,
        workers=3,
        duration=duration,
        can_kill_one=can_kill_one,
        segment_timeout=4.0,
        max_retries=1,
    )()
    row = run.repository.results()[first]
    assert row.error == "timed out after 4s 2 times (segment_timeout); its worker was killed"
    assert run.reporter.charged() == [(first, 1)]
    spared = [key for key, cause, _ in run.reporter.calls if cause == KILLED_FOR_OTHER]
    # A loky pool loses every worker to stop one; a Dask worker under a nanny, its own.
    assert bool(spared) is not can_kill_one
    assert [entry.end - entry.start for entry in run.traced(first)] == [4.0, 4.0]
    table = run.table()
    assert table.loc[f"{first[1]}-{first[2]}", "Status"] == "failed"
    others = table.drop(index=[n for n in table.index if n.startswith(f"{first[1]}-")])
    expected = serial.drop(index=[n for n in serial.index if n.startswith(f"{first[1]}-")])
    pd.testing.assert_frame_equal(others, expected)


def test_a_run_that_hangs_without_a_timeout_is_an_error_not_a_hang(tmp_path: Path) -> None:
    [victim] = handed_out_first(1)
    run = Run(tmp_path, workers=1, duration=lambda s: 1e9 if s.key == victim else 1.0)
    run.executor.duration = lambda s: float("inf") if s.key == victim else 1.0
    with pytest.raises(RuntimeError, match="never finish"):
        run()


# -- resume and ownership ---------------------------------------------------------------------


def test_a_resumed_run_trains_nothing_twice_and_ends_as_a_serial_run(
    tmp_path: Path, serial: pd.DataFrame
) -> None:
    stop = handed_out_first(2, 8)[-1]
    first = Run(tmp_path, workers=2, fail={stop: [StorageError("no space left")]})
    with pytest.raises(StorageError):
        first()
    written = set(first.repository.results())
    assert written and stop not in written
    second = Run(tmp_path, workers=2)()
    trained = {entry.key for entry in second.executor.trace}
    assert trained.isdisjoint(written)
    assert trained | written == set(second.repository.results())
    pd.testing.assert_frame_equal(second.table(), serial)


class Owned(SimulatedExecutor):
    """A simulated executor that counts what is asked of it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shutdowns: list[bool] = []
        self.kills = 0

    def shutdown(self, kill: bool = False) -> None:
        self.shutdowns.append(kill)
        super().shutdown(kill)

    def kill(self, futures: Any) -> None:
        self.kills += 1
        super().kill(futures)


def test_the_scheduler_leaves_the_executor_it_was_handed_running(tmp_path: Path) -> None:
    executor = Owned(2)
    tuner = ParallelHyperband(
        None,
        space(),
        tmp_path / "repo",
        trainable=SyntheticTrainable(),
        executor=executor,
        verbose=0,
    )
    assert len(tuner.run(R=9, eta=3)) == 17
    assert executor.shutdowns == [] and executor.kills == 0
    # On an error it ends what it had in flight, and still leaves the executor up.
    [victim] = handed_out_first(2)
    failing = Owned(2, fail={victim: [StorageError("no space left")]})
    tuner = ParallelHyperband(
        None,
        space(),
        tmp_path / "other",
        trainable=SyntheticTrainable(),
        executor=failing,
        verbose=0,
    )
    with pytest.raises(StorageError):
        tuner.run(R=9, eta=3)
    assert failing.shutdowns == [] and failing.kills == 1
    assert isinstance(failing.submit(sum, [1, 2]), Future)


def test_the_simulated_clock_gives_the_makespan_of_a_synthetic_trainables_sleeps(
    tmp_path: Path,
) -> None:
    repository = Repository(tmp_path)
    repository.create(RunSettings.of(Space(space()), 9, 3, 0, 1))
    executor = SimulatedExecutor(1)
    trainable = SyntheticTrainable(curve=x_curve, epoch_seconds=2.0, jitter=0.3)
    Scheduler(trainable, plan(1, repository), repository, executor).drive()
    rows = repository.results().values()
    assert executor.makespan() == pytest.approx(
        sum(trainable.segment_time(r.hparams, r.start_epoch, r.epochs) for r in rows)
    )
    assert max(r.end - r.start for r in rows) < 1.0, "epochs slept for real"


# -- worker replacement -----------------------------------------------------------------------


def test_workers_the_pool_replaces_on_its_own_are_counted_reported_and_logged(
    tmp_path: Path, serial: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    replaced = handed_out_first(workers=3, count=2)

    class Told(Retries):
        def __init__(self) -> None:
            super().__init__()
            self.replaced_counts: list[int] = []

        def replaced(self, count: int) -> None:
            self.replaced_counts.append(count)

    run = Run(tmp_path)
    run.executor.replaced_after = set(replaced)
    run.scheduler.reporter = reporter = Told()
    with caplog.at_level("WARNING", logger="phobbit"):
        run()
    assert reporter.replaced_counts[-1] == 2 == run.scheduler.workers_replaced
    assert reporter.replaced_counts == sorted(set(reporter.replaced_counts))
    assert "2 worker process(es) were replaced during this run" in caplog.text
    assert reporter.calls == []  # nothing was retried: a replaced worker had finished its work
    pd.testing.assert_frame_equal(run.table(), serial)


def test_the_plain_lines_say_how_many_workers_were_replaced(tmp_path: Path) -> None:
    out = io.StringIO()
    run = Run(tmp_path)
    run.executor.replaced_after = set(handed_out_first(workers=3, count=1))
    run.scheduler.reporter = PlainReporter(out, verbose=1)
    run()
    assert "a worker process was replaced (1 so far)" in out.getvalue()
    assert "1 worker(s) replaced" in out.getvalue().splitlines()[-1]


class ClosedPipe(io.StringIO):
    """A stream whose reader has left (``| head``): every write fails after the first line."""

    def write(self, text: str) -> int:
        if self.getvalue().count("\n") >= 1:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_plain_lines_to_a_closed_pipe_stop_but_the_run_finishes(
    tmp_path: Path, serial: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    out = ClosedPipe()
    run = Run(tmp_path)
    run.scheduler.reporter = reporter = PlainReporter(out, verbose=2)
    run()  # no BrokenPipeError: a progress line is no reason to stop the run
    assert run.plan.done and run.scheduler.stopped_by == "iterations"
    pd.testing.assert_frame_equal(run.table(), serial)
    assert reporter.output_lost and "Finished" not in out.getvalue()
    assert "progress lines stopped" in caplog.text


# -- one segment queued ahead -----------------------------------------------------------------


def _back_to_back(run: Run) -> int:
    """How many segments started on their worker the moment its previous one ended."""
    by_slot: dict[int, list[TraceEntry]] = {}
    for entry in run.executor.trace:
        by_slot.setdefault(entry.slot, []).append(entry)
    return sum(
        later.start == earlier.end
        for entries in by_slot.values()
        for earlier, later in zip(entries, entries[1:], strict=False)
    )


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_a_segment_queued_ahead_hides_the_round_trip_and_the_table_stays_serial(
    tmp_path: Path, serial: pd.DataFrame, workers: int
) -> None:
    ahead = Run(tmp_path / "ahead", workers=workers)
    ahead.executor.latency = 0.25  # the driver's round trip
    ahead()
    fresh = Run(tmp_path / "fresh", workers=workers, queue_ahead=0)
    fresh.executor.latency = 0.25
    fresh()
    assert _back_to_back(ahead) > 0, "no worker took a queued segment at once"
    assert _back_to_back(fresh) == 0, "without a queue every start waits for the round trip"
    assert ahead.executor.makespan() <= fresh.executor.makespan()
    for run in (ahead, fresh):
        assert run.reporter.calls == []
        pd.testing.assert_frame_equal(run.table(), serial)


def test_at_most_one_segment_waits_in_the_queue_beyond_the_workers(tmp_path: Path) -> None:
    run = Run(tmp_path, workers=2)
    submit, in_flight = run.executor.submit, []

    def counting_submit(*args: Any) -> Future:
        in_flight.append(len(run.scheduler._in_flight) + 1)
        return submit(*args)

    run.executor.submit = counting_submit  # type: ignore[method-assign]
    run()
    assert max(in_flight) == 3


def test_a_queued_segment_times_out_from_when_a_worker_takes_it_not_from_its_submit(
    tmp_path: Path, serial: pd.DataFrame
) -> None:
    # One worker, segments of 1 s, a timeout of 1.5 s: the segment queued behind the
    # first waits 1 s in the queue, then runs 1 s; counted from its submit it would time out.
    run = Run(tmp_path, workers=1, segment_timeout=1.5)()
    assert run.reporter.calls == []
    assert all(entry.outcome == "done" for entry in run.executor.trace)
    pd.testing.assert_frame_equal(run.table(), serial)


def test_a_segment_lost_while_queued_is_neither_charged_nor_suspected(
    tmp_path: Path, serial: pd.DataFrame
) -> None:
    victim, queued = handed_out_first(1, 2)
    run = Run(tmp_path, workers=1, fail={victim: [TerminatedWorkerError(OOM)]})()
    assert [(key, attempt) for key, _, attempt in run.reporter.calls] == [(victim, 1)]
    assert [entry.outcome for entry in run.traced(queued)] == ["done"]
    pd.testing.assert_frame_equal(run.table(), serial)


@pytest.mark.parametrize("ahead", [-1, 1.5, True])
def test_queue_ahead_must_be_a_count(tmp_path: Path, ahead: object) -> None:
    with pytest.raises(ValueError, match="queue_ahead must be an integer >= 0"):
        Run(tmp_path, queue_ahead=ahead)


def test_a_worker_not_pinned_leaves_the_others_running_and_takes_new_work_at_once(
    tmp_path: Path, serial: pd.DataFrame
) -> None:
    # A loky pool (can_kill_one False) is not broken by an unpinned worker: the driver
    # must not wait for everything in flight before it hands out the next segments.
    victim, long = handed_out_first(2, 2)
    run = Run(
        tmp_path,
        workers=2,
        fail={victim: [WorkerNotPinnedError("no free slot among 2 after 30 s")]},
        duration=lambda segment: 50.0 if segment.key == long else 1.0,
    )()
    [unpinned, rerun] = run.traced(victim)
    [long_one] = run.traced(long)
    assert long_one.outcome == "done"
    assert unpinned.end <= rerun.start < long_one.end, "it waited for the long segment"
    pd.testing.assert_frame_equal(run.table(), serial)


def test_a_retry_requeued_after_the_budget_is_spent_is_said_left_for_the_next_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    victim, _ = handed_out_first(2, 2)
    # Two one-epoch segments spend max_epochs=2; the victim's worker dies after that.
    run = Run(
        tmp_path,
        workers=2,
        fail={victim: [TerminatedWorkerError(OOM)]},
        can_kill_one=True,
        budget=Budget(max_epochs=2),
    )()
    assert run.scheduler.stopped_by == "max_epochs"
    assert run.scheduler.left_for_resume == [victim]
    assert "1 segment(s) to retry are left for the next run" in caplog.text
    assert victim not in run.repository.results()
