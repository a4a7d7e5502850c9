"""The Hobbit tutorial, ported to phobbit: replace ``hobbit`` with ``phobbit``.

Run it with ``python examples/tutorial.py``. It tunes the tutorial's MLP with
Hyperband (R=9, eta=3) on two CPU workers, or one worker per GPU with
``--gpus 0,1``. MNIST is used when Keras has it in its local cache; otherwise
scikit-learn's bundled handwritten digits (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from phobbit import Hyperparameter
from phobbit.algorithms import Hyperband

# 1. The hyperparameters and their distributions.
my_hparam_ranges = [
    Hyperparameter("dropout1", "uniform", (0.0, 0.5)),
    Hyperparameter("dropout2", "uniform", (0.0, 0.5)),
    Hyperparameter("activation", "choice", [("relu", "tanh", "sigmoid")]),
    Hyperparameter("learning_rate", "log-uniform", (1e-4, 1e-1)),
]


# 2. The model function: a dict of hyperparameters in, a compiled Keras model out.
def my_model(hparams):
    import keras  # imported in the worker processes, after each is pinned to its GPU

    model = keras.Sequential(
        [
            keras.Input((n_features,)),
            keras.layers.Dropout(hparams["dropout1"]),
            keras.layers.Dense(100, activation=hparams["activation"]),
            keras.layers.Dropout(hparams["dropout2"]),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(hparams["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


# 3. The dataset: ((x_train, y_train), (x_val, y_val)).
def load_data():
    """MNIST from the local Keras cache if it is there, else scikit-learn's digits."""
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    cached = Path(keras_home) / "datasets" / "mnist.npz"
    if cached.exists():
        with np.load(cached) as data:
            x_train = data["x_train"].reshape(-1, 784).astype("float32") / 255.0
            x_val = data["x_test"].reshape(-1, 784).astype("float32") / 255.0
            return (x_train, data["y_train"]), (x_val, data["y_test"]), "MNIST (local Keras cache)"
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1437], y[:1437]), (x[1437:], y[1437:]), "scikit-learn digits (MNIST not cached)"


*my_dataset, source = load_data()
my_dataset = tuple(my_dataset)
# The model function reads this number, not my_dataset: a function defined in a
# script is pickled with the globals it uses, and the arrays must not travel per trial.
n_features = my_dataset[0][0].shape[1]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default=None, help="GPU ids, e.g. 0,1,2,3")
    parser.add_argument("--repo", default="tutorial_repo")
    parser.add_argument("--R", type=int, default=9)
    parser.add_argument("--eta", type=int, default=3)
    args = parser.parse_args()
    print(f"Data: {source}")

    # 4. Run Hyperband and read the results table.
    hb = Hyperband(
        model_function=my_model,
        dataset=my_dataset,
        hparam_ranges=my_hparam_ranges,
        repo_dir=args.repo,
        gpus=args.gpus,
        n_jobs=2,
    )
    results = hb.run(R=args.R, eta=args.eta)
    print(results[["Hparams", "ID", "Run", "Val Loss", "Epochs"]].head(10).to_string())
