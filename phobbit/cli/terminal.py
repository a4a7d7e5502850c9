"""The terminal's reporters, for the CLI: a rich live display on a terminal
(``LiveReporter``), plain lines elsewhere (``LineReporter``), and the CLI's tables.

The library's own reporter, which imports no rich, is ``phobbit.reporting.plain.PlainReporter``.

Both reporters implement the scheduler's ``Reporter`` protocol and draw a
``phobbit.reporting.progress.ProgressTracker``, the pure state of what a person
wants on a job of hours: segments done per bracket and rung, what each GPU
trains now, the best Val Loss so far, the elapsed time and an estimate of what
is left.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from phobbit.core.budget import Budget
from phobbit.core.objective import VAL_LOSS, Objective
from phobbit.core.plan import Plan
from phobbit.core.records import Segment, SegmentResult
from phobbit.core.schedule import format_schedule
from phobbit.errors import RepositoryError
from phobbit.reporting.plain import (
    PlainReporter,
    asha_schedule,
    format_hparams,
    iterations_of,
    metrics_words,
    replaced_line,
    retrain_line,
    retry_line,
    slow_line,
    where,
)
from phobbit.reporting.progress import (
    UNKNOWN,
    ProgressTracker,
    device_label,
    format_duration,
)
from phobbit.storage.view import RepositoryView, RungProgress, open_repository

BUDGET_STEP = 0.05  # plain lines of an endless plan (ASHA): one per 5% of its budget


def fit_to_terminal(text: str, stream: TextIO) -> list[str]:
    """``text`` as lines no wider than the terminal ``stream`` is, broken between words (a
    terminal would break it mid-word); off a terminal, one line. Nothing for no text."""
    if not text:
        return []
    isatty = getattr(stream, "isatty", None)
    if isatty is None or not isatty():
        return [text]
    width = shutil.get_terminal_size().columns
    return textwrap.wrap(text, width, break_on_hyphens=False) or [text]


def best_line(
    best: SegmentResult | None, objective: Objective = VAL_LOSS, several: bool = False
) -> str:
    """The best so far in one line, or a placeholder; with another objective than the
    val loss, its value first and the val loss of that epoch after it, then the other
    validation metrics of that epoch (``metrics_words``); ``several`` (iterations): its
    iteration named too."""
    if best is None or best.val_loss is None:
        return "none yet"
    value = best.val_loss if objective.is_val_loss else best.objective
    also = "" if objective.is_val_loss else f", val loss {best.val_loss:.4g}"
    iteration = f"iteration {best.iteration} " if several else ""
    return (
        f"{value:.4g} ({iteration}run {best.s} id {best.id}, {best.epochs} epochs{also}"
        f"{metrics_words(best.metrics, objective)}) {format_hparams(best.hparams)}"
    )


def with_best_metrics(rows: Sequence[SegmentResult], repository: Path) -> list[SegmentResult]:
    """``rows`` (a resumed run's, from ``results.csv``), the best of them carrying the
    metrics its scoring epoch logged (``with_scoring_metrics``), so a resumed run's display
    shows what a fresh one's does. Rows unchanged when the repository holds no run.
    """
    rows = list(rows)
    try:
        view = open_repository(repository)
    except RepositoryError:
        return rows
    best = view.settings.goal.best_of(rows)
    if best is None:
        return rows
    found = with_scoring_metrics(view, best)
    return [found if row is best else row for row in rows]


def with_scoring_metrics(view: RepositoryView, best: SegmentResult) -> SegmentResult:
    """``best`` (a row read from ``results.csv``, which holds no metrics) with the metrics
    its scoring epoch logged, as ``best`` reads them from ``epochs.csv``: one read of that
    configuration's epochs. Unchanged when they cannot be read: what a line lacks then is
    no reason to stop a run or a ``status``.
    """
    goal = view.settings.goal
    listed = best.val_loss if goal.is_val_loss else best.objective
    table_row = {
        "Iteration": best.iteration,
        "Run": best.s,
        "ID": best.id,
        "Epochs": best.epochs,
        "Status": best.status,
        "Val Loss": best.val_loss,
        goal.label: listed,
    }
    try:
        metrics = view.scoring_metrics([("best", table_row)]).get("best", {})
    except RepositoryError:
        return best
    return dataclasses.replace(best, metrics=metrics)


def rung_table(rungs: Sequence[RungProgress]) -> Table:
    """Segments done per bracket (a row) and rung (a column), as ``done/n xEPOCHSep``."""
    depth = max((r.rung for r in rungs), default=-1) + 1
    several = len({r.iteration for r in rungs}) > 1
    title = "Segments done per bracket and rung"
    grid = Table(
        title=title,
        title_justify="left",
        min_width=len(title),  # a table of one rung is narrower: its title must not wrap
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
    run_column = "Iteration:Run" if tracker.several else "Run"
    for column in ("Device", run_column, "ID", "Rung", "Epochs", "For"):
        running.add_column(column, justify="left" if column == "Device" else "right")
    now = tracker.clock()
    slow = {r.segment.key for r in tracker.slow_running()}
    for item in sorted(tracker.running.values(), key=lambda r: (r.gpu == UNKNOWN, r.gpu)):
        s = item.segment
        took = format_duration(now - item.since)
        running.add_row(
            device_label(item.gpu),
            f"{s.iteration}:{s.s}" if tracker.several else str(s.s),
            str(s.id),
            str(s.rung),
            f"{s.start_epoch}->{s.epochs}",
            Text(f"{took} slow", style="bold red") if s.key in slow else took,
        )
    parts.append(running)
    for item in tracker.slow_running():
        parts.append(Text(slow_line(item.segment, now - item.since, tracker.several), style="red"))
    parts.append(
        Text.assemble(
            (f"Best {tracker.objective.label} ({tracker.objective.direction}) ", "bold"),
            best_line(tracker.best, tracker.objective, tracker.several),
        )
    )
    bar = ProgressBar(total=1000, completed=round(1000 * tracker.fraction()), width=30)
    line = Table.grid(padding=(0, 1))
    line.add_row(bar, Text(tracker.summary()))
    parts.append(line)
    return Group(*parts)


class LiveReporter:
    """A rich ``Live`` display of the run, refreshed a few times a second.

    Args:
        console: where to draw (a terminal).
        title: a header line (settings, repository), or what makes it as the run starts
            (once its budget is known).
        previous: rows already in the repository, so a resumed run shows its best.
        slots: the device of each worker slot (``executor.slots``).
        budget: the run's budget, asked for once it started (``ProgressTracker``).
    """

    def __init__(
        self,
        console: Console,
        title: str | Callable[[], str] = "",
        previous: Sequence[SegmentResult] = (),
        slots: Sequence[str] = (),
        budget: Callable[[], Budget] | None = None,
    ) -> None:
        self.console = console
        self._title = title
        self.title = "" if callable(title) else title
        self.budget = budget  # ASHA's header names it
        self.tracker = ProgressTracker(slots, budget=budget)
        self.tracker.seed_best(previous)
        self.tracker.seed_done(previous)
        # The scheduler reports from the main thread while Live redraws from its own.
        self._lock = threading.Lock()
        self._live: Live | None = None

    def _renderable(self) -> RenderableType:
        with self._lock:
            return render(self.tracker, self.title)

    def started(self, plan: Plan, resumed: int) -> None:
        self.title = self._title() if callable(self._title) else self._title
        if plan.describe():
            self.console.print(f"Algorithm: {plan.describe()}", highlight=False, soft_wrap=True)
        schedule = (
            asha_schedule(plan, self.budget() if self.budget is not None else None)
            if plan.machine.endless
            else format_schedule(plan.schedule, iterations_of(plan))
        )
        self.console.print(schedule, highlight=False, soft_wrap=True)
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
            self.console.print(
                retrain_line(result, self.tracker.several),
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if not result.ok:
            self.console.print(
                f"FAILED {where(result, self.tracker.several)}: {result.error}",
                highlight=False,
                soft_wrap=True,
                markup=False,  # the error is the user's text: "[/]" in it is no markup
                emoji=False,
            )

    def retrying(self, segment: Segment, cause: str, attempt: int) -> None:
        with self._lock:
            self.tracker.retrying(segment)
        self.console.print(
            retry_line(segment, cause, attempt, self.tracker.several),
            highlight=False,
            soft_wrap=True,
            markup=False,
            emoji=False,
        )

    def replaced(self, count: int) -> None:
        with self._lock:
            self.tracker.replaced = count
        self.console.print(replaced_line(count), highlight=False, soft_wrap=True, markup=False)

    def closed(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            if not self.console.is_terminal:
                # rich ends a terminal's last frame with a line break, not a file's or a
                # pipe's (--progress live > log): the summary would run on after "left ~".
                self.console.line()
        with self._lock:
            self.console.print(self.tracker.final_summary(), highlight=False, soft_wrap=True)


class LineReporter(PlainReporter):
    """Plain lines for a non-terminal (CI, a pipe, ``nohup``): the library's lines, plus one
    per finished rung with the progress and an estimate of what is left; for an endless
    plan (ASHA), whose rungs never finish, one each time another ``BUDGET_STEP`` of its
    budget is spent.

    Args:
        stream: where to print.
        verbose: 1 rungs, failures and each new best; 2 every segment too.
        title: a first line (settings, repository), or what makes it as the run starts
            (once its budget is known).
        previous: rows already in the repository (a resumed run).
        slots: the device of each worker slot (``executor.slots``).
        budget: the run's budget, asked for once it started (``ProgressTracker``).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        verbose: int = 1,
        title: str | Callable[[], str] = "",
        previous: Sequence[SegmentResult] = (),
        slots: Sequence[str] = (),
        budget: Callable[[], Budget] | None = None,
    ) -> None:
        super().__init__(stream, verbose, budget=budget)  # ASHA's header names its budget
        self.title = title
        self.tracker = ProgressTracker(slots, budget=budget)
        self.tracker.seed_best(previous)
        self.tracker.seed_done(previous)
        self.best = self.tracker.best
        self._announced: set[tuple[int, int, int]] = set()
        self._rebuilds = -1
        self._steps = 0  # steps of the budget already announced (an endless plan)

    def started(self, plan: Plan, resumed: int) -> None:
        title = self.title() if callable(self.title) else self.title
        for line in fit_to_terminal(title, self.stream):
            self._say(line)
        super().started(plan, resumed)
        self.tracker.started(plan, resumed)
        self.best = self.tracker.best
        self._rebuilds = -1
        self._silence_done()
        self._steps = self._budget_steps()  # a resume's earlier part was announced by it

    def _asha_progress(self, elapsed: float) -> None:
        """None of the library's budget lines: this reporter's own say more (``finished``)."""

    def _budget_steps(self) -> int:
        """How many whole steps (``BUDGET_STEP``) of an endless plan's budget are spent."""
        return math.floor(self.tracker.fraction() / BUDGET_STEP + 1e-9)

    def _silence_done(self) -> None:
        """Rungs that segments of a resumed run completed were announced by that run."""
        if self._rebuilds != self.tracker.rebuilds:
            self._rebuilds = self.tracker.rebuilds
            self._announced |= {
                (r.iteration, r.s, r.rung) for r in self.tracker.rungs if r.done == r.n
            }

    def dispatched(self, segment: Segment) -> None:
        super().dispatched(segment)
        self.tracker.dispatched(segment)
        self._silence_done()

    def finished(self, result: SegmentResult) -> None:
        super().finished(result)
        self.tracker.finished(result)
        key = (result.iteration, result.s, result.rung)
        r = self.tracker.rung(*key)
        endless = self.tracker.plan is not None and self.tracker.plan.machine.endless
        if endless and self.tracker.budget is not None and self._budget_steps() > self._steps:
            self._steps = self._budget_steps()
            self._say(f"[{self.tracker.elapsed():7.1f}s] {self.tracker.summary()}")
        # ASHA's rungs never close: a rung whose decided segments all finished is not done.
        if r is not None and not endless and r.done == r.n and key not in self._announced:
            self._announced.add(key)
            where = f"iteration {r.iteration} run {r.s}" if self.several else f"run {r.s}"
            self._say(
                f"[{self.tracker.elapsed():7.1f}s] {where} rung {r.rung} done "
                f"({r.n} x {r.epochs} epochs); {self.tracker.summary()}"
            )
        self._silence_done()

    def retrying(self, segment: Segment, cause: str, attempt: int) -> None:
        super().retrying(segment, cause, attempt)
        self.tracker.retrying(segment)

    def replaced(self, count: int) -> None:
        super().replaced(count)
        self.tracker.replaced = count

    def closed(self) -> None:
        self._stop.set()
        self._say(self.tracker.final_summary())
