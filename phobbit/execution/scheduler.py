"""The driver loop: hands the plan's ready segments to the executor and results back.

It keeps every worker busy (a new segment is dispatched the moment one comes
back; the loop blocks on the futures, it never polls with sleeps), skips
segments already in the repository (a resume), retries the segments of a worker
that died, and tells a reporter what happens. It never imports TensorFlow.

When one worker dies, loky stops them all: every segment in flight fails with
the same ``TerminatedWorkerError`` and none says which worker died. Charging
them all a retry would fail innocent segments, so the scheduler isolates
*suspects* instead: a crash with one segment in flight charges that one; a
crash with several makes them all suspects without charging anyone; and at
most one suspect is in flight at a time (beside any number of others), so the
next crash with a suspect in flight charges it. A suspect that finishes is
cleared. Requeued segments resume from their last epoch checkpoint, so the
innocent ones lose at most the epoch they were in.

One segment more than there are workers is kept in flight (``queue_ahead``)
while at least half as many segments as workers are ready: it waits in the
pool's queue, and the first worker to finish takes it at once, without waiting
for its result to reach the driver and a new segment to come back (that round
trip was 4-10 ms of every segment). The queued segment counts as started once
a result came back after it was submitted, since a worker was then free to
take it: that is when the reporter hears of it (``dispatched``) and when its
timeout starts. One lost while still queued (the pool broke, or was killed) is
requeued without suspicion: it never ran.

With a ``segment_timeout``, the loop waits no longer than the nearest deadline
(counted from when a segment was handed to a free worker). A segment past it
is stopped by killing its worker, which with loky means every worker: the
timed-out segment is charged like a worker death, the others in flight are
requeued without charge (which one hung is known).

The scheduler calls only what ``phobbit.execution.executor.Executor`` declares, and
counts time with the executor's ``clock`` (a simulated executor's is virtual).
It does not shut down the executor it was handed: its creator does. When the
loop stops on an error (Ctrl-C, a full disk, a takeover), it kills what it has
in flight (``Executor.kill``) and leaves the executor usable.

Workers keep the models they trained warm in memory (``phobbit.execution.warm``), and
each result says which configurations its worker holds. A worker that comes
back with a result while no segment waits queued is known to be free: the
next segment handed out then prefers, within the rung ranked first, a
configuration that worker holds (``Plan.next_segment(prefer=...)``: the
schedule is unchanged), and is submitted with ``prefer=(host, pid)`` (only
when that worker holds models, so an executor never sees it with the cache
off). With a shared FIFO queue (``LocalExecutor``) that worker is the one that
takes it, since it is the one free when the driver submits. A segment queued
ahead (before any worker is free) prefers a configuration no worker holds, and
none is queued while every ready segment of the rung ranked first is warm on
some worker: its holder takes it when it comes back. In simulation
(``benchmarks/warm.py --simulate``) this keeps the hits of dispatching without
a queue and the makespan of queueing. ``warm_starts`` and ``continued`` count
the hits.

Before the first segment of a ``drive`` is handed out, a trainable that can
check its input (``ChecksInput``: the Keras one) checks the configuration of that
segment against the first batch of the data, in a worker of the same pool: a
mismatch stops the run as bad input before anything trains. With
``retry_failed``, the segments whose rows say they failed are trained again
(their new rows supersede the failed ones when rows are read): the plan replays
without their failures, so it promotes exactly as a run in which they never
failed, and a configuration promoted only because of a failure is not handed
out again.

Every segment carries the driver's fencing token (``phobbit.storage.fence``): should
another driver take the repository over, this driver's workers are refused
their next write and end, and this driver stops with ``FencedOutError``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable
from concurrent.futures import ALL_COMPLETED, Future
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from phobbit.core.budget import Budget
from phobbit.core.plan import Plan
from phobbit.core.records import ConfigKey, Segment, SegmentKey, SegmentResult, Status
from phobbit.core.units import check_int, format_duration
from phobbit.errors import FatalError, FencedOutError, StaleDriverError
from phobbit.execution.executor import Executor
from phobbit.execution.trainable import ChecksInput, Trainable
from phobbit.execution.worker import (
    WorkerNotPinnedError,
    check_input,
    one_line,
    train_segment,
)
from phobbit.storage.checkpoints import BestConfigurations
from phobbit.storage.decisions import DecisionLog
from phobbit.storage.repository import Repository, this_host
from phobbit.storage.time_used import TimeLog

BROKEN_POOL_WAIT_S = 60.0
"""How long the driver waits for a broken pool to fail the rest of its segments (loky
fails them all at once) before it ends them itself: it never waits for ever."""
TIME_LOG_EVERY_S = 30.0
"""How often (on the executor's clock) a run records the training time it has used, so a
driver killed outright loses at most that much of its time limit's accounting."""


class Reporter(Protocol):
    """Hears what the scheduler does; progress displays implement it."""

    def started(self, plan: Plan, resumed: int) -> None: ...

    def dispatched(self, segment: Segment) -> None: ...

    def finished(self, result: SegmentResult) -> None: ...

    def retrying(self, segment: Segment, cause: str, attempt: int) -> None:
        """A segment goes back to the queue because a worker died or was killed.

        ``attempt`` is the retry it is charged, or 0 for a segment requeued
        without charge: it was in flight when some worker died and which one
        is not known yet, or its worker was killed to stop another that hung.
        """

    def replaced(self, count: int) -> None:
        """The executor replaced worker processes on its own (loky's memory-leak guard);
        ``count`` of them so far in this run. Each new one imports TensorFlow again."""

    def closed(self) -> None: ...


class SilentReporter:
    """A reporter that says nothing."""

    def started(self, plan: Plan, resumed: int) -> None:
        pass

    def dispatched(self, segment: Segment) -> None:
        pass

    def finished(self, result: SegmentResult) -> None:
        pass

    def retrying(self, segment: Segment, cause: str, attempt: int) -> None:
        pass

    def replaced(self, count: int) -> None:
        pass

    def closed(self) -> None:
        pass


def _crash_cause(exc: BaseException) -> str:
    """Why a worker died, in one short line: loky's exit codes when it gives them."""
    if isinstance(exc, WorkerNotPinnedError):
        return one_line(exc)
    text = " ".join(str(exc).split())
    codes = text[text.find("{") : text.find("}") + 1] if "exit codes" in text else ""
    where = f" (exit code {codes.strip('{}')})" if codes else ""
    return (
        f"the worker process died{where}: out of memory, a segfault, a kill or os._exit "
        "in user code"
    )


UNKNOWN_CULPRIT = "a worker died while it ran, which one is not known yet"
KILLED_FOR_OTHER = "its worker was killed to stop a segment that timed out"
log = logging.getLogger(__name__)


class Scheduler:
    """Runs a plan to the end on an executor, writing to a repository.

    Args:
        trainable: what trains a segment (pickled to the workers).
        plan: the brackets to run.
        repository: where rows and checkpoints go; rows already there are not retrained.
        executor: where segments run; it stays up when the run ends (its creator
            shuts it down).
        max_retries: how often a segment whose worker died (or that timed out) is
            retried before it fails.
        reporter: told of progress.
        segment_timeout: seconds a segment may run, counted from when it is handed
            to a free worker; past it, its worker is killed and it is charged like
            a worker death. None (the default) waits for ever.
        fence: the fencing token this driver holds the repository with
            (``Repository.driver_lock``); None when nothing else can take over
            (tests that drive a scheduler alone).
        keep_best: while the run goes on, delete the best-epoch files of
            configurations that are not among the best ``keep_best`` and not
            training now; None keeps them all.
        budget: stops dispatching once spent (``phobbit.core.budget``); an endless
            plan (ASHA) needs one. Its ``time_used`` is read from the repository
            (``time_used.csv``): the time earlier invocations trained counts against
            ``time_limit``, and this one's is recorded there as it goes.
        queue_ahead: segments kept queued in the pool beyond one per worker, so a
            worker that finishes starts the next at once; 0 hands a segment out
            only to a free worker.
        prefer_warm: hand a free worker the configurations it holds warm when the
            schedule allows (see the module's docstring); False ignores them.
        retry_failed: train again the segments whose row in the repository says they
            failed (the user fixed the data or the code); their new rows supersede the
            failed ones, and the plan decides with them. False: a failed row is final.

    Attributes:
        stopped_by: after ``drive``, what ended the run: ``"iterations"`` (the plan
            finished, or ASHA's default budget), ``"max_epochs"`` or ``"time_limit"``.
        warm_starts: segments of this ``drive`` that went on from a model their
            worker held in memory.
        continued: segments of this ``drive`` that went on from an earlier rung's
            checkpoint (``start_epoch > 0``): the ones that could start warm.
        left_for_resume: after a ``drive`` a budget stopped, the segments that went back
            to the queue to be retried (their worker died, or was killed) and did not
            run again before it was spent: the next invocation trains them. No
            retry starts past a budget (a time limit is a promise not to start work).
    """

    def __init__(
        self,
        trainable: Trainable,
        plan: Plan,
        repository: Repository,
        executor: Executor,
        max_retries: int = 2,
        reporter: Reporter | None = None,
        segment_timeout: float | None = None,
        fence: str | None = None,
        keep_best: int | None = None,
        budget: Budget | None = None,
        queue_ahead: int = 1,
        prefer_warm: bool = True,
        retry_failed: bool = False,
    ) -> None:
        check_int("queue_ahead", queue_ahead, minimum=0)
        self.trainable = trainable
        self.plan = plan
        self.repository = repository
        self.executor = executor
        self.max_retries = max_retries
        self.reporter = reporter or SilentReporter()
        self.segment_timeout = segment_timeout
        self.fence = fence
        self._in_flight: dict[Future, Segment] = {}
        self._since: dict[Future, float] = {}  # when each future was handed to a worker
        self._queued: list[Future] = []  # in the pool's queue, no worker free yet; oldest first
        # Only a pool whose free worker takes the oldest queued task (``fifo_queue``):
        # elsewhere a queued segment could wait behind a long one and be timed out.
        self.queue_ahead = queue_ahead if executor.fifo_queue else 0
        self._crashes: Counter[SegmentKey] = Counter()
        self._suspects: set[SegmentKey] = set()
        self._best = None if keep_best is None else BestConfigurations(keep_best)
        if plan.machine.endless and not (budget and budget.limited):
            raise ValueError(f"{type(plan.machine).__name__} never ends by itself: give a budget")
        self._time_log = TimeLog(repository)
        # The time limit is the run's, over all its invocations: what they used counts.
        self.budget = dataclasses.replace(budget or Budget(), time_used=self._time_log.used())
        self._invocation = uuid.uuid4().hex  # names this drive's lines in time_used.csv
        self._time_logged = 0.0  # this drive's elapsed time when it last recorded it
        self.stopped_by: str | None = None
        self._decisions = DecisionLog(repository)
        self._epochs = 0  # epochs trained and in flight, the whole run: see phobbit.core.budget
        self._counted: set[SegmentKey] = set()
        self._began: float | None = None  # when the first segment was handed out
        self._replaced_before = 0
        self.workers_replaced = 0
        """Worker processes the executor replaced on its own during ``drive``."""
        self.prefer_warm = prefer_warm
        self.warm_starts = 0
        self.continued = 0
        self._holds: dict[tuple[str, int], set[ConfigKey]] = {}  # per worker, what it holds
        self._config_of: dict[str, ConfigKey] = {}  # absolute checkpoint stem -> configuration
        self._free: list[tuple[str, int]] = []  # workers known free, no segment sent to them yet
        self.retry_failed = retry_failed
        # The failed rows being retried: read back while their segment trains again (a
        # worker died), such a row is no result of this attempt.
        self._stale: dict[SegmentKey, SegmentResult] = {}
        self._checked_input = False
        self._pool_broke = False  # set by ``_outcomes`` when a result says the pool broke
        self._requeued: set[SegmentKey] = set()  # given back to be retried, no row yet
        self.left_for_resume: list[SegmentKey] = []

    def drive(self) -> None:
        """Runs until every bracket has finished; Ctrl-C kills what is in flight and re-raises."""
        done_before = self.repository.results()
        if self.retry_failed:
            self._stale = {key: row for key, row in done_before.items() if not row.ok}
            done_before = {key: row for key, row in done_before.items() if row.ok}
        self._counted = set(done_before)
        self._epochs = sum(r.epochs - r.start_epoch for r in done_before.values())
        self._began = None
        self.reporter.started(self.plan, resumed=len(done_before))
        self._replaced_before = self.executor.workers_replaced
        self.workers_replaced = 0
        self.warm_starts = self.continued = 0
        self._free.clear()
        try:
            while not self.plan.done:
                self._dispatch(done_before)
                if not self._in_flight:
                    if self.plan.done or self._spent():
                        break
                    raise FatalError("the plan stalled with nothing running; this is a bug")
                finished, _ = self.executor.wait(self._in_flight, self._until_deadline())
                self._count_replaced()
                self._collect(finished)
                self._stop_overdue()
        except BaseException:
            if self._in_flight:
                self.executor.kill(list(self._in_flight))
            self._log_time(quietly=True)
            raise
        finally:
            if self.workers_replaced:
                log.warning(
                    "%d worker process(es) were replaced during this run (each imported "
                    "TensorFlow again); LocalExecutor(worker_memory_limit=None) keeps them",
                    self.workers_replaced,
                )
            self.reporter.closed()
        self._log_time()
        self.stopped_by = "iterations" if self.plan.done else self._spent()
        self.left_for_resume = sorted(self._requeued) if self.stopped_by != "iterations" else []
        if self.left_for_resume:
            log.warning(
                "%d segment(s) to retry are left for the next run (the budget was spent "
                "before they ran again): %s",
                len(self.left_for_resume),
                ", ".join(map(str, self.left_for_resume)),
            )
        log.info("the run stopped: %s", self.budget.describe(self.stopped_by or "iterations"))

    def _spent(self) -> str | None:
        """The budget that is spent (no new segment may start); None while none is."""
        return self.budget.spent(self.elapsed(), self._epochs)

    def elapsed(self) -> float:
        """Seconds of training time this ``drive`` has used: on the executor's clock, from
        when its first segment was handed out (starting workers is not counted)."""
        return 0.0 if self._began is None else self.executor.clock() - self._began

    def _log_time(self, quietly: bool = False) -> None:
        """Records in the repository the training time this ``drive`` has used so far.

        ``quietly``: on the way out of an error, a failure to write (a full disk, a
        takeover) is logged, not raised over the error that stopped the run.
        """
        elapsed = self.elapsed()
        if self._began is None or elapsed == self._time_logged:
            return
        try:
            self._time_log.append(self._invocation, elapsed, fence=self.fence)
        except (FatalError, StaleDriverError) as exc:
            if not quietly:
                if isinstance(exc, StaleDriverError):
                    raise self._fenced_out() from None
                raise
            log.warning("could not record the time this run used: %s", one_line(exc))
            return
        self._time_logged = elapsed

    def _count_replaced(self) -> None:
        """Tells the reporter of worker processes the executor replaced on its own."""
        replaced = self.executor.workers_replaced - self._replaced_before
        if replaced != self.workers_replaced:
            self.workers_replaced = replaced
            self.reporter.replaced(replaced)

    def _dispatch(self, done_before: dict[SegmentKey, SegmentResult]) -> None:
        held_back: list[Segment] = []
        suspect_in_flight = any(seg.key in self._suspects for seg in self._in_flight.values())
        while (
            len(self._in_flight) < self.executor.capacity + self.queue_ahead and not self._spent()
        ):
            if len(self._in_flight) >= self.executor.capacity and not self._worth_queueing():
                break
            worker, prefer = self._preference()
            if prefer is None:
                break  # what is ready is warm on busy workers: leave it for them
            segment = self.plan.next_segment(prefer)
            if segment is None:
                break
            for decision in self.plan.take_decisions():
                try:
                    self._decisions.append(decision, fence=self.fence)
                except StaleDriverError:
                    raise self._fenced_out() from None
            row = done_before.get(segment.key)
            if row is not None:
                self.plan.record(row)  # trained before this resume
                continue
            if segment.key in self._suspects:
                if suspect_in_flight:
                    held_back.append(segment)
                    continue
                suspect_in_flight = True
            if segment.key not in self._counted:
                self._counted.add(segment.key)
                self._epochs += segment.epochs - segment.start_epoch
            if not self._checked_input:
                self._check_input(segment)
            if worker is not None:
                self._free.remove(worker)
            self._submit(segment, worker if prefer else None)
        for segment in held_back:
            self.plan.give_back(segment)

    def _check_input(self, segment: Segment) -> None:
        """Runs the trainable's input check (``ChecksInput``) on ``segment``'s configuration
        in a worker, once, before the first segment of this ``drive`` is handed out.

        The first configuration the plan trains is checked against the first batch
        of the data: a mismatch stops the run as bad input (``InputError``, raised
        here) before any segment trains. It runs in the pool's own workers, so it
        costs no import of its own; anything else that goes wrong with it (its worker
        died, it hung past ``segment_timeout``, the check itself broke) leaves it to
        training to find, as without the check.
        """
        self._checked_input = True
        if not isinstance(self.trainable, ChecksInput):
            return
        try:
            future = self.executor.submit(check_input, self.trainable, dict(segment.hparams))
        except BrokenProcessPool:
            self.executor.restart()  # a worker died while idle: as in ``_submit``
            self._free.clear()
            return
        done, _ = self.executor.wait([future], self.segment_timeout)
        if not done:
            self.executor.kill([future])
            self.executor.wait([future], return_when=ALL_COMPLETED)
            log.warning("the input check ran past segment_timeout; training goes on without it")
            return
        error = future.exception()
        if isinstance(error, FatalError):
            raise error  # bad input (a mismatch, a dataset function's result), a full disk
        if isinstance(error, BrokenProcessPool):
            self.executor.restart()
            self._free.clear()
        if error is not None:
            log.warning("the input check did not run (%s); training goes on", one_line(error))

    def _worth_queueing(self) -> bool:
        """Whether to queue a segment ahead now: only while ready work is plentiful.

        A queued segment is chosen before the results in flight are known; when
        few segments are ready, the next result often makes ready the one that
        matters most (a promotion on the longest chain), and a segment queued
        ahead would take its worker. In simulation (``benchmarks/simulation.py
        --queue``) queueing only while half as many segments as workers are
        ready keeps the whole gain at W <= 8 and loses nothing at W=16, where
        queueing always lost 0.08 of the bound.
        """
        if self.budget.time_limit is not None:
            return False  # a queued segment would start when a worker frees, maybe past it
        return 2 * len(self.plan.policy) >= self.executor.capacity

    def _preference(self) -> tuple[tuple[str, int] | None, Collection[ConfigKey] | None]:
        """The free worker the next segment goes to when one is known, and the
        configurations to prefer for it; None: queue nothing ahead now.

        A segment that starts now goes to a known free worker that holds a ready
        configuration of the rung ranked first, else to the one free longest, and
        prefers what that worker holds. One queued ahead (every worker busy) would
        go to whichever worker frees first: it prefers what no worker holds, and
        none is queued when every segment of the rung ranked first is warm on some
        worker (its holder takes it when it comes back, and the next result is at
        most one round trip away).
        """
        starts_now = len(self._in_flight) - len(self._queued) < self.executor.capacity
        if starts_now and not self._free:
            return None, ()
        anywhere = set().union(*self._holds.values())
        first = self._first_rung() if self.prefer_warm and anywhere else set()
        if starts_now:
            worker = next((w for w in self._free if self._holds.get(w, set()) & first), None)
            worker = worker or self._free[0]
            return worker, self._holds.get(worker, set()) if self.prefer_warm else set()
        if not first:
            return None, ()
        return None, (first - anywhere) or None

    def _first_rung(self) -> set[ConfigKey]:
        """The configurations of the ready segments of the rung the plan ranks first."""
        ready = self.plan.ready()
        if not ready:
            return set()
        rung = max(ready, key=self.plan.policy.priority).rung_key
        return {(s.iteration, s.s, s.id) for s in ready if s.rung_key == rung}

    def _submit(self, segment: Segment, worker: tuple[str, int] | None = None) -> None:
        """Submits ``segment``, preferring ``worker`` (which holds models warm) if given."""
        args = (train_segment, self.trainable, segment, str(self.repository.path), self.fence)
        # Named only for a worker that holds models: with the cache off, no executor sees it.
        options = {} if worker is None else {"prefer": worker}
        self._config_of[os.path.abspath(segment.checkpoint)] = (
            segment.iteration,
            segment.s,
            segment.id,
        )
        try:
            future = self.executor.submit(*args, **options)
        except BrokenProcessPool:
            # A worker died while idle (e.g. killed for memory): no segment is to blame.
            self.executor.restart()
            self._free.clear()
            future = self.executor.submit(*args)
        if self._began is None:
            self._began = self.executor.clock()  # the workers are up: the input check ran
        self._in_flight[future] = segment
        if len(self._in_flight) - len(self._queued) <= self.executor.capacity:
            self._start(future)
        else:
            self._queued.append(future)

    def _start(self, future: Future) -> None:
        """``future``'s segment is handed to a free worker: its timeout counts from now."""
        self._since[future] = self.executor.clock()
        self.reporter.dispatched(self._in_flight[future])

    def _take(self, future: Future) -> Segment:
        """Removes ``future`` from what is in flight; returns its segment."""
        self._since.pop(future, None)
        if future in self._queued:
            self._queued.remove(future)
        return self._in_flight.pop(future)

    def _freed(self, result: SegmentResult | None = None) -> None:
        """A worker came back with ``result``: it has taken the oldest queued segment,
        or, with none queued, it is free (known by name when the result says so)."""
        if self._queued:
            self._start(self._queued.pop(0))
        elif result is not None and result.warm_worker is not None:
            self._free.append(result.warm_worker)

    def _never_started(self, future: Future) -> bool:
        """Whether ``future`` was still in the pool's queue: no worker has run it."""
        return future in self._queued

    def _until_deadline(self) -> float | None:
        """Seconds until the first segment in flight runs past its timeout; None: no timeout."""
        if self.segment_timeout is None or not self._since:
            return None
        first = min(self._since.values()) + self.segment_timeout
        return max(0.0, first - self.executor.clock())

    def _stop_overdue(self) -> None:
        """Kills the workers of segments past their timeout and charges those segments."""
        if self.segment_timeout is None:
            return
        now = self.executor.clock()
        overdue = [
            f
            for f, since in self._since.items()
            if not f.done() and since + self.segment_timeout <= now
        ]
        if not overdue:
            return
        self.executor.kill(overdue)
        self.executor.wait(overdue, return_when=ALL_COMPLETED)
        self._free.clear()  # which workers were restarted is not known
        cause = (
            f"timed out after {format_duration(self.segment_timeout)} (segment_timeout); "
            "its worker was killed"
        )
        done = self.repository.results()
        for future in [f for f in self._in_flight if f.done()]:
            queued = self._never_started(future)
            segment = self._take(future)
            if future in overdue:
                if not self._record_if_done(done, segment):
                    self._crashed(segment, cause, timed_out=True)
                if self.executor.can_kill_one:
                    self._freed()  # its worker alone was restarted, and takes the queued one
                continue
            error = future.exception()
            if error is None:
                self._record(future.result())
                if not queued:
                    self._freed(future.result())
            elif isinstance(error, FatalError):
                raise error
            elif isinstance(error, StaleDriverError):
                raise self._fenced_out()
            elif not self._record_if_done(done, segment):
                self._give_back(segment)  # innocent, and known to be: no charge
                if not queued:  # one that never left the queue was never reported running
                    self.reporter.retrying(segment, KILLED_FOR_OTHER, 0)

    def _collect(self, finished: Iterable[Future]) -> None:
        self._pool_broke = False
        lost = self._outcomes(finished)
        if lost:
            # A worker of a driver that was replaced ends at its first write: say so.
            self._check_fence()
            # Only a broken pool fails every segment in flight; a worker that found no
            # slot (WorkerNotPinnedError) is alive and free, and the others run on.
            if self._pool_broke and not self.executor.can_kill_one:
                # A broken pool fails every segment in flight: collect them all, then rebuild.
                # Elsewhere (Dask) the others run on, and the freed workers take new work.
                rest = dict(self._in_flight)
                _, hung = self.executor.wait(rest, BROKEN_POOL_WAIT_S, ALL_COMPLETED)
                if hung:  # the pool failed them all at once before: end them, no waiting
                    self.executor.kill(list(hung))
                    self.executor.wait(hung, BROKEN_POOL_WAIT_S, ALL_COMPLETED)
                rest = {f: s for f, s in rest.items() if f.done()}
                lost += self._outcomes(rest)
                # Kill the old workers before reading which rows they wrote: one still
                # finishing could otherwise append its row after the read, and its segment
                # would run twice.
                self.executor.restart()
                self._free.clear()
                self._holds.clear()
            self._blame(lost)

    def _outcomes(self, finished: Iterable[Future]) -> list[tuple[Segment, str, bool]]:
        """Records what finished; returns the segments whose worker died, with the cause
        and whether a worker had taken them (False: lost while still queued)."""
        lost = []
        # Results first: each frees a worker, which has taken a queued segment by then.
        ordered = sorted(finished, key=lambda f: isinstance(f.exception(), BrokenProcessPool))
        for future in ordered:
            queued = self._never_started(future)
            segment = self._take(future)
            try:
                result = future.result()
            except BrokenProcessPool as exc:
                self._pool_broke = True
                if self.executor.can_kill_one and not queued:
                    self._freed()  # its worker alone died, and its place takes the queued one
                lost.append((segment, _crash_cause(exc), not queued))
                continue
            except WorkerNotPinnedError as exc:
                if not queued:
                    self._freed()  # that worker is alive, and free
                lost.append((segment, _crash_cause(exc), True))
                continue
            except FatalError:
                raise  # e.g. a full disk: stop the run, it resumes once fixed
            except StaleDriverError:
                raise self._fenced_out() from None  # a Dask worker was refused its write
            except Exception as exc:  # noqa: BLE001 - e.g. the trainable does not pickle
                result = self._failed(segment, one_line(exc))
            self._record(result)
            if not queued:
                self._freed(result)
        return lost

    def _blame(self, lost: list[tuple[Segment, str, bool]]) -> None:
        """Charges the segment that killed its worker, when it is known; requeues the rest.

        A segment lost while still queued never ran: it goes back without suspicion.
        Where a death ends one task alone (``can_kill_one``), each lost segment is its
        own worker's culprit and is charged.
        """
        done = self.repository.results()
        ran = []
        for segment, cause, started in lost:
            if self._record_if_done(done, segment):
                continue
            if started:
                ran.append((segment, cause))
            else:
                self._give_back(segment)
        if self.executor.can_kill_one:
            for segment, cause in ran:  # each lost task names the worker that died running it
                self._crashed(segment, cause)
            return
        lost = ran
        suspects = [s for s, _ in lost if s.key in self._suspects]
        culprit = lost[0][0] if len(lost) == 1 else suspects[0] if len(suspects) == 1 else None
        for segment, cause in lost:
            self._suspects.add(segment.key)  # cleared once it finishes, or fails for good
            if culprit is not None and segment.key == culprit.key:
                self._crashed(segment, cause)
            else:
                self._give_back(segment)  # an innocent until proven otherwise: no charge
                log.info("requeued segment %s: %s", segment.key, UNKNOWN_CULPRIT)
                self.reporter.retrying(segment, UNKNOWN_CULPRIT, 0)

    def _record_if_done(self, done: dict[SegmentKey, SegmentResult], segment: Segment) -> bool:
        """Records a lost segment whose worker wrote its row before the pool broke."""
        row = done.get(segment.key)
        if row is not None and row == self._stale.get(segment.key):
            row = None  # the failed row this run retries, not one of this attempt
        if row is not None:
            self._record(row)
        return row is not None

    def _give_back(self, segment: Segment) -> None:
        """Puts ``segment`` back in the queue to be tried again."""
        self._requeued.add(segment.key)
        self.plan.give_back(segment)

    def _record(self, result: SegmentResult) -> None:
        self._requeued.discard(result.key)
        if self.elapsed() - self._time_logged >= TIME_LOG_EVERY_S:
            self._log_time()
        self._note_warm(result)
        self._suspects.discard(result.key)
        self.plan.record(result)
        self._prune_best(result)
        self.reporter.finished(result)

    def _note_warm(self, result: SegmentResult) -> None:
        """Counts a warm start, and notes which configurations the result's worker holds."""
        if result.start_epoch > 0:
            self.continued += 1
            self.warm_starts += result.started_warm
        config = (result.iteration, result.s, result.id)
        for held in self._holds.values():
            held.discard(config)  # trained again elsewhere: another worker's copy is stale
        if result.warm_worker is not None:
            held = {self._config_of[s] for s in result.warm_held if s in self._config_of}
            if held:
                self._holds[result.warm_worker] = held
            else:
                self._holds.pop(result.warm_worker, None)

    def _prune_best(self, result: SegmentResult) -> None:
        """Deletes the best-epoch files of configurations this result pushed out of the best.

        A configuration training now keeps its file: its worker may be writing it.
        Should it stay out of the best, its next result drops it.
        """
        if self._best is None:
            return
        config = (result.iteration, result.s, result.id)
        training = {(s.iteration, s.s, s.id) for s in self._in_flight.values()}
        for dropped in self._best.offer(config, self.plan.objective.row_score(result)):
            if dropped not in training:
                try:
                    self.repository.drop_best_checkpoint(*dropped, fence=self.fence)
                except StaleDriverError:
                    raise self._fenced_out() from None

    def _crashed(self, segment: Segment, cause: str, timed_out: bool = False) -> None:
        self._crashes[segment.key] += 1
        attempt = self._crashes[segment.key]
        if attempt > self.max_retries:
            tries = "once" if attempt == 1 else f"{attempt} times"
            if timed_out:
                assert self.segment_timeout is not None
                error = (
                    f"timed out after {format_duration(self.segment_timeout)} {tries} "
                    "(segment_timeout); its worker was killed"
                )
            else:
                error = f"its worker died {tries}: {cause}"
            log.warning("segment %s failed: %s", segment.key, error)
            self._record(self._failed(segment, error))
            return
        log.warning("retrying segment %s (retry %d): %s", segment.key, attempt, cause)
        self._give_back(segment)
        self.reporter.retrying(segment, cause, attempt)

    def _failed(self, segment: Segment, error: str) -> SegmentResult:
        """A failed row written by the driver, for a segment no worker could report."""
        now = time.time()
        result = segment.result(
            val_loss=None,
            last_val_loss=None,
            status=Status.FAILED,
            error=error,
            gpu="",
            pid=0,
            host=this_host(),
            start=now,
            end=now,
        )
        try:
            self.repository.append(result, fence=self.fence)
        except StaleDriverError:
            raise self._fenced_out() from None
        return result

    def _check_fence(self) -> None:
        """Raises ``FencedOutError`` when another driver has taken the repository over."""
        if self.fence is not None and not self.repository.holds(self.fence):
            raise self._fenced_out()

    def _fenced_out(self) -> FencedOutError:
        log.warning("the repository's fencing token is no longer this driver's: stopping")
        who = self.repository.driver_record()
        if not who or who.get("pid") == os.getpid():
            return FencedOutError(
                f"{self.repository.path / 'driver.json'} no longer names this run (deleted or "
                "edited?), so its workers may not write; this run stops. Run the same command "
                "again to resume"
            )
        return FencedOutError(
            f"repository {self.repository.path} was taken over by another phobbit (pid "
            f"{who.get('pid')} on {who.get('host')}) while this run trained; this run stops, "
            "and its workers wrote nothing after the takeover. Let that run finish, or stop "
            "it and run the same command again"
        )
