"""Budgets: when a run stops dispatching. Pure, no I/O.

A run stops at a segment boundary once a budget is spent: no new segment is
dispatched, the segments in flight finish (their rows are written), and the
run says which budget ended it. Rerunning with a larger budget goes on from
there: budgets are no part of the settings a resume must match.

* ``time_limit``: seconds on the executor's clock (virtual on the simulated
  executor), counted from the start of this invocation (a resume gets the
  whole limit again: the limit is what this job may take).
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

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

from phobbit.errors import InputError

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, name: str = "time_limit") -> float | None:
    """Seconds, from a number or text such as ``90``, ``90s``, ``15m``, ``8h``, ``1.5d``.

    Raises:
        InputError: naming ``name`` for anything else, or a duration that is not > 0.
    """
    if value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", value.lower())
        seconds = float(match[1]) * _UNITS[match[2]] if match else math.nan
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        seconds = float(value)
    else:
        seconds = math.nan
    if not seconds > 0 or not math.isfinite(seconds):
        raise InputError(
            f"{name} must be a duration > 0: seconds, or text such as 90s, 15m, 8h or 2d, "
            f"got {value!r}"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as ``parse_duration`` reads it: ``90s``, ``15m``, ``8h``, ``2d``."""
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Budget:
    """What stops a run early (see the module's docstring).

    Attributes:
        time_limit: seconds of the executor's clock this invocation may take; None: none.
        max_epochs: epochs the whole run may train; None: none.
        epochs_name: which budget ``max_epochs`` stands for in messages:
            ``"max_epochs"``, or ``"iterations"`` for ASHA's default.
    """

    time_limit: float | None = None
    max_epochs: int | None = None
    epochs_name: str = "max_epochs"

    def __post_init__(self) -> None:
        if self.max_epochs is not None and (
            isinstance(self.max_epochs, bool)
            or not isinstance(self.max_epochs, numbers.Integral)
            or self.max_epochs < 1
        ):
            raise InputError(f"max_epochs must be an integer >= 1, got {self.max_epochs!r}")

    @property
    def limited(self) -> bool:
        """Whether any budget is set."""
        return self.time_limit is not None or self.max_epochs is not None

    def spent(self, elapsed: float, epochs: int) -> str | None:
        """The budget spent after ``elapsed`` seconds and ``epochs`` epochs; None if none."""
        if self.max_epochs is not None and epochs >= self.max_epochs:
            return self.epochs_name
        if self.time_limit is not None and elapsed >= self.time_limit:
            return "time_limit"
        return None

    def describe(self, reason: str) -> str:
        """``reason`` (what ``spent`` returned) said with its value, for logs and the CLI."""
        if reason == "time_limit" and self.time_limit is not None:
            return f"time_limit ({format_duration(self.time_limit)}) spent"
        if reason in ("max_epochs", "iterations") and self.max_epochs is not None:
            return f"{reason} budget ({self.max_epochs:,} epochs) spent"
        return f"{reason} finished" if reason == "iterations" else reason
