"""How close phobbit's scheduling comes to the lower bound, against two baselines.

Run it with ``python benchmarks/scheduling.py`` (``--quick`` for a short smoke
run, ``--simulate`` to add the discrete-event numbers). For R=81, eta=3 and
W = 1, 2, 4, 8 (``--workers``, e.g. ``2,4,8,16``) virtual GPUs (pinned ids; no
GPU is touched) it runs a synthetic trainable whose epochs sleep 20 ms with
+-30% jitter, for each plan per W:

- naive: bracket by bracket, a barrier after each rung (a serial Hyperband
  whose rungs are spread over the workers), the weakest natural design;
- barriers: every bracket at once, each with its own barrier per rung, on a
  shared FIFO pool, the strong natural design (``simulation.barrier_plan``);
- phobbit, no queue: phobbit handing a segment out only to a free worker (as
  before issue 12);
- phobbit: every bracket live at once, early promotion, latest start first,
  one segment queued ahead.

All use the same ``LocalExecutor``, ``train_segment`` and ``SyntheticTrainable``.
It prints a markdown table: makespan, the lower bound max(total work / W,
longest chain of dependent epochs), efficiency = bound / makespan, the
simulated efficiency of the same plan and W beside it, the same against the
tighter ``simulation.energetic_bound`` (which sees the workers every order
leaves idle when the work per worker nears R, as one iteration at W=16), segments run, the
per-segment overhead as segments per second of the same run with epochs of
zero time, and the machine's 1-minute load when the run started. Worker processes are
started before the clock starts, as
they are once per run whatever the plan. Last, it checks that phobbit's
promotions equal a serial run's, through ``ParallelHyperband`` with 4 workers.

This is a benchmark, not a test: it measures and prints, it asserts nothing
about time; the exit code is 1 only when promotions differ from the serial run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# This checkout's phobbit (not an installed one) and simulation.py beside this file.
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from simulation import (  # noqa: E402
    SPACE,
    barrier_plan,
    energetic_bound,
    lower_bound,
    segment_time,
    simulate_barriers,
    simulate_naive,
    simulate_plan,
)

from phobbit import ParallelHyperband  # noqa: E402
from phobbit.core.plan import Plan  # noqa: E402
from phobbit.core.records import RunSettings, Tuning  # noqa: E402
from phobbit.core.space import Space  # noqa: E402
from phobbit.execution.executor import LocalExecutor  # noqa: E402
from phobbit.execution.scheduler import Scheduler  # noqa: E402
from phobbit.execution.worker import train_segment  # noqa: E402
from phobbit.storage.repository import Repository  # noqa: E402
from phobbit.testing import (  # noqa: E402
    SyntheticTrainable,  # noqa: E402
    serial_hyperband,
    serial_rungs,
)

Promotions = dict[tuple[int, int, int], list[int]]


def warm(executor: LocalExecutor) -> None:
    """Starts every worker of ``executor``: one short task each, all at once.

    The scheduler leaves an executor it is handed running, so the pool stays
    warm from one timed run to the next.
    """
    wait([executor.submit(time.sleep, 0.3) for _ in range(executor.capacity)])


@dataclass
class Timed:
    """One timed run."""

    seconds: float
    segments: int
    promotions: Promotions
    losses: dict[tuple[int, int, int, int], float | None]


def _repository(folder: str, R: int, eta: int, seed: int, iterations: int) -> Repository:
    repository = Repository(folder)
    repository.create(RunSettings.of(Space(SPACE), R, eta, seed, iterations))
    return repository


def _rows(repository: Repository) -> dict[tuple[int, int, int, int], float | None]:
    return {key: row.val_loss for key, row in repository.results().items()}


def run_phobbit(
    executor: LocalExecutor,
    trainable: SyntheticTrainable,
    R: int,
    eta: int,
    seed: int,
    iterations: int,
    queue_ahead: int = 1,
    barriers: bool = False,
) -> Timed:
    """phobbit's plan and scheduler on a warm pool (or, with ``barriers``, the strong
    baseline's plan: every bracket at once, a barrier per rung, FIFO)."""
    with tempfile.TemporaryDirectory(prefix="phobbit-bench-") as folder:
        repository = _repository(folder, R, eta, seed, iterations)
        start = time.perf_counter()
        if barriers:
            plan = barrier_plan(
                Space(SPACE),
                R,
                eta,
                seed,
                iterations,
                executor.capacity,
                repository.checkpoint_stem,
            )
        else:
            tuning = Tuning.of(
                Space(SPACE), R, eta, seed, iterations, checkpoint_of=repository.checkpoint_stem
            )
            plan = Plan(tuning, workers=executor.capacity)
        Scheduler(trainable, plan, repository, executor, queue_ahead=queue_ahead).drive()
        seconds = time.perf_counter() - start
        rows = _rows(repository)
    promotions = {k: sorted(v) for k, v in plan.promotions().items()}
    return Timed(seconds, len(rows), promotions, rows)


def run_barriers(executor: LocalExecutor, trainable: SyntheticTrainable, *args: int) -> Timed:
    """The strong baseline on a warm pool: all brackets at once, a barrier per rung, FIFO."""
    return run_phobbit(executor, trainable, *args, queue_ahead=0, barriers=True)


def run_unqueued(executor: LocalExecutor, trainable: SyntheticTrainable, *args: int) -> Timed:
    """phobbit before issue 12: a segment is handed out only when a worker is free."""
    return run_phobbit(executor, trainable, *args, queue_ahead=0)


def run_naive(
    executor: LocalExecutor,
    trainable: SyntheticTrainable,
    R: int,
    eta: int,
    seed: int,
    iterations: int,
) -> Timed:
    """The naive plan on a warm pool: submit a rung, wait for all of it, reduce, go on."""
    promotions: Promotions = {}
    with tempfile.TemporaryDirectory(prefix="phobbit-bench-") as folder:
        repository = _repository(folder, R, eta, seed, iterations)
        path = str(repository.path)
        start = time.perf_counter()
        rungs = serial_rungs(
            Tuning.of(
                Space(SPACE), R, eta, seed, iterations, checkpoint_of=repository.checkpoint_stem
            )
        )
        for rung in rungs:
            futures = [executor.submit(train_segment, trainable, s, path) for s in rung.segments]
            wait(futures)
            chosen = rung.reduce([f.result() for f in futures])
            if rung.k:
                promotions[rung.key] = sorted(chosen)
        seconds = time.perf_counter() - start
        rows = _rows(repository)
    return Timed(seconds, len(rows), promotions, rows)


def serial_reference(R: int, eta: int, seed: int, iterations: int) -> tuple[Promotions, dict]:
    """A serial run in this process (``phobbit.testing.reference``), one segment after another."""
    trainable = SyntheticTrainable()
    with tempfile.TemporaryDirectory(prefix="phobbit-bench-") as folder:
        repository = _repository(folder, R, eta, seed, iterations)
        run = serial_hyperband(
            Tuning.of(
                Space(SPACE), R, eta, seed, iterations, checkpoint_of=repository.checkpoint_stem
            ),
            lambda segment: train_segment(trainable, segment, folder),
        )
        return run.promotions, _rows(repository)


def api_promotions(
    rows: dict[tuple[int, int, int, int], Any], R: int, eta: int, iterations: int
) -> Promotions:
    """What a repository's rows say was promoted: the IDs that trained the next rung."""
    plan = Plan(Tuning.of(Space(SPACE), R, eta, 0, iterations))
    promotions: Promotions = {key: [] for key in plan.promotions()}
    for iteration, run, config_id, rung in rows:
        if rung > 0:
            promotions[(iteration, run, rung - 1)].append(config_id)
    return {key: sorted(ids) for key, ids in promotions.items()}


def check_serial_equality(R: int, eta: int, workers: int, iterations: int) -> bool:
    """phobbit through ``ParallelHyperband`` on ``workers`` workers against a serial run."""
    expected, expected_rows = serial_reference(R, eta, 0, iterations)
    with tempfile.TemporaryDirectory(prefix="phobbit-bench-") as folder:
        tuner = ParallelHyperband(
            None,
            SPACE,
            folder,
            trainable=SyntheticTrainable(jitter=0.3),
            gpus=list(range(workers)),
            verbose=0,
        )
        tuner.run(R, eta, iterations)
        rows = _rows(tuner.repository)
    got = api_promotions(rows, R, eta, iterations)
    same = got == expected and rows == expected_rows
    rungs = len(expected)
    print(
        f"Serial equality (ParallelHyperband, R={R}, eta={eta}, iterations={iterations}, "
        f"{workers} workers): {len(rows)} segments, promotions of {rungs} rungs "
        f"{'equal' if got == expected else 'DIFFER from'} a serial run's, val losses "
        f"{'equal' if rows == expected_rows else 'DIFFER'}."
    )
    return same


@dataclass
class Row:
    workers: int
    plan: str
    makespan: float
    bound: float
    segments: int
    rate: float | None = None
    load: float | None = None  # 1-minute load average when the run started
    simulated: float | None = None  # the simulation's efficiency of the same plan and W
    tight: float | None = None  # simulation.energetic_bound, in seconds
    simulated_tight: float | None = None  # the simulation's efficiency against it

    def markdown(self) -> str:
        rate = f"{self.rate:,.0f}" if self.rate is not None else "-"
        load = f"{self.load:.1f}" if self.load is not None else "-"
        sim = f"{self.simulated:.3f}" if self.simulated is not None else "-"
        tight = f"{self.tight:.2f} | {self.tight / self.makespan:.3f}" if self.tight else "- | -"
        sim_tight = f"{self.simulated_tight:.3f}" if self.simulated_tight is not None else "-"
        return (
            f"| {self.workers} | {self.plan} | {self.makespan:.2f} | {self.bound:.2f} | "
            f"{self.bound / self.makespan:.3f} | {sim} | {tight} | {sim_tight} | "
            f"{self.segments} | {rate} | {load} |"
        )


HEADER = (
    "| W | plan | makespan (s) | bound (s) | efficiency | simulated | energetic bound (s) | "
    "efficiency (energetic) | simulated (energetic) | segments | zero-time segments/s | load |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)

PLANS = {
    "naive": run_naive,
    "barriers": run_barriers,
    "phobbit, no queue": run_unqueued,
    "phobbit": run_phobbit,
}
"""The plans measured, weakest first: the naive plan, the strong natural baseline,
phobbit without the segment queued ahead (as before issue 12), phobbit."""


def measure(args: argparse.Namespace) -> tuple[list[Row], bool]:
    """The timed runs: naive and phobbit per W, with epochs of ``epoch_seconds`` and of zero."""
    R, eta, seed, k = args.R, args.eta, 0, args.iterations
    timed = SyntheticTrainable(epoch_seconds=args.epoch_seconds, jitter=args.jitter)
    instant = SyntheticTrainable(jitter=args.jitter)
    rows, same = [], True
    serial: Promotions | None = None
    simulations = {(r.workers, r.plan): r for r in simulated(args)}
    for workers in args.workers:
        bound = lower_bound(
            Space(SPACE), R, eta, seed, k, workers, args.epoch_seconds, args.jitter
        )
        tight = energetic_bound(
            Space(SPACE), R, eta, seed, k, workers, args.epoch_seconds, args.jitter
        )
        executor = LocalExecutor(gpus=list(range(workers)))
        try:
            warm(executor)
            for name, runner in PLANS.items():
                load = os.getloadavg()[0]
                result = runner(executor, timed, R, eta, seed, k)
                zero = runner(executor, instant, R, eta, seed, k)
                sim = simulations.get((workers, name.split(",")[0]))
                rows.append(
                    Row(
                        workers,
                        name,
                        result.seconds,
                        bound.value,
                        result.segments,
                        zero.segments / zero.seconds,
                        load,
                        sim and sim.bound / sim.makespan,
                        tight,
                        sim and sim.tight / sim.makespan,
                    )
                )
                serial = serial or result.promotions
                same = same and result.promotions == zero.promotions == serial
                print(rows[-1].markdown(), file=sys.stderr, flush=True)
        finally:
            executor.shutdown()
    return rows, same


def simulated(args: argparse.Namespace) -> list[Row]:
    """The same table from the discrete-event simulation: no processes, no overhead."""
    R, eta, seed, k = args.R, args.eta, 0, args.iterations

    def duration(segment: Any) -> float:
        return segment_time(segment, args.epoch_seconds, args.jitter)

    rows = []
    for workers in args.workers:
        space = Space(SPACE)
        bound = lower_bound(space, R, eta, seed, k, workers, args.epoch_seconds, args.jitter).value
        tight = energetic_bound(space, R, eta, seed, k, workers, args.epoch_seconds, args.jitter)
        naive = simulate_naive(R, eta, workers, duration, seed, k)
        barriers = simulate_barriers(space, R, eta, seed, k, workers, duration)
        ours = simulate_plan(space, R, eta, seed, k, workers, duration)
        for name, outcome in (("naive", naive), ("barriers", barriers), ("phobbit", ours)):
            rows.append(Row(workers, name, outcome.makespan, bound, outcome.segments, tight=tight))
    return rows


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs, load average {load} at the start; Python "
        f"{platform.python_version()} on {platform.system()}"
    )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--R", type=int, default=81, help="max epochs (default 81)")
    parser.add_argument("--eta", type=int, default=3, help="cut factor (default 3)")
    parser.add_argument("--iterations", type=int, default=1, help="Hyperband iterations")
    parser.add_argument("--workers", default="1,2,4,8", help="W values (default 1,2,4,8)")
    parser.add_argument("--epoch-seconds", type=float, default=0.02, help="default 0.02")
    parser.add_argument("--jitter", type=float, default=0.3, help="relative, default 0.3")
    parser.add_argument(
        "--simulate", action="store_true", help="also print the discrete-event simulation's table"
    )
    parser.add_argument("--simulate-only", action="store_true", help="only the simulation")
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run: R=27, W=1,2, 5 ms epochs"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.R, args.workers, args.epoch_seconds = 27, "1,2", 0.005
    args.workers = [int(w) for w in args.workers.split(",")]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    settings = (
        f"R={args.R}, eta={args.eta}, iterations={args.iterations}, epochs of "
        f"{args.epoch_seconds * 1000:g} ms +-{args.jitter:.0%}"
    )
    print(f"Scheduling benchmark: {settings}; {machine()}.\n")
    if args.simulate or args.simulate_only:
        print("Discrete-event simulation (virtual clock, no overhead):\n")
        print(HEADER)
        for row in simulated(args):
            print(row.markdown())
        print()
        if args.simulate_only:
            return 0
    rows, same = measure(args)
    print("Measured (warm worker pools; the last column from the same run with 0 s epochs):\n")
    print(HEADER)
    for row in rows:
        print(row.markdown())
    print()
    print(
        f"Promotions of every run above equal the W={args.workers[0]} naive run's: "
        f"{'yes' if same else 'NO'}."
    )
    same = check_serial_equality(args.R, args.eta, 4, 2 if not args.quick else 1) and same
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
