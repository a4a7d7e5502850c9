"""Where one segment's time goes in a warm worker: the tutorial MLP on digits, per checkout.

Run it with ``python benchmarks/keras_phases.py`` (about a minute), or give
checkouts to compare side by side: ``python benchmarks/keras_phases.py
--phobbit /work/main .`` runs each in its own fresh process, in turn,
``--rounds`` times. Each process sets a worker's thread variables
(``phobbit.execution.worker.thread_environment(--threads)``; 1, as each of 2 workers on
2 cores), warms up (imports, a first model trained), then trains
``--repeats`` configurations of the seed tutorial's MLP
(``keras_models.build_mlp``; Adam, batch 32, 1437 digits to train on, 360 to
validate) through that checkout's ``KerasTrainable.train``: a fresh segment
of ``1 + --later`` epochs, then a segment that resumes it for one epoch. The
phases, timed by wrapping the calls ``train`` makes:

- *build + compile*: the model function;
- *checkpoint load*: from the model built to ``load_weights`` done (the
  optimizer built, weights and optimizer state read);
- *segment setup*: from the model ready to ``fit`` called (data pipeline,
  callbacks, compiled state);
- *first epoch (fresh model)*: from ``fit`` called to the first epoch's end
  (Keras traces its train and test functions here), its save excluded;
- *first epoch (restored model)*: the same in a resumed segment whose model is
  rebuilt and loaded from its checkpoint (the worker keeps no model warm);
- *first epoch (warm model)*: the same in a resumed segment that continues the
  model the worker kept in memory (``phobbit.execution.warm``: no build, no load);
- *later epoch*: each further epoch of the fresh segment, saves excluded;
- *checkpoint save*: each ``save_checkpoint`` (the ``.keras`` file with its
  progress member), within the 10% budget;
- *row append*: ``Repository.append`` of a segment's row (file lock, CRC
  framed line, fsync);
- *1-epoch segment*: a whole ``train`` call of one epoch on a fresh
  configuration, wall and CPU (of every thread of the process).

It prints the median of each phase in milliseconds per checkout, with the load
average.
"""

from __future__ import annotations

import argparse
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

PHASES = (
    "build + compile",
    "checkpoint load",
    "segment setup",
    "first epoch (fresh model)",
    "first epoch (restored model)",
    "first epoch (warm model)",
    "later epoch",
    "checkpoint save",
    "row append",
    "1-epoch segment",
    "1-epoch segment, CPU",
)


def measure(repeats: int, later: int, threads: int) -> dict[str, list[float]]:
    """The phases of ``repeats`` configurations in this process, in seconds."""
    from phobbit.execution.worker import thread_environment

    os.environ.update(thread_environment(threads))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(1, str(HERE))
    import keras
    from keras_models import build_mlp, load_digits_split

    import phobbit.keras_adapter.trainable as adapter
    from phobbit.core.records import RunSettings, Segment, Status
    from phobbit.core.space import Hyperparameter, Space
    from phobbit.execution import warm
    from phobbit.keras_adapter.trainable import KerasTrainable
    from phobbit.storage.repository import Repository

    marks: dict[str, Any] = {}
    phases: dict[str, list[float]] = {name: [] for name in PHASES}

    def model_function(hparams: dict[str, Any]) -> Any:
        start = time.perf_counter()
        model = build_mlp(**hparams)
        marks["built"] = time.perf_counter()
        phases["build + compile"].append(marks["built"] - start)
        return model

    class Clock(keras.callbacks.Callback):
        """Notes each epoch's end; it runs before phobbit's saver, so saves fall between."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            marks["ends"].append(time.perf_counter())

    def timed(function: Any, name: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = function(*args, **kwargs)
            marks.setdefault(name, []).append((start, time.perf_counter()))
            return result

        return wrapper

    keras.Model.fit = timed(keras.Model.fit, "fit")
    keras.Model.load_weights = timed(keras.Model.load_weights, "load")
    adapter.save_checkpoint = timed(adapter.save_checkpoint, "save")

    def trainable(warm_bytes: int) -> Any:
        return KerasTrainable(
            model_function,
            load_dataset=load_digits_split,
            callbacks=lambda hparams: [Clock()],
            warm_bytes=warm_bytes,
        )

    # Cold: a resumed segment rebuilds its model and loads it (a checkpoint load to time);
    # warm: the worker's default, a resumed segment continues the model it kept.
    cold, kept = trainable(0), trainable(warm.DEFAULT_BYTES)

    def segment(
        hparams: dict[str, Any], path: str, first: int, last: int, warm: bool = False
    ) -> float:
        for name in ("fit", "load", "save"):
            marks[name] = []
        marks["ends"] = []
        start = time.perf_counter()
        (kept if warm else cold).train(hparams, path, first, last)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="phobbit-phases-") as folder:
        repository = Repository(folder)
        space = Space([Hyperparameter("learning_rate", "log-uniform", (1e-4, 1e-2))])
        repository.create(RunSettings.of(space, 9, 3, 0, 1))
        hparams = dict(dropout1=0.2, dropout2=0.3, activation="relu", learning_rate=0.003)
        segment(hparams, f"{folder}/warm", 0, 2)  # imports, the first model ever traced
        for name in PHASES:
            phases[name].clear()
        for repeat in range(repeats):
            hparams["learning_rate"] = 0.003 + 1e-4 * repeat
            path = f"{folder}/c{repeat}"
            segment(hparams, path, 0, 1 + later)
            (fit_start, _), ends = marks["fit"][0], marks["ends"]
            saves = [end - begin for begin, end in marks["save"]]
            ready = marks["built"]
            phases["segment setup"].append(fit_start - ready)
            phases["first epoch (fresh model)"].append(ends[0] - fit_start)
            phases["later epoch"].append((ends[-1] - ends[0] - sum(saves[:-1])) / later)
            phases["checkpoint save"].extend(saves)

            segment(hparams, path, 1 + later, 2 + later)
            (fit_start, _), (_, loaded) = marks["fit"][0], marks["load"][0]
            phases["checkpoint load"].append(loaded - marks["built"])
            phases["first epoch (restored model)"].append(marks["ends"][0] - fit_start)

            warm_path = f"{folder}/w{repeat}"
            segment(hparams, warm_path, 0, 1, warm=True)
            segment(hparams, warm_path, 1, 2, warm=True)
            if marks["load"]:
                raise RuntimeError("the warm segment loaded its checkpoint: no model was kept")
            phases["first epoch (warm model)"].append(marks["ends"][0] - marks["fit"][0][0])

            hparams["learning_rate"] += 5e-5
            cpu = time.process_time()
            phases["1-epoch segment"].append(segment(hparams, f"{folder}/one{repeat}", 0, 1))
            phases["1-epoch segment, CPU"].append(time.process_time() - cpu)

            row = Segment(0, 2, repeat, 0, {"learning_rate": 0.003}, 0, 1, f"c{repeat}").result(
                val_loss=0.5, last_val_loss=0.5, status=Status.OK, error="", gpu="-1", pid=1
            )
            start = time.perf_counter()
            repository.append(row)
            phases["row append"].append(time.perf_counter() - start)
    return phases


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phobbit", nargs="+", default=[str(HERE.parent)], help="checkouts")
    parser.add_argument("--rounds", type=int, default=1, help="processes per checkout")
    parser.add_argument("--repeats", type=int, default=5, help="configurations per process")
    parser.add_argument("--later", type=int, default=4, help="later epochs timed per segment")
    parser.add_argument("--threads", type=int, default=1, help="the worker's CPU threads")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        found = measure(args.repeats, args.later, args.threads)
        print("RESULT " + json.dumps(found))
        return 0
    checkouts = [str(Path(path).resolve()) for path in args.phobbit]
    load_start = os.getloadavg()[0]
    found: dict[str, dict[str, list[float]]] = {c: {n: [] for n in PHASES} for c in checkouts}
    for _ in range(args.rounds):
        for checkout in checkouts:
            command = [sys.executable, __file__, "--one", "--repeats", str(args.repeats)]
            command += ["--later", str(args.later), "--threads", str(args.threads)]
            env = dict(os.environ, PYTHONPATH=checkout)
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                tail = " / ".join(done.stderr.strip().splitlines()[-3:])
                raise SystemExit(f"{checkout}: exit {done.returncode}: {tail}")
            for name, values in json.loads(lines[-1][len("RESULT ") :]).items():
                found[checkout][name].extend(values)
    import keras

    print(
        f"keras {keras.__version__}; {os.cpu_count()} CPUs, {args.threads} thread(s) per "
        f"worker; load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the "
        f"end; median of {args.rounds} x {args.repeats} configurations per checkout, "
        f"in milliseconds\n"
    )
    print("| phase | " + " | ".join(checkouts) + " |")
    print("|---|" + "---|" * len(checkouts))
    for name in PHASES:
        cells = [f"{1000 * statistics.median(found[c][name]):.1f}" for c in checkouts]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
