"""What trains with Keras, as the driver gives it: ``KerasFit``, the model function, its data
and the options of ``fit``, checked once before any work starts.

Imports no Keras and no TensorFlow (the driver never does). A run hands its
workers a ``KerasTraining``: the same options with the data as each worker reads
it (a staged file, a function it calls, or generators) and the run's objective;
its ``train`` builds the worker-side ``phobbit.keras_adapter.trainable.KerasTrainable``
inside the worker.

Example:
    >>> fit = KerasFit(my_model, dataset=load_data, batch_size=64, callbacks=make_callbacks)
    >>> ParallelHyperband(None, my_hparam_ranges, "repo", trainable=fit).run(R=27, eta=3)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from phobbit.core.objective import Objective
from phobbit.core.space import Space
from phobbit.core.units import check_int
from phobbit.errors import InputError
from phobbit.execution.warm import parse_bytes
from phobbit.keras_adapter.backends import check_backend
from phobbit.keras_adapter.data import check_dataset

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


@dataclass(frozen=True)
class KerasFit:
    """A Keras model function, its data and the options of ``fit``: what trains.

    Exactly one data form is given: ``dataset`` (arrays or a function), or
    ``generator_function`` with its arguments and step counts. Everything is
    checked when it is made; nothing here imports Keras.

    Args:
        model_function: ``hparams -> compiled keras.Model``; ``hparams`` is a dict
            keyed by the hyperparameters' names. Required.
        dataset: ``((x_train, y_train), (x_val, y_val))`` (inputs may be a dict or
            tuple of arrays), written once to a file each worker memory-maps; or a
            function returning it, or ``(train, validation)`` ``tf.data`` datasets or
            ``PyDataset``s, that each worker calls once (so large data is never
            pickled). Default None (then ``generator_function`` is required).
        generator_function: Hobbit's generator form instead of ``dataset``:
            ``generator_function(*train_gen_args)`` and
            ``generator_function(*valid_gen_args)`` give the training and validation
            generators (a dict of args is passed as keywords). Default None.
        train_gen_args, valid_gen_args: the generators' arguments. Default None.
        steps_per_epoch, validation_steps: batches per epoch, required with
            generators (integers >= 1). Default None.
        batch_size: passed to ``fit`` with arrays (Keras' default, 32, when None);
            a hyperparameter named ``batch_size`` overrides it. Default None.
        callbacks: Keras callbacks for ``fit``: a list, or a function of the hparams
            returning one (called in the worker for every segment). A callback that
            stops training (``EarlyStopping``) ends that configuration: its row says
            "stopped early" and it is never promoted. Default None.
        fit_kwargs: more keyword arguments for ``fit`` (``class_weight``,
            ``sample_weight`` ...); not those phobbit sets itself. Default None ({}).
        fit_hparams: names of hyperparameters passed to ``fit`` too (a name or a
            sequence of names); one named ``batch_size`` always is. Default ().
        warm_cache: bytes of trained models each worker keeps in memory
            (``phobbit.execution.warm``): an integer or text such as ``"1GB"`` or
            ``"512MB"``; 0 keeps none; stored as an integer. None (the default)
            keeps 1 GiB. Results are bit-identical either way.
        backend: the Keras backend the workers run, ``"tensorflow"``, ``"jax"`` or
            ``"torch"`` (``KERAS_BACKEND`` is set in each worker before Keras is
            imported); None (the default) keeps Keras' default.

    Raises:
        InputError: (a ``ValueError``) naming the field that is wrong.
    """

    model_function: Callable[[dict[str, Any]], Any]
    dataset: Any = field(default=None, hash=False)
    generator_function: Callable[..., Any] | None = None
    train_gen_args: Any = field(default=None, hash=False)
    valid_gen_args: Any = field(default=None, hash=False)
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    batch_size: int | None = None
    callbacks: Any = field(default=None, hash=False)
    fit_kwargs: Mapping[str, Any] | None = field(default=None, hash=False)
    fit_hparams: Sequence[str] = ()
    warm_cache: int | str | None = None
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.warm_cache is not None:
            object.__setattr__(self, "warm_cache", parse_bytes(self.warm_cache, "warm_cache"))
        check_int("batch_size", self.batch_size, minimum=1, allow_none=True)
        check_backend(self.backend)
        if not callable(self.model_function):
            raise InputError(f"model_function must be a function, got {self.model_function!r}")
        object.__setattr__(self, "callbacks", _callbacks(self.callbacks))
        object.__setattr__(self, "fit_kwargs", _fit_kwargs(self.fit_kwargs))
        names = [self.fit_hparams] if isinstance(self.fit_hparams, str) else self.fit_hparams
        object.__setattr__(self, "fit_hparams", tuple(names))
        if self.generator_function is not None:
            if self.dataset is not None:
                raise InputError("give dataset or generator_function, not both")
            if not callable(self.generator_function):
                raise InputError(
                    f"generator_function must be a function, got {self.generator_function!r}"
                )
            check_int("steps_per_epoch", self.steps_per_epoch, minimum=1)
            check_int("validation_steps", self.validation_steps, minimum=1)
        elif self.dataset is None:
            raise InputError(
                "no data: give dataset=((x_train, y_train), (x_val, y_val)), a function "
                "returning it, or generator_function with steps_per_epoch and validation_steps"
            )
        elif not callable(self.dataset) and check_dataset(self.dataset) != "arrays":
            raise InputError(
                "dataset of tf.data datasets or PyDatasets must come from a function "
                "that returns them (each worker calls it): dataset=make_datasets"
            )

    @property
    def staged(self) -> bool:
        """Whether the data is arrays in this process, to be written to a file for workers."""
        return self.generator_function is None and not callable(self.dataset)

    def check_space(self, space: Space) -> None:
        """Checks ``fit_hparams`` against the run's hyperparameters.

        Raises:
            InputError: for a name that is no hyperparameter, or one phobbit sets itself.
        """
        known = {hp.name for hp in space.hparams}
        for name in self.fit_hparams:
            if name not in known:
                raise InputError(
                    f"fit_hparams names {name!r}, which is no hyperparameter (known: "
                    f"{', '.join(sorted(known))})"
                )
            if name in _FIT_OWN and name != "batch_size":
                raise InputError(
                    f"fit_hparams may not name {name!r}: it is set by {_FIT_OWN[name]}"
                )

    def options(self, objective: Objective) -> dict[str, Any]:
        """The worker-side trainable's settings for a run ranked by ``objective``, but the data."""
        options: dict[str, Any] = {
            "model_function": self.model_function,
            "batch_size": self.batch_size,
            "verbose": 0,
            "objective": objective,
            "callbacks": self.callbacks,
            "fit_kwargs": dict(self.fit_kwargs or {}),
            "fit_hparams": tuple(self.fit_hparams),
        }
        if self.warm_cache is not None:
            options["warm_bytes"] = self.warm_cache
        if self.backend is not None:
            options["backend"] = self.backend
        if self.generator_function is not None:
            options.update(
                generator_function=self.generator_function,
                train_gen_args=self.train_gen_args,
                valid_gen_args=self.valid_gen_args,
                steps_per_epoch=self.steps_per_epoch,
                validation_steps=self.validation_steps,
            )
        elif callable(self.dataset):
            options["load_dataset"] = self.dataset
        return options


@dataclass(frozen=True)
class KerasTraining:
    """What a run sends its workers to train with Keras: a ``Trainable``.

    Attributes:
        options: the keyword arguments of the worker-side ``KerasTrainable``
            (``KerasFit.options``, with ``data_path`` when the arrays were staged).
    """

    options: Mapping[str, Any] = field(hash=False)

    @property
    def objective(self) -> Objective:
        """What ranks epochs (the worker keeps the best epoch by it)."""
        objective: Objective = self.options["objective"]
        return objective

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> Sequence[float]:
        """Trains in the worker (``phobbit.execution.trainable.Trainable.train``)."""
        from phobbit.keras_adapter.trainable import KerasTrainable

        return KerasTrainable(**self.options).train(hparams, checkpoint, initial_epoch, epochs)

    def preflight(self, hparams: dict[str, Any]) -> None:
        """Checks the data against the model in the worker (``ChecksInput``)."""
        from phobbit.keras_adapter.trainable import KerasTrainable

        KerasTrainable(**self.options).preflight(hparams)
