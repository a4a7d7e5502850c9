"""A serial Hyperband written out from the definitions: the reference parallel runs must equal.

It shares nothing with ``Plan`` (no state machine, no dispatch policy, no
early promotion) but the bracket math, the sampling and the serial reducer:
bracket by bracket, rung by rung, every configuration of a rung trained before
the rung is reduced. Tests check phobbit's promotions and tables against it,
and the scheduling benchmarks run it as the *naive* plan (a barrier after
each rung). It lives in the package, not in ``tests/``, so that both can
import it without path tricks; nothing in phobbit imports it.

Example:
    >>> run = serial_hyperband(Tuning.of(space, R=9, eta=3), train=synthetic_result)
    >>> run.promotions[(0, 2, 0)]        # the IDs rung 0 of bracket 2 promoted
    [1, 4, 7]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from phobbit.core import reducer
from phobbit.core.objective import VAL_LOSS, Objective
from phobbit.core.records import RungKey, Segment, SegmentKey, SegmentResult, Status, Tuning
from phobbit.core.schedule import brackets
from phobbit.testing.synthetic import default_curve

Train = Callable[[Segment], SegmentResult]
"""Trains a segment and returns its row (``train_segment``, or a computed row)."""


@dataclass
class SerialRung:
    """One rung of a serial run: its segments, and the reducer that closes it."""

    key: RungKey
    segments: list[Segment]
    k: int  # how many configurations it promotes
    finished: dict[int, float | None] = field(default_factory=dict)
    promoted: list[int] = field(default_factory=list)
    objective: Objective = VAL_LOSS

    def reduce(self, results: list[SegmentResult]) -> list[int]:
        """Takes every result of the rung and returns the IDs it promotes (serial reducer):
        the best by the objective; one a callback stopped early is never promoted."""
        self.finished = {
            r.id: None if r.stopped_early else self.objective.row_score(r) for r in results
        }
        self.promoted = reducer.serial_promotions(self.finished, self.k)
        return list(self.promoted)


def serial_rungs(tuning: Tuning) -> Iterator[SerialRung]:
    """The rungs of a serial Hyperband of ``tuning``, in order: bracket by bracket, rung
    by rung.

    The caller trains a rung's segments and calls its ``reduce`` before taking
    the next rung, which trains what it promoted.
    """
    space, seed, checkpoint_of = tuning.space, tuning.seed, tuning.checkpoint_of
    objective = tuning.objective
    for iteration in range(tuning.iterations):
        for bracket in brackets(tuning.R, tuning.eta):
            alive = list(range(bracket.n))
            best: dict[int, float | None] = dict.fromkeys(alive)
            hparams = {i: space.sample(seed, iteration, bracket.s, i) for i in alive}
            for rung in bracket.rungs:
                last = rung.index + 1 == len(bracket.rungs)
                segments = [
                    Segment(
                        iteration=iteration,
                        s=bracket.s,
                        id=i,
                        rung=rung.index,
                        hparams=hparams[i],
                        start_epoch=bracket.rungs[rung.index - 1].epochs if rung.index else 0,
                        epochs=rung.epochs,
                        checkpoint=checkpoint_of(iteration, bracket.s, i),
                        prior_best=best[i],
                        run_id=tuning.settings.run_id,
                    )
                    for i in alive
                ]
                step = SerialRung(
                    (iteration, bracket.s, rung.index),
                    segments,
                    0 if last else bracket.rungs[rung.index + 1].n,
                    objective=objective,
                )
                yield step
                best.update(step.finished)
                alive = sorted(step.promoted)


@dataclass
class SerialRun:
    """What a serial run gives: every row in the order trained, and the promotions."""

    results: dict[SegmentKey, SegmentResult]
    promotions: dict[RungKey, list[int]]  # (iteration, s, rung) -> sorted IDs; last rungs none

    def final(self) -> dict[tuple[int, int, int], SegmentResult]:
        """(iteration, s, id) -> the row of the last rung each configuration reached."""
        return {(r.iteration, r.s, r.id): r for r in self.results.values()}


def serial_hyperband(tuning: Tuning, train: Train) -> SerialRun:
    """Runs a serial Hyperband in this process, one segment after another.

    Args:
        tuning: the space, R, eta, seed, iterations and objective, and the
            checkpoint stem segments carry.
        train: trains a segment and returns its row, e.g.
            ``lambda s: train_segment(trainable, s, repository_path)`` or ``synthetic_result``.
    """
    results: dict[SegmentKey, SegmentResult] = {}
    promotions: dict[RungKey, list[int]] = {}
    for rung in serial_rungs(tuning):
        rows = [train(segment) for segment in rung.segments]
        results.update((row.key, row) for row in rows)
        chosen = rung.reduce(rows)
        if rung.k:
            promotions[rung.key] = sorted(chosen)
    return SerialRun(results, promotions)


def synthetic_result(
    segment: Segment,
    curve: Callable[[dict[str, Any], int], float] = default_curve,
    start: float = 0.0,
    end: float = 0.0,
) -> SegmentResult:
    """The row ``train_segment`` writes for a ``SyntheticTrainable`` with ``curve``, computed.

    No file is read or written: the losses come from the curve, the best from
    the segment's ``prior_best``.
    """
    epochs = range(segment.start_epoch + 1, segment.epochs + 1)
    losses = [curve(segment.hparams, e) for e in epochs]
    return segment.result(
        val_loss=reducer.best_so_far(losses, segment.prior_best),
        last_val_loss=losses[-1],
        status=Status.OK,
        error="",
        start=start,
        end=end,
    )
