"""What the scheduler trains: any object with a ``train`` method, Keras or not.

The scheduler and executors never import Keras; they drive a *trainable*,
which builds or resumes one configuration, trains it some more epochs, saves
its checkpoint and reports the validation loss of every epoch it trained.
``SyntheticTrainable`` is one without TensorFlow, for tests and benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from phobbit import fence


@runtime_checkable
class Trainable(Protocol):
    """Builds or resumes one configuration and trains it; runs in a worker process.

    The checkpoint contract that makes a run survive kills: a trainable saves
    its checkpoint atomically (write to temp, then ``os.replace``) at the end of
    every epoch, together with the epoch it holds and the val losses so far.
    Asked to train from ``initial_epoch`` while the checkpoint already holds a
    later epoch ``e <= epochs`` (an earlier attempt of the same segment was
    killed), it resumes from ``e`` and returns the recorded losses of epochs
    ``initial_epoch + 1 .. e`` followed by the new ones, so the segment's result
    is that of an uninterrupted run and no epoch is trained twice.
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
            ``epochs - initial_epoch`` values.
        """
        ...


def resume_epoch(path: Path | str, held: int | None, initial_epoch: int, epochs: int) -> int:
    """The epoch to go on from: what the checkpoint holds, checked against the segment.

    Args:
        path: the checkpoint, for messages.
        held: the epoch the checkpoint holds, None when there is no checkpoint.
        initial_epoch: where the segment starts.
        epochs: where it ends.

    Raises:
        RuntimeError: when the checkpoint is missing or lags behind ``initial_epoch``
            (the previous segment's state is lost), or is beyond ``epochs``.
    """
    if held is None:
        if initial_epoch > 0:
            raise RuntimeError(f"checkpoint {path} is missing; expected epoch {initial_epoch}")
        return 0
    if held < initial_epoch:
        raise RuntimeError(f"checkpoint {path} holds epoch {held}, expected {initial_epoch}")
    if held > epochs:
        raise RuntimeError(
            f"checkpoint {path} holds epoch {held}, beyond the {epochs} epochs of this segment"
        )
    return held


def atomic_write_text(path: Path, text: str) -> None:
    """Writes to a temp file beside ``path``, then replaces it: never a half-written file."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text)
    fence.commit(temp, path)


def hparams_unit(hparams: dict[str, Any]) -> float:
    """A number in [0, 1) that depends on the configuration alone (stable across processes)."""
    text = json.dumps(hparams, sort_keys=True, default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


def default_curve(hparams: dict[str, Any], epoch: int) -> float:
    """A deterministic learning curve: a per-configuration floor plus a decaying term."""
    quality = hparams_unit(hparams)
    return quality + (1.0 + quality) / math.sqrt(epoch)


@dataclass(frozen=True)
class SyntheticTrainable:
    """A trainable without TensorFlow whose losses follow a deterministic curve.

    Its checkpoint is a small JSON file holding the epochs trained and an
    optimizer-like iteration count, saved after every epoch, so tests can prove
    that a resumed configuration continues from its checkpoint and trains only
    missing epochs. The val losses of epochs a resumed segment finds already
    trained are those of the curve, which is deterministic by contract.

    Args:
        curve: ``curve(hparams, epoch) -> val loss`` for epoch 1, 2, ...; a
            module-level function so it pickles by reference.
        epoch_seconds: how long each epoch takes, its checkpoint included.
        jitter: relative jitter of the sleep (0.3 gives +-30%), drawn from the
            configuration and epoch so that runs are repeatable.
        steps_per_epoch: iterations added to the count per epoch.
        record_dir: when set, every call that returns writes a JSON file there with
            the pid, ``CUDA_VISIBLE_DEVICES``, start and end time, the checkpoint,
            the epoch it resumed from and the epochs trained.
        checkpoint_every_epoch: save after every epoch (the default; epochs that
            take less time than a save are saved together), or only at the end
            of the segment.
    """

    curve: Callable[[dict[str, Any], int], float] = default_curve
    epoch_seconds: float = 0.0
    jitter: float = 0.0
    steps_per_epoch: int = 10
    record_dir: str | None = None
    checkpoint_every_epoch: bool = True

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> list[float]:
        start = time.time()
        path = Path(checkpoint + ".json")
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            state = {"epoch": None, "iterations": 0}
        done = resume_epoch(path, state["epoch"], initial_epoch, epochs)
        iterations = state["iterations"] if done else 0
        # Epochs a killed attempt of this segment already trained are not trained again.
        losses = [float(self.curve(hparams, e)) for e in range(initial_epoch + 1, done + 1)]
        training = saving = 0.0  # seconds trained since the last save; what the last took
        # Epochs end on a schedule from the segment's start: an epoch takes its set time,
        # its checkpoint included, and the sleeps' overshoot does not add up.
        deadline = time.perf_counter()
        for epoch in range(done + 1, epochs + 1):
            began = time.perf_counter()
            if self.epoch_seconds > 0:
                shake = 1.0 + self.jitter * (2.0 * hparams_unit({**hparams, "_e": epoch}) - 1.0)
                deadline += self.epoch_seconds * shake
                time.sleep(max(0.0, deadline - began))
            iterations += self.steps_per_epoch
            losses.append(float(self.curve(hparams, epoch)))
            training += time.perf_counter() - began
            # Epochs shorter than a save (benchmarks' zero-time epochs) are saved together:
            # saving never costs more than training, and a kill loses no more than a save.
            if epoch == epochs or (self.checkpoint_every_epoch and training >= saving):
                began = time.perf_counter()
                atomic_write_text(path, json.dumps({"epoch": epoch, "iterations": iterations}))
                training, saving = 0.0, time.perf_counter() - began
        if self.record_dir is not None:
            record = {
                "pid": os.getpid(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "start": start,
                "end": time.time(),
                "hparams": hparams,
                "checkpoint": checkpoint,
                "initial_epoch": initial_epoch,
                "resumed_epoch": done,
                "epochs": epochs,
                "iterations": iterations,
                "tensorflow_imported": "tensorflow" in sys.modules,
            }
            name = f"{os.getpid()}-{time.monotonic_ns()}.json"
            atomic_write_text(Path(self.record_dir) / name, json.dumps(record))
        return losses
