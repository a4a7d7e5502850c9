"""The driver loop: hands the plan's ready segments to the executor and results back.

It keeps every worker busy (a new segment is dispatched the moment one comes
back; the loop blocks on the futures, it never polls with sleeps), skips
segments already in the repository (a resume), retries the trials of a worker
that died, and tells a reporter what happens. It never imports TensorFlow.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from phobbit.errors import FatalError
from phobbit.plan import Plan
from phobbit.repository import Repository, SegmentResult, this_host
from phobbit.space import Space
from phobbit.trainable import Trainable
from phobbit.worker import Segment, WorkerNotPinnedError, one_line, run_segment


class Executor(Protocol):
    """What the scheduler needs of an executor (``LocalExecutor``, a Dask one, ...)."""

    @property
    def capacity(self) -> int: ...

    def submit(self, fn: Any, *args: Any) -> Future: ...

    def restart(self) -> None: ...

    def shutdown(self, kill: bool = False) -> None: ...


class Reporter(Protocol):
    """Hears what the scheduler does; progress displays implement it."""

    def started(self, plan: Plan, resumed: int) -> None: ...

    def dispatched(self, segment: Segment) -> None: ...

    def finished(self, result: SegmentResult) -> None: ...

    def retrying(self, segment: Segment, cause: str, attempt: int) -> None: ...

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

    def closed(self) -> None:
        pass


def run_settings(space: Space, R: int, eta: int, seed: int, iterations: int) -> dict[str, Any]:
    """What ``run.json`` records: a repository resumes only a run with the same settings."""
    return {
        "R": R,
        "eta": eta,
        "seed": seed,
        "iterations": iterations,
        "space_fingerprint": space.fingerprint(),
        "space": space.to_list(),
    }


class Scheduler:
    """Runs a plan to the end on an executor, writing to a repository.

    Args:
        trainable: what trains a segment (pickled to the workers).
        plan: the brackets to run.
        repository: where rows and checkpoints go; rows already there are not retrained.
        executor: where segments run.
        max_retries: how often a trial whose worker died is retried before it fails.
        reporter: told of progress.
    """

    def __init__(
        self,
        trainable: Trainable,
        plan: Plan,
        repository: Repository,
        executor: Executor,
        max_retries: int = 2,
        reporter: Reporter | None = None,
    ) -> None:
        self.trainable = trainable
        self.plan = plan
        self.repository = repository
        self.executor = executor
        self.max_retries = max_retries
        self.reporter = reporter or SilentReporter()
        self._in_flight: dict[Future, Segment] = {}
        self._crashes: Counter[tuple[int, int, int, int]] = Counter()

    def run(self) -> None:
        """Runs until every bracket has finished; Ctrl-C kills the workers and re-raises."""
        done_before = self.repository.results()
        self.reporter.started(self.plan, resumed=len(done_before))
        try:
            while not self.plan.done:
                self._dispatch(done_before)
                if not self._in_flight:
                    if self.plan.done:
                        break
                    raise FatalError("the plan stalled with nothing running; this is a bug")
                finished, _ = wait(self._in_flight, return_when=FIRST_COMPLETED)
                self._collect(finished)
        except BaseException:
            self.executor.shutdown(kill=True)
            raise
        finally:
            self.reporter.closed()
        self.executor.shutdown()

    def _dispatch(self, done_before: dict[tuple[int, int, int, int], SegmentResult]) -> None:
        while len(self._in_flight) < self.executor.capacity:
            segment = self.plan.next_segment()
            if segment is None:
                return
            row = done_before.get(segment.key)
            if row is not None:
                self.plan.record(row)  # trained before this resume
                continue
            future = self.executor.submit(
                run_segment, self.trainable, segment, str(self.repository.path)
            )
            self._in_flight[future] = segment
            self.reporter.dispatched(segment)

    def _collect(self, finished: set[Future]) -> None:
        broken = False
        for future in finished:
            segment = self._in_flight.pop(future)
            try:
                result = future.result()
            except BrokenProcessPool as exc:
                broken = True
                self._crashed(segment, one_line(exc))
                continue
            except WorkerNotPinnedError as exc:
                broken = True
                self._crashed(segment, one_line(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. the trainable does not pickle
                result = self._failed(segment, one_line(exc))
            self.plan.record(result)
            self.reporter.finished(result)
        if broken:
            # Every trial of a broken pool fails with it; collect them all, then rebuild.
            rest = dict(self._in_flight)
            self._in_flight.clear()
            wait(rest)
            for future, segment in rest.items():
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001
                    self._crashed(segment, one_line(exc))
                    continue
                self.plan.record(result)
                self.reporter.finished(result)
            self.executor.restart()

    def _crashed(self, segment: Segment, cause: str) -> None:
        self._crashes[segment.key] += 1
        attempt = self._crashes[segment.key]
        if attempt > self.max_retries:
            result = self._failed(segment, f"worker died {attempt} times; last: {cause}")
            self.plan.record(result)
            self.reporter.finished(result)
            return
        self.plan.give_back(segment)
        self.reporter.retrying(segment, cause, attempt)

    def _failed(self, segment: Segment, error: str) -> SegmentResult:
        """A failed row written by the driver, for a trial no worker could report."""
        now = time.time()
        result = SegmentResult(
            iteration=segment.iteration, run=segment.run, id=segment.id, rung=segment.rung,
            start_epoch=segment.start_epoch, epochs=segment.epochs, val_loss=None,
            last_val_loss=None, status="failed", error=error, hparams=segment.hparams,
            gpu="", pid=0, host=this_host(), start=now, end=now,
        )  # fmt: skip
        self.repository.append(result)
        return result
