"""Tiny Keras models, data in every input form, and callbacks: importable by workers."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from phobbit import Hyperparameter

HPARAMS = [
    Hyperparameter("learning_rate", "log-uniform", (3e-3, 3e-2)),
    Hyperparameter("activation", "choice", [("relu", "tanh")]),
]
TRAIN, VALIDATION = 300, 100
VALIDATION_BATCH = 32  # what phobbit validates arrays with when no batch size is given


def digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """300 training and 100 validation digits of scikit-learn, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return (x[:TRAIN], y[:TRAIN]), (x[TRAIN : TRAIN + VALIDATION], y[TRAIN : TRAIN + VALIDATION])


def _compile(model: Any, hparams: dict[str, Any]) -> Any:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(hparams["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def tiny(hparams: dict[str, Any]) -> Any:
    """Dense(16), Dense(10), with accuracy."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation=hparams["activation"]),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    return _compile(model, hparams)


def two_inputs(hparams: dict[str, Any]) -> Any:
    """The same on two inputs, ``a`` (the first 32 pixels) and ``b`` (the rest)."""
    import keras

    a, b = keras.Input((32,), name="a"), keras.Input((32,), name="b")
    hidden = keras.layers.Dense(16, activation=hparams["activation"])(
        keras.layers.Concatenate()([a, b])
    )
    outputs = keras.layers.Dense(10, activation="softmax")(hidden)
    return _compile(keras.Model({"a": a, "b": b}, outputs), hparams)


def split_inputs() -> tuple:
    """``digits`` with each image as two inputs, a dict of arrays."""
    (x, y), (x_val, y_val) = digits()
    return ({"a": x[:, :32], "b": x[:, 32:]}, y), ({"a": x_val[:, :32], "b": x_val[:, 32:]}, y_val)


def batches(split: str, batch: int) -> Any:
    """Hobbit's generator form: batches of ``split`` for ever, in the same order each pass."""
    (x, y), (x_val, y_val) = digits()
    x, y = (x, y) if split == "train" else (x_val, y_val)
    for start in itertools.cycle(range(0, len(x), batch)):
        yield x[start : start + batch], y[start : start + batch]


def tf_datasets() -> tuple[Any, Any]:
    """(train, validation) ``tf.data`` datasets, made in each worker."""
    import tensorflow as tf

    (x, y), (x_val, y_val) = digits()
    return (
        tf.data.Dataset.from_tensor_slices((x, y)).batch(32),
        tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(VALIDATION_BATCH),
    )


def py_datasets() -> tuple[Any, Any]:
    """(train, validation) ``keras.utils.PyDataset``s, made in each worker."""
    import keras

    class Digits(keras.utils.PyDataset):
        def __init__(self, x: np.ndarray, y: np.ndarray, batch: int) -> None:
            super().__init__()
            self.x, self.y, self.batch = x, y, batch

        def __len__(self) -> int:
            return -(-len(self.x) // self.batch)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            part = slice(index * self.batch, (index + 1) * self.batch)
            return self.x[part], self.y[part]

    (x, y), (x_val, y_val) = digits()
    return Digits(x, y, 32), Digits(x_val, y_val, VALIDATION_BATCH)


def early_stopping(hparams: dict[str, Any]) -> list[Any]:
    """An EarlyStopping that stops at a segment's second epoch (no gain is ever enough)."""
    import keras

    return [keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=10.0, patience=0)]
