"""Keras Tuner's front door: a script written for Keras Tuner's ``Hyperband`` runs on phobbit's
pinned pool with only its import changed.

    import phobbit.keras_tuner as kt          # was: import keras_tuner as kt

    tuner = kt.Hyperband(build_model, objective="val_accuracy", max_epochs=27, factor=3,
                         directory="runs", project_name="digits", gpus=[0, 1, 2, 3])
    tuner.search(x, y, validation_split=0.2)
    best = tuner.get_best_models(1)[0]

``build(hp)`` declares define-by-run hyperparameters (``phobbit.core.define_by_run``):
their space is discovered once per ``search`` by running the build in a process that
sees no GPU, then drawn by phobbit's samplers; the trials run in phobbit's workers,
each pinned to its GPU. ``directory/project_name`` is a phobbit repository:
``phobbit status``, ``best``, ``export`` and ``plot`` read it, and a second ``search``
resumes it. An argument phobbit cannot honour is refused in one line naming what to
use instead, never ignored (``REFUSED``).

Imports no Keras (the driver never does); ``get_best_models`` loads Keras in this process.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from phobbit.core.define_by_run import HyperParameters, Spec
from phobbit.core.objective import Objective as _PhobbitObjective
from phobbit.errors import InputError
from phobbit.execution.resources import Resources
from phobbit.keras_adapter.hypermodel import discover_in

__all__ = ["HyperModel", "HyperParameters", "Hyperband", "Objective", "REFUSED"]

REFUSED = {
    "executions_per_trial": "phobbit trains each configuration once; average over seeds "
    "in your own loop, or raise max_epochs",
    "distribution_strategy": "give gpus_per_trial= (a MirroredStrategy over each worker's GPUs)",
    "tuner_id": "phobbit's workers are its own processes: give gpus= or n_jobs=",
    "max_model_size": "phobbit does not skip models by size; narrow the ranges in build(hp)",
    "optimizer": "compile the model in build(hp)",
    "loss": "compile the model in build(hp)",
    "metrics": "compile the model in build(hp)",
    "hyperparameters": "declare every hyperparameter in build(hp) (hp.Fixed for a constant)",
    "tune_new_entries": "declare every hyperparameter in build(hp) (hp.Fixed for a constant)",
    "allow_new_entries": "declare every hyperparameter in build(hp)",
    "max_consecutive_failed_trials": "phobbit goes on after failed trials and lists why "
    "each failed (phobbit best, the Error column)",
    "logger": "phobbit logs to logging.getLogger('phobbit')",
}
"""Keras Tuner's arguments phobbit refuses, each with what to use instead."""

_SEARCH_REFUSED = {
    "validation_freq": "phobbit validates every epoch (Hyperband ranks by it)",
    "steps_per_epoch": "give arrays (phobbit batches them) or use ParallelHyperband",
    "validation_steps": "give arrays (phobbit batches them) or use ParallelHyperband",
    "validation_batch_size": "the batch size validates too",
    "initial_epoch": "the schedule sets it (max_epochs, factor)",
}


# ParallelHyperband's keywords that shape the local pool (``Resources``), which ``search``
# starts before the space is known, to discover it in one of its workers.
_POOL_FIELDS = ("jobs_per_gpu", "gpus_per_trial", "worker_log", "segment_timeout")


class Objective:
    """What ranks trials, as Keras Tuner names it: a logged metric and its direction.

    Args:
        name: a metric the model logs per epoch (``"val_accuracy"``).
        direction: ``"min"`` or ``"max"``.
    """

    def __init__(self, name: str, direction: str) -> None:
        self.name, self.direction = name, direction

    def __repr__(self) -> str:
        return f"Objective(name={self.name!r}, direction={self.direction!r})"


class HyperModel:
    """A model with tunable hyperparameters: subclass it and define ``build(hp)``, and
    ``fit(hp, model, *args, **kwargs)`` to tune the batch size or ``fit``'s options.

    ``fit`` runs in the worker. Its ``model.fit(*args, **kwargs)`` call trains on
    phobbit's data (the arrays batched by the hyperparameter named ``batch_size``,
    shuffled every epoch in a seeded order) with the schedule's epochs and phobbit's
    callbacks; its other keyword arguments (``class_weight`` ...) go to Keras.
    """

    def __init__(self, name: str | None = None, tunable: bool = True) -> None:
        self.name, self.tunable = name, tunable

    def build(self, hp: HyperParameters) -> Any:
        """A compiled Keras model of the values ``hp`` gives."""
        raise NotImplementedError("define build(hp) in your HyperModel")

    def fit(self, hp: HyperParameters, model: Any, *args: Any, **kwargs: Any) -> Any:
        """Trains ``model``: ``model.fit(*args, **kwargs)`` unless overridden."""
        return model.fit(*args, **kwargs)


def _check_hypermodel(hypermodel: Any) -> Any:
    if isinstance(hypermodel, type) and issubclass(hypermodel, HyperModel):
        hypermodel = hypermodel()
    if hypermodel is None or not (
        callable(getattr(hypermodel, "build", None)) or callable(hypermodel)
    ):
        raise InputError(
            f"hypermodel must be a build_model(hp) function or a HyperModel, got {hypermodel!r}"
        )
    return hypermodel


def _split(x: Any, y: Any, fraction: float) -> tuple[Any, Any]:
    """``((x_train, y_train), (x_val, y_val))`` split as Keras' ``fit(validation_split=)``
    splits: the last ``fraction`` of the rows, before any shuffling."""
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0 < fraction < 1
    ):
        raise InputError(f"validation_split must be a number in (0, 1), got {fraction!r}")

    def rows(value: Any) -> int:
        if isinstance(value, dict):
            return rows(next(iter(value.values())))
        if isinstance(value, (list, tuple)):
            return rows(value[0])
        return int(value.shape[0])

    def cut(value: Any, part: slice) -> Any:
        if isinstance(value, dict):
            return {k: cut(v, part) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(cut(v, part) for v in value)
        return value[part]

    count = rows(x)
    split_at = int(math.floor(count * (1.0 - fraction)))
    if split_at in (0, count):
        raise InputError(
            f"validation_split={fraction} of {count} rows leaves no training or no "
            "validation rows; give a larger or smaller fraction"
        )
    train, val = slice(None, split_at), slice(split_at, None)
    return (cut(x, train), cut(y, train)), (cut(x, val), cut(y, val))


class Hyperband:
    """Keras Tuner's ``Hyperband`` on phobbit: the same arguments, trials in parallel.

    Args:
        hypermodel: a ``build_model(hp)`` function or a ``HyperModel`` (or its class).
        objective: a metric name (``"val_accuracy"``; the direction is inferred as Keras
            Tuner infers it), an ``Objective``, or None for ``val_loss``.
        max_epochs: R, the most epochs a configuration trains. Default 100.
        factor: eta, the cut factor. Default 3.
        hyperband_iterations: passes over all brackets. Default 1.
        seed: the seed of the configurations (None: 0, so runs repeat).
        max_retries_per_trial: how often a trial whose worker died is retried. Default 0.
        directory, project_name: the repository is ``directory/project_name``
            (default ``./untitled_project``); a second ``search`` on it resumes it.
        overwrite: delete that folder first. Default False.
        gpus: phobbit's: GPU ids, one worker pinned to each (``[0, 1, 2, 3]``).
        n_jobs: phobbit's: CPU workers when no GPU is given.
        **phobbit_options: more of ``ParallelHyperband``'s keywords (``jobs_per_gpu``,
            ``sampler`` via ``search=Search(...)``, ``time_limit`` ...).

    Raises:
        InputError: for an argument of ``REFUSED``, naming what to use instead.
    """

    def __init__(
        self,
        hypermodel: Any = None,
        objective: Any = None,
        max_epochs: int = 100,
        factor: int = 3,
        hyperband_iterations: int = 1,
        seed: int | None = None,
        max_retries_per_trial: int = 0,
        directory: str | os.PathLike | None = None,
        project_name: str | None = None,
        overwrite: bool = False,
        gpus: Any = None,
        n_jobs: int | None = None,
        executions_per_trial: int = 1,
        **phobbit_options: Any,
    ) -> None:
        if executions_per_trial != 1:
            raise InputError(
                f"executions_per_trial={executions_per_trial!r} is not supported: "
                f"{REFUSED['executions_per_trial']}"
            )
        for name in phobbit_options:
            if name in REFUSED:
                raise InputError(f"{name}= is not supported by phobbit: {REFUSED[name]}")
        self.hypermodel = _check_hypermodel(hypermodel)
        self.objective = objective if objective is not None else "val_loss"
        _PhobbitObjective.of(self.objective)  # a bad objective stops here, in one line
        self.max_epochs, self.factor = max_epochs, factor
        self.hyperband_iterations = hyperband_iterations
        self.seed = 0 if seed is None else seed
        self.max_retries = max_retries_per_trial
        self.project_dir = Path(directory or ".") / (project_name or "untitled_project")
        self.overwrite = overwrite
        self.gpus, self.n_jobs = gpus, n_jobs
        self.phobbit_options = phobbit_options
        self.specs: list[Spec] | None = None
        self.tuner: Any = None

    # -- the space -------------------------------------------------------------------------

    def _discover(self, data: Any = None) -> list[Spec]:
        from phobbit.keras_adapter.hypermodel import discover_in_subprocess

        return self._found(discover_in_subprocess(self.hypermodel, data))

    @staticmethod
    def _found(discovered: tuple[list[Spec], bool]) -> list[Spec]:
        """The specs discovered, with a warning when build(hp) had paths left unrun."""
        specs, complete = discovered
        if not complete:
            import logging

            logging.getLogger("phobbit").warning(
                "build(hp) has more code paths than phobbit ran to discover its space; "
                "hyperparameters declared only on the others keep their defaults"
            )
        return specs

    def search_space_summary(self, extended: bool = False) -> None:
        """Prints the search space (discovered now when ``search`` has not run)."""
        if self.specs is None:
            self.specs = self._discover()
        print(HyperParameters.from_specs(self.specs).summary())

    # -- searching -------------------------------------------------------------------------

    def search(
        self,
        x: Any = None,
        y: Any = None,
        *,
        epochs: int | None = None,
        validation_data: Any = None,
        validation_split: float | None = None,
        callbacks: Sequence[Any] | None = None,
        batch_size: int | None = None,
        verbose: int = 1,
        **fit_kwargs: Any,
    ) -> Any:
        """Tunes on ``(x, y)``, validating on ``validation_data`` or the last
        ``validation_split`` of the arrays (split once, as Keras' ``fit`` splits).

        ``epochs`` is ignored as in Keras Tuner's Hyperband: the schedule (max_epochs,
        factor) sets every trial's epochs. Returns the results table.

        Raises:
            InputError: for bad input, before any training.
        """
        for name in fit_kwargs:
            if name in _SEARCH_REFUSED:
                raise InputError(f"search({name}=) is not supported: {_SEARCH_REFUSED[name]}")
        if x is None or y is None:
            raise InputError(
                "search(x, y, ...) needs the arrays x and y (tf.data: use ParallelHyperband)"
            )
        if validation_data is not None and validation_split is not None:
            raise InputError("give validation_data or validation_split, not both")
        if validation_data is None and validation_split is None:
            raise InputError(
                "Hyperband ranks by validation: give validation_data=(x_val, y_val) or "
                "validation_split=0.2"
            )
        if validation_split is not None:
            train, validation = _split(x, y, validation_split)
        else:
            if not isinstance(validation_data, (list, tuple)) or len(validation_data) != 2:
                raise InputError("validation_data must be (x_val, y_val)")
            train, validation = (x, y), tuple(validation_data)
        data = (train[0], train[1], validation)
        options = dict(self.phobbit_options)
        resources: dict[str, Any] = {"gpus": self.gpus, "n_jobs": self.n_jobs}
        resources["max_retries"] = self.max_retries
        resources = {k: v for k, v in resources.items() if v is not None}
        run = functools.partial(
            self._run, train, validation, callbacks, batch_size, fit_kwargs, verbose
        )
        if "executor" in options or "resources" in options:
            # An executor of the user's: its workers are theirs; discover beside them.
            self.specs = self._discover(data)
            self._overwrite()
            return run({**resources, **options})
        for name in _POOL_FIELDS:
            if name in options:
                resources[name] = options.pop(name)
        pool = Resources(**resources)  # bad resources stop here, before any process
        with ExitStack() as stack:
            executor = self._start_pool(pool, options.get("backend"), stack)
            # The space is found in a worker of the pool that will train (pinned, its
            # Keras imported as it started), while the other workers import theirs.
            self.specs = self._found(discover_in(executor, self.hypermodel, data))
            self._overwrite()
            given = dataclasses.replace(
                pool, gpus=None, n_jobs=None, jobs_per_gpu=1, gpus_per_trial=1, executor=executor
            )
            return run({"resources": given, **options})

    def _start_pool(self, pool: Any, backend: Any, stack: ExitStack) -> Any:
        """The local pool of ``pool`` (``Resources``), started with Keras preloaded
        (``phobbit.api.start_pool``), its shutdown and workers' log on ``stack``."""
        from phobbit.api import start_pool

        return start_pool(pool, backend, self.project_dir, stack)

    def _overwrite(self) -> None:
        if self.overwrite and self.project_dir.is_dir():
            shutil.rmtree(self.project_dir)  # as Keras Tuner does; only once the space is found

    def _run(
        self,
        train: Any,
        validation: Any,
        callbacks: Sequence[Any] | None,
        batch_size: int | None,
        fit_kwargs: dict[str, Any],
        verbose: int,
        options: dict[str, Any],
    ) -> Any:
        from phobbit.api import ParallelHyperband
        from phobbit.keras_adapter.hypermodel import HyperModelFunction

        assert self.specs is not None
        self.tuner = ParallelHyperband(
            HyperModelFunction(self.hypermodel, self.specs),
            HyperParameters.from_specs(self.specs).to_space().hparams,
            str(self.project_dir),
            (train, validation),
            objective=self.objective,
            seed=self.seed,
            callbacks=list(callbacks) if callbacks else None,
            batch_size=batch_size,
            fit_kwargs=fit_kwargs or None,
            verbose=verbose,
            **options,
        )
        return self.tuner.run(
            R=self.max_epochs, eta=self.factor, iterations=self.hyperband_iterations
        )

    # -- results ---------------------------------------------------------------------------

    def _view(self) -> Any:
        from phobbit.storage.view import open_repository

        return open_repository(self.project_dir)

    def get_best_hyperparameters(self, num_trials: int = 1) -> list[HyperParameters]:
        """The ``num_trials`` best configurations, best first, as ``HyperParameters``
        (``.values``, ``.get``)."""
        best = self._view().best(num_trials)
        return [HyperParameters.from_specs(self.specs or [], dict(b.hparams)) for b in best]

    def get_best_models(self, num_models: int = 1) -> list[Any]:
        """The ``num_models`` best models, best first, each loaded from the file of its
        best epoch (it evaluates to the listed score on the validation data). Loads Keras
        in this process."""
        from phobbit.keras_adapter.saving import load_model

        view, models = self._view(), []
        for best in view.best(num_models):
            with view.scoring_copy(best.trial) as (_, path):
                models.append(load_model(path))
        return models

    def results_summary(self, num_trials: int = 10) -> None:
        """Prints the ``num_trials`` best trials, as Keras Tuner's ``results_summary``."""
        view = self._view()
        objective = _PhobbitObjective.of(self.objective)
        lines = [
            "Results summary",
            f"Results in {self.project_dir}",
            f"Showing {num_trials} best trials",
            f"Objective(name={objective.name!r}, direction={objective.direction!r})",
        ]
        for best in view.best(num_trials):
            lines += ["", f"Trial {best.trial} summary", "Hyperparameters:"]
            lines += [f"{name}: {value}" for name, value in best.hparams.items()]
            lines.append(f"Score: {best.objective}")
        print("\n".join(lines))

    @property
    def project_directory(self) -> str:
        """The repository folder (Keras Tuner's ``directory/project_name``)."""
        return str(self.project_dir)
