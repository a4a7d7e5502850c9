"""A Keras Tuner hypermodel as phobbit trains it, worker side: the model function made of
``build(hp)``, its tunable ``fit(hp, model, ...)``, and the discovery of its space.

Imports no Keras at module level (the driver makes a ``HyperModelFunction`` and sends
it; only workers call it). ``discover_space`` runs in a worker of the run's pool
(``discover_in``), or in a process of its own with the GPUs hidden
(``discover_in_subprocess``), so that the driver never touches a GPU even when the
user's script imported Keras.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from phobbit.core.define_by_run import HyperParameters, Spec, discover
from phobbit.errors import InputError

_PROBE_ROWS = 4  # rows of the arrays a discovery's fit(hp, ...) is shown


def overrides_fit(hypermodel: Any) -> bool:
    """Whether ``hypermodel`` has a ``fit`` of its own (a tunable fit)."""
    fit = getattr(type(hypermodel), "fit", None)
    return fit is not None and getattr(fit, "__qualname__", "") != "HyperModel.fit"


def _build(hypermodel: Any, hp: HyperParameters) -> Any:
    return hypermodel.build(hp) if hasattr(hypermodel, "build") else hypermodel(hp)


class _History:
    """What a discovery's ``model.fit`` returns: nothing was trained."""

    history: dict[str, list[float]] = {}


class _TunedFit:
    """``model.fit`` of a hypermodel with a tunable fit: phobbit's call (its per-epoch data,
    epochs, callbacks) goes through ``hypermodel.fit(hp, model, x, y, **kwargs)``, whose
    own ``model.fit`` call then trains with phobbit's data and the user's options."""

    def __init__(self, hypermodel: Any, hp: HyperParameters, model: Any) -> None:
        self.hypermodel, self.hp, self.model = hypermodel, hp, model
        self.own: dict[str, Any] | None = None  # phobbit's arguments, while the user's fit runs
        self.history: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        original = type(self.model).fit
        if self.own is None:
            self.own = dict(kwargs)
            x = self.own.pop("x", None)
            try:
                self.hypermodel.fit(self.hp, self.model, x, None, **self.own)
            finally:
                self.own = None
            if self.history is None:
                raise ValueError("the hypermodel's fit(hp, model, ...) did not call model.fit")
            return self.history
        # The user's call: phobbit's data is batched already (its batch size is the
        # hyperparameter named batch_size), so only the same batch size may be asked for.
        batch = kwargs.pop("batch_size", None)
        wanted = self.hp.values.get("batch_size")
        if batch is not None and batch != wanted:
            raise ValueError(
                f"fit(hp, ...) asks for batch_size={batch!r}; tune it as "
                "hp.Choice('batch_size', ...) or hp.Int('batch_size', ...): phobbit batches "
                "the arrays itself, by the hyperparameter of that name"
            )
        kwargs.pop("shuffle", None)  # phobbit shuffles every epoch, seeded (see the README)
        merged = {**self.own, **kwargs}
        for name in ("epochs", "initial_epoch", "callbacks"):
            merged[name] = self.own[name]  # the schedule's, and phobbit's saving callbacks
        self.history = original(self.model, *args, **merged)
        return self.history


class HyperModelFunction:
    """``hparams -> compiled model`` made of a hypermodel: phobbit's model function.

    Args:
        hypermodel: a Keras Tuner-style ``HyperModel`` or a ``build_model(hp)`` function.
        specs: the space's hyperparameters as declared (``discover``).
    """

    def __init__(self, hypermodel: Any, specs: Sequence[Spec]) -> None:
        self.hypermodel = hypermodel
        self.specs = [spec.to_dict() for spec in specs]

    def __call__(self, hparams: dict[str, Any]) -> Any:
        hp = HyperParameters.from_specs([Spec.from_dict(s) for s in self.specs], hparams)
        model = _build(self.hypermodel, hp)
        if overrides_fit(self.hypermodel):
            model.fit = _TunedFit(self.hypermodel, hp, model)
        return model

    def __repr__(self) -> str:
        return f"HyperModelFunction({self.hypermodel!r})"


def _head(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _head(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_head(v) for v in value)
    return value[:_PROBE_ROWS] if hasattr(value, "shape") else value


def discover_space(hypermodel: Any, probe: Any = None) -> tuple[list[dict], bool]:
    """The hyperparameters of ``hypermodel``'s build (and its fit, shown ``probe``, a few
    rows of ``(x, y, validation_data)``), as plain data, and whether all paths were run."""
    import keras

    def build(hp: HyperParameters) -> None:
        keras.backend.clear_session()
        model = _build(hypermodel, hp)
        if probe is not None and overrides_fit(hypermodel):
            x, y, validation = probe
            model.fit = lambda *a, **k: _History()
            hypermodel.fit(
                hp, model, x, y, validation_data=validation, epochs=1, callbacks=[], verbose=0
            )

    specs, complete = discover(build)
    keras.backend.clear_session()
    return [spec.to_dict() for spec in specs], complete


def discover_in_subprocess(hypermodel: Any, data: Any = None) -> tuple[list[Spec], bool]:
    """``discover_space`` in a process of its own that sees no GPU (the driver never does).

    Raises:
        InputError: naming what ``build(hp)`` (or ``fit``) raised: nothing can be tuned.
    """
    from joblib.externals.loky import ProcessPoolExecutor

    env = {"CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if "KERAS_BACKEND" in os.environ:
        env["KERAS_BACKEND"] = os.environ["KERAS_BACKEND"]
    with ProcessPoolExecutor(max_workers=1, env=env) as pool:
        return discover_in(pool, hypermodel, data)


def discover_in(executor: Any, hypermodel: Any, data: Any = None) -> tuple[list[Spec], bool]:
    """``discover_space`` run by ``executor`` (anything with ``submit``): a worker of the
    run's own pool, already started and pinned, its Keras imported, so that discovery
    costs no process and no import of its own and the driver never touches a GPU.

    Raises:
        InputError: naming what ``build(hp)`` (or ``fit``) raised: nothing can be tuned.
    """
    probe = None if data is None else tuple(_head(part) for part in data)
    try:
        found, complete = executor.submit(discover_space, hypermodel, probe).result()
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's build: say what it raised
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise InputError(
            f"build(hp) failed while phobbit discovered the search space ({text}); "
            "fix the hypermodel"
        ) from None
    return [Spec.from_dict(s) for s in found], complete
