"""A read-only view of a run's repository: its settings, results, status, best and driver.

What ``phobbit status`` and ``phobbit best`` print, for library users too::

    >>> import phobbit
    >>> run = phobbit.open_repository("phobbit_repo")
    >>> run.status().epochs_done, run.best(1)[0].checkpoint

A view only reads the run, and is safe to use while a driver writes to the folder: it
never takes the results lock, and tries the driver lock for an instant only. The one
file it writes is derived, never data: the column index of ``results.csv``
(``phobbit.storage.index``, replaced whole, skipped where the folder is not writable).
It is apart from ``Repository``, whose methods are the writers' (appends under
the lock, fencing, the driver lock), so that readers hold no write method and
the repository module imports no pandas (the results table is built here, on
demand).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phobbit.core.budget import Budget
from phobbit.core.objective import Objective
from phobbit.core.provenance import Provenance
from phobbit.core.records import RunSettings, Segment, SegmentResult, Status, config_name
from phobbit.core.schedule import Bracket, brackets
from phobbit.errors import RepositoryError
from phobbit.storage import checkpoints
from phobbit.storage.decisions import DecisionLog
from phobbit.storage.index import FINAL, OK, ResultsIndex
from phobbit.storage.lease import driver_alive
from phobbit.storage.repository import DRIVER_FILE, DRIVER_LOCK, Repository
from phobbit.storage.time_used import TimeLog

if TYPE_CHECKING:
    import pandas as pd

DEVICE_ROWS = 64  # status names the devices of the latest rows (``RunStatus.devices``)
SCORING_TRIES = 5  # looks for a scoring file that a live run keeps replacing under the reader


def estimate_left(done: float, total: float, trained: float, seconds: float) -> float | None:
    """Seconds left for ``total - done`` epochs at the rate of ``trained`` epochs in ``seconds``.

    Returns None until something has been trained. The total is the most a run
    trains (failed configurations promote nothing), so the estimate errs long.
    """
    if trained <= 0 or seconds <= 0:
        return None
    return max(0.0, total - done) * seconds / trained


@dataclass(frozen=True)
class RungProgress:
    """One rung of one bracket: ``done`` of ``n`` segments, each training to ``epochs``."""

    iteration: int
    s: int
    rung: int
    done: int
    n: int
    epochs: int
    segment_epochs: int


def schedule_progress(
    schedule: Sequence[Bracket], iterations: int, done: Mapping[tuple[int, int, int], int]
) -> list[RungProgress]:
    """Every rung of ``iterations`` iterations of ``schedule``, with ``done[(iteration, s,
    rung)]`` segments done, in the order a display lists them."""
    return [
        RungProgress(
            i,
            b.s,
            r.index,
            done.get((i, b.s, r.index), 0),
            r.n,
            r.epochs,
            b.segment_epochs(r.index),
        )
        for i in range(iterations)
        for b in sorted(schedule, key=lambda b: -b.s)
        for r in b.rungs
    ]


def decided_progress(
    rungs: Sequence[RungProgress], decisions: Sequence[Segment]
) -> list[RungProgress]:
    """ASHA's rungs of iteration 0: each holds the segments decided at it, not Hyperband's n."""
    decided = Counter(d.rung_key for d in decisions)
    return [
        dataclasses.replace(r, n=decided.get((r.iteration, r.s, r.rung), 0))
        for r in rungs
        if r.iteration == 0
    ]


@dataclass(frozen=True)
class DriverAbout:
    """What the last driver ran with, as it recorded in ``driver.json`` (``about``).

    Attributes:
        budget: its budget (``max_epochs``, ``time_limit``; ``time_used`` 0 here: see
            ``RunStatus.time_used``), or None when it recorded none readable.
        backend: the Keras backend its workers ran (``"tensorflow"``), or None.
        workers: how many segments it ran at once, or None.
        devices: the device of each worker slot (``"0"``, ``"0,1"``; ``"-1"`` or ``"cpu"``
            for a CPU worker), as ``executor.slots`` gives them.
    """

    budget: Budget | None = None
    backend: str | None = None
    workers: int | None = None
    devices: tuple[str, ...] = ()

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> DriverAbout | None:
        """The ``about`` of a ``driver.json`` record; None when it has none (an older
        version wrote it, or the driver had not planned yet), field by field what reads."""
        about = record.get("about")
        if not isinstance(about, dict):
            return None
        budget = None
        limits = about.get("budget")
        if isinstance(limits, dict):
            time_limit, max_epochs = limits.get("time_limit"), limits.get("max_epochs")
            name = limits.get("epochs_name")
            # None is "no such limit"; any other value that is no limit is damage, and a
            # damaged budget is no budget known (as before), not a budget of none.
            readable = (time_limit is None or _number(time_limit) is not None) and (
                max_epochs is None or _count(max_epochs) is not None
            )
            try:
                budget = (
                    Budget(
                        time_limit,
                        max_epochs,
                        name if isinstance(name, str) else "max_epochs",
                    )
                    if readable
                    else None
                )
            except (ValueError, TypeError):
                budget = None
        backend, devices = about.get("backend"), about.get("devices")
        return cls(
            budget=budget,
            backend=backend if isinstance(backend, str) else None,
            workers=_count(about.get("workers")),
            devices=tuple(str(d) for d in devices) if isinstance(devices, list) else (),
        )


@dataclass(frozen=True)
class DriverState:
    """The driver of a repository as ``driver.json`` and ``.driver.lock`` tell it.

    Attributes:
        running: True while a driver holds ``.driver.lock``, False when none
            does, None when that cannot be told (e.g. a read-only copy).
        name: ``"pid N on HOST"`` of the last driver, or ``"unknown"``.
        started: when it started (seconds since the epoch), or None.
        ended: when it ended cleanly, or None (still running, or killed).
        heartbeat: when it last touched ``driver.json``, or None.
        about: what it ran with (budget, backend, workers); None when ``driver.json``
            does not say (an older version's, or one that had not planned yet).
    """

    running: bool | None
    name: str
    started: float | None = None
    ended: float | None = None
    heartbeat: float | None = None
    about: DriverAbout | None = None

    def describe(self) -> str:
        """``running (pid N on HOST)``, ``not running`` or ``unknown``."""
        return {True: f"running ({self.name})", False: "not running", None: "unknown"}[
            self.running
        ]


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands, read from its repository at ``checked_at``.

    Attributes:
        settings: the run's settings (``run.json``).
        rungs: every rung of every bracket and iteration, segments done of planned.
        epochs_done / epochs_total: epochs the rows say were trained (a segment stopped
            early by a callback counts what it trained, a failed one none), of those
            plus what the unfinished segments plan.
        segments_done / segments_total: finished segments of all planned.
        failed: finished segments that failed.
        first_start / last_end: the first segment's start and the last one's end
            (seconds since the epoch), None before any result.
        driver: the driver's state.
        seconds_left: an estimate at the running driver's rate; None when no
            driver runs or nothing has been trained since it started.
        best: the best finished segment by Val Loss, its hparams in the search
            space's order; None before any succeeded.
        checked_at: when this was read (``time.time()``).
        devices: the GPU ids (``"0"``, ``"0,1"``) its workers trained on (in its latest
            ``DEVICE_ROWS`` rows, and those its last driver's workers were pinned to, from
            driver.json), None for CPU workers, sorted (None last); rows the driver
            wrote name none.
        time_used: seconds of training time its invocations recorded in ``time_used.csv``
            (a running driver records every ``TIME_LOG_EVERY_S``, so it may lag by that).
        budget: the budget its last driver ran with, ``time_used`` included; None when
            ``driver.json`` does not say (then an ASHA run's total is what it decided).
    """

    settings: RunSettings
    rungs: tuple[RungProgress, ...]
    epochs_done: int
    epochs_total: int
    segments_done: int
    segments_total: int
    failed: int
    first_start: float | None
    last_end: float | None
    driver: DriverState
    seconds_left: float | None
    best: SegmentResult | None
    checked_at: float
    devices: tuple[str | None, ...] = ()
    time_used: float = 0.0
    budget: Budget | None = None


@dataclass(frozen=True)
class BestConfig:
    """One configuration of the results table, with the checkpoint that scores its Val Loss.

    Attributes:
        trial: the table's index, ``"<run>-<id>"`` (``"<iteration>:<run>-<id>"``).
        gpu: the GPU id(s) of the worker that trained its last segment (``"0"``,
            ``"0,1"``); None for a CPU worker.
        checkpoint: the absolute path of the file that evaluates to ``val_loss`` and
            ``objective`` (see ``Repository.scoring_checkpoint``); None when failed or
            none holds it.
        objective: the run's objective at that epoch (``val_loss`` by default),
            named by ``objective_name``, ``"min"``imised or ``"max"``imised as
            ``direction`` says.
        metrics: every metric that epoch logged (``loss``, ``val_loss``, each
            compiled metric and its ``val_`` twin), from ``epochs.csv``; empty when
            it holds none for the configuration (a failed one, an older repository).
    """

    trial: str
    iteration: int
    s: int
    id: int
    val_loss: float | None
    epochs: int
    rung: int
    status: str
    error: str
    hparams: dict[str, Any]
    gpu: str | None
    train_time_s: float
    checkpoint: Path | None
    objective: float | None = None
    objective_name: str = "val_loss"
    direction: str = "min"
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self, root: str | os.PathLike | None = None) -> dict[str, Any]:
        """Plain JSON-ready data, what ``phobbit best --json`` prints: ``checkpoint``
        absolute (relative to ``root`` only when given), ``gpu`` null for a CPU worker."""
        data = dataclasses.asdict(self)
        data["run"] = data.pop("s")  # the key Hobbit's table and `best --json` use
        path = self.checkpoint
        if path is not None and root is not None:
            path = path.relative_to(Path(root).absolute())
        data["checkpoint"] = None if path is None else str(path)
        return data


class RepositoryView:
    """A read-only view of the run in a repository folder; see :func:`open_repository`.

    Attributes:
        path: the folder.
        settings: the run's validated settings (``run.json``).
        repository: the underlying ``Repository``.
    """

    def __init__(self, repository: Repository, settings: RunSettings) -> None:
        # Rows this run cannot have written are no data: every reader skips them.
        repository.provenance = Provenance.of(settings)
        self.repository = repository
        self.path = repository.path
        self.settings = settings

    def __repr__(self) -> str:
        return f"RepositoryView({str(self.path)!r})"

    @property
    def hparam_names(self) -> list[str]:
        """The hyperparameter names in the order of the run's search space."""
        return [hp.name for hp in self.settings.space.hparams]

    def results(self) -> pd.DataFrame:
        """The results table, shaped like ``ParallelHyperband.run``'s (best first).

        Raises:
            RepositoryError: when ``results.csv`` cannot be read.
        """
        from phobbit.storage.results import results_frame

        return results_frame(self.repository.iter_results(), self.settings.goal)

    def curves(self) -> pd.DataFrame:
        """Every epoch every configuration trained, one row per epoch (``epochs.csv``).

        Columns ``Iteration``, ``Run``, ``ID``, ``Rung``, ``Epoch`` (from 1, counted
        for the configuration), then one per metric logged (``loss``, ``val_loss``,
        then the others, each followed by its ``val_`` twin); sorted by Iteration,
        Run, ID, Epoch. An epoch trained again (after a kill or a retry) appears
        once, as written last. A metric an epoch did not log is NaN.

        Raises:
            RepositoryError: when ``epochs.csv`` cannot be read.
        """
        import pandas as pd

        rows = list(self.repository.epochs().values())
        names: list[str] = []
        for row in rows:
            names.extend(n for n in row.metrics if n not in names)
        columns = ["Iteration", "Run", "ID", "Rung", "Epoch", *metric_order(names)]
        frame = pd.DataFrame(
            [
                [row.iteration, row.s, row.id, row.rung, row.epoch]
                + [row.metrics.get(n, math.nan) for n in columns[5:]]
                for row in rows
            ],
            columns=columns,
        )
        for column in columns[:5]:
            frame[column] = frame[column].astype("int64")
        for column in columns[5:]:
            frame[column] = frame[column].astype("float64")
        return frame.sort_values(["Iteration", "Run", "ID", "Epoch"], ignore_index=True)

    def best(self, n: int = 5, ranking: Ranking | None = None) -> list[BestConfig]:
        """The ``n`` best configurations, each with the checkpoint that scores its Val Loss
        and the metrics of that epoch.

        The same configurations, in the same order and with the same values, as the first
        ``n`` rows of :meth:`results`, read from the column index without pandas, so that
        ``phobbit best`` is quick on a large run; ``ranking`` is one made already.
        """
        ranking = ranking or self.ranking()
        rows = ranking.top(n)
        metrics = self.scoring_metrics(rows)
        return [
            dataclasses.replace(self._best_config(trial, row), metrics=metrics.get(str(trial), {}))
            for trial, row in rows
        ]

    def ranking(self) -> Ranking:
        """Every configuration of the results table, ranked, from the column index."""
        return Ranking.of(self.repository.index(), self.settings.goal)

    def scoring_metrics(
        self, rows: Iterable[tuple[Any, Mapping[str, Any]]]
    ) -> dict[str, dict[str, float]]:
        """What the scoring epoch of each configuration of ``rows`` logged, by trial: the
        latest of its epochs, up to the rung it reached, whose objective is the one the
        table lists. Failed configurations have none.

        Args:
            rows: (trial, row) pairs with the results table's columns (``Ranking.top``,
                or ``results_frame(...).iterrows()``).

        Raises:
            RepositoryError: when ``epochs.csv`` cannot be read.
        """
        goal = self.settings.goal
        wanted: dict[tuple[int, int, int], tuple[str, int, float]] = {}
        for trial, row in rows:
            listed = row["Val Loss"] if goal.is_val_loss else row[goal.label]
            if row["Status"] == Status.OK and not math.isnan(listed):
                config = (int(row["Iteration"]), int(row["Run"]), int(row["ID"]))
                wanted[config] = (str(trial), int(row["Epochs"]), float(listed))
        if not wanted:
            return {}
        scoring: dict[str, tuple[int, dict[str, float]]] = {}
        # The shown configurations' epochs alone: quick on a long run's epochs.csv.
        for epoch in self.repository.epochs_of(wanted).values():
            found = wanted.get((epoch.iteration, epoch.s, epoch.id))
            if found is None or epoch.epoch > found[1]:
                continue
            value = goal.value(epoch.metrics)
            if math.isclose(value, found[2], rel_tol=1e-9, abs_tol=1e-12):
                held = scoring.get(found[0])
                if held is None or epoch.epoch > held[0]:  # ties go to the latest epoch
                    scoring[found[0]] = (epoch.epoch, epoch.metrics)
        return {
            trial: {name: metrics[name] for name in metric_order(list(metrics))}
            for trial, (_, metrics) in scoring.items()
        }

    def _best_config(self, trial: Any, row: Any) -> BestConfig:
        loss = None if math.isnan(row["Val Loss"]) else float(row["Val Loss"])
        goal = self.settings.goal
        value = loss if goal.is_val_loss else row[goal.label]
        value = None if value is None or math.isnan(value) else float(value)
        checkpoint = None
        if row["Status"] == Status.OK and loss is not None and value is not None:
            checkpoint = self.repository.scoring_checkpoint(
                int(row["Iteration"]),
                int(row["Run"]),
                int(row["ID"]),
                loss,
                goal,
                value,
                hparams=row["Hparams"],
            )
        return BestConfig(
            trial=str(trial),
            iteration=int(row["Iteration"]),
            s=int(row["Run"]),
            id=int(row["ID"]),
            val_loss=loss,
            epochs=int(row["Epochs"]),
            rung=int(row["Rung"]),
            status=row["Status"],
            error=row["Error"],
            hparams=row["Hparams"],
            gpu=cpu_as_none(row["GPU"]),
            train_time_s=round(float(row["Train Time"]), 3),
            # Absolute: the same file whatever the directory of the caller or the script.
            checkpoint=None if checkpoint is None else checkpoint.absolute(),
            objective=value,
            objective_name=goal.name,
            direction=goal.direction,
        )

    def scoring_file(self, trial: str | None = None) -> Path:
        """The file of the best configuration's best epoch (or of ``trial``'s, e.g. ``"2-4"``).

        Loading it gives the model that evaluates to the Val Loss and objective
        the results table lists for it.

        Raises:
            RepositoryError: when no configuration succeeded, ``trial`` is not in
                the table, it failed, or no file holds its best epoch any more.
        """
        checkpoint = self._scoring(trial).checkpoint
        assert checkpoint is not None  # _scoring raises when there is none
        return checkpoint

    @contextlib.contextmanager
    def scoring_copy(self, trial: str | None = None) -> Iterator[tuple[Path, Path]]:
        """``scoring_file``'s file held still: a private copy that a live run cannot change.

        A run that goes on replaces a checkpoint (a later epoch) or deletes a
        best-epoch file (``keep_best``) at any moment, so a file found by what it
        holds may be another, or gone, when it is opened. The file is opened once
        and copied, the copy checked to hold the listed epoch, and if it does not
        (or the file vanished) the search starts again.

        Yields:
            (the repository's file, the copy), the copy in a temporary folder that
            goes when the block ends.

        Raises:
            RepositoryError: as ``scoring_file``, or when a run changed the file
                under every one of ``SCORING_TRIES`` tries.
        """
        with tempfile.TemporaryDirectory(prefix="phobbit-scoring-") as folder:
            yield self._copy_scoring(trial, Path(folder))

    def _copy_scoring(self, trial: str | None, folder: Path) -> tuple[Path, Path]:
        goal = self.settings.goal
        for _ in range(SCORING_TRIES):
            best = self._scoring(trial)
            source = best.checkpoint
            assert source is not None  # _scoring raises when there is none
            copy = folder / source.name
            try:
                shutil.copyfile(source, copy)  # one open: a later replace is another file
            except FileNotFoundError:
                continue  # replaced or pruned between finding and opening it: look again
            # The copy alone in a folder of its own: found there only if it holds the epoch
            # and is the configuration's.
            stem = folder / config_name(best.iteration, best.s, best.id)
            identity = self._identity(best)
            if goal.is_val_loss or best.objective is None:
                found = checkpoints.find_scoring(stem, best.val_loss, identity=identity)
            else:
                found = checkpoints.find_scoring(
                    stem, best.objective, goal, best.val_loss, identity
                )
            if found == copy:
                return source, copy
            copy.unlink()
        raise RepositoryError(
            f"the file of the best epoch of trial {trial or 'the best'} changed each time it "
            f"was read (a run is writing {self.path}); try again"
        )

    def _scoring(self, trial: str | None) -> BestConfig:
        """``trial``'s ``BestConfig`` (or the best's), with a checkpoint; see ``scoring_file``."""
        frame = self.results()
        if trial is None:
            ok = frame[frame["Status"] == Status.OK]
            if ok.empty:
                raise RepositoryError(f"repository {self.path} has no successful trial yet")
            trial = str(ok.index[0])
        elif trial not in frame.index:
            listed = ", ".join(map(str, frame.index[:5]))
            raise RepositoryError(
                f"trial {trial!r} is not in repository {self.path} (its trials read like "
                f"{listed or 'nothing yet'}); see `phobbit best`"
            )
        best = self._best_config(trial, frame.loc[trial])
        if best.status != Status.OK:
            raise RepositoryError(f"trial {trial} failed ({best.error}); it has no model")
        if best.checkpoint is None:
            stem = self.repository.checkpoint(best.iteration, best.s, best.id)
            bad = checkpoints.unusable(stem, self._identity(best))
            for file in bad:
                if file.problem.startswith(checkpoints.FOREIGN):
                    raise RepositoryError(
                        f"the best epoch of trial {trial} has no file of its own: "
                        f"{Path(file.path).name} {file.problem}, so it is not used"
                    )
            if bad:
                raise RepositoryError(
                    f"no readable file holds the best epoch of trial {trial}: "
                    f"{'; '.join(f'{f.path} {f.problem}' for f in bad)}; export another "
                    "trial (see `phobbit best`)"
                )
            raise RepositoryError(
                f"no file holds the best epoch of trial {trial} any more (only the best "
                "keep_best configurations keep theirs)"
            )
        return best

    def _identity(self, best: BestConfig) -> checkpoints.Identity:
        """Whose the files of ``best``'s checkpoint must be."""
        return checkpoints.Identity.of(
            (best.iteration, best.s, best.id), best.hparams, self.settings.run_id
        )

    def driver(self) -> DriverState:
        """Whether a driver runs in the repository now, and who it is or was.

        Judged by the driver's lease as a new driver judges it (``lease.driver_alive``):
        ``driver.json``'s pid, host, process start time and token, so a deleted
        ``.driver.lock`` under a live driver still reads "running", and a dead
        driver's leftover lock reads "not running". The lock is tried too (for an
        instant, never blocking a driver longer), for a driver whose ``driver.json``
        cannot be read.
        """
        try:
            record = self.repository.driver_record() or {}
        except RecursionError:  # a driver.json nested absurdly deep
            record = {}
        try:
            name = f"pid {record['pid']} on {record['host']}"
        except KeyError:  # any damage: unknown
            name = "unknown"
        try:
            heartbeat = (self.path / DRIVER_FILE).stat().st_mtime
        except OSError:
            heartbeat = None
        state = DriverState(
            running=False,
            name=name,
            started=_number(record.get("started")),
            ended=_number(record.get("ended")),
            heartbeat=heartbeat,
            about=DriverAbout.of(record),
        )
        alive = driver_alive(record, heartbeat)
        if alive:
            return dataclasses.replace(state, running=True)
        held = self._driver_lock_held()
        if held is None and alive is None:
            return dataclasses.replace(state, running=None)
        return dataclasses.replace(state, running=bool(held))

    def _driver_lock_held(self) -> bool | None:
        """Whether a process holds ``.driver.lock`` now; None when that cannot be tried."""
        from filelock import FileLock, Timeout

        lock_path = self.path / DRIVER_LOCK
        if not lock_path.exists():
            return False
        try:
            lock = FileLock(str(lock_path), timeout=0)
            lock.acquire()
        except Timeout:
            return True
        except OSError:
            return None
        lock.release()
        return False

    def status(self) -> RunStatus:
        """Where the run stands now: progress per rung, epochs, failures, driver, time left.

        Read from the column index of ``results.csv`` (``Repository.index``): only the
        best row is decoded in full, so it stays quick on a run of 100,000 rows.
        """
        settings = self.settings
        index = self.repository.index()
        rows = index.segments()  # what Repository.results() holds, by index
        driver = self.driver()
        its, ss, rungs_of = index.iteration, index.s, index.rung
        done = Counter((its[i], ss[i], rungs_of[i]) for i in rows)
        rungs = schedule_progress(brackets(settings.R, settings.eta), settings.iterations, done)
        if settings.algorithm == "asha":  # its rungs hold what it has decided so far
            rungs = decided_progress(rungs, DecisionLog(self.repository).read())
        # What the rows say was trained: a segment a callback stopped early trained fewer
        # epochs than its rung plans, and a failed one is counted as training none (its
        # row does not say how far it got).
        trained = [
            max(0, index.epochs[i] - index.start_epoch[i]) if index.ok(i) else 0 for i in rows
        ]
        epochs_done = sum(trained)
        # The most the run trains: what the finished segments trained, and what the rest plan.
        segment_epochs = {(r.iteration, r.s, r.rung): r.segment_epochs for r in rungs}
        planned_done = sum(segment_epochs.get(key, 0) * n for key, n in done.items())
        epochs_total = sum(r.n * r.segment_epochs for r in rungs) - planned_done + epochs_done
        time_used = self._time_used()
        budget = self._budget(driver, time_used)
        if settings.algorithm == "asha" and budget is not None and budget.max_epochs:
            # ASHA decides as it goes, so what it decided is no total: its budget is (the
            # last segment may overshoot it by less than a segment).
            epochs_total = max(budget.max_epochs, epochs_done)
        now = time.time()
        left = None
        if rows and driver.running and driver.started is not None:
            since = driver.started
            # Every epoch of a row that ended since the driver started, as before.
            recent = sum(
                index.epochs[i] - index.start_epoch[i] for i in rows if index.end[i] >= since
            )
            left = estimate_left(epochs_done, epochs_total, recent, now - since)
            time_left = None if budget is None else budget.time_left()
            if time_left is not None:  # the run stops when its time limit is spent
                left = time_left if left is None else min(left, time_left)
        best = self._best_row(index, rows)
        return RunStatus(
            settings=settings,
            rungs=tuple(rungs),
            epochs_done=epochs_done,
            epochs_total=epochs_total,
            segments_done=len(rows),
            segments_total=sum(r.n for r in rungs),
            failed=sum(1 for i in rows if not index.ok(i)),
            first_start=min((index.start[i] for i in rows), default=None),
            last_end=max((index.end[i] for i in rows), default=None),
            driver=driver,
            seconds_left=left,
            best=best,
            checked_at=now,
            devices=_devices(
                # Decoded from the latest rows only (a full decode would cost status its
                # speed on a large run), with the GPUs the last driver's workers were
                # pinned to: past DEVICE_ROWS workers, or with one on a long segment,
                # some wrote none of those rows.
                index.rows(list(rows[-DEVICE_ROWS:])) if rows else (),
                driver.about.devices if driver.about is not None else (),
            ),
            time_used=time_used,
            budget=budget,
        )

    def _time_used(self) -> float:
        """Seconds of training time ``time_used.csv`` records (0 when it is unreadable:
        the run itself then refuses it, with a message saying what to do)."""
        try:
            return TimeLog(self.repository).used()
        except (RepositoryError, OSError):
            return 0.0

    @staticmethod
    def _budget(driver: DriverState, time_used: float) -> Budget | None:
        """The budget the last driver recorded, with the time the run has used."""
        if driver.about is None or driver.about.budget is None:
            return None
        return dataclasses.replace(driver.about.budget, time_used=time_used)

    def _best_row(self, index: ResultsIndex, rows: Sequence[int]) -> SegmentResult | None:
        """The best of ``rows`` by the run's objective (the first written of equals),
        decoded, its hparams in the search space's order; None when none has a score."""
        goal = self.settings.goal
        by_val_loss = goal.name == "val_loss"
        best, held = None, math.inf
        for i in rows:
            if not index.ok(i):
                continue
            value = index.objective[i]
            if math.isnan(value) and by_val_loss:
                value = index.val_loss[i]  # a row from before objectives: its val loss
            score = goal.score(value)
            if score is not None and score < held:
                best, held = i, score
        if best is None:
            return None
        row = index.rows([best])[0]
        order = self.hparam_names
        ordered = {n: row.hparams[n] for n in order if n in row.hparams} | row.hparams
        return dataclasses.replace(row, hparams=ordered)


@dataclass(frozen=True)
class Ranking:
    """The configurations of the results table (``results_frame``), best first, as rows of
    the column index: what ``phobbit best`` lists, without building the table.

    Attributes:
        index: the column index they were read from.
        order: per configuration, best first, its latest row (the last rung it reached).
        seconds / first_start: per configuration (iteration, s, id), its segments'
            seconds added up and its first segment's start.
        several: whether the run has several iterations (the trial names say which).
        failed: whether any configuration failed.
        label: the objective's column (``Objective.label``) in the rows of :meth:`top`;
            empty for the val loss, whose column is ``Val Loss``.
    """

    index: ResultsIndex
    order: tuple[int, ...]
    seconds: Mapping[tuple[int, int, int], float]
    first_start: Mapping[tuple[int, int, int], float]
    several: bool
    failed: bool
    label: str

    def __len__(self) -> int:
        return len(self.order)

    @classmethod
    def of(cls, index: ResultsIndex, goal: Objective) -> Ranking:
        """Ranks as ``results_frame`` does: ok first, then the objective (NaN last), then
        iteration, bracket (higher s first) and ID."""
        seconds: dict[tuple[int, int, int], float] = {}
        first: dict[tuple[int, int, int], float] = {}
        latest: dict[tuple[int, int, int], int] = {}
        its, ss, ids, rungs = index.iteration, index.s, index.id, index.rung
        starts, ends, flags = index.start, index.end, index.flags
        # One pass over 100,000 rows: plain array reads, no calls, in results_frame's order.
        for i in index.kept():
            if not flags[i] & FINAL:
                continue  # a failure outside user code: the segment is trained again
            config = (its[i], ss[i], ids[i])
            span = ends[i] - starts[i]
            span = span if span > 0.0 else 0.0
            if config in latest:
                seconds[config] += span
                if starts[i] < first[config]:
                    first[config] = starts[i]
                if rungs[i] > rungs[latest[config]]:
                    latest[config] = i
            else:
                seconds[config], first[config], latest[config] = 0.0 + span, starts[i], i
        column = index.val_loss if goal.is_val_loss else index.objective
        sign = -1.0 if goal.maximize else 1.0
        inf, by_val_loss = math.inf, goal.is_val_loss

        def rank(i: int) -> tuple[bool, float, int, int, int]:
            ok = flags[i] & OK
            value = column[i] if ok or by_val_loss else math.nan
            return (not ok, inf if value != value else sign * value, its[i], -ss[i], ids[i])

        order = tuple(sorted(latest.values(), key=rank))
        return cls(
            index=index,
            order=order,
            seconds=seconds,
            first_start=first,
            several=len({config[0] for config in latest}) > 1,
            failed=any(not flags[i] & OK for i in order),
            label="" if goal.is_val_loss else goal.label,
        )

    def top(self, n: int) -> list[tuple[str, dict[str, Any]]]:
        """The ``n`` best as (trial, row) pairs, the row with the results table's columns
        that ``RepositoryView.best`` reads; decoded from the file."""
        chosen = list(self.order[: max(n, 0)])
        found = []
        for row in self.index.rows(chosen):
            trial = f"{row.s}-{row.id}"
            found.append(
                (
                    f"{row.iteration}:{trial}" if self.several else trial,
                    {
                        "Hparams": row.hparams,
                        "ID": row.id,
                        "Run": row.s,
                        "Val Loss": math.nan if row.val_loss is None else row.val_loss,
                        "Epochs": row.epochs,
                        "Rung": row.rung,
                        "Status": row.status.value,
                        "Error": row.error,
                        "Iteration": row.iteration,
                        "GPU": row.gpu,
                        "Train Time": self.seconds[(row.iteration, row.s, row.id)],
                    }
                    | (
                        {
                            self.label: math.nan
                            if row.objective is None or not row.ok
                            else row.objective
                        }
                        if self.label
                        else {}
                    ),
                )
            )
        return found


def trained_epochs(row: SegmentResult) -> int:
    """The epochs a row's segment trained: ``epochs - start_epoch``, none for a failed one."""
    return max(0, row.epochs - row.start_epoch) if row.ok else 0


def metric_order(names: Sequence[str]) -> list[str]:
    """Metric names as tables show them: ``loss``, ``val_loss``, then each other metric
    followed by its ``val_`` twin, in the order first logged."""
    bases: list[str] = []
    for name in names:
        base = name[4:] if name.startswith("val_") else name
        if base not in bases:
            bases.append(base)
    if "loss" in bases:
        bases.remove("loss")
        bases.insert(0, "loss")
    ordered = []
    for base in bases:
        ordered += [n for n in (base, f"val_{base}") if n in names]
    return ordered


def _devices(rows: Iterable[SegmentResult], pinned: Iterable[str] = ()) -> tuple[str | None, ...]:
    """The devices ``rows`` trained on and the GPUs of ``pinned`` (a driver's slots), GPU
    ids sorted, then None for CPU workers.

    A slot that is no GPU id adds nothing: a Dask driver's slots read ``-1`` while its
    workers pin GPUs on their own hosts, and their rows say which.
    """
    found = {cpu_as_none(row.gpu) for row in rows if row.pid}  # pid 0: the driver wrote it
    found |= {slot for slot in pinned if slot.replace(",", "").isdigit()}
    return (*sorted(d for d in found if d is not None), *([None] if None in found else []))


def cpu_as_none(gpu: str) -> str | None:
    """A row's ``gpu`` for scripts: the GPU id(s), or None for a CPU worker (stored as
    ``"-1"``, or empty for a simulated or in-process one)."""
    return None if gpu in ("-1", "") else gpu


def _count(value: Any) -> int | None:
    """A positive whole number of a JSON record, or None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


def _number(value: Any) -> float | None:
    # bool is an int: a driver.json of {"started": true} says nothing of when.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def open_repository(path: str | os.PathLike) -> RepositoryView:
    """Opens the run in a repository folder, read-only; safe while its driver runs.

    Example:
        >>> run = open_repository("phobbit_repo")
        >>> run.status().driver.describe(), run.best(3)

    Raises:
        RepositoryError: when the folder does not exist, holds no run (no
            ``run.json``), or its ``run.json`` is unreadable or invalid.
    """
    path = Path(path)
    if not path.is_dir():
        raise RepositoryError(f"repository {path} does not exist")
    repository = Repository(path)
    settings = repository.read_settings()
    if settings is None:
        raise RepositoryError(f"{path} holds no phobbit run (it has no run.json)")
    return RepositoryView(repository, settings)
