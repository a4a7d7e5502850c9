"""Seeds of a configuration: training is a function of the configuration and the epoch alone.

Every epoch reseeds Python, NumPy and every ``SeedGenerator`` of the model
(dropout's state is not in the saved weights) from (configuration, epoch), so a
segment resumed at any epoch trains bit-identically on the CPU to one never
interrupted. NumPy and Keras are imported inside the functions, in the worker.
"""

from __future__ import annotations

from typing import Any

from phobbit.execution.trainable import hparams_unit


def config_key(hparams: dict[str, Any]) -> int:
    """A 31-bit number that depends on the configuration alone: the root of its seeds."""
    return int(hparams_unit(hparams) * 2**31)


def epoch_seeds(key: int, epoch: int | None, count: int) -> list[int]:
    """``count`` 31-bit seeds of configuration ``key`` for ``epoch`` (None: building it)."""
    import numpy as np

    entropy = [key, 0, 0] if epoch is None else [key, 1, epoch]
    return [int(v) >> 1 for v in np.random.SeedSequence(entropy).generate_state(count)]


def seeder(key: int) -> Any:
    """A Keras callback that seeds every epoch from (configuration, epoch).

    Keras layers draw their randomness (dropout, noise, augmentation) from their
    own ``SeedGenerator``, whose state variables are not saved with the weights
    and which ``set_random_seed`` does not reach once they exist: they are set
    directly. Python's and NumPy's global generators are seeded too, for user
    code. TensorFlow's global seed is not set per epoch (``tf.random.set_seed``
    clears TensorFlow's caches: +70 ms per epoch on the tutorial MLP), so
    stateful ``tf.random`` ops in user code are not reseeded.
    """
    import random

    import keras
    import numpy as np

    class EpochSeeder(keras.callbacks.Callback):
        states: list[Any] = []

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            weights = {id(v) for v in self.model.weights}
            self.states = [v for v in self.model.variables if id(v) not in weights]

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            seeds = epoch_seeds(key, epoch, 1 + len(self.states))
            random.seed(seeds[0])
            np.random.seed(seeds[0])
            for state, seed in zip(self.states, seeds[1:], strict=True):
                state.assign(np.array([seed, 0], dtype=state.dtype))

    return EpochSeeder()
