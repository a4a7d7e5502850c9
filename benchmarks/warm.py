"""Models kept warm against none: the tutorial MLP on digits, R=27 eta=3, 2 workers.

Run it with ``python benchmarks/warm.py`` (about 4 minutes on 2 free cores).
It tunes the seed tutorial's MLP (``keras_models.phobbit_model`` on
scikit-learn's digits, batch 32) with ``ParallelHyperband(n_jobs=2)`` twice per
repeat, once with ``warm_cache=0`` (every continued segment rebuilds its model
and loads its checkpoint) and once with the default 1 GiB cache
(``phobbit.execution.warm``), alternately, each on a fresh pool, and prints a markdown
table: the wall time of ``run``, the CPU seconds of the pool's processes
(psutil, the workers and loky's helper), the seconds the continued segments
took together (both runs train the same ones: same configurations, same
epochs), how many of them started warm, and whether the tables agree (val
losses and epochs, compared with ``==``). Nothing is downloaded.

``--simulate`` instead runs the shipped scheduler on ``SimulatedExecutor``'s
virtual clock (seconds, no TensorFlow): epochs of 0.19 s (+-30%), a continued
segment 0.7 s longer on a worker that does not hold its model (the phases
``keras_phases.py`` measured), a 5 ms round trip; for W = 2, 4, 8 workers it
compares the scheduler without affinity, with it but the segment queued ahead
chosen as without it, with it (the default), and with it but no segment queued
ahead (makespan and warm starts).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
# The workers import the model function and the data from here (they pickle by reference).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]
)

from keras_cpu import descendants_cpu  # noqa: E402
from keras_models import load_digits_split, phobbit_model, phobbit_space  # noqa: E402

from phobbit import ParallelHyperband  # noqa: E402
from phobbit.execution.executor import LocalExecutor  # noqa: E402
from phobbit.execution.scheduler import Scheduler, SilentReporter  # noqa: E402


class Segments(SilentReporter):
    """Keeps each continued segment's seconds and whether it started warm."""

    def __init__(self) -> None:
        self.continued: list[tuple[float, bool]] = []

    def finished(self, result: Any) -> None:
        if result.start_epoch > 0:
            self.continued.append((result.end - result.start, result.started_warm))


def one_run(folder: Path, warm_cache: Any, R: int, eta: int, jobs: int) -> dict[str, Any]:
    executor = LocalExecutor(n_jobs=jobs)
    segments = Segments()
    try:
        tuner = ParallelHyperband(
            phobbit_model,
            phobbit_space(),
            folder,
            dataset=load_digits_split,
            batch_size=32,
            verbose=0,
            executor=executor,
            warm_cache=warm_cache,
            tensorboard=False,
            reporter=segments,
        )
        started = time.perf_counter()
        results = tuner.run(R=R, eta=eta)
        wall = time.perf_counter() - started
        cpu = descendants_cpu()  # the pool: this process's children, so far
    finally:
        executor.shutdown()
    return {
        "wall": wall,
        "cpu": cpu,
        "warm": tuner.warm_starts,
        "continued": tuner.continued,
        "continued_s": sum(seconds for seconds, _ in segments.continued),
        "table": results[["Val Loss", "Epochs", "Status"]].sort_index(),
    }


class BlindQueue(Scheduler):
    """Affinity for a free worker only: the segment queued ahead is chosen as without it."""

    def _preference(self) -> Any:
        if len(self._in_flight) - len(self._queued) >= self.executor.capacity:
            return None, ()
        return super()._preference()


def simulate(R: int, eta: int) -> None:
    """The makespan and warm starts of the dispatch variants on a virtual clock."""
    from phobbit.core.plan import Plan
    from phobbit.core.records import RunSettings, Tuning
    from phobbit.core.space import Space
    from phobbit.execution.simulated import SimulatedExecutor
    from phobbit.storage.repository import Repository
    from phobbit.testing import SyntheticTrainable

    space = Space(phobbit_space())
    trainable = SyntheticTrainable(epoch_seconds=0.19, jitter=0.3, warm_bytes=10**9)
    variants = (
        ("no affinity, 1 queued ahead", Scheduler, False, 1),
        ("affinity, 1 queued ahead chosen blind", BlindQueue, True, 1),
        ("affinity, 1 queued ahead (default)", Scheduler, True, 1),
        ("affinity, none queued ahead", Scheduler, True, 0),
    )
    print(
        f"R={R} eta={eta}, simulated: 0.19 s epochs, +0.7 s cold continuation, 5 ms round trip\n"
    )
    print("| W | dispatch | makespan (s) | continued segments started warm |")
    print("|---|---|---|---|")
    for workers in (2, 4, 8):
        for name, kind, prefer, ahead in variants:
            with tempfile.TemporaryDirectory(prefix="phobbit-warm-sim-") as folder:
                repository = Repository(Path(folder))
                settings = RunSettings.of(space, R, eta, 0, 1)
                repository.create(settings)
                plan = Plan(Tuning(settings, repository.checkpoint_stem), workers)
                executor = SimulatedExecutor(workers, latency=0.005, cold_start=0.7)
                scheduler = kind(
                    trainable, plan, repository, executor, queue_ahead=ahead, prefer_warm=prefer
                )
                scheduler.drive()
            print(
                f"| {workers} | {name} | {executor.makespan():.1f} | "
                f"{scheduler.warm_starts} of {scheduler.continued} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--R", type=int, default=27)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--simulate", action="store_true", help="the virtual-clock table")
    args = parser.parse_args()
    if args.simulate:
        simulate(args.R, args.eta)
        return
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="phobbit-warm-") as folder:
        for repeat in range(args.repeats):
            for name, size in (("off (warm_cache=0)", 0), ("on (1 GiB)", "1GiB")):
                run = one_run(Path(folder) / f"{repeat}-{size}", size, args.R, args.eta, args.jobs)
                rows.append((name, run))
                print(f"# {name}: {run['wall']:.1f} s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    off = [r for n, r in rows if n.startswith("off")]
    same = all(r["table"].equals(off[0]["table"]) for _, r in rows)
    print(
        f"R={args.R} eta={args.eta}, {args.jobs} CPU workers, {args.repeats} repeat(s); "
        f"load before {load_before[0]:.2f}, after {load_after[0]:.2f} (1-min averages)\n"
    )
    print(
        "| cache | wall (s) | pool CPU (s) | continued segments (s, together) "
        "| continued segments started warm |"
    )
    print("|---|---|---|---|---|")
    for name, run in rows:
        print(
            f"| {name} | {run['wall']:.1f} | {run['cpu']:.1f} | {run['continued_s']:.1f} | "
            f"{run['warm']} of {run['continued']} |"
        )
    print(f"\nsame val losses and epochs in every run: {same}")


if __name__ == "__main__":
    main()
