"""A tiny Keras model file for tests: a 16-unit MLP on a slice of scikit-learn's digits."""

from __future__ import annotations

from phobbit import Hyperparameter


def load_dataset():
    """300 training and 100 validation digits, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return (x[:300], y[:300]), (x[300:400], y[300:400])


def my_model(hparams):
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(16, activation=hparams["activation"]),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=hparams["learning_rate"]),
        loss="sparse_categorical_crossentropy",
    )
    return model


my_hparam_ranges = [
    Hyperparameter("activation", "choice", [("relu", "tanh")]),
    Hyperparameter("learning_rate", "log-uniform", (1e-3, 1e-1)),
]
