"""The Keras adapter: the one module that imports Keras, and only inside worker processes.

A configuration is built by the user's model function (a compiled model), or
rebuilt by it and restored from its checkpoint: weights *and* optimizer state,
so a promoted configuration trains only the epochs it is missing. Restoring
never deserializes user code from the checkpoint (a plain ``load_weights``
after the optimizer is built), and the checkpoint is a full ``.keras`` model a
user can load later with ``keras.saving.load_model``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from phobbit.errors import InputError

# Per worker process: datasets loaded once and reused by every trial it runs.
_DATA_CACHE: dict[str, Any] = {}

Arrays = tuple[tuple[Any, Any], tuple[Any, Any]]


def check_dataset(dataset: Any) -> None:
    """Raises ``InputError`` unless ``dataset`` is ``((x_train, y_train), (x_val, y_val))``."""
    try:
        (x_train, y_train), (x_val, y_val) = dataset
        sizes = [len(x_train), len(y_train), len(x_val), len(y_val)]
    except (TypeError, ValueError):
        raise InputError(
            "dataset must be ((x_train, y_train), (x_val, y_val)), as in Hobbit; "
            f"got {type(dataset).__name__}"
        ) from None
    if sizes[0] != sizes[1] or sizes[2] != sizes[3]:
        raise InputError(
            f"dataset has {sizes[0]} training inputs for {sizes[1]} labels and "
            f"{sizes[2]} validation inputs for {sizes[3]} labels; they must match"
        )
    if sizes[0] == 0 or sizes[2] == 0:
        raise InputError("dataset has no training or no validation samples")


@contextmanager
def staged_dataset(dataset: Arrays, folder: str) -> Iterator[str]:
    """Writes the arrays once to ``folder`` for workers to memory-map; yields the path.

    Workers then read the file once each instead of receiving the arrays with every trial.
    """
    import joblib

    path = os.path.join(folder, "dataset.joblib")
    joblib.dump(dataset, path)
    try:
        yield path
    finally:
        Path(path).unlink(missing_ok=True)


def _call(function: Callable, args: Any) -> Any:
    if args is None:
        return function()
    if isinstance(args, Mapping):
        return function(**args)
    if isinstance(args, (list, tuple)):
        return function(*args)
    return function(args)


@dataclass(frozen=True)
class KerasTrainable:
    """Trains a Keras model built by ``model_function(hparams)``.

    Exactly one data source is given:

    Args:
        model_function: ``hparams -> compiled keras.Model``.
        data_path: a file written by ``staged_dataset``, memory-mapped by each worker.
        load_dataset: a function each worker calls once for ``((x, y), (x_val, y_val))``.
        generator_function: Hobbit's generator form: ``generator_function(*train_gen_args)``
            yields training batches and ``generator_function(*valid_gen_args)``
            validation batches (a dict of args is passed as keywords).
        steps_per_epoch, validation_steps: batches per epoch with generators.
        batch_size: passed to ``fit`` with arrays.
        verbose: passed to ``fit``.
        fit_kwargs: more keyword arguments for ``fit``.
    """

    model_function: Callable[[dict[str, Any]], Any]
    data_path: str | None = None
    load_dataset: Callable[[], Arrays] | None = None
    generator_function: Callable[..., Any] | None = None
    train_gen_args: Any = None
    valid_gen_args: Any = None
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    batch_size: int | None = None
    verbose: int = 0
    fit_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)

    def _arrays(self) -> Arrays:
        key = self.data_path or f"{self.load_dataset!r}"
        if key not in _DATA_CACHE:
            if self.data_path is not None:
                import joblib

                _DATA_CACHE[key] = joblib.load(self.data_path, mmap_mode="r")
            else:
                assert self.load_dataset is not None
                data = self.load_dataset()
                check_dataset(data)
                _DATA_CACHE[key] = data
        return _DATA_CACHE[key]

    def _fit_data(self) -> dict[str, Any]:
        if self.generator_function is not None:
            return {
                "x": _call(self.generator_function, self.train_gen_args),
                "validation_data": _call(self.generator_function, self.valid_gen_args),
                "steps_per_epoch": self.steps_per_epoch,
                "validation_steps": self.validation_steps,
            }
        (x, y), validation = self._arrays()
        return {"x": x, "y": y, "validation_data": validation, "batch_size": self.batch_size}

    def build(self, hparams: dict[str, Any]) -> Any:
        """The compiled model of ``hparams``, checked to be one."""
        import keras

        model = self.model_function(dict(hparams))
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"model function returned {type(model).__name__}, not a compiled keras.Model"
            )
        if getattr(model, "optimizer", None) is None:
            raise TypeError("model function returned a model that is not compiled; call compile()")
        return model

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> Sequence[float]:
        model = self.build(hparams)
        path = checkpoint + ".keras"
        if initial_epoch > 0:
            # load_weights restores the optimizer's variables only once it is built.
            model.optimizer.build(model.trainable_variables)
            model.load_weights(path)
        history = model.fit(
            epochs=epochs,
            initial_epoch=initial_epoch,
            verbose=self.verbose,
            **self._fit_data(),
            **self.fit_kwargs,
        )
        temp = f"{checkpoint}.tmp{os.getpid()}.keras"
        model.save(temp)
        os.replace(temp, path)
        losses = history.history.get("val_loss")
        if losses is None:
            raise ValueError("fit reported no val_loss; give validation data")
        return [float(v) for v in losses]
