"""A discrete-event simulation of phobbit's plan and of the naive plan: a virtual clock.

phobbit's plan runs with the real ``Scheduler`` and ``train_segment`` on a
``SimulatedExecutor`` (``phobbit.simulated``), whose segments take exactly the
time ``SyntheticTrainable`` would sleep (the same jitter, drawn from the
configuration and epoch), so the simulated makespans match what a real run
would give on a machine without overhead. The naive plan is the serial
Hyperband of ``phobbit.testing`` with a barrier after each rung. It is how the
dispatch policy of ``phobbit.dispatch`` was chosen: every policy is run on the
same plan, the same durations and the same losses.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from phobbit.dispatch import FifoPolicy
from phobbit.hyperband import SynchronousHyperband
from phobbit.plan import Plan, PolicyOf
from phobbit.records import ConfigKey, RunSettings, Segment, SegmentResult, config_name
from phobbit.repository import Repository
from phobbit.scheduler import Scheduler
from phobbit.simulated import SimulatedExecutor
from phobbit.space import Hyperparameter, Space
from phobbit.testing import serial_hyperband, serial_rungs, synthetic_result
from phobbit.trainable import SyntheticTrainable

SPACE = [
    Hyperparameter("x", "uniform", (0.0, 1.0)),
    Hyperparameter("lr", "log-uniform", (1e-4, 1e-1)),
]


def segment_time(segment: Segment, epoch_seconds: float, jitter: float) -> float:
    """How long ``SyntheticTrainable`` sleeps for the whole segment."""
    trainable = SyntheticTrainable(epoch_seconds=epoch_seconds, jitter=jitter)
    return trainable.segment_time(segment.hparams, segment.start_epoch, segment.epochs)


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


def lower_bound(
    space: Space,
    R: int,
    eta: int,
    seed: int,
    iterations: int,
    workers: int,
    epoch_seconds: float,
    jitter: float,
) -> Bound:
    """The bound of a run on ``workers`` workers.

    The work is what a serial run trains; the chain is the longest total time
    of one configuration (its epochs run one after another, whatever the plan).
    """
    serial = serial_hyperband(space, R, eta, synthetic_result, seed, iterations)
    trainable = SyntheticTrainable(epoch_seconds=epoch_seconds, jitter=jitter)
    work = 0.0
    per_config: dict[tuple[int, int, int], float] = {}
    for row in serial.results.values():
        t = trainable.segment_time(row.hparams, row.start_epoch, row.epochs)
        work += t
        key = (row.iteration, row.s, row.id)
        per_config[key] = per_config.get(key, 0.0) + t
    return Bound(work=work, chain=max(per_config.values()), workers=workers)


def release_bound(
    space: Space,
    R: int,
    eta: int,
    seed: int,
    iterations: int,
    workers: int,
    epoch_seconds: float,
    jitter: float,
) -> float:
    """A lower bound of the makespan tighter than max(work / W, chain): 0 when none is.

    Exact Hyperband trains a fixed set of segments (the serial run's), whatever
    the order; what the order cannot change bounds the makespan:

    - *releases*: no configuration leaves rung i before it is certain to be
      among the k best, which takes at least ``m = n_i - k + 1`` finished
      segments of rung i; so rung i+1 of a bracket starts no earlier than rung
      i's release plus the least time W workers take to finish m of its
      segments (the m shortest over W, and a worker's share of them in a row);
    - for every release time r, the segments released at r or later: r plus
      their work over W; and r plus the two shortest of their W+1 longest, two
      of which share a worker (when there are more than W of them).
    """
    serial = serial_hyperband(space, R, eta, synthetic_result, seed, iterations)
    trainable = SyntheticTrainable(epoch_seconds=epoch_seconds, jitter=jitter)
    rungs: dict[tuple[int, int, int], list[float]] = {}
    for row in serial.results.values():
        t = trainable.segment_time(row.hparams, row.start_epoch, row.epochs)
        rungs.setdefault((row.iteration, row.s, row.rung), []).append(t)
    released: list[tuple[float, float]] = []  # (release, length) of every segment
    for (iteration, s, rung), lengths in sorted(rungs.items()):
        release = 0.0
        for before in range(rung):
            times = sorted(rungs[(iteration, s, before)])
            promoted = len(rungs[(iteration, s, before + 1)])
            m = len(times) - promoted + 1
            in_a_row = -(-m // workers)
            release += max(sum(times[:m]) / workers, sum(times[:in_a_row]))
        released += [(release, t) for t in lengths]
    best = 0.0
    for r in sorted({release for release, _ in released}):
        later = sorted((t for release, t in released if release >= r), reverse=True)
        best = max(best, r + sum(later) / workers, r + later[0])
        if len(later) > workers:
            best = max(best, r + later[workers - 1] + later[workers])
    return best


@dataclass
class Outcome:
    """What a simulated run gives."""

    makespan: float
    segments: int
    promotions: dict[tuple[int, int, int], list[int]]


def simulate_plan(
    space: Space,
    R: int,
    eta: int,
    seed: int,
    iterations: int,
    workers: int,
    duration: Callable[[Segment], float],
    policy: PolicyOf | None = None,
    overhead: float = 0.0,
    latency: float = 0.0,
    queue_ahead: int = 1,
) -> Outcome:
    """phobbit's ``Scheduler`` and ``Plan`` on a ``SimulatedExecutor`` of ``workers`` workers.

    Args:
        duration: the time a segment takes.
        policy: the plan's dispatch policy (phobbit's latest start by default).
        overhead: time added to every segment (inside the worker: the CSV append, ...).
        latency: the driver's round trip, from a result to the next segment reaching
            a worker; hidden by a segment queued ahead.
        queue_ahead: segments the scheduler keeps queued beyond one per worker.
    """
    executor = SimulatedExecutor(workers, duration, overhead=overhead, latency=latency)
    with tempfile.TemporaryDirectory(prefix="phobbit-sim-") as folder:
        repository = Repository(folder)
        repository.create(RunSettings.of(space, R, eta, seed, iterations))
        plan = Plan(
            space, R, eta, seed, iterations, workers, repository.checkpoint_stem, policy=policy
        )
        Scheduler(
            SyntheticTrainable(), plan, repository, executor, queue_ahead=queue_ahead
        ).drive()
        segments = len(repository.results())
    sorted_promotions = {k: sorted(v) for k, v in plan.promotions().items()}
    return Outcome(executor.makespan(), segments, sorted_promotions)


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
    for rung in serial_rungs(Space(space), R, eta, seed, iterations):
        free_at = [clock] * workers
        results = []
        for segment in rung.segments:
            index = min(range(workers), key=free_at.__getitem__)
            start = free_at[index]
            free_at[index] += duration(segment) + overhead
            results.append(synthetic_result(segment, start=start, end=free_at[index]))
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
    bracket = machine.bracket(segment.iteration, segment.s)
    span = 0
    for rung in bracket.rungs[from_rung:]:
        finished = machine.finished_in((segment.iteration, segment.s, rung.index))
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
    "serial order, backfilled": lambda p, s: (-s.iteration, s.s, s.rung, -s.id),
    "longest segment": lambda p, s: (_length(s), -s.iteration, -s.id),
}


class GreedyPolicy(FifoPolicy):
    """Hands out the ready segment a greedy ``rule`` scores highest (the first one on ties).

    For comparing dispatch rules only: it scores every ready segment on every
    ``pop``, O(n) where ``LatestStartPolicy`` takes O(log n).

    Args:
        rule: (this policy, a ready segment) -> its score, highest first.
        machine: the plan's state machine, which rules may read (rungs finished).
        workers: how many segments run at once.
    """

    def __init__(self, rule: Rule, machine: SynchronousHyperband, workers: int) -> None:
        super().__init__()
        self.rule, self.machine, self.workers = rule, machine, max(1, workers)

    def pop(self, prefer: Collection[ConfigKey] = ()) -> Segment | None:
        if not self._ready:
            return None
        return self._take(max(self._ready, key=lambda k: self.rule(self, self._ready[k])))

    def priority(self, segment: Segment) -> tuple:
        return self.rule(self, segment)


# -- the strong natural baseline ---------------------------------------------------------------


class RungBarrierHyperband(SynchronousHyperband):
    """Every bracket at once, but a rung promotes only once all of it has finished.

    The strong natural design phobbit is measured against: no early promotion,
    each bracket with its own barrier per rung (the same promotions as a serial
    run, so the same rows).
    """

    def on_result(self, result: SegmentResult) -> list[Segment]:
        state = self._state(result.key)
        if result.id in state.finished[result.rung]:
            return []
        val_loss = result.val_loss if result.ok else None
        state.finished[result.rung][result.id] = val_loss
        state.rankings[result.rung].add(result.id, val_loss)
        self._waiting -= 1
        rung = result.rung
        if rung + 1 == len(state.bracket.rungs) or not state.closed(rung):
            return []
        made_ready = []
        for config_id in state.rankings[rung].promote(state.k(rung), unfinished=0):
            state.promoted[rung].append(config_id)
            state.members[rung + 1].add(config_id)
            best = state.finished[rung][config_id]
            made_ready.append(self._segment(state, config_id, rung + 1, best))
        return made_ready


def barrier_plan(
    space: Space,
    R: int,
    eta: int,
    seed: int,
    iterations: int,
    workers: int,
    checkpoint_of: Callable[[int, int, int], str] = config_name,
) -> Plan:
    """The strong baseline's plan: every bracket at once, a barrier per rung, FIFO."""
    machine = RungBarrierHyperband(space, R, eta, seed, iterations, checkpoint_of)
    return Plan.of(machine, FifoPolicy(), workers)


def simulate_barriers(
    space: Space,
    R: int,
    eta: int,
    seed: int,
    iterations: int,
    workers: int,
    duration: Callable[[Segment], float],
) -> Outcome:
    """The strong baseline on the real ``Scheduler`` and a ``SimulatedExecutor``."""
    executor = SimulatedExecutor(workers, duration)
    with tempfile.TemporaryDirectory(prefix="phobbit-sim-") as folder:
        repository = Repository(folder)
        repository.create(RunSettings.of(space, R, eta, seed, iterations))
        plan = barrier_plan(space, R, eta, seed, iterations, workers, repository.checkpoint_stem)
        Scheduler(SyntheticTrainable(), plan, repository, executor, queue_ahead=0).drive()
        segments = len(repository.results())
    sorted_promotions = {k: sorted(v) for k, v in plan.promotions().items()}
    return Outcome(executor.makespan(), segments, sorted_promotions)


def greedy(rule: Rule, workers: int) -> PolicyOf:
    """The dispatch policy of a plan's state machine that follows the greedy ``rule``."""
    return lambda machine: GreedyPolicy(rule, machine, workers)


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
            bound = lower_bound(space, R, eta, 0, k, workers, 1.0, jitter).value
            if name == "naive":
                outcome = simulate_naive(R, eta, workers, duration, 0, k)
            else:
                policy = None if rule is None else greedy(rule, workers)
                outcome = simulate_plan(space, R, eta, 0, k, workers, duration, policy)
            values.append(bound / outcome.makespan)
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {name} | {cells} | {sum(values) / len(values):.3f} |")
    return "\n".join(lines)


def compare_queue_ahead(
    R: int = 81, eta: int = 3, epoch_seconds: float = 0.020, jitter: float = 0.3
) -> str:
    """A markdown table: efficiency with the driver's round trip, without and with one
    segment queued ahead, at W = 2, 4, 8, 16."""
    space = Space(SPACE)
    widths = (2, 4, 8, 16)
    lines = [
        "| round trip | queued ahead | " + " | ".join(f"W={w}" for w in widths) + " |",
        "|---|---|" + "---|" * len(widths),
    ]

    def duration(segment: Segment) -> float:
        return segment_time(segment, epoch_seconds, jitter)

    for latency in (0.0, 0.005, 0.010, 0.020):
        for ahead in (0, 1):
            cells = []
            for workers in widths:
                bound = lower_bound(space, R, eta, 0, 1, workers, epoch_seconds, jitter).value
                outcome = simulate_plan(
                    space, R, eta, 0, 1, workers, duration, latency=latency, queue_ahead=ahead
                )
                cells.append(f"{bound / outcome.makespan:.3f}")
            lines.append(f"| {latency * 1000:g} ms | {ahead} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_bounds(jitter: float = 0.3) -> str:
    """A markdown table: phobbit against max(work/W, chain) and against ``release_bound``."""
    space = Space(SPACE)
    lines = [
        "| case | W | max(work/W, chain) | release bound | phobbit makespan | "
        "efficiency (old bound) | efficiency (release bound) |",
        "|---|---|---|---|---|---|---|",
    ]

    def duration(segment: Segment) -> float:
        return segment_time(segment, 1.0, jitter)

    for R, eta, k in ((81, 3, 1), (81, 3, 2), (27, 3, 1), (243, 3, 1), (64, 4, 1)):
        for workers in (2, 4, 8, 16):
            simple = lower_bound(space, R, eta, 0, k, workers, 1.0, jitter).value
            tight = max(simple, release_bound(space, R, eta, 0, k, workers, 1.0, jitter))
            outcome = simulate_plan(space, R, eta, 0, k, workers, duration)
            lines.append(
                f"| R={R} eta={eta} K={k} | {workers} | {simple:.1f} | {tight:.1f} | "
                f"{outcome.makespan:.1f} | {simple / outcome.makespan:.3f} | "
                f"{tight / outcome.makespan:.3f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if "--bounds" in sys.argv:
        print("Simulated makespans in epochs (+-30%) against two lower bounds:\n")
        print(compare_bounds())
        raise SystemExit
    if "--queue" in sys.argv:
        print("Simulated efficiency, R=81, 20 ms epochs +-30%, the driver's round trip:\n")
        print(compare_queue_ahead())
        raise SystemExit
    print("Simulated efficiency (bound / makespan) of dispatch rules, epochs +-30%:\n")
    print(compare_rules())
