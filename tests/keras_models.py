"""The seed tutorial's model on scikit-learn's digits, importable by worker processes."""

from __future__ import annotations

from typing import Any

import numpy as np

from phobbit import Hyperparameter

HPARAMS = [
    Hyperparameter("dropout1", "uniform", (0.0, 0.5)),
    Hyperparameter("dropout2", "uniform", (0.0, 0.5)),
    Hyperparameter("activation", "choice", [("relu", "tanh", "sigmoid")]),
    Hyperparameter("learning_rate", "log-uniform", (1e-3, 3e-2)),
]


def digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """sklearn's 8x8 digits scaled to [0, 1]: 1437 training and 360 validation samples."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1437], y[:1437]), (x[1437:], y[1437:])


def small_digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """480 training and 200 validation digits: enough for dropout and shuffling to matter."""
    (x, y), (x_val, y_val) = digits()
    return (x[:480], y[:480]), (x_val[:200], y_val[:200])


DROPOUT = {"dropout1": 0.3, "dropout2": 0.4, "activation": "relu", "learning_rate": 0.01}


def mlp(hparams: dict[str, Any]) -> Any:
    """Dropout, Dense(100), Dropout, Dense(10): the seed tutorial's MLP."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((64,)),
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


def not_a_model(hparams: dict[str, Any]) -> Any:
    """A model function that forgot to return the model."""
    return None
