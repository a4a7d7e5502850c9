"""Budgets: when a run stops dispatching. Pure, no I/O.

A run stops at a segment boundary once a budget is spent: no new segment is
dispatched, the segments in flight finish (their rows are written), and the
run says which budget ended it. Rerunning with a larger budget goes on from
there: budgets are no part of the settings a resume must match.

* ``time_limit``: seconds of training time on the executor's clock (virtual on
  the simulated executor), counted over the whole run as ``max_epochs`` is: each
  invocation counts from when its first segment is handed out (starting the
  workers and checking the input are not counted), and a resume starts from
  the time earlier invocations used (``time_used``, which the repository
  keeps in ``time_used.csv``), so it gets what is left, not the whole limit
  again. A larger limit on a later invocation gives the run more time.
* ``max_epochs``: epochs trained in all, counted over the whole run (every row
  in ``results.csv`` from earlier invocations too, each segment once, whether
  it succeeded or failed): a segment is dispatched while the epochs trained
  and in flight are below it, so the last one may overshoot it by less than
  one segment.
* ``iterations``: Hyperband's end (its iterations finish); for ASHA, which has
  no natural end, the default epoch budget (``asha_budget_epochs``: the epochs
  the same number of Hyperband iterations would train) unless ``max_epochs``
  or ``time_limit`` is given.

Example:
    >>> Budget(max_epochs=100).spent(elapsed=5.0, epochs=100)
    'max_epochs'
"""

from __future__ import annotations

from dataclasses import dataclass

from phobbit.core.units import check_int, format_duration, parse_duration

# The library reads ``time_limit`` with the one duration grammar; it is importable from here
# too because a budget is where a duration is given.
__all__ = ["Budget", "format_duration", "parse_duration"]


@dataclass(frozen=True)
class Budget:
    """What stops a run early (see the module's docstring).

    Attributes:
        time_limit: how long the run may train in all, on the executor's clock: seconds,
            or a duration's text such as ``"8h"`` (``phobbit.core.units``); None: none.
        max_epochs: epochs the whole run may train; None: none.
        epochs_name: which budget ``max_epochs`` stands for in messages:
            ``"max_epochs"``, or ``"iterations"`` for ASHA's default.
        time_used: seconds of training time earlier invocations of the run used, which
            count against ``time_limit`` (set by the tuner from the repository).
    """

    time_limit: float | None = None
    max_epochs: int | None = None
    epochs_name: str = "max_epochs"
    time_used: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "time_limit", parse_duration(self.time_limit, "time_limit"))
        check_int("max_epochs", self.max_epochs, minimum=1, allow_none=True)
        if not 0.0 <= self.time_used < float("inf"):
            raise ValueError(f"time_used must be seconds >= 0, got {self.time_used!r}")

    @property
    def limited(self) -> bool:
        """Whether any budget is set."""
        return self.time_limit is not None or self.max_epochs is not None

    def spent(self, elapsed: float, epochs: int) -> str | None:
        """The budget spent after ``elapsed`` seconds of this invocation and ``epochs`` epochs
        of the whole run; None if none."""
        if self.max_epochs is not None and epochs >= self.max_epochs:
            return self.epochs_name
        if self.time_limit is not None and self.time_used + elapsed >= self.time_limit:
            return "time_limit"
        return None

    def time_left(self, elapsed: float = 0.0) -> float | None:
        """Seconds of ``time_limit`` left after ``elapsed`` seconds of this invocation;
        None without a time limit."""
        if self.time_limit is None:
            return None
        return max(0.0, self.time_limit - self.time_used - elapsed)

    def time_text(self, elapsed: float = 0.0) -> str | None:
        """The time limit for a header, ``"time limit 10m, 7m left"``; None without one."""
        left = self.time_left(elapsed)
        if self.time_limit is None or left is None:
            return None
        # Whole seconds: a header is read by a person, not parsed back.
        return (
            f"time limit {format_duration(self.time_limit)}, {format_duration(round(left))} left"
        )

    def describe(self, reason: str) -> str:
        """``reason`` (what ``spent`` returned) said with its value, for logs and the CLI."""
        if reason == "time_limit" and self.time_limit is not None:
            return f"time_limit ({format_duration(self.time_limit)}) spent"
        if reason in ("max_epochs", "iterations") and self.max_epochs is not None:
            return f"{reason} budget ({self.max_epochs:,} epochs) spent"
        return f"{reason} finished" if reason == "iterations" else reason
