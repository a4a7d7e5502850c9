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
disagree after a kill. When the best epoch is not the last, a best-epoch file
``<stem>.best.keras`` (same format) holds it (see ``phobbit.checkpoints``).

Training is a function of the configuration and the epoch alone, so a segment
resumed at any epoch, or retrained from scratch, trains bit-identically on the
CPU to one never interrupted: every epoch reseeds Python, NumPy, TensorFlow and
every ``SeedGenerator`` of the model (dropout's state is not in the saved
weights) from (configuration, epoch), and arrays are fed in an order drawn from
(configuration, epoch) by a stateless shuffle, instead of ``fit``'s own
shuffle, which draws from a stream that a resumed ``fit`` starts afresh.
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
from phobbit.backends import use_backend
from phobbit.checkpoints import (
    PROGRESS_MEMBER,
    BestEpoch,
    best_path,
    describe,
    inspect,
    keep_checkpoint_as_best,
    plan_resume,
    progress_record,
)
from phobbit.errors import InputError
from phobbit.trainable import Losses, checkpoint_written, hparams_unit

# Per worker process: datasets loaded once and reused by every trial it runs.
_DATA_CACHE: dict[str, Any] = {}

Arrays = tuple[tuple[Any, Any], tuple[Any, Any]]
DEFAULT_BATCH = 32  # fit's own default


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


def save_checkpoint(model: Any, path: str, val_losses: Sequence[float]) -> None:
    """Saves ``model`` and its progress as the one ``.keras`` file ``path``, atomically.

    Raises:
        CheckpointError: when the file cannot be written (not for a full disk).
    """

    def write() -> None:
        temp = f"{path[: -len('.keras')]}.tmp{os.getpid()}.keras"  # Keras wants .keras
        model.save(temp)
        with zipfile.ZipFile(temp, "a") as archive:
            archive.writestr(PROGRESS_MEMBER, json.dumps(progress_record(val_losses)))
        fence.commit(temp, path)

    checkpoint_written(path, write)


SAVE_BUDGET = 0.1  # per-epoch checkpoints may cost at most this share of training time


def config_key(hparams: dict[str, Any]) -> int:
    """A 31-bit number that depends on the configuration alone: the root of its seeds."""
    return int(hparams_unit(hparams) * 2**31)


def epoch_seeds(key: int, epoch: int | None, count: int) -> list[int]:
    """``count`` 31-bit seeds of configuration ``key`` for ``epoch`` (None: building it)."""
    import numpy as np

    entropy = [key, 0, 0] if epoch is None else [key, 1, epoch]
    return [int(v) >> 1 for v in np.random.SeedSequence(entropy).generate_state(count)]


def _seeder(key: int) -> Any:
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


def _saver(checkpoint: str, best: str, keeper: BestEpoch, epochs: int, every_epoch: bool) -> Any:
    """A Keras callback that records val losses and saves at epoch ends, always at the last.

    With ``every_epoch``, it saves after every epoch unless saving would cost more
    than ``SAVE_BUDGET`` of the time trained since the last save (small models with
    fast epochs then save every few epochs; a kill loses at most those). Before a
    save replaces a checkpoint that holds the best epoch, or when the best epoch
    was never saved, it writes the best-epoch file (``BestEpoch``).
    """
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        trained_since = 0.0  # seconds of training since the last save
        save_seconds = 0.0  # what the last save took
        began = 0.0
        snapshot: list[Any] | None = None  # the best epoch's state, while it is not on disk

        def _state(self) -> list[Any]:
            return list(self.model.weights) + list(self.model.optimizer.variables)

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            value = (logs or {}).get("val_loss")
            self.trained_since += time.perf_counter() - self.began
            affordable = self.save_seconds <= SAVE_BUDGET * self.trained_since
            save = epoch + 1 == epochs or (every_epoch and affordable)
            if keeper.ended(math.nan if value is None else float(value), save):
                self.snapshot = [v.numpy() for v in self._state()]
            if save:
                started = time.perf_counter()
                self._save()
                self.save_seconds = time.perf_counter() - started
                self.trained_since = 0.0

        def _save(self) -> None:
            keep = keeper.keep_from()
            if keep == "checkpoint":
                checkpoint_written(best, lambda: keep_checkpoint_as_best(checkpoint, best))
            elif keep == "snapshot":
                self._save_snapshot()
            if keep is not None:
                keeper.kept_best()
            save_checkpoint(self.model, checkpoint, keeper.val_losses)
            keeper.saved_checkpoint()
            if keeper.snapshot is None:
                self.snapshot = None

        def _save_snapshot(self) -> None:
            """Writes the best epoch's state, swapped in for the save and back out."""
            assert self.snapshot is not None and keeper.best is not None
            variables = self._state()
            current = [v.numpy() for v in variables]
            try:
                for variable, value in zip(variables, self.snapshot, strict=True):
                    variable.assign(value)
                save_checkpoint(self.model, best, keeper.val_losses[: keeper.best])
            finally:
                for variable, value in zip(variables, current, strict=True):
                    variable.assign(value)

    return EpochCheckpoint()


def epoch_dataset(
    inputs: Any, batch_size: int, first: int, last: int, key: int, shuffle: bool = True
) -> Any:
    """A ``tf.data`` pipeline of the batches of epochs ``first .. last - 1``, in order.

    Epoch ``e`` takes the samples in an order drawn from (``key``, ``e``) alone
    (a stateless shuffle), so a segment that resumes at epoch ``e`` sees the
    batches an uninterrupted one sees. Give ``fit`` ``steps_per_epoch =
    ceil(n / batch_size)``: Keras then reads on across epochs without a reset.

    Args:
        inputs: ``(x, y)`` or ``(x, y, sample_weight)``; each an array or a
            tuple or dict of arrays with the same number of samples.
    """
    import tensorflow as tf

    count = len(tf.nest.flatten(inputs)[0])
    full, rest = divmod(count, batch_size)

    def batches(epoch: Any) -> Any:
        order = tf.range(count, dtype=tf.int64)
        if shuffle:
            seed = tf.stack([tf.constant(key, tf.int64), epoch])
            order = tf.random.experimental.stateless_shuffle(order, seed=seed)
        # Whole batches as one reshape, the last partial one apart (as Keras' own adapter).
        dataset = tf.data.Dataset.from_tensor_slices(
            tf.reshape(order[: full * batch_size], [full, batch_size])
        )
        if rest:
            dataset = dataset.concatenate(tf.data.Dataset.from_tensors(order[full * batch_size :]))
        return dataset

    def gather(indices: Any, data: Any) -> Any:
        return tf.nest.map_structure(lambda array: tf.gather(array, indices), data)

    indices = tf.data.Dataset.range(first, last).flat_map(batches)
    data = tf.data.Dataset.from_tensors(inputs).repeat()
    dataset = tf.data.Dataset.zip((indices, data)).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    # As Keras' adapter: no graph rewrites, which would serialize the arrays in the graph.
    options.experimental_optimization.apply_default_optimizations = False
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _as_tuples(data: Any) -> Any:
    """Lists of arrays as tuples (tf.data would stack a list into one tensor), leaves as arrays."""
    import numpy as np

    if isinstance(data, (list, tuple)):
        return tuple(_as_tuples(item) for item in data)
    if isinstance(data, Mapping):
        return {name: _as_tuples(item) for name, item in data.items()}
    return np.asarray(data)


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
            validation batches (a dict of args is passed as keywords). The batches
            are whatever the generator yields: a resumed segment calls it afresh,
            so it resumes bit-identically only if the generator's batches do not
            depend on how many it has yielded before.
        steps_per_epoch, validation_steps: batches per epoch with generators.
        batch_size: the batch size with arrays (32 when None), for training and
            validation; arrays are shuffled every epoch in an order drawn from
            the configuration and the epoch (``fit_kwargs={"shuffle": False}``
            keeps their order).
        verbose: passed to ``fit``.
        fit_kwargs: more keyword arguments for ``fit`` (``sample_weight`` is
            shuffled with the arrays).
        backend: the Keras backend to run (``phobbit.backends``), set before Keras is
            imported in the worker; None keeps Keras' default.
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
    backend: str | None = None

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

    def _source(self) -> Arrays | None:
        """The arrays to train on, loaded (and checked) once per worker; None with generators."""
        return None if self.generator_function is not None else self._arrays()

    def _fit_data(
        self, arrays: Arrays | None, fit_kwargs: dict[str, Any], first: int, last: int, key: int
    ) -> dict[str, Any]:
        """``fit``'s data arguments for epochs ``first .. last - 1`` (pops what it uses)."""
        if arrays is None:
            return {
                "x": _call(self.generator_function, self.train_gen_args),
                "validation_data": _call(self.generator_function, self.valid_gen_args),
                "steps_per_epoch": self.steps_per_epoch,
                "validation_steps": self.validation_steps,
            }
        (x, y), validation = arrays
        batch = self.batch_size or DEFAULT_BATCH
        weights = fit_kwargs.pop("sample_weight", None)
        inputs = _as_tuples((x, y) if weights is None else (x, y, weights))
        shuffle = bool(fit_kwargs.pop("shuffle", True))
        import tensorflow as tf

        count = len(tf.nest.flatten(inputs)[0])
        return {
            "x": epoch_dataset(inputs, batch, first, last, key, shuffle),
            "shuffle": False,  # the dataset is in its epoch's order already
            "steps_per_epoch": -(-count // batch),
            "validation_data": validation,
            "validation_batch_size": fit_kwargs.pop("validation_batch_size", batch),
        }

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
    ) -> Losses:
        use_backend(self.backend)  # first: nothing may import Keras before KERAS_BACKEND is set
        arrays = self._source()  # a bad dataset stops the run before training
        path, best = checkpoint + ".keras", best_path(checkpoint, ".keras")
        found = [inspect(path), inspect(best)]
        key = config_key(hparams)
        import keras

        while True:
            resume = plan_resume(found[0], found[1], initial_epoch, epochs)
            if resume.start >= epochs:  # an attempt that finished, whose row was lost
                return Losses(resume.history[initial_epoch:epochs], resume.note)
            # Built alike whatever the worker ran before: from scratch, these are the weights.
            keras.utils.set_random_seed(epoch_seeds(key, None, 1)[0])
            model = self.build(hparams)
            if resume.source is None:
                break
            try:
                # load_weights restores the optimizer's variables only once it is built.
                model.optimizer.build(model.trainable_variables)
                model.load_weights(resume.source)
                break
            except Exception as exc:  # noqa: BLE001 - weights that do not load: a bad file
                index = 0 if resume.from_checkpoint else 1
                found[index] = found[index].unusable(describe(exc))
        keeper = BestEpoch(
            list(resume.history), resume.start if resume.from_checkpoint else None, resume.kept
        )
        fit_kwargs = dict(self.fit_kwargs)
        callbacks = list(fit_kwargs.pop("callbacks", None) or [])
        data = self._fit_data(arrays, fit_kwargs, resume.start, epochs, key)
        # First: the epoch is seeded before, and saved after, anything of the user's runs.
        callbacks[:0] = [
            _seeder(key),
            _saver(path, best, keeper, epochs, self.checkpoint_every_epoch),
        ]
        fitted = model.fit(
            epochs=epochs,
            initial_epoch=resume.start,
            verbose=self.verbose,
            callbacks=callbacks,
            **data,
            **fit_kwargs,
        )
        if fitted.history.get("val_loss") is None:
            raise ValueError("fit reported no val_loss; give validation data")
        return Losses(keeper.val_losses[initial_epoch:epochs], resume.note)
