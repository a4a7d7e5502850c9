"""The seed tutorial as a model file: a small MLP on MNIST, tuned by Hyperband.

    python -m phobbit train examples/mnist_mlp.py --jobs 2 --R 9 --eta 3
    python -m phobbit train examples/mnist_mlp.py --gpus 0,1,2,3 --R 20 --eta 3

It uses Keras' MNIST when it is already in the local Keras cache
(``$KERAS_HOME/datasets/mnist.npz``, by default under ``~/.keras``) and
otherwise scikit-learn's bundled digits (8x8 images); it never downloads.

Each worker calls ``load_dataset`` itself, so the data is never pickled, and
Keras is imported inside the functions, so the driver that reads this file
for its hyperparameters never imports TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

from phobbit import Hyperparameter

SEED = 0
KERAS_HOME = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
MNIST_CACHE = KERAS_HOME / "datasets" / "mnist.npz"

if MNIST_CACHE.is_file():
    SOURCE, N_FEATURES = f"Keras' MNIST from {MNIST_CACHE}", 28 * 28
else:
    SOURCE, N_FEATURES = "scikit-learn's digits (MNIST is not in the local Keras cache)", 8 * 8
print(f"mnist_mlp: using {SOURCE}")


def load_dataset():
    """((x_train, y_train), (x_val, y_val)), flattened images scaled to [0, 1]."""
    import numpy as np

    if MNIST_CACHE.is_file():
        with np.load(MNIST_CACHE) as data:
            x_train, y_train = data["x_train"], data["y_train"]
            x_val, y_val = data["x_test"], data["y_test"]
        return (
            (x_train.reshape(len(x_train), -1).astype("float32") / 255.0, y_train),
            (x_val.reshape(len(x_val), -1).astype("float32") / 255.0, y_val),
        )
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        (x / 16.0).astype("float32"), y, test_size=0.2, random_state=SEED, stratify=y
    )
    return (x_train, y_train), (x_val, y_val)


def my_model(hparams):
    """The tutorial's MLP: dropout, 100 units, dropout, softmax; hparams pick the rest."""
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=(N_FEATURES,)),
            keras.layers.Dropout(hparams["dropout1"]),
            keras.layers.Dense(100, activation=hparams["activation"]),
            keras.layers.Dropout(hparams["dropout2"]),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=hparams["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


my_hparam_ranges = [
    Hyperparameter("dropout1", "uniform", (0.0, 0.5)),
    Hyperparameter("dropout2", "uniform", (0.0, 0.5)),
    Hyperparameter("activation", "choice", [("relu", "tanh", "sigmoid")]),
    Hyperparameter("learning_rate", "log-uniform", (1e-4, 1e-1)),
]
