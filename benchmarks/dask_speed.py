"""The Dask executor against the local pool: efficiency and segments per second, side by side.

Run it with ``python benchmarks/dask_speed.py`` (about 2 minutes; needs
``distributed``). On a ``LocalCluster`` of W one-thread worker processes
(``--workers``, default 4) and on a ``LocalExecutor`` of as many, both warm, it
runs R=81, eta=3 with ``SyntheticTrainable`` epochs of 20 ms ±30% (efficiency
= max(work/W, chain) / makespan) and with epochs of zero time (segments per
second: the per-segment cost of executor + driver), each with and without the
segment queued ahead (``Scheduler(queue_ahead=...)``; the table gives the
queue_ahead the scheduler used, 0 on an executor without ``fifo_queue``),
alternately, ``--rounds`` times (default 2). ``--before FILE`` adds another
version of ``phobbit/execution/dask.py`` (``git show REV:phobbit/execution/dask.py
> FILE``) on a second cluster of its own, in the same rounds: a before/after
under the same load. ``--profile`` adds a cProfile of one zero-time Dask run's
driver: where the driver's own time goes (submit and serialisation, the wait)
against the wall.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.util
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from simulation import SPACE, lower_bound  # noqa: E402

from phobbit.core.plan import Plan  # noqa: E402
from phobbit.core.records import RunSettings, Tuning  # noqa: E402
from phobbit.core.space import Space  # noqa: E402
from phobbit.execution.executor import Executor, LocalExecutor  # noqa: E402
from phobbit.execution.scheduler import Scheduler  # noqa: E402
from phobbit.storage.repository import Repository  # noqa: E402
from phobbit.testing import SyntheticTrainable  # noqa: E402


def run(
    executor: Executor, epoch_seconds: float, queue_ahead: int, profile: bool = False
) -> tuple[float, int, int]:
    """One run of R=81 on ``executor``: (seconds, segments, the queue_ahead the scheduler used)."""
    space = Space(SPACE)
    with tempfile.TemporaryDirectory(prefix="phobbit-dask-bench-") as folder:
        repository = Repository(folder)
        settings = RunSettings.of(space, 81, 3, 0, 1)
        repository.create(settings)
        plan = Plan(Tuning(settings, repository.checkpoint_stem), workers=executor.capacity)
        trainable = SyntheticTrainable(epoch_seconds=epoch_seconds, jitter=0.3)
        scheduler = Scheduler(trainable, plan, repository, executor, queue_ahead=queue_ahead)
        start = time.perf_counter()
        if profile:
            profiler = cProfile.Profile()
            profiler.runcall(scheduler.drive)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(14)
        else:
            scheduler.drive()
        return time.perf_counter() - start, len(repository.results()), scheduler.queue_ahead


def load_executor(path: str) -> type[Executor]:
    """The ``DaskExecutor`` class of another version of ``phobbit/execution/dask.py``."""
    spec = importlib.util.spec_from_file_location("dask_executor_before", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DaskExecutor


def main() -> None:
    import distributed

    from phobbit.execution.dask import DaskExecutor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--before",
        metavar="FILE",
        help="another version of phobbit/execution/dask.py (e.g. from git show "
        "REV:phobbit/execution/dask.py), run on a second cluster of its own, side by side",
    )
    args = parser.parse_args()
    W = args.workers
    bound = lower_bound(Space(SPACE), 81, 3, 0, 1, W, 0.02, 0.3).value
    rows: dict[tuple[str, int], list[tuple[float, float]]] = {}
    load = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:

        def cluster() -> distributed.Client:
            return stack.enter_context(
                distributed.Client(
                    stack.enter_context(
                        distributed.LocalCluster(
                            n_workers=W,
                            threads_per_worker=1,
                            processes=True,
                            dashboard_address=":0",
                        )
                    )
                )
            )

        dask = DaskExecutor(cluster())
        executors: list[tuple[str, Executor]] = [("dask", dask)]
        if args.before:
            executors.append(("dask (before)", load_executor(args.before)(cluster())))
        local = stack.enter_context(LocalExecutor(n_jobs=W))
        executors.append(("local pool", local))
        for _, executor in executors:
            run(executor, 0.0, 1)  # workers started, imports done
        for _ in range(args.rounds):
            for name, executor in executors:
                for ahead in (0, 1):
                    seconds, _, used = run(executor, 0.02, ahead)
                    zero, segments, _ = run(executor, 0.0, ahead)
                    rows.setdefault((name, used), []).append((bound / seconds, segments / zero))
        if args.profile:
            run(dask, 0.0, 1, profile=True)
        for _, executor in executors:
            executor.shutdown()
    print(
        f"R=81, eta=3, W={W}, 20 ms epochs +-30%; load average {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end\n"
    )
    print("| executor | queued ahead | efficiency | zero-time segments/s |")
    print("|---|---|---|---|")
    for (name, ahead), values in rows.items():
        effs = " / ".join(f"{e:.3f}" for e, _ in values)
        rates = " / ".join(f"{r:.0f}" for _, r in values)
        print(f"| {name} | {ahead} | {effs} | {rates} |")
    rates = {
        name: [r for (n, _), values in rows.items() if n == name for _, r in values]
        for name, _ in executors
    }
    for name, _ in executors[:-1]:
        print(
            f"\nlocal pool / {name}, zero-time segments/s: "
            f"{statistics.median(rates['local pool']) / statistics.median(rates[name]):.2f} "
            f"(medians of every run), {max(rates['local pool']) / max(rates[name]):.2f} "
            "(best of each)"
        )


if __name__ == "__main__":
    main()
