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
