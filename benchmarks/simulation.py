"""A discrete-event simulation of phobbit's plan and of the naive plan: a virtual clock.

phobbit's plan runs with the real ``Scheduler`` and ``train_segment`` on a
``SimulatedExecutor`` (``phobbit.execution.simulated``), whose segments take exactly the
time ``SyntheticTrainable`` would sleep (the same jitter, drawn from the
configuration and epoch), so the simulated makespans match what a real run
would give on a machine without overhead. The naive plan is the serial
Hyperband of ``phobbit.testing.reference`` with a barrier after each rung. It is how the
dispatch policy of ``phobbit.core.dispatch`` was chosen: every policy is run on the
same plan, the same durations and the same losses.

``python benchmarks/simulation.py`` compares dispatch rules; ``--bounds``
compares phobbit with max(work / W, chain) and ``energetic_bound``, a bound
that holds for every exact order (``--search N`` adds the best of N priority
vectors ``best_offline`` tries at W=16); ``--anytime`` shows when the first of
K iterations is complete; ``--queue`` models the driver's round trip.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from phobbit.core.dispatch import DispatchPolicy, FifoPolicy, LatestStartPolicy
from phobbit.core.hyperband import SynchronousHyperband
from phobbit.core.plan import Plan, PolicyOf
from phobbit.core.records import (
    ConfigKey,
    RungKey,
    RunSettings,
    Segment,
    SegmentKey,
    SegmentResult,
    Tuning,
    config_name,
)
from phobbit.core.space import Hyperparameter, Space
from phobbit.execution.scheduler import Scheduler
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.storage.repository import Repository
from phobbit.testing import SyntheticTrainable, serial_hyperband, serial_rungs, synthetic_result

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
    serial = serial_hyperband(Tuning.of(space, R, eta, seed, iterations), synthetic_result)
    trainable = SyntheticTrainable(epoch_seconds=epoch_seconds, jitter=jitter)
    work = 0.0
    per_config: dict[tuple[int, int, int], float] = {}
    for row in serial.results.values():
        t = trainable.segment_time(row.hparams, row.start_epoch, row.epochs)
        work += t
        key = (row.iteration, row.s, row.id)
        per_config[key] = per_config.get(key, 0.0) + t
    return Bound(work=work, chain=max(per_config.values()), workers=workers)


def rung_times(
    space: Space, R: int, eta: int, seed: int, iterations: int, epoch_seconds: float, jitter: float
) -> dict[RungKey, list[float]]:
    """(iteration, s, rung) -> the time of each segment of the rung, of the serial run's set."""
    serial = serial_hyperband(Tuning.of(space, R, eta, seed, iterations), synthetic_result)
    trainable = SyntheticTrainable(epoch_seconds=epoch_seconds, jitter=jitter)
    rungs: dict[RungKey, list[float]] = {}
    for row in serial.results.values():
        t = trainable.segment_time(row.hparams, row.start_epoch, row.epochs)
        rungs.setdefault((row.iteration, row.s, row.rung), []).append(t)
    return rungs


def windows(rungs: dict[RungKey, list[float]], workers: int) -> dict[RungKey, tuple[float, float]]:
    """(iteration, s, rung) -> (head, tail): what must run before and after each of its segments.

    Exact Hyperband trains a fixed set of segments (the serial run's) whatever
    the order, and no configuration leaves rung i before it is certain to be
    among the k best:

    - *head*: the first promotion out of rung i needs ``m = n_i - k + 1`` of its
      segments finished, so rung i+1 starts no earlier than rung i's head plus
      the least time W workers take to finish m of its segments (the m shortest
      over W, and a worker's share of them in a row);
    - *tail*: the k-th promotion needs every segment of rung i finished (and,
      by the same rule, every earlier rung of the bracket), and the
      configuration it promotes then still has its rung i+1 segment to run
      before rung i+1 can close; so every segment of rung i ends at least the
      shortest segment of rung i+1 plus rung i+1's tail before the run does.
      A bracket's last segment starts only once all the rest of it has ended.
    """
    heads: dict[RungKey, float] = {}
    tails: dict[RungKey, float] = {}
    for key in sorted(rungs):
        iteration, s, rung = key
        before = (iteration, s, rung - 1)
        if rung == 0:
            heads[key] = 0.0
            continue
        times = sorted(rungs[before])
        m = len(times) - len(rungs[key]) + 1
        in_a_row = -(-m // workers)
        heads[key] = heads[before] + max(sum(times[:m]) / workers, sum(times[:in_a_row]))
    for key in sorted(rungs, key=lambda k: (k[0], k[1], -k[2])):
        after = (key[0], key[1], key[2] + 1)
        tails[key] = min(rungs[after]) + tails[after] if after in rungs else 0.0
    return {key: (heads[key], tails[key]) for key in rungs}


def energetic_bound(
    space: Space,
    R: int,
    eta: int,
    seed: int,
    iterations: int,
    workers: int,
    epoch_seconds: float,
    jitter: float,
) -> float:
    """A lower bound of the makespan of exact Hyperband on ``workers`` workers, whatever
    the dispatch order: never below max(work / W, chain), and well above it where the
    work per worker nears R.

    Each segment of length p must run inside the window [head, T - tail] of its
    rung (``windows``), T being the makespan. Energetic reasoning: in any
    interval [a, b], every segment runs at least the part of it that it cannot
    leave outside (pushed as early or as late as its window allows), and W
    workers run at most W (b - a) in it. The bound is the least T for which
    every interval between two window ends passes (found by bisection; the
    check is monotone in T).
    """
    rungs = rung_times(space, R, eta, seed, iterations, epoch_seconds, jitter)
    frame = windows(rungs, workers)
    keys = [key for key in rungs for _ in rungs[key]]
    p = np.array([t for key in rungs for t in rungs[key]])
    head = np.array([frame[key][0] for key in keys])
    tail = np.array([frame[key][1] for key in keys])
    starts = np.unique(np.append(head, 0.0))[:, None, None]

    def feasible(T: float) -> bool:
        deadline = T - tail
        if np.any(head + p > deadline):
            return False
        ends = np.unique(np.append(deadline, T))[None, :, None]
        span = ends - starts
        # The least part of each segment inside [a, b]: pushed as early, or as late,
        # as its window allows, and never more than p or b - a.
        forced = np.minimum(
            np.minimum(p, span), np.minimum(head + p - starts, ends - deadline + p)
        )
        need = np.maximum(forced, 0.0).sum(axis=2)
        return bool(np.all((span[:, :, 0] <= 0) | (need <= workers * span[:, :, 0] + 1e-9)))

    simple = lower_bound(space, R, eta, seed, iterations, workers, epoch_seconds, jitter).value
    low, high = simple, 2 * simple
    while not feasible(high):
        low, high = high, 2 * high
    while high - low > 1e-6 * high:
        middle = (low + high) / 2
        low, high = (low, middle) if feasible(middle) else (middle, high)
    return high


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
        policy: the plan's dispatch policy (by default ``AnytimePolicy``: latest start
            with the deepest brackets due early).
        overhead: time added to every segment (inside the worker: the CSV append, ...).
        latency: the driver's round trip, from a result to the next segment reaching
            a worker; hidden by a segment queued ahead.
        queue_ahead: segments the scheduler keeps queued beyond one per worker.
    """
    executor = SimulatedExecutor(workers, duration, overhead=overhead, latency=latency)
    with tempfile.TemporaryDirectory(prefix="phobbit-sim-") as folder:
        repository = Repository(folder)
        settings = RunSettings.of(space, R, eta, seed, iterations)
        repository.create(settings)
        plan = Plan(Tuning(settings, repository.checkpoint_stem), workers, policy=policy)
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
    for rung in serial_rungs(Tuning.of(Space(space), R, eta, seed, iterations)):
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
    machine = RungBarrierHyperband(
        Tuning.of(space, R, eta, seed, iterations, checkpoint_of=checkpoint_of)
    )
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


# -- the best schedule found offline -------------------------------------------------------------


@dataclass
class Timeline:
    """A run on a bare virtual clock: its makespan, the segments in the order they
    started, and when each ended."""

    makespan: float
    order: list[SegmentKey]
    ends: dict[SegmentKey, float]


def list_schedule(plan: Plan, workers: int, duration: Callable[[Segment], float]) -> Timeline:
    """``plan`` on a bare virtual clock: a free worker takes ``plan.next_segment()``.

    What ``simulate_plan`` does without the scheduler, the repository and the
    executor (the same makespan, at a fraction of the cost), for searches.
    """
    order: list[SegmentKey] = []
    ends: dict[SegmentKey, float] = {}
    running: list[tuple[float, int, Segment]] = []
    tiebreak = itertools.count()
    clock = 0.0
    while not plan.done:
        while len(running) < workers and (segment := plan.next_segment()) is not None:
            order.append(segment.key)
            heapq.heappush(running, (clock + duration(segment), next(tiebreak), segment))
        clock, _, segment = heapq.heappop(running)
        ends[segment.key] = clock
        plan.record(synthetic_result(segment, start=clock - duration(segment), end=clock))
    return Timeline(clock, order, ends)


class RankPolicy(FifoPolicy):
    """Hands out the ready segment of lowest rank in a fixed table: a priority vector.

    Args:
        ranks: segment key -> its rank; a segment not in it goes last.
    """

    def __init__(self, ranks: dict[SegmentKey, float]) -> None:
        super().__init__()
        self.ranks = ranks
        self._heap: list[tuple[float, SegmentKey]] = []

    def push(self, segment: Segment) -> None:
        super().push(segment)
        heapq.heappush(self._heap, (self.ranks.get(segment.key, math.inf), segment.key))

    def pop(self, prefer: Collection[ConfigKey] = ()) -> Segment | None:
        while self._heap:
            key = heapq.heappop(self._heap)[1]
            if key in self._ready:
                return self._take(key)
        return None

    def priority(self, segment: Segment) -> tuple:
        return (-self.ranks.get(segment.key, math.inf),)


@dataclass
class Search:
    """What ``best_offline`` found: the makespan of phobbit's order, and the best one."""

    start: float
    best: float
    evaluations: int
    ranks: dict[SegmentKey, float]


def best_offline(
    space: Space,
    R: int,
    eta: int,
    seed: int,
    iterations: int,
    workers: int,
    duration: Callable[[Segment], float],
    evaluations: int = 2000,
    rng_seed: int = 0,
) -> Search:
    """The shortest schedule a local search finds over priority vectors, offline.

    A priority vector ranks every segment of the run; a free worker takes the
    ready segment ranked first (a list schedule on the real state machine, so
    promotions wait until they are certain, as in phobbit). The search starts
    from phobbit's own order (each segment ranked by when it started) and
    moves one to five segments' ranks at random, keeping a move that makes the
    run no longer. It knows the durations and the losses in advance, which no
    dispatch policy does: it says how much a better order could gain, and is
    no lower bound.
    """
    rng = random.Random(rng_seed)

    def timeline(policy: DispatchPolicy) -> Timeline:
        machine = SynchronousHyperband(Tuning.of(space, R, eta, seed, iterations))
        return list_schedule(Plan.of(machine, policy, workers), workers, duration)

    machine = SynchronousHyperband(Tuning.of(space, R, eta, seed, iterations))
    phobbit = timeline(LatestStartPolicy(machine.schedule, iterations, workers))
    start, order = phobbit.makespan, phobbit.order
    ranks = {key: float(i) for i, key in enumerate(order)}
    best = timeline(RankPolicy(ranks)).makespan
    for _ in range(evaluations):
        moved = dict(ranks)
        for _ in range(rng.choice((1, 1, 2, 3, 5))):
            key = order[rng.randrange(len(order))]
            moved[key] += rng.gauss(0.0, len(order) / 8)
        length = timeline(RankPolicy(moved)).makespan
        if length <= best:
            best, ranks = length, moved
    return Search(start, best, evaluations, ranks)


def greedy(rule: Rule, workers: int) -> PolicyOf:
    """The dispatch policy of a plan's state machine that follows the greedy ``rule``."""
    return lambda machine: GreedyPolicy(rule, machine, workers)


def depth_first(workers: int) -> PolicyOf:
    """Latest start as it was before issue 12 item 8: depth before the iteration."""
    return lambda machine: LatestStartPolicy(
        machine.schedule, machine.iterations, workers, iterations_first=False
    )


def answers(
    space: Space,
    R: int,
    eta: int,
    iterations: int,
    workers: int,
    duration: Callable[[Segment], float],
    policy: PolicyOf,
) -> tuple[float, list[float]]:
    """The makespan of a run on a bare virtual clock, and when each iteration's last
    full-fidelity (R-epoch) result came: an iteration's answer is complete then."""
    machine = SynchronousHyperband(Tuning.of(space, R, eta, 0, iterations))
    run = list_schedule(Plan.of(machine, policy(machine), workers), workers, duration)
    last = [0.0] * iterations
    for (iteration, s, _, rung), end in run.ends.items():
        if machine.bracket(iteration, s).rungs[rung].epochs == R:
            last[iteration] = max(last[iteration], end)
    return run.makespan, last


def latest_start(workers: int) -> PolicyOf:
    """phobbit's dispatch policy."""
    return lambda machine: LatestStartPolicy(machine.schedule, machine.iterations, workers)


def compare_anytime(jitter: float = 0.3) -> str:
    """A markdown table: with K iterations, efficiency and when the first iteration's
    answer is complete (a fraction of the run), latest start against depth first."""
    space = Space(SPACE)
    lines = [
        "| case | W | depth first (before): efficiency | first iteration complete at | "
        "iterations first (phobbit): efficiency | first iteration complete at |",
        "|---|---|---|---|---|---|",
    ]

    def duration(segment: Segment) -> float:
        return segment_time(segment, 1.0, jitter)

    for R, eta, k in ((81, 3, 2), (81, 3, 3), (27, 3, 2), (243, 3, 2), (64, 4, 2)):
        for workers in (2, 4, 8, 16):
            bound = lower_bound(space, R, eta, 0, k, workers, 1.0, jitter).value
            cells = []
            for policy in (depth_first(workers), latest_start(workers)):
                makespan, last = answers(space, R, eta, k, workers, duration, policy)
                cells += [f"{bound / makespan:.3f}", f"{last[0] / makespan:.2f}"]
            lines.append(f"| R={R} eta={eta} K={k} | {workers} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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

    before = "latest start, depth first across iterations (before)"
    rules: dict[str, Rule | None] = {
        "latest start (phobbit)": None,
        before: None,
        **RULES,
        "naive": None,
    }
    for name, rule in rules.items():
        values = []
        for R, eta, workers, k in CASES:
            bound = lower_bound(space, R, eta, 0, k, workers, 1.0, jitter).value
            if name == "naive":
                outcome = simulate_naive(R, eta, workers, duration, 0, k)
            else:
                policy = None if rule is None else greedy(rule, workers)
                if name == before:
                    policy = depth_first(workers)
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


def compare_bounds(jitter: float = 0.3, evaluations: int = 0) -> str:
    """A markdown table: phobbit against max(work/W, chain), ``energetic_bound`` and, with
    ``evaluations``, the best schedule ``best_offline`` finds in that many."""
    space = Space(SPACE)
    lines = [
        "| case | W | max(work/W, chain) | energetic bound | best found offline | "
        "phobbit makespan | barriers makespan | phobbit / old bound | phobbit / energetic | "
        "phobbit / best found |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def duration(segment: Segment) -> float:
        return segment_time(segment, 1.0, jitter)

    for R, eta, k in ((81, 3, 1), (81, 3, 2), (27, 3, 1), (243, 3, 1), (64, 4, 1)):
        for workers in (2, 4, 8, 16):
            simple = lower_bound(space, R, eta, 0, k, workers, 1.0, jitter).value
            tight = energetic_bound(space, R, eta, 0, k, workers, 1.0, jitter)
            outcome = simulate_plan(space, R, eta, 0, k, workers, duration)
            barriers = simulate_barriers(space, R, eta, 0, k, workers, duration)
            found, ratio = "-", "-"
            if evaluations and workers == 16 and k == 1:
                best = best_offline(space, R, eta, 0, k, workers, duration, evaluations).best
                found, ratio = f"{best:.1f}", f"{best / outcome.makespan:.3f}"
            lines.append(
                f"| R={R} eta={eta} K={k} | {workers} | {simple:.1f} | {tight:.1f} | {found} | "
                f"{outcome.makespan:.1f} | {barriers.makespan:.1f} | "
                f"{simple / outcome.makespan:.3f} | {tight / outcome.makespan:.3f} | {ratio} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if "--bounds" in sys.argv:
        # --search N: also the best of N orders a local search tries at W=16.
        evaluations = (
            int(sys.argv[sys.argv.index("--search") + 1]) if "--search" in sys.argv else 0
        )
        print("Simulated makespans in epochs (+-30%) against two lower bounds:\n")
        print(compare_bounds(evaluations=evaluations))
        raise SystemExit
    if "--anytime" in sys.argv:
        print("Simulated runs of K iterations, epochs +-30%:\n")
        print(compare_anytime())
        raise SystemExit
    if "--queue" in sys.argv:
        print("Simulated efficiency, R=81, 20 ms epochs +-30%, the driver's round trip:\n")
        print(compare_queue_ahead())
        raise SystemExit
    print("Simulated efficiency (bound / makespan) of dispatch rules, epochs +-30%:\n")
    print(compare_rules())
