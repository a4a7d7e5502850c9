"""Wall time at equal budget: phobbit on 2 CPU workers against Keras Tuner's Hyperband.

Run it with the ``bench`` extra installed (``pip install -e .[bench]``, which
brings ``keras-tuner``) as ``python benchmarks/keras_tuner_compare.py``
(about 7 minutes per repeat on two quiet cores); without Keras Tuner it says
so and stops. Both tune the seed tutorial's MLP (``keras_models.build_mlp``)
on scikit-learn's digits (1437 train, 360 validation, batch 32) for the
objective ``val_loss`` with one Hyperband iteration of R=27, eta=3:

- *phobbit*: ``ParallelHyperband(..., n_jobs=--n-jobs).run(R=27, eta=3)``;
- *Keras Tuner*: ``Hyperband(max_epochs=27, factor=3, hyperband_iterations=1)``
  in one process (it trains one model at a time), the same space.

The budget is the same by construction (one Hyperband iteration each; Keras
Tuner rounds its rung sizes up and trains a few more epochs, counted). Each
runs in a fresh Python process through ``keras_models.py --one`` (imports
included), the two in turn, ``--repeats`` times, so both see the same load.
Prints a markdown table (wall, search call, CPU of the process tree, best
val loss, configurations, training runs, epochs, load) and the median ratio
of wall times. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from keras_cpu import measured  # noqa: E402

R, ETA = 27, 3


def fresh(which: str, n_jobs: int) -> dict:
    """One contender through ``keras_models.py --one`` in a fresh process, measured."""
    command = [sys.executable, str(HERE / "keras_models.py"), "--one", which]
    return measured(command + ["--R", str(R), "--eta", str(ETA), "--n-jobs", str(n_jobs)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each contender")
    parser.add_argument("--n-jobs", type=int, default=2, help="phobbit's CPU workers")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("keras_tuner") is None:
        print(
            "keras_tuner_compare: skipped, Keras Tuner is not installed "
            "(pip install keras-tuner, or pip install -e .[bench])"
        )
        return 0
    import keras
    import keras_tuner

    print(
        f"The tutorial MLP on scikit-learn digits, objective val_loss, R={R}, eta={ETA}, one "
        f"Hyperband iteration; phobbit on {args.n_jobs} CPU workers, Keras Tuner "
        f"{keras_tuner.__version__} in one process; Keras {keras.__version__}; "
        f"{os.cpu_count()} CPUs; load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at the start.\n"
    )
    print(
        "| run | tuner | wall (s) | search (s) | CPU (s) | best val loss | configurations "
        "| training runs | epochs | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    walls: dict[str, list[float]] = {"phobbit": [], "keras-tuner": []}
    for repeat in range(args.repeats):
        order = ["phobbit", "keras-tuner"] if repeat % 2 == 0 else ["keras-tuner", "phobbit"]
        for which in order:
            out = fresh(which, args.n_jobs)
            walls[which].append(out["wall_s"])
            name = f"phobbit, {args.n_jobs} workers" if which == "phobbit" else "Keras Tuner"
            print(
                f"| {repeat + 1} | {name} | {out['wall_s']:.1f} | {out['search_s']:.1f} "
                f"| {out['cpu_s']:.1f} | {out['best_val_loss']:.4f} | {out['configurations']} "
                f"| {out['runs']} | {out['epochs']} "
                f"| {out['load'][0]:.1f} → {out['load'][1]:.1f} |",
                flush=True,
            )
    ratios = [p / k for p, k in zip(walls["phobbit"], walls["keras-tuner"])]
    print(
        f"\nWall, phobbit / Keras Tuner: median {statistics.median(ratios):.2f} (each repeat: "
        f"{', '.join(f'{r:.2f}' for r in ratios)}). wall: the whole fresh process, imports "
        "included; search: the tuning call alone; CPU: the process and its children; "
        "training runs: phobbit's segments, Keras Tuner's trials (a promotion is a new trial)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
