"""A trainable without TensorFlow whose losses follow a deterministic curve.

``SyntheticTrainable`` keeps the whole ``Trainable`` contract (checkpoints,
best-epoch files, retraining from a lost checkpoint, warm models) with JSON
checkpoints and a curve computed from the configuration and the epoch, so tests
and benchmarks run the real scheduler and workers without Keras. It sleeps out
its epochs (``epoch_seconds``) and says how long a segment takes
(``segment_time``), so a ``SimulatedExecutor`` can put the time on its virtual
clock instead (``phobbit.execution.simulated.TimedTrainable``).

Worker processes unpickle it by reference: it must stay importable here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phobbit.core.objective import VAL_LOSS, Objective
from phobbit.errors import InputError
from phobbit.execution import warm
from phobbit.execution.trainable import (
    Losses,
    atomic_write_text,
    checkpoint_identity,
    checkpoint_written,
    hparams_unit,
)
from phobbit.storage import fence
from phobbit.storage.checkpoints import (
    BestEpoch,
    Identity,
    Logs,
    best_path,
    inspect,
    keep_checkpoint_as_best,
    plan_resume,
    progress_record,
)

WARM_STATE_BYTES = 1000
"""What one configuration's state held warm counts against ``SyntheticTrainable.warm_bytes``."""

TRAIN_LOSS_SHARE = 0.8  # a synthetic epoch's training loss, as a share of its val loss


def default_curve(hparams: dict[str, Any], epoch: int) -> float:
    """A deterministic learning curve: a per-configuration floor plus a decaying term."""
    quality = hparams_unit(hparams)
    return quality + (1.0 + quality) / math.sqrt(epoch)


@dataclass(frozen=True)
class SyntheticTrainable:
    """A trainable without TensorFlow whose losses follow a deterministic curve.

    Its checkpoint is a small JSON file holding the epoch, the val losses so far
    and an optimizer-like iteration count, saved after every epoch, so tests can
    prove that a resumed configuration continues from its checkpoint and trains
    only missing epochs. It keeps the contract of ``Trainable`` in full: a
    best-epoch file (``<stem>.best.json``) when its curve rises again, every file
    recording whose it is (``checkpoint_identity``), and a missing, unreadable or
    foreign checkpoint retrained from the best-epoch file or from scratch, with a
    note. Its curve is deterministic, as Keras training is per
    epoch, so retrained epochs give the losses they gave before.

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
        metrics: ``metrics(hparams, epoch) -> dict`` of more logs per epoch (a
            module-level function), beside ``val_loss`` (the curve) and ``loss``
            (``TRAIN_LOSS_SHARE`` of it).
        objective: what ranks epochs for the best-epoch file (the run sets it).
        stops: ``stops(hparams, epoch) -> bool``: True ends training after that
            epoch, as Keras' ``EarlyStopping`` does (a module-level function).
        warm_bytes: bytes of state the worker keeps in memory between segments
            (``phobbit.execution.warm``); each configuration's counts ``WARM_STATE_BYTES``.
            0 (the default) keeps none: every segment reads its checkpoint. A
            segment that goes on from memory says so in its ``record_dir``
            record (``"warm": true``).
        fails: ``fails(hparams, epoch) -> bool``: True raises ``RuntimeError`` at the
            start of that epoch, as failing user code does (a module-level function);
            the epochs before it are checkpointed as usual.
        fail_flag: a file whose existence ``fails`` needs: delete it between two
            runs and the same configurations train, as after a user's fix. ``""``
            (the default): ``fails`` alone decides.
    """

    curve: Callable[[dict[str, Any], int], float] = default_curve
    epoch_seconds: float = 0.0
    jitter: float = 0.0
    steps_per_epoch: int = 10
    record_dir: str | None = None
    checkpoint_every_epoch: bool = True
    metrics: Callable[[dict[str, Any], int], dict[str, float]] | None = None
    objective: Objective = VAL_LOSS
    stops: Callable[[dict[str, Any], int], bool] | None = None
    warm_bytes: int = 0
    fails: Callable[[dict[str, Any], int], bool] | None = None
    fail_flag: str = ""

    def _fails(self, hparams: dict[str, Any], epoch: int) -> bool:
        """Whether ``epoch`` of ``hparams`` fails now (``fails``, while ``fail_flag`` exists)."""
        if self.fails is None or not self.fails(hparams, epoch):
            return False
        return not self.fail_flag or os.path.exists(self.fail_flag)

    def logs(self, hparams: dict[str, Any], epoch: int) -> Logs:
        """The logs of ``epoch`` of ``hparams``: loss, val_loss and ``metrics``' values."""
        val_loss = float(self.curve(hparams, epoch))
        logs = {"loss": TRAIN_LOSS_SHARE * val_loss, "val_loss": val_loss}
        if self.metrics is not None:
            logs.update({str(k): float(v) for k, v in self.metrics(hparams, epoch).items()})
        return logs

    def epoch_time(self, hparams: dict[str, Any], epoch: int) -> float:
        """Seconds that ``epoch`` of ``hparams`` takes: ``epoch_seconds``, jittered."""
        shake = 1.0 + self.jitter * (2.0 * hparams_unit({**hparams, "_e": epoch}) - 1.0)
        return self.epoch_seconds * shake

    def segment_time(self, hparams: dict[str, Any], initial_epoch: int, epochs: int) -> float:
        """Seconds that training ``hparams`` from ``initial_epoch`` to ``epochs`` takes."""
        return sum(self.epoch_time(hparams, e) for e in range(initial_epoch + 1, epochs + 1))

    def instant(self) -> SyntheticTrainable:
        """This trainable without its sleeps: a virtual clock stands for its epochs."""
        if self.epoch_seconds > 0:
            return dataclasses.replace(self, epoch_seconds=0.0)
        return self

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> Losses:
        start = time.time()
        path, best = Path(checkpoint + ".json"), Path(best_path(checkpoint, ".json"))
        identity = checkpoint_identity(checkpoint, hparams)
        found = inspect(path, identity), inspect(best, identity)
        resume = plan_resume(*found, initial_epoch, epochs)
        done = resume.start
        cache = warm.process_cache()
        cache.resize(self.warm_bytes)
        held = None
        if resume.from_checkpoint and done < epochs and not resume.stopped:
            held = cache.take(checkpoint, hparams, done, path)
        if held is not None:
            iterations = held["iterations"]
        else:
            iterations = _iterations(resume.source) if resume.source else 0
        keeper = BestEpoch(
            list(resume.history),
            done if resume.from_checkpoint else None,
            resume.kept,
            logs=list(resume.logs),
            objective=self.objective,
        )
        snapshot: dict[str, Any] = {}
        stopped = resume.stopped
        training = saving = 0.0  # seconds trained since the last save; what the last took
        # Epochs end on a schedule from the segment's start: an epoch takes its set time,
        # its checkpoint included, and the sleeps' overshoot does not add up.
        deadline = time.perf_counter()
        for epoch in range(done + 1, done if stopped else epochs + 1):
            began = time.perf_counter()
            if self.epoch_seconds > 0:
                deadline += self.epoch_time(hparams, epoch)
                time.sleep(max(0.0, deadline - began))
            if self._fails(hparams, epoch):
                raise RuntimeError(f"synthetic failure at epoch {epoch}")
            iterations += self.steps_per_epoch
            training += time.perf_counter() - began
            # Epochs shorter than a save (benchmarks' zero-time epochs) are saved together:
            # saving never costs more than training, and a kill loses no more than a save.
            stopped = self.stops is not None and self.stops(hparams, epoch)
            save = (
                epoch == epochs or stopped or (self.checkpoint_every_epoch and training >= saving)
            )
            state = {"iterations": iterations}
            logs = self.logs(hparams, epoch)
            if keeper.ended(logs["val_loss"], save, logs):
                record = progress_record(keeper.val_losses, keeper.logs, identity=identity)
                snapshot = {**state, **record}
            if save:
                began = time.perf_counter()
                self._save(
                    path,
                    best,
                    keeper,
                    {**state, **({"stopped": True} if stopped else {})},
                    snapshot,
                    identity,
                )
                training, saving = 0.0, time.perf_counter() - began
            if stopped:
                break
        if not stopped and len(keeper.val_losses) == epochs and done < epochs:
            # Saved at the segment's last epoch just now: the state is the file's.
            state = {"iterations": iterations}
            cache.put(checkpoint, hparams, state, WARM_STATE_BYTES, epochs, path)
        losses = Losses(
            keeper.val_losses[initial_epoch:epochs],
            resume.note,
            history=keeper.logs,
            stopped_early=stopped,
            warm=held is not None,
        )
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
                "note": resume.note,
                "epochs": epochs,
                "iterations": iterations,
                "warm": held is not None,
                "tensorflow_imported": "tensorflow" in sys.modules,
            }
            name = f"{os.getpid()}-{time.monotonic_ns()}.json"
            atomic_write_text(Path(self.record_dir) / name, json.dumps(record))
        return losses

    @staticmethod
    def _save(
        path: Path,
        best: Path,
        keeper: BestEpoch,
        state: dict[str, Any],
        snapshot: dict,
        identity: Identity,
    ) -> None:
        """Saves the checkpoint, after keeping the best epoch when the save supersedes it."""
        keep = keeper.keep_from()
        if keep == "checkpoint":
            checkpoint_written(best, lambda: keep_checkpoint_as_best(str(path), str(best)))
        elif keep == "snapshot":
            text = json.dumps(snapshot)
            checkpoint_written(best, lambda: atomic_write_text(best, text, fence.commit))
        if keep is not None:
            keeper.kept_best()
        record = progress_record(keeper.val_losses, keeper.logs, identity=identity)
        text = json.dumps({**state, **record})
        checkpoint_written(path, lambda: atomic_write_text(path, text, fence.commit))
        keeper.saved_checkpoint()


@dataclass(frozen=True)
class InputCheckedTrainable(SyntheticTrainable):
    """A synthetic trainable with an input check (``ChecksInput``), as the Keras one has.

    Args:
        input_error: what its ``preflight`` raises as bad input (``InputError``), as a
            dataset whose feature count does not fit the model makes Keras' do;
            ``""`` passes.
    """

    input_error: str = ""

    def preflight(self, hparams: dict[str, Any]) -> None:
        """Passes, or raises ``InputError(input_error)``; with ``record_dir``, leaves a
        ``preflight-<pid>.json`` record of the process that ran it."""
        if self.record_dir is not None:
            record = {"pid": os.getpid(), "hparams": hparams}
            name = f"preflight-{os.getpid()}-{time.monotonic_ns()}.json"
            atomic_write_text(Path(self.record_dir) / name, json.dumps(record))
        if self.input_error:
            raise InputError(self.input_error)


def _iterations(path: str) -> int:
    """The optimizer-like iteration count a synthetic checkpoint holds."""
    try:
        return int(json.loads(Path(path).read_text())["iterations"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # read a moment ago by plan_resume; gone or torn since: count from 0
