"""How long ``phobbit status`` and ``phobbit best`` take on a large repository (issue 22).

Run it with ``python benchmarks/status_speed.py --rows 4000 100000`` (``--phobbit
PATH`` times the phobbit of another checkout, e.g. ``/work/main``, on the same
repositories, so old and new run side by side). For each size it writes a
repository whose ``results.csv`` holds about that many rows, as a run of R=81,
eta=3 and a three-hyperparameter space writes them (every rung of every bracket,
one segment in 50 failed, one in 20 stopped early by a callback), and times each
command as a whole process (``python -m phobbit ...``, output thrown away), the
median of ``--repeat`` runs after one warm-up, with the load average.

``--keep DIR`` leaves the repositories there (``DIR/rows-N``) to time them with
other tools.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(folder: Path, rows: int, seed: int = 0) -> int:
    """Writes a repository of about ``rows`` rows into ``folder``; returns how many."""
    sys.path.insert(0, str(ROOT))
    from phobbit import Hyperparameter
    from phobbit.core.records import RunSettings, SegmentResult
    from phobbit.core.schedule import brackets
    from phobbit.core.space import Space
    from phobbit.storage.repository import HEADER, Repository, encode_row

    schedule = brackets(81, 3)
    per_iteration = sum(r.n for b in schedule for r in b.rungs)
    iterations = max(1, round(rows / per_iteration))
    space = Space(
        [
            Hyperparameter("lr", "log-uniform", (1e-4, 1e-1)),
            Hyperparameter("units", "choice", [32, 64, 128, 256]),
            Hyperparameter("dropout", "uniform", (0.0, 0.5)),
        ]
    )
    repository = Repository(folder)
    repository.create(RunSettings.of(space, 81, 3, 0, iterations))
    draw = random.Random(seed)
    lines = [HEADER]
    clock = 1.7e9
    for i in range(iterations):
        for bracket in schedule:
            for rung in bracket.rungs:
                start_epoch = bracket.rungs[rung.index - 1].epochs if rung.index else 0
                for n in range(rung.n):
                    failed = draw.random() < 0.02
                    stopped = not failed and draw.random() < 0.05
                    epochs = draw.randint(start_epoch + 1, rung.epochs) if stopped else rung.epochs
                    loss = None if failed else draw.uniform(0.05, 2.0)
                    hparams = {
                        "lr": 10 ** draw.uniform(-4, -1),
                        "units": draw.choice([32, 64, 128, 256]),
                        "dropout": draw.uniform(0.0, 0.5),
                    }
                    clock += draw.uniform(1, 30)
                    row = SegmentResult(
                        i, bracket.s, n, rung.index, start_epoch, epochs, loss, loss,
                        "failed" if failed else "ok",
                        "ValueError: boom" if failed else "", hparams, str(n % 4),
                        pid=1000 + n % 4, host="bench", start=clock - 5, end=clock,
                        note="stopped early by a callback" if stopped else "",
                    )  # fmt: skip
                    lines.append(encode_row(row))
    repository.results_path.write_text("".join(lines))
    return len(lines) - 1


def time_command(args: list[str], env: dict[str, str], repeat: int) -> float:
    """The median wall seconds of ``args`` as a whole process, after one warm-up."""
    seconds = []
    for _ in range(repeat + 1):
        begin = time.perf_counter()
        subprocess.run(args, env=env, stdout=subprocess.DEVNULL, check=True)
        seconds.append(time.perf_counter() - begin)
    return statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[4000, 100000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--phobbit", default=str(ROOT), help="the checkout to time")
    parser.add_argument("--keep", default=None, help="leave the repositories in this folder")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=args.phobbit)
    base = Path(args.keep or tempfile.mkdtemp(prefix="phobbit-status-"))
    print(f"phobbit of {args.phobbit}; load average {os.getloadavg()[0]:.1f}")
    print("| rows | status (s) | best (s) | best --json (s) |")
    print("|---:|---:|---:|---:|")
    for rows in args.rows:
        folder = base / f"rows-{rows}"
        if not (folder / "results.csv").exists():
            rows = build(folder, rows)
        timings = [
            time_command(
                [sys.executable, "-m", "phobbit", *command, str(folder)], env, args.repeat
            )
            for command in (["status"], ["best"], ["best", "--json"])
        ]
        print(f"| {rows:,} | " + " | ".join(f"{t:.2f}" for t in timings) + " |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
