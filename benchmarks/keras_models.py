"""A real model: the seed tutorial's MLP on scikit-learn's digits, phobbit against Keras Tuner.

Run it with ``python benchmarks/keras_models.py`` (``--quick`` for R=9). For
R=27, eta=3 it tunes the tutorial's MLP (Dropout, Dense(100), Dropout,
Dense(10, softmax); Adam with a log-uniform learning rate) with

- phobbit on 1 and on 2 CPU workers (``ParallelHyperband(..., n_jobs=...)``);
- Keras Tuner's ``Hyperband(max_epochs=27, factor=3, hyperband_iterations=1)``
  on the same model and an equivalent search space;

each in a fresh Python process, and prints a markdown table: the wall time of
that process (imports included), the time of the search call alone, the best
validation loss, the configurations, the training runs and the epochs trained. Nothing is
downloaded: digits ship with scikit-learn, and Keras Tuner needs no network.
Keras Tuner is an optional dependency (``pip install keras-tuner``); without it
its row says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's phobbit

SPACE_DOC = (
    "dropout1, dropout2 ~ U(0, 0.5); activation in relu/tanh/sigmoid; lr ~ logU(1e-4, 1e-1)"
)


def load_digits_split() -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """scikit-learn's digits: 64 features scaled to [0, 1], shuffled; 1437 train, 360 validate."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1437], y[:1437]), (x[1437:], y[1437:])


def build_mlp(dropout1: float, dropout2: float, activation: str, learning_rate: float) -> Any:
    """The seed tutorial's MLP, compiled."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dropout(dropout1),
            keras.layers.Dense(100, activation=activation),
            keras.layers.Dropout(dropout2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def phobbit_model(hparams: dict[str, Any]) -> Any:
    """phobbit's model function: a dict of hyperparameters in, a compiled model out."""
    return build_mlp(**hparams)


def phobbit_space() -> list[Any]:
    from phobbit import Hyperparameter

    return [
        Hyperparameter("dropout1", "uniform", (0.0, 0.5)),
        Hyperparameter("dropout2", "uniform", (0.0, 0.5)),
        Hyperparameter("activation", "choice", [("relu", "tanh", "sigmoid")]),
        Hyperparameter("learning_rate", "log-uniform", (1e-4, 1e-1)),
    ]


def run_phobbit(R: int, eta: int, n_jobs: int) -> dict[str, Any]:
    from phobbit import ParallelHyperband

    data = load_digits_split()
    with tempfile.TemporaryDirectory(prefix="phobbit-keras-") as repo:
        tuner = ParallelHyperband(
            phobbit_model, phobbit_space(), repo, dataset=data, n_jobs=n_jobs, seed=0, verbose=0
        )
        start = time.perf_counter()
        results = tuner.run(R=R, eta=eta)
        search = time.perf_counter() - start
        rows = list(tuner.repository.iter_results())
    ok = results[results["Status"] == "ok"]
    return {
        "search_s": search,
        "best_val_loss": float(ok["Val Loss"].min()),
        "configurations": len(results),
        "runs": len(rows),
        "epochs": sum(r.epochs - r.start_epoch for r in rows),
    }


def run_keras_tuner(R: int, eta: int) -> dict[str, Any]:
    try:
        import keras_tuner
    except ImportError:
        return {"error": "keras-tuner is not installed (pip install keras-tuner)"}
    import keras

    class EpochCounter(keras.callbacks.Callback):
        """Counts every epoch trained (a class attribute: Keras Tuner copies callbacks)."""

        count = 0

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            type(self).count += 1

    def build(hp: Any) -> Any:
        return build_mlp(
            hp.Float("dropout1", 0.0, 0.5),
            hp.Float("dropout2", 0.0, 0.5),
            hp.Choice("activation", ["relu", "tanh", "sigmoid"]),
            hp.Float("learning_rate", 1e-4, 1e-1, sampling="log"),
        )

    class Hyperband(keras_tuner.Hyperband):
        def _configure_tensorboard_dir(
            self, callbacks: Any, trial: Any, execution: int = 0
        ) -> None:
            # It only wires TensorBoard callbacks (there are none here), but it
            # imports tensorboard first, which TensorFlow no longer installs.
            pass

    (x, y), validation = load_digits_split()
    with tempfile.TemporaryDirectory(prefix="keras-tuner-") as folder:
        tuner = Hyperband(
            build,
            objective="val_loss",
            max_epochs=R,
            factor=eta,
            hyperband_iterations=1,
            seed=0,
            directory=folder,
            project_name="digits",
            overwrite=True,
        )
        start = time.perf_counter()
        tuner.search(x, y, validation_data=validation, callbacks=[EpochCounter()], verbose=0)
        search = time.perf_counter() - start
        best = tuner.oracle.get_best_trials(1)[0].score
        trials = list(tuner.oracle.trials.values())
    # A promoted configuration is a new trial that resumes an earlier one (round > 0).
    fresh_configurations = [
        t for t in trials if t.hyperparameters.values.get("tuner/round", 0) == 0
    ]
    return {
        "search_s": search,
        "best_val_loss": float(best),
        "configurations": len(fresh_configurations),
        "runs": len(trials),
        "epochs": EpochCounter.count,
        "version": keras_tuner.__version__,
    }


def one(which: str, R: int, eta: int, n_jobs: int) -> None:
    """Runs one contender in this process and prints its numbers as JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if which == "phobbit":
        out = run_phobbit(R, eta, n_jobs)
    else:
        out = run_keras_tuner(R, eta)
    print("RESULT " + json.dumps(out))


def fresh(which: str, R: int, eta: int, n_jobs: int = 1) -> dict[str, Any]:
    """One contender in a fresh Python process: its wall time includes every import."""
    command = [
        sys.executable,
        __file__,
        "--one",
        which,
        "--R",
        str(R),
        "--eta",
        str(eta),
        "--n-jobs",
        str(n_jobs),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: {' / '.join(tail)}", "wall_s": wall}
    out = json.loads(lines[-1][len("RESULT ") :])
    out["wall_s"] = wall
    return out


def row(name: str, out: dict[str, Any]) -> str:
    if "error" in out:
        return f"| {name} | - | - | - | - | - | - | {out['error']} |"
    note = f"keras-tuner {out['version']}" if "version" in out else ""
    return (
        f"| {name} | {out['wall_s']:.1f} | {out['search_s']:.1f} | {out['best_val_loss']:.4f} "
        f"| {out['configurations']} | {out['runs']} | {out['epochs']} | {note} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--R", type=int, default=27, help="max epochs (default 27)")
    parser.add_argument("--eta", type=int, default=3, help="cut factor (default 3)")
    parser.add_argument("--quick", action="store_true", help="R=9: a short smoke run")
    parser.add_argument("--one", choices=["phobbit", "keras-tuner"], help=argparse.SUPPRESS)
    parser.add_argument("--n-jobs", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.R = 9
    if args.one:
        one(args.one, args.R, args.eta, args.n_jobs)
        return 0
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"Real-model benchmark: the tutorial MLP on scikit-learn digits (1437 train, 360 "
        f"validation), R={args.R}, eta={args.eta}, batch 32, seed 0; search space {SPACE_DOC}; "
        f"{os.cpu_count()} CPUs, load average {load} at the start.\n"
    )
    print(
        "| tuner | wall (s) | search (s) | best val loss | configurations | training runs "
        "| epochs trained | notes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    runs = [
        ("phobbit, 1 CPU worker", lambda: fresh("phobbit", args.R, args.eta, 1)),
        ("phobbit, 2 CPU workers", lambda: fresh("phobbit", args.R, args.eta, 2)),
        ("Keras Tuner Hyperband", lambda: fresh("keras-tuner", args.R, args.eta)),
    ]
    for name, go in runs:
        print(row(name, go()), flush=True)
    print(
        "\nwall: the whole fresh process, imports included; search: the tuning call alone "
        "(phobbit's includes starting its workers, which import TensorFlow); training runs: "
        "phobbit's segments, Keras Tuner's trials (a promotion is a new trial)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
