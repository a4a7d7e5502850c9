"""What a segment costs beyond its epochs: the work a plain Keras loop does once per model
is done once per worker, with the same results bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from keras_models import DROPOUT, mlp, small_digits

from phobbit.execution import warm
from phobbit.execution.worker_state import worker_state

pytestmark = pytest.mark.keras


def test_segments_of_one_worker_validate_through_one_pipeline_with_the_same_losses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keras.src.trainers.data_adapters import array_data_adapter

    from phobbit.keras_adapter.trainable import KerasTrainable

    adapters: list[Any] = []
    real_init = array_data_adapter.ArrayDataAdapter.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        adapters.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(array_data_adapter.ArrayDataAdapter, "__init__", counted)
    worker_state().datasets.clear()  # a fresh worker
    trainable = KerasTrainable(mlp, load_dataset=small_digits, batch_size=32, warm_bytes=0)
    other = {**DROPOUT, "learning_rate": 0.003}
    with warm.installed(warm.WarmCache(0)):
        first = trainable.train(DROPOUT, str(tmp_path / "a"), 0, 2)
        second = trainable.train(other, str(tmp_path / "b"), 0, 2)
        resumed = trainable.train(DROPOUT, str(tmp_path / "a"), 2, 3)
    assert adapters == []  # no segment made Keras adapt the validation arrays again

    # The val losses are those Keras computes from the arrays themselves.
    import keras
    import numpy as np

    (x, y), (x_val, y_val) = small_digits()
    for hparams, stem, losses in ((DROPOUT, "a", [*first, *resumed]), (other, "b", second)):
        model = mlp(hparams)
        model.optimizer.build(model.trainable_variables)
        model.load_weights(tmp_path / f"{stem}.keras")
        evaluated = model.evaluate(x_val, y_val, batch_size=32, verbose=0, return_dict=True)
        assert np.float32(evaluated["loss"]) == np.float32(losses[-1])
    assert keras.backend.backend() == "tensorflow"


def test_segments_of_one_worker_train_through_one_pipeline_with_the_same_losses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras

    from phobbit.keras_adapter.trainable import KerasTrainable

    fed: list[Any] = []
    real_fit = keras.Model.fit

    def spied(self: Any, *args: Any, **kwargs: Any) -> Any:
        fed.append(kwargs["x"])
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spied)
    worker_state().datasets.clear()  # a fresh worker
    trainable = KerasTrainable(mlp, load_dataset=small_digits, batch_size=32, warm_bytes=0)
    other = {**DROPOUT, "learning_rate": 0.003}
    with warm.installed(warm.WarmCache(0)):
        first = trainable.train(DROPOUT, str(tmp_path / "a"), 0, 2)
        second = trainable.train(other, str(tmp_path / "b"), 0, 2)
        resumed = trainable.train(DROPOUT, str(tmp_path / "a"), 2, 3)
        worker_state().datasets.clear()  # another worker, trained straight through
        straight = trainable.train(DROPOUT, str(tmp_path / "c"), 0, 3)
    # No segment built its own pipeline (nor traced its functions) but the other worker's.
    assert fed[0] is fed[1] is fed[2] and fed[3] is not fed[0]
    assert [*first, *resumed] == list(straight)  # bit for bit, as an uninterrupted segment
    assert list(second) != list(first)


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_reused_training_pipeline_yields_the_batches_of_one_built_per_segment(
    shuffle: bool,
) -> None:
    import numpy as np

    from phobbit.keras_adapter.data import EpochPipeline, as_tuples, epoch_dataset

    (x, y), _ = small_digits()
    inputs = as_tuples((x[:100], {"labels": y[:100]}))  # a structure, as multi-input data
    pipeline = EpochPipeline(inputs, 32, shuffle)
    # Segments of several configurations, one after another, as one worker trains them.
    for first, last, key in ((0, 2, 7), (0, 1, 11), (2, 5, 7), (1, 3, 11), (4, 4, 7)):
        reused = list(pipeline.epochs(first, last, key).as_numpy_iterator())
        built = list(epoch_dataset(inputs, 32, first, last, key, shuffle).as_numpy_iterator())
        assert len(reused) == len(built) == 4 * (last - first)
        for (rx, ry), (bx, by) in zip(reused, built, strict=True):
            assert np.array_equal(rx, bx) and np.array_equal(ry["labels"], by["labels"])


def test_a_segment_validates_without_keras_warning_that_its_data_ran_out(
    tmp_path: Path,
) -> None:
    # The worker's validation pipeline had no known length: Keras read it until it ran
    # out and warned "Your input ran out of data" on every segment (workers.log noise).
    import warnings

    from phobbit.keras_adapter.trainable import KerasTrainable

    worker_state().datasets.clear()
    trainable = KerasTrainable(mlp, load_dataset=small_digits, batch_size=32, warm_bytes=0)
    with warm.installed(warm.WarmCache(0)), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = trainable.train(DROPOUT, str(tmp_path / "a"), 0, 2)
        losses += trainable.train(DROPOUT, str(tmp_path / "a"), 2, 3)
    assert len(losses) == 3
    ran_out = [str(w.message) for w in caught if "ran out of data" in str(w.message)]
    assert ran_out == []
