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
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phobbit.errors import InputError
from phobbit.records import SegmentResult, config_name
from phobbit.space import Hyperparameter

if TYPE_CHECKING:
    import pandas as pd

FOLDER = "tensorboard"
MANIFEST = ".phobbit.json"
INSTALL_HINT = 'TensorBoard logs are off: pip install "phobbit[tensorboard]" to write them'
CURVE_KEYS = ("Iteration", "Run", "ID", "Rung", "Epoch")
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
    by_config: dict[tuple[int, int, int], list[SegmentResult]] = {}
    for row in rows:
        if row.final:
            by_config.setdefault((row.iteration, row.s, row.id), []).append(row)
    per_config = _curves_by_config(curves)
    found = []
    for config, segments in sorted(by_config.items()):
        segments.sort(key=lambda r: (r.rung, r.end))
        ok = all(r.ok for r in segments)
        scalars = _scalars(segments, per_config.get(config), objective)
        best = _best(segments[-1], scalars, objective, mode) if ok else None
        found.append(
            Session(
                name=config_name(*config),
                hparams=dict(segments[0].hparams),
                ok=ok,
                start=min(r.start for r in segments),
                end=max(r.end for r in segments),
                scalars=tuple(scalars),
                best=best,
            )
        )
    return found


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


def _curves_by_config(curves: pd.DataFrame | None) -> dict[tuple[int, int, int], Any]:
    if curves is None or curves.empty:
        return {}
    return {
        (int(i), int(s), int(c)): frame
        for (i, s, c), frame in curves.groupby(["Iteration", "Run", "ID"], sort=False)
    }


def _scalars(
    segments: Sequence[SegmentResult], curve: Any, objective: str
) -> list[tuple[str, int, float, float]]:
    """Every epoch's metrics (from ``curve``), or each segment's last val loss, with times."""

    def wall(epoch: int) -> float:
        # Epoch e ended somewhere in its segment: spread evenly over the segment's time.
        for r in segments:
            if r.start_epoch < epoch <= r.epochs:
                return r.start + (r.end - r.start) * (epoch - r.start_epoch) / max(
                    1, r.epochs - r.start_epoch
                )
        return segments[-1].end

    if curve is None:
        return [
            ("val_loss", r.epochs, float(r.last_val_loss), r.end)
            for r in segments
            if r.ok and r.last_val_loss is not None
        ]
    metrics = [c for c in curve.columns if c not in CURVE_KEYS]
    out = []
    for record in curve.sort_values("Epoch").to_dict("records"):
        epoch = int(record["Epoch"])
        for tag in metrics:
            value = record[tag]
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
    written = []
    experiment_print = json.dumps([[hp.to_dict() for hp in space], metrics, objective])
    if manifest.get("") != experiment_print or not list(root.glob("events.out.tfevents.*")):
        created = min((s.start for s in found), default=time.time())
        for old in root.glob("events.out.tfevents.*"):
            old.unlink()
        _write_events(
            root, [(_experiment_summary(space, metrics, objective, created), 0, created)]
        )
        manifest[""] = experiment_print
    for session in found:
        fingerprint = session.fingerprint()
        folder = root / session.name
        if manifest.get(session.name) == fingerprint and folder.is_dir():
            continue
        temp = root / f".tmp-{session.name}-{os.getpid()}"
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir()
        _write_events(temp, _session_summaries(session, objective))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(temp, folder)
        manifest[session.name] = fingerprint
        written.append(session.name)
    temp_manifest = root / f"{MANIFEST}.tmp{os.getpid()}"
    temp_manifest.write_text(json.dumps(manifest, sort_keys=True))
    os.replace(temp_manifest, root / MANIFEST)
    return written


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

    from phobbit.view import open_repository

    require()
    run = open_repository(path)
    goal = run.settings.goal
    objective, mode = objective or goal.name, mode or goal.direction
    found = sessions(run.repository.iter_results(), run.curves(), objective, mode)
    with FileLock(str(run.path / ".tensorboard.lock"), timeout=60):
        return write_logs(run.path / FOLDER, run.settings.space.hparams, found, objective)


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


class LoggingReporter:
    """Passes the scheduler's reports on to ``inner`` and rewrites the logs as results come.

    The logs are rewritten after a finished segment at most every ``interval``
    seconds (each write reads the repository's records, and only what changed is
    written again); the run's end writes them once more (``ParallelHyperband.run``).
    """

    def __init__(self, inner: Any, path: str | os.PathLike, interval: float = 30.0) -> None:
        self.inner, self.path, self.interval = inner, path, interval
        self._last = time.monotonic()

    def started(self, plan: Any, resumed: int) -> None:
        self.inner.started(plan, resumed)

    def dispatched(self, segment: Any) -> None:
        self.inner.dispatched(segment)

    def finished(self, result: SegmentResult) -> None:
        self.inner.finished(result)
        if time.monotonic() - self._last >= self.interval:
            write_quietly(self.path)
            self._last = time.monotonic()

    def retrying(self, segment: Any, cause: str, attempt: int) -> None:
        self.inner.retrying(segment, cause, attempt)

    def replaced(self, count: int) -> None:
        self.inner.replaced(count)

    def closed(self) -> None:
        self.inner.closed()
