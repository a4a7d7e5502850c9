"""Progress reporting in plain lines: what the library prints, and the CLI on a non-terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from phobbit.plan import Plan
from phobbit.repository import SegmentResult
from phobbit.schedule import format_schedule
from phobbit.worker import Segment


def format_hparams(hparams: dict) -> str:
    """Hparams in one short line: floats to four significant digits."""
    parts = []
    for name, value in hparams.items():
        text = f"{value:.4g}" if isinstance(value, float) else repr(value)
        parts.append(f"{name}={text}")
    return ", ".join(parts)


def retry_line(segment: Segment, cause: str, attempt: int) -> str:
    """What a reporter says when a trial goes back to the queue because its worker died."""
    where = f"run {segment.run} id {segment.id} rung {segment.rung}"
    if attempt == 0:
        return (
            f"requeued {where}: a worker died while it ran, which one is not known yet; "
            "no retry charged"
        )
    return f"worker died running {where} ({cause}); retry {attempt}"


def retrain_line(result: SegmentResult) -> str:
    """What a reporter says of a segment that retrained epochs: its checkpoint was bad."""
    return f"retrained run {result.run} id {result.id} rung {result.rung}: {result.note}"


class PlainReporter:
    """Prints plain lines: the schedule, failures, retrains, each new best so far, retries.

    Args:
        stream: where to print (standard output by default).
        verbose: 0 prints nothing, 1 the schedule, failures, retries and each new
            best, 2 every segment too.
    """

    def __init__(self, stream: TextIO | None = None, verbose: int = 1) -> None:
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.best: SegmentResult | None = None
        self._started = 0.0
        self._done = 0
        self._retrained = 0

    def _say(self, text: str, level: int = 1) -> None:
        if self.verbose >= level:
            print(text, file=self.stream, flush=True)

    def started(self, plan: Plan, resumed: int) -> None:
        self._started = time.monotonic()
        self._say(format_schedule(plan.schedule))
        if resumed:
            self._say(f"Resuming: {resumed} segments are already in the repository")

    def dispatched(self, segment: Segment) -> None:
        pass

    def finished(self, result: SegmentResult) -> None:
        self._done += 1
        elapsed = time.monotonic() - self._started
        where = f"run {result.run} id {result.id} rung {result.rung}"
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
        self._say(retry_line(segment, cause, attempt))

    def closed(self) -> None:
        elapsed = time.monotonic() - self._started
        retrained = (
            f", {self._retrained} retrained from a bad checkpoint" if self._retrained else ""
        )
        self._say(f"Finished {self._done} segments in {elapsed:.1f}s{retrained}")
