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
``<stem>.best.keras`` (same format) holds it (see ``phobbit.storage.checkpoints``).

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
import numbers
import os
import time
import types
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phobbit.core.objective import VAL_LOSS, Objective, unknown_metric
from phobbit.errors import InputError
from phobbit.execution import warm
from phobbit.execution.trainable import Losses, checkpoint_written, hparams_unit
from phobbit.execution.worker_state import worker_state
from phobbit.keras_adapter.backends import use_backend
from phobbit.storage import fence
from phobbit.storage.checkpoints import (
    PROGRESS_MEMBER,
    BestEpoch,
    best_path,
    describe,
    inspect,
    keep_checkpoint_as_best,
    plan_resume,
    progress_record,
)

Arrays = tuple[tuple[Any, Any], tuple[Any, Any]]
DEFAULT_BATCH = 32  # fit's own default


def is_batch_source(data: Any) -> bool:
    """Whether ``data`` yields batches itself (a ``tf.data.Dataset``, a Keras ``PyDataset``,
    a generator) rather than being arrays; told without importing TensorFlow."""
    # element_spec: what every tf.data.Dataset has.
    if isinstance(data, types.GeneratorType) or hasattr(data, "element_spec"):
        return True
    return any(
        cls.__name__ in ("PyDataset", "Sequence") and cls.__module__.startswith("keras")
        for cls in type(data).__mro__
    )


def _leaves(data: Any) -> list[Any]:
    """The arrays of one side of a dataset: one array, or the arrays of a multi-input
    dict or tuple/list of arrays (a list of plain numbers is one array)."""
    if isinstance(data, Mapping):
        return [leaf for value in data.values() for leaf in _leaves(value)]
    if isinstance(data, (list, tuple)) and data and all(hasattr(v, "shape") for v in data):
        return list(data)
    return [data]


def check_dataset(dataset: Any) -> str:
    """Checks a dataset; returns ``"arrays"`` or ``"batches"`` (a source of batches).

    A dataset is ``((x_train, y_train), (x_val, y_val))`` (inputs may be a dict or
    tuple of arrays, for a model with several inputs), or ``(train, validation)``
    where ``train`` yields batches itself (a ``tf.data.Dataset``, a Keras
    ``PyDataset``) and ``validation`` does too or is ``(x_val, y_val)``.

    Raises:
        InputError: naming what is wrong.
    """
    shape = (
        "dataset must be ((x_train, y_train), (x_val, y_val)) as in Hobbit, or "
        "(train, validation) tf.data datasets or keras PyDatasets"
    )
    if is_batch_source(dataset):
        raise InputError(f"{shape}; got one {type(dataset).__name__}")
    try:
        train, validation = dataset
    except (TypeError, ValueError):
        raise InputError(f"{shape}; got {type(dataset).__name__}") from None
    if is_batch_source(train):
        if not is_batch_source(validation):
            _check_arrays(validation, "validation", shape)
        return "batches"
    if is_batch_source(validation):
        raise InputError(f"{shape}; got arrays for training and batches for validation")
    trained = _check_arrays(train, "training", shape)
    validated = _check_arrays(validation, "validation", shape)
    if trained[0] == 0 or validated[0] == 0:
        raise InputError("dataset has no training or no validation samples")
    (x_train, y_train), (x_val, y_val) = train, validation
    for name, train_side, val_side in (("inputs", x_train, x_val), ("labels", y_train, y_val)):
        train_leaves, val_leaves = _leaves(train_side), _leaves(val_side)
        if len(train_leaves) != len(val_leaves):
            raise InputError(
                f"dataset has {len(train_leaves)} training {name} arrays but "
                f"{len(val_leaves)} validation ones; they must match"
            )
        for train_leaf, val_leaf in zip(train_leaves, val_leaves):
            train_shape, val_shape = _sample_shape(train_leaf), _sample_shape(val_leaf)
            if train_shape is not None and val_shape is not None and train_shape != val_shape:
                raise InputError(
                    f"dataset has training {name} of shape {train_shape} per sample but "
                    f"validation {name} of shape {val_shape}; they must match"
                )
    return "arrays"


def _check_arrays(pair: Any, side: str, shape: str) -> tuple[int, int]:
    """(samples, labels) of ``(x, y)``, checked to match; InputError otherwise."""
    try:
        x, y = pair
        counts = [len(leaf) for leaf in _leaves(x)], [len(leaf) for leaf in _leaves(y)]
    except (TypeError, ValueError):
        raise InputError(f"{shape}; the {side} part is a {type(pair).__name__}") from None
    for what, found in zip(("inputs", "labels"), counts):
        if len(set(found)) > 1:
            raise InputError(
                f"dataset has {side} {what} arrays of different lengths {found}; they must match"
            )
    if counts[0][0] != counts[1][0]:
        raise InputError(
            f"dataset has {counts[0][0]} {side} inputs for {counts[1][0]} labels; they must match"
        )
    return counts[0][0], counts[1][0]


def _sample_shape(array: Any) -> tuple[int, ...] | None:
    """The shape of one sample of an array-like, None when it has no ``shape``."""
    shape = getattr(array, "shape", None)
    return tuple(shape[1:]) if shape is not None and len(shape) > 0 else None


def save_checkpoint(
    model: Any,
    path: str,
    val_losses: Sequence[float],
    logs: Sequence[dict[str, float]] | None = None,
    stopped: bool = False,
) -> None:
    """Saves ``model`` and its progress as the one ``.keras`` file ``path``, atomically.

    Args:
        logs: every epoch's logs (``checkpoints.progress_record``).
        stopped: a callback ended training at this epoch.

    Raises:
        CheckpointError: when the file cannot be written (not for a full disk).
    """
    record = progress_record(val_losses, logs, stopped)

    def write() -> None:
        temp = f"{path[: -len('.keras')]}.tmp{os.getpid()}.keras"  # Keras wants .keras
        model.save(temp)
        with zipfile.ZipFile(temp, "a") as archive:
            archive.writestr(PROGRESS_MEMBER, json.dumps(record))
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
    """A Keras callback that records each epoch's logs and saves at epoch ends, always at
    the last, and at the epoch where a callback stopped training (``EarlyStopping``).

    With ``every_epoch``, it saves after every epoch unless saving would cost more
    than ``SAVE_BUDGET`` of the time trained since the last save (small models with
    fast epochs then save every few epochs; a kill loses at most those). Before a
    save replaces a checkpoint that holds the best epoch, or when the best epoch
    was never saved, it writes the best-epoch file (``BestEpoch``). It runs after
    the user's callbacks at an epoch's end, so it sees a stop they asked for and
    saves the learning rate ``ReduceLROnPlateau`` set.

    Raises:
        InputError: at the first epoch's end, when the objective is not logged.
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
            logs = _numbers(logs or {})
            if keeper.objective.name not in logs and "val_loss" in logs:
                raise InputError(unknown_metric(keeper.objective, list(logs)))
            value = logs.get("val_loss")
            self.trained_since += time.perf_counter() - self.began
            affordable = self.save_seconds <= SAVE_BUDGET * self.trained_since
            # A stop asked for at the segment's last epoch ends the configuration too.
            self.stopped = bool(self.model.stop_training)
            save = epoch + 1 == epochs or self.stopped or (every_epoch and affordable)
            if keeper.ended(math.nan if value is None else float(value), save, logs):
                self.snapshot = [v.numpy() for v in self._state()]
            if save:
                started = time.perf_counter()
                self._save()
                self.save_seconds = time.perf_counter() - started
                self.trained_since = 0.0

        stopped = False

        def _save(self) -> None:
            keep = keeper.keep_from()
            if keep == "checkpoint":
                checkpoint_written(best, lambda: keep_checkpoint_as_best(checkpoint, best))
            elif keep == "snapshot":
                self._save_snapshot()
            if keep is not None:
                keeper.kept_best()
            save_checkpoint(self.model, checkpoint, keeper.val_losses, keeper.logs, self.stopped)
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
                assert keeper.logs is not None
                kept = keeper.best
                save_checkpoint(self.model, best, keeper.val_losses[:kept], keeper.logs[:kept])
            finally:
                for variable, value in zip(variables, current, strict=True):
                    variable.assign(value)

    return EpochCheckpoint()


def _numbers(logs: Mapping[str, Any]) -> dict[str, float]:
    """An epoch's logs as plain floats (Keras may give tensors); what is no number is left out."""
    found = {}
    for name, value in logs.items():
        try:
            found[str(name)] = float(value)
        except (TypeError, ValueError):
            continue
    return found


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

    # Plain tensor code (its branches are on Python values): autograph's conversion of
    # these functions, redone for every segment, would be pure cost.
    @tf.autograph.experimental.do_not_convert
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

    @tf.autograph.experimental.do_not_convert
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


def build_compiled_state(model: Any, batch_spec: Any) -> None:
    """Creates the variables of ``model``'s optimizer, compiled metrics and loss before ``fit``.

    Keras' TensorFlow trainer otherwise creates them while it traces the train step,
    and a ``tf.function`` whose first trace created variables traces again: the first
    epoch of every model built afresh (or restored from its checkpoint) paid for two
    traces of the train step. Built here from the spec of one batch, as Keras builds
    them itself under a distribution strategy, the step is traced once. Nothing random
    is drawn (the variables start at zero), so training is the same bit for bit. Other
    backends build them before tracing already; a Keras without this hook, or a model
    that cannot be built from specs alone, is left for ``fit`` to build as before.

    Args:
        batch_spec: ``(x, y)`` or ``(x, y, sample_weight)`` of ``tf.TensorSpec``s (the
            ``element_spec`` of ``epoch_dataset``'s pipeline).
    """
    import keras

    symbolic_build = getattr(model, "_symbolic_build", None)  # private Keras API
    if keras.backend.backend() != "tensorflow" or symbolic_build is None:
        return
    try:
        with model.distribute_strategy.scope():
            symbolic_build(data_batch=batch_spec)
    except Exception:  # noqa: BLE001 - a model it cannot build symbolically: fit builds it
        return


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


def fit_arguments(hparams: Mapping[str, Any], names: Sequence[str] = ()) -> dict[str, Any]:
    """The hyperparameters that go to ``fit``: ``batch_size`` when there is one, and ``names``.

    Raises:
        ValueError: for a ``batch_size`` that is no integer >= 1 (the trial fails).
    """
    chosen = {n: hparams[n] for n in ("batch_size", *names) if n in hparams}
    if "batch_size" in chosen:
        value = chosen["batch_size"]
        integral = isinstance(value, numbers.Integral) or (
            isinstance(value, numbers.Real) and float(value).is_integer()
        )
        if isinstance(value, bool) or not integral or value < 1:
            raise ValueError(f"hyperparameter batch_size must be an integer >= 1, got {value!r}")
        chosen["batch_size"] = int(value)
    return chosen


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
        fit_kwargs: more keyword arguments for ``fit`` (``class_weight``,
            ``sample_weight``, which is shuffled with the arrays, ...).
        backend: the Keras backend to run (``phobbit.keras_adapter.backends``), set before Keras is
            imported in the worker; None keeps Keras' default.
        checkpoint_every_epoch: save the checkpoint after every epoch (the default;
            every few epochs when a save would cost more than a tenth of the
            training since the last), so a killed segment resumes from its last
            save; False saves only at the end of a segment.
        objective: what ranks epochs: which one the best-epoch file holds.
        callbacks: Keras callbacks for ``fit``: a list, or a function of the
            hparams that returns one, called in the worker for every segment
            (fresh callbacks, and ones that need not pickle). A callback that
            stops training (``EarlyStopping``) ends the configuration there.
        fit_hparams: names of hyperparameters passed to ``fit`` as keyword
            arguments (they reach the model function too); a hyperparameter
            named ``batch_size`` always is, as the batch size of the arrays.
        warm_bytes: bytes of models (weights and optimizer state) each worker
            keeps in memory after training them (``phobbit.execution.warm``), so that the
            next segment of a configuration on the same worker skips the rebuild,
            the checkpoint load and the retrace; 0 keeps none. On a GPU the models
            held keep their GPU memory: lower it when trials share a GPU. The
            checkpoint stays the source of truth: a model held is used only while
            its checkpoint is the file it saved, and trains on bit-identically.
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
    objective: Objective = VAL_LOSS
    callbacks: Any = field(default=None, hash=False)
    fit_hparams: tuple[str, ...] = ()
    backend: str | None = None
    warm_bytes: int = warm.DEFAULT_BYTES

    def _arrays(self) -> Arrays:
        key = self.data_path or f"{self.load_dataset!r}"
        datasets = worker_state().datasets  # loaded once per worker, reused by every trial
        if key not in datasets:
            if self.data_path is not None:
                import joblib

                datasets[key] = joblib.load(self.data_path, mmap_mode="r")
            else:
                assert self.load_dataset is not None
                data = self.load_dataset()
                check_dataset(data)
                datasets[key] = data
        return datasets[key]

    def _source(self) -> Arrays | None:
        """The arrays to train on, loaded (and checked) once per worker; None with generators."""
        return None if self.generator_function is not None else self._arrays()

    def _fit_data(
        self,
        arrays: Arrays | None,
        fit_kwargs: dict[str, Any],
        first: int,
        last: int,
        key: int,
        batch_size: int | None = None,
    ) -> dict[str, Any]:
        """``fit``'s data arguments for epochs ``first .. last - 1`` (pops what it uses)."""
        if arrays is not None and is_batch_source(arrays[0]):
            # Batches as the dataset yields them: resumes bit-identically only when an
            # epoch's batches do not depend on the epochs iterated before (see README).
            train, validation = arrays
            return {
                "x": train,
                "validation_data": validation,
                "steps_per_epoch": self.steps_per_epoch,
                "validation_steps": self.validation_steps,
            }
        if arrays is None:
            return {
                "x": _call(self.generator_function, self.train_gen_args),
                "validation_data": _call(self.generator_function, self.valid_gen_args),
                "steps_per_epoch": self.steps_per_epoch,
                "validation_steps": self.validation_steps,
            }
        (x, y), validation = arrays
        batch = batch_size or self.batch_size or DEFAULT_BATCH
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

        cache = warm.process_cache()
        cache.resize(self.warm_bytes)
        while True:
            resume = plan_resume(found[0], found[1], initial_epoch, epochs)
            if resume.start >= epochs or resume.stopped:  # finished, its row was lost
                return Losses(
                    resume.history[initial_epoch:epochs],
                    resume.note,
                    history=resume.logs,
                    stopped_early=resume.stopped,
                )
            # The model this worker trained up to the checkpoint, still in memory: what
            # load_weights would restore, already built and traced.
            model = (
                cache.take(checkpoint, hparams, resume.start, path)
                if resume.from_checkpoint
                else None
            )
            started_warm = model is not None
            if started_warm:
                break
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
            list(resume.history),
            resume.start if resume.from_checkpoint else None,
            resume.kept,
            logs=list(resume.logs),
            objective=self.objective,
        )
        fit_kwargs = dict(self.fit_kwargs)
        callbacks = list(fit_kwargs.pop("callbacks", None) or [])
        callbacks += self._user_callbacks(hparams)
        fit_kwargs.update(fit_arguments(hparams, self.fit_hparams))
        batch = fit_kwargs.pop("batch_size", None)
        data = self._fit_data(arrays, fit_kwargs, resume.start, epochs, key, batch)
        if not started_warm and arrays is not None and not is_batch_source(arrays[0]):
            build_compiled_state(model, data["x"].element_spec)  # one trace, not two
        saver = _saver(path, best, keeper, epochs, self.checkpoint_every_epoch)
        # The epoch is seeded before anything of the user's runs at its start, and saved
        # after all of it at its end (a stop asked for, a learning rate changed, is seen).
        fitted = model.fit(
            epochs=epochs,
            initial_epoch=resume.start,
            verbose=self.verbose,
            callbacks=[_seeder(key), *callbacks, saver],
            **data,
            **fit_kwargs,
        )
        if fitted.history.get("val_loss") is None and len(keeper.val_losses) > resume.start:
            raise ValueError("fit reported no val_loss; give validation data")
        if len(keeper.val_losses) < epochs and not saver.stopped:
            raise RuntimeError(
                f"fit ended after epoch {len(keeper.val_losses)} of {epochs} without a "
                "callback stopping it (did the data run out? give steps_per_epoch)"
            )
        kept_as_saved = not saver.stopped and _ends_as_saved(callbacks)
        if kept_as_saved and not _draws_stateful_randomness(model):
            cache.put(checkpoint, hparams, model, _state_bytes(model), epochs, path)
        return Losses(
            keeper.val_losses[initial_epoch:epochs],
            resume.note,
            history=keeper.logs,
            stopped_early=saver.stopped,
            warm=started_warm,
        )

    def _user_callbacks(self, hparams: dict[str, Any]) -> list[Any]:
        """The user's callbacks for this segment: the list, or what its function returns."""
        made = self.callbacks(dict(hparams)) if callable(self.callbacks) else self.callbacks
        if made is None:
            return []
        if not isinstance(made, (list, tuple)):
            made = [made]
        return list(made)


def _state_bytes(model: Any) -> int:
    """Bytes of a model's weights and optimizer variables."""
    import numpy as np

    variables = list(model.weights) + list(getattr(model.optimizer, "variables", []))
    return sum(
        int(np.prod(v.shape)) * np.dtype(getattr(v.dtype, "name", v.dtype)).itemsize
        for v in variables
    )


def _ends_as_saved(callbacks: Sequence[Any]) -> bool:
    """Whether the model after ``fit`` is what its last save wrote: no user callback may
    change it at the end of training (``EarlyStopping(restore_best_weights=True)`` does).

    A callback of the user's own that acts at the end of training is taken to change
    the model (it would then differ from its checkpoint): it is not kept warm.
    """
    import keras

    harmless = (
        keras.callbacks.TensorBoard,
        keras.callbacks.CSVLogger,
        keras.callbacks.ProgbarLogger,
        keras.callbacks.History,
    )
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.EarlyStopping):
            if callback.restore_best_weights:
                return False
        elif isinstance(callback, harmless):
            continue
        elif type(callback).on_train_end is not keras.callbacks.Callback.on_train_end:
            return False
    return True


def _draws_stateful_randomness(model: Any) -> bool:
    """Whether ``model``'s traced train or test step holds a stateful random op.

    Such an op (``tf.random.uniform`` in a user's layer, a ``tf.random.Generator``)
    keeps its own state in the traced function: a model continued warm would go on
    with that sequence where one rebuilt from its checkpoint starts it afresh from
    the seed, and the results would depend on which worker trained the segment.
    Keras' own layers draw statelessly from their ``SeedGenerator`` (reseeded every
    epoch) and pass. True also when the traced functions cannot be inspected: then
    the model is not kept, which costs time, never exactness.
    """
    known = getattr(model, "_phobbit_stateful_random", None)
    if known is not None:
        return known
    try:
        ops: set[str] = set()
        for step in (model.train_function, model.test_function):
            for function in _traced_functions(step):
                for concrete in function._list_all_concrete_functions():
                    graph = concrete.graph.as_graph_def()
                    ops.update(node.op for node in graph.node)
                    for nested in graph.library.function:
                        ops.update(node.op for node in nested.node_def)
        found = any(
            not op.startswith("Stateless")
            and ("Random" in op or op.startswith(_DRAWING_PREFIXES) or op in _DRAWING_OPS)
            for op in ops
        )
    except Exception:  # noqa: BLE001 - a Keras or TensorFlow that hides its traced functions
        found = True
    try:
        model._phobbit_stateful_random = found
    except AttributeError:
        pass
    return found


_DRAWING_OPS = frozenset({"TruncatedNormal", "Multinomial", "ParameterizedTruncatedNormal"})
# tf.random.Generator's ops (not StatefulPartitionedCall, a call of a traced function).
_DRAWING_PREFIXES = ("StatefulUniform", "StatefulStandardNormal", "StatefulTruncatedNormal", "Rng")


def _traced_functions(step: Any) -> list[Any]:
    """The ``tf.function``s a Keras step function (a plain function) closes over."""
    found, todo, seen = [], [step], set()
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if hasattr(item, "_list_all_concrete_functions"):
            found.append(item)
            continue
        for cell in getattr(item, "__closure__", None) or ():
            try:
                todo.append(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
    if not found:
        raise LookupError("no traced function found")
    return found
