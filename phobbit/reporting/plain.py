"""The library's reporter: progress in plain lines, what ``ParallelHyperband(verbose=...)``
prints by default, with the helpers both reporters share (``format_hparams``, ...).

The terminal's reporters, for the CLI, are in ``phobbit.cli.terminal``.
"""

from __future__ import annotations

import heapq
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TextIO

from phobbit.core.budget import Budget
from phobbit.core.objective import VAL_LOSS, Objective
from phobbit.core.plan import Plan
from phobbit.core.records import Segment, SegmentResult
from phobbit.core.schedule import format_schedule
from phobbit.core.units import format_duration

log = logging.getLogger(__name__)


def format_hparams(hparams: dict) -> str:
    """Hparams in one short line: floats to four significant digits."""
    parts = []
    for name, value in hparams.items():
        text = f"{value:.4g}" if isinstance(value, float) else repr(value)
        parts.append(f"{name}={text}")
    return ", ".join(parts)


METRICS_SHOWN = 3  # a best line names at most this many other metrics, then "+N more"


def metrics_words(metrics: Mapping[str, float], objective: Objective = VAL_LOSS) -> str:
    """The other validation metrics of a best's scoring epoch, for its line: ``,
    val_accuracy 0.9124, val_auc 0.95`` (names as logged, values as ``best`` prints them).

    The objective and the val loss have their place in the line already, and training
    metrics (``loss``, ``accuracy``) are not what ranks; the first ``METRICS_SHOWN`` in
    the order the model logs them, then ``+N more``. ``''`` when there is none, so a
    model that logs only its losses keeps its line as it was.
    """
    names = [
        name
        for name in metrics
        if name.startswith("val_") and name not in ("val_loss", objective.name)
    ]
    shown = [f"{name} {metrics[name]:.4g}" for name in names[:METRICS_SHOWN]]
    if len(names) > METRICS_SHOWN:
        shown.append(f"+{len(names) - METRICS_SHOWN} more")
    return "".join(f", {words}" for words in shown)


def iterations_of(plan: Plan) -> int:
    """How many Hyperband iterations ``plan`` runs."""
    return 1 + max((i for i, *_ in plan.progress()), default=0)


def where(item: Segment | SegmentResult, several: bool = False) -> str:
    """``run S id I rung R``, after ``iteration N`` when the run has several iterations."""
    text = f"run {item.s} id {item.id} rung {item.rung}"
    return f"iteration {item.iteration} {text}" if several else text


def retry_line(segment: Segment, cause: str, attempt: int, several: bool = False) -> str:
    """What a reporter says when a segment goes back to the queue because its worker died."""
    at = where(segment, several)
    if attempt == 0:
        return f"requeued {at}: {cause}; no retry charged"
    return f"worker died running {at} ({cause}); retry {attempt}"


def retrain_line(result: SegmentResult, several: bool = False) -> str:
    """What a reporter says of a segment that retrained epochs: its checkpoint was bad."""
    return f"retrained {where(result, several)}: {result.note}"


def warm_words(warm: int, continued: int) -> str:
    """The end of a summary line: how many continued segments started warm.

    (``phobbit.execution.warm``)
    """
    return f", {warm} of {continued} continued segments started warm" if continued else ""


def replaced_line(count: int) -> str:
    """What a reporter says when the pool replaced a worker process on its own."""
    return (
        f"a worker process was replaced ({count} so far): it imports TensorFlow again; "
        "loky's memory-leak guard does so only with a worker_memory_limit"
    )


BUDGET_STEP = 0.05  # progress lines of an endless plan (ASHA): one per 5% of its budget


def asha_schedule(plan: Plan, budget: Budget | None) -> str:
    """An endless plan's (ASHA's) header: each bracket's rungs and the budget that stops it.

    Hyperband's schedule would give counts and an epoch total that ASHA never has: its
    rungs hold whatever it decides, until the budget is spent.
    """
    lines = [
        f"Run {b.s}: rungs of {', '.join(str(r.epochs) for r in b.rungs)} epochs"
        for b in plan.schedule
    ]
    return "\n".join([*lines, f"Budget: {budget_words(budget)}"])


def budget_words(budget: Budget | None) -> str:
    """``60 epochs``, ``time limit 8h``, ``60 epochs or time limit 8h``; ``none`` for none."""
    parts = []
    if budget is not None and budget.max_epochs is not None:
        parts.append(f"{budget.max_epochs:,} epochs")
    if budget is not None and budget.time_limit is not None:
        parts.append(f"time limit {format_duration(budget.time_limit)}")
    return " or ".join(parts) or "none"


def epochs_done(plan: Plan) -> int:
    """Epochs the plan's finished segments trained, the whole run (resumed rows too)."""
    rungs = {(b.s, k): r.epochs for b in plan.schedule for k, r in enumerate(b.rungs)}
    return sum(
        done * (rungs[(s, rung)] - (rungs[(s, rung - 1)] if rung else 0))
        for _, s, rung, done, _ in plan.progress()
    )


def budget_fraction(budget: Budget, epochs: int, elapsed: float) -> float:
    """How much of ``budget`` is spent, 0 to 1: the part nearest to spent, of epochs and time."""
    parts = [0.0]
    if budget.max_epochs is not None:
        parts.append(epochs / budget.max_epochs)
    if budget.time_limit is not None:
        parts.append(elapsed / budget.time_limit)
    return min(1.0, max(parts))


SLOW_FACTOR = 5.0  # a segment is slow past this many times its peers' time per epoch...
SLOW_MIN_S = 60.0  # ...and past this many seconds: short segments vary too much to tell
SLOW_PEERS = 3  # finished segments needed before anything is called slow
SLOW_CHECK_S = 30.0  # how often plain lines look for slow segments between reports


class SlowWatch:
    """Spots a running segment that takes far longer per epoch than finished ones did.

    A hung segment (a model function or training step that never returns) shows
    as one whose time runs past ``SLOW_FACTOR`` times the median seconds per
    epoch of the segments finished so far; the displays flag it with a hint to
    set a segment timeout.
    """

    def __init__(self) -> None:
        # A running median: the lower half in a max-heap (negated), the upper in a
        # min-heap, so learning a segment is O(log n) and the median O(1), however long the run.
        self._lower: list[float] = []
        self._upper: list[float] = []

    def finished(self, result: SegmentResult) -> None:
        """Learns a finished segment's seconds per epoch (rows the driver wrote teach none)."""
        epochs = result.epochs - result.start_epoch
        if result.ok and result.pid and epochs > 0 and result.end >= result.start:
            value = (result.end - result.start) / epochs
            heapq.heappush(self._lower, -heapq.heappushpop(self._upper, value))
            if len(self._lower) > len(self._upper):
                heapq.heappush(self._upper, -heapq.heappop(self._lower))

    def median(self) -> float | None:
        """The median seconds per epoch of the segments learnt; None before any."""
        if not self._upper:
            return None
        if len(self._upper) > len(self._lower):
            return self._upper[0]
        return (self._upper[0] - self._lower[0]) / 2

    def is_slow(self, segment: Segment, seconds: float) -> bool:
        """Whether ``segment``, running for ``seconds``, runs far longer than its peers."""
        median = self.median()
        if median is None or len(self._upper) + len(self._lower) < SLOW_PEERS:
            return False
        expected = median * max(1, segment.epochs - segment.start_epoch)
        return seconds > max(SLOW_FACTOR * expected, SLOW_MIN_S)


def slow_line(segment: Segment, seconds: float, several: bool = False) -> str:
    """What a reporter says of a segment that runs far longer than its peers."""
    return (
        f"{where(segment, several)} has run {seconds:.0f}s, over "
        f"{SLOW_FACTOR:g}x its peers' time per epoch; if it hangs, a segment timeout "
        "(--segment-timeout, segment_timeout=) kills and retries such segments"
    )


class PlainReporter:
    """Prints plain lines: the schedule, failures, retrains, each new best so far, retries.

    A segment that runs far longer than its peers is flagged once (``SlowWatch``),
    checked at each report and every ``SLOW_CHECK_S`` seconds in between.

    Args:
        stream: where to print (standard output by default).
        verbose: 0 prints nothing, 1 the schedule, failures, retries, slow
            segments and each new best, 2 every segment too.
        clock: the time source (``time.monotonic``); tests pass their own.
        budget: the run's budget, asked for once it started (``lambda: tuner.budget``):
            an endless plan (ASHA) prints it in its header and a progress line each
            time another ``BUDGET_STEP`` of it is spent. None: no such lines.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        verbose: int = 1,
        clock: Callable[[], float] = time.monotonic,
        budget: Callable[[], Budget] | None = None,
    ) -> None:
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.clock = clock
        self._budget_of = budget
        self._endless: tuple[Plan, Budget] | None = None  # an endless plan and its budget
        self._asha_step = 0  # steps of its budget already announced
        self.best: SegmentResult | None = None
        self.objective = VAL_LOSS  # the plan's, once started
        self._started = 0.0
        self._done = 0
        self._retrained = 0
        self._replaced = 0
        self._warm = self._continued = 0
        self._slow = SlowWatch()
        self.several = False  # several iterations: lines name the iteration too
        self._running: dict[tuple[int, int, int, int], tuple[Segment, float]] = {}
        self._flagged: set[tuple[int, int, int, int]] = set()
        # The scheduler reports from the main thread; the slow check also runs from its own.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.output_lost = False  # the stream failed: no more lines, the run goes on

    def _say(self, text: str, level: int = 1) -> None:
        if self.verbose < level or self.output_lost:
            return
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # a reader that left (`| head`), a closed file
            # A progress line is no reason to stop hours of training.
            self.output_lost = True
            log.warning("progress lines stopped: their stream was closed; the run goes on")

    def seed_best(self, rows: Iterable[SegmentResult], objective: Objective) -> None:
        """Starts from the best of the rows a resumed run has recorded, so that a new result
        is said to be the best so far only when it beats those too."""
        self.best = objective.best_of(rows, self.best)

    def started(self, plan: Plan, resumed: int) -> None:
        self._started = time.monotonic()
        self.several = iterations_of(plan) > 1
        self.objective = plan.objective
        if plan.describe():
            self._say(f"Algorithm: {plan.describe()}, over the brackets")
        if plan.machine.endless:
            budget = self._budget_of() if self._budget_of is not None else None
            self._say(asha_schedule(plan, budget))
            if budget is not None and budget.limited:
                self._endless = (plan, budget)
                self._asha_step = self._asha_steps()
        else:
            self._say(format_schedule(plan.schedule, iterations_of(plan)))
        if resumed:
            self._say(f"Resuming: {resumed} segments are already in the repository")
        if self.verbose >= 1:
            self._stop.clear()
            threading.Thread(target=self._watch, name="phobbit-slow-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(SLOW_CHECK_S):
            self.check_slow()

    def check_slow(self) -> None:
        """Says once of each running segment that it runs far longer than its peers."""
        now = self.clock()
        with self._lock:
            slow = [
                (segment, now - since)
                for key, (segment, since) in self._running.items()
                if key not in self._flagged and self._slow.is_slow(segment, now - since)
            ]
            self._flagged |= {segment.key for segment, _ in slow}
        for segment, seconds in slow:
            self._say(slow_line(segment, seconds, self.several))

    def dispatched(self, segment: Segment) -> None:
        with self._lock:
            self._running[segment.key] = (segment, self.clock())

    def finished(self, result: SegmentResult) -> None:
        with self._lock:
            self._running.pop(result.key, None)
            self._slow.finished(result)
        self.check_slow()
        self._done += 1
        self._continued += result.start_epoch > 0
        self._warm += result.started_warm
        elapsed = time.monotonic() - self._started
        at = where(result, self.several)
        self._asha_progress(elapsed)
        if result.retrained:
            self._retrained += 1
            self._say(f"[{elapsed:7.1f}s] {retrain_line(result, self.several)}")
        if not result.ok:
            self._say(f"[{elapsed:7.1f}s] FAILED {at}: {result.error}")
            return
        stopped = " (stopped early)" if result.stopped_early else ""
        if self.objective.improves(result, self.best):
            self.best = result
            self._say(
                f"[{elapsed:7.1f}s] best so far: {self.objective.describe(result)} "
                f"({at}, {result.epochs} epochs{stopped}"
                f"{metrics_words(result.metrics, self.objective)}) "
                f"{format_hparams(result.hparams)}"
            )
        if result.val_loss is not None:
            device = "the CPU" if result.gpu in ("-1", "") else f"GPU {result.gpu}"
            self._say(
                f"[{elapsed:7.1f}s] {at}: {self.objective.describe(result)} "
                f"after {result.epochs} epochs{stopped} on {device}",
                level=2,
            )

    def _asha_steps(self) -> int:
        """How many whole ``BUDGET_STEP``s of an endless plan's budget are spent."""
        if self._endless is None:
            return 0
        plan, budget = self._endless
        spent = budget_fraction(budget, epochs_done(plan), time.monotonic() - self._started)
        return math.floor(spent / BUDGET_STEP + 1e-9)

    def _asha_progress(self, elapsed: float) -> None:
        """An endless plan's progress line, once per ``BUDGET_STEP`` of its budget."""
        steps = self._asha_steps()
        if self._endless is None or steps <= self._asha_step:
            return
        self._asha_step = steps
        plan, budget = self._endless
        epochs = f"{epochs_done(plan):,}"
        if budget.max_epochs is not None:
            epochs += f"/{budget.max_epochs:,}"
        self._say(
            f"[{elapsed:7.1f}s] {epochs} epochs, {100 * steps * BUDGET_STEP:.0f}% of the budget"
        )

    def retrying(self, segment: Segment, cause: str, attempt: int) -> None:
        with self._lock:
            self._running.pop(segment.key, None)
            self._flagged.discard(segment.key)
        self._say(retry_line(segment, cause, attempt, self.several))

    def replaced(self, count: int) -> None:
        self._replaced = count
        self._say(replaced_line(count))

    def closed(self) -> None:
        self._stop.set()
        elapsed = time.monotonic() - self._started
        retrained = (
            f", {self._retrained} retrained from a bad checkpoint" if self._retrained else ""
        )
        replaced = f", {self._replaced} worker(s) replaced" if self._replaced else ""
        warm = warm_words(self._warm, self._continued)
        self._say(f"Finished {self._done} segments in {elapsed:.1f}s{retrained}{replaced}{warm}")
