"""Where one segment's time goes in a warm worker: the tutorial MLP on digits, one process.

Run it with ``python benchmarks/keras_phases.py`` (about a minute). After a
warm-up (imports, a first model traced), it times, for ``--repeats`` fresh
configurations of the seed tutorial's MLP (``keras_models.build_mlp``; Adam,
batch 32, 1437 digits to train on, 360 to validate), the phases a worker goes
through for a segment that resumes a configuration, as ``KerasTrainable.train``
does them:

- *build + compile*: the model function;
- *checkpoint load*: the optimizer built, then ``load_weights`` of a ``.keras``
  checkpoint (weights and optimizer state);
- *first epoch*: the first ``fit`` epoch of that freshly built model (Keras
  traces its train and test functions here);
- *later epoch*: each further epoch of the same ``fit`` call;
- *epoch, model already traced*: one more ``fit`` call of one epoch on the same
  model object, what a worker that kept the model would pay (issue 12, item 1);
- *checkpoint save*: ``model.save`` of the ``.keras`` file, as each epoch's
  checkpoint is written;
- *row append*: ``Repository.append`` of the segment's row (file lock, CRC
  framed line, fsync).

It prints the median of each phase in milliseconds, with the load average. It
does not import ``phobbit.keras_trainable`` (being rewritten): the phases are
the Keras calls it makes, timed one by one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from keras_models import build_mlp, load_digits_split  # noqa: E402

from phobbit.records import RunSettings, Segment, Status  # noqa: E402
from phobbit.repository import Repository  # noqa: E402
from phobbit.space import Hyperparameter, Space  # noqa: E402


def epoch_clock() -> type:
    import keras

    class EpochClock(keras.callbacks.Callback):
        """Notes when each epoch ends (its validation included)."""

        def __init__(self) -> None:
            super().__init__()
            self.ends: list[float] = []

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.ends.append(time.perf_counter())

    return EpochClock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="configurations measured")
    parser.add_argument("--later", type=int, default=4, help="later epochs timed per fit")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]

    import keras

    EpochClock = epoch_clock()  # noqa: N806 - a class
    (x, y), validation = load_digits_split()
    fit = dict(x=x, y=y, validation_data=validation, batch_size=args.batch_size, verbose=0)
    phases: dict[str, list[float]] = {
        "build + compile": [],
        "checkpoint load": [],
        "first epoch (fresh model)": [],
        "later epoch": [],
        "epoch, model already traced": [],
        "checkpoint save": [],
        "row append": [],
    }
    with tempfile.TemporaryDirectory(prefix="phobbit-phases-") as folder:
        repository = Repository(folder)
        space = Space([Hyperparameter("learning_rate", "log-uniform", (1e-4, 1e-2))])
        repository.create(RunSettings.of(space, 9, 3, 0, 1))
        warm = build_mlp(0.2, 0.3, "relu", 0.003)
        warm.fit(epochs=1, **fit)
        warm.save(f"{folder}/warm.keras")
        for repeat in range(args.repeats):
            hparams = dict(dropout1=0.2, dropout2=0.3, activation="relu")
            rate = 0.003 + 1e-4 * repeat
            keras.utils.set_random_seed(repeat)

            start = time.perf_counter()
            model = build_mlp(**hparams, learning_rate=rate)
            phases["build + compile"].append(time.perf_counter() - start)

            # A checkpoint of this architecture to resume from (the last rung's, say).
            source = f"{folder}/source{repeat}.keras"
            donor = build_mlp(**hparams, learning_rate=rate)
            donor.fit(epochs=1, **fit)
            donor.save(source)

            start = time.perf_counter()
            model.optimizer.build(model.trainable_variables)
            model.load_weights(source)
            phases["checkpoint load"].append(time.perf_counter() - start)

            clock = EpochClock()
            start = time.perf_counter()
            model.fit(epochs=1 + args.later, callbacks=[clock], **fit)
            ends = clock.ends
            phases["first epoch (fresh model)"].append(ends[0] - start)
            phases["later epoch"].append((ends[-1] - ends[0]) / args.later)

            start = time.perf_counter()
            model.fit(initial_epoch=1 + args.later, epochs=2 + args.later, **fit)
            phases["epoch, model already traced"].append(time.perf_counter() - start)

            start = time.perf_counter()
            model.save(f"{folder}/checkpoint{repeat}.keras")
            phases["checkpoint save"].append(time.perf_counter() - start)

            segment = Segment(0, 2, repeat, 0, {"learning_rate": rate}, 0, 1, f"c{repeat}")
            row = segment.result(
                val_loss=0.5, last_val_loss=0.5, status=Status.OK, error="", gpu="-1", pid=1
            )
            start = time.perf_counter()
            repository.append(row)
            phases["row append"].append(time.perf_counter() - start)

    print(
        f"keras {keras.__version__}, backend {keras.backend.backend()}; "
        f"{os.cpu_count()} CPUs, load average {load_start:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end; median of {args.repeats} configurations\n"
    )
    print("| phase | median (ms) | each (ms) |")
    print("|---|---|---|")
    for name, values in phases.items():
        each = ", ".join(f"{1000 * v:.1f}" for v in values)
        print(f"| {name} | {1000 * statistics.median(values):.1f} | {each} |")


if __name__ == "__main__":
    main()
