"""Checkpoint files: what each holds, which one to resume from, which one scored.

A configuration's checkpoint stem ``models/<iteration>-<run>-<id>`` names up to
two files of its trainable's format (``.keras``, or ``.json`` for the synthetic
trainable):

- ``<stem><suffix>``, the *checkpoint*: the last epoch saved, what a promoted
  configuration resumes from;
- ``<stem>.best<suffix>``, the *best-epoch file*: the epoch with the lowest val
  loss, written only when that is no longer the checkpoint's epoch.

Each file records the epoch it holds and the val losses of every epoch up to
it (a ``phobbit.json`` member of a ``.keras`` zip; keys of a ``.json`` file),
so a reader verifies what a file holds instead of guessing from its name:
:func:`find_scoring` names the file whose epoch scored a given Val Loss, and
:func:`plan_resume` picks what to resume from when a file is missing or
unreadable. Each file also records whose it is (an :class:`Identity`: the
configuration, a fingerprint of its hyperparameters, the tuning run), and a
reader that expects another's takes it as unreadable: a valid checkpoint copied
over another configuration's, or left by another run, is retrained, never
trained on. Nothing here imports Keras.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import json
import math
import os
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phobbit.core.objective import VAL_LOSS, Objective
from phobbit.core.records import ConfigKey
from phobbit.errors import RepositoryError
from phobbit.storage import fence, files

# In a .keras zip: {"epoch": e, "val_losses": [...], "metrics": [{...}, ...], "identity":
# {...}}; "metrics" (every epoch's logs) and "identity" came later, and files without
# them still read.
PROGRESS_MEMBER = "phobbit.json"
BEST = ".best"
SUFFIXES = (".keras", ".json")


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint file exists but does not hold a progress record phobbit wrote."""


class ForeignCheckpointError(UnreadableCheckpointError):
    """A checkpoint file phobbit wrote, but for another configuration, hparams or run."""


def hparams_fingerprint(hparams: Mapping[str, Any]) -> str:
    """A short hash of a configuration's hyperparameters, the same in every process.

    Hyperparameters reach a worker as the results rows record them (JSON), so the
    fingerprint is that of their JSON, keys sorted.
    """
    text = json.dumps(dict(hparams), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _config_text(config: ConfigKey | None) -> str:
    return "none" if config is None else "-".join(map(str, config))


@dataclass(frozen=True)
class Identity:
    """Whose a checkpoint file is: what it records, and what a reader expects of it.

    Attributes:
        config: (iteration, s, id) of the configuration; None for a file trained
            outside a run under a stem that names none (a test, a tool).
        hparams: :func:`hparams_fingerprint` of its hyperparameters; None in what a
            reader expects when it does not know them (any pass).
        run: the tuning run's id (``run.json``'s ``run_id``); None for a run begun
            by a phobbit that wrote no run id (its files are then checked by
            configuration and hyperparameters alone).
    """

    config: ConfigKey | None
    hparams: str | None
    run: str | None = None

    @classmethod
    def of(cls, config: ConfigKey | None, hparams: Mapping[str, Any], run: str | None) -> Identity:
        """The identity of configuration ``config`` with ``hparams`` in run ``run``."""
        key = None if config is None else (int(config[0]), int(config[1]), int(config[2]))
        return cls(key, hparams_fingerprint(hparams), run)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape a progress record holds."""
        config = None if self.config is None else list(self.config)
        return {"config": config, "hparams": self.hparams, "run": self.run}

    @classmethod
    def from_dict(cls, data: Any) -> Identity:
        """The inverse of :meth:`to_dict`.

        Raises:
            ValueError: for anything :meth:`to_dict` does not write.
        """
        if not isinstance(data, dict):
            raise ValueError("its identity is no object")
        config, hparams, run = data["config"], data["hparams"], data["run"]
        if config is not None and not (
            isinstance(config, list)
            and len(config) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in config)
        ):
            raise ValueError(f"its identity names no configuration: {config!r}")
        if not isinstance(hparams, str) or not (run is None or isinstance(run, str)):
            raise ValueError("its identity is malformed")
        key = None if config is None else (config[0], config[1], config[2])
        return cls(key, hparams, run)

    def refuses(self, found: Identity | None) -> str:
        """Why a file that records ``found`` is not this identity's, or ``''``.

        A file without an identity (written before phobbit recorded them) is taken
        as its path says only in a run that has no run id either: a run with one
        wrote an identity into every file, so such a file came from elsewhere.
        """
        if found is None:
            if self.run is None:
                return ""
            return "it records no identity, as every file of this run does"
        if found.run != self.run:
            return "it belongs to another tuning run"
        if found.config != self.config:
            return f"it holds configuration {_config_text(found.config)}"
        if self.hparams is not None and found.hparams != self.hparams:
            return "it holds other hyperparameters"
        return ""


Logs = dict[str, float]
"""One epoch's logged metrics: ``{"loss": ..., "val_loss": ..., "val_accuracy": ...}``."""


def epoch_logs(val_losses: Sequence[float], metrics: Sequence[Any] | None) -> list[Logs]:
    """Every epoch's logs, ``val_loss`` always among them; epochs a file recorded before
    metrics were kept have their val loss alone."""
    found = list(metrics or [])
    return [
        {**(found[i] if i < len(found) else {}), "val_loss": float(v)}
        for i, v in enumerate(val_losses)
    ]


@dataclass(frozen=True)
class Progress:
    """What a checkpoint file holds: ``epoch`` epochs trained, their val losses and logs."""

    epoch: int
    val_losses: tuple[float, ...]
    metrics: tuple[Logs, ...] = ()
    stopped: bool = False  # a callback ended training at this epoch (EarlyStopping)

    @property
    def val_loss(self) -> float | None:
        """The val loss of the epoch held (None for epoch 0)."""
        return self.val_losses[-1] if self.val_losses else None

    @property
    def history(self) -> list[Logs]:
        """Every epoch's logs (``val_loss`` alone for epochs recorded without them)."""
        return epoch_logs(self.val_losses, self.metrics)

    def value(self, objective: Objective) -> float | None:
        """The objective's value at the epoch held (None for epoch 0 or when not logged)."""
        if not self.val_losses:
            return None
        value = objective.value(self.history[-1])
        return None if math.isnan(value) else value


def best_path(stem: str | os.PathLike, suffix: str) -> str:
    """The best-epoch file of checkpoint stem ``stem`` in format ``suffix`` (``.keras``)."""
    return f"{os.fspath(stem)}{BEST}{suffix}"


def progress_record(
    val_losses: Sequence[float],
    metrics: Sequence[Logs] | None = None,
    stopped: bool = False,
    identity: Identity | None = None,
) -> dict:
    """The progress record of a file that holds epoch ``len(val_losses)``, with each
    epoch's logs when given; ``stopped`` when a callback ended training there;
    ``identity``, whose the file is (every file a trainable writes carries one)."""
    record: dict[str, Any] = {
        "epoch": len(val_losses),
        "val_losses": [float(v) for v in val_losses],
    }
    if identity is not None:
        record["identity"] = identity.to_dict()
    if stopped:
        record["stopped"] = True
    if metrics is not None:
        record["metrics"] = [
            {str(k): float(v) for k, v in logs.items()} for logs in metrics[: len(val_losses)]
        ]
    return record


def read_progress(path: str | os.PathLike, identity: Identity | None = None) -> Progress | None:
    """The progress a checkpoint file records; None when there is no such file.

    Args:
        identity: whose the file must be; None checks nothing (a reader that
            knows no run, such as a test).

    Raises:
        UnreadableCheckpointError: for a file that is empty, truncated, not a
            zip or JSON, or whose record is missing or inconsistent.
        ForeignCheckpointError: for a file whose identity is not ``identity``
            (:meth:`Identity.refuses`).
    """
    path = os.fspath(path)
    try:
        # Through ``files``: a FIFO or a device is unreadable, never read until it ends.
        handle = files.open_read(path)
        if handle is None:
            return None
        with handle:
            if path.endswith(".keras"):
                with zipfile.ZipFile(handle) as archive:
                    record = json.loads(archive.read(PROGRESS_MEMBER))
            else:
                record = json.loads(handle.read(files.MAX_WHOLE_BYTES))
        epoch = record["epoch"]
        losses = tuple(float(v) for v in record["val_losses"])
        metrics = tuple(
            {str(k): float(v) for k, v in logs.items()} for logs in record.get("metrics", [])
        )
        stopped = record.get("stopped", False) is True
        found = Identity.from_dict(record["identity"]) if "identity" in record else None
    except FileNotFoundError:
        return None
    except RepositoryError as exc:
        raise UnreadableCheckpointError(str(exc)) from None
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise UnreadableCheckpointError(describe(exc)) from None
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch != len(losses):
        raise UnreadableCheckpointError(
            f"it records {len(losses)} val losses for epoch {epoch!r}"
        ) from None
    if metrics and len(metrics) != epoch:
        raise UnreadableCheckpointError(
            f"it records {len(metrics)} epochs' logs for epoch {epoch}"
        )
    why = "" if identity is None else identity.refuses(found)
    if why:
        raise ForeignCheckpointError(why)
    return Progress(epoch, losses, metrics, stopped)


def describe(exc: BaseException) -> str:
    """An exception in one short line: its type and the start of its message."""
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint file as found: what it holds, or why it cannot be used.

    ``progress`` is None when the file is missing (``problem`` empty) or
    unusable (``problem`` says why, e.g. ``is unreadable (BadZipFile: ...)``).
    """

    path: str
    progress: Progress | None
    problem: str = ""

    @property
    def epoch(self) -> int | None:
        return None if self.progress is None else self.progress.epoch

    def unusable(self, why: str) -> CheckpointFile:
        """This file, found unusable after all (e.g. its weights would not load)."""
        return CheckpointFile(self.path, None, f"is unreadable ({why})")


FOREIGN = "is not its configuration's"
"""How a ``CheckpointFile.problem`` begins for a file of another configuration or run."""


def inspect(path: str | os.PathLike, identity: Identity | None = None) -> CheckpointFile:
    """Reads what the checkpoint file at ``path`` holds, never raising for a bad file.

    A file whose identity is not ``identity`` is unusable as an unreadable one is.
    A file that records a non-finite val loss holds a diverged model, whose segment
    failed: no good file to go on from (a retry after a fix, ``retry_failed``, would
    otherwise fail again on the recorded loss). Going on from the latest good file
    gives the same failure where nothing was fixed.
    """
    try:
        progress = read_progress(path, identity)
    except ForeignCheckpointError as exc:
        return CheckpointFile(os.fspath(path), None, f"{FOREIGN} ({exc})")
    except UnreadableCheckpointError as exc:
        return CheckpointFile(os.fspath(path), None, f"is unreadable ({exc})")
    for epoch, value in enumerate(progress.val_losses if progress else (), start=1):
        if not math.isfinite(value):
            problem = f"holds a diverged model (val loss {value} at epoch {epoch})"
            return CheckpointFile(os.fspath(path), None, problem)
    return CheckpointFile(os.fspath(path), progress)


@dataclass(frozen=True)
class Resume:
    """Where a segment goes on from, chosen by :func:`plan_resume`.

    Attributes:
        start: the epoch training goes on from; at or past the segment's end
            when the segment is already trained (its losses are in ``history``).
        source: the file to restore, or None to build the model from scratch.
        history: the val losses of epochs ``1 .. start``, as ``source`` records them.
        kept: the epoch the best-epoch file holds, None when it has none readable.
        note: why the segment retrains epochs it should not have had to, or ``''``.
        logs: every epoch's logs of epochs ``1 .. start`` (``val_loss`` alone for
            epochs a file recorded without them).
        stopped: ``source`` holds an epoch at which a callback ended training
            (``EarlyStopping``): the segment is trained already, and ends there.
    """

    start: int
    source: str | None
    history: tuple[float, ...]
    kept: int | None
    note: str = ""
    logs: tuple[Logs, ...] = ()
    stopped: bool = False

    @property
    def from_checkpoint(self) -> bool:
        """Whether ``source`` is the checkpoint itself, not the best-epoch file."""
        return self.source is not None and not self.source.endswith(
            tuple(BEST + s for s in SUFFIXES)
        )


def plan_resume(
    checkpoint: CheckpointFile, best: CheckpointFile, initial_epoch: int, epochs: int
) -> Resume:
    """Which file a segment from ``initial_epoch`` to ``epochs`` resumes from, and why.

    The checkpoint is used when it holds ``initial_epoch`` or later. When it is
    missing (past the first segment), unreadable or behind ``initial_epoch``,
    the segment goes on from the latest good file (the best-epoch file, which
    holds an earlier epoch with its optimizer state) or from scratch, and
    ``note`` says so. Training is seeded per epoch, so the epochs retrained
    reproduce the lost ones. A file already at or past ``epochs`` (an attempt
    that finished but whose row was lost) is used as it is: nothing is trained.
    """
    usable = [(f.path, f.progress) for f in (checkpoint, best) if f.progress is not None]
    # A file at which a callback stopped training ends the segment there: going on would
    # train epochs the stopped attempt never trained (the callback's state is gone).
    finished = [
        (path, p)
        for path, p in usable
        if p.epoch >= epochs or (p.stopped and p.epoch >= initial_epoch)
    ]
    chosen = finished[0] if finished else max(usable, key=lambda f: f[1].epoch, default=None)
    source, progress = chosen if chosen is not None else (None, Progress(0, ()))
    name, held = Path(checkpoint.path).name, checkpoint.epoch
    if checkpoint.problem:
        problem = f"checkpoint {name} {checkpoint.problem}"
    elif held is None and (initial_epoch > 0 or best.progress is not None):
        problem = f"checkpoint {name} is missing"
    elif held is not None and held < initial_epoch:
        problem = f"checkpoint {name} holds epoch {held}, not {initial_epoch}"
    else:
        problem = ""
    note = ""
    if problem:
        if source is None:
            how = "retrained from scratch"
        elif progress.epoch >= epochs:
            how = f"its epochs are recorded in {Path(source).name}"
        else:
            how = f"retrained from epoch {progress.epoch} ({Path(source).name})"
        note = f"{problem}; {how}"
    stopped = progress.stopped and progress.epoch < epochs
    return Resume(
        progress.epoch,
        source,
        progress.val_losses,
        best.epoch,
        note,
        tuple(progress.history),
        stopped,
    )


def best_epoch(val_losses: Sequence[float]) -> int | None:
    """The epoch (from 1) with the lowest finite val loss, the latest of equals; None if none."""
    best = None
    for epoch, value in enumerate(val_losses, start=1):
        if math.isfinite(value) and (best is None or value <= val_losses[best - 1]):
            best = epoch
    return best


@dataclass
class BestEpoch:
    """Keeps a configuration's best epoch on disk as a segment trains; no I/O of its own.

    After every checkpoint save, the best epoch so far is held by the
    checkpoint (it is the epoch saved) or by the best-epoch file. The
    trainable tells this object each epoch's val loss and whether it saves
    now, and asks it what to do:

    - :meth:`ended` returns True when the epoch is a new best that is not
      saved now: the trainable snapshots that epoch's state in memory;
    - before saving the checkpoint, :meth:`keep_from` says whether the best
      epoch must first be written to the best-epoch file, and from where: the
      checkpoint on disk (when it holds that epoch: a hard link, no write) or
      the snapshot.

    A best epoch that is the last saved needs no extra file. The best epoch is
    the one that scores best by ``objective`` (the latest of equals).

    Args:
        val_losses: val losses of epochs 1 .. the epoch training goes on from.
        saved: the epoch the checkpoint on disk holds, None when it is unusable.
        kept: the epoch the best-epoch file holds, None when there is none.
        snapshot: the epoch whose state the trainable holds in memory.
        logs: every epoch's logs so far (``Resume.logs``); by default the val losses.
        objective: what ranks epochs (the lowest val loss by default).
    """

    val_losses: list[float]
    saved: int | None
    kept: int | None
    snapshot: int | None = None  # the epoch whose state the trainable holds in memory
    logs: list[Logs] | None = None
    objective: Objective = VAL_LOSS

    def __post_init__(self) -> None:
        self.logs = epoch_logs(self.val_losses, self.logs)

    @property
    def best(self) -> int | None:
        if self.objective.is_val_loss:
            return best_epoch(self.val_losses)
        assert self.logs is not None
        return self.objective.best_epoch(self.logs)

    def ended(self, val_loss: float, saving: bool, logs: Mapping[str, Any] | None = None) -> bool:
        """Records an epoch's val loss (and logs); True when the trainable must snapshot it."""
        self.val_losses.append(float(val_loss))
        assert self.logs is not None
        self.logs.append(
            {**{str(k): float(v) for k, v in (logs or {}).items()}, "val_loss": float(val_loss)}
        )
        epoch = len(self.val_losses)
        if self.best == epoch:
            self.snapshot = None if saving else epoch
        return self.snapshot == epoch

    def keep_from(self) -> str | None:
        """Before a checkpoint save: ``'checkpoint'``, ``'snapshot'`` or None (nothing to keep)."""
        best = self.best
        if best is None or best == len(self.val_losses) or best == self.kept:
            return None
        if best == self.saved:
            return "checkpoint"
        if best == self.snapshot:
            return "snapshot"
        return None  # its state is gone (pruned, or from before this version): keep nothing

    def kept_best(self) -> None:
        """The best epoch was written to the best-epoch file."""
        self.kept, self.snapshot = self.best, None

    def saved_checkpoint(self) -> None:
        """The checkpoint now holds the last epoch."""
        self.saved = len(self.val_losses)
        if self.snapshot is not None and self.snapshot != self.best:
            self.snapshot = None


def keep_checkpoint_as_best(checkpoint: str, best: str) -> None:
    """Makes the best-epoch file a copy of the checkpoint file before it is replaced.

    A hard link costs no write: the checkpoint is then replaced by a new file,
    and the link keeps the old one. Where links are not supported, it copies.
    """
    temp = f"{best}.tmp{os.getpid()}"
    Path(temp).unlink(missing_ok=True)
    try:
        os.link(checkpoint, temp)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.ENOENT):
            raise
        shutil.copyfile(checkpoint, temp)
    fence.commit(temp, best)


def export_checkpoint(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Writes a ``.keras`` checkpoint to ``destination`` as a plain Keras file.

    The members Keras wrote are copied as they are, without phobbit's progress
    record; the file appears whole or not at all (write to temp, then replace).

    Raises:
        OSError: when ``destination`` cannot be written.
    """
    destination = Path(destination)
    temp = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(source) as original, zipfile.ZipFile(temp, "w") as copy:
            for member in original.infolist():
                if member.filename != PROGRESS_MEMBER:
                    copy.writestr(member, original.read(member))
        os.replace(temp, destination)
    finally:
        temp.unlink(missing_ok=True)


def candidates(stem: str | os.PathLike) -> list[str]:
    """The files a checkpoint stem may name: checkpoint and best-epoch file, each format."""
    return [
        path
        for suffix in SUFFIXES
        for path in (f"{os.fspath(stem)}{suffix}", best_path(stem, suffix))
    ]


def find_scoring(
    stem: str | os.PathLike,
    value: float,
    objective: Objective = VAL_LOSS,
    val_loss: float | None = None,
    identity: Identity | None = None,
) -> Path | None:
    """The file of checkpoint stem ``stem`` that holds the epoch that scored ``value``.

    It reads what each candidate (the checkpoint and the best-epoch file, in
    either format) records and returns the one whose epoch's ``objective`` is
    exactly ``value`` (and whose val loss is ``val_loss``, when given, and whose
    identity is ``identity``, when given); None when no file holds that epoch
    (its best-epoch file was pruned, or the checkpoint is gone or another's).
    """
    if value is None or not math.isfinite(value):
        return None
    for path in candidates(stem):
        found = inspect(path, identity)
        if found.progress is None or found.progress.value(objective) != value:
            continue
        if val_loss is None or found.progress.val_loss == val_loss:
            return Path(path)
    return None


def unusable(stem: str | os.PathLike, identity: Identity | None = None) -> list[CheckpointFile]:
    """The files of checkpoint stem ``stem`` that exist but cannot be used: unreadable,
    or not ``identity``'s; what a reader says when :func:`find_scoring` names none."""
    found = (inspect(path, identity) for path in candidates(stem))
    return [f for f in found if f.problem]


def prune_best(
    models: str | os.PathLike, keep: Mapping[str, float], objective: Objective = VAL_LOSS
) -> list[Path]:
    """Deletes the best-epoch files no configuration of ``keep`` scored with.

    Args:
        models: the checkpoint folder.
        keep: checkpoint stem name (``0-2-3``) -> the objective value it is listed
            with, for the configurations whose best epoch is worth keeping.
        objective: the run's objective.

    Returns:
        The files deleted: those of other configurations, and stale ones (a later
        epoch of their configuration scored better, or they are unreadable).
    """
    removed = []
    for suffix in SUFFIXES:
        for path in sorted(Path(models).glob(f"*{BEST}{suffix}")):
            if path.name.startswith("."):
                continue
            stem = path.name[: -len(BEST + suffix)]
            found = inspect(path)
            wanted = keep.get(stem)
            if (
                wanted is None
                or found.progress is None
                or found.progress.value(objective) != wanted
            ):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


Config = tuple[int, int, int]  # (iteration, s, id)


class BestConfigurations:
    """The ``keep`` best configurations by objective so far, kept up to date as rows come in.

    It tells the driver which configurations fall out of the best ``keep``, so
    their best-epoch files can go while the run goes on: disk then holds at most
    ``keep`` best-epoch files, plus those of configurations still training.
    Ranked as the results table ranks: Val Loss, then iteration, s (highest
    first), ID. A configuration's Val Loss only falls while it trains, so one
    that falls out of the best comes back only with a better epoch, whose file
    its worker writes anew; the exception is a configuration among the best
    that fails later (its latest row has no Val Loss): the next best moves up,
    and if its file was deleted, ``phobbit best`` names no checkpoint for it.

    Args:
        keep: how many configurations keep their best-epoch file.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._ranks: list[tuple[float, int, int, int]] = []  # every rank key, best first
        self._rank: dict[Config, tuple[float, int, int, int]] = {}

    def kept(self) -> set[Config]:
        """The configurations among the best ``keep`` now."""
        return {(i, -negative_run, c) for _, i, negative_run, c in self._ranks[: self.keep]}

    def offer(self, config: Config, val_loss: float | None) -> list[Config]:
        """Records ``config``'s score (``Objective.row_score``: lower is better; its Val
        Loss by default; None: it failed) from its latest row.

        Returns:
            The configurations not among the best ``keep`` after this row that
            were before it, and ``config`` itself when it is not.
        """
        before = self.kept()
        old = self._rank.pop(config, None)
        if old is not None:
            self._ranks.pop(bisect.bisect_left(self._ranks, old))
        if val_loss is not None and math.isfinite(val_loss):
            iteration, s, config_id = config
            rank = (val_loss, iteration, -s, config_id)
            bisect.insort(self._ranks, rank)
            self._rank[config] = rank
        after = self.kept()
        dropped = before - after
        if config not in after:
            dropped.add(config)
        return sorted(dropped)
