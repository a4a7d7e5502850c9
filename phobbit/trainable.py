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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Trainable(Protocol):
    """Builds or resumes one configuration and trains it; runs in a worker process."""

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
            The validation loss after each epoch trained, ``epochs - initial_epoch`` values.
        """
        ...


def atomic_write_text(path: Path, text: str) -> None:
    """Writes to a temp file beside ``path``, then replaces it: never a half-written file."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


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
    optimizer-like iteration count, so tests can prove that a resumed
    configuration continues from its checkpoint and trains only missing epochs.

    Args:
        curve: ``curve(hparams, epoch) -> val loss`` for epoch 1, 2, ...; a
            module-level function so it pickles by reference.
        epoch_seconds: how long each epoch sleeps.
        jitter: relative jitter of the sleep (0.3 gives +-30%), drawn from the
            configuration and epoch so that runs are repeatable.
        steps_per_epoch: iterations added to the count per epoch.
        record_dir: when set, every call writes a JSON file there with the pid,
            ``CUDA_VISIBLE_DEVICES``, start and end time, and the epochs trained.
    """

    curve: Callable[[dict[str, Any], int], float] = default_curve
    epoch_seconds: float = 0.0
    jitter: float = 0.0
    steps_per_epoch: int = 10
    record_dir: str | None = None

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> list[float]:
        start = time.time()
        path = Path(checkpoint + ".json")
        iterations = 0
        if initial_epoch > 0:
            state = json.loads(path.read_text())
            if state["epoch"] != initial_epoch:
                raise RuntimeError(
                    f"checkpoint {path} holds epoch {state['epoch']}, expected {initial_epoch}"
                )
            iterations = state["iterations"]
        losses = []
        for epoch in range(initial_epoch + 1, epochs + 1):
            if self.epoch_seconds > 0:
                shake = 1.0 + self.jitter * (2.0 * hparams_unit({**hparams, "_e": epoch}) - 1.0)
                time.sleep(self.epoch_seconds * shake)
            iterations += self.steps_per_epoch
            losses.append(float(self.curve(hparams, epoch)))
        atomic_write_text(path, json.dumps({"epoch": epochs, "iterations": iterations}))
        if self.record_dir is not None:
            record = {
                "pid": os.getpid(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "start": start,
                "end": time.time(),
                "hparams": hparams,
                "initial_epoch": initial_epoch,
                "epochs": epochs,
                "iterations": iterations,
                "tensorflow_imported": "tensorflow" in __import__("sys").modules,
            }
            name = f"{os.getpid()}-{time.monotonic_ns()}.json"
            atomic_write_text(Path(self.record_dir) / name, json.dumps(record))
        return losses
