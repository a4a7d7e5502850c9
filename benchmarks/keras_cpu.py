"""CPU per epoch: phobbit on one CPU worker against a plain in-process Keras loop.

Run it with ``python benchmarks/keras_cpu.py`` (about 4 minutes per repeat on
two quiet cores). Both train the seed tutorial's MLP (``keras_models.build_mlp``:
Dropout, Dense(100), Dropout, Dense(10, softmax); Adam, batch 32) on
scikit-learn's digits (1437 train, 360 validation):

- *phobbit*: ``ParallelHyperband(..., n_jobs=1).run(R=27, eta=3)`` (``--n-jobs``), one
  Hyperband iteration (49 configurations, every epoch checkpointed within its
  10% budget, each segment on a model built afresh unless a worker keeps it);
- *Keras loop*: ``--configurations`` (13) configurations drawn from the same
  space, each ``fit(x, y, validation_data=..., epochs=27)`` in one process:
  the issue's baseline of 13 x 27 = 351 epochs, close to the 357 that
  phobbit trains.

Each contender runs in a fresh Python process (imports included), in turn,
``--repeats`` times, so all see the same load; ``--phobbit CHECKOUT ...``
runs the phobbit of each checkout given (before and after a change, side by
side; default: this one). CPU is the user + system
time of that process and of every process it started (``RUSAGE_CHILDREN`` of
this parent, to which a reaped grandchild's time is added; the child also
reports any descendant still alive at its end, counted too). A third process
that only imports Keras and TensorFlow gives the fixed cost that each process
pays once (phobbit pays it in each worker). Prints a markdown table: the
epochs trained, CPU seconds, CPU per epoch, wall time, the load at the start
and end of each run, and the median ratio of CPU per epoch.

The VM's own speed drifts (the same Keras loop took 64 s and 80 s of CPU in two
repeats on a quiet machine), so each contender's process also runs a fixed-work
calibration (``calibrate``: small NumPy kernels driven from a Python loop, the mix a
Keras step is made of), before and after its work; the extra column divides CPU per
epoch by that calibration's CPU, and the summary gives the median ratio of these
calibrated figures beside the raw one.

``--segments N`` measures instead, in one process, what a segment costs beyond
Keras itself: N fresh configurations, each trained for one epoch and for
``--segment-epochs`` epochs through phobbit's ``KerasTrainable.train`` (nothing kept
warm) and through ``model_function(hparams)`` then ``fit(epochs=..., validation_data)``,
interleaved, CPU clock of the process; it prints the medians, the first epoch's
extra cost and the steady epoch's cost of each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # keras_models; phobbit: the checkout on PYTHONPATH

R, ETA, BATCH = 27, 3, 32
CALIBRATION_ROUNDS = 60_000  # about 0.4 s of CPU on the 2-core VM


def calibrate(rounds: int = CALIBRATION_ROUNDS) -> float:
    """CPU seconds of a fixed piece of work: this machine's speed now, to normalise by.

    Small NumPy kernels called from a Python loop, on one thread (no BLAS), as a Keras
    step's mix of Python dispatch and small kernels; the same work on every call.
    """
    import numpy as np

    start = time.process_time()
    values = np.linspace(0.0, 1.0, 2048)
    total = 0.0
    for i in range(rounds):
        values = np.tanh(values * 1.0001 + 0.001)
        total += float(values[i % 2048])
    spent = time.process_time() - start
    assert total == total  # the work is used, so nothing is optimised away
    return spent


def descendants_cpu() -> float:
    """CPU seconds of this process's descendants still alive (not in RUSAGE_CHILDREN); 0
    without psutil (every worker phobbit starts is reaped before its run returns)."""
    try:
        import psutil
    except ImportError:
        return 0.0

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def keras_models() -> Any:
    """``benchmarks/keras_models.py``, imported without the checkout it puts first on
    ``sys.path``: phobbit, in this process and in the workers it starts (which inherit
    ``sys.path``), stays the one on ``PYTHONPATH``, so ``--phobbit`` compares checkouts."""
    saved = list(sys.path)
    import keras_models as module

    sys.path[:] = saved
    return module


def run_phobbit(n_jobs: int) -> dict[str, Any]:
    from phobbit import ParallelHyperband

    models = keras_models()
    load_digits_split, phobbit_model, phobbit_space = (
        models.load_digits_split,
        models.phobbit_model,
        models.phobbit_space,
    )

    data = load_digits_split()
    with tempfile.TemporaryDirectory(prefix="phobbit-cpu-") as repo:
        tuner = ParallelHyperband(
            phobbit_model, phobbit_space(), repo, dataset=data, n_jobs=n_jobs, seed=0, verbose=0
        )
        start = time.perf_counter()
        results = tuner.run(R=R, eta=ETA)
        search = time.perf_counter() - start
        rows = list(tuner.repository.iter_results())
    ok = results[results["Status"] == "ok"]
    driver = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "driver_cpu_s": driver.ru_utime + driver.ru_stime,
        "phobbit": str(Path(sys.modules["phobbit"].__file__).parent.parent),
        "search_s": search,
        "epochs": sum(r.epochs - r.start_epoch for r in rows),
        "best_val_loss": float(ok["Val Loss"].min()),
    }


def run_keras_loop(configurations: int) -> dict[str, Any]:
    import numpy as np

    build_mlp, load_digits_split = keras_models().build_mlp, keras_models().load_digits_split

    (x, y), validation = load_digits_split()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    best = float("inf")
    for _ in range(configurations):
        model = build_mlp(**random_hparams(rng))
        history = model.fit(
            x, y, validation_data=validation, epochs=R, batch_size=BATCH, verbose=0
        )
        best = min(best, min(history.history["val_loss"]))
    return {
        "search_s": time.perf_counter() - start,
        "epochs": configurations * R,
        "best_val_loss": best,
    }


def random_hparams(rng: Any) -> dict[str, Any]:
    """One configuration of ``keras_models.phobbit_space``, drawn from ``rng``."""
    import numpy as np

    return {
        "dropout1": float(rng.uniform(0, 0.5)),
        "dropout2": float(rng.uniform(0, 0.5)),
        "activation": str(rng.choice(["relu", "tanh", "sigmoid"])),
        "learning_rate": float(np.exp(rng.uniform(np.log(1e-4), np.log(1e-1)))),
    }


def compare_segments(count: int, epochs: int) -> None:
    """Prints what a fresh segment costs through phobbit against plain Keras, in this process.

    For each of ``count`` configurations, in turn (who goes first alternates): a fresh
    1-epoch and ``epochs``-epoch segment through ``KerasTrainable.train`` (no model kept
    warm, every save within its budget), and the same configuration built by the model
    function and ``fit`` with the validation arrays. CPU clock of this process.
    """
    import numpy as np

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from phobbit.keras_adapter.trainable import KerasTrainable

    models = keras_models()
    data = models.load_digits_split()
    (x, y), validation = data
    trainable = KerasTrainable(models.phobbit_model, load_dataset=lambda: data, warm_bytes=0)

    def phobbit(hparams: dict[str, Any], length: int, folder: str, tag: str) -> None:
        trainable.train(hparams, os.path.join(folder, tag), 0, length)

    def keras_fit(hparams: dict[str, Any], length: int, folder: str, tag: str) -> None:
        model = models.phobbit_model(hparams)
        model.fit(x, y, validation_data=validation, epochs=length, batch_size=BATCH, verbose=0)

    contenders = {"phobbit KerasTrainable.train": phobbit, "model_function + fit": keras_fit}
    spent: dict[tuple[str, int], list[float]] = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="phobbit-segments-") as folder:
        for which in contenders.values():  # imports and Keras' first-use costs, untimed
            which(random_hparams(rng), 1, folder, "warm-up")
        for index in range(count):
            hparams = random_hparams(rng)
            order = list(contenders.items())
            if index % 2:
                order.reverse()
            for length in (1, epochs):
                for label, which in order:
                    start = time.process_time()
                    which(hparams, length, folder, f"{index}-{length}")
                    spent.setdefault((label, length), []).append(time.process_time() - start)
    print(
        f"Fresh segments of the tutorial MLP in one process, {count} configurations, "
        f"CPU clock; load average {os.getloadavg()[0]:.1f} at the end.\n"
    )
    print(
        f"| contender | 1-epoch segment (ms) | {epochs}-epoch segment (ms) "
        "| steady epoch (ms) | first epoch's extra (ms) |"
    )
    print("|---|---|---|---|---|")
    for label in contenders:
        one, many = spent[(label, 1)], spent[(label, epochs)]
        steady = statistics.median((b - a) / (epochs - 1) for a, b in zip(one, many))
        print(
            f"| {label} | {1000 * statistics.median(one):.0f} "
            f"| {1000 * statistics.median(many):.0f} | {1000 * steady:.0f} "
            f"| {1000 * (statistics.median(one) - steady):.0f} |"
        )


def run_imports() -> dict[str, Any]:
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    return {"search_s": 0.0, "epochs": 0, "best_val_loss": float("nan")}


def one(which: str, configurations: int, n_jobs: int) -> None:
    """Runs one contender in this process; prints its numbers as JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    before = calibrate()
    if which == "phobbit":
        out = run_phobbit(n_jobs)
    elif which == "keras":
        out = run_keras_loop(configurations)
    else:
        out = run_imports()
    out["calibration_s"] = (before + calibrate()) / 2
    if "driver_cpu_s" in out:
        out["driver_cpu_s"] -= before  # the driver's own CPU, not the calibration's
    out["alive_children_cpu_s"] = descendants_cpu()
    print("RESULT " + json.dumps(out), flush=True)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(command: Sequence[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs ``command`` (which prints a RESULT line); adds its wall, CPU and the load."""
    load_start = os.getloadavg()[0]
    cpu_before = children_cpu()
    start = time.perf_counter()
    environment = dict(os.environ) if env is None else env
    done = subprocess.run(list(command), capture_output=True, text=True, env=environment)
    wall = time.perf_counter() - start
    cpu = children_cpu() - cpu_before
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"{command[-1]}: exit {done.returncode}: {' / '.join(tail)}")
    out = json.loads(lines[-1][len("RESULT ") :])
    calibration = 2 * out.get("calibration_s", 0.0)  # its two runs, not the contender's work
    out.update(
        wall_s=wall,
        cpu_s=cpu + out.get("alive_children_cpu_s", 0.0) - calibration,
        load=(load_start, os.getloadavg()[0]),
    )
    return out


def fresh(which: str, configurations: int, n_jobs: int, checkout: str) -> dict[str, Any]:
    """One contender in a fresh process whose phobbit (and its workers') is ``checkout``'s."""
    command = [sys.executable, __file__, "--one", which]
    command += ["--configurations", str(configurations), "--n-jobs", str(n_jobs)]
    return measured(command, dict(os.environ, PYTHONPATH=checkout))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each contender")
    parser.add_argument("--configurations", type=int, default=13, help="Keras loop's")
    parser.add_argument("--n-jobs", type=int, default=1, help="phobbit's CPU workers")
    parser.add_argument("--phobbit", nargs="+", default=[str(HERE.parent)], help="checkouts")
    parser.add_argument("--one", choices=["phobbit", "keras", "imports"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--segments", type=int, default=0, help="compare N fresh segments in one process"
    )
    parser.add_argument("--segment-epochs", type=int, default=6, help="with --segments")
    args = parser.parse_args(argv)
    if args.segments:
        if args.segment_epochs < 2:
            parser.error(f"--segment-epochs must be at least 2, got {args.segment_epochs}")
        compare_segments(args.segments, args.segment_epochs)
        return 0
    if args.one:
        one(args.one, args.configurations, args.n_jobs)
        return 0
    import keras

    print(
        f"The tutorial MLP on scikit-learn digits, R={R}, eta={ETA}, batch {BATCH}; phobbit "
        f"on {args.n_jobs} CPU workers, the Keras loop {args.configurations} x {R} epochs in "
        f"one process; Keras {keras.__version__}; {os.cpu_count()} CPUs; load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at the start.\n"
    )
    print(
        "| run | contender | epochs | CPU (s) | of which phobbit's driver (s) "
        "| CPU per epoch (ms) | calibration (s) | CPU per epoch / calibration | wall (s) "
        "| load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    checkouts = [str(Path(path).resolve()) for path in args.phobbit]
    contenders = [("keras", checkouts[0])] + [("phobbit", c) for c in checkouts]

    def name(which: str, checkout: str) -> str:
        if which == "keras":
            return "Keras loop"
        where = f" ({checkout})" if len(checkouts) > 1 else ""
        return f"phobbit, {args.n_jobs} workers{where}"

    per_epoch: dict[str, list[float]] = {name(*c): [] for c in contenders}
    calibrated: dict[str, list[float]] = {name(*c): [] for c in contenders}
    walls: dict[str, list[float]] = {name(*c): [] for c in contenders}
    imports = fresh("imports", args.configurations, args.n_jobs, checkouts[0])
    print(
        f"| - | imports only | 0 | {imports['cpu_s']:.1f} | - | - "
        f"| {imports['calibration_s']:.2f} | - | {imports['wall_s']:.1f} "
        f"| {imports['load'][0]:.1f} → {imports['load'][1]:.1f} |",
        flush=True,
    )
    for repeat in range(args.repeats):
        # Rotate who goes first, so none always runs after the same other.
        shift = repeat % len(contenders)
        for which, checkout in contenders[shift:] + contenders[:shift]:
            out = fresh(which, args.configurations, args.n_jobs, checkout)
            if out.get("phobbit", checkout) != checkout:
                raise SystemExit(f"phobbit of {out['phobbit']} ran, not that of {checkout}")
            driver = f"{out['driver_cpu_s']:.1f}" if "driver_cpu_s" in out else "-"
            cost = out["cpu_s"] / out["epochs"]
            per_epoch[name(which, checkout)].append(cost)
            calibrated[name(which, checkout)].append(cost / out["calibration_s"])
            walls[name(which, checkout)].append(out["wall_s"])
            print(
                f"| {repeat + 1} | {name(which, checkout)} | {out['epochs']} "
                f"| {out['cpu_s']:.1f} | {driver} | {1000 * cost:.0f} "
                f"| {out['calibration_s']:.2f} | {cost / out['calibration_s']:.3f} "
                f"| {out['wall_s']:.1f} "
                f"| {out['load'][0]:.1f} → {out['load'][1]:.1f} |",
                flush=True,
            )
    keras_loop = name("keras", checkouts[0])
    print()
    for checkout in checkouts:
        mine = name("phobbit", checkout)
        ratios = [p / k for p, k in zip(per_epoch[mine], per_epoch[keras_loop])]
        steady = [p / k for p, k in zip(calibrated[mine], calibrated[keras_loop])]
        wall = statistics.median(walls[mine]) / statistics.median(walls[keras_loop])
        print(
            f"{mine}: CPU per epoch / Keras loop's, median {statistics.median(ratios):.2f} "
            f"(each repeat: {', '.join(f'{r:.2f}' for r in ratios)}); calibrated, median "
            f"{statistics.median(steady):.2f} (each repeat: "
            f"{', '.join(f'{r:.2f}' for r in steady)}); wall / Keras loop's {wall:.2f}."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
