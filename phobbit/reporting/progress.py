"""Progress of a run, built from the scheduler's reports: pure state, no I/O, no rich.

``ProgressTracker`` turns the scheduler's reports into what a person wants on
a job of hours: segments done per bracket and rung, what each device trains
now, the best so far, the elapsed time and an estimate of what is left. The
terminal's views (``phobbit.cli.terminal``) draw it; they serialize access.

The worker does not announce when it starts a segment, so the device of a
running segment is inferred: with every slot busy, a new segment goes to the
worker that has just reported back. Segments of the first round show ``?``
until their worker has reported once.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from phobbit.core.budget import Budget
from phobbit.core.objective import VAL_LOSS, Objective
from phobbit.core.plan import Plan
from phobbit.core.records import Segment, SegmentResult
from phobbit.execution.worker_state import HIDDEN
from phobbit.reporting.plain import SlowWatch, iterations_of, warm_words
from phobbit.storage.view import RungProgress, estimate_left, schedule_progress

UNKNOWN = "?"


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss``, or ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


CPU_PREFIX = "cpu#"  # a CPU worker's device in a display: cpu#0, cpu#1, ...


def device_label(gpu: str) -> str:
    """How a worker's device reads in a display: ``GPU 0``, ``GPU 0,1``, ``CPU 1``, ``CPU``
    or ``GPU ?``.

    ``gpu`` is a GPU id, a group of them (``0,1``: a worker of ``gpus_per_trial`` 2),
    ``-1`` (a CPU worker), or ``cpu#N`` (CPU worker number N).
    """
    if gpu == UNKNOWN:
        return "GPU ?"
    if gpu.startswith(CPU_PREFIX):
        return f"CPU {gpu[len(CPU_PREFIX) :]}"
    return "CPU" if gpu in (HIDDEN, "") else f"GPU {gpu}"


def slot_labels(slots: Sequence[str]) -> list[str]:
    """The display name of each worker slot: ``GPU 0``, ..., CPU workers numbered ``CPU 0``, ..."""
    labels, cpus = [], 0
    for slot in slots:
        if slot in (HIDDEN, ""):
            labels.append(f"CPU {cpus}")
            cpus += 1
        else:
            labels.append(device_label(slot))
    return labels


def slot_summary(slots: Sequence[str], shown: int = 8) -> str:
    """The slots' labels for one line: all of up to ``shown``, else the first few and the last.

    ``CPU 0, CPU 1, CPU 2, ..., CPU 127``: a long pool is not a line of a thousand names.
    GPU groups are set apart by semicolons: ``GPU 0,1; GPU 2,3``.
    """
    labels = slot_labels(slots)
    apart = "; " if any("," in label for label in labels) else ", "
    if len(labels) <= shown:
        return apart.join(labels)
    return apart.join([*labels[: shown - 2], "...", labels[-1]])


class SegmentCost:
    """Seconds a segment takes, ``per_segment + per_epoch * epochs``, learnt from segments
    measured on their workers; pure.

    Only steady segments teach it: the first segment a fresh worker process trains
    carries its start-up (the framework's import, the first traces) and is left out.
    What every segment pays once (building or restoring its model, the first epoch's
    trace) is ``per_segment``, fitted by least squares beside ``per_epoch`` once
    segments of different lengths have finished; until then it is folded into
    ``per_epoch``, which errs long.
    """

    def __init__(self) -> None:
        self.count = 0
        self._epochs = self._seconds = self._squares = self._products = 0.0

    def learn(self, epochs: int, seconds: float) -> None:
        """Learns one steady segment that trained ``epochs`` epochs in ``seconds``."""
        if epochs <= 0 or seconds < 0:
            return
        self.count += 1
        self._epochs += epochs
        self._seconds += seconds
        self._squares += epochs * epochs
        self._products += epochs * seconds

    def fit(self) -> tuple[float, float] | None:
        """``(per_segment, per_epoch)`` seconds; None before any steady segment."""
        if not self.count or self._seconds <= 0:
            return None
        n, e, s = self.count, self._epochs, self._seconds
        spread = n * self._squares - e * e
        if spread > 1e-9 * n * self._squares:  # segments of several lengths
            per_epoch = (n * self._products - e * s) / spread
            per_segment = (s - per_epoch * e) / n
            if per_epoch > 0 and per_segment >= 0:
                return per_segment, per_epoch
        return 0.0, s / e

    def seconds(self, epochs: int) -> float:
        """Seconds a segment of ``epochs`` epochs takes; 0 before any was learnt."""
        fitted = self.fit()
        return 0.0 if fitted is None else fitted[0] + fitted[1] * epochs


@dataclass(frozen=True)
class Running:
    """A segment in flight and the device it is thought to run on."""

    segment: Segment
    gpu: str
    since: float


class ProgressTracker:
    """Progress of a run, built from the scheduler's reports; callers serialize access.

    An endless plan (ASHA) has no total of its own: its progress, and what is
    left, are measured against the run's budget (epochs, time, or both), not
    against the segments decided so far.

    Args:
        slots: the device of each worker slot (a GPU id, or ``-1`` for the CPU), if known.
        clock: the time source (``time.monotonic``); tests pass their own.
        budget: the run's budget, asked for once the run has started
            (``lambda: tuner.budget``); None: an endless plan counts what it decided.
    """

    def __init__(
        self,
        slots: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        budget: Callable[[], Budget] | None = None,
    ) -> None:
        self.clock = clock
        self._budget_of = budget
        self.budget: Budget | None = None  # an endless plan's, once started
        # With one device for every slot (the CPU, or one GPU), nothing needs inferring.
        self._unknown = slots[0] if slots and len(set(slots)) == 1 else UNKNOWN
        self.plan: Plan | None = None
        self.started_at = 0.0
        self.resumed = 0
        self.rungs: list[RungProgress] = []
        self.running: dict[tuple[int, int, int, int], Running] = {}
        self.best: SegmentResult | None = None
        self.objective: Objective = VAL_LOSS  # the plan's, once started
        self._seeded: list[SegmentResult] = []
        # Segments known finished, by rung: the repository's rows at the start and the
        # results reported since. The plan counts a resumed row only once it reaches it
        # (with more --iterations, late), so these keep the counters right before then.
        self._finished: set[tuple[int, int, int, int]] = set()
        self._finished_per_rung: Counter[tuple[int, int, int]] = Counter()
        self.failed = 0
        self.retries = 0
        self.retrained = 0  # segments that retrained epochs of a bad checkpoint
        self.replaced = 0  # worker processes the pool replaced on its own
        self.warm = self.continued = 0  # segments that went on from memory, of those continued
        self.finished_now = 0  # segments trained in this session
        self.epochs_now = 0  # epochs trained in this session
        self.slow = SlowWatch()
        self._idle: list[str] = []
        # Per-rung counters, kept up to date per result rather than rebuilt from the plan.
        self._seen = 0  # the plan's ``recorded`` the counters include
        self._index: dict[tuple[int, int, int], int] = {}
        self.segments_done = self.segments_total = 0
        self.epochs_done = self.epochs_total = 0
        self.rebuilds = 0  # how often the counters were rebuilt from the plan
        # CPU workers are told apart by pid: a worker's number is that of the first
        # segment it was seen to finish (the first round's are numbered as handed out).
        self._cpus = sum(1 for slot in slots if slot in (HIDDEN, ""))
        self._cpu_of_pid: dict[int, str] = {}
        self.several = False  # several iterations: lines name the iteration too
        # What is left is estimated from segment times measured per worker; a segment
        # handed to a worker that has not reported yet (a fresh process) teaches nothing.
        self.cost = SegmentCost()
        self._workers = len(slots)
        self._fresh: set[tuple[int, int, int, int]] = set()

    def started(self, plan: Plan, resumed: int) -> None:
        self.plan, self.resumed, self.started_at = plan, resumed, self.clock()
        self.several = iterations_of(plan) > 1
        if plan.machine.endless and self._budget_of is not None:
            budget = self._budget_of()
            self.budget = budget if budget.limited else None
        if plan.objective != self.objective:  # rank the rows seeded before by the objective
            self.objective, self.best = plan.objective, None
            self.seed_best(self._seeded)
        self._rebuild()

    def dispatched(self, segment: Segment) -> None:
        if self._idle:
            gpu = self._idle.pop(0)
            self._fresh.discard(segment.key)
        else:  # no worker has come back since the pool started: a fresh process takes it
            gpu = self._unknown_device()
            self._fresh.add(segment.key)
        self.running[segment.key] = Running(segment, gpu, self.clock())
        self._workers = max(self._workers, len(self.running))
        if self.plan is not None and (
            self.plan.machine.endless or self.plan.recorded != self._seen
        ):
            # Resumed segments are recorded without a report: count them now. ASHA's
            # rungs grow with each decision.
            self._rebuild()

    def _unknown_device(self) -> str:
        """The device of a segment handed to a worker that has not reported yet."""
        if self._unknown == HIDDEN and self._cpus:
            taken = {r.gpu for r in self.running.values()} | set(self._cpu_of_pid.values())
            for number in range(self._cpus):
                if f"{CPU_PREFIX}{number}" not in taken:
                    return f"{CPU_PREFIX}{number}"
        return self._unknown

    def finished(self, result: SegmentResult) -> None:
        running = self.running.pop(result.key, None)
        fresh = result.key in self._fresh
        self._fresh.discard(result.key)
        if running is not None and result.pid and not fresh:
            self.cost.learn(
                result.epochs - running.segment.start_epoch, self.clock() - running.since
            )
        if result.pid:  # a row the driver wrote for a dead worker frees no known slot
            gpu = result.gpu
            if gpu in (HIDDEN, "") and self._cpus:
                known = running.gpu if running and running.gpu.startswith(CPU_PREFIX) else None
                if result.pid not in self._cpu_of_pid:
                    used = set(self._cpu_of_pid.values())
                    free = [f"{CPU_PREFIX}{n}" for n in range(self._cpus)]
                    free = [d for d in free if d not in used]
                    self._cpu_of_pid[result.pid] = (
                        known if known and known not in used else (free or [known or gpu])[0]
                    )
                gpu = self._cpu_of_pid[result.pid]
            self._idle.append(gpu)
        self.finished_now += 1
        self.epochs_now += result.epochs - result.start_epoch
        self.retrained += result.retrained
        self.continued += result.start_epoch > 0
        self.warm += result.started_warm
        self.slow.finished(result)
        if not result.ok:
            self.failed += 1
        elif self.objective.improves(result, self.best):
            self.best = result
        new = self._learn_finished(result)
        self._count(result, new)

    def _learn_finished(self, result: SegmentResult) -> bool:
        """Notes ``result``'s segment as finished; False if it was known already."""
        if result.key in self._finished:
            return False
        self._finished.add(result.key)
        self._finished_per_rung[(result.iteration, result.s, result.rung)] += 1
        return True

    def seed_done(self, rows: Sequence[SegmentResult]) -> None:
        """Counts the segments the repository holds already (a resumed run), so the
        counters are right from the start, before the plan has reached them."""
        for row in rows:
            if row.final:  # a row that is not final is trained again
                self._learn_finished(row)

    def _count(self, result: SegmentResult, new: bool = True) -> None:
        """Adds a result the plan has just recorded to its rung's counter: O(1) per result."""
        if self.plan is None:
            return
        if self.plan.machine.endless:
            self._rebuild()  # ASHA: its rungs grow with every decision; they are few
            return
        recorded = self.plan.recorded
        if recorded == self._seen:
            return  # a duplicate row: the plan ignored it
        index = self._index.get((result.iteration, result.s, result.rung))
        if recorded != self._seen + 1 or index is None or not new:
            self._rebuild()  # rows recorded without a report in between
            return
        self._seen = recorded
        rung = self.rungs[index]
        self.rungs[index] = dataclasses.replace(rung, done=rung.done + 1)
        self.segments_done += 1
        self.epochs_done += rung.segment_epochs

    def _rebuild(self) -> None:
        """Every rung's counter from the plan: at the start, and after a resume's rows."""
        if self.plan is None:
            return
        progress = list(self.plan.progress())
        iterations = 1 + max(i for i, *_ in progress)
        done = {(i, s, rung): d for i, s, rung, d, _ in progress}
        for key, count in self._finished_per_rung.items():  # those the plan has not reached
            done[key] = max(done.get(key, 0), count)
        self._seen = self.plan.recorded
        self.rungs = schedule_progress(self.plan.schedule, iterations, done)
        if self.plan.machine.endless:  # ASHA: a rung holds what was decided so far
            n = {(i, s, rung): total for i, s, rung, _, total in progress}
            self.rungs = [replace(r, n=n.get((r.iteration, r.s, r.rung), 0)) for r in self.rungs]
        self._index = {(r.iteration, r.s, r.rung): k for k, r in enumerate(self.rungs)}
        self.segments_done = sum(r.done for r in self.rungs)
        self.epochs_done = sum(r.done * r.segment_epochs for r in self.rungs)
        self.segments_total = sum(r.n for r in self.rungs)
        self.epochs_total = sum(r.n * r.segment_epochs for r in self.rungs)
        self.rebuilds += 1

    def rung(self, iteration: int, s: int, rung: int) -> RungProgress | None:
        """The progress of one rung; None before ``started``."""
        index = self._index.get((iteration, s, rung))
        return None if index is None else self.rungs[index]

    def slow_running(self) -> list[Running]:
        """The running segments that take far longer than their peers (hung ones, maybe)."""
        now = self.clock()
        return [r for r in self.running.values() if self.slow.is_slow(r.segment, now - r.since)]

    def retrying(self, segment: Segment) -> None:
        self.running.pop(segment.key, None)
        self._fresh.discard(segment.key)
        self.retries += 1
        self._idle.clear()  # the pool is rebuilt: which worker is free is unknown again
        self._cpu_of_pid.clear()  # ...and its workers are new processes

    def seed_best(self, rows: Sequence[SegmentResult]) -> None:
        """Takes the best of rows already in the repository (a resumed run)."""
        self._seeded = list(rows)
        self.best = self.objective.best_of(self._seeded, self.best)

    def refresh(self) -> None:
        """Counts what the plan has recorded (a resume records done segments without reports)."""
        self._rebuild()

    def elapsed(self) -> float:
        return self.clock() - self.started_at

    def left(self) -> float | None:
        """Estimated seconds left; for an endless plan, until its budget is spent.

        A planned run's is ``planned_left``: the segments still to train at the
        times measured on the workers, none before a steady segment has finished.
        """
        budget = self.budget
        if budget is None:
            return self.planned_left()
        lefts = []
        if budget.max_epochs is not None:
            lefts.append(
                estimate_left(self.epochs_done, budget.max_epochs, self.epochs_now, self.elapsed())
            )
        if budget.time_limit is not None:
            lefts.append(max(0.0, budget.time_limit - budget.time_used - self.elapsed()))
        known = [left for left in lefts if left is not None]
        return min(known) if known else None

    def planned_left(self) -> float | None:
        """Seconds left for the planned segments not yet finished, at ``cost``'s times.

        The work left (what the running ones still need, and every unstarted
        segment) is shared by the workers; the estimate is never shorter than the
        longest chain of rungs a bracket still has to train one after another.
        None until a steady segment has taught ``cost``.
        """
        if self.cost.fit() is None:
            return None
        now = self.clock()
        still: dict[tuple[int, int, int], list[float]] = {}  # per rung, of running segments
        for item in self.running.values():
            segment = item.segment
            seconds = self.cost.seconds(segment.epochs - segment.start_epoch)
            still.setdefault(segment.rung_key, []).append(max(0.0, seconds - (now - item.since)))
        work = sum(sum(left) for left in still.values())
        chains: Counter[tuple[int, int]] = Counter()
        for rung in self.rungs:
            key = (rung.iteration, rung.s, rung.rung)
            unstarted = max(0, rung.n - rung.done - len(still.get(key, ())))
            seconds = self.cost.seconds(rung.segment_epochs)
            work += unstarted * seconds
            # A bracket's rungs train one after another: its chain is the rest of the rung
            # in progress, then one segment of each later rung.
            if unstarted:
                chains[key[:2]] += seconds
            elif key in still:
                chains[key[:2]] += max(still[key])
        chain = max(chains.values(), default=0.0)
        return max(work / max(self._workers, 1), min(chain, work))

    def fraction(self) -> float:
        """How far the run is, from 0 to 1: its planned epochs, or an endless plan's budget
        (the part nearest to spent, of epochs and time)."""
        budget = self.budget
        if budget is None:
            return min(1.0, self.epochs_done / max(self.epochs_total, 1))
        parts = [0.0]
        if budget.max_epochs is not None:
            parts.append(self.epochs_done / budget.max_epochs)
        if budget.time_limit is not None:
            parts.append((budget.time_used + self.elapsed()) / budget.time_limit)
        return min(1.0, max(parts))

    def summary(self) -> str:
        """One line: epochs and segments done, elapsed, left, failures."""
        budget = self.budget
        if budget is not None:  # an endless plan: against its budget
            epochs = f"{self.epochs_done}"
            if budget.max_epochs is not None:
                epochs += f"/{budget.max_epochs}"
            limit = budget.time_limit
            text = (
                f"{epochs} epochs, {100 * self.fraction():.0f}% of the budget, "
                f"{self.segments_done} segments, elapsed {format_duration(self.elapsed())}"
                f"{'' if limit is None else f' of {format_duration(limit)}'}, "
                f"left ~{format_duration(self.left())}"
            )
            return text + self._troubles()
        done, total = self.epochs_done, self.epochs_total
        text = (
            f"{done}/{total} epochs ({100 * done / max(total, 1):.0f}%), "
            f"{self.segments_done}/{self.segments_total} segments, "
            f"elapsed {format_duration(self.elapsed())}, left ~{format_duration(self.left())}"
        )
        return text + self._troubles()

    def final_summary(self) -> str:
        """The last line of a run: what this session trained, and why any planned part did not.

        Once the plan is done nothing is left, whatever the totals: configurations
        that failed promote nothing, so their later rungs never run.
        """
        self._rebuild()
        if self.plan is None or not self.plan.done:
            warm = warm_words(self.warm, self.continued)
            return f"Trained {self.finished_now} segments: {self.summary()}{warm}"
        if not self.finished_now:
            return (
                f"Nothing left to train: all {self.segments_done} segments "
                f"({self.epochs_done} epochs) are in the repository{self._troubles()}"
            )
        done, total = self.epochs_done, self.epochs_total
        text = (
            f"Trained {self.finished_now} segments: {done}/{total} epochs "
            f"({100 * done / max(total, 1):.0f}%), {self.segments_done}/{self.segments_total} "
            f"segments, elapsed {format_duration(self.elapsed())}{self._troubles()}"
            f"{warm_words(self.warm, self.continued)}"
        )
        skipped = self.segments_total - self.segments_done
        if skipped:
            text += (
                f"; the other {skipped} planned segment{'s' * (skipped != 1)} never run: "
                "failed configurations are not promoted"
            )
        return text

    def _troubles(self) -> str:
        text = ""
        if self.failed:
            text += f", {self.failed} failed"
        if self.retries:
            text += f", {self.retries} retried"
        if self.retrained:
            text += f", {self.retrained} retrained from a bad checkpoint"
        if self.replaced:
            text += f", {self.replaced} worker(s) replaced"
        return text
