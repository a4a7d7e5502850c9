"""Keras training data, told and shaped without importing Keras or TensorFlow at module level.

The driver checks a dataset (``check_dataset``) and stages arrays in a file that
workers memory-map (``staged_dataset``); workers feed arrays to ``fit`` through
``epoch_dataset``, a ``tf.data`` pipeline whose order is a function of the
configuration and the epoch alone (TensorFlow is imported inside it, in the worker).
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from phobbit.errors import InputError

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

    epochs = tf.data.Dataset.range(first, last)
    return _batches(inputs, batch_size, epochs, lambda: tf.constant(key, tf.int64), shuffle)


class EpochPipeline:
    """One ``epoch_dataset`` of a worker's arrays, reused by every segment that trains on them.

    Building a pipeline traces its ``tf.data`` functions (~40 ms of CPU per segment on
    the tutorial MLP, which a plain Keras loop pays once per ``fit``). Here the
    configuration's key and the segment's epochs are variables that those functions
    read when they run, so ``epochs`` only sets them: the batches are those of
    ``epoch_dataset`` for the same arguments, bit for bit. One segment at a time may
    iterate it (``phobbit.keras_adapter.trainable`` checks one out per segment).
    """

    def __init__(self, inputs: Any, batch_size: int, shuffle: bool = True) -> None:
        import tensorflow as tf

        self.inputs = inputs
        self._key = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._first = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._last = tf.Variable(0, dtype=tf.int64, trainable=False)
        first, last = self._first, self._last
        # Read when the pipeline runs, not when it is built: the epochs of the segment.
        epochs = (
            tf.data.Dataset.range(2**62)
            .map(tf.autograph.experimental.do_not_convert(lambda e: e + first))
            .take_while(tf.autograph.experimental.do_not_convert(lambda e: e < last))
        )
        self.dataset = _batches(inputs, batch_size, epochs, self._key.read_value, shuffle)

    def epochs(self, first: int, last: int, key: int) -> Any:
        """The pipeline, set to the batches of ``epoch_dataset(inputs, ..., first, last, key)``."""
        self._key.assign(key)
        self._first.assign(first)
        self._last.assign(last)
        return self.dataset


def _batches(
    inputs: Any, batch_size: int, epochs: Any, key: Callable[[], Any], shuffle: bool
) -> Any:
    """The batches of ``inputs`` for each epoch number ``epochs`` yields, each epoch's
    order drawn from (``key()``, epoch)."""
    import tensorflow as tf

    count = len(tf.nest.flatten(inputs)[0])
    full, rest = divmod(count, batch_size)

    # Plain tensor code (its branches are on Python values): autograph's conversion of
    # these functions would be pure cost.
    @tf.autograph.experimental.do_not_convert
    def batches(epoch: Any) -> Any:
        order = tf.range(count, dtype=tf.int64)
        if shuffle:
            seed = tf.stack([key(), epoch])
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

    indices = epochs.flat_map(batches)
    data = tf.data.Dataset.from_tensors(inputs).repeat()
    dataset = tf.data.Dataset.zip((indices, data)).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    # As Keras' adapter: no graph rewrites, which would serialize the arrays in the graph.
    options.experimental_optimization.apply_default_optimizations = False
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def as_tuples(data: Any) -> Any:
    """Lists of arrays as tuples (tf.data would stack a list into one tensor), leaves as arrays."""
    import numpy as np

    if isinstance(data, (list, tuple)):
        return tuple(as_tuples(item) for item in data)
    if isinstance(data, Mapping):
        return {name: as_tuples(item) for name, item in data.items()}
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


def call_with(function: Callable[..., Any], args: Any) -> Any:
    """``function`` called with ``args``: none, a dict as keywords, a tuple or list as
    positional arguments, anything else as the one argument (Hobbit's generator args)."""
    if args is None:
        return function()
    if isinstance(args, Mapping):
        return function(**args)
    if isinstance(args, (list, tuple)):
        return function(*args)
    return function(args)
