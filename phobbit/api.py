"""The library API: ``ParallelHyperband(...).run(R, eta)``."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pandas as pd

from phobbit.core.asha import AsynchronousHyperband, asha_budget_epochs
from phobbit.core.budget import Budget, parse_duration
from phobbit.core.dispatch import FifoPolicy, LatestStartPolicy
from phobbit.core.hyperband import StateMachine, SynchronousHyperband
from phobbit.core.objective import Objective
from phobbit.core.plan import Plan
from phobbit.core.records import ALGORITHMS, RunSettings, Tuning
from phobbit.core.samplers import check_sampler, make_sampler
from phobbit.core.space import Hyperparameter, Space
from phobbit.errors import InputError
from phobbit.execution.executor import Executor, LocalExecutor, parse_gpus
from phobbit.execution.scheduler import Reporter, Scheduler
from phobbit.execution.trainable import Trainable
from phobbit.execution.warm import parse_bytes
from phobbit.keras_adapter.backends import check_backend, worker_environment
from phobbit.keras_adapter.trainable import KerasTrainable, check_dataset, staged_dataset
from phobbit.reporting.plain import PlainReporter
from phobbit.storage.decisions import DecisionLog
from phobbit.storage.repository import Repository
from phobbit.storage.results import results_frame

log = logging.getLogger("phobbit")


def _positive_int(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")


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


# What phobbit passes to fit itself: a fit_kwargs entry may not set it.
_FIT_OWN = {
    "x": "the dataset",
    "y": "the dataset",
    "validation_data": "the dataset",
    "epochs": "the schedule (R, eta)",
    "initial_epoch": "the schedule (R, eta)",
    "verbose": "phobbit",
    "callbacks": "callbacks=",
    "batch_size": "batch_size= or a batch_size hyperparameter",
    "steps_per_epoch": "steps_per_epoch= (with generators) or the dataset",
    "validation_steps": "validation_steps= (with generators) or the dataset",
    "validation_split": "the dataset (phobbit validates on its validation data)",
    "validation_freq": "phobbit (every epoch is validated: Hyperband ranks by it)",
}


def _fit_kwargs(fit_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if fit_kwargs is None:
        return {}
    if not isinstance(fit_kwargs, Mapping):
        raise InputError(f"fit_kwargs must be a dict, got {type(fit_kwargs).__name__}")
    for name in fit_kwargs:
        if name in _FIT_OWN:
            raise InputError(f"fit_kwargs may not set {name!r}: it is set by {_FIT_OWN[name]}")
    return dict(fit_kwargs)


def _callbacks(callbacks: Any) -> Any:
    """``callbacks`` checked: None, a function of the hparams, or a list of callbacks."""
    if callbacks is None or callable(callbacks):
        return callbacks
    if not isinstance(callbacks, (list, tuple)):
        raise InputError(
            f"callbacks must be a list of Keras callbacks or a function of the hparams "
            f"returning one, got {type(callbacks).__name__}"
        )
    for callback in callbacks:
        if not callable(getattr(callback, "set_model", None)):
            raise InputError(f"callbacks holds {callback!r}, which is no Keras callback")
    return list(callbacks)


def _fit_hparams(names: Sequence[str], space: Space) -> tuple[str, ...]:
    if isinstance(names, str):
        names = [names]
    known = {hp.name for hp in space.hparams}
    for name in names:
        if name not in known:
            raise InputError(
                f"fit_hparams names {name!r}, which is no hyperparameter (known: "
                f"{', '.join(sorted(known))})"
            )
        if name in _FIT_OWN and name != "batch_size":
            raise InputError(f"fit_hparams may not name {name!r}: it is set by {_FIT_OWN[name]}")
    return tuple(names)


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise InputError(f"segment_timeout must be a number of seconds > 0, got {value!r}")
    if not math.isfinite(value):
        raise InputError(f"segment_timeout must be finite, got {value!r}; give None for none")
    return float(value)


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


WORKER_LOG = "workers.log"


class ParallelHyperband:
    """Hyperband over a pool of GPU-pinned worker processes.

    Args:
        model_function: ``hparams -> compiled keras.Model``; ``hparams`` is a dict
            keyed by the hyperparameters' names.
        hparam_ranges: a list of ``phobbit.Hyperparameter``.
        repo_dir: the repository folder: ``results.csv``, ``run.json``, ``models/``.
            Running again on the same folder resumes the run.
        dataset: ``((x_train, y_train), (x_val, y_val))``, or a function returning
            it that each worker calls once (so large data is never pickled).
        generator_function: Hobbit's generator form instead of ``dataset``: called
            with ``train_gen_args`` and ``valid_gen_args`` (a tuple of positional or a
            dict of keyword arguments) for the training and validation generators.
        steps_per_epoch, validation_steps: batches per epoch, required with generators.
        gpus: GPU ids (``[0, 1, 2, 3]`` or ``"0,1,2,3"``): one worker pinned to each by
            ``CUDA_VISIBLE_DEVICES``. None runs ``n_jobs`` workers on the CPU.
        jobs_per_gpu: trials run at once on one GPU (default 1).
        n_jobs: CPU workers when there are no GPUs (default: the number of cores).
        seed: the same seed gives the same configurations and promotions, whatever
            the number of workers.
        batch_size: passed to ``fit`` with arrays (Keras' default, 32, when None).
        verbose: 0 silent, 1 prints the schedule, the best so far and failures, 2
            every segment too.
        trainable: instead of a Keras model function, any object with the
            ``phobbit.execution.trainable.Trainable`` interface (for non-Keras or synthetic work).
        max_retries: how often a trial whose worker died or that timed out is retried
            (default 2).
        reporter: a progress reporter instead of the plain lines of ``verbose``.
        segment_timeout: seconds one segment may run, counted from when it is handed
            to a free worker (so a worker's start-up and its first TensorFlow import
            count); past it, its worker is killed and the trial is charged like a
            worker death: retried up to ``max_retries`` times, then failed with
            ``timed out after ...``. None (the default) waits for ever; give several
            times the longest segment you expect (the top rung trains R epochs).
        executor: where segments run instead of a local process pool, e.g. a
            ``phobbit.execution.dask.DaskExecutor`` past one machine (``gpus``,
            ``jobs_per_gpu`` and ``n_jobs`` then go to it, not here). It is yours:
            ``run`` leaves it running (and kills only what it had in flight when it
            stops on an error); shut it down when done. The local pool made when
            none is given is shut down at the end of every ``run``.
        keep_best: how many of the best configurations keep the file of their best
            epoch when it is not their last (default 10). The others' are deleted
            as soon as they fall out of the best and are not training, so disk holds
            at most ``keep_best`` of them plus those of configurations in flight;
            ``phobbit best`` names no checkpoint for a configuration without one.
        objective: the logged metric that ranks configurations: ``"val_loss"`` (the
            default), ``"val_accuracy"``, any compiled metric with its ``val_``
            prefix, or a ``(name, direction)`` pair / ``keras_tuner.Objective``.
            A run keeps its objective: resuming with another is refused.
        direction: ``"min"`` or ``"max"``; by default inferred from the name as
            Keras Tuner does (accuracy, AUC, precision, recall ... are maximised).
        callbacks: Keras callbacks for ``fit``: a list, or a function of the
            hparams returning one (called in the worker for every segment). A
            callback that stops training (``EarlyStopping``) ends that
            configuration: its row says "stopped early", it is ranked by its
            objective and never promoted (its place goes to the next best).
        fit_kwargs: more keyword arguments for ``fit`` (``class_weight``,
            ``sample_weight`` ...); not those phobbit sets itself.
        fit_hparams: names of hyperparameters passed to ``fit`` too; one named
            ``batch_size`` always is (with arrays, or a function returning them).
        algorithm: ``"hyperband"`` (the default: exact, synchronous Hyperband) or
            ``"asha"`` (asynchronous successive halving over Hyperband's brackets,
            ``phobbit.core.asha``: no idle worker, but its promotions depend on the order
            of results). ASHA has no natural end: it stops at ``max_epochs`` or
            ``time_limit``, and by default after the epochs ``iterations`` Hyperband
            iterations would train.
        sampler: ``"random"`` (the default: configuration (iteration, s, id) is a
            function of the seed alone) or ``"tpe"`` (BOHB-style model-based
            sampling through Optuna, ``phobbit.core.samplers``; needs ``phobbit[tpe]``).
            A run with ASHA or TPE records its decisions in ``decisions.csv``
            before they train, so a resume repeats them exactly.
        time_limit: stop dispatching after this long on the executor's clock,
            counted from the start of each ``run``: seconds, or text such as
            ``"8h"`` (s, m, h, d). Segments in flight finish. None: no limit.
        max_epochs: stop dispatching once the run (all its invocations) has trained
            or has in flight this many epochs. None: no limit.
            ``run`` says which budget stopped it in ``stopped_by``; running again
            with a larger budget goes on from there (budgets, and ``iterations``,
            are not settings a resume must match).
        tensorboard: write TensorBoard logs under ``repo_dir/tensorboard`` (epoch
            scalars and the HParams dashboard; ``phobbit.reporting.tensorboard``), after
            finished segments (at most every 30 s) and at the end of the run. None
            (the default) writes them when the ``tensorboard`` package is installed;
            True requires it; False never writes them.
        backend: the Keras backend the workers run, ``"tensorflow"``, ``"jax"`` or
            ``"torch"`` (``KERAS_BACKEND`` is set in each worker before Keras is
            imported); None keeps Keras' default (``KERAS_BACKEND`` or TensorFlow).
        worker_log: send the workers' standard error (TensorFlow's start-up lines,
            warnings) to a file instead of this process's stderr (the default), and
            append it to ``repo_dir/workers.log`` when the run ends (not when bad
            input stopped it); False leaves it on this process's stderr. Only for
            the local pool phobbit makes.
        warm_cache: bytes of trained models each worker keeps in memory, so that a
            promoted configuration goes on from memory on the worker that trained
            it instead of rebuilding and loading its checkpoint (``phobbit.execution.warm``):
            an integer or text such as ``"1GB"`` or ``"512MB"``; 0 keeps none.
            None (the default) keeps 1 GiB with Keras (a trainable's own setting
            otherwise). On a GPU the models held keep their GPU memory. The
            checkpoint stays the source of truth: results are bit-identical either
            way. After ``run``, ``warm_starts`` of ``continued`` segments started warm.

    Raises:
        InputError: (a ``ValueError``) for bad input, before anything is written.

    Example:
        >>> tuner = ParallelHyperband(my_model, my_hparam_ranges, "repo", dataset=data,
        ...                           gpus=[0, 1, 2, 3])
        >>> results = tuner.run(R=20, eta=3)
        >>> results.head()
    """

    def __init__(
        self,
        model_function: Callable[[dict[str, Any]], Any] | None,
        hparam_ranges: Sequence[Hyperparameter],
        repo_dir: str | os.PathLike,
        dataset: Any = None,
        generator_function: Callable[..., Any] | None = None,
        train_gen_args: Any = None,
        valid_gen_args: Any = None,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        gpus: str | Sequence[int] | None = None,
        jobs_per_gpu: int = 1,
        n_jobs: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        verbose: int = 1,
        *,
        trainable: Trainable | None = None,
        max_retries: int = 2,
        reporter: Reporter | None = None,
        executor: Executor | None = None,
        keep_best: int = 10,
        segment_timeout: float | None = None,
        objective: Any = "val_loss",
        direction: str | None = None,
        callbacks: Any = None,
        fit_kwargs: Mapping[str, Any] | None = None,
        fit_hparams: Sequence[str] = (),
        algorithm: str = "hyperband",
        sampler: str = "random",
        time_limit: float | str | None = None,
        max_epochs: int | None = None,
        tensorboard: bool | None = None,
        backend: str | None = None,
        worker_log: bool = True,
        warm_cache: int | str | None = None,
    ) -> None:
        self.space = Space(hparam_ranges)
        self.objective = Objective.of(objective, direction)
        if algorithm not in ALGORITHMS:
            raise InputError(
                f"algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, got {algorithm!r}"
            )
        self.algorithm, self.sampler = algorithm, check_sampler(sampler)
        self.time_limit = parse_duration(time_limit, "time_limit")
        Budget(max_epochs=max_epochs)  # checks it
        self.max_epochs = max_epochs
        self.stopped_by: str | None = None
        self._budget = Budget()
        warm_bytes = None if warm_cache is None else parse_bytes(warm_cache, "warm_cache")
        self.warm_starts = self.continued = 0
        if repo_dir is None or str(repo_dir) == "":
            raise InputError("repo_dir is required: the folder where results and models go")
        self.repository = Repository(repo_dir)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise InputError(f"seed must be an integer >= 0, got {seed!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InputError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        _positive_int("batch_size", batch_size)
        if isinstance(keep_best, bool) or not isinstance(keep_best, int) or keep_best < 0:
            raise InputError(f"keep_best must be an integer >= 0, got {keep_best!r}")
        self.seed, self.max_retries, self.verbose = int(seed), max_retries, verbose
        self.keep_best = keep_best
        self.worker_log = bool(worker_log)
        self.tensorboard = _tensorboard_wanted(tensorboard)
        self.reporter = reporter
        if executor is not None and (gpus is not None or n_jobs is not None):
            raise InputError("give gpus/n_jobs to the executor, not beside it")
        # The executor it makes is its own to shut down after each run; one it is given
        # stays up for its owner (several runs may share a Dask client's workers).
        self._owns_executor = executor is None
        self.backend = check_backend(backend)
        self.executor = executor or LocalExecutor(
            parse_gpus(gpus),
            jobs_per_gpu,
            n_jobs,
            env=worker_environment(self.backend),
        )
        self.segment_timeout = _timeout(segment_timeout)
        if self.segment_timeout is not None and not self.executor.supports_timeout:
            raise InputError(
                f"segment_timeout cannot be used with {type(self.executor).__name__}: it "
                "cannot kill one worker (Dask workers must run under a nanny, as "
                "`dask worker` starts them, not LocalCluster(processes=False))"
            )
        self._dataset = None
        if trainable is not None:
            if model_function is not None:
                raise InputError("give model_function or trainable, not both")
            if not isinstance(trainable, Trainable):
                raise InputError(f"trainable {trainable!r} has no train() method")
            if callbacks is not None or fit_kwargs or fit_hparams:
                raise InputError(
                    "callbacks, fit_kwargs and fit_hparams go to Keras' fit; a trainable "
                    "trains itself: give them to it"
                )
            self.trainable: Trainable | None = _with_warm_bytes(
                _with_objective(trainable, self.objective), warm_bytes
            )
            return
        if not callable(model_function):
            raise InputError(f"model_function must be a function, got {model_function!r}")
        self.trainable = None
        kwargs: dict[str, Any] = {
            "model_function": model_function,
            "batch_size": batch_size,
            "verbose": 0,
            "objective": self.objective,
            "callbacks": _callbacks(callbacks),
            "fit_kwargs": _fit_kwargs(fit_kwargs),
            "fit_hparams": _fit_hparams(fit_hparams, self.space),
        }
        if warm_bytes is not None:
            kwargs["warm_bytes"] = warm_bytes
        if self.backend is not None:
            kwargs["backend"] = self.backend
        if generator_function is not None:
            if dataset is not None:
                raise InputError("give dataset or generator_function, not both")
            if not callable(generator_function):
                raise InputError(
                    f"generator_function must be a function, got {generator_function!r}"
                )
            _positive_int("steps_per_epoch", steps_per_epoch, allow_none=False)
            _positive_int("validation_steps", validation_steps, allow_none=False)
            kwargs.update(
                generator_function=generator_function,
                train_gen_args=train_gen_args,
                valid_gen_args=valid_gen_args,
                steps_per_epoch=steps_per_epoch,
                validation_steps=validation_steps,
            )
        elif callable(dataset):
            kwargs["load_dataset"] = dataset
        elif dataset is not None:
            if check_dataset(dataset) != "arrays":
                raise InputError(
                    "dataset of tf.data datasets or PyDatasets must come from a function "
                    "that returns them (each worker calls it): dataset=make_datasets"
                )
            self._dataset = dataset
        else:
            raise InputError(
                "no data: give dataset=((x_train, y_train), (x_val, y_val)), a function "
                "returning it, or generator_function with steps_per_epoch and validation_steps"
            )
        self._keras_kwargs = kwargs

    def run(self, R: int = 20, eta: int = 3, iterations: int = 1) -> pd.DataFrame:
        """Runs Hyperband and returns the results table.

        Args:
            R: the most epochs a configuration is trained.
            eta: the cut factor: each rung keeps the best 1/eta.
            iterations: how many Hyperband iterations (each with its own configurations).

        Returns:
            One row per configuration, best objective first: index ``"<run>-<id>"``,
            columns ``Hparams``, ``ID``, ``Run``, ``Val Loss`` (then the objective's,
            e.g. ``Val Accuracy``, when it is not the val loss), ``Epochs``, ``Rung``,
            ``Status``, ``Error``, ``Iteration``, ``GPU``, ``Train Time``, ``Start``, ``End``.

        Raises:
            InputError: for bad R, eta or iterations, or a repository of another run.
        """
        settings = RunSettings.of(
            self.space, R, eta, self.seed, iterations, self.objective, self.algorithm, self.sampler
        )
        R, eta, iterations = settings.R, settings.eta, settings.iterations
        self.repository.check_settings(settings)
        reporter = self.reporter or PlainReporter(verbose=self.verbose)
        if self.tensorboard:
            from phobbit.reporting.tensorboard import LoggingReporter

            reporter = LoggingReporter(reporter, self.repository.path)
        made = self.repository.fresh()
        with ExitStack() as stack:
            fence = stack.enter_context(self.repository.driver_lock())
            # Bad input a worker finds (a dataset function's result) leaves a new folder as it was.
            stack.enter_context(self.repository.undone_on_bad_input(made))
            self.repository.create(settings)
            plan, budget = self._plan(settings)
            self._budget = budget
            trainable = self.trainable
            if trainable is None:
                kwargs = dict(self._keras_kwargs)
                if self._dataset is not None:
                    # Workers on other hosts cannot read this one's /tmp: stage beside the repo.
                    shared = self.executor.stages_data_in_repository
                    folder = stack.enter_context(
                        tempfile.TemporaryDirectory(
                            prefix=".staging-" if shared else "phobbit-",
                            dir=self.repository.path if shared else None,
                        )
                    )
                    kwargs["data_path"] = stack.enter_context(
                        staged_dataset(self._dataset, folder)
                    )
                trainable = KerasTrainable(**kwargs)
            if self._owns_executor:
                if self.worker_log:
                    self._log_workers(stack)
                # Closed first on the way out: before the staged data and the driver lock go.
                stack.push(self._shut_down)
            scheduler = Scheduler(
                trainable,
                plan,
                self.repository,
                self.executor,
                self.max_retries,
                reporter,
                segment_timeout=self.segment_timeout,
                fence=fence,
                keep_best=self.keep_best,
                budget=budget,
            )
            try:
                scheduler.drive()
            finally:
                self.warm_starts, self.continued = scheduler.warm_starts, scheduler.continued
            self.stopped_by = scheduler.stopped_by
            self.repository.prune_best_checkpoints(self.keep_best)
        if self.tensorboard:
            from phobbit.reporting.tensorboard import write_quietly

            write_quietly(self.repository.path)
        frame = self.results()
        frame.attrs.update(
            algorithm=self.algorithm, sampler=self.sampler, stopped_by=self.stopped_by
        )
        return frame

    @property
    def budget(self) -> Budget:
        """What stops the current (or last) ``run`` dispatching (``phobbit.core.budget``), set as
        it starts; ASHA's default is the epochs of ``iterations`` Hyperband iterations."""
        return self._budget

    def stop_reason(self) -> str:
        """What ended the last ``run``, in words: ``max_epochs budget (500 epochs) spent``."""
        if self.stopped_by is None:
            return "not run yet"
        return self._budget.describe(self.stopped_by)

    def _plan(self, settings: RunSettings) -> tuple[Plan, Budget]:
        """The plan of this run (rebuilt from the repository's records on a resume), and
        its budget."""
        R, eta, iterations = settings.R, settings.eta, settings.iterations
        sampler = make_sampler(self.sampler, self.space, self.seed)
        stem = self.repository.checkpoint_stem
        decisions = DecisionLog(self.repository).read()
        workers = self.executor.capacity
        if self.algorithm == "asha":
            machine: StateMachine = AsynchronousHyperband(Tuning(settings, stem), sampler)
            machine.replay(decisions, self.repository.results().values())
            epochs = self.max_epochs
            if epochs is None and self.time_limit is None:
                epochs = asha_budget_epochs(R, eta, iterations)
                budget = Budget(None, epochs, epochs_name="iterations")
            else:
                budget = Budget(self.time_limit, epochs)
            return Plan.of(machine, FifoPolicy(), workers), budget
        recorded = {(d.iteration, d.s, d.id): d.hparams for d in decisions if d.rung == 0}
        machine = SynchronousHyperband(
            Tuning(settings, stem), sampler=sampler if sampler.lazy else None, recorded=recorded
        )
        policy = LatestStartPolicy(machine.schedule, iterations, workers)
        return Plan.of(machine, policy, workers), Budget(self.time_limit, self.max_epochs)

    def _log_workers(self, stack: ExitStack) -> None:
        """Sends the workers' stderr to a file appended to ``repo_dir/workers.log`` at the end.

        The file is temporary until the workers are gone, so that a run stopped by
        bad input leaves the repository as it was.
        """
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="phobbit-log-"))
        temporary = Path(folder) / WORKER_LOG
        assert isinstance(self.executor, LocalExecutor)
        self.executor.stderr_path = str(temporary)

        def keep(kind: type | None, *_: object) -> None:
            self.executor.stderr_path = None
            if (kind is None or not issubclass(kind, InputError)) and temporary.is_file():
                with contextlib.suppress(OSError):  # a log is no reason to fail a run
                    with open(self.repository.path / WORKER_LOG, "ab") as log:
                        log.write(temporary.read_bytes())

        stack.push(keep)

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
        settings = self.repository.read_settings()
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
        from phobbit.storage.view import open_repository

        # A copy a live run cannot replace or delete between finding it and loading it.
        with open_repository(self.repository.path).scoring_copy(trial) as (_, path):
            import keras

            return keras.saving.load_model(path, safe_mode=True)
