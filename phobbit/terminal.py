"""The terminal's reporters, for the CLI: a rich live display on a terminal
(``LiveReporter``), plain lines elsewhere (``LineReporter``), and the CLI's tables.

The library's own reporter, which imports no rich, is ``phobbit.reporting.PlainReporter``.

Both reporters implement the scheduler's ``Reporter`` protocol and share a
``ProgressTracker``, which turns the scheduler's reports into what a person wants
on a job of hours: segments done per bracket and rung, what each GPU trains
now, the best Val Loss so far, the elapsed time and an estimate of what is left.

The worker does not announce when it starts a segment, so the GPU of a running
segment is inferred: with every slot busy, a new segment goes to the worker
that has just reported back. Segments of the first round show ``?`` until
their worker has reported once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from phobbit.plan import Plan
from phobbit.records import Segment, SegmentResult
from phobbit.reporting import (
    PlainReporter,
    SlowWatch,
    format_hparams,
    retrain_line,
    retry_line,
    slow_line,
)
from phobbit.schedule import format_schedule
from phobbit.view import RungProgress, estimate_left, schedule_progress
from phobbit.worker import HIDDEN

UNKNOWN = "?"


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss``, or ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def device_label(gpu: str) -> str:
    """How a worker's device reads in a display: ``GPU 0``, ``CPU`` or ``?``."""
    if gpu == UNKNOWN:
        return "GPU ?"
    return "CPU" if gpu in (HIDDEN, "") else f"GPU {gpu}"


@dataclass(frozen=True)
class Running:
    """A segment in flight and the device it is thought to run on."""

    segment: Segment
    gpu: str
    since: float


class ProgressTracker:
    """Progress of a run, built from the scheduler's reports; callers serialize access.

    Args:
        slots: the device of each worker slot (a GPU id, or ``-1`` for the CPU), if known.
        clock: the time source (``time.monotonic``); tests pass their own.
    """

    def __init__(
        self, slots: Sequence[str] = (), clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        # With one device for every slot (the CPU, or one GPU), nothing needs inferring.
        self._unknown = slots[0] if slots and len(set(slots)) == 1 else UNKNOWN
        self.plan: Plan | None = None
        self.started_at = 0.0
        self.resumed = 0
        self.rungs: list[RungProgress] = []
        self.running: dict[tuple[int, int, int, int], Running] = {}
        self.best: SegmentResult | None = None
        self.failed = 0
        self.retries = 0
        self.retrained = 0  # segments that retrained epochs of a bad checkpoint
        self.finished_now = 0  # segments trained in this session
        self.epochs_now = 0  # epochs trained in this session
        self.slow = SlowWatch()
        self._idle: list[str] = []

    def started(self, plan: Plan, resumed: int) -> None:
        self.plan, self.resumed, self.started_at = plan, resumed, self.clock()
        self._refresh()

    def dispatched(self, segment: Segment) -> None:
        gpu = self._idle.pop(0) if self._idle else self._unknown
        self.running[segment.key] = Running(segment, gpu, self.clock())
        self._refresh()  # resumed segments are recorded without a report: count them now

    def finished(self, result: SegmentResult) -> None:
        self.running.pop(result.key, None)
        if result.pid:  # a row the driver wrote for a dead worker frees no known slot
            self._idle.append(result.gpu)
        self.finished_now += 1
        self.epochs_now += result.epochs - result.start_epoch
        self.retrained += bool(result.note)
        self.slow.finished(result)
        if not result.ok:
            self.failed += 1
        elif result.val_loss is not None and (
            self.best is None or self.best.val_loss is None or result.val_loss < self.best.val_loss
        ):
            self.best = result
        self._refresh()

    def slow_running(self) -> list[Running]:
        """The running segments that take far longer than their peers (hung ones, maybe)."""
        now = self.clock()
        return [r for r in self.running.values() if self.slow.is_slow(r.segment, now - r.since)]

    def retrying(self, segment: Segment) -> None:
        self.running.pop(segment.key, None)
        self.retries += 1
        self._idle.clear()  # the pool is rebuilt: which worker is free is unknown again

    def seed_best(self, rows: Sequence[SegmentResult]) -> None:
        """Takes the best of rows already in the repository (a resumed run)."""
        for row in rows:
            if row.ok and row.val_loss is not None:
                if (
                    self.best is None
                    or self.best.val_loss is None
                    or row.val_loss < self.best.val_loss
                ):
                    self.best = row

    def _refresh(self) -> None:
        if self.plan is None:
            return
        iterations = 1 + max(i for i, *_ in self.plan.progress())
        done = {(i, s, rung): d for i, s, rung, d, _ in self.plan.progress()}
        self.rungs = schedule_progress(self.plan.schedule, iterations, done)
        if self.plan.machine.endless:  # ASHA: a rung holds what was decided so far
            n = {(i, s, rung): total for i, s, rung, _, total in self.plan.progress()}
            self.rungs = [replace(r, n=n.get((r.iteration, r.s, r.rung), 0)) for r in self.rungs]

    @property
    def epochs_done(self) -> int:
        return sum(r.done * r.segment_epochs for r in self.rungs)

    @property
    def epochs_total(self) -> int:
        return sum(r.n * r.segment_epochs for r in self.rungs)

    @property
    def segments_done(self) -> int:
        return sum(r.done for r in self.rungs)

    @property
    def segments_total(self) -> int:
        return sum(r.n for r in self.rungs)

    def elapsed(self) -> float:
        return self.clock() - self.started_at

    def left(self) -> float | None:
        """Estimated seconds left, from the epochs trained in this session."""
        return estimate_left(self.epochs_done, self.epochs_total, self.epochs_now, self.elapsed())

    def summary(self) -> str:
        """One line: epochs and segments done, elapsed, left, failures."""
        done, total = self.epochs_done, self.epochs_total
        text = (
            f"{done}/{total} epochs ({100 * done / max(total, 1):.0f}%), "
            f"{self.segments_done}/{self.segments_total} segments, "
            f"elapsed {format_duration(self.elapsed())}, left ~{format_duration(self.left())}"
        )
        if self.failed:
            text += f", {self.failed} failed"
        if self.retries:
            text += f", {self.retries} retried"
        if self.retrained:
            text += f", {self.retrained} retrained from a bad checkpoint"
        return text


def best_line(best: SegmentResult | None) -> str:
    """The best so far in one line, or a placeholder."""
    if best is None or best.val_loss is None:
        return "none yet"
    return (
        f"{best.val_loss:.4g} (run {best.s} id {best.id}, {best.epochs} epochs) "
        f"{format_hparams(best.hparams)}"
    )


def rung_table(rungs: Sequence[RungProgress]) -> Table:
    """Segments done per bracket (a row) and rung (a column), as ``done/n xEPOCHSep``."""
    depth = max((r.rung for r in rungs), default=-1) + 1
    several = len({r.iteration for r in rungs}) > 1
    grid = Table(
        title="Segments done per bracket and rung",
        title_justify="left",
        box=None,
        padding=(0, 2),
        show_edge=False,
    )
    grid.add_column("Iteration:Run" if several else "Run", justify="right")
    for rung in range(depth):
        grid.add_column(f"rung {rung}", justify="right")
    rows: dict[tuple[int, int], list[Text]] = {}
    for r in rungs:
        style = "green" if r.done == r.n else ("yellow" if r.done else "dim")
        rows.setdefault((r.iteration, r.s), []).append(
            Text(f"{r.done}/{r.n} x{r.epochs}ep", style=style)
        )
    for (iteration, run), cells in rows.items():
        grid.add_row(f"{iteration}:{run}" if several else str(run), *cells)
    return grid


def render(tracker: ProgressTracker, title: str = "") -> RenderableType:
    """The live display of ``tracker``: brackets x rungs, running segments, best, totals."""
    parts: list[RenderableType] = []
    if title:
        parts.append(Text(title, style="bold"))
    parts.append(rung_table(tracker.rungs))
    running = Table(
        title="Training now", title_justify="left", box=None, padding=(0, 2), show_edge=False
    )
    for column in ("Device", "Run", "ID", "Rung", "Epochs", "For"):
        running.add_column(column, justify="left" if column == "Device" else "right")
    now = tracker.clock()
    slow = {r.segment.key for r in tracker.slow_running()}
    for item in sorted(tracker.running.values(), key=lambda r: (r.gpu == UNKNOWN, r.gpu)):
        s = item.segment
        took = format_duration(now - item.since)
        running.add_row(
            device_label(item.gpu),
            str(s.s),
            str(s.id),
            str(s.rung),
            f"{s.start_epoch}->{s.epochs}",
            Text(f"{took} slow", style="bold red") if s.key in slow else took,
        )
    parts.append(running)
    for item in tracker.slow_running():
        parts.append(Text(slow_line(item.segment, now - item.since), style="red"))
    parts.append(Text.assemble(("Best Val Loss ", "bold"), best_line(tracker.best)))
    bar = ProgressBar(total=max(tracker.epochs_total, 1), completed=tracker.epochs_done, width=30)
    line = Table.grid(padding=(0, 1))
    line.add_row(bar, Text(tracker.summary()))
    parts.append(line)
    return Group(*parts)


class LiveReporter:
    """A rich ``Live`` display of the run, refreshed a few times a second.

    Args:
        console: where to draw (a terminal).
        title: a header line (settings, repository).
        previous: rows already in the repository, so a resumed run shows its best.
        slots: the device of each worker slot (``executor.slots``).
    """

    def __init__(
        self,
        console: Console,
        title: str = "",
        previous: Sequence[SegmentResult] = (),
        slots: Sequence[str] = (),
    ) -> None:
        self.console = console
        self.title = title
        self.tracker = ProgressTracker(slots)
        self.tracker.seed_best(previous)
        # The scheduler reports from the main thread while Live redraws from its own.
        self._lock = threading.Lock()
        self._live: Live | None = None

    def _renderable(self) -> RenderableType:
        with self._lock:
            return render(self.tracker, self.title)

    def started(self, plan: Plan, resumed: int) -> None:
        if plan.describe():
            self.console.print(f"Algorithm: {plan.describe()}", highlight=False, soft_wrap=True)
        self.console.print(format_schedule(plan.schedule), highlight=False, soft_wrap=True)
        if resumed:
            self.console.print(
                f"Resuming: {resumed} segments are already in the repository",
                highlight=False,
                soft_wrap=True,
            )
        with self._lock:
            self.tracker.started(plan, resumed)
        self._live = Live(
            console=self.console,
            get_renderable=self._renderable,
            refresh_per_second=2,
            redirect_stderr=False,
        )
        self._live.start()

    def dispatched(self, segment: Segment) -> None:
        with self._lock:
            self.tracker.dispatched(segment)

    def finished(self, result: SegmentResult) -> None:
        with self._lock:
            self.tracker.finished(result)
        if result.note:
            self.console.print(retrain_line(result), markup=False, highlight=False, soft_wrap=True)
        if not result.ok:
            self.console.print(
                f"FAILED run {result.s} id {result.id} rung {result.rung}: {result.error}",
                highlight=False,
                soft_wrap=True,
                markup=False,  # the error is the user's text: "[/]" in it is no markup
                emoji=False,
            )

    def retrying(self, segment: Segment, cause: str, attempt: int) -> None:
        with self._lock:
            self.tracker.retrying(segment)
        self.console.print(
            retry_line(segment, cause, attempt),
            highlight=False,
            soft_wrap=True,
            markup=False,
            emoji=False,
        )

    def closed(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        with self._lock:
            self.console.print(
                f"Trained {self.tracker.finished_now} segments: {self.tracker.summary()}",
                highlight=False,
                soft_wrap=True,
            )


class LineReporter(PlainReporter):
    """Plain lines for a non-terminal (CI, a pipe, ``nohup``): the library's lines, plus one
    per finished rung with the progress and an estimate of what is left.

    Args:
        stream: where to print.
        verbose: 1 rungs, failures and each new best; 2 every segment too.
        title: a first line (settings, repository).
        previous: rows already in the repository (a resumed run).
        slots: the device of each worker slot (``executor.slots``).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        verbose: int = 1,
        title: str = "",
        previous: Sequence[SegmentResult] = (),
        slots: Sequence[str] = (),
    ) -> None:
        super().__init__(stream, verbose)
        self.title = title
        self.tracker = ProgressTracker(slots)
        self.tracker.seed_best(previous)
        self.best = self.tracker.best
        self._announced: set[tuple[int, int, int]] = set()

    def started(self, plan: Plan, resumed: int) -> None:
        if self.title:
            self._say(self.title)
        super().started(plan, resumed)
        self.tracker.started(plan, resumed)
        self._announced = {(r.iteration, r.s, r.rung) for r in self.tracker.rungs if r.done == r.n}

    def dispatched(self, segment: Segment) -> None:
        super().dispatched(segment)
        self.tracker.dispatched(segment)
        # Rungs that segments of a resumed run completed were announced by that run.
        self._announced |= {
            (r.iteration, r.s, r.rung) for r in self.tracker.rungs if r.done == r.n
        }

    def finished(self, result: SegmentResult) -> None:
        super().finished(result)
        self.tracker.finished(result)
        several = len({r.iteration for r in self.tracker.rungs}) > 1
        for r in self.tracker.rungs:
            key = (r.iteration, r.s, r.rung)
            if r.done == r.n and key not in self._announced:
                self._announced.add(key)
                where = f"iteration {r.iteration} run {r.s}" if several else f"run {r.s}"
                self._say(
                    f"[{self.tracker.elapsed():7.1f}s] {where} rung {r.rung} done "
                    f"({r.n} x {r.epochs} epochs); {self.tracker.summary()}"
                )

    def retrying(self, segment: Segment, cause: str, attempt: int) -> None:
        super().retrying(segment, cause, attempt)
        self.tracker.retrying(segment)

    def closed(self) -> None:
        self._stop.set()
        self._say(f"Trained {self.tracker.finished_now} segments: {self.tracker.summary()}")
