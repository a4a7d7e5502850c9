"""What one Keras epoch costs inside phobbit: the tutorial MLP on digits, one process.

Run it with ``python benchmarks/keras_epoch.py`` (about a minute). It trains the
seed tutorial's MLP (``keras_models.build_mlp``) through ``KerasTrainable.train``
exactly as a worker does (checkpoint saves within their budget included) and
prints, as the median of ``--repeats`` fresh configurations:

- the *segment* cost: a 1-epoch segment from scratch (model built, data
  adapter made, one epoch trained and validated, checkpoint saved);
- the *per-epoch* cost: ``(t(0 -> 1 + E) - t(0 -> 1)) / E``, what each further
  epoch of a segment adds.

It imports the phobbit of the checkout it lives in, or of ``PYTHONPATH``'s
first entry when that is given, so two checkouts can be compared alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if not os.environ.get("PYTHONPATH"):
    sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import phobbit  # noqa: E402  (before keras_models, which puts this checkout first)

# isort: split
from keras_models import build_mlp, load_digits_split  # noqa: E402


def model(hparams: dict) -> object:
    return build_mlp(**hparams)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="E, epochs after the first")
    parser.add_argument("--repeats", type=int, default=5, help="configurations measured")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from phobbit.keras_adapter.trainable import KerasTrainable

    data = load_digits_split()
    trainable = KerasTrainable(model, load_dataset=lambda: data, batch_size=args.batch_size)
    hparams = {"dropout1": 0.2, "dropout2": 0.3, "activation": "relu", "learning_rate": 0.003}
    trainable.train(hparams, tempfile.mkdtemp() + "/warm", 0, 2)  # imports, tracing
    segment, per_epoch = [], []
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            config = {**hparams, "learning_rate": 0.003 + 1e-4 * repeat}
            start = time.perf_counter()
            trainable.train(config, f"{folder}/one{repeat}", 0, 1)
            one = time.perf_counter() - start
            start = time.perf_counter()
            trainable.train(config, f"{folder}/many{repeat}", 0, 1 + args.epochs)
            many = time.perf_counter() - start
            segment.append(one)
            per_epoch.append((many - one) / args.epochs)
    print(f"phobbit from {Path(phobbit.__file__).parent.parent}")
    print(
        f"segment of 1 epoch: {1000 * statistics.median(segment):.1f} ms, "
        f"each further epoch: {1000 * statistics.median(per_epoch):.1f} ms "
        f"(median of {args.repeats}; batch {args.batch_size}, E={args.epochs})"
    )


if __name__ == "__main__":
    main()
