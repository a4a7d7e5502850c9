"""Learning curves of the digits MLP of ``examples/mnist_mlp.py`` on a grid: a tabular surrogate.

Run it once with ``python benchmarks/keras_curves.py`` (about 15 minutes on one
core); it trains every configuration of ``GRID`` for ``EPOCHS`` epochs with
real Keras (``examples/mnist_mlp.py``'s ``my_model`` and ``load_dataset``,
scikit-learn's digits when MNIST is not in the local Keras cache) and writes
the validation loss of every epoch to ``benchmarks/keras_curves.json``.
``search_quality.py`` then replays these curves as the ``keras-mlp`` problem:
a sampled configuration trains as the nearest grid point (learning rate on a
log scale), so a search of thousands of epochs per seed and 20 seeds costs
seconds instead of hours on two shared cores. Each configuration is trained
once, seeded by its grid index, with one TensorFlow thread.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / "keras_curves.json"
EPOCHS = 27
GRID = {
    "dropout1": [0.0, 0.25, 0.5],
    "dropout2": [0.0, 0.25, 0.5],
    "activation": ["relu", "tanh", "sigmoid"],
    "learning_rate": [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1],
}


def grid() -> list[dict]:
    """Every configuration of ``GRID``, in a fixed order."""
    names = list(GRID)
    return [dict(zip(names, values)) for values in itertools.product(*GRID.values())]


def build(path: Path = CACHE) -> None:
    """Trains the grid and writes ``path`` (a JSON of grid, epochs and curves)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path[:0] = [str(HERE.parent / "examples")]
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import mnist_mlp

    (x, y), (xv, yv) = mnist_mlp.load_dataset()
    curves, start = [], time.time()
    for index, hparams in enumerate(grid()):
        keras.utils.set_random_seed(index)
        model = mnist_mlp.my_model(hparams)
        history = model.fit(
            x, y, batch_size=32, epochs=EPOCHS, validation_data=(xv, yv), verbose=0
        )
        curves.append([float(v) for v in history.history["val_loss"]])
        keras.backend.clear_session()
        print(
            f"{index + 1}/{len(grid())} {hparams} best {min(curves[-1]):.4f} "
            f"({time.time() - start:.0f} s)",
            flush=True,
        )
    data = {
        "source": mnist_mlp.SOURCE,
        "epochs": EPOCHS,
        "grid": GRID,
        "keras": keras.__version__,
        "seconds": round(time.time() - start, 1),
        "curves": curves,
    }
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(data))
    os.replace(temp, path)


if __name__ == "__main__":
    build()
