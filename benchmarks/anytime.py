"""Anytime answers: the best full-fidelity regret at 25/50/75/100% of a run, per dispatch order.

Run it with ``python benchmarks/anytime.py`` (the full measurement: Branin,
Hartmann-6 and the Keras surrogate of ``benchmarks/search_quality.py``, R=27
and 81 (the surrogate has 27 epochs), eta=3, one iteration, W = 1, 2, 4, 8, 16,
20 seeds) or smaller with ``--seeds 3 --workers 1,4``.

Three orders run the same state machine on the same draws, durations and
losses, on a bare virtual clock (``benchmarks/simulation.py``'s list schedule;
an epoch costs 1 s +-30%, drawn per configuration and epoch):

- ``before``: ``LatestStartPolicy``, phobbit's order up to issue 21;
- ``after``: ``AnytimePolicy`` (the deepest brackets due early, at no cost
  in makespan), phobbit's default since issue 21;
- ``kt``: Keras Tuner's order, bracket by bracket from the deepest, rung by
  rung, free workers taking the next bracket's work rather than idling (on
  one worker exactly Keras Tuner's sequential order).

The answer at time t is the best objective among configurations trained to R
epochs by then (the noise-free test function; the val loss of its best epoch
for the surrogate); regret is that minus the optimum, "-" (none) before the
first. Times are fractions of ``before``'s makespan on the same seed, so every
order is read at the same wall time. Efficiency is ``before``'s makespan over
the order's (1.000: as short). It checks on every run that the promotions of
the three orders are equal; it asserts nothing else.

``--scheduler`` measures the makespan the other way: phobbit's own ``Scheduler``
(its queued segment included) on ``SimulatedExecutor``
(``simulation.simulate_plan``, epochs 1 s +-30% per epoch as
``SyntheticTrainable`` sleeps them), latest start against the default order,
per R and W over ``--seeds``: latest start's makespan over the default's
(median, min; 1.000: as short, above: shorter), and the deadlines the default
chose. Worker counts without a deadline run latest start's order exactly.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import statistics
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from search_quality import Problem, make_problem  # noqa: E402

from phobbit.core.dispatch import (  # noqa: E402
    AnytimePolicy,
    DispatchPolicy,
    FifoPolicy,
    LatestStartPolicy,
)
from phobbit.core.hyperband import SynchronousHyperband  # noqa: E402
from phobbit.core.plan import Plan  # noqa: E402
from phobbit.core.records import ConfigKey, Segment, SegmentKey, Tuning  # noqa: E402
from phobbit.core.space import Space  # noqa: E402
from phobbit.testing import synthetic_result  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


class BracketOrderPolicy(FifoPolicy):
    """Keras Tuner's order: the deepest bracket first, rung by rung, then the lowest ID."""

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[tuple[int, int, int, int], SegmentKey]] = []

    @staticmethod
    def _bracket_rank(segment: Segment) -> tuple[int, int, int, int]:
        return (segment.iteration, -segment.s, segment.rung, segment.id)

    def push(self, segment: Segment) -> None:
        super().push(segment)
        heapq.heappush(self._heap, (self._bracket_rank(segment), segment.key))

    def pop(self, prefer: Collection[ConfigKey] = ()) -> Segment | None:
        while self._heap:
            key = heapq.heappop(self._heap)[1]
            if key in self._ready:
                return self._take(key)
        return None

    def priority(self, segment: Segment) -> tuple:
        return tuple(-x for x in self._bracket_rank(segment))


ORDERS: dict[str, Callable[[SynchronousHyperband, int], DispatchPolicy]] = {
    "before": lambda m, w: LatestStartPolicy(m.schedule, m.iterations, w),
    "after": lambda m, w: AnytimePolicy(m.schedule, m.iterations, w),
    "kt": lambda m, w: BracketOrderPolicy(),
}


def run_order(
    problem: Problem,
    R: int,
    seed: int,
    workers: int,
    order: str,
    queue_ahead: int = 1,
    overhead: float = 0.0,
) -> tuple[float, list[tuple[float, float]], dict]:
    """One run on a bare virtual clock: makespan, (end, value) of full-R results, promotions.

    Segments are handed out as the ``Scheduler`` does (on the simulated executor, the same
    makespan): with ``queue_ahead=1`` one waits queued while every worker is busy; 0 hands
    a segment only to a free worker (the benchmark before anytime4). ``overhead`` epochs
    (seconds) are added to every fresh segment (rung 0: a model built and traced anew),
    as real Keras costs: its first epoch ~3.3 steady ones (benchmarks/README.md, cpu2).
    """
    machine = SynchronousHyperband(Tuning.of(Space(problem.space), R, problem.eta, seed, 1))
    plan = Plan.of(machine, ORDERS[order](machine, workers), workers)
    trainable = problem.trainable()
    running: list[tuple[float, int, Segment]] = []
    tiebreak, clock = itertools.count(), 0.0
    answers: list[tuple[float, float]] = []
    queued: Segment | None = None

    def start(segment: Segment) -> None:
        length = trainable.segment_time(segment.hparams, segment.start_epoch, segment.epochs)
        if segment.start_epoch == 0:
            length += overhead
        heapq.heappush(running, (clock + length, next(tiebreak), segment))

    while not plan.done:
        while len(running) < workers and (segment := plan.next_segment()) is not None:
            start(segment)
        # The Scheduler's queued segment (queue_ahead=1): chosen while every worker is busy
        # and at least half as many segments as workers are ready, taken by the first
        # worker to finish before its result is known.
        if queue_ahead and queued is None and 2 * len(plan.policy) >= workers:
            queued = plan.next_segment()
        clock, _, segment = heapq.heappop(running)
        if queued is not None:
            start(queued)
            queued = None
        result = synthetic_result(segment, problem.curve, end=clock)
        plan.record(result)
        if segment.epochs >= R:
            if problem.full_fidelity:
                value = problem.objective(segment.hparams)
            else:
                value = math.inf if result.val_loss is None else result.val_loss
            answers.append((clock, value))
    promotions = {k: sorted(v) for k, v in plan.promotions().items()}
    return clock, answers, promotions


def regret_at(answers: list[tuple[float, float]], t: float, optimum: float) -> float:
    values = [v for end, v in answers if end <= t + 1e-9]
    return max(0.0, min(values) - optimum) if values else math.inf


def fmt(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.3g}"


def median(values: Sequence[float]) -> float:
    """The median, where "no answer yet" (inf) counts as the worst."""
    return statistics.median(values) if values else math.nan


def measure(args: argparse.Namespace) -> tuple[list[str], bool]:
    lines = [
        "| problem | R | W | overhead | order | regret 25% | 50% | 75% | 100% | "
        "first full-R at | first no later than before's | efficiency vs before (median, min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    equal = True
    for name in args.problems:
        for R in args.R:
            problem = make_problem(name, R, 3)
            if problem.R != R:
                continue  # the surrogate has 27 epochs
            for workers, overhead in itertools.product(args.workers, args.overhead):
                rows: dict[str, list[list[float]]] = {o: [] for o in ORDERS}
                for seed in range(args.seeds):
                    runs = {
                        o: run_order(problem, R, seed, workers, o, overhead=overhead)
                        for o in ORDERS
                    }
                    span = runs["before"][0]
                    if any(r[2] != runs["before"][2] for r in runs.values()):
                        equal = False
                    for order, (makespan, answers, _) in runs.items():
                        regrets = [
                            regret_at(answers, f * span, problem.optimum) for f in FRACTIONS
                        ]
                        first = min(end for end, _ in answers) / span
                        rows[order].append([*regrets, first, span / makespan])
                before_first = [v[4] for v in rows["before"]]
                for order, values in rows.items():
                    columns = list(zip(*values))
                    regrets = [fmt(median(c)) for c in columns[:4]]
                    first = median(columns[4])
                    eff = columns[5]
                    sooner = sum(f <= b + 1e-9 for f, b in zip(columns[4], before_first))
                    lines.append(
                        f"| {name} | {R} | {workers} | {overhead:g} | {order} | "
                        f"{' | '.join(regrets)} | {first:.2f} | {sooner}/{len(values)} | "
                        f"{median(eff):.3f}, {min(eff):.3f} |"
                    )
    return lines, equal


def measure_scheduler(args: argparse.Namespace) -> list[str]:
    """Latest start's makespan over the default order's, on the real ``Scheduler``."""
    import simulation as sim  # benchmarks/simulation.py: the scheduler on a virtual clock

    space = sim.Space(sim.SPACE)

    def duration(segment: Segment) -> float:
        return sim.segment_time(segment, 1.0, 0.3)

    lines = [
        "| R | W | deadlines (iteration, s): due | efficiency (median, min) |",
        "|---|---|---|---|",
    ]
    for R in args.R:
        for workers in args.workers:
            chosen: dict = {}

            def anytime(machine: Any, w: int = workers, chosen: dict = chosen) -> AnytimePolicy:
                policy = AnytimePolicy(machine.schedule, 1, w)
                chosen.update(policy.release)
                return policy

            def latest(machine: Any, w: int = workers) -> LatestStartPolicy:
                return LatestStartPolicy(machine.schedule, 1, w)

            ratios = []
            for seed in range(args.seeds):
                base = sim.simulate_plan(space, R, 3, seed, 1, workers, duration, latest)
                new = sim.simulate_plan(space, R, 3, seed, 1, workers, duration, anytime)
                ratios.append(base.makespan / new.makespan)
            due = ", ".join(f"{k}: {v:g}" for k, v in sorted(chosen.items())) or "none"
            lines.append(f"| {R} | {workers} | {due} | {median(ratios):.3f}, {min(ratios):.3f} |")
    return lines


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="branin,hartmann6,keras-mlp")
    parser.add_argument("--R", default="27,81", help="max epochs (default 27,81)")
    parser.add_argument("--workers", default="1,2,4,8,16", help="W values (default 1,2,4,8,16)")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per cell (default 20)")
    parser.add_argument(
        "--overhead",
        default="0",
        help="epochs added to every fresh segment (rung 0), comma-separated (default 0; "
        "real Keras: ~2.3)",
    )
    parser.add_argument(
        "--scheduler",
        action="store_true",
        help="the makespan on phobbit's Scheduler (queued segment included) instead",
    )
    args = parser.parse_args(argv)
    args.problems = args.problems.split(",")
    args.R = [int(r) for r in args.R.split(",")]
    args.workers = [int(w) for w in args.workers.split(",")]
    args.overhead = [float(o) for o in args.overhead.split(",")]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.scheduler:
        print(
            f"Makespan on the Scheduler and SimulatedExecutor, latest start's over the "
            f"default order's ({args.seeds} seeds; one iteration, eta=3, epochs 1 s +-30%):\n"
        )
        print("\n".join(measure_scheduler(args)))
        return 0
    lines, equal = measure(args)
    print(
        f"Regret (median of {args.seeds} seeds) at fractions of latest start's makespan; "
        "one iteration, eta=3, epochs 1 s +-30%:\n"
    )
    print("\n".join(lines))
    print(f"\npromotions equal in every run: {'yes' if equal else '**no**'}")
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
