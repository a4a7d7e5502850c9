"""What the scheduler trains: any object with a ``train`` method, Keras or not.

The scheduler and executors never import Keras; they drive a *trainable*,
which builds or resumes one configuration, trains it some more epochs, saves
its checkpoint and reports the validation loss of every epoch it trained.
``phobbit.testing.SyntheticTrainable`` is one without TensorFlow, for tests and
benchmarks; the Keras one is ``phobbit.keras_adapter.trainable``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from phobbit.core.objective import VAL_LOSS, Objective
from phobbit.core.records import Segment
from phobbit.errors import CheckpointError
from phobbit.storage.checkpoints import Identity, Logs


class Losses(list):
    """The val losses a trainable returns, with a note when it had to retrain.

    A plain list of floats to any caller; ``note`` says, in one line, why the
    segment trained epochs it should not have had to (its checkpoint was
    missing or unreadable) and from where it went on, or is ``''``. The worker
    writes it into the segment's row, and reporters show it.

    ``history``, when given, holds every epoch's logs of the configuration from
    epoch 1 to the last trained (``{"loss": ..., "val_loss": ..., ...}``): the
    worker records each epoch of the segment in ``epochs.csv`` and ranks the
    configuration by any logged objective. ``stopped_early`` says that a
    callback (``EarlyStopping``) ended training before the segment's last
    epoch: the list is then shorter than the segment. ``warm`` says that the
    segment went on from the model its worker held in memory (``phobbit.execution.warm``)
    instead of restoring it from the checkpoint.
    """

    def __init__(
        self,
        values: Iterable[float] = (),
        note: str = "",
        history: Sequence[Logs] | None = None,
        stopped_early: bool = False,
        warm: bool = False,
    ) -> None:
        super().__init__(float(v) for v in values)
        self.note = note
        self.history = None if history is None else [dict(logs) for logs in history]
        self.stopped_early = stopped_early
        self.warm = warm


def note_of(losses: Sequence[float]) -> str:
    """The retrain note of what a trainable returned (``''`` for a plain sequence)."""
    return losses.note if isinstance(losses, Losses) else ""


def objective_of(trainable: Any) -> Objective:
    """The objective a trainable ranks epochs by: its ``objective`` attribute, or the val loss.

    A trainable without one (a user's own) is ranked by the val losses it returns.
    """
    objective = getattr(trainable, "objective", None)
    return objective if isinstance(objective, Objective) else VAL_LOSS


@runtime_checkable
class Trainable(Protocol):
    """Builds or resumes one configuration and trains it; runs in a worker process.

    The checkpoint contract that makes a run survive kills and bad files:

    - A trainable saves its checkpoint (``checkpoint`` plus its suffix) at the end
      of epochs, always at the last of a segment, together with the epoch it
      holds and the val losses of every epoch so far (``phobbit.storage.checkpoints``).
      Every file is written to a temp file, then put in place with
      ``phobbit.storage.fence.commit``: the previous checkpoint stays whole until the
      new one is complete, and a stale worker cannot replace it.
    - It keeps the configuration's best epoch: when the epoch with the lowest
      val loss is not the checkpoint's, a best-epoch file
      (``checkpoints.best_path``) holds it, so the file ``phobbit best`` names
      evaluates to the listed Val Loss.
    - Asked to train from ``initial_epoch`` while the checkpoint already holds a
      later epoch ``e`` (an earlier attempt of the same segment was killed), it
      goes on from ``e`` and returns the recorded losses of epochs
      ``initial_epoch + 1 .. e`` followed by the new ones; no epoch is trained
      twice.
    - Every file it writes records whose it is, :func:`checkpoint_identity` of
      its checkpoint (the configuration, a fingerprint of its hyperparameters,
      the tuning run), and it reads every file expecting that identity
      (``phobbit.storage.checkpoints.inspect``): a valid file of another
      configuration, of other hyperparameters or of another run (copied over,
      or left by a run begun again in the same folder) is taken as unreadable.
    - A checkpoint that is missing, unreadable, another's or behind
      ``initial_epoch`` is never a failure of the configuration: the trainable
      goes on from the latest good file (the best-epoch file, when it is the
      configuration's) or from scratch, and returns ``Losses`` whose
      ``note`` says so. Training is a function of the configuration and the
      epoch alone (seeded per epoch, data order per epoch), so the retrained
      epochs reproduce the lost ones and the segment's result is that of an
      uninterrupted run.
    - A checkpoint that cannot be *written* (permissions, I/O) is no fault of
      the configuration either: it raises ``CheckpointError``, which stops the run, and
      the same command resumes it once the folder is fixed.
    """

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> Sequence[float]:
        """Trains ``hparams`` from epoch ``initial_epoch`` up to ``epochs`` in total.

        Args:
            hparams: the configuration.
            checkpoint: a path stem: the state saved by the previous segment, to
                resume from when ``initial_epoch > 0``, and where to save this one.
            initial_epoch: epochs already trained (and in the checkpoint).
            epochs: the total epochs the configuration has trained when this returns.

        Returns:
            The validation loss after each epoch ``initial_epoch + 1 .. epochs``,
            ``epochs - initial_epoch`` values; a ``Losses`` with a ``note`` when
            the checkpoint had to be rebuilt.
        """
        ...


@runtime_checkable
class ChecksInput(Protocol):
    """A trainable that can check, cheaply, that the data fits the model before a run.

    Optional: the scheduler asks a trainable that has ``preflight`` to check the
    first configuration it would train, once per run, in a worker
    (``phobbit.execution.worker.check_input``); a trainable without it trains
    unchecked. The Keras trainable builds the model and evaluates it on one batch
    of the training data and one of the validation data.
    """

    def preflight(self, hparams: dict[str, Any]) -> None:
        """Checks ``hparams``' model against the data, without training or writing.

        It must leave every result as it would be without it: no checkpoint, no
        row, no draw from a generator that training reads.

        Raises:
            InputError: when the data does not fit the model (the run stops, exit 2).
                Anything else it raises is logged and the run goes on unchecked.
        """
        ...


_TRAINING: ContextVar[tuple[str, Identity] | None] = ContextVar("phobbit_training", default=None)
_CONFIG_NAME = re.compile(r"(\d+)-(\d+)-(\d+)")  # core.records.config_name


@contextlib.contextmanager
def training(segment: Segment) -> Iterator[None]:
    """While the worker trains ``segment``, :func:`checkpoint_identity` of its checkpoint
    is the segment's: its configuration, hyperparameters and run.

    A context of the call, not an argument of ``Trainable.train``: every trainable
    (wrappers of users' and tests' included) keeps its signature, and reads the
    identity where it reads and writes files.
    """
    identity = Identity.of(
        (segment.iteration, segment.s, segment.id), segment.hparams, segment.run_id
    )
    token = _TRAINING.set((os.path.abspath(segment.checkpoint), identity))
    try:
        yield
    finally:
        _TRAINING.reset(token)


def checkpoint_identity(checkpoint: str, hparams: Mapping[str, Any]) -> Identity:
    """Whose the files of checkpoint stem ``checkpoint`` are, for a trainable training it.

    In a worker training a segment (:func:`training`), the segment's identity.
    Called outside one (a test, a tool), the configuration its stem names (None
    when it names none), ``hparams`` and no run: such files are checked by
    configuration and hyperparameters alone.
    """
    held = _TRAINING.get()
    if held is not None and held[0] == os.path.abspath(checkpoint):
        return held[1]
    named = _CONFIG_NAME.fullmatch(Path(checkpoint).name)
    config = None if named is None else (int(named[1]), int(named[2]), int(named[3]))
    return Identity.of(config, hparams, None)


def checkpoint_written(path: str | os.PathLike, write: Callable[[], None]) -> None:
    """Runs ``write`` (which writes checkpoint ``path``), turning I/O errors into a stop.

    Raises:
        CheckpointError: for an ``OSError`` other than a full disk (which the
            worker reports as such).
    """
    try:
        write()
    except OSError as exc:
        full = [os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT)]
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) or any(t in str(exc) for t in full):
            raise
        raise CheckpointError(
            f"cannot write checkpoint {path}: {exc.strerror or exc}; fix the repository "
            "folder (permissions, file system), then run the same command again to resume"
        ) from None


def atomic_write_text(
    path: Path, text: str, commit: Callable[[Path, Path], None] = os.replace
) -> None:
    """Writes to a temp file beside ``path``, then replaces it: never a half-written file.

    Args:
        commit: what puts the temp file in place; checkpoints pass ``fence.commit``.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text)
    commit(temp, path)


def hparams_unit(hparams: dict[str, Any]) -> float:
    """A number in [0, 1) that depends on the configuration alone (stable across processes)."""
    text = json.dumps(hparams, sort_keys=True, default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12
