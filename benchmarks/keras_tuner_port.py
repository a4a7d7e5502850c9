"""One Keras Tuner script, two imports: Keras Tuner against ``phobbit.keras_tuner``.

Issue 20 asks that a Keras Tuner script run on phobbit with only its import changed,
and that the two be compared side by side: the median best objective over at least 5
seeds at equal epoch budgets, and the wall time on 2 workers (phobbit ``n_jobs=2``;
Keras Tuner trains one model at a time), with the load. Run it as

    python benchmarks/keras_tuner_port.py --seeds 5 --max-epochs 9

and, to set a change against the phobbit it replaces in the same run, with a third tool
(``--before DIR``: the phobbit of another checkout, e.g. ``git worktree add /tmp/before
main``, run by its own copy of this script):

    python benchmarks/keras_tuner_port.py --seeds 2 --max-epochs 27 --before /tmp/before

``script(kt, seed, max_epochs)`` below is the script: Keras Tuner's getting-started
``build_model(hp)`` (``hp.Int`` units, ``hp.Choice`` activation, ``hp.Boolean`` dropout,
``hp.Float(sampling="log")`` learning rate), adapted to scikit-learn's digits (1437
train, 360 validation, ``keras_models.load_digits_split``; the input is ``keras.Input((64,))``
instead of ``Flatten`` over 28x28 images and the labels are integers, hence
``sparse_categorical_crossentropy``), then ``Hyperband(objective="val_loss",
max_epochs=..., factor=3, seed=seed, directory=tmp, overwrite=True)``,
``search(x, y, validation_data=...)``, and the best model evaluated on the validation
data. ``kt`` is ``keras_tuner`` or ``phobbit.keras_tuner``, the only difference, except
one: with phobbit the script passes ``n_jobs=2`` (a Keras Tuner script would not have
it; Keras Tuner has no such argument and trains one model at a time).

Each (tool, seed) runs in a fresh Python process (imports included in its wall time),
the two tools alternating per seed so both see the same load. Per run it records the
wall time (process start to end), the best val loss the tuner lists, the best model's
val loss evaluated here, the epochs trained (counted from each tool's own records after
the search: Keras Tuner's trials' ``tuner/epochs - tuner/initial_epoch``, phobbit's
repository rows) and ``os.getloadavg()`` before and after. Prints a markdown table row
per run, then the medians, and saves ``keras_tuner_port.json`` next to this file.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's phobbit, and keras_models

TOOLS = {"keras_tuner": "Keras Tuner", "phobbit.keras_tuner": "phobbit, n_jobs=2"}
BEFORE = "before"  # phobbit.keras_tuner of another checkout (--before DIR), side by side


def build_model(hp: Any) -> Any:
    """Keras Tuner's getting-started model, on digits' 64 features instead of MNIST's images."""
    import keras  # imported by then: the script imports it first
    from keras import layers

    model = keras.Sequential()
    model.add(keras.Input((64,)))
    model.add(
        layers.Dense(
            units=hp.Int("units", min_value=32, max_value=512, step=32),
            activation=hp.Choice("activation", ["relu", "tanh"]),
        )
    )
    if hp.Boolean("dropout"):
        model.add(layers.Dropout(rate=0.25))
    model.add(layers.Dense(10, activation="softmax"))
    learning_rate = hp.Float("lr", min_value=1e-4, max_value=1e-2, sampling="log")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def make_tuner(kt: Any, seed: int, max_epochs: int, directory: str) -> Any:
    """The script's ``Hyperband``, for either module."""
    # The one line a Keras Tuner script would not have: phobbit's worker count.
    workers = {"n_jobs": 2} if kt.__name__ == "phobbit.keras_tuner" else {}
    return kt.Hyperband(
        build_model,
        objective="val_loss",
        max_epochs=max_epochs,
        factor=3,
        seed=seed,
        directory=directory,
        project_name="digits",
        overwrite=True,
        **workers,
    )


def script(kt: Any, seed: int, max_epochs: int) -> tuple[tuple[float, int], float]:
    """The Keras Tuner script, the same for both modules; returns ((listed, epochs), evaluated)."""
    import keras  # noqa: F401  (a Keras Tuner script imports Keras first; timed as one)
    from keras_models import load_digits_split

    (x, y), (x_val, y_val) = load_digits_split()
    with tempfile.TemporaryDirectory(prefix="kt-port-") as tmp:
        tuner = make_tuner(kt, seed, max_epochs, tmp)
        tuner.search(x, y, validation_data=(x_val, y_val), verbose=0)
        best_model = tuner.get_best_models(num_models=1)[0]
        evaluated = best_model.evaluate(x_val, y_val, verbose=0)[0]
        listed, epochs = records(tuner)
    return (listed, epochs), float(evaluated)


def records(tuner: Any) -> tuple[float, int]:
    """The best val loss the tuner lists and the epochs it trained, from its own records
    (measurement, outside the script's logic)."""
    if hasattr(tuner, "oracle"):  # Keras Tuner
        trials = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
        epochs = sum(
            t.hyperparameters.values.get("tuner/epochs", 0)
            - t.hyperparameters.values.get("tuner/initial_epoch", 0)
            for t in trials
        )
        return float(tuner.oracle.get_best_trials(1)[0].score), int(epochs)
    best = tuner._view().best(1)[0]
    rows = list(tuner.tuner.repository.iter_results())
    return float(best.objective), int(sum(r.epochs - r.start_epoch for r in rows))


def one(module: str, seed: int, max_epochs: int) -> None:
    """Runs the script with ``module`` as ``kt`` in this process; prints a RESULT line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    kt = importlib.import_module(module)
    start = time.perf_counter()
    (listed, epochs), evaluated = script(kt, seed, max_epochs)
    out = {"listed": listed, "evaluated": evaluated, "epochs": epochs}
    out["script_s"] = time.perf_counter() - start
    print("RESULT " + json.dumps(out))


def fresh(module: str, seed: int, max_epochs: int, before: Path | None = None) -> dict[str, Any]:
    """One (tool, seed) in a fresh process whose phobbit (workers' too) is this checkout's,
    or, for ``BEFORE``, the checkout ``before`` (its own copy of this script)."""
    root, name = HERE.parent, module
    if module == BEFORE:
        assert before is not None
        root, name = before, "phobbit.keras_tuner"
    script_path = root / "benchmarks" / Path(__file__).name
    command = [sys.executable, str(script_path), "--one", name, "--seed", str(seed)]
    command += ["--max-epochs", str(max_epochs)]
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2")
    load_before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    out: dict[str, Any] = {"tool": module, "seed": seed, "wall_s": wall}
    out.update(load_before=load_before, load_after=os.getloadavg())
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        out["error"] = f"exit {done.returncode}: {' / '.join(tail)}"
    else:
        out.update(json.loads(lines[-1][len("RESULT ") :]))
    return out


def row(out: dict[str, Any]) -> str:
    """One markdown row of a run."""
    load = f"{out['load_before'][0]:.2f} → {out['load_after'][0]:.2f}"
    head = f"| {out['seed']} | {TOOLS[out['tool']]} | {out['wall_s']:.1f} "
    if "error" in out:
        return head + f"| - | - | - | {load} | {out['error']} |"
    return head + f"| {out['listed']:.4f} | {out['evaluated']:.4f} | {out['epochs']} | {load} | |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 per tool")
    parser.add_argument("--max-epochs", type=int, default=9, help="Hyperband's max_epochs")
    parser.add_argument("--one", choices=sorted(TOOLS), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--before",
        type=Path,
        help="another phobbit checkout (e.g. from `git worktree add /tmp/before main`) run "
        "as a third tool, alternating with the other two, for a before/after ratio",
    )
    args = parser.parse_args(argv)
    if args.before is not None:
        TOOLS[BEFORE] = f"phobbit before ({args.before.name}), n_jobs=2"
    if args.one:
        one(args.one, args.seed, args.max_epochs)
        return 0
    import keras
    import keras_tuner

    start_load = os.getloadavg()
    print(
        f"Keras Tuner's getting-started build_model(hp) on scikit-learn's digits, "
        f"Hyperband(objective='val_loss', max_epochs={args.max_epochs}, factor=3), seeds "
        f"0..{args.seeds - 1}; Keras Tuner {keras_tuner.__version__} (one model at a time) "
        f"against phobbit.keras_tuner with n_jobs=2; Keras {keras.__version__}; "
        f"{os.cpu_count()} CPUs; load average (1, 5, 15 min) "
        f"{', '.join(f'{x:.2f}' for x in start_load)} at the start.\n"
    )
    print(
        "| seed | tool | wall (s) | best val loss listed | best model evaluated "
        "| epochs | load (1 min) | note |"
    )
    print("|---|---|---|---|---|---|---|---|")
    runs = []
    for seed in range(args.seeds):
        order = list(TOOLS) if seed % 2 == 0 else list(TOOLS)[::-1]
        for module in order:
            out = fresh(module, seed, args.max_epochs, args.before)
            runs.append(out)
            print(row(out), flush=True)
    end_load = os.getloadavg()
    ok = [r for r in runs if "error" not in r]
    summary: dict[str, Any] = {}
    for module in TOOLS:
        mine = [r for r in ok if r["tool"] == module]
        if mine:
            summary[module] = {
                "median_listed": statistics.median(r["listed"] for r in mine),
                "median_evaluated": statistics.median(r["evaluated"] for r in mine),
                "median_wall_s": statistics.median(r["wall_s"] for r in mine),
                "median_epochs": statistics.median(r["epochs"] for r in mine),
                "runs": len(mine),
            }
    walls = {(r["tool"], r["seed"]): r["wall_s"] for r in ok}
    ratios = [
        walls[("phobbit.keras_tuner", s)] / walls[("keras_tuner", s)]
        for s in range(args.seeds)
        if ("phobbit.keras_tuner", s) in walls and ("keras_tuner", s) in walls
    ]
    print(
        "\n| tool | runs | median best val loss listed | median evaluated | median wall (s) "
        "| median epochs |"
    )
    print("|---|---|---|---|---|---|")
    for module, s in summary.items():
        print(
            f"| {TOOLS[module]} | {s['runs']} | {s['median_listed']:.4f} "
            f"| {s['median_evaluated']:.4f} | {s['median_wall_s']:.1f} | {s['median_epochs']} |"
        )
    if ratios:
        print(
            f"\nWall, phobbit / Keras Tuner, per seed: {', '.join(f'{x:.2f}' for x in ratios)}; "
            f"median {statistics.median(ratios):.2f} (target ≤ 0.5)."
        )
    for top, bottom in ((BEFORE, "keras_tuner"), ("phobbit.keras_tuner", BEFORE)):
        pairs = [
            walls[(top, s)] / walls[(bottom, s)]
            for s in range(args.seeds)
            if (top, s) in walls and (bottom, s) in walls
        ]
        if pairs:
            print(
                f"Wall, {TOOLS[top]} / {TOOLS[bottom]}, per seed: "
                f"{', '.join(f'{x:.2f}' for x in pairs)}; median {statistics.median(pairs):.2f}."
            )
    print(f"Load average at the end: {', '.join(f'{x:.2f}' for x in end_load)}.")
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "max_epochs": args.max_epochs,
        "seeds": args.seeds,
        "versions": {"keras": keras.__version__, "keras_tuner": keras_tuner.__version__},
        "cpus": os.cpu_count(),
        "load_start": start_load,
        "load_end": end_load,
        "runs": runs,
        "summary": summary,
        "wall_ratios": ratios,
        "median_wall_ratio": statistics.median(ratios) if ratios else None,
    }
    (HERE / "keras_tuner_port.json").write_text(json.dumps(report, indent=1) + "\n")
    return 1 if len(ok) < len(runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
