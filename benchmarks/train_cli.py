"""What ``phobbit train`` costs beyond the library call that does the same run.

Run it with ``python benchmarks/train_cli.py`` (``--phobbit A,B`` times the
phobbit of each checkout, e.g. ``/work/main,.``, in turn, round by round). It
writes a model file whose trainable is ``SyntheticTrainable`` with epochs of
zero time (so what is measured is the driver: plan, reporter, CSV), then times,
alternately, each in a fresh process (imports included):

- ``phobbit train MODEL --R 27 --iterations 20 --jobs 2`` on a pseudo-terminal
  (``script``, so the rich live display draws, as for a person) and with
  ``--progress plain``;
- the library: ``ParallelHyperband(..., n_jobs=2, verbose=1).run(R=27,
  iterations=20)`` with its plain lines.

It prints the median wall time of each over ``--repeat`` rounds and each
CLI's ratio to the library call, with the load average.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

MODEL = textwrap.dedent(
    """
    from phobbit import Hyperparameter
    from phobbit.testing import SyntheticTrainable

    hparam_ranges = [
        Hyperparameter("x", "uniform", (0.0, 1.0)),
        Hyperparameter("act", "choice", [("relu", "tanh")]),
    ]
    trainable = SyntheticTrainable(epoch_seconds=0.0)
    """
)

LIBRARY = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {folder!r})
    from model import hparam_ranges, trainable
    from phobbit import ParallelHyperband
    ParallelHyperband(None, hparam_ranges, {repo!r}, trainable=trainable, n_jobs=2,
                      verbose=1).run(R={R}, eta=3, iterations={iterations})
    """
)


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--phobbit",
        default=str(HERE.parent),
        help="checkout(s) to time, comma-separated: timed in turn, round by round",
    )
    parser.add_argument("--R", type=int, default=27)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    checkouts = [os.path.abspath(p) for p in args.phobbit.split(",")]
    names = ("library", "train on a terminal", "train --progress plain")
    times: dict[tuple[str, str], list[float]] = {(c, n): [] for c in checkouts for n in names}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="phobbit-train-bench-") as folder:
        model = Path(folder) / "model.py"
        model.write_text(MODEL)
        for round_ in range(args.repeat):
            for number, checkout in enumerate(checkouts):
                env = {**os.environ, "PYTHONPATH": checkout, "COLUMNS": "120"}
                for name in names:
                    repo = str(Path(folder) / f"repo-{number}-{name.split()[-1]}-{round_}")
                    if name == "library":
                        script = LIBRARY.format(
                            folder=folder, repo=repo, R=args.R, iterations=args.iterations
                        )
                        command = [sys.executable, "-c", script]
                    else:
                        progress = "auto" if "terminal" in name else name.split()[-1]
                        command = [
                            sys.executable,
                            "-m",
                            "phobbit",
                            "train",
                            str(model),
                            "--repo",
                            repo,
                            "--R",
                            str(args.R),
                            "--iterations",
                            str(args.iterations),
                            "--jobs",
                            "2",
                            "--progress",
                            progress,
                        ]
                        if "terminal" in name:  # a pseudo-terminal: the live display draws
                            command = ["script", "-qfec", shlex.join(command), os.devnull]
                    times[(checkout, name)].append(timed(command, env))
    print(f"R={args.R}, eta=3, iterations={args.iterations}, 2 workers, zero-time epochs")
    print(f"load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end\n")
    print("| checkout | run | median wall (s) | ratio to its library call | rounds (s) |")
    print("|---|---|---|---|---|")
    for checkout in checkouts:
        library = statistics.median(times[(checkout, "library")])
        for name in names:
            values = times[(checkout, name)]
            median = statistics.median(values)
            rounds = ", ".join(f"{v:.1f}" for v in values)
            label = name if name == "library" else f"phobbit {name}"
            print(f"| {checkout} | {label} | {median:.1f} | {median / library:.2f} | {rounds} |")


if __name__ == "__main__":
    main()
