"""The Keras trainable, worker side: builds or restores a configuration's model, fits it and
checkpoints it. Keras and TensorFlow are imported inside its methods, in the worker.

A configuration is built by the user's model function (a compiled model), or
rebuilt by it and restored from its checkpoint: weights *and* optimizer state,
so a promoted configuration trains only the epochs it is missing
(``phobbit.keras_adapter.saving``). The checkpoint is a full ``.keras`` model a
user can load later with ``keras.saving.load_model(path, safe_mode=True)``; it
records whose it is, and one that is another configuration's or another run's
is retrained as an unreadable one is (``phobbit.execution.trainable.Trainable``).

The checkpoint is saved after every epoch (every few epochs when saving would
cost more than a tenth of the training time). When the best epoch is not the
last, a best-epoch file ``<stem>.best.keras`` (same format) holds it (see
``phobbit.storage.checkpoints``).

Training is a function of the configuration and the epoch alone, so a segment
resumed at any epoch, or retrained from scratch, trains bit-identically on the
CPU to one never interrupted: every epoch is reseeded from (configuration,
epoch) (``phobbit.keras_adapter.seeding``), and arrays are fed in an order drawn
from (configuration, epoch) by a stateless shuffle
(``phobbit.keras_adapter.data.epoch_dataset``), instead of ``fit``'s own
shuffle, which draws from a stream that a resumed ``fit`` starts afresh.

The driver never imports this module: it sends a ``phobbit.keras_adapter.fit``
``KerasTraining``, which builds a ``KerasTrainable`` in the worker.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from phobbit.core.objective import VAL_LOSS, Objective, unknown_metric
from phobbit.errors import InputError
from phobbit.execution import warm
from phobbit.execution.trainable import Losses, checkpoint_identity, checkpoint_written
from phobbit.execution.worker import numbers_of, one_line
from phobbit.execution.worker_state import worker_state
from phobbit.keras_adapter.backends import use_backend
from phobbit.keras_adapter.data import (
    DEFAULT_BATCH,
    Arrays,
    EpochPipeline,
    as_tuples,
    call_with,
    check_dataset,
    epoch_dataset,
    is_batch_source,
)
from phobbit.keras_adapter.saving import (
    draws_stateful_randomness,
    ends_as_saved,
    restore,
    save_checkpoint,
    state_bytes,
)
from phobbit.keras_adapter.seeding import config_key, epoch_seeds, seeder
from phobbit.storage.checkpoints import (
    BestEpoch,
    Identity,
    best_path,
    describe,
    inspect,
    keep_checkpoint_as_best,
    plan_resume,
)

SAVE_BUDGET = 0.1  # per-epoch checkpoints may cost at most this share of training time


def _saver(
    checkpoint: str,
    best: str,
    keeper: BestEpoch,
    epochs: int,
    every_epoch: bool,
    identity: Identity | None = None,
) -> Any:
    """A Keras callback that records each epoch's logs and saves at epoch ends, always at
    the last, and at the epoch where a callback stopped training (``EarlyStopping``).

    With ``every_epoch``, it saves after every epoch unless saving would cost more
    than ``SAVE_BUDGET`` of the time trained since the last save (small models with
    fast epochs then save every few epochs; a kill loses at most those). Before a
    save replaces a checkpoint that holds the best epoch, or when the best epoch
    was never saved, it writes the best-epoch file (``BestEpoch``). It runs after
    the user's callbacks at an epoch's end, so it sees a stop they asked for and
    saves the learning rate ``ReduceLROnPlateau`` set. Every file it writes records
    ``identity``.

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
            logs = numbers_of(logs or {})
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
            save_checkpoint(
                self.model, checkpoint, keeper.val_losses, keeper.logs, self.stopped, identity
            )
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
                losses, logs = keeper.val_losses[:kept], keeper.logs[:kept]
                save_checkpoint(self.model, best, losses, logs, identity=identity)
            finally:
                for variable, value in zip(variables, current, strict=True):
                    variable.assign(value)

    return EpochCheckpoint()


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


def replica_strategy() -> Any:
    """The ``tf.distribute.MirroredStrategy`` this worker builds its models under, or None.

    A worker pinned to several GPUs (``gpus_per_trial``) trains each model on all of
    them: one replica per GPU it sees, each batch split between them. A CPU split into
    several logical devices (``tf.config.set_logical_device_configuration``, which only
    a deliberate split makes: the tests stand them in for GPUs) counts the same way.
    Otherwise None, and the model is built as without phobbit. Decided once per worker,
    on first use, after ``CUDA_VISIBLE_DEVICES`` was pinned: every model of the worker
    uses the same one.

    Raises:
        InputError: when the worker is pinned to several GPUs and Keras runs another
            backend than TensorFlow (``MirroredStrategy`` is TensorFlow's).
    """
    state = worker_state()
    with state.lock:
        if not state.strategy:
            state.strategy.append(_make_strategy(state.device))
    return state.strategy[0]


def _make_strategy(device: str) -> Any:
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        if "," in device:  # a GPU group: the pinning gave this worker several GPUs
            raise InputError(
                f"gpus_per_trial > 1 trains each trial on its GPUs {device} with "
                f"tf.distribute.MirroredStrategy, which needs the TensorFlow backend, not "
                f"{backend!r}; use backend 'tensorflow', or gpus_per_trial 1"
            )
        return None
    import tensorflow as tf

    # Asked without initialising TensorFlow's runtime (listing logical devices would):
    # a one-device worker's model function may still configure it (memory growth).
    if "," in device:
        gpus = tf.config.list_physical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else None
    cpus = tf.config.list_physical_devices("CPU")
    split = tf.config.get_logical_device_configuration(cpus[0]) if cpus else None
    if not split or len(split) < 2:
        return None
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(len(split))])


def _scope() -> Any:
    """The scope models are built, compiled and restored in: the worker's strategy's."""
    strategy = replica_strategy()
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def _head(data: Any, size: int) -> Any:
    """The first ``size`` samples of an array, or of each array of a dict or tuple of them."""
    import numpy as np

    if isinstance(data, Mapping):
        return {name: _head(value, size) for name, value in data.items()}
    if isinstance(data, (list, tuple)) and data and all(hasattr(v, "shape") for v in data):
        return tuple(_head(value, size) for value in data)
    return np.asarray(data[:size])


def _shapes(data: Any) -> str:
    """The shapes of an array, or of each array of a dict or tuple of them: ``(1797, 64)``."""
    if isinstance(data, Mapping):
        return "{" + ", ".join(f"{k!r}: {_shapes(v)}" for k, v in data.items()) + "}"
    if isinstance(data, (list, tuple)) and data and all(hasattr(v, "shape") for v in data):
        return "(" + ", ".join(_shapes(value) for value in data) + ")"
    shape = getattr(data, "shape", None)
    return str(tuple(shape)) if shape is not None else f"{type(data).__name__} of {len(data)}"


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says memory ran out (no mismatch of data and model)."""
    return isinstance(exc, MemoryError) or any(
        word in type(exc).__name__ for word in ("ResourceExhausted", "OutOfMemory")
    )


def _validation(validation: Any, batch: int) -> dict[str, Any]:
    """``fit``'s validation arguments for arrays: one pipeline of their batches per worker.

    Given arrays, every ``fit`` builds its own adapter and ``tf.data`` pipeline for
    them (~50 ms of CPU per segment, which a plain Keras loop pays once per model):
    here the batches, in order, are one ``epoch_dataset`` kept by the worker for
    every segment that validates on these arrays with this batch size. They are the
    slices Keras' adapter gathers, so every val loss is the same bit for bit. Under a
    distribution strategy (``gpus_per_trial``), Keras gets the arrays as before.
    """
    if replica_strategy() is not None:
        return {"validation_data": validation, "validation_batch_size": batch}
    pipelines = worker_state().datasets
    name = f"validation pipeline of {id(validation)}, batch {batch}"
    held = pipelines.get(name)
    # The arrays are the worker's own (loaded once): same id, same arrays; kept to be sure.
    if held is None or held[0] is not validation:
        import tensorflow as tf

        batches = epoch_dataset(as_tuples(tuple(validation)), batch, 0, 1, 0, False)
        # Its length told: otherwise Keras reads until the data runs out and warns so
        # ("Your input ran out of data") on every segment.
        count = len(tf.nest.flatten(validation)[0])
        batches = batches.apply(tf.data.experimental.assert_cardinality(-(-count // batch)))
        held = (validation, batches)
        pipelines[name] = held
    return {"validation_data": held[1]}


class _Pipelines:
    """A worker's idle training pipelines of one source of arrays, batch size and shuffle
    (``EpochPipeline``): a segment takes one (or builds one when all are in use, as
    segments run side by side in one process do) and gives it back once ``fit`` is done."""

    def __init__(self, sources: tuple[Any, ...], tensors: Any, batch: int, shuffle: bool) -> None:
        self.sources, self.tensors, self.batch, self.shuffle = sources, tensors, batch, shuffle
        self.idle: list[EpochPipeline] = []
        self.lock = threading.Lock()

    def take(self) -> EpochPipeline:
        with self.lock:
            if self.idle:
                return self.idle.pop()
        return EpochPipeline(self.tensors, self.batch, self.shuffle)

    def give_back(self, pipeline: EpochPipeline) -> None:
        with self.lock:
            self.idle.append(pipeline)


def _same(held: tuple[Any, ...], sources: tuple[Any, ...]) -> bool:
    return all(a is b for a, b in zip(held, sources, strict=True))


def _training_pipelines(
    sources: tuple[Any, ...], inputs: Any, batch: int, shuffle: bool
) -> _Pipelines:
    """The worker's training pipelines of ``sources`` (x, y, sample weights; ``inputs`` is
    them as ``fit`` takes them) by ``batch`` and ``shuffle``. The arrays are the worker's
    own, loaded once, so the same objects come back for every segment (held, and compared
    by identity, to be sure). Their tensors are made once too, and every batch size's
    pipelines read the same ones: a worker holds one copy of its training arrays."""
    import tensorflow as tf

    held = worker_state().datasets
    ids = tuple(map(id, sources))
    with worker_state().lock:
        tensors = held.get(f"training tensors of {ids}")
        if tensors is None or not _same(tensors[0], sources):
            tensors = (sources, tf.nest.map_structure(tf.convert_to_tensor, inputs))
            held[f"training tensors of {ids}"] = tensors
            for name in [name for name in held if name.startswith(f"training pipelines of {ids}")]:
                del held[name]  # other arrays than theirs
        name = f"training pipelines of {ids}, batch {batch}, shuffle {shuffle}"
        pipelines = held.get(name)
        if pipelines is None:
            pipelines = held[name] = _Pipelines(sources, tensors[1], batch, shuffle)
    return pipelines


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
        datasets = worker_state().datasets  # loaded once per worker, reused by every segment
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
        taken: contextlib.ExitStack,
        batch_size: int | None = None,
    ) -> dict[str, Any]:
        """``fit``'s data arguments for epochs ``first .. last - 1`` (pops what it uses); a
        worker's pipeline it takes goes back when ``taken`` closes."""
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
                "x": call_with(self.generator_function, self.train_gen_args),
                "validation_data": call_with(self.generator_function, self.valid_gen_args),
                "steps_per_epoch": self.steps_per_epoch,
                "validation_steps": self.validation_steps,
            }
        (x, y), validation = arrays
        batch = batch_size or self.batch_size or DEFAULT_BATCH
        weights = fit_kwargs.pop("sample_weight", None)
        inputs = as_tuples((x, y) if weights is None else (x, y, weights))
        shuffle = bool(fit_kwargs.pop("shuffle", True))
        import tensorflow as tf

        count = len(tf.nest.flatten(inputs)[0])
        validation_batch = fit_kwargs.pop("validation_batch_size", None) or batch
        if replica_strategy() is None:
            sources = (x, y, weights)
            pipelines = _training_pipelines(sources, inputs, batch, shuffle)
            pipeline = pipelines.take()
            taken.callback(pipelines.give_back, pipeline)  # once fit is done with it
            train = pipeline.epochs(first, last, key)
        else:  # Keras distributes the dataset on each fit: one built for this segment
            train = epoch_dataset(inputs, batch, first, last, key, shuffle)
        return {
            "x": train,
            "shuffle": False,  # the dataset is in its epoch's order already
            "steps_per_epoch": -(-count // batch),
            **_validation(validation, validation_batch),
        }

    def build(self, hparams: dict[str, Any]) -> Any:
        """The compiled model of ``hparams``, checked to be one."""
        import keras

        # Under the worker's strategy: variables made here are mirrored on its devices.
        with _scope():
            model = self.model_function(dict(hparams))
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"model function returned {type(model).__name__}, not a compiled keras.Model"
            )
        if getattr(model, "optimizer", None) is None:
            raise TypeError("model function returned a model that is not compiled; call compile()")
        return model

    def preflight(self, hparams: dict[str, Any]) -> None:
        """Evaluates ``hparams``' model on the first batch of the training arrays and of
        the validation arrays (``test_on_batch``: no weight changes, nothing saved), so a
        dataset that does not fit the model stops the run before any training.

        Only arrays are checked: a source of batches (a generator, ``tf.data``, a
        ``PyDataset``) would be read from, and training reads it too. A model function
        that raises is left to training as well: it fails that configuration alone.
        Nothing here changes a result: training reseeds before it builds a model.

        Raises:
            InputError: when the model refuses a batch, in one line naming the model
                function, the arrays' shapes and Keras' message.
        """
        use_backend(self.backend)
        replica_strategy()  # a backend that cannot train on the worker's GPUs stops it here
        arrays = self._source()  # a bad dataset function stops the run here already
        if arrays is None or is_batch_source(arrays[0]) or is_batch_source(arrays[1]):
            return
        try:
            model = self.build(hparams)
        except Exception:  # noqa: BLE001 - user code: its configuration fails when it trains
            return
        size = self.batch_size or DEFAULT_BATCH
        name = getattr(self.model_function, "__qualname__", repr(self.model_function))
        for side, (x, y, *_) in zip(("training", "validation"), arrays):
            try:
                model.test_on_batch(_head(x, size), _head(y, size))
            except Exception as exc:  # noqa: BLE001 - the model refused the data
                if _out_of_memory(exc):
                    return  # no mismatch: training decides for that configuration
                raise InputError(
                    f"the {side} data does not fit the model of {name}: inputs "
                    f"{_shapes(x)}, labels {_shapes(y)} ({one_line(exc)}); fix the dataset "
                    "or the model function"
                ) from None

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> Losses:
        use_backend(self.backend)  # first: nothing may import Keras before KERAS_BACKEND is set
        arrays = self._source()  # a bad dataset stops the run before training
        path, best = checkpoint + ".keras", best_path(checkpoint, ".keras")
        identity = checkpoint_identity(checkpoint, hparams)
        found = [inspect(path, identity), inspect(best, identity)]
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
                with _scope():  # the optimizer's variables are made here
                    restore(model, resume.source)
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
        with contextlib.ExitStack() as taken:
            data = self._fit_data(arrays, fit_kwargs, resume.start, epochs, key, taken, batch)
            if not started_warm and arrays is not None and not is_batch_source(arrays[0]):
                build_compiled_state(model, data["x"].element_spec)  # one trace, not two
            saver = _saver(path, best, keeper, epochs, self.checkpoint_every_epoch, identity)
            # The epoch is seeded before anything of the user's runs at its start, and saved
            # after all of it at its end (a stop asked for, a learning rate changed, is seen).
            fitted = model.fit(
                epochs=epochs,
                initial_epoch=resume.start,
                verbose=self.verbose,
                callbacks=[seeder(key), *callbacks, saver],
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
        kept_as_saved = not saver.stopped and ends_as_saved(callbacks)
        if kept_as_saved and not draws_stateful_randomness(model):
            cache.put(checkpoint, hparams, model, state_bytes(model), epochs, path)
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
