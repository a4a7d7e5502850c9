"""What the driver spends per result, from R=81 to R=6561: it must not grow with the run.

Run it with ``python benchmarks/per_result.py`` (``--phobbit PATH`` times the
phobbit of another checkout, e.g. ``/work/main``, so old and new run side by
side with the same script). For each R (eta=3, one iteration) it plays a whole
run through the driver's per-result steps, in this process, with no worker
and no file: ``Plan.next_segment`` (the dispatch policy's pop), ``Plan.record``
(the state machine's ``on_result``, the reducer, the policy's push), and the
reporters a run talks to (``PlainReporter``, the terminal's ``LineReporter``
and its ``ProgressTracker``, printing into memory). Results come back in a
seeded random order from W=8 segments in flight, with seeded random losses.

It prints, per R: segments, microseconds per result for the plan alone and for
the plan with the reporters, and each as a ratio to R=81's. A flat ratio is
the point; the absolute numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def play(R: int, eta: int, workers: int, reporters: bool, seed: int = 0) -> tuple[int, float]:
    """Plays a run of (R, eta) through the driver's per-result steps; (results, seconds)."""
    from phobbit import Hyperparameter
    from phobbit.cli.terminal import LineReporter
    from phobbit.core.plan import Plan
    from phobbit.core.records import Tuning
    from phobbit.core.space import Space
    from phobbit.reporting.plain import PlainReporter

    space = Space([Hyperparameter("x", "uniform", (0.0, 1.0))])
    draw = random.Random(seed)
    plan = Plan(Tuning.of(space, R, eta, seed), workers=workers)
    talk = (
        [PlainReporter(io.StringIO(), verbose=1), LineReporter(io.StringIO(), verbose=1)]
        if reporters
        else []
    )
    for reporter in talk:
        reporter.started(plan, resumed=0)
    in_flight = []
    results = 0
    start = time.perf_counter()
    while not plan.done:
        while len(in_flight) < workers:
            segment = plan.next_segment()
            if segment is None:
                break
            for reporter in talk:
                reporter.dispatched(segment)
            in_flight.append(segment)
        segment = in_flight.pop(draw.randrange(len(in_flight)))
        now = time.time()
        result = segment.result(
            val_loss=draw.random(),
            last_val_loss=None,
            status="ok",
            error="",
            gpu="-1",
            pid=1,
            start=now - 1.0,
            end=now,
        )
        plan.record(result)
        for reporter in talk:
            reporter.finished(result)
        results += 1
    seconds = time.perf_counter() - start
    for reporter in talk:
        reporter.closed()
    return results, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phobbit", default=str(HERE.parent), help="checkout to time")
    parser.add_argument("--R", default="81,243,729,2187,6561")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.phobbit))
    import phobbit

    print(f"phobbit from {Path(phobbit.__file__).parent}; {platform.python_version()}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print()
    print("| R | segments | plan µs/result | ratio to R=81 | plan+reporters µs/result | ratio |")
    print("|---|---|---|---|---|---|")
    base: list[float] = []
    for R in (int(r) for r in args.R.split(",")):
        row = []
        for reporters in (False, True):
            n, seconds = play(R, 3, args.workers, reporters)
            row.append(1e6 * seconds / n)
        base = base or row
        print(
            f"| {R} | {n} | {row[0]:.0f} | {row[0] / base[0]:.2f} | {row[1]:.0f} | "
            f"{row[1] / base[1]:.2f} |",
            flush=True,
        )
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
