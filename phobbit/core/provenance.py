"""Which records a run can have written: pure checks of rows read back from its files.

A row of ``results.csv``, ``epochs.csv`` or ``decisions.csv`` whose CRC holds was
written whole, but not necessarily by this run: a hand edit, a script or another
run's file can hold a CRC-valid row whose key fits no bracket (rung 999, id -5),
whose epochs no rung trains (10**12) or whose hyperparameters lie outside the
space. ``Provenance`` says, for each kind of row, why this run's schedule cannot
have produced it, or None when it can; the storage layer skips such rows with a
warning (``phobbit.storage.results.possible``) and a replay refuses a decision
it could not have made. Every row phobbit writes passes, so the table of an honest
run is unchanged.

Hyperband (bracket s of ``schedule``, ``n`` its first rung's width): ``0 <= iteration
< iterations``, s a bracket, ``0 <= id < n``, ``0 <= rung <= s``, ``start_epoch`` the
previous rung's epochs and ``epochs`` the rung's (fewer, but more than
``start_epoch``, when a callback stopped it early). ASHA keys every configuration
(0, s, id) and counts IDs up without end, so its iteration is 0 and its IDs are
bounded below only. An epoch of ``epochs.csv`` lies in ``1 .. the rung's epochs``.

Example:
    >>> check = Provenance.of(settings)
    >>> check.result(row)                    # None, or why the schedule cannot have made it
    'rung 999 is past bracket 2's last (2)'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from phobbit.core.records import (
    STOPPED_EARLY,
    EpochRow,
    RunSettings,
    Segment,
    SegmentResult,
    Tuning,
)
from phobbit.core.schedule import Bracket, brackets
from phobbit.core.space import Space
from phobbit.errors import RepositoryError

Row = TypeVar("Row")

# pandas (the results table's Start and End) holds times up to the year 2262; a time past
# 2**33 s (the year 2242) or before 1970 was not read from this machine's clock.
LATEST_TIME = float(2**33)


@dataclass(frozen=True)
class Provenance:
    """What rows a run of these settings can have written.

    Attributes:
        schedule: the brackets of (R, eta), by s.
        space: the search space; a row's hparams must be one of its configurations.
        iterations: the iterations begun (``run.json``'s: the most any invocation
            asked for, so that a resume with fewer still reads the others' rows); None
            bounds them below only (what a plan needs: rows of iterations it does not
            run are never looked up).
        asha: whether ASHA ran (iteration 0 only, IDs unbounded above).
    """

    schedule: dict[int, Bracket]
    space: Space
    iterations: int | None
    asha: bool = False

    @classmethod
    def of(cls, settings: RunSettings, bounded: bool = True) -> Provenance:
        """The provenance of the run of ``settings``; ``bounded=False`` leaves its
        iterations unbounded above (see ``iterations``)."""
        return cls(
            {b.s: b for b in brackets(settings.R, settings.eta)},
            settings.space,
            settings.iterations if bounded else None,
            settings.algorithm == "asha",
        )

    def key(self, iteration: int, s: int, config_id: int, rung: int) -> str | None:
        """Why no segment of this run is keyed so, or None when one can be."""
        bracket = self.schedule.get(s)
        if bracket is None:
            return f"bracket {s} is not one of R's (0 to {max(self.schedule)})"
        if self.asha and iteration != 0:
            return f"iteration {iteration} is not ASHA's (0)"
        if iteration < 0:
            return f"iteration {iteration} is negative"
        if self.iterations is not None and iteration >= self.iterations:
            return f"iteration {iteration} is not one of the run's {self.iterations}"
        if config_id < 0 or (not self.asha and config_id >= bracket.n):
            return f"id {config_id} is not one of bracket {s}'s (0 to {bracket.n - 1})"
        if not 0 <= rung <= s:
            return f"rung {rung} is not one of bracket {s}'s (0 to {s})"
        return None

    def result(self, row: SegmentResult) -> str | None:
        """Why this run cannot have written ``row`` to ``results.csv``, or None."""
        why = self.key(*row.key)
        if why is not None:
            return why
        rungs = self.schedule[row.s].rungs
        start = rungs[row.rung - 1].epochs if row.rung > 0 else 0
        top = rungs[row.rung].epochs
        if row.start_epoch != start:
            return f"it starts at epoch {row.start_epoch}, where rung {row.rung} starts at {start}"
        stopped = row.ok and STOPPED_EARLY in row.note
        if row.epochs != top and not (stopped and start < row.epochs < top):
            return f"it ends at epoch {row.epochs}, where rung {row.rung} trains to {top}"
        times = (row.start, row.end)
        if not all(math.isfinite(t) and 0 <= t <= LATEST_TIME for t in times):
            return f"its times ({row.start!r}, {row.end!r}) were read from no clock"
        if row.ok and not all(
            v is None or math.isfinite(v) for v in (row.val_loss, row.objective)
        ):
            return "it succeeded with a val loss or objective that is not finite"
        why = self.space.refuses(row.hparams)
        if why is not None:
            return f"its hparams are not the space's: {why}"
        return None

    def epoch(self, row: EpochRow) -> str | None:
        """Why this run cannot have written ``row`` to ``epochs.csv``, or None."""
        why = self.key(row.iteration, row.s, row.id, row.rung)
        if why is not None:
            return why
        top = self.schedule[row.s].rungs[row.rung].epochs
        if not 1 <= row.epoch <= top:
            return f"epoch {row.epoch} is not one of rung {row.rung}'s (1 to {top})"
        return None

    def decision(self, segment: Segment) -> str | None:
        """Why this run cannot have decided ``segment`` (a row of ``decisions.csv``), or None."""
        why = self.key(*segment.key)
        if why is not None:
            return why
        rungs = self.schedule[segment.s].rungs
        start = rungs[segment.rung - 1].epochs if segment.rung > 0 else 0
        if (segment.start_epoch, segment.epochs) != (start, rungs[segment.rung].epochs):
            return (
                f"it trains epochs {segment.start_epoch} to {segment.epochs}, where rung "
                f"{segment.rung} trains {start} to {rungs[segment.rung].epochs}"
            )
        why = self.space.refuses(segment.hparams)
        if why is not None:
            return f"its hparams are outside the search space: {why}"
        return None


def sift(rows: Iterable[Row], why: Callable[[Row], str | None]) -> tuple[list[Row], list[str]]:
    """``rows`` split into those ``why`` allows (in order) and the reasons of the others."""
    kept: list[Row] = []
    refused: list[str] = []
    for row in rows:
        reason = why(row)
        if reason is None:
            kept.append(row)
        else:
            refused.append(reason)
    return kept, refused


def check_decisions(decisions: Iterable[Segment], tuning: Tuning, asha: bool) -> None:
    """Refuses to replay a decision this run cannot have made.

    A recorded decision is the only trace of what the run decided (which
    configuration TPE drew, which one ASHA promoted), and what it decided later
    follows from it: skipping it, or drawing it afresh, would resume into a run that
    differs from the uninterrupted one without a word. So a decision whose key fits
    no bracket, whose epochs no rung trains, or whose hyperparameters lie outside the
    search space stops the run before anything trains. Iterations are bounded below
    only: decisions of iterations this invocation does not run are never looked up.

    Raises:
        RepositoryError: naming the first such decision and why.
    """
    check = Provenance({b.s: b for b in brackets(tuning.R, tuning.eta)}, tuning.space, None, asha)
    for decision in decisions:
        why = check.decision(decision)
        if why is not None:
            raise RepositoryError(
                f"decisions.csv records segment {decision.key}, which this run cannot have "
                f"decided: {why}; it was edited or is another run's. Restore it, or use "
                "another repository"
            )
