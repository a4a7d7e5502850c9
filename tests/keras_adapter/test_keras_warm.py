"""Keras models kept warm (``execution.warm``): going on from memory is going on from the file.

A segment continued on the model its worker still holds must train exactly what
one restored from the checkpoint trains (weights, optimizer state and val losses
compared with ``==``), with dropout and shuffled batches; and a model that is
not what its checkpoint holds is never kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from keras_models import DROPOUT, mlp, small_digits

from phobbit.execution import warm

pytestmark = pytest.mark.keras


def state(path: Path) -> list[np.ndarray]:
    """The weights and optimizer variables a checkpoint holds."""

    model = mlp(DROPOUT)
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    return [np.asarray(v) for v in model.weights + model.optimizer.variables]


def test_a_segment_continued_warm_trains_as_one_resumed_cold_and_as_one_never_split(
    tmp_path: Path,
) -> None:
    from phobbit.keras_adapter.trainable import KerasTrainable

    trainable = KerasTrainable(mlp, load_dataset=small_digits, batch_size=32)
    with warm.installed(warm.WarmCache()) as cache:
        warm_stem = str(tmp_path / "warm")
        first = trainable.train(DROPOUT, warm_stem, 0, 2)
        assert cache.held() == (warm_stem,)
        warm_losses = trainable.train(DROPOUT, warm_stem, 2, 4)
        assert warm_losses.warm and cache.hits == 1
    with warm.installed(warm.WarmCache()):  # a fresh worker: nothing held
        cold_stem = str(tmp_path / "cold")
        assert trainable.train(DROPOUT, cold_stem, 0, 2) == first
    with warm.installed(warm.WarmCache()):
        cold_losses = trainable.train(DROPOUT, cold_stem, 2, 4)
        assert not cold_losses.warm
    whole_stem = str(tmp_path / "whole")
    whole = KerasTrainable(mlp, load_dataset=small_digits, batch_size=32, warm_bytes=0)
    whole_losses = whole.train(DROPOUT, whole_stem, 0, 4)
    assert first + warm_losses == first + cold_losses == whole_losses
    assert warm_losses.history == cold_losses.history == whole_losses.history
    held = {
        name: state(Path(f"{stem}.keras"))
        for name, stem in (("warm", warm_stem), ("cold", cold_stem), ("whole", whole_stem))
    }
    for name in ("cold", "whole"):
        assert len(held[name]) == len(held["warm"])
        for got, expected in zip(held["warm"], held[name], strict=True):
            assert got.dtype == expected.dtype and (got == expected).all(), name


class StopAtTwo:
    """Ends training after epoch 2, as EarlyStopping would."""

    def __new__(cls) -> Any:
        import keras

        class Stop(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                self.model.stop_training = epoch + 1 == 2

        return Stop()


def early_stopping_restoring_best() -> Any:
    import keras

    return keras.callbacks.EarlyStopping(patience=100, restore_best_weights=True)


@pytest.mark.parametrize("callback", [StopAtTwo, early_stopping_restoring_best])
def test_a_model_stopped_or_changed_after_its_last_save_is_not_kept(
    tmp_path: Path, callback: Any
) -> None:
    from phobbit.keras_adapter.trainable import KerasTrainable

    trainable = KerasTrainable(
        mlp, load_dataset=small_digits, batch_size=32, callbacks=lambda hparams: [callback()]
    )
    with warm.installed(warm.WarmCache()) as cache:
        trainable.train(DROPOUT, str(tmp_path / "c"), 0, 3)
        assert cache.held() == ()
        plain = KerasTrainable(mlp, load_dataset=small_digits, batch_size=32)
        plain.train(DROPOUT, str(tmp_path / "plain"), 0, 1)
        assert cache.held() == (str(tmp_path / "plain"),)


def noisy_mlp(hparams: dict[str, Any]) -> Any:
    """The MLP behind a layer of the user's own that draws from TensorFlow's stateful
    ``tf.random.uniform``: its state lives in the traced step, not in the checkpoint."""
    import keras
    import tensorflow as tf

    class Noise(keras.layers.Layer):
        def call(self, inputs: Any, training: bool | None = None) -> Any:
            return inputs + 0.01 * tf.random.uniform(tf.shape(inputs))

    model = mlp(hparams)
    noisy = keras.Sequential([keras.Input(model.input_shape[1:]), Noise(), *model.layers])
    noisy.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return noisy


def test_a_model_whose_step_draws_stateful_randomness_is_not_kept(tmp_path: Path) -> None:
    """Continued warm, its random op would go on with its sequence where a model rebuilt
    from the checkpoint starts afresh: which worker trained it would change the result."""
    from phobbit.keras_adapter.trainable import KerasTrainable

    noisy = KerasTrainable(noisy_mlp, load_dataset=small_digits, batch_size=32)
    with warm.installed(warm.WarmCache()) as cache:
        first = noisy.train(DROPOUT, str(tmp_path / "noisy"), 0, 2)
        assert cache.held() == ()
        went_on = noisy.train(DROPOUT, str(tmp_path / "noisy"), 2, 3)
        assert not went_on.warm
    with warm.installed(warm.WarmCache(0)):
        assert noisy.train(DROPOUT, str(tmp_path / "cold"), 0, 2) == first
        assert noisy.train(DROPOUT, str(tmp_path / "cold"), 2, 3) == went_on
    # Keras' own randomness (Dropout) is stateless and reseeded: that model is kept.
    with warm.installed(warm.WarmCache()) as cache:
        KerasTrainable(mlp, load_dataset=small_digits, batch_size=32).train(
            DROPOUT, str(tmp_path / "plain"), 0, 1
        )
        assert cache.held() == (str(tmp_path / "plain"),)
