"""The Keras adapter: the one module that imports Keras, and only inside worker processes.

A configuration is built by the user's model function (a compiled model), or
rebuilt by it and restored from its checkpoint: weights *and* optimizer state,
so a promoted configuration trains only the epochs it is missing. Restoring
never deserializes anything from the checkpoint but arrays (a plain
``load_weights`` on the model the user's function rebuilt, after the optimizer
is built): no code, no layer config, no lambda is ever loaded from a
repository. The checkpoint is a full ``.keras`` model a user can load later
with ``keras.saving.load_model(path, safe_mode=True)``.

The checkpoint is saved after every epoch (every few epochs when saving would
cost more than a tenth of the training time), and holds one more member,
``phobbit.json``, with the epoch it holds and the val losses of every epoch so
far: model and progress live in one file replaced atomically, so they can never
disagree after a kill.
"""

from __future__ import annotations

import json
import math
import os
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phobbit import fence
from phobbit.errors import InputError
from phobbit.trainable import hparams_unit, resume_epoch

# Per worker process: datasets loaded once and reused by every trial it runs.
_DATA_CACHE: dict[str, Any] = {}

Arrays = tuple[tuple[Any, Any], tuple[Any, Any]]

PROGRESS_MEMBER = "phobbit.json"


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
    for name, train, val in (("inputs", x_train, x_val), ("labels", y_train, y_val)):
        train_shape, val_shape = _sample_shape(train), _sample_shape(val)
        if train_shape is not None and val_shape is not None and train_shape != val_shape:
            raise InputError(
                f"dataset has training {name} of shape {train_shape} per sample but "
                f"validation {name} of shape {val_shape}; they must match"
            )


def _sample_shape(array: Any) -> tuple[int, ...] | None:
    """The shape of one sample of an array-like, None when it has no ``shape``."""
    shape = getattr(array, "shape", None)
    return tuple(shape[1:]) if shape is not None and len(shape) > 0 else None


def read_progress(path: str) -> tuple[int, list[float]] | None:
    """The epoch a ``.keras`` checkpoint holds and the val losses of its epochs; None if absent.

    Raises:
        RuntimeError: for a file that is not a checkpoint phobbit wrote.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            progress = json.loads(archive.read(PROGRESS_MEMBER))
        epoch, losses = int(progress["epoch"]), [float(v) for v in progress["val_losses"]]
    except FileNotFoundError:
        return None
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
        raise RuntimeError(
            f"checkpoint {path} is unreadable ({exc}); delete it to retrain"
        ) from None
    if len(losses) != epoch:
        raise RuntimeError(f"checkpoint {path} holds {len(losses)} val losses for {epoch} epochs")
    return epoch, losses


def save_checkpoint(model: Any, checkpoint: str, val_losses: Sequence[float]) -> None:
    """Saves ``model`` and its progress as one ``.keras`` file, atomically."""
    temp = f"{checkpoint}.tmp{os.getpid()}.keras"
    model.save(temp)
    progress = {"epoch": len(val_losses), "val_losses": list(val_losses)}
    with zipfile.ZipFile(temp, "a") as archive:
        archive.writestr(PROGRESS_MEMBER, json.dumps(progress))
    fence.commit(temp, checkpoint + ".keras")


SAVE_BUDGET = 0.1  # per-epoch checkpoints may cost at most this share of training time


def _epoch_saver(checkpoint: str, val_losses: list[float], epochs: int, every_epoch: bool) -> Any:
    """A Keras callback that saves the checkpoint at epoch ends and always at the last.

    With ``every_epoch``, it saves after every epoch unless saving would cost more
    than ``SAVE_BUDGET`` of the time trained since the last save (small models with
    fast epochs then save every few epochs; a kill loses at most those).
    """
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        trained_since = 0.0  # seconds of training since the last save
        save_seconds = 0.0  # what the last save took
        began = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            value = (logs or {}).get("val_loss")
            val_losses.append(math.nan if value is None else float(value))
            self.trained_since += time.perf_counter() - self.began
            affordable = self.save_seconds <= SAVE_BUDGET * self.trained_since
            if epoch + 1 == epochs or (every_epoch and affordable):
                started = time.perf_counter()
                save_checkpoint(self.model, checkpoint, val_losses)
                self.save_seconds = time.perf_counter() - started
                self.trained_since = 0.0

    return EpochCheckpoint()


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
        checkpoint_every_epoch: save the checkpoint after every epoch (the default;
            every few epochs when a save would cost more than a tenth of the
            training since the last), so a killed segment resumes from its last
            save; False saves only at the end of a segment.
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
    checkpoint_every_epoch: bool = True

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
        data = self._fit_data()  # first: a bad dataset stops the run before Keras is imported
        path = checkpoint + ".keras"
        progress = read_progress(path)
        done = resume_epoch(path, None if progress is None else progress[0], initial_epoch, epochs)
        history = progress[1][:done] if progress is not None else []
        import keras

        # Seeded by the configuration and where it starts: the same run trains alike,
        # whichever worker takes the segment and whatever it ran before.
        keras.utils.set_random_seed(int(hparams_unit({**hparams, "_from": done}) * 2**31))
        model = self.build(hparams)
        if done > 0:
            # load_weights restores the optimizer's variables only once it is built.
            model.optimizer.build(model.trainable_variables)
            model.load_weights(path)
        losses = history[initial_epoch:done]  # trained by an attempt that was killed
        if done == epochs:
            return losses
        fit_kwargs = dict(self.fit_kwargs)
        callbacks = list(fit_kwargs.pop("callbacks", None) or [])
        saver = _epoch_saver(checkpoint, list(history), epochs, self.checkpoint_every_epoch)
        callbacks.insert(0, saver)
        fitted = model.fit(
            epochs=epochs,
            initial_epoch=done,
            verbose=self.verbose,
            callbacks=callbacks,
            **data,
            **fit_kwargs,
        )
        new = fitted.history.get("val_loss")
        if new is None:
            raise ValueError("fit reported no val_loss; give validation data")
        return losses + [float(v) for v in new]
