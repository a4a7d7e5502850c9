"""The library's reporter: progress in plain lines, what ``ParallelHyperband(verbose=...)``
prints by default, with the helpers both reporters share (``format_hparams``, ...).

The terminal's reporters, for the CLI, are in ``phobbit.terminal``.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from phobbit.plan import Plan
from phobbit.records import Segment, SegmentResult
from phobbit.schedule import format_schedule


def format_hparams(hparams: dict) -> str:
    """Hparams in one short line: floats to four significant digits."""
    parts = []
    for name, value in hparams.items():
        text = f"{value:.4g}" if isinstance(value, float) else repr(value)
        parts.append(f"{name}={text}")
    return ", ".join(parts)


def retry_line(segment: Segment, cause: str, attempt: int) -> str:
    """What a reporter says when a trial goes back to the queue because its worker died."""
    where = f"run {segment.s} id {segment.id} rung {segment.rung}"
    if attempt == 0:
        return f"requeued {where}: {cause}; no retry charged"
    return f"worker died running {where} ({cause}); retry {attempt}"


def retrain_line(result: SegmentResult) -> str:
    """What a reporter says of a segment that retrained epochs: its checkpoint was bad."""
    return f"retrained run {result.s} id {result.id} rung {result.rung}: {result.note}"


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
        self._per_epoch: list[float] = []

    def finished(self, result: SegmentResult) -> None:
        """Learns a finished segment's seconds per epoch (rows the driver wrote teach none)."""
        epochs = result.epochs - result.start_epoch
        if result.ok and result.pid and epochs > 0 and result.end >= result.start:
            self._per_epoch.append((result.end - result.start) / epochs)

    def is_slow(self, segment: Segment, seconds: float) -> bool:
        """Whether ``segment``, running for ``seconds``, runs far longer than its peers."""
        if len(self._per_epoch) < SLOW_PEERS:
            return False
        expected = statistics.median(self._per_epoch) * max(
            1, segment.epochs - segment.start_epoch
        )
        return seconds > max(SLOW_FACTOR * expected, SLOW_MIN_S)


def slow_line(segment: Segment, seconds: float) -> str:
    """What a reporter says of a segment that runs far longer than its peers."""
    return (
        f"run {segment.s} id {segment.id} rung {segment.rung} has run {seconds:.0f}s, over "
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
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        verbose: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.clock = clock
        self.best: SegmentResult | None = None
        self._started = 0.0
        self._done = 0
        self._retrained = 0
        self._slow = SlowWatch()
        self._running: dict[tuple[int, int, int, int], tuple[Segment, float]] = {}
        self._flagged: set[tuple[int, int, int, int]] = set()
        # The scheduler reports from the main thread; the slow check also runs from its own.
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _say(self, text: str, level: int = 1) -> None:
        if self.verbose >= level:
            print(text, file=self.stream, flush=True)

    def started(self, plan: Plan, resumed: int) -> None:
        self._started = time.monotonic()
        if plan.describe():
            self._say(f"Algorithm: {plan.describe()}, over the brackets")
        self._say(format_schedule(plan.schedule))
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
            self._say(slow_line(segment, seconds))

    def dispatched(self, segment: Segment) -> None:
        with self._lock:
            self._running[segment.key] = (segment, self.clock())

    def finished(self, result: SegmentResult) -> None:
        with self._lock:
            self._running.pop(result.key, None)
            self._slow.finished(result)
        self.check_slow()
        self._done += 1
        elapsed = time.monotonic() - self._started
        where = f"run {result.s} id {result.id} rung {result.rung}"
        if result.note:
            self._retrained += 1
            self._say(f"[{elapsed:7.1f}s] {retrain_line(result)}")
        if not result.ok:
            self._say(f"[{elapsed:7.1f}s] FAILED {where}: {result.error}")
            return
        if result.val_loss is not None and (
            self.best is None or self.best.val_loss is None or result.val_loss < self.best.val_loss
        ):
            self.best = result
            self._say(
                f"[{elapsed:7.1f}s] best so far: val loss {result.val_loss:.4g} "
                f"({where}, {result.epochs} epochs) {format_hparams(result.hparams)}"
            )
        self._say(
            f"[{elapsed:7.1f}s] {where}: val loss {result.val_loss:.4g} "
            f"after {result.epochs} epochs on GPU {result.gpu}",
            level=2,
        )

    def retrying(self, segment: Segment, cause: str, attempt: int) -> None:
        with self._lock:
            self._running.pop(segment.key, None)
            self._flagged.discard(segment.key)
        self._say(retry_line(segment, cause, attempt))

    def closed(self) -> None:
        self._stop.set()
        elapsed = time.monotonic() - self._started
        retrained = (
            f", {self._retrained} retrained from a bad checkpoint" if self._retrained else ""
        )
        self._say(f"Finished {self._done} segments in {elapsed:.1f}s{retrained}")
