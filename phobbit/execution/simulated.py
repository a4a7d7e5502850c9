"""A simulated executor: the real scheduler and plan on a virtual clock, in this process.

``SimulatedExecutor`` gives each task a duration from a cost model and runs it
(``fn(*args)``, in this process) when the virtual clock reaches its end, so the
real ``train_segment`` writes real rows to the repository while no time passes.
``wait`` advances the clock to the next completion, never sleeping; ``clock``
returns the virtual time, so segment timeouts are virtual too. Scheduling
benchmarks and the scheduler's tests use it instead of loops of their own.

By default a task's duration is what its trainable says the segment takes
when it is a ``TimedTrainable`` (``phobbit.testing.SyntheticTrainable`` is one:
its ``epoch_seconds`` and ``jitter``); the trainable then runs as its
``instant()`` copy, so it does not sleep for real. Faults are injected
deterministically: ``fail`` maps a segment key to the exception its task
raises, once per attempt. A ``BrokenProcessPool`` (loky's
``TerminatedWorkerError`` is one) is a worker's death: as in a loky pool it
fails every task in flight with the same exception and breaks the pool until
``restart``, unless ``can_kill_one`` (as in Dask, where it fails that task
alone). Each virtual worker holds its models warm in a cache of its own
(``phobbit.execution.warm``), reports itself as ``worker_of(slot)``, and takes a task
submitted with ``prefer`` naming it when it is free. Every task leaves a
``TraceEntry`` (slot, start, end, outcome), from which benchmarks compute
makespans and efficiencies.

Example:
    >>> executor = SimulatedExecutor(workers=4)
    >>> Scheduler(SyntheticTrainable(epoch_seconds=1.0), plan, repository, executor).drive()
    >>> executor.makespan()
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, CancelledError, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from phobbit.core.records import Segment, SegmentKey
from phobbit.core.units import check_int
from phobbit.execution import warm
from phobbit.execution.executor import Executor
from phobbit.execution.worker_state import HIDDEN


@runtime_checkable
class TimedTrainable(Protocol):
    """A trainable that says how long a segment takes, and can train without taking it.

    A ``SimulatedExecutor`` without a ``duration`` puts ``segment_time`` on its
    virtual clock and trains the ``instant()`` copy, so no time passes for real.
    """

    def segment_time(self, hparams: dict[str, Any], initial_epoch: int, epochs: int) -> float:
        """Seconds that training ``hparams`` from ``initial_epoch`` to ``epochs`` takes."""
        ...

    def instant(self) -> Any:
        """This trainable, training without the time it stands for (no sleeps)."""
        ...


Duration = Callable[[Segment], float]
"""A cost model: the virtual seconds a segment takes."""

Fault = BaseException | Sequence[BaseException | None]
"""What a segment's task raises: one exception on every attempt, or one per attempt
(None: that attempt runs; attempts past the end of the list run)."""


@dataclass(frozen=True)
class TraceEntry:
    """One task as it ran on the virtual clock.

    ``outcome`` is ``"done"`` (its function ran: its row is written, or it
    raised), ``"crashed"`` (its worker died: the injected fault), ``"lost"``
    (another worker's death or a kill ended it) or ``"killed"`` (``kill`` ended it).
    """

    slot: int
    key: SegmentKey | None
    start: float
    end: float
    outcome: str


@dataclass(eq=False)
class _Task:
    future: Future
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    segment: Segment | None
    duration: float
    fault: BaseException | None
    slot: int = -1
    start: float = 0.0
    ready: float = 0.0  # when a worker can start it at the earliest
    prefer: tuple[str, int] | None = None

    @property
    def end(self) -> float:
        return self.start + self.duration


class SimulatedExecutor(Executor):
    """Runs tasks in this process on ``workers`` virtual workers and a virtual clock.

    Args:
        workers: how many tasks run at once (CPU slots).
        duration: the cost model, segment -> virtual seconds; by default what the
            ``TimedTrainable`` handed to ``submit`` says (0 for other trainables).
        fail: segment key -> the exception its task raises (see the module's docstring).
        overhead: virtual seconds added to every task (dispatch, result, CSV append).
        latency: virtual seconds from ``submit`` until a worker can start the task
            (the driver's round trip: result back, record, the next submit). A task
            queued before a worker frees starts the moment it does: latency is hidden.
        can_kill_one: whether a worker's death or ``kill`` ends one task alone
            (Dask with nannies) rather than every task in flight (a loky pool).
        replaced_after: segment keys whose worker the pool replaces once the segment
            has run, as loky's memory-leak guard does (counted in ``workers_replaced``).
        cold_start: virtual seconds a continued segment (``start_epoch > 0``) takes
            more on a worker that does not hold its model warm (rebuild, checkpoint
            load, retrace: ``phobbit.execution.warm``).

    Raises:
        RuntimeError: from ``wait``, when it waits on tasks that never finish
            (an infinite duration and no timeout): the simulated run would hang.
    """

    supports_timeout = True
    stages_data_in_repository = False
    fifo_queue = True

    def __init__(
        self,
        workers: int = 1,
        duration: Duration | None = None,
        fail: Mapping[SegmentKey, Fault] | None = None,
        overhead: float = 0.0,
        can_kill_one: bool = False,
        latency: float = 0.0,
        replaced_after: Collection[SegmentKey] = (),
        cold_start: float = 0.0,
    ) -> None:
        check_int("workers", workers, minimum=1)
        self.slots = [HIDDEN] * workers  # CPU slots: displays read them as CPU 0, CPU 1, ...
        self.can_kill_one = can_kill_one
        self.duration, self.overhead, self.latency = duration, overhead, latency
        self.fail = dict(fail or {})
        self.replaced_after = set(replaced_after)
        self.cold_start = cold_start
        self.workers_replaced = 0
        self.trace: list[TraceEntry] = []
        self.attempts: dict[SegmentKey, int] = {}
        self._now = 0.0
        self._order = itertools.count()  # ties on the clock end in the order submitted
        self._running: list[tuple[float, int, _Task]] = []
        self._queued: list[_Task] = []
        self._free = list(range(workers))
        self._broken = False
        # Each virtual worker holds its own models warm, as a worker process does.
        self._caches = [warm.WarmCache(owner=self.worker_of(slot)) for slot in range(workers)]

    # -- what the scheduler calls -------------------------------------------------------

    def submit(
        self, fn: Callable[..., Any], *args: Any, prefer: tuple[str, int] | None = None
    ) -> Future:
        """Queues ``fn(*args)``; it runs when the clock reaches its end.

        ``prefer`` names a virtual worker (``worker_of``): it takes the task if it is free.

        Raises:
            BrokenProcessPool: when a simulated worker died and ``restart`` was not called.
        """
        if self._broken:
            raise BrokenProcessPool("a simulated worker died; restart the executor")
        segment = next((a for a in args if isinstance(a, Segment)), None)
        seconds = self._cost(args, segment) + self.overhead
        args = tuple(_instant(a) for a in args)
        future: Future = Future()
        future.set_running_or_notify_cancel()
        task = _Task(future, fn, args, segment, seconds, self._fault(segment))
        task.ready = self._now + self.latency
        task.prefer = prefer
        self._queued.append(task)
        self._start_queued()
        return future

    def wait(
        self,
        futures: Iterable[Future],
        timeout: float | None = None,
        return_when: str = FIRST_COMPLETED,
    ) -> tuple[set[Future], set[Future]]:
        """Advances the clock to the next completion (or all, with ``ALL_COMPLETED``).

        It stops at ``timeout`` virtual seconds from now if that comes first.
        """
        futures = set(futures)
        deadline = None if timeout is None else self._now + timeout
        while True:
            done = {f for f in futures if f.done()}
            if done == futures or (done and return_when == FIRST_COMPLETED):
                return done, futures - done
            end = self._running[0][0] if self._running else math.inf
            if deadline is not None and end > deadline:
                self._now = max(self._now, deadline)
                return done, futures - done
            if end == math.inf:
                raise RuntimeError(
                    "the simulated run waits on tasks that never finish and has no timeout"
                )
            self._finish_next()

    def kill(self, futures: Collection[Future]) -> None:
        """Ends the tasks of ``futures``; every task in flight unless ``can_kill_one``."""
        chosen = set(futures)
        for _, _, task in list(self._running):
            if not self.can_kill_one or task.future in chosen:
                self._end(task, "killed", BrokenProcessPool("its worker was killed"))
        self._queued = [t for t in self._queued if not self._cancelled(t, chosen)]
        self._start_queued()

    def restart(self) -> None:
        """Mends a broken pool; tasks still in flight are lost, as in a rebuilt loky pool."""
        for _, _, task in list(self._running):
            self._end(task, "lost", BrokenProcessPool("the pool was restarted"))
        for cache in self._caches:  # new worker processes hold nothing
            cache.clear()
        self._broken = False
        self._start_queued()

    def shutdown(self, kill: bool = False) -> None:
        """Runs what is in flight to its end, or ends it at once with ``kill``."""
        if kill:
            self.kill([t.future for _, _, t in self._running] + [t.future for t in self._queued])
            return
        pending = [t.future for _, _, t in self._running] + [t.future for t in self._queued]
        self.wait(pending, None, ALL_COMPLETED)

    def clock(self) -> float:
        """The virtual time: seconds since the executor was made."""
        return self._now

    def break_pool(self) -> None:
        """A worker dies while idle (killed for memory between segments): next submit raises."""
        self._broken = True

    # -- what benchmarks and tests read ---------------------------------------------------

    @staticmethod
    def worker_of(slot: int) -> tuple[str, int]:
        """The (host, pid) that virtual worker ``slot`` reports in its results."""
        return ("simulated", slot)

    def _holds(self, slot: int, segment: Segment | None) -> bool:
        """Whether ``slot`` holds ``segment``'s model warm, or it starts from scratch."""
        if segment is None or segment.start_epoch == 0:
            return True
        return os.path.abspath(segment.checkpoint) in self._caches[slot].held()

    def _slot_of(self, worker: tuple[str, int] | None) -> int | None:
        if worker is None or worker[0] != "simulated":
            return None
        return worker[1]

    def makespan(self) -> float:
        """When the last task ended, in virtual seconds."""
        return max((entry.end for entry in self.trace), default=0.0)

    # -- the simulation -----------------------------------------------------------------------

    def _cost(self, args: tuple[Any, ...], segment: Segment | None) -> float:
        if segment is None:
            return 0.0
        if self.duration is not None:
            return self.duration(segment)
        trainable = next((a for a in args if isinstance(a, TimedTrainable)), None)
        if trainable is None:
            return 0.0
        return trainable.segment_time(segment.hparams, segment.start_epoch, segment.epochs)

    def _fault(self, segment: Segment | None) -> BaseException | None:
        if segment is None:
            return None
        attempt = self.attempts.get(segment.key, 0)
        self.attempts[segment.key] = attempt + 1
        fault = self.fail.get(segment.key)
        if fault is None or isinstance(fault, BaseException):
            return fault
        return fault[attempt] if attempt < len(fault) else None

    def _start_queued(self) -> None:
        while self._queued and self._free:
            task = self._queued.pop(0)
            wanted = self._slot_of(task.prefer)
            slot = wanted if wanted in self._free else self._free[0]
            self._free.remove(slot)
            # The worker is taken now; it idles until the task has reached it.
            task.slot, task.start = slot, max(self._now, task.ready)
            if self.cold_start and not self._holds(slot, task.segment):
                task.duration += self.cold_start
            heapq.heappush(self._running, (task.end, next(self._order), task))

    def _finish_next(self) -> None:
        end, _, task = self._running[0]
        self._now = max(self._now, end)
        if isinstance(task.fault, BrokenProcessPool):
            self._end(task, "crashed", task.fault)
            if not self.can_kill_one:  # one dead worker takes the whole pool down
                self._broken = True
                for _, _, other in list(self._running):
                    self._end(other, "lost", task.fault)
                for queued in self._queued:
                    self._fail(queued.future, task.fault)
                self._queued = []
        elif task.fault is not None:
            self._end(task, "done", task.fault)
        else:
            self._remove(task)
            try:
                with warm.installed(self._caches[task.slot]):
                    value = task.fn(*task.args)
            except BaseException as exc:  # noqa: BLE001 - handed to the scheduler as is
                self._record(task, "done")
                self._fail(task.future, exc)
            else:
                self._record(task, "done")
                task.future.set_result(value)
            if task.segment is not None and task.segment.key in self.replaced_after:
                self.replaced_after.discard(task.segment.key)
                self.workers_replaced += 1
        self._start_queued()

    def _end(self, task: _Task, outcome: str, error: BaseException) -> None:
        self._remove(task)
        self._record(task, outcome)
        self._fail(task.future, error)

    def _remove(self, task: _Task) -> None:
        self._running = [entry for entry in self._running if entry[2] is not task]
        heapq.heapify(self._running)
        self._free.append(task.slot)
        self._free.sort()

    def _record(self, task: _Task, outcome: str) -> None:
        key = task.segment.key if task.segment is not None else None
        self.trace.append(TraceEntry(task.slot, key, task.start, self._now, outcome))

    def _cancelled(self, task: _Task, chosen: set[Future]) -> bool:
        if self.can_kill_one and task.future not in chosen:
            return False
        self._fail(task.future, CancelledError("killed before it started"))
        return True

    @staticmethod
    def _fail(future: Future, error: BaseException) -> None:
        if not future.done():
            future.set_exception(error)


def _instant(arg: Any) -> Any:
    """A timed trainable that does not sleep: the virtual clock stands for its epochs."""
    return arg.instant() if isinstance(arg, TimedTrainable) else arg
