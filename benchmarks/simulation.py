"""A discrete-event simulation of phobbit's plan and of the naive plan: a virtual clock.

Segments take exactly the time ``SyntheticTrainable`` would sleep (the same
jitter, drawn from the configuration and epoch), so the simulated makespans
match what a real run would give on a machine without overhead. It is how the
dispatch policy of ``phobbit.dispatch`` was chosen: every policy is run on the same
plan, the same durations and the same losses.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from phobbit import reducer
from phobbit.dispatch import DispatchPolicy
from phobbit.hyperband import SynchronousHyperband
from phobbit.plan import Plan
from phobbit.records import Segment, SegmentKey, SegmentResult, Status, config_name
from phobbit.schedule import brackets
from phobbit.space import Hyperparameter, Space
from phobbit.trainable import default_curve, hparams_unit

SPACE = [
    Hyperparameter("x", "uniform", (0.0, 1.0)),
    Hyperparameter("lr", "log-uniform", (1e-4, 1e-1)),
]


def epoch_time(hparams: dict[str, Any], epoch: int, epoch_seconds: float, jitter: float) -> float:
    """How long ``SyntheticTrainable`` sleeps for ``epoch`` of ``hparams`` (the same formula)."""
    shake = 1.0 + jitter * (2.0 * hparams_unit({**hparams, "_e": epoch}) - 1.0)
    return epoch_seconds * shake


def segment_time(segment: Segment, epoch_seconds: float, jitter: float) -> float:
    """How long ``SyntheticTrainable`` sleeps for the whole segment."""
    return sum(
        epoch_time(segment.hparams, e, epoch_seconds, jitter)
        for e in range(segment.start_epoch + 1, segment.epochs + 1)
    )


def result_of(segment: Segment, start: float = 0.0, end: float = 0.0) -> SegmentResult:
    """The row ``run_segment`` would write for a ``SyntheticTrainable`` with the default curve."""
    epochs = range(segment.start_epoch + 1, segment.epochs + 1)
    losses = [default_curve(segment.hparams, e) for e in epochs]
    best = reducer.best_so_far(losses, segment.prior_best)
    return segment.result(
        val_loss=best,
        last_val_loss=losses[-1],
        status=Status.OK,
        error="",
        start=start,
        end=end,
    )


@dataclass(frozen=True)
class Bound:
    """The lower bound of a run's makespan, and what it is made of (in seconds)."""

    work: float
    chain: float
    workers: int

    @property
    def value(self) -> float:
        """max(total work / W, longest chain of dependent epochs)."""
        return max(self.work / self.workers, self.chain)


def lower_bound(plan: Plan, workers: int, epoch_seconds: float, jitter: float) -> Bound:
    """The bound of a run of ``plan`` (fresh, not yet started) on ``workers`` workers.

    The work is what a serial run trains; the chain is the longest total time
    of one configuration (its epochs run one after another, whatever the plan).
    """
    space_plan = _serial_run(plan)
    work = 0.0
    per_config: dict[tuple[int, int, int], float] = {}
    for segment in space_plan:
        t = segment_time(segment, epoch_seconds, jitter)
        work += t
        key = (segment.iteration, segment.run, segment.id)
        per_config[key] = per_config.get(key, 0.0) + t
    return Bound(work=work, chain=max(per_config.values()), workers=workers)


def _serial_run(plan: Plan) -> list[Segment]:
    """Every segment a run of ``plan`` trains, by running it serially (consumes the plan)."""
    trained = []
    while not plan.done:
        segment = plan.next_segment()
        assert segment is not None
        trained.append(segment)
        plan.record(result_of(segment))
    return trained


@dataclass
class Outcome:
    """What a simulated run gives."""

    makespan: float
    segments: int
    promotions: dict[tuple[int, int, int], list[int]]


def simulate_plan(
    plan: Plan,
    workers: int,
    duration: Callable[[Segment], float],
    overhead: float = 0.0,
) -> Outcome:
    """Runs ``plan`` on ``workers`` virtual workers: a free worker takes ``next_segment()``.

    Args:
        duration: the time a segment takes.
        overhead: time added to every segment (dispatch, result, CSV append).
    """
    clock, free, count = 0.0, workers, 0
    order = itertools.count()
    running: list[tuple[float, int, Segment, float]] = []
    while not plan.done:
        while free:
            segment = plan.next_segment()
            if segment is None:
                break
            heapq.heappush(
                running, (clock + duration(segment) + overhead, next(order), segment, clock)
            )
            free -= 1
        if not running:
            raise RuntimeError("the plan stalled with nothing running")
        clock, _, segment, start = heapq.heappop(running)
        free += 1
        count += 1
        plan.record(result_of(segment, start, clock))
    sorted_promotions = {k: sorted(v) for k, v in plan.promotions().items()}
    return Outcome(clock, count, sorted_promotions)


@dataclass
class NaiveRung:
    """One rung of the naive plan: its segments, and the reducer that closes it."""

    key: tuple[int, int, int]  # (iteration, run, rung)
    segments: list[Segment]
    k: int  # how many configurations it promotes
    finished: dict[int, float | None] = field(default_factory=dict)
    promoted: list[int] = field(default_factory=list)

    def reduce(self, results: list[SegmentResult]) -> list[int]:
        """Takes every result of the rung and returns the IDs it promotes (serial reducer)."""
        self.finished = {r.id: r.val_loss if r.ok else None for r in results}
        self.promoted = reducer.serial_promotions(self.finished, self.k)
        return list(self.promoted)


def naive_rungs(
    space: Space,
    R: int,
    eta: int,
    seed: int = 0,
    iterations: int = 1,
    checkpoint_dir: str = "models",
) -> Iterator[NaiveRung]:
    """The naive plan, a serial Hyperband: bracket by bracket, rung by rung.

    The caller trains a rung's segments and calls its ``reduce`` before taking
    the next rung, which trains what it promoted. It shares nothing with
    ``Plan`` but the bracket math, the sampling and the reducer, so it is also
    the reference that phobbit's promotions are checked against.
    """
    for iteration in range(iterations):
        for bracket in brackets(R, eta):
            alive = list(range(bracket.n))
            best: dict[int, float | None] = dict.fromkeys(alive)
            hparams = {i: space.sample(seed, iteration, bracket.run, i) for i in alive}
            stem = {
                i: os.path.join(checkpoint_dir, config_name(iteration, bracket.run, i))
                for i in alive
            }
            for rung in bracket.rungs:
                last = rung.index + 1 == len(bracket.rungs)
                segments = [
                    Segment(
                        iteration=iteration,
                        run=bracket.run,
                        id=i,
                        rung=rung.index,
                        hparams=hparams[i],
                        start_epoch=bracket.rungs[rung.index - 1].epochs if rung.index else 0,
                        epochs=rung.epochs,
                        checkpoint=stem[i],
                        prior_best=best[i],
                    )
                    for i in alive
                ]
                step = NaiveRung(
                    (iteration, bracket.run, rung.index),
                    segments,
                    0 if last else bracket.rungs[rung.index + 1].n,
                )
                yield step
                best.update(step.finished)
                alive = sorted(step.promoted)


def simulate_naive(
    R: int,
    eta: int,
    workers: int,
    duration: Callable[[Segment], float],
    seed: int = 0,
    iterations: int = 1,
    overhead: float = 0.0,
    space: Sequence[Hyperparameter] = SPACE,
) -> Outcome:
    """The naive plan on ``workers`` virtual workers: a barrier after each rung.

    Within a rung it hands the segments in ID order each to the first free
    worker, as a process pool's queue does.
    """
    clock, count = 0.0, 0
    promotions: dict[tuple[int, int, int], list[int]] = {}
    for rung in naive_rungs(Space(space), R, eta, seed, iterations):
        free_at = [clock] * workers
        results = []
        for segment in rung.segments:
            index = min(range(workers), key=free_at.__getitem__)
            start = free_at[index]
            free_at[index] += duration(segment) + overhead
            results.append(result_of(segment, start, free_at[index]))
        count += len(rung.segments)
        clock = max(free_at)
        promoted = rung.reduce(results)
        if rung.k:
            promotions[rung.key] = sorted(promoted)
    return Outcome(clock, count, promotions)


# -- other dispatch rules, for comparison -------------------------------------------------------

Rule = Callable[["GreedyPolicy", Segment], tuple]


def _bracket_span(policy: GreedyPolicy, segment: Segment, from_rung: int) -> int:
    """Epochs the bracket still needs from ``from_rung`` on if it had every worker."""
    machine = policy.machine
    bracket = machine.bracket(segment.iteration, segment.run)
    span = 0
    for rung in bracket.rungs[from_rung:]:
        finished = machine.finished_in((segment.iteration, segment.run, rung.index))
        left = max(rung.n - finished, 0)
        span += -(-left // policy.workers) * bracket.segment_epochs(rung.index)
    return span


def _length(segment: Segment) -> int:
    return segment.epochs - segment.start_epoch


RULES: dict[str, Rule] = {
    # phobbit's first guess: the longest chain of epochs ahead, then the bracket's span.
    "chain, then span": lambda p, s: (
        p.machine.R - s.start_epoch,
        _bracket_span(p, s, s.rung),
        _length(s),
        -s.iteration,
        -s.id,
    ),
    "bracket span": lambda p, s: (_bracket_span(p, s, 0), _length(s), -s.iteration, -s.id),
    "serial order, backfilled": lambda p, s: (-s.iteration, s.run, s.rung, -s.id),
    "longest segment": lambda p, s: (_length(s), -s.iteration, -s.id),
}


class GreedyPolicy(DispatchPolicy):
    """Hands out the ready segment a greedy ``rule`` scores highest (the first one on ties).

    For comparing dispatch rules only: it scores every ready segment on every
    ``pop``, O(n) where ``LatestStartPolicy`` takes O(log n).

    Args:
        rule: (this policy, a ready segment) -> its score, highest first.
        machine: the plan's state machine, which rules may read (rungs finished).
        workers: how many segments run at once.
    """

    def __init__(self, rule: Rule, machine: SynchronousHyperband, workers: int) -> None:
        self.rule, self.machine, self.workers = rule, machine, max(1, workers)
        self._ready: dict[SegmentKey, Segment] = {}

    def push(self, segment: Segment) -> None:
        self._ready[segment.key] = segment

    def pop(self) -> Segment | None:
        if not self._ready:
            return None
        key = max(self._ready, key=lambda k: self.rule(self, self._ready[k]))
        return self._ready.pop(key)

    def give_back(self, segment: Segment) -> None:
        self.push(segment)

    def discard(self, key: SegmentKey) -> None:
        self._ready.pop(key, None)

    def ready(self) -> list[Segment]:
        return list(self._ready.values())

    def priority(self, segment: Segment) -> tuple:
        return self.rule(self, segment)


def greedy_plan(rule: Rule, space: Space, R: int, eta: int, seed: int, k: int, w: int) -> Plan:
    """A ``Plan`` whose dispatch policy is the greedy ``rule``."""
    return Plan(space, R, eta, seed, k, w, policy=lambda machine: GreedyPolicy(rule, machine, w))


CASES = [(81, 3, w, k) for k in (1, 2) for w in (2, 4, 8, 16)] + [
    (27, 3, 4, 1),
    (27, 3, 8, 1),
    (243, 3, 8, 1),
    (243, 3, 16, 1),
    (100, 4, 8, 1),
]


def compare_rules(jitter: float = 0.3) -> str:
    """A markdown table: efficiency of every rule, and phobbit's, on ``CASES``."""
    space = Space(SPACE)
    header = "| rule | " + " | ".join(f"R={R} eta={e} W={w} K={k}" for R, e, w, k in CASES)
    lines = [header + " | mean |", "|---" * (len(CASES) + 2) + "|"]

    def duration(segment: Segment) -> float:
        return segment_time(segment, 1.0, jitter)

    rules: dict[str, Rule | None] = {"latest start (phobbit)": None, **RULES, "naive": None}
    for name, rule in rules.items():
        values = []
        for R, eta, workers, k in CASES:
            bound = lower_bound(Plan(space, R, eta, 0, k, workers), workers, 1.0, jitter).value
            args = (space, R, eta, 0, k, workers)
            if name == "naive":
                outcome = simulate_naive(R, eta, workers, duration, 0, k)
            else:
                plan = Plan(*args) if rule is None else greedy_plan(rule, *args)
                outcome = simulate_plan(plan, workers, duration)
            values.append(bound / outcome.makespan)
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {name} | {cells} | {sum(values) / len(values):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("Simulated efficiency (bound / makespan) of dispatch rules, epochs +-30%:\n")
    print(compare_rules())
