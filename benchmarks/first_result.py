"""How soon `phobbit train` writes its first result (issue 21 item 4), checkouts side by side.

Run it with ``python benchmarks/first_result.py --phobbit OLD_CHECKOUT . --repeats 3``.
Each repeat starts, for each checkout in turn, a fresh ``python -m phobbit train
examples/mnist_mlp.py --jobs 2 --R 3 --eta 3`` (that checkout first on ``PYTHONPATH``,
for its workers too) into a new repository folder, and watches ``results.csv`` every
20 ms: the time to the first result is from the process start to the first row in the
file (its header excluded). The run then goes on to its end (a few seconds at R=3), so
that the next one starts on a machine as quiet as this one was. Prints a markdown table
(each run, then the medians) with the load average at the start and end of each run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
POLL_S = 0.02


def first_result(
    checkout: Path, folder: Path, model_file: str = "examples/mnist_mlp.py", R: int = 3
) -> tuple[float, float]:
    """Seconds from the start of a `phobbit train` of ``checkout`` to its first row in
    ``results.csv``, and to the end of the process. ``model_file`` is taken in
    ``checkout`` when relative."""
    repo = folder / "repo"
    results = repo / "results.csv"
    env = dict(os.environ, PYTHONPATH=str(checkout))
    command = [sys.executable, "-m", "phobbit", "train", str(checkout / model_file)]
    command += ["--jobs", "2", "--R", str(R), "--eta", "3", "--repo", str(repo)]
    command += ["--progress", "plain"]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = None
    while process.poll() is None:
        if first is None and results.is_file():
            with open(results, "rb") as handle:
                if handle.read().count(b"\n") >= 2:  # the header, then a row
                    first = time.perf_counter() - start
        time.sleep(POLL_S)
    end = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"phobbit train of {checkout} exited {process.returncode}")
    if first is None:  # the run ended between two looks
        first = end
    return first, end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phobbit", nargs="+", default=[str(HERE.parent)], type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--model-file",
        default="examples/mnist_mlp.py",
        help="the model file to train (relative: in each checkout); e.g. one in Keras "
        "Tuner's form, whose space is discovered first",
    )
    parser.add_argument("--R", type=int, default=3)
    args = parser.parse_args()
    rows, firsts = [], {str(c): [] for c in args.phobbit}
    for repeat in range(args.repeats):
        for checkout in args.phobbit:
            load = os.getloadavg()[0]
            with tempfile.TemporaryDirectory(prefix="phobbit-first-") as folder:
                first, end = first_result(
                    checkout.resolve(), Path(folder), args.model_file, args.R
                )
            firsts[str(checkout)].append(first)
            rows.append(
                f"| {repeat + 1} | {checkout} | {first:.1f} | {end:.1f} | "
                f"{load:.2f} → {os.getloadavg()[0]:.2f} |"
            )
    print("| repeat | checkout | first result (s) | whole run (s) | load (1 min) |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("| checkout | median first result (s) |")
    print("|---|---|")
    for checkout, values in firsts.items():
        print(f"| {checkout} | {statistics.median(values):.1f} |")
    print(f"\n{os.cpu_count()} CPUs; load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
