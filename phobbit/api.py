"""The library API: ``ParallelHyperband(...).run(R, eta)``.

The tuner receives what it configures as objects, Optuna-style: the search
(``phobbit.core.search.Search``), the resources
(``phobbit.execution.resources.Resources`` or an ``Executor``), what trains
(``phobbit.keras_adapter.fit.KerasFit`` or any ``Trainable``) and the budget
(``phobbit.core.budget.Budget``). The flat keywords of earlier versions
(``gpus=``, ``callbacks=``, ``algorithm=`` ...) are still taken: ``_FLAT`` says
which object and field each one fills.

The driver imports no Keras: of the Keras adapter, only ``fit`` (what trains),
``data`` (the dataset's check and staging) and ``backends``; workers build the
Keras trainable from the ``KerasTraining`` the run sends them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import pandas as pd

from phobbit.core.budget import Budget, parse_duration
from phobbit.core.objective import Objective
from phobbit.core.records import RunSettings, Tuning
from phobbit.core.search import Search
from phobbit.core.space import Hyperparameter, Space
from phobbit.core.units import check_int
from phobbit.errors import InputError, RepositoryError
from phobbit.execution import worker_log
from phobbit.execution.executor import Executor, LocalExecutor
from phobbit.execution.resources import Resources
from phobbit.execution.scheduler import Reporter, Scheduler
from phobbit.execution.trainable import Trainable
from phobbit.execution.warm import parse_bytes
from phobbit.keras_adapter.backends import backend_name, check_backend, worker_environment
from phobbit.keras_adapter.data import staged_dataset
from phobbit.keras_adapter.fit import KerasFit, KerasTraining
from phobbit.reporting.plain import PlainReporter
from phobbit.storage.decisions import DecisionLog
from phobbit.storage.repository import Repository
from phobbit.storage.results import results_frame

log = logging.getLogger("phobbit")

# The flat keywords ParallelHyperband takes beside its objects: each fills this field of
# the object given by this parameter (a keyword and its object together are refused).
_FLAT: dict[str, tuple[str, str]] = {
    **{
        name: ("trainable", name)
        for name in (
            "generator_function",
            "train_gen_args",
            "valid_gen_args",
            "steps_per_epoch",
            "validation_steps",
            "batch_size",
            "callbacks",
            "fit_kwargs",
            "fit_hparams",
            "warm_cache",
            "backend",
        )
    },
    **{
        name: ("resources", name)
        for name in (
            "gpus",
            "jobs_per_gpu",
            "gpus_per_trial",
            "n_jobs",
            "executor",
            "worker_log",
            "max_retries",
            "segment_timeout",
        )
    },
    "algorithm": ("search", "algorithm"),
    "sampler": ("search", "sampler"),
    "time_limit": ("budget", "time_limit"),
    "max_epochs": ("budget", "max_epochs"),
}
_HOLDER = {
    "trainable": "KerasFit",
    "resources": "Resources",
    "search": "Search",
    "budget": "Budget",
}
# The KerasFit fields that ParallelHyperband takes positionally.
_POSITIONAL_FIT = ("model_function", "dataset")


def _grouped(owner: str, flat: dict[str, Any], parameters: Sequence[str]) -> dict[str, dict]:
    """The flat keywords by the parameter whose object they fill.

    Raises:
        TypeError: for a keyword that is no parameter and no flat keyword, in one line
            that names the nearest one and the object that takes it.
    """
    grouped: dict[str, dict[str, Any]] = {holder: {} for holder in _HOLDER}
    for name, value in flat.items():
        if name not in _FLAT:
            message = f"{owner} got an unexpected keyword {name!r}"
            near = difflib.get_close_matches(name, [*parameters, *_FLAT], n=1)
            if near:
                holder = _FLAT.get(near[0], (None,))[0]
                where = f" ({_HOLDER[holder]}.{near[0]})" if holder else ""
                message += f"; did you mean {near[0]!r}{where}?"
            raise TypeError(message)
        holder, field = _FLAT[name]
        grouped[holder][field] = value
    return grouped


def _refuse_both(holder: str, fields: Sequence[str]) -> None:
    """Refuses fields given as keywords beside the object ``holder`` that holds them."""
    if fields:
        names = ", ".join(fields)
        raise InputError(
            f"{names} {'is a field' if len(fields) == 1 else 'are fields'} of "
            f"{_HOLDER[holder]}: give {'it' if len(fields) == 1 else 'them'} in {holder}= "
            f"or as keywords, not both"
        )


def _budget(value: Any) -> Budget:
    """``value`` (a ``Budget``, None for none) with its ``time_limit`` read as a duration."""
    if value is None:
        return Budget()
    if not isinstance(value, Budget):
        raise InputError(f"budget must be a phobbit Budget, got {type(value).__name__}")
    return Budget(parse_duration(value.time_limit, "time_limit"), value.max_epochs)


def _with_objective(trainable: Trainable, objective: Objective) -> Trainable:
    """``trainable`` set to rank epochs by ``objective`` (a dataclass with such a field)."""
    has_field = dataclasses.is_dataclass(trainable) and any(
        f.name == "objective" for f in dataclasses.fields(trainable)
    )
    if has_field:
        return dataclasses.replace(trainable, objective=objective)  # type: ignore[type-var]
    if not objective.is_val_loss:
        raise InputError(
            f"trainable {type(trainable).__name__} has no objective field, so it cannot "
            f"keep the best epoch by {objective.name!r}; rank by val_loss or give it one"
        )
    return trainable


def _with_warm_bytes(trainable: Trainable, warm_bytes: int | None) -> Trainable:
    """``trainable`` set to keep ``warm_bytes`` of models warm (None: as it is)."""
    if warm_bytes is None:
        return trainable
    has_field = dataclasses.is_dataclass(trainable) and any(
        f.name == "warm_bytes" for f in dataclasses.fields(trainable)
    )
    if not has_field:
        raise InputError(
            f"trainable {type(trainable).__name__} has no warm_bytes field, so warm_cache "
            "cannot apply to it; leave warm_cache out"
        )
    return dataclasses.replace(trainable, warm_bytes=warm_bytes)  # type: ignore[type-var]


def _tensorboard_wanted(value: Any) -> bool:
    """Whether to write TensorBoard logs: ``tensorboard=`` None (if installed), True or False."""
    from phobbit.reporting import tensorboard

    if value is None:
        return tensorboard.available()
    if not isinstance(value, bool):
        raise InputError(f"tensorboard must be True, False or None, got {value!r}")
    if value:
        tensorboard.require()
    return value


KERAS_WORKER = ("keras", "phobbit.keras_adapter.trainable")
"""What a Keras run's workers import as they start (``Executor.start``): Keras with its
backend (5-15 s of TensorFlow, in every worker at once while the driver discovers the space,
checks its input and plans) and the worker-side trainable. Named apart: the trainable
imports Keras only inside its methods, so it alone would leave that import to each worker's
first task, one worker after the other while the driver waits."""


def start_pool(
    resources: Resources,
    backend: str | None,
    repo_dir: str | os.PathLike,
    stack: ExitStack,
    preload: Sequence[str] = KERAS_WORKER,
) -> Executor:
    """Starts the local pool of ``resources`` now, before the tuner that runs on it exists,
    so that its workers import ``preload`` (Keras) while the driver still has work of its
    own to do: load a model file, discover a hypermodel's space in one of those workers.

    Pushes onto ``stack`` the pool's shutdown (a kill on any error: no worker is left
    running) and, with ``resources.worker_log``, the copy of its workers' stderr to
    ``repo_dir/workers.log`` (nothing on bad input). The caller hands the pool to the
    tuner as ``Resources(executor=...)``; it stays the caller's to shut down.

    Raises:
        InputError: for a backend that is not installed.
    """
    # Any: a LocalExecutor, whose stderr_path the base class does not declare.
    executor: Any = resources.make_executor(worker_environment(check_backend(backend)))
    # An exit stack unwinds last in, first out: the pool is pushed last so that it is gone
    # before its log is copied and the log's folder removed (what the workers write as
    # they end is kept).
    if resources.worker_log:
        stack.push(worker_log.capture(executor, repo_dir, stack))
    stack.push(lambda kind, *_: executor.shutdown(kill=kind is not None))
    executor.start(preload)
    return executor


class ParallelHyperband:
    """Hyperband over a pool of GPU-pinned worker processes.

    It takes what it configures as objects: what trains (``trainable``), the
    search (``search``), where it runs (``resources``) and when it stops
    (``budget``). Every flat keyword of earlier versions is still taken and fills
    its object's field (``gpus=[0, 1]`` is ``resources=Resources(gpus=[0, 1])``,
    ``callbacks=...`` a field of the ``KerasFit`` made from ``model_function``
    and ``dataset``, ``algorithm="asha"`` of ``Search``, ``time_limit="8h"`` of
    ``Budget``); a keyword beside the object that holds it is refused.

    Args:
        model_function: ``hparams -> compiled keras.Model``; ``hparams`` is a dict
            keyed by the hyperparameters' names. None when ``trainable`` is given.
        hparam_ranges: a list of ``phobbit.Hyperparameter``.
        repo_dir: the repository folder: ``results.csv``, ``run.json``, ``models/``.
            Running again on the same folder resumes the run.
        dataset: ``((x_train, y_train), (x_val, y_val))``, or a function returning
            it that each worker calls once (so large data is never pickled); see
            ``KerasFit`` for the other forms.
        trainable: what trains: a ``phobbit.KerasFit`` (a model function, its data
            and the options of Keras' ``fit``: ``generator_function``,
            ``train_gen_args``, ``valid_gen_args``, ``steps_per_epoch``,
            ``validation_steps``, ``batch_size``, ``callbacks``, ``fit_kwargs``,
            ``fit_hparams``, ``warm_cache``, ``backend``), or any object with the
            ``phobbit.Trainable`` interface (for non-Keras or synthetic work; of the
            Keras options, ``warm_cache`` and ``backend`` still apply to it). None
            (the default): a ``KerasFit`` of ``model_function``, ``dataset`` and
            those keywords.
        search: a ``phobbit.Search`` (``algorithm``: ``"hyperband"`` or ``"asha"``;
            ``sampler``: ``"random"`` or ``"tpe"``), or the name of an algorithm.
            None (the default): random Hyperband, or the ``algorithm=`` and
            ``sampler=`` keywords.
        resources: ``phobbit.Resources`` (``gpus``, ``jobs_per_gpu``, ``gpus_per_trial``,
            ``n_jobs``, ``executor``, ``worker_log``, ``max_retries``, ``segment_timeout``), or
            an ``Executor`` such as a ``DaskExecutor`` (yours: ``run`` leaves it
            running). None (the default): a local pool of one worker per core, or
            those keywords.
        budget: a ``phobbit.Budget`` (``time_limit``: seconds, or text such as
            ``"8h"``, on the executor's clock from the start of each ``run``;
            ``max_epochs``: epochs the whole run may train). Once one is spent no
            segment is dispatched; those in flight finish. None (the default): no
            limit, or the ``time_limit=`` and ``max_epochs=`` keywords. ``run`` says
            which stopped it in ``stopped_by``; budgets (and ``iterations``) are not
            settings a resume must match.
        objective: the logged metric that ranks configurations: ``"val_loss"`` (the
            default), ``"val_accuracy"``, any compiled metric with its ``val_``
            prefix, or a ``(name, direction)`` pair / ``keras_tuner.Objective``.
            A run keeps its objective: resuming with another is refused.
        direction: ``"min"`` or ``"max"``; by default inferred from the name as
            Keras Tuner does (accuracy, AUC, precision, recall ... are maximised).
        seed: the same seed gives the same configurations and promotions, whatever
            the number of workers (default 0).
        keep_best: how many of the best configurations keep the file of their best
            epoch when it is not their last (default 10). The others' are deleted
            as soon as they fall out of the best and are not training, so disk holds
            at most ``keep_best`` of them plus those of configurations in flight;
            ``phobbit best`` names no checkpoint for a configuration without one.
        tensorboard: write TensorBoard logs under ``repo_dir/tensorboard`` (epoch
            scalars and the HParams dashboard; ``phobbit.reporting.tensorboard``), after
            finished segments (at most every 30 s) and at the end of the run. None
            (the default) writes them when the ``tensorboard`` package is installed;
            True requires it; False never writes them.
        reporter: a progress reporter instead of the plain lines of ``verbose``.
        verbose: 0 silent, 1 (the default) prints the schedule, the best so far and
            failures, 2 every segment too.
        **flat: the flat keywords of earlier versions, each a field of one of the
            objects above (``_FLAT``).

    Raises:
        InputError: (a ``ValueError``) for bad input, before anything is written.
        TypeError: for a keyword it does not take, naming the nearest one.

    Example:
        >>> tuner = ParallelHyperband(
        ...     None, my_hparam_ranges, "repo",
        ...     trainable=KerasFit(my_model, dataset=data, callbacks=my_callbacks),
        ...     search=Search("asha"),
        ...     resources=Resources(gpus=[0, 1, 2, 3]),
        ...     budget=Budget(time_limit=8 * 3600),
        ... )
        >>> results = tuner.run(R=27, eta=3)
        >>> ParallelHyperband(my_model, my_hparam_ranges, "repo", data, gpus=[0, 1])  # flat
    """

    def __init__(
        self,
        model_function: Callable[[dict[str, Any]], Any] | None,
        hparam_ranges: Sequence[Hyperparameter],
        repo_dir: str | os.PathLike,
        dataset: Any = None,
        *,
        trainable: KerasFit | Trainable | None = None,
        search: Search | str | None = None,
        resources: Resources | Executor | None = None,
        budget: Budget | None = None,
        objective: Any = "val_loss",
        direction: str | None = None,
        seed: int = 0,
        keep_best: int = 10,
        tensorboard: bool | None = None,
        reporter: Reporter | None = None,
        verbose: int = 1,
        **flat: Any,
    ) -> None:
        parameters = [*_POSITIONAL_FIT, "hparam_ranges", "repo_dir", *_HOLDER]
        parameters += ["objective", "direction", "seed", "keep_best", "tensorboard"]
        given = _grouped(type(self).__name__, flat, [*parameters, "reporter", "verbose"])
        self.space = Space(hparam_ranges)
        self.objective = Objective.of(objective, direction)
        if search is not None:
            _refuse_both("search", list(given["search"]))
        self.search = Search(**given["search"]) if given["search"] else Search.of(search)
        if budget is not None:
            _refuse_both("budget", list(given["budget"]))
            self._given_budget = _budget(budget)
        else:
            limits = given["budget"]
            time_limit = parse_duration(limits.get("time_limit"), "time_limit")
            self._given_budget = Budget(time_limit, limits.get("max_epochs"))
        self.stopped_by: str | None = None
        self._left_for_resume = 0  # segments to retry that the last run left for the next
        self._budget = Budget()
        self.warm_starts = self.continued = 0
        if repo_dir is None or str(repo_dir) == "":
            raise InputError("repo_dir is required: the folder where results and models go")
        self.repository = Repository(repo_dir)
        self.seed = check_int("seed", seed)
        self.keep_best = check_int("keep_best", keep_best)
        self.verbose = verbose
        self.tensorboard = _tensorboard_wanted(tensorboard)
        self.reporter = reporter
        if resources is not None:
            _refuse_both("resources", list(given["resources"]))
        self.resources = (
            Resources(**given["resources"]) if given["resources"] else Resources.of(resources)
        )
        self.fit: KerasFit | None = None
        self.trainable: Trainable | None = None
        backend = self._what_trains(model_function, dataset, trainable, given["trainable"])
        self._backend = backend_name(backend)
        # The executor it makes is its own to shut down after each run; one it is given
        # stays up for its owner (several runs may share a Dask client's workers).
        self._owns_executor = self.resources.executor is None
        self.executor = self.resources.make_executor(worker_environment(backend))

    def _what_trains(
        self, model_function: Any, dataset: Any, trainable: Any, fields: dict[str, Any]
    ) -> str | None:
        """Sets ``fit`` (Keras) or ``trainable`` (any other); returns the workers' backend."""
        if trainable is None or isinstance(trainable, KerasFit):
            if trainable is None:
                fit = KerasFit(model_function, dataset=dataset, **fields)
            else:
                positional = {"model_function": model_function, "dataset": dataset}
                _refuse_both(
                    "trainable", [n for n, v in positional.items() if v is not None] + list(fields)
                )
                fit = trainable
            fit.check_space(self.space)
            self.fit = fit
            self._keras_kwargs = fit.options(self.objective)
            return fit.backend
        if model_function is not None:
            raise InputError("give model_function or trainable, not both")
        if not isinstance(trainable, Trainable):
            raise InputError(f"trainable {trainable!r} has no train() method")
        if (
            fields.get("callbacks") is not None
            or fields.get("fit_kwargs")
            or (fields.get("fit_hparams"))
        ):
            raise InputError(
                "callbacks, fit_kwargs and fit_hparams go to Keras' fit; a trainable "
                "trains itself: give them to it"
            )
        # Of Keras' options, these two reach any trainable; the data forms are its own.
        warm_cache = fields.get("warm_cache")
        warm_bytes = None if warm_cache is None else parse_bytes(warm_cache, "warm_cache")
        backend = check_backend(fields.get("backend"))
        self.trainable = _with_warm_bytes(_with_objective(trainable, self.objective), warm_bytes)
        return backend

    def run(
        self, R: int = 20, eta: int = 3, iterations: int = 1, retry_failed: bool = False
    ) -> pd.DataFrame:
        """Runs Hyperband and returns the results table.

        Args:
            R: the most epochs a configuration is trained.
            eta: the cut factor: each rung keeps the best 1/eta.
            iterations: how many Hyperband iterations (each with its own configurations).
            retry_failed: train again, in this run, every segment of the repository that
                failed (after a fix to the data or the code), from its configuration's
                last good checkpoint. Its new row supersedes the failed one, which stays
                in ``results.csv``; Hyperband's reducer decides the rung again with it,
                so the promotions are those of a run in which it never failed (see the
                README, "…user code fails"). False (the default): a failed segment is
                final, as it was. An argument of ``run``, not of the tuner: it says
                what this invocation does, not how the run is set up, and a resume
                need not repeat it.

        Returns:
            One row per configuration, best objective first: index ``"<run>-<id>"``,
            columns ``Hparams``, ``ID``, ``Run``, ``Val Loss`` (then the objective's,
            e.g. ``Val Accuracy``, when it is not the val loss), ``Epochs``, ``Rung``,
            ``Status``, ``Error``, ``Iteration``, ``GPU``, ``Train Time``, ``Start``, ``End``.

        Raises:
            InputError: for bad R, eta or iterations, or a repository of another run.
        """
        search = self.search
        settings = RunSettings.of(
            self.space,
            R,
            eta,
            self.seed,
            iterations,
            self.objective,
            search.algorithm,
            search.sampler,
            self.executor.gpus_per_trial,
        )
        R, eta, iterations = settings.R, settings.eta, settings.iterations
        if not isinstance(retry_failed, bool):
            raise InputError(f"retry_failed must be True or False, got {retry_failed!r}")
        # The workers start now and import their framework while the driver checks the
        # repository, stages the data and plans: that work overlaps their start-up instead
        # of preceding it. Bad input from here on shuts them down before it is raised.
        with ExitStack() as workers:
            log = self._start_workers(workers)
            self.repository.check_settings(settings)
            reporter = self.reporter or PlainReporter(
                verbose=self.verbose, budget=lambda: self.budget
            )
            # Lines to print and no best of their own yet (the CLI's seed theirs): a resumed
            # run's lines start from what it recorded.
            plain = reporter if isinstance(reporter, PlainReporter) else None
            if plain is not None and (plain.verbose < 1 or plain.best is not None):
                plain = None
            if self.tensorboard:
                from phobbit.reporting.tensorboard import LoggingReporter

                reporter = LoggingReporter(reporter, self.repository.path)
            made = self.repository.fresh()
            with ExitStack() as stack:
                fence = stack.enter_context(self.repository.driver_lock())
                # What the workers of a driver killed here before wrote (its exit code never
                # ran): into workers.log before this run's own lines.
                worker_log.recover(self.repository.path)
                # Bad input a worker finds (a dataset function's result) leaves a new folder
                # as it was.
                stack.enter_context(self.repository.undone_on_bad_input(made))
                settings = self.repository.create(settings)  # with the run's id
                self.repository.sift()
                recorded = list(self.repository.results().values())
                if plain is not None:
                    plain.seed_best(recorded, settings.goal)
                plan, budget = search.plan(
                    Tuning(settings, self.repository.checkpoint_stem),
                    DecisionLog(self.repository).read(),
                    # Those to retry are left out: ASHA's replay then hands them out again.
                    [r for r in recorded if r.ok or not retry_failed],
                    self.executor.capacity,
                    self._given_budget,
                )
                self._budget = budget
                trainable = self.trainable
                if trainable is None:
                    assert self.fit is not None
                    options = dict(self._keras_kwargs)
                    if self.fit.staged:
                        # Workers on other hosts cannot read this one's /tmp: stage beside
                        # the repo.
                        shared = self.executor.stages_data_in_repository
                        folder = stack.enter_context(
                            tempfile.TemporaryDirectory(
                                prefix=".staging-" if shared else "phobbit-",
                                dir=self.repository.path if shared else None,
                            )
                        )
                        options["data_path"] = stack.enter_context(
                            staged_dataset(self.fit.dataset, folder)
                        )
                    trainable = KerasTraining(options)
                if self._owns_executor:
                    if log is not None:
                        stack.push(log)  # the workers' log, appended under the driver lock
                    # Closed first on the way out: before the staged data and the driver lock go.
                    stack.push(self._shut_down)
                scheduler = Scheduler(
                    trainable,
                    plan,
                    self.repository,
                    self.executor,
                    self.resources.max_retries,
                    reporter,
                    segment_timeout=self.resources.segment_timeout,
                    fence=fence,
                    keep_best=self.keep_best,
                    budget=budget,
                    retry_failed=retry_failed,
                )
                self._budget = scheduler.budget  # with the time earlier invocations used
                # What this driver runs with, for `phobbit status` (ASHA's progress is its
                # budget's, which no other file holds).
                self.repository.lease.describe(fence, self._about(scheduler.budget))
                try:
                    scheduler.drive()
                finally:
                    self.warm_starts, self.continued = scheduler.warm_starts, scheduler.continued
                self.stopped_by = scheduler.stopped_by
                self._left_for_resume = len(scheduler.left_for_resume)
                self.repository.prune_best_checkpoints(self.keep_best)
                # The column index of the rows, brought up to date while the driver still
                # holds the folder: the first `phobbit status`/`best` after a long run then
                # reads it instead of building it (seconds at 100,000 rows).
                with contextlib.suppress(RepositoryError, OSError):
                    self.repository.index()
        if self.tensorboard:
            from phobbit.reporting.tensorboard import write_quietly

            write_quietly(self.repository.path)
        frame = self.results()
        frame.attrs.update(
            algorithm=search.algorithm, sampler=search.sampler, stopped_by=self.stopped_by
        )
        return frame

    def _about(self, budget: Budget) -> dict[str, Any]:
        """What ``driver.json`` records of this run (``DriverLease.describe``): plain data."""
        return {
            "budget": {
                "max_epochs": budget.max_epochs,
                "epochs_name": budget.epochs_name,
                "time_limit": budget.time_limit,
            },
            "backend": self._backend,
            "workers": self.executor.capacity,
            "devices": list(self.executor.slots),
        }

    @property
    def budget(self) -> Budget:
        """What stops the current (or last) ``run`` dispatching (``phobbit.core.budget``), set as
        it starts; ASHA's default is the epochs of ``iterations`` Hyperband iterations."""
        return self._budget

    def stop_reason(self) -> str:
        """What ended the last ``run``, in words: ``max_epochs budget (500 epochs) spent``."""
        if self.stopped_by is None:
            return "not run yet"
        reason = self._budget.describe(self.stopped_by)
        if self._left_for_resume:
            reason += f"; {self._left_for_resume} segment(s) to retry left for the next run"
        return reason

    def _start_workers(self, stack: ExitStack) -> Callable[..., bool] | None:
        """Starts the pool this tuner owns now, its workers importing Keras as they start.

        Pushes onto ``stack`` the pool's shutdown (a kill when the run stops on an
        error, bad input included: no worker is left running) and the temporary file
        of the workers' stderr. Returns the exit callback that appends that file to
        ``repo_dir/workers.log`` (None without one), for the caller to push where
        the driver lock holds.
        """
        if not self._owns_executor:
            return None  # an executor given stays as its owner set it up
        log = self._log_workers(stack) if self.resources.worker_log else None
        stack.push(self._shut_down)
        # The worker-side trainable imports Keras and its backend; another trainable's
        # workers only start.
        self.executor.start(KERAS_WORKER if self.fit is not None else ())
        return log

    def _log_workers(self, stack: ExitStack) -> Callable[..., bool]:
        """Sends the workers' stderr to a temporary file; returns the exit callback that
        appends it to ``repo_dir/workers.log`` (``worker_log.keep``).

        The file is temporary until the workers are gone, so that a run stopped by
        bad input leaves the repository as it was.
        """
        assert isinstance(self.executor, LocalExecutor)
        keep = worker_log.capture(self.executor, self.repository.path, stack)
        stack.callback(setattr, self.executor, "stderr_path", None)
        return keep

    def _shut_down(self, kind: type | None, *_: object) -> None:
        """Shuts down the executor this tuner made; ends its tasks at once on an error."""
        self.executor.shutdown(kill=kind is not None)

    def results(self) -> pd.DataFrame:
        """The results table of what the repository holds now (also mid-run).

        It ranks by the objective of the run in the repository (``run.json``), as
        ``phobbit best`` does: its rows hold that objective's values. A tuner given
        another objective for a repository tuned with one ranks as the repository
        does (its ``run`` is refused there); only a folder that holds no run yet
        ranks by the tuner's own.

        Raises:
            RepositoryError: when ``run.json`` or ``results.csv`` cannot be read.
        """
        settings = self.repository.sift()
        goal = self.objective if settings is None else settings.goal
        return results_frame(self.repository.iter_results(), goal)

    def best_hparams(self, n: int = 1) -> list[dict[str, Any]]:
        """The hyperparameters of the ``n`` best configurations so far, best first."""
        from phobbit.storage.view import open_repository

        return [best.hparams for best in open_repository(self.repository.path).best(n)]

    def best_model(self, trial: str | None = None) -> Any:
        """The best configuration's model (or ``trial``'s, e.g. ``"2-4"``), loaded with
        ``keras.saving.load_model`` from the file of its best epoch.

        It evaluates to the objective and Val Loss the results table lists. Keras is
        imported in this process.

        Raises:
            RepositoryError: when no configuration succeeded, ``trial`` is not in the
                table, or no file holds that epoch any more (``keep_best``).
        """
        from phobbit.keras_adapter.saving import load_model
        from phobbit.storage.view import open_repository

        # A copy a live run cannot replace or delete between finding it and loading it.
        with open_repository(self.repository.path).scoring_copy(trial) as (_, path):
            return load_model(path)
