"""Anytime answers with real Keras: the best full-fidelity val loss at 25/50/75/100% of a run.

Run it with ``python benchmarks/keras_anytime.py`` (the full measurement: R=27,
eta=3, 5 seeds, about 10 minutes per seed on two quiet cores) or as a smoke run
with ``--seeds 1 --R 9``; ``--contenders after`` runs only those named (to measure a
new default beside an earlier table's rows on the same seeds). Three contenders tune
the seed tutorial's MLP (``keras_models.build_mlp``) on scikit-learn's digits (1437
train, 360 validation, batch 32) for ``val_loss``, one Hyperband iteration each:

- ``before``: phobbit on ``--n-jobs`` (2) CPU workers with ``LatestStartPolicy``,
  its dispatch order up to issue 21 (every full-fidelity segment at the end);
- ``after``: the same with the default order since issue 21, ``AnytimePolicy``
  (the deepest brackets due early, at no cost in makespan);
- ``keras-tuner``: Keras Tuner's ``Hyperband(max_epochs=R, factor=eta)`` in one
  process (it trains one model at a time), the same space and data.

``before`` and ``after`` differ in the dispatch order alone: this script puts
``LatestStartPolicy`` where ``phobbit.core.search`` builds its policy (in the
driver process of ``before``, the only one that orders segments); phobbit
itself is unchanged. Each (contender, seed) runs in a fresh Python process,
the three in a rotating order so none always follows the same other, and its
times count from just before that process starts (imports and the workers'
start included). A full-fidelity result is a configuration trained to R
epochs, and its value the lowest val loss that configuration saw:

- phobbit: the rows of its repository (``results.csv``) with ``epochs == R``,
  at their ``end`` time (written by the worker when the segment finished);
- Keras Tuner: the trials with ``tuner/epochs == R``, at the time its
  ``on_trial_end`` hook returned (a subclass logs ``time.time()`` there, after
  the oracle ended and saved the trial: its ``trial.json`` holds no times);
  the value is the lowest score along the trial's ``tuner/trial_id`` chain, so
  a promoted configuration counts its earlier epochs as phobbit's rows do.

Per seed a table: each contender's wall time, its first full-fidelity result,
the best full-fidelity val loss at 25/50/75/100% of ``before``'s wall time on
that seed (one clock for all: what a user who stops then gets), the final
best, and the load average at the start and end of its run; then the medians
over seeds on that common clock and on each contender's own wall time. "-":
no full-fidelity result yet. It asserts nothing; it only checks that each
phobbit run used the dispatch order it names.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from keras_cpu import measured  # noqa: E402
from keras_models import SPACE_DOC  # noqa: E402

CONTENDERS = ("before", "after", "keras-tuner")
NAMES = {
    "before": "phobbit before (LatestStartPolicy)",
    "after": "phobbit after (AnytimePolicy)",
    "keras-tuner": "Keras Tuner Hyperband",
}
POLICIES = {"before": "LatestStartPolicy", "after": "AnytimePolicy"}
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def run_phobbit(which: str, seed: int, R: int, eta: int, n_jobs: int) -> dict[str, Any]:
    """One phobbit run in this process with the dispatch order ``which`` names."""
    from keras_models import load_digits_split, phobbit_model, phobbit_space

    import phobbit.core.search as search
    from phobbit import ParallelHyperband
    from phobbit.core.dispatch import LatestStartPolicy

    chosen = LatestStartPolicy if which == "before" else search.AnytimePolicy
    used: list[str] = []
    release: dict[str, int] = {}

    def policy(schedule: Any, iterations: int, workers: int) -> Any:
        made = chosen(schedule, iterations, workers)
        used.append(type(made).__name__)
        release.update({str(key): due for key, due in getattr(made, "release", {}).items()})
        return made

    # Search.plan builds its policy from this module global; swapping it changes
    # the order of dispatch and nothing else (same draws, same promotions).
    search.AnytimePolicy = policy  # type: ignore[assignment,misc]
    data = load_digits_split()
    with tempfile.TemporaryDirectory(prefix="phobbit-anytime-") as repo:
        tuner = ParallelHyperband(
            phobbit_model, phobbit_space(), repo, dataset=data, n_jobs=n_jobs, seed=seed, verbose=0
        )
        start = time.perf_counter()
        tuner.run(R=R, eta=eta)
        search_s = time.perf_counter() - start
        rows = list(tuner.repository.iter_results())
    full = [
        (row.end, row.val_loss)
        for row in rows
        if row.ok and row.final and row.epochs == R and row.val_loss is not None
    ]
    return {"search_s": search_s, "full": sorted(full), "policy": used, "release": release}


def run_keras_tuner(seed: int, R: int, eta: int) -> dict[str, Any]:
    """One Keras Tuner Hyperband run in this process, each trial's end time logged."""
    import keras
    import keras_tuner
    from keras_models import build_mlp, load_digits_split

    ended: dict[str, float] = {}

    class TimedHyperband(keras_tuner.Hyperband):
        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            ended[trial.trial_id] = time.time()

        def _configure_tensorboard_dir(
            self, callbacks: Any, trial: Any, execution: int = 0
        ) -> None:
            # It only wires TensorBoard callbacks (there are none here) but imports
            # tensorboard first, which TensorFlow no longer installs.
            pass

    def build(hp: Any) -> Any:
        return build_mlp(
            hp.Float("dropout1", 0.0, 0.5),
            hp.Float("dropout2", 0.0, 0.5),
            hp.Choice("activation", ["relu", "tanh", "sigmoid"]),
            hp.Float("learning_rate", 1e-4, 1e-1, sampling="log"),
        )

    # Keras Tuner's seed fixes the hyperparameters it draws, not the weights: seed
    # Keras too, so a seed's run repeats as phobbit's does (it seeds per configuration).
    keras.utils.set_random_seed(seed)
    (x, y), validation = load_digits_split()
    with tempfile.TemporaryDirectory(prefix="keras-tuner-anytime-") as folder:
        tuner = TimedHyperband(
            build,
            objective="val_loss",
            max_epochs=R,
            factor=eta,
            hyperband_iterations=1,
            seed=seed,
            directory=folder,
            project_name="digits",
            overwrite=True,
        )
        start = time.perf_counter()
        tuner.search(x, y, validation_data=validation, verbose=0)
        search_s = time.perf_counter() - start
        trials = dict(tuner.oracle.trials)

    def chain_best(trial: Any) -> float:
        """The lowest score of a trial and the trials it went on from."""
        best = math.inf
        while trial is not None:
            if trial.score is not None:
                best = min(best, float(trial.score))
            trial = trials.get(trial.hyperparameters.values.get("tuner/trial_id"))
        return best

    full = [
        (ended[trial.trial_id], chain_best(trial))
        for trial in trials.values()
        if trial.hyperparameters.values.get("tuner/epochs") == R
        and trial.score is not None
        and trial.trial_id in ended
    ]
    return {"search_s": search_s, "full": sorted(full), "version": keras_tuner.__version__}


def one(which: str, seed: int, R: int, eta: int, n_jobs: int) -> None:
    """Runs one contender in this process and prints its numbers as a RESULT line."""
    import json

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if which == "keras-tuner":
        out = run_keras_tuner(seed, R, eta)
    else:
        out = run_phobbit(which, seed, R, eta, n_jobs)
    print("RESULT " + json.dumps(out), flush=True)


def fresh(which: str, seed: int, R: int, eta: int, n_jobs: int) -> dict[str, Any]:
    """One contender in a fresh process; ``times`` are its full-fidelity results' seconds
    since just before that process started."""
    command = [sys.executable, __file__, "--one", which, "--seed", str(seed)]
    command += ["--R", str(R), "--eta", str(eta), "--n-jobs", str(n_jobs)]
    start = time.time()
    out = measured(command)
    if which in POLICIES and out["policy"] != [POLICIES[which]]:
        raise SystemExit(f"{which}: phobbit ordered by {out['policy']}, not {POLICIES[which]}")
    out["full"] = [(end - start, loss) for end, loss in out["full"]]
    return out


def best_at(full: Sequence[Sequence[float]], t: float) -> float:
    """The best full-fidelity val loss finished by ``t`` seconds; inf before the first."""
    return min((loss for end, loss in full if end <= t), default=math.inf)


def shown(loss: float) -> str:
    return "-" if math.isinf(loss) else f"{loss:.4f}"


def seed_table(seed: int, outs: dict[str, dict[str, Any]]) -> None:
    clock = next(iter(outs)) if "before" not in outs else "before"
    reference = outs[clock]["wall_s"]
    columns = " | ".join(f"{f:.0%} ({f * reference:.0f} s)" for f in FRACTIONS)
    print(f"\nSeed {seed}: best full-fidelity val loss at a fraction of {clock}'s wall time.\n")
    print(f"| contender | wall (s) | first at R (s) | {columns} | final | results at R | load |")
    print("|---|---|---|" + "---|" * len(FRACTIONS) + "---|---|---|")
    for which in (w for w in CONTENDERS if w in outs):
        out = outs[which]
        full = out["full"]
        first = f"{full[0][0]:.0f}" if full else "-"
        at = " | ".join(shown(best_at(full, f * reference)) for f in FRACTIONS)
        print(
            f"| {NAMES[which]} | {out['wall_s']:.0f} | {first} | {at} "
            f"| {shown(best_at(full, math.inf))} | {len(full)} "
            f"| {out['load'][0]:.1f} → {out['load'][1]:.1f} |",
            flush=True,
        )


def median_table(
    title: str, runs: list[dict[str, dict[str, Any]]], clock: Callable[[dict, str], float]
) -> None:
    print(f"\n{title}\n")
    print("| contender | " + " | ".join(f"{f:.0%}" for f in FRACTIONS) + " |")
    print("|---|" + "---|" * len(FRACTIONS))
    for which in (w for w in CONTENDERS if w in runs[0]):
        cells = []
        for f in FRACTIONS:
            losses = [best_at(outs[which]["full"], f * clock(outs, which)) for outs in runs]
            cells.append(shown(statistics.median(losses)))
        print(f"| {NAMES[which]} | " + " | ".join(cells) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--R", type=int, default=27, help="max epochs (default 27)")
    parser.add_argument("--eta", type=int, default=3, help="cut factor (default 3)")
    parser.add_argument("--n-jobs", type=int, default=2, help="phobbit's CPU workers")
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help="which to run, comma-separated (default all: %(default)s); the common clock is "
        "before's, or the first one named without it",
    )
    parser.add_argument("--one", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.R < 1 or args.eta < 2 or args.n_jobs < 1:
        parser.error("--seeds, --R and --n-jobs must be at least 1 and --eta at least 2")
    if args.one:
        one(args.one, args.seed, args.R, args.eta, args.n_jobs)
        return 0
    contenders = tuple(w.strip() for w in args.contenders.split(",") if w.strip())
    if not contenders or set(contenders) - set(CONTENDERS):
        parser.error(f"--contenders takes some of {', '.join(CONTENDERS)}, comma-separated")
    contenders = tuple(w for w in CONTENDERS if w in contenders)
    if "keras-tuner" in contenders and importlib.util.find_spec("keras_tuner") is None:
        print("keras_anytime: skipped, Keras Tuner is not installed (pip install keras-tuner)")
        return 0
    from importlib.metadata import version

    print(
        f"Anytime answers, real Keras: the tutorial MLP on scikit-learn digits, objective "
        f"val_loss, R={args.R}, eta={args.eta}, one Hyperband iteration, seeds "
        f"0..{args.seeds - 1}; search space {SPACE_DOC}; contenders {', '.join(contenders)}; "
        f"phobbit on {args.n_jobs} CPU workers"
        + (
            f", Keras Tuner {version('keras-tuner')} in one process"
            if "keras-tuner" in contenders
            else ""
        )
        + f"; Keras "
        f"{version('keras')}; {os.cpu_count()} CPUs; load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at the start."
    )
    runs: list[dict[str, dict[str, Any]]] = []
    for seed in range(args.seeds):
        shift = seed % len(contenders)
        ran = {
            which: fresh(which, seed, args.R, args.eta, args.n_jobs)
            for which in contenders[shift:] + contenders[:shift]
        }
        outs = {which: ran[which] for which in contenders}  # the clock's first, as named
        seed_table(seed, outs)
        if seed == 0 and "after" in outs:
            # With no deadline AnytimePolicy is LatestStartPolicy: any gap is the load's.
            print(
                "\nAnytimePolicy's deadlines ((iteration, s): due): "
                f"{outs['after']['release'] or 'none, the same order as before'}.",
                flush=True,
            )
        runs.append(outs)
    median_table(
        f"Median over {len(runs)} seeds, at a fraction of {contenders[0]}'s wall time on each "
        "seed (one clock for all):",
        runs,
        lambda outs, which: outs[contenders[0]]["wall_s"],
    )
    median_table(
        f"Median over {len(runs)} seeds, at a fraction of each contender's own wall time:",
        runs,
        lambda outs, which: outs[which]["wall_s"],
    )
    walls = {w: statistics.median(outs[w]["wall_s"] for outs in runs) for w in contenders}
    firsts = {
        w: statistics.median(
            outs[w]["full"][0][0] if outs[w]["full"] else math.inf for outs in runs
        )
        for w in contenders
    }
    print(
        "\nMedian wall (s): "
        + ", ".join(f"{NAMES[w]} {walls[w]:.0f}" for w in contenders)
        + ". Median first full-fidelity result (s): "
        + ", ".join(f"{NAMES[w]} {firsts[w]:.0f}" for w in contenders)
        + ". Times count from just before each fresh process started (imports included); "
        "load: the 1-minute load average at the start and end of each run."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
