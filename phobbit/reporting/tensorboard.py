"""TensorBoard logs of a run, written by the driver from the repository's records.

``tensorboard --logdir REPO/tensorboard`` then shows, per configuration, its
epoch scalars (every metric of the per-epoch curves when the repository has
them, else the validation loss at the end of each segment) and the HParams
dashboard (table, parallel coordinates) with the objective per configuration.

The logs are *derived* data: they are written from ``results.csv`` (and the
curves) alone, never by workers, so a retried or resumed segment cannot log
twice. Writing is idempotent: each configuration's folder
``tensorboard/<iteration>-<run>-<id>/`` is rewritten only when what it would
hold changed (a fingerprint per configuration is kept in
``tensorboard/.phobbit.json``), into a temporary folder that then replaces the
old one. Deleting ``tensorboard/`` and writing again gives the same logs.

TensorBoard is an optional extra (``pip install "phobbit[tensorboard]"``); the
writer needs the ``tensorboard`` package only, not TensorFlow, so the driver
still never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phobbit.core.records import SegmentResult, config_name
from phobbit.core.space import Hyperparameter
from phobbit.errors import InputError, RepositoryError

if TYPE_CHECKING:
    import pandas as pd

FOLDER = "tensorboard"
MANIFEST = ".phobbit.json"
INSTALL_HINT = 'TensorBoard logs are off: pip install "phobbit[tensorboard]" to write them'
CURVE_KEYS = ("Iteration", "Run", "ID", "Rung", "Epoch")
Config = tuple[int, int, int]  # (iteration, run, id)
log = logging.getLogger(__name__)


def available() -> bool:
    """Whether the ``tensorboard`` package is installed (the writer needs nothing else)."""
    return importlib.util.find_spec("tensorboard") is not None


def require() -> None:
    """Raises ``InputError`` with how to install TensorBoard when it is missing."""
    if not available():
        raise InputError(
            'tensorboard is not installed; pip install "phobbit[tensorboard]" '
            "(or pip install tensorboard)"
        )


@dataclass(frozen=True)
class Session:
    """What one configuration's TensorBoard folder holds: plain data, fingerprinted.

    Attributes:
        name: the folder, ``<iteration>-<run>-<id>`` (the checkpoint's stem).
        hparams: the configuration.
        ok: False once a segment of it failed.
        start, end: its first segment's start and its last one's end (epoch seconds).
        scalars: ``(tag, epoch, value, wall_time)`` in the order they are written.
        best: the objective's best value (what ranks it), None when it failed.
    """

    name: str
    hparams: dict[str, Any]
    ok: bool
    start: float
    end: float
    scalars: tuple[tuple[str, int, float, float], ...]
    best: float | None

    def fingerprint(self) -> str:
        data = json.dumps(
            [self.name, self.hparams, self.ok, self.start, self.end, self.scalars, self.best],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(data.encode()).hexdigest()


def best_tag(objective: str) -> str:
    """The HParams metric of a configuration's best objective: ``best_val_loss``."""
    return f"best_{objective}"


def sessions(
    rows: Iterable[SegmentResult],
    curves: pd.DataFrame | None = None,
    objective: str = "val_loss",
    mode: str = "min",
) -> list[Session]:
    """One ``Session`` per configuration of ``rows`` (``results.csv``'s segments).

    Args:
        rows: the repository's segment rows.
        curves: the per-epoch curves (columns ``Iteration, Run, ID, Rung, Epoch`` and
            one per metric), or None: then the validation loss at each segment's end.
        objective: the metric that ranks configurations (a curves column).
        mode: ``"min"`` or ``"max"``: whether lower or higher objective is better.
    """
    if mode not in ("min", "max"):
        raise InputError(f"mode must be 'min' or 'max', got {mode!r}")
    by_config: dict[Config, list[SegmentResult]] = {}
    for row in rows:
        if row.final:
            by_config.setdefault((row.iteration, row.s, row.id), []).append(row)
    per_config, order = _curves_by_config(curves)
    return [
        session(config, segments, per_config.get(config), order, objective, mode)
        for config, segments in sorted(by_config.items())
    ]


def session(
    config: Config,
    segments: Sequence[SegmentResult],
    epochs: Mapping[int, Mapping[str, float]] | None,
    order: Sequence[str],
    objective: str = "val_loss",
    mode: str = "min",
) -> Session:
    """The ``Session`` of one configuration.

    Args:
        config: (iteration, run, id).
        segments: its final rows.
        epochs: epoch -> what it logged, or None: the val loss at each segment's end.
        order: the metrics in the order their scalars are written.
        objective, mode: as for ``sessions``.
    """
    segments = sorted(segments, key=lambda r: (r.rung, r.end))
    ok = all(r.ok for r in segments)
    scalars = _scalars(segments, epochs, order)
    best = _best(segments[-1], scalars, objective, mode) if ok else None
    return Session(
        name=config_name(*config),
        hparams=dict(segments[0].hparams),
        ok=ok,
        start=min(r.start for r in segments),
        end=max(r.end for r in segments),
        scalars=tuple(scalars),
        best=best,
    )


def _best(
    last: SegmentResult,
    scalars: Sequence[tuple[str, int, float, float]],
    objective: str,
    mode: str,
) -> float | None:
    """The objective's best value over the logged epochs (what the results table ranks
    by); from the configuration's last row when no epoch logged it."""
    values = [v for tag, _, v, _ in scalars if tag == objective and math.isfinite(v)]
    if values:
        return min(values) if mode == "min" else max(values)
    value = last.objective
    if value is None and objective == "val_loss":
        value = last.val_loss
    return float(value) if value is not None and math.isfinite(value) else None


def _curves_by_config(
    curves: pd.DataFrame | None,
) -> tuple[dict[Config, dict[int, dict[str, float]]], list[str]]:
    """The curves per configuration (epoch -> metrics), and the metrics in column order."""
    if curves is None or curves.empty:
        return {}, []
    order = [c for c in curves.columns if c not in CURVE_KEYS]
    per_config = {}
    for (i, s, c), frame in curves.groupby(["Iteration", "Run", "ID"], sort=False):
        per_config[(int(i), int(s), int(c))] = {
            int(record["Epoch"]): {tag: record[tag] for tag in order}
            for record in frame.sort_values("Epoch").to_dict("records")
        }
    return per_config, order


def _scalars(
    segments: Sequence[SegmentResult],
    epochs: Mapping[int, Mapping[str, float]] | None,
    order: Sequence[str],
) -> list[tuple[str, int, float, float]]:
    """Every epoch's metrics (from ``epochs``), or each segment's last val loss, with times."""

    def wall(epoch: int) -> float:
        # Epoch e ended somewhere in its segment: spread evenly over the segment's time.
        for r in segments:
            if r.start_epoch < epoch <= r.epochs:
                return r.start + (r.end - r.start) * (epoch - r.start_epoch) / max(
                    1, r.epochs - r.start_epoch
                )
        return segments[-1].end

    if not epochs:
        return [
            ("val_loss", r.epochs, float(r.last_val_loss), r.end)
            for r in segments
            if r.ok and r.last_val_loss is not None
        ]
    out = []
    for epoch in sorted(epochs):
        record = epochs[epoch]
        for tag in order:
            value = record.get(tag)
            if value is not None and isinstance(value, (int, float)) and math.isfinite(value):
                out.append((tag, epoch, float(value), wall(epoch)))
    return out


def _hparam_value(value: Any) -> bool | float | str:
    """A value the HParams plugin can show: a bool, a number or a string (JSON else)."""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return json.dumps(value, sort_keys=True)


def _domain(hp: Hyperparameter) -> Any:
    from tensorboard.plugins.hparams import summary_v2 as hp_api

    lo_hi = hp.distr_args
    if hp.distribution in ("uniform", "log-uniform"):
        return hp_api.RealInterval(float(lo_hi[0]), float(lo_hi[1]))
    if hp.distribution == "randint":
        return hp_api.IntInterval(int(lo_hi[0]), int(lo_hi[1]))
    if hp.distribution == "choice":
        values = [_hparam_value(v) for v in hp.distr_args]
        kinds = {type(v) for v in values}
        if len(kinds) == 1 and len(set(values)) == len(values):
            return hp_api.Discrete(values)
    return None  # normal, or options of mixed kinds: any value


def _write_events(folder: Path, summaries: Iterable[tuple[Any, int, float]]) -> None:
    """One event file of ``summaries`` in ``folder``, in TensorFlow's record format.

    TensorBoard's own ``EventFileWriter`` imports TensorFlow when it is installed
    (for ``tf.io.gfile``), which the driver must not: records are written to a
    plain file instead.
    """
    import socket

    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    with open(folder / name, "wb") as stream:
        writer = RecordWriter(stream)
        header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        writer.write(header.SerializeToString())
        for summary, step, wall_time in summaries:
            event = event_pb2.Event(wall_time=wall_time, step=step, summary=summary)
            writer.write(event.SerializeToString())


def _session_summaries(session: Session, objective: str) -> list[tuple[Any, int, float]]:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp_api
    from tensorboard.plugins.scalar import summary_v2 as scalar

    hparams = {name: _hparam_value(v) for name, v in session.hparams.items()}
    out = [(hp_api.hparams_pb(hparams, session.name, session.start), 0, session.start)]
    out += [(scalar.scalar_pb(tag, value), epoch, t) for tag, epoch, value, t in session.scalars]
    last = max((epoch for _, epoch, _, _ in session.scalars), default=0)
    if session.best is not None:
        out.append((scalar.scalar_pb(best_tag(objective), session.best), last, session.end))
    status = api_pb2.STATUS_SUCCESS if session.ok else api_pb2.STATUS_FAILURE
    end = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=session.end)
    )
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=metadata.SESSION_END_INFO_TAG,
        metadata=metadata.create_summary_metadata(end),
        tensor=metadata.NULL_TENSOR,
    )
    out.append((summary, last, session.end))
    return out


def _experiment_summary(
    space: Sequence[Hyperparameter], metrics: Sequence[str], objective: str, created: float
) -> Any:
    from tensorboard.plugins.hparams import summary_v2 as hp_api

    hparams = [hp_api.HParam(hp.name, _domain(hp)) for hp in space]
    names = {"val_loss": "Val Loss", best_tag("val_loss"): "best Val Loss"}
    listed = [best_tag(objective), *metrics]
    return hp_api.hparams_config_pb(
        hparams,
        [hp_api.Metric(tag, display_name=names.get(tag, tag)) for tag in listed],
        time_created_secs=created,
    )


def write_logs(
    logdir: str | os.PathLike,
    space: Sequence[Hyperparameter],
    found: Sequence[Session],
    objective: str = "val_loss",
) -> list[str]:
    """Writes the experiment and every session whose content changed; returns their names.

    Args:
        logdir: the log folder (``REPO/tensorboard``).
        space: the run's hyperparameters (the HParams dashboard's columns).
        found: the sessions (``sessions(...)``).
        objective: the metric that ranks configurations.
    """
    require()
    root = Path(logdir)
    root.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(root / MANIFEST)
    metrics = sorted({tag for s in found for tag, *_ in s.scalars})
    created = min((s.start for s in found), default=time.time())
    _write_experiment(root, space, metrics, objective, created, manifest, check=True)
    written = [s.name for s in found if _write_session(root, s, objective, manifest)]
    _save_manifest(root, manifest)
    return written


def _write_experiment(
    root: Path,
    space: Sequence[Hyperparameter],
    metrics: Sequence[str],
    objective: str,
    created: float,
    manifest: dict[str, str],
    check: bool,
) -> None:
    """Writes the experiment (the HParams dashboard's columns) if it changed, or if
    ``check`` finds its file missing."""
    experiment_print = json.dumps([[hp.to_dict() for hp in space], list(metrics), objective])
    if manifest.get("") == experiment_print and not (
        check and not list(root.glob("events.out.tfevents.*"))
    ):
        return
    for old in root.glob("events.out.tfevents.*"):
        old.unlink()
    _write_events(root, [(_experiment_summary(space, metrics, objective, created), 0, created)])
    manifest[""] = experiment_print


def _write_session(root: Path, session: Session, objective: str, manifest: dict[str, str]) -> bool:
    """Writes one configuration's folder unless the manifest has it as it is; whether written."""
    fingerprint = session.fingerprint()
    folder = root / session.name
    if manifest.get(session.name) == fingerprint and folder.is_dir():
        return False
    temp = root / f".tmp-{session.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    _write_events(temp, _session_summaries(session, objective))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(temp, folder)
    manifest[session.name] = fingerprint
    return True


def _save_manifest(root: Path, manifest: dict[str, str]) -> None:
    temp_manifest = root / f"{MANIFEST}.tmp{os.getpid()}"
    temp_manifest.write_text(json.dumps(manifest, sort_keys=True))
    os.replace(temp_manifest, root / MANIFEST)


def written_count(logdir: str | os.PathLike) -> int:
    """How many configurations have logs in ``logdir`` (``REPO/tensorboard``), by its manifest."""
    return sum(1 for name in _read_manifest(Path(logdir) / MANIFEST) if name)


def _read_manifest(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: every session is written again
    return data if isinstance(data, dict) else {}


def write_repository(
    path: str | os.PathLike, objective: str | None = None, mode: str | None = None
) -> list[str]:
    """(Re)writes ``path/tensorboard`` from the run in repository ``path``; safe mid-run.

    Args:
        path: the repository folder.
        objective, mode: the metric that ranks configurations and ``"min"`` or
            ``"max"``; by default the run's own (``run.json``).

    Returns:
        The names of the sessions it wrote (those that changed).

    Example:
        >>> write_repository("phobbit_repo")
        $ tensorboard --logdir phobbit_repo/tensorboard

    Raises:
        InputError: when tensorboard is not installed.
        RepositoryError: when the folder holds no readable run.
    """
    from filelock import FileLock

    from phobbit.storage.view import open_repository

    require()
    run = open_repository(path)
    check_folder(run.path)
    goal = run.settings.goal
    objective, mode = objective or goal.name, mode or goal.direction
    found = sessions(run.repository.iter_results(), run.curves(), objective, mode)
    with FileLock(str(run.path / ".tensorboard.lock"), timeout=60):
        return write_logs(run.path / FOLDER, run.settings.space.hparams, found, objective)


def check_folder(repository: str | os.PathLike) -> None:
    """Checks that ``repository/tensorboard`` can hold the logs: absent, or a folder inside
    the repository; and that its lock file is a plain file.

    Raises:
        RepositoryError: naming what is in the way and what to do.
    """
    from phobbit.storage import files

    folder = Path(repository) / FOLDER
    files.inside(folder, repository)  # a link out would send the logs out of the repository
    if os.path.lexists(folder) and not folder.is_dir():
        raise RepositoryError(
            f"{folder} is a file, not a folder; phobbit writes the TensorBoard logs there: "
            "move that file away, then run again"
        )
    files.check_lock(Path(repository) / ".tensorboard.lock")


def write_quietly(path: str | os.PathLike) -> bool:
    """``write_repository`` for a run in progress: a failure is logged, never raised.

    Logs are derived data: a log folder that cannot be written must not stop training.
    Returns whether the logs were written.
    """
    try:
        write_repository(path)
    except Exception as exc:  # noqa: BLE001 - derived data only; the run goes on
        log.warning("could not write TensorBoard logs in %s: %s", path, exc, exc_info=True)
        return False
    return True


class RunLogs:
    """The logs of a run in progress, kept up to date from the results it is told of.

    ``start`` reads the repository once; after that, each ``flush`` writes only
    the configurations that got a result since the last one, reading only what
    ``epochs.csv`` gained since: nothing it does grows with the run. The run's
    end rewrites everything from the records once more (``write_quietly``), so
    what a flush missed (a kill, a result never reported) is made good there.

    Args:
        path: the repository folder.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._rows: dict[Config, list[SegmentResult]] = {}
        self._epochs: dict[Config, dict[int, dict[str, float]]] = {}
        self._names: list[str] = []  # metrics, in the order first logged
        self._tags: set[str] = set()  # every scalar tag written
        self._touched: set[Config] = set()
        self._offset = 0  # how far epochs.csv has been read
        self._manifest: dict[str, str] = {}
        self._created = math.inf
        self._settings: Any = None
        self._checked = False  # whether the experiment's file was looked for
        self._unsaved = False  # written since the manifest was saved

    def start(self) -> None:
        """Reads what the repository holds: the rows and epochs of earlier sessions."""
        from phobbit.storage.view import open_repository

        require()
        run = open_repository(self.path)
        self._settings = run.settings
        for row in run.repository.iter_results():
            self._learn(row)
        self._read_epochs()
        self._manifest = _read_manifest(self.path / FOLDER / MANIFEST)
        # The tags the earlier sessions' configurations have: the experiment lists them all.
        self._tags = set(self._names)
        if any(config not in self._epochs for config in self._rows):
            self._tags.add("val_loss")  # a configuration without curves logs its val loss

    def add(self, result: SegmentResult) -> None:
        """Takes a result the run reported: its configuration is written at the next flush."""
        if self._learn(result):
            self._touched.add((result.iteration, result.s, result.id))

    def _learn(self, row: SegmentResult) -> bool:
        if not row.final:
            return False
        self._rows.setdefault((row.iteration, row.s, row.id), []).append(row)
        self._created = min(self._created, row.start)
        return True

    def _read_epochs(self) -> None:
        """Reads the lines ``epochs.csv`` gained since the last read (whole lines only:
        a writer may be in the middle of one)."""
        from phobbit.storage import files
        from phobbit.storage.repository import Repository, decode_epoch

        path = Repository(self.path).epochs_path
        handle = files.open_read(path)  # as every repository file: never a FIFO or a link out
        if handle is None:
            return
        with handle:
            if os.fstat(handle.fileno()).st_size < self._offset:
                self._offset = 0  # replaced by a shorter file: read it again
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        for line in io.BytesIO(data[:end]):  # lines as iterating the file gives them
            row = decode_epoch(line)
            if row is None:
                continue  # the header, or a torn line
            config = (row.iteration, row.s, row.id)
            self._epochs.setdefault(config, {})[row.epoch] = dict(row.metrics)
            self._names.extend(n for n in row.metrics if n not in self._names)
        self._offset += end

    def flush(self) -> list[str]:
        """Writes the configurations that got a result since the last flush; their names."""
        from filelock import FileLock

        from phobbit.storage.view import metric_order

        if self._settings is None or not self._touched:
            return []
        self._read_epochs()
        goal = self._settings.goal
        order = metric_order(self._names)
        found = [
            session(
                config,
                self._rows[config],
                self._epochs.get(config),
                order,
                goal.name,
                goal.direction,
            )
            for config in sorted(self._touched)
        ]
        self._touched.clear()
        self._tags |= {tag for s in found for tag, *_ in s.scalars}
        root = self.path / FOLDER
        with FileLock(str(self.path / ".tensorboard.lock"), timeout=60):
            root.mkdir(exist_ok=True)
            space = self._settings.space.hparams
            created = self._created if math.isfinite(self._created) else time.time()
            metrics = sorted(self._tags)
            _write_experiment(
                root, space, metrics, goal.name, created, self._manifest, not self._checked
            )
            self._checked = True  # manifest[""] set or checked: the experiment is there
            written = [s.name for s in found if _write_session(root, s, goal.name, self._manifest)]
        self._unsaved |= bool(written)
        return written

    def close(self) -> None:
        """Saves the manifest of what was written (once, at the end: it holds every
        configuration, so saving it at each flush would grow with the run). A run
        killed before leaves an older one: the next writing rewrites what it misses."""
        if self._unsaved:
            from filelock import FileLock

            with FileLock(str(self.path / ".tensorboard.lock"), timeout=60):
                _save_manifest(self.path / FOLDER, self._manifest)
            self._unsaved = False


class LoggingReporter:
    """Passes the scheduler's reports on to ``inner`` and writes the logs as results come.

    After a finished segment, at most every ``interval`` seconds, the
    configurations that got a result since the last write are written
    (``RunLogs``); the run's end writes them all once more
    (``ParallelHyperband.run``). A failure to write is logged, never raised:
    logs are no reason to stop training.
    """

    def __init__(self, inner: Any, path: str | os.PathLike, interval: float = 30.0) -> None:
        self.inner, self.path, self.interval = inner, path, interval
        self._last = time.monotonic()
        self.logs = RunLogs(path)

    def started(self, plan: Any, resumed: int) -> None:
        self.inner.started(plan, resumed)
        self._quietly(self.logs.start)

    def dispatched(self, segment: Any) -> None:
        self.inner.dispatched(segment)

    def finished(self, result: SegmentResult) -> None:
        self.inner.finished(result)
        self._quietly(lambda: self.logs.add(result))
        if time.monotonic() - self._last >= self.interval:
            self._quietly(self.logs.flush)
            self._last = time.monotonic()

    def _quietly(self, action: Any) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - derived data only; the run goes on
            log.warning(
                "could not write TensorBoard logs in %s: %s", self.path, exc, exc_info=True
            )

    def retrying(self, segment: Any, cause: str, attempt: int) -> None:
        self.inner.retrying(segment, cause, attempt)

    def replaced(self, count: int) -> None:
        self.inner.replaced(count)

    def closed(self) -> None:
        self.inner.closed()
        self._quietly(self.logs.close)
