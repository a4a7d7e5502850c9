"""A configuration's model saved to and restored from its checkpoint, and whether the model
still in a worker's memory is what its checkpoint holds (so it may be kept warm).

The checkpoint is a full ``.keras`` model with one more member, ``phobbit.json``
(the epoch it holds, every epoch's logs so far, and whose it is: configuration,
hyperparameters, run): model and progress live in one file replaced
atomically, so they never disagree after a kill. Restoring
loads arrays only (``load_weights`` on the model the user's function rebuilt,
after its optimizer is built, so the optimizer's state comes back too): no code
or layer config is ever deserialized from a repository. Keras is imported
inside the functions, in the worker.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from typing import Any

from phobbit.execution.trainable import checkpoint_written
from phobbit.storage import fence
from phobbit.storage.checkpoints import PROGRESS_MEMBER, Identity, progress_record


def save_checkpoint(
    model: Any,
    path: str,
    val_losses: Sequence[float],
    logs: Sequence[dict[str, float]] | None = None,
    stopped: bool = False,
    identity: Identity | None = None,
) -> None:
    """Saves ``model`` and its progress as the one ``.keras`` file ``path``, atomically.

    Args:
        logs: every epoch's logs (``checkpoints.progress_record``).
        stopped: a callback ended training at this epoch.
        identity: whose the file is (``execution.trainable.checkpoint_identity``),
            recorded with the progress and checked by whoever reads it.

    Raises:
        CheckpointError: when the file cannot be written (not for a full disk).
    """
    record = progress_record(val_losses, logs, stopped, identity)

    def write() -> None:
        temp = f"{path[: -len('.keras')]}.tmp{os.getpid()}.keras"  # Keras wants .keras
        model.save(temp)
        with zipfile.ZipFile(temp, "a") as archive:
            archive.writestr(PROGRESS_MEMBER, json.dumps(record))
        fence.commit(temp, path)

    checkpoint_written(path, write)


def restore(model: Any, source: str) -> None:
    """Loads the weights and optimizer state of the checkpoint ``source`` into ``model``.

    Raises:
        Exception: whatever Keras raises for a file whose weights do not load.
    """
    # load_weights restores the optimizer's variables only once it is built.
    model.optimizer.build(model.trainable_variables)
    model.load_weights(source)


def state_bytes(model: Any) -> int:
    """Bytes of a model's weights and optimizer variables."""
    import numpy as np

    variables = list(model.weights) + list(getattr(model.optimizer, "variables", []))
    return sum(
        int(np.prod(v.shape)) * np.dtype(getattr(v.dtype, "name", v.dtype)).itemsize
        for v in variables
    )


def ends_as_saved(callbacks: Sequence[Any]) -> bool:
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


def draws_stateful_randomness(model: Any) -> bool:
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


def load_model(path: str) -> Any:
    """The model of the ``.keras`` file ``path``, loaded in this process with Keras'
    ``safe_mode`` (no code from the file is run).

    Keras is imported here, on the first call, not when this module is: the driver's
    ``best_model`` calls it only when a user asks for a model in their own process.
    """
    import keras

    return keras.saving.load_model(path, safe_mode=True)
