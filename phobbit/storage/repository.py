"""The repository folder: ``results.csv``, ``run.json``, checkpoints under ``models/``.

``results.csv`` is the source of truth. Every finished segment appends one row
under a ``filelock`` lock, written with a single ``write`` to a file opened for
appending, and each row ends with a CRC32 of the rest of it: a row torn by a
kill in the middle of a write fails its check and is ignored, never parsed as
data. Hparams are stored as JSON and parsed as JSON, never evaluated.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import uuid
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from phobbit.core.objective import VAL_LOSS, Objective
from phobbit.core.provenance import Provenance
from phobbit.core.records import EpochRow, RunSettings, SegmentKey, SegmentResult, config_name
from phobbit.core.space import MAX_NESTING
from phobbit.errors import FatalError, InputError, RepositoryError, StaleDriverError, StorageError
from phobbit.storage import checkpoints, files
from phobbit.storage.framing import bounded_lines, is_header, open_framed, read_framed
from phobbit.storage.framing import float_text as _float_text
from phobbit.storage.framing import float_value as _float_value
from phobbit.storage.framing import framed as _framed
from phobbit.storage.framing import nesting as _nesting
from phobbit.storage.framing import unframed as _unframed
from phobbit.storage.index import ResultsIndex, read_index

# The lease's names that the folder's readers and writers use, importable from here.
from phobbit.storage.lease import (  # noqa: F401 - re-exported
    DRIVER_FILE,
    DRIVER_FRESH_S,
    DRIVER_LOCK,
    DRIVER_LOCK_WAIT_S,
    HEARTBEAT_S,
    DriverLease,
    process_start,
    this_host,
)
from phobbit.storage.sifting import possible

COLUMNS = (
    "iteration",
    "run",
    "id",
    "rung",
    "start_epoch",
    "epochs",
    "val_loss",
    "last_val_loss",
    "status",
    "error",
    "hparams",
    "gpu",
    "pid",
    "host",
    "start",
    "end",
    "note",  # added late: rows written before it have fewer fields, and still read
    "objective",  # the objective's value at the best epoch, added last (as note)
)
HEADER = ",".join(COLUMNS) + ",crc\n"
# A results.csv begun before "note" or before "objective"; its rows (and the longer rows
# a newer phobbit appends to it) still read.
LEGACY_HEADER = ",".join(COLUMNS[:-2]) + ",crc\n"  # before "note"
NOTE_HEADER = ",".join(COLUMNS[:-1]) + ",crc\n"  # before "objective"
# Fields a row may have: today's, and those of the versions before "note" and "objective".
ROW_WIDTHS = (len(COLUMNS), len(COLUMNS) - 1, len(COLUMNS) - 2)
EPOCH_COLUMNS = ("iteration", "run", "id", "rung", "epoch", "metrics")
EPOCH_HEADER = ",".join(EPOCH_COLUMNS) + ",crc\n"
EPOCHS = "epochs.csv"
DECISIONS = "decisions.csv"  # ASHA's and TPE's decisions (phobbit.storage.decisions)
TIME_USED = "time_used.csv"  # the training time each invocation used (storage.time_used)
RESULTS = "results.csv"
RUN_FILE = "run.json"
RESULTS_LOCK = ".results.lock"
TENSORBOARD_LOCK = ".tensorboard.lock"  # phobbit.reporting.tensorboard's
WORKERS_LOG = "workers.log"  # the workers' stderr (``ParallelHyperband``)
MODELS = "models"
LOCK_TIMEOUT_S = 60.0
UNREADABLE_RESULTS = "move it away or use another repository folder"


def encode_row(result: SegmentResult) -> str:
    """One CSV line of ``result``, newline included, ending with its CRC32."""
    values = asdict(result)
    values["run"] = values.pop("s")  # the column keeps Hobbit's name
    values["val_loss"] = _float_text(result.val_loss)
    values["last_val_loss"] = _float_text(result.last_val_loss)
    values["hparams"] = json.dumps(result.hparams, sort_keys=True)
    values["status"] = result.status.value
    values["error"] = " ".join(str(result.error).split())  # one line, always
    values["note"] = " ".join(str(result.note).split())
    values["objective"] = _float_text(result.objective)
    return _framed([values[c] for c in COLUMNS])


def encode_epoch(row: EpochRow) -> str:
    """One line of ``epochs.csv``: the epoch's key, its metrics as JSON, and its CRC32."""
    metrics = json.dumps({str(k): float(v) for k, v in row.metrics.items()})
    return _framed([row.iteration, row.s, row.id, row.rung, row.epoch, metrics])


def decode_epoch(line: str | bytes) -> EpochRow | None:
    """The epoch a line of ``epochs.csv`` holds, or None for a torn, corrupt or header line."""
    fields = _unframed(line)
    if fields is None or len(fields) != len(EPOCH_COLUMNS):
        return None
    if _nesting(fields[-1]) > 1:
        return None  # metrics are one flat object; anything deeper was not written by phobbit
    try:
        metrics = json.loads(fields[-1])
        if not isinstance(metrics, dict):
            return None
        iteration, s, config_id, rung, epoch = (int(v) for v in fields[:-1])
        return EpochRow(
            iteration, s, config_id, rung, epoch, {str(k): float(v) for k, v in metrics.items()}
        )
    except (ValueError, TypeError):
        return None


def decode_row(line: str | bytes) -> SegmentResult | None:
    """The result a line holds, or None for a torn, corrupt, hostile or header line.

    The CRC is checked on the raw bytes before anything is decoded, so a row
    torn in the middle of a multi-byte character is skipped like any other. A
    row whose CRC holds but whose hparams nest deeper than any search space can
    (``space.MAX_NESTING``) was not written by phobbit: it is skipped like a
    corrupt one, before its JSON is parsed, and its segment is trained again.
    """
    fields = _unframed(line)
    if fields is None or len(fields) not in ROW_WIDTHS:  # older rows lack note, objective
        return None
    raw = dict(zip(COLUMNS, fields))
    if _nesting(raw["hparams"]) > 1 + MAX_NESTING:
        return None  # not written by phobbit; parsing it could exhaust the stack
    try:
        hparams = json.loads(raw["hparams"])
        if not isinstance(hparams, dict):
            return None
        return SegmentResult(
            iteration=int(raw["iteration"]),
            s=int(raw["run"]),  # the column keeps Hobbit's name
            id=int(raw["id"]),
            rung=int(raw["rung"]),
            start_epoch=int(raw["start_epoch"]),
            epochs=int(raw["epochs"]),
            val_loss=_float_value(raw["val_loss"]),
            last_val_loss=_float_value(raw["last_val_loss"]),
            status=raw["status"],
            error=raw["error"],
            hparams=hparams,
            gpu=raw["gpu"],
            pid=int(raw["pid"]),
            host=raw["host"],
            start=float(raw["start"]),
            end=float(raw["end"]),
            note=raw.get("note", ""),
            # None in rows before objectives: they ranked by the lowest val loss
            # (``Objective.row_score`` falls back to it).
            objective=_float_value(raw.get("objective", "")),
        )
    except (ValueError, TypeError):
        return None


class Repository:
    """A run's folder; every method is safe to call from many processes at once.

    It owns the driver's lease (``lease``, a ``phobbit.storage.lease.DriverLease``
    that writes under this repository's results lock); ``driver_lock``, ``holds``,
    ``fenced`` and ``driver_record`` are the lease's.

    Args:
        path: the folder; created (with parents) by :meth:`create`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.results_path = self.path / RESULTS
        self.epochs_path = self.path / EPOCHS
        self.run_path = self.path / RUN_FILE
        self.models = self.path / MODELS
        self._lock = FileLock(str(self.path / RESULTS_LOCK), timeout=LOCK_TIMEOUT_S)
        self.lease = DriverLease(self.path, self._locked)
        # What rows the run in this folder can have written, set from run.json by sift()
        # (the tuner, the CLI) or by the read-only view; None reads every intact row.
        self.provenance: Provenance | None = None
        self._warned: dict[str, int] = {}  # skipped rows logged, by file (sifting.possible)

    def __repr__(self) -> str:
        return f"Repository({str(self.path)!r})"

    # -- the driver's lease -----------------------------------------------------------

    def driver_lock(self) -> AbstractContextManager[str]:
        """The driver lock, yielding this driver's fencing token (``DriverLease.driver_lock``).

        Raises:
            RepositoryError: naming the driver (pid, host) that holds the folder now.
        """
        return self.lease.driver_lock()

    def driver_record(self) -> dict[str, Any] | None:
        """What ``driver.json`` says of the last driver (pid, host, started, token), or None."""
        return self.lease.driver_record()

    def holds(self, token: str) -> bool:
        """Whether ``token`` is still the fencing token of this repository's driver."""
        return self.lease.holds(token)

    def fenced(self, token: str) -> AbstractContextManager[None]:
        """Holds the results lock while ``token`` is this repository's driver's token.

        Raises:
            StaleDriverError: when another driver has taken over.
            StorageError: when the lock cannot be had within ``LOCK_TIMEOUT_S``.
        """
        return self.lease.fenced(token)

    # -- run.json -----------------------------------------------------------------

    def read_settings(self) -> RunSettings | None:
        """The settings in ``run.json``, or None for a folder that holds no run yet.

        Raises:
            RepositoryError: naming ``run.json`` and what is wrong with it: not
                JSON, a setting missing, unknown or out of range, a search space
                that does not parse or does not match its fingerprint.
        """
        try:
            raw = files.read_whole(self.run_path)
            if raw is None:
                return None
            text = raw.decode()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "it is not text"
            raise RepositoryError(f"cannot read {self.run_path}: {why}") from None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested absurdly deep
            raise RepositoryError(
                f"{self.run_path} is not valid JSON; restore it or use another repository"
            ) from None
        return RunSettings.from_dict(data, self.run_path)

    def sift(self) -> RunSettings | None:
        """Has every reader skip the rows the run in ``run.json`` cannot have written
        (``provenance``); returns those settings, None for a folder with no run yet.

        The bounds are ``run.json``'s, whose iterations are the most any invocation
        asked for: a resume with fewer still reads the others' rows.
        """
        settings = self.read_settings()
        if settings is not None:
            self.provenance = Provenance.of(settings)
        return settings

    def check_settings(self, settings: RunSettings) -> bool:
        """Checks that this folder is new or holds a run with the same settings.

        Returns:
            True when the folder already holds this run (a resume).

        Raises:
            RepositoryError: when the folder holds another run or files phobbit
                cannot read, or whose files phobbit refuses to open
                (:meth:`check_files`); the message says what is wrong and what to
                do. Nothing is written.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RepositoryError(f"repository {self.path} is a file, not a folder")
        self.check_files()
        existing = self.read_settings()
        if existing is None:
            if self.results_path.exists():
                raise RepositoryError(
                    f"{self.path} has a results.csv but no run.json; "
                    "it is not a phobbit repository, use another folder"
                )
            return False
        if existing.gpus_per_trial != settings.gpus_per_trial:
            # Its own line: the remedy is to ask again for what was recorded.
            raise RepositoryError(
                f"repository {self.path} was tuned with gpus_per_trial "
                f"{existing.gpus_per_trial} (run.json) and this run asks for "
                f"{settings.gpus_per_trial}: a model trained on that many GPUs continues "
                f"only on as many; resume with gpus_per_trial {existing.gpus_per_trial} "
                "(--gpus-per-trial), or use another repository folder"
            )
        differ = _differences(existing, settings)
        if differ:
            raise RepositoryError(
                f"repository {self.path} holds another run ({'; '.join(differ)}); "
                "use another repository folder, or delete this one to start fresh"
            )
        self.check_results()
        return True

    def check_files(self) -> None:
        """Refuses, before a run writes anything, every file of this folder that phobbit
        would refuse to open half-way (``phobbit.storage.files``).

        Raises:
            RepositoryError: for a link out of the folder, a file that is no regular
                file (a FIFO, a device, a folder), a lock file that is a link, or a
                ``models`` that is no folder.
        """
        for name in (RUN_FILE, RESULTS, EPOCHS, DECISIONS, DRIVER_FILE, WORKERS_LOG):
            files.check(self.path / name, self.path)
        for name in (RESULTS_LOCK, DRIVER_LOCK, TENSORBOARD_LOCK):
            files.check_lock(self.path / name)
        if os.path.lexists(self.models) and not self.models.is_dir():
            raise RepositoryError(
                f"{self.models} is not a folder; phobbit keeps the checkpoints there: move "
                "it away, or use another repository folder"
            )

    def check_results(self) -> None:
        """Raises ``RepositoryError`` unless ``results.csv`` is absent or a readable results file.

        It reads the first line only, so it is cheap enough to call before every run.
        """
        handle = open_framed(self.results_path, remedy=UNREADABLE_RESULTS)
        if handle is None:
            return
        with handle:
            first = handle.readline()
        _check_header(self.results_path, first)

    def create(self, settings: RunSettings) -> RunSettings:
        """Makes the folder and writes ``run.json`` (write to temp, then replace).

        A run resumed with more ``iterations`` rewrites it; one resumed with fewer
        keeps the larger count, so ``status`` still counts every iteration begun.
        A new run gets its run id here, once (``RunSettings.run_id``); a resumed
        one keeps its own, and one begun by a phobbit that wrote none stays without.

        Returns:
            The settings as ``run.json`` records them, run id included: what the
            run's segments carry.
        """
        self.models.mkdir(parents=True, exist_ok=True)
        existing = self.read_settings()
        if existing is None:
            settings = dataclasses.replace(settings, run_id=settings.run_id or uuid.uuid4().hex)
        else:
            settings = dataclasses.replace(settings, run_id=existing.run_id)
        if existing is not None and existing.iterations > settings.iterations:
            settings = dataclasses.replace(settings, iterations=existing.iterations)
        if existing != settings:
            text = json.dumps(settings.to_dict(), indent=2, sort_keys=True) + "\n"
            files.replace(self.run_path, text.encode())
        return settings

    def fresh(self) -> list[Path] | None:
        """The paths a run would make here, when the folder holds no run yet; else None.

        ``ParallelHyperband.run`` takes this before it makes anything, and hands it
        to :meth:`undone_on_bad_input`.
        """
        if self.run_path.exists():
            return None
        candidates = [
            self.run_path,
            self.path / DRIVER_FILE,
            self.path / DRIVER_LOCK,
            self.path / RESULTS_LOCK,
            self.path / DECISIONS,  # decided before a worker saw the bad input
            self.path / TIME_USED,  # recorded as the run stopped on it
            self.epochs_path,
            self.models,
        ]
        made = [p for p in candidates if not p.exists()]
        return made if self.path.exists() else [*made, self.path]

    @contextmanager
    def undone_on_bad_input(self, made: list[Path] | None) -> Iterator[None]:
        """Removes the paths ``made`` when bad input stops this run before it wrote a row.

        Bad input that only a worker can see (what a dataset function returns)
        stops a run after it made ``run.json``, ``driver.json`` and ``models/``;
        a new run leaves the folder as it found it. Only what this run made goes,
        and only while no row exists: a resumed run (``made`` is None) and one
        that wrote rows keep everything. A full disk is no bad input: it keeps all.
        """
        try:
            yield
        except RepositoryError:
            raise
        except InputError:
            if made is not None and not self.results_path.exists():
                for path in made:
                    if path.is_dir() and path != self.path:
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        with suppress(FileNotFoundError, IsADirectoryError):
                            path.unlink()
                if self.path in made:
                    with suppress(OSError):  # something else appeared in it: keep it
                        self.path.rmdir()
            raise

    @contextmanager
    def _locked(self, error: type[FatalError]) -> Iterator[None]:
        """The results lock; ``error`` when another process holds it for ``LOCK_TIMEOUT_S``,
        or when its file is a link or no plain file (``files.check_lock``)."""
        try:
            files.check_lock(self.path / RESULTS_LOCK)
        except RepositoryError as exc:
            raise error(str(exc)) from None
        try:
            self._lock.acquire()
        except Timeout:
            lock = self.path / ".results.lock"
            raise error(
                f"could not lock {lock} within {LOCK_TIMEOUT_S:.0f} s: another process holds "
                "it (a phobbit worker that is stopped, e.g. by SIGSTOP or Ctrl-Z, or hung; or "
                f"a lock of another host on a shared file system); find it with fuser -v {lock}, "
                "end or continue it, then run the same command again"
            ) from None
        try:
            yield
        finally:
            self._lock.release()

    # -- results.csv ----------------------------------------------------------------

    def append(
        self, result: SegmentResult, fence: str | None = None, epochs: Sequence[EpochRow] = ()
    ) -> None:
        """Appends one row under the lock, with a single write, after the rows of its epochs.

        Args:
            result: the row.
            fence: the fencing token of the driver the row is written for; the
                row is written only while that driver holds the repository.
                None writes unfenced (tests, tools).
            epochs: the epochs the segment trained, appended to ``epochs.csv``
                (one write) under the same lock and fence, just before the row.

        Raises:
            StaleDriverError: when ``fence`` is no longer the repository's token.
            StorageError: when the row cannot be written in full (a full disk,
                a file system gone read-only); the run must stop, not lose the row.
        """
        writes = [(self.results_path, encode_row(result).encode(), HEADER)]
        if epochs:
            # Before the row: an epoch without its row (a kill between the two writes) is
            # trained and written again, and readers keep the last; a row never lacks them.
            lines = "".join(encode_epoch(e) for e in epochs).encode()
            writes.insert(0, (self.epochs_path, lines, EPOCH_HEADER))
        self.append_framed(writes, fence)

    def append_framed(
        self, writes: Sequence[tuple[Path, bytes, str]], fence: str | None = None
    ) -> None:
        """Appends CRC-framed lines to files of this repository, under the results lock.

        Each ``(path, lines, header)`` is one write, in order; a new file gets its
        header first, and a torn line a kill left stays on its own line. With
        ``fence``, nothing is written unless that driver still holds the repository.

        Raises:
            StaleDriverError: when ``fence`` is no longer the repository's token.
            StorageError: when a write fails or is short (a full disk, a read-only
                file system): the run must stop, not lose the row.
        """
        path = writes[0][0]
        try:
            with self._locked(StorageError):
                if fence is not None and self.lease.token() != fence:
                    raise StaleDriverError(
                        f"repository {self.path} has been taken over by another driver"
                    )
                if any(target == self.results_path for target, _, _ in writes):
                    _migrate_header(self.results_path, self.path)
                for path, data, header in writes:
                    written, data = _append_framed(path, data, header)
                    if written != len(data):
                        # The torn tail fails its CRC and is skipped; the segment is
                        # trained again.
                        raise StorageError(
                            f"wrote only {written} of {len(data)} bytes to {path}; "
                            "is the disk full? Free some space, then run again to resume"
                        )
        except RepositoryError as exc:
            # A file made a link or a FIFO after the run checked them all: the run
            # stops (its rows are safe) and resumes once the folder is fixed.
            raise StorageError(f"{exc}; then run the same command again to resume") from None
        except OSError as exc:
            hint = (
                "free some disk space"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else ("fix the repository folder")
            )
            raise StorageError(
                f"cannot append to {path}: {exc.strerror}; "
                f"{hint}, then run the same command again to resume"
            ) from None

    def iter_epochs(self) -> Iterator[EpochRow]:
        """Every intact row of ``epochs.csv``, in the order written (torn lines skipped).

        A segment trained again (after a kill, or a retry) writes its epochs
        again; readers keep the last row of each epoch (``EpochRow.key``).

        Rows the run cannot have written (``provenance``) are skipped with a warning.

        Raises:
            RepositoryError: when ``epochs.csv`` cannot be read.
        """
        rows = read_framed(self.epochs_path, decode_epoch)
        if self.provenance is None:
            return rows
        return possible(rows, self.provenance.epoch, self.epochs_path, self._warned)

    def epochs(self) -> dict[tuple[int, int, int, int], EpochRow]:
        """The last intact row of every epoch, by (iteration, s, id, epoch)."""
        return {row.key: row for row in self.iter_epochs()}

    def epochs_of(
        self, configs: Collection[tuple[int, int, int]]
    ) -> dict[tuple[int, int, int, int], EpochRow]:
        """``epochs`` of the configurations ``configs`` ((iteration, s, id)) alone.

        A line of another configuration is passed over by its first three fields,
        before its CRC and JSON are decoded: ``phobbit best`` reads the epochs of the
        few configurations it shows from an ``epochs.csv`` of millions of rows.

        Raises:
            RepositoryError: when ``epochs.csv`` cannot be read.
        """
        wanted = {f"{i},{s},{c},".encode() for i, s, c in configs}

        def decode(line: bytes) -> EpochRow | None:
            second = line.find(b",", line.find(b",") + 1)
            third = line.find(b",", second + 1)
            if third < 0 or line[: third + 1] not in wanted:
                return None
            return decode_epoch(line)

        rows: Iterable[EpochRow] = read_framed(self.epochs_path, decode)
        if self.provenance is not None:
            rows = possible(rows, self.provenance.epoch, self.epochs_path, self._warned)
        return {row.key: row for row in rows}

    def iter_results(self) -> Iterator[SegmentResult]:
        """Every intact row, in the order written; torn or corrupt lines are skipped, and
        so is a failed row that a later row of the same segment supersedes.

        A failed segment is trained again only when asked (``run(retry_failed=True)``);
        its failed row stays in the file (appends only) and the new row is its result.

        Rows the run cannot have written (``provenance``: a key that fits no bracket,
        epochs no rung trains, hparams outside the space) are skipped with a warning.

        Raises:
            RepositoryError: when ``results.csv`` cannot be read or is not a results file.
        """
        rows: Iterable[SegmentResult] = read_framed(
            self.results_path,
            decode_row,
            lambda first: _check_header(self.results_path, first),
            remedy=UNREADABLE_RESULTS,
        )
        if self.provenance is not None:
            rows = possible(rows, self.provenance.result, self.results_path, self._warned)
        kept = list(rows)
        last = {row.key: index for index, row in enumerate(kept)}
        yield from (row for index, row in enumerate(kept) if row.ok or last[row.key] == index)

    def index(self, save: bool = True) -> ResultsIndex:
        """The column index of ``results.csv`` (``phobbit.storage.index``): the rows
        ``iter_results`` reads, as numbers, kept up to date beside the file.

        Args:
            save: write the index back to the folder when it grew (best effort).

        Raises:
            RepositoryError: when ``results.csv`` cannot be read or is not a results file.
        """
        return read_index(
            self.results_path,
            self.provenance,
            lambda first: _check_header(self.results_path, first),
            self._warned,
            decode_row,
            UNREADABLE_RESULTS,
            save,
        )

    def results(self) -> dict[SegmentKey, SegmentResult]:
        """The first intact final row of every segment, by (iteration, s, id, rung).

        A failed row that is not final (see ``SegmentResult.final``) is skipped,
        so its segment is trained again.
        """
        found: dict[SegmentKey, SegmentResult] = {}
        for result in self.iter_results():
            if result.final:
                found.setdefault(result.key, result)
        return found

    def checkpoint(self, iteration: int, s: int, config_id: int) -> Path:
        """Where the configuration's checkpoint lives (the trainable picks the suffix)."""
        return self.models / config_name(iteration, s, config_id)

    def checkpoint_stem(self, iteration: int, s: int, config_id: int) -> str:
        """:meth:`checkpoint` as the path stem a ``Segment`` carries to its trainable."""
        return str(self.checkpoint(iteration, s, config_id))

    def scoring_checkpoint(
        self,
        iteration: int,
        s: int,
        config_id: int,
        val_loss: float,
        objective: Objective = VAL_LOSS,
        value: float | None = None,
        hparams: dict[str, Any] | None = None,
    ) -> Path | None:
        """The file that holds the epoch of a configuration that scored ``val_loss``.

        Loading it gives a model that evaluates to ``val_loss`` on the validation
        data (and to ``value`` of ``objective``, when the run has another
        objective). None when no file holds that epoch any more (see
        :meth:`prune_best_checkpoints`); it never names another epoch's file, nor
        one another configuration or run wrote (checked against ``hparams`` too,
        when given: see :meth:`checkpoint_identity`).
        """
        stem = self.checkpoint(iteration, s, config_id)
        identity = self.checkpoint_identity(iteration, s, config_id, hparams)
        if objective.is_val_loss or value is None:
            return checkpoints.find_scoring(stem, val_loss, identity=identity)
        return checkpoints.find_scoring(stem, value, objective, val_loss, identity)

    def checkpoint_identity(
        self, iteration: int, s: int, config_id: int, hparams: dict[str, Any] | None = None
    ) -> checkpoints.Identity | None:
        """Whose the files of a configuration's checkpoint must be (``checkpoints.Identity``).

        Without ``hparams``, any hyperparameters pass (the configuration and the run
        are still checked). None (nothing checked) for a folder without a run.
        """
        settings = self.read_settings()
        if settings is None:
            return None
        return checkpoints.Identity(
            (iteration, s, config_id),
            None if hparams is None else checkpoints.hparams_fingerprint(hparams),
            settings.run_id,
        )

    def drop_best_checkpoint(
        self, iteration: int, s: int, config_id: int, fence: str | None = None
    ) -> None:
        """Deletes a configuration's best-epoch file, if it has one; the driver's call.

        Under ``fence`` (this driver's token), so that a driver that was replaced
        deletes nothing of the run that took over.

        Raises:
            StaleDriverError: when ``fence`` is no longer the repository's token.
        """
        stem = self.checkpoint(iteration, s, config_id)
        paths = [Path(checkpoints.best_path(stem, suffix)) for suffix in checkpoints.SUFFIXES]
        present = [path for path in paths if path.exists()]
        if not present:
            return
        with self.fenced(fence) if fence is not None else nullcontext():
            for path in present:
                path.unlink(missing_ok=True)

    def prune_best_checkpoints(self, keep: int) -> list[Path]:
        """Deletes the best-epoch files of all but the ``keep`` best configurations.

        A configuration's best-epoch file exists while its best epoch is not its
        checkpoint's; once a run has ended, only the best ``keep`` by Val Loss need
        theirs (``scoring_checkpoint`` names none for the others). Stale ones
        (their configuration scored better later) go too.

        Returns:
            The files deleted.
        """
        latest: dict[tuple[int, int, int], SegmentResult] = {}
        for row in self.results().values():
            config = (row.iteration, row.s, row.id)
            if config not in latest or row.rung > latest[config].rung:
                latest[config] = row
        settings = self.read_settings()
        objective = settings.goal if settings is not None else VAL_LOSS
        # Ranked as the results table ranks them: objective, then iteration, s, ID.
        ranked = sorted(
            (score, r.iteration, -r.s, r.id, r)
            for r in latest.values()
            if (score := objective.row_score(r)) is not None
        )
        wanted = {
            config_name(i, -s, c): (r.objective if r.objective is not None else r.val_loss)
            for _, i, s, c, r in ranked[:keep]
        }
        return checkpoints.prune_best(self.models, wanted, objective)


def _append_framed(path: Path, data: bytes, header: str) -> tuple[int, bytes]:
    """Appends CRC-framed lines to ``path`` with one write; returns (bytes written, bytes).

    A new file gets ``header`` first, and a header cut short (a full disk) is
    completed; a torn line left by a kill stays on its own line. Called under the
    results lock.
    """
    fd = files.open_append(path)  # never through a link out, never a FIFO
    try:
        size = os.fstat(fd).st_size
        whole = header.encode()
        if size < len(whole) and whole.startswith(os.pread(fd, size, 0)):
            data = whole[size:] + data  # a new file, or a header a full disk cut short
        elif os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a torn row before us stays on its own line
        return os.write(fd, data), data
    finally:
        os.close(fd)


def _migrate_header(path: Path, root: Path) -> None:
    """Gives a ``results.csv`` begun by an older phobbit today's header; under the results lock.

    A file begun before the ``note`` or ``objective`` column keeps its shorter header
    while a newer phobbit appends longer rows, which CSV readers such as
    ``pandas.read_csv`` refuse. Its older rows get the missing columns empty (what they
    decode to anyway: no note, no objective), each with its CRC made anew; every other
    line, torn ones too, stays as it was. The file is replaced whole (written to a
    temporary file, then ``os.replace``), so a reader sees the old file or the new one,
    and only once: the next append finds today's header. A file that cannot be read or
    written is left as it is: its rows still read.
    """
    try:
        handle = files.open_read(path, root)
    except (OSError, RepositoryError):
        return  # the append that follows says what is wrong with it
    if handle is None:
        return
    with handle:
        first = handle.readline(files.MAX_LINE_BYTES)
        if first == HEADER.encode() or first not in (
            LEGACY_HEADER.encode(),
            NOTE_HEADER.encode(),
        ):
            return
        lines = [HEADER.encode()]
        for line in bounded_lines(handle):
            fields = _unframed(line)
            if fields is not None and len(fields) in ROW_WIDTHS and len(fields) < len(COLUMNS):
                fields += [""] * (len(COLUMNS) - len(fields))
                line = _framed(fields).encode()
            lines.append(line)
    with suppress(OSError, RepositoryError):
        files.replace(path, b"".join(lines), root)


def _check_header(path: Path, first: bytes) -> None:
    """Raises ``RepositoryError`` unless ``first`` is the results header, whole or torn."""
    # The older headers: begun by a version without the note or objective column.
    if is_header(first, HEADER, LEGACY_HEADER, NOTE_HEADER):
        return
    raise RepositoryError(
        f"{path} is not a phobbit results file (its first line is not the results header); "
        "move it away or use another repository folder"
    )


def _differences(there: RunSettings, here: RunSettings) -> list[str]:
    """The settings that differ between two runs, said briefly; the space by its names."""
    # ``iterations`` is a budget, not a setting: Hyperband's iteration i draws its own
    # configurations from (seed, i, s, id) whatever the count, so a resume may add
    # iterations (or run fewer); for ASHA it only sets the default epoch budget.
    keys = ("R", "eta", "seed", "algorithm", "sampler", "objective", "direction")
    differ = [
        f"{key}={getattr(there, key)!r} there, {getattr(here, key)!r} here"
        for key in keys
        if getattr(there, key) != getattr(here, key)
    ]
    # By fingerprint, not ==: choice options 1 and 1.0 compare equal but sample apart.
    if there.space_fingerprint != here.space_fingerprint:
        old = {hp.name: _json(hp.to_dict()) for hp in there.space.hparams}
        new = {hp.name: _json(hp.to_dict()) for hp in here.space.hparams}
        changed = sorted(n for n in old.keys() & new.keys() if old[n] != new[n])
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("added", sorted(new.keys() - old.keys())),
                ("removed", sorted(old.keys() - new.keys())),
                ("changed", changed),
            )
            if names
        ]
        differ.append(f"search space differs ({'; '.join(parts) or 'order of hyperparameters'})")
    return differ


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
