"""Model files: a plain Python file that defines the model function, the search space and data.

The CLI loads the file by path in the driver to read its hyperparameters and
data settings, and hands the workers *references* to its functions
(``ModelFileRef(path, attr)``): a reference pickles as two strings, and calling
it imports the file by path in the worker, once per process. Functions defined
in the file therefore work in worker processes, and nothing defined there is
ever pickled by value.

Names looked up, first found wins (``--model-fn``, ``--hparams`` and
``--dataset`` name others):

* model function: ``my_model``, ``model_function`` (Hobbit's tutorial, plain);
* hyperparameters: ``my_hparam_ranges``, ``hparam_ranges``;
* data: ``my_dataset``, ``dataset`` (arrays, or a function returning them),
  ``load_dataset`` (a function each worker calls itself, so large data is never
  pickled), or Hobbit's generator settings ``generator_function``,
  ``train_gen_args``, ``valid_gen_args``, ``steps_per_epoch``, ``validation_steps``;
* instead of a model function and data, ``trainable``: any object with the
  ``phobbit.execution.trainable.Trainable`` interface (for non-Keras work);
* instead of a model function and a list, Keras Tuner's ``build_model(hp)`` or a
  ``hypermodel`` (a ``phobbit.keras_tuner.HyperModel``, or its class): its space is
  discovered by running it in a worker of the run's pool, started before the file is
  loaded (``load_model_file``'s ``discover``), or else in a process of its own that sees
  no GPU (``phobbit.keras_adapter.hypermodel``);
* optional, as ``ParallelHyperband``'s arguments of the same names: ``objective``
  and ``direction``; for Keras' ``fit``, ``callbacks`` (a list, or a function of
  the hparams that returns one: called in each worker, so Keras is imported
  there only), ``fit_kwargs`` and ``fit_hparams``.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import io
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from phobbit.core.objective import VAL_LOSS, Objective
from phobbit.errors import InputError

MODEL_FUNCTION_NAMES = ("my_model", "model_function")
HPARAM_NAMES = ("my_hparam_ranges", "hparam_ranges")
DATASET_NAMES = ("my_dataset", "dataset", "load_dataset")
GENERATOR_NAMES = (
    "generator_function",
    "train_gen_args",
    "valid_gen_args",
    "steps_per_epoch",
    "validation_steps",
)
TRAINABLE_NAME = "trainable"
HYPERMODEL_NAMES = ("build_model", "hypermodel")
OPTION_NAMES = ("objective", "direction", "callbacks", "fit_kwargs", "fit_hparams")


def module_name(path: str | Path) -> str:
    """The stable, unique module name of the file at ``path`` (the same in every process)."""
    resolved = str(Path(path).resolve())
    stem = re.sub(r"\W", "_", Path(resolved).stem)
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:12]
    return f"_phobbit_model_{stem}_{digest}"


def _failing_line(exc: BaseException, path: str) -> str:
    """`` (line N)`` of the deepest frame of ``exc`` in the model file, or ``''``."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    if isinstance(exc, SyntaxError) and exc.filename == path and exc.lineno:
        return f" (line {exc.lineno})"
    return f" (line {frames[-1].lineno})" if frames else ""


def load_module(path: str | Path, quiet: bool = False) -> ModuleType:
    """Imports the file at ``path`` as a module, once per process (``sys.modules`` caches it).

    The file's folder goes on ``sys.path`` as ``python my_model.py`` would put it,
    so the file can import its neighbours.

    Args:
        path: the model file.
        quiet: swallow what the file prints while it loads. Workers load it
            quietly: the driver has already run the same top level and shown it.

    Raises:
        InputError: when the file does not exist or raises while it loads.
    """
    resolved = Path(path).resolve()
    name = module_name(resolved)
    if name in sys.modules:
        return sys.modules[name]
    if not resolved.is_file():
        raise InputError(f"model file {path} does not exist")
    loader = importlib.machinery.SourceFileLoader(name, str(resolved))
    spec = importlib.util.spec_from_file_location(name, resolved, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    # Registered before it runs, as an import would: dataclasses and pickle look it up there.
    sys.modules[name] = module
    output = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    try:
        with output:
            loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code: name the failure
        del sys.modules[name]
        text = " ".join(str(exc).split())
        what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise InputError(
            f"model file {path} failed to load{_failing_line(exc, str(resolved))}: {what}"
        ) from None
    return module


@dataclass(frozen=True)
class ModelFileRef:
    """A picklable reference to a function of a model file: ``(path, attr)``.

    Calling it imports the file by path in this process (once) and calls its
    attribute ``attr``; it pickles as the two strings, never as the function.

    Example:
        >>> ref = ModelFileRef("/abs/my_model.py", "my_model")
        >>> model = ref({"dropout1": 0.2, ...})   # in any process
    """

    path: str
    attr: str

    def resolve(self) -> Any:
        """The attribute itself, imported in this process."""
        module = load_module(self.path, quiet=True)
        try:
            return getattr(module, self.attr)
        except AttributeError:
            raise AttributeError(f"model file {self.path} has no {self.attr!r}") from None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


@dataclass(frozen=True)
class ModelFileHyperModel:
    """A picklable reference to a model file's ``build_model(hp)`` or ``hypermodel``, with
    Keras Tuner's ``build`` and ``fit``: it is imported in the process that calls it."""

    ref: ModelFileRef

    def _target(self) -> Any:
        target = self.ref.resolve()
        return target() if isinstance(target, type) else target

    def build(self, hp: Any) -> Any:
        """The model of ``hp``, built by the file's hypermodel."""
        target = self._target()
        return target.build(hp) if hasattr(target, "build") else target(hp)

    def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        """The file's hypermodel's ``fit``, or ``model.fit``."""
        target = self._target()
        if callable(getattr(target, "fit", None)):
            return target.fit(hp, model, *args, **kwargs)
        return model.fit(*args, **kwargs)


@dataclass(frozen=True)
class ModelFileTrainable:
    """A picklable reference to a model file's ``trainable`` object; trains through it.

    ``objective`` and ``warm_bytes`` (when not None) reach the trainable when it
    has fields of those names (as ``SyntheticTrainable`` and ``KerasTrainable`` do).
    """

    ref: ModelFileRef
    objective: Objective = VAL_LOSS
    warm_bytes: int | None = None

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> Any:
        """Trains with the model file's trainable, imported in this worker."""
        trainable = self.ref.resolve()
        if dataclasses.is_dataclass(trainable):
            fields = {f.name for f in dataclasses.fields(trainable)}
            settings: dict[str, Any] = {"objective": self.objective}
            if self.warm_bytes is not None:
                settings["warm_bytes"] = self.warm_bytes
            trainable = dataclasses.replace(
                trainable, **{k: v for k, v in settings.items() if k in fields}
            )
        return trainable.train(hparams, checkpoint, initial_epoch, epochs)


@dataclass(frozen=True)
class ModelFile:
    """What a model file gives ``ParallelHyperband``.

    Attributes:
        path: the file, absolute.
        hparam_ranges: its list of ``Hyperparameter``.
        model_function: a reference to its model function, or None with a trainable.
        trainable: a reference to its trainable, or None with a model function.
        data: keyword arguments of ``ParallelHyperband`` for the data: ``dataset``,
            or ``generator_function`` with its settings; empty with a trainable.
        options: keyword arguments of ``ParallelHyperband`` the file defines
            (``OPTION_NAMES``: objective, callbacks, fit_kwargs, ...).
    """

    path: Path
    hparam_ranges: Any
    model_function: ModelFileRef | None = None
    trainable: ModelFileTrainable | None = None
    data: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def _options(module: ModuleType, path: Path) -> dict[str, Any]:
    """The optional settings the file defines; a ``callbacks`` function goes by reference."""
    options = {n: getattr(module, n) for n in OPTION_NAMES if hasattr(module, n)}
    if callable(options.get("callbacks")):
        options["callbacks"] = ModelFileRef(str(path), "callbacks")
    return options


def _named(
    module: ModuleType, path: Path, given: str | None, names: tuple[str, ...], option: str
) -> str | None:
    """The name to use: ``given`` (which must exist), else the first of ``names`` defined."""
    if given is not None:
        if not hasattr(module, given):
            raise InputError(f"model file {path} defines no {given!r} (given by {option})")
        return given
    return next((n for n in names if hasattr(module, n)), None)


def _data(module: ModuleType, path: Path, given: str | None) -> dict[str, Any]:
    name = _named(module, path, given, DATASET_NAMES, "--dataset")
    if name is not None:
        value = getattr(module, name)
        # A function is called by each worker, so its data is never pickled.
        return {"dataset": ModelFileRef(str(path), name) if callable(value) else value}
    if hasattr(module, GENERATOR_NAMES[0]):
        data: dict[str, Any] = {"generator_function": ModelFileRef(str(path), GENERATOR_NAMES[0])}
        data.update({n: getattr(module, n, None) for n in GENERATOR_NAMES[1:]})
        return data
    raise InputError(
        f"model file {path} defines no data: looked for {', '.join(DATASET_NAMES)} and "
        f"{GENERATOR_NAMES[0]}; name yours with --dataset"
    )


def _top_level_names(tree: ast.Module) -> set[str]:
    """The names a module's top level binds by definition, assignment or import."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def trains_keras(path: str | Path, model_fn: str | None = None) -> bool:
    """Whether the model file at ``path`` plainly trains Keras, read without running it:
    its top level defines a model function or a Keras Tuner hypermodel.

    False when it cannot tell (no such file, a syntax error, names made at run time) or
    when the file has a ``trainable`` instead: the caller then waits for
    ``load_model_file``, which says what is wrong or what trains.
    """
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return False
    names = _top_level_names(tree)
    wanted = {model_fn} if model_fn else {*MODEL_FUNCTION_NAMES, *HYPERMODEL_NAMES}
    return bool(names & wanted)


def load_model_file(
    path: str | Path,
    model_fn: str | None = None,
    hparams: str | None = None,
    dataset: str | None = None,
    discover: Callable[[Any, Any], tuple[list[Any], bool]] | None = None,
) -> ModelFile:
    """Loads a model file and finds its model function (or trainable), hyperparameters and data.

    Args:
        path: the model file.
        model_fn, hparams, dataset: names to use instead of the default ones.
        discover: ``(hypermodel, probe) -> (specs, complete)``, what finds a Keras Tuner
            file's space: ``phobbit.keras_adapter.hypermodel.discover_in`` a worker of the
            run's own pool, started already; None: a process of its own
            (``discover_in_subprocess``).

    Raises:
        InputError: for a missing file, one that fails to load, or one without a
            model function, hyperparameters or data; the message lists the names
            looked for.
    """
    module = load_module(path)
    resolved = Path(path).resolve()
    hp_name = _named(module, resolved, hparams, HPARAM_NAMES, "--hparams")
    keras_tuner = next((n for n in HYPERMODEL_NAMES if hasattr(module, n)), None)
    if hp_name is None and model_fn is None and keras_tuner is not None:
        return _hypermodel_file(module, resolved, keras_tuner, dataset, discover)
    if hp_name is None:
        raise InputError(
            f"model file {path} defines no hyperparameters: looked for "
            f"{', '.join(HPARAM_NAMES)} (or Keras Tuner's {', '.join(HYPERMODEL_NAMES)}); "
            "name yours with --hparams"
        )
    hparam_ranges = getattr(module, hp_name)
    return _with_function(module, resolved, path, hparam_ranges, model_fn, dataset)


def _hypermodel_file(
    module: ModuleType,
    resolved: Path,
    name: str,
    dataset: str | None,
    discover: Callable[[Any, Any], tuple[list[Any], bool]] | None,
) -> ModelFile:
    """A model file of Keras Tuner's form: its space discovered, its build the model function."""
    from phobbit.core.define_by_run import HyperParameters
    from phobbit.keras_adapter.hypermodel import HyperModelFunction, discover_in_subprocess

    data = _data(module, resolved, dataset)
    hypermodel = ModelFileHyperModel(ModelFileRef(str(resolved), name))
    arrays = data.get("dataset")
    probe = None
    if isinstance(arrays, (list, tuple)) and len(arrays) == 2:
        (x, y), validation = arrays
        probe = (x, y, validation)
    specs, _ = (discover or discover_in_subprocess)(hypermodel, probe)
    return ModelFile(
        resolved,
        list(HyperParameters.from_specs(specs).to_space().hparams),
        model_function=HyperModelFunction(hypermodel, specs),  # type: ignore[arg-type]
        data=data,
        options=_options(module, resolved),
    )


def _with_function(
    module: ModuleType,
    resolved: Path,
    path: str | Path,
    hparam_ranges: Any,
    model_fn: str | None,
    dataset: str | None,
) -> ModelFile:
    fn_name = _named(module, resolved, model_fn, MODEL_FUNCTION_NAMES, "--model-fn")
    if fn_name is None and hasattr(module, TRAINABLE_NAME):
        trainable = getattr(module, TRAINABLE_NAME)
        if not callable(getattr(trainable, "train", None)):
            raise InputError(f"{TRAINABLE_NAME} in model file {path} has no train() method")
        ref = ModelFileRef(str(resolved), TRAINABLE_NAME)
        options = {
            n: v for n, v in _options(module, resolved).items() if n in ("objective", "direction")
        }
        return ModelFile(
            resolved, hparam_ranges, trainable=ModelFileTrainable(ref), options=options
        )
    if fn_name is None:
        raise InputError(
            f"model file {path} defines no model function: looked for "
            f"{', '.join(MODEL_FUNCTION_NAMES)} (or a {TRAINABLE_NAME}); "
            "name yours with --model-fn"
        )
    if not callable(getattr(module, fn_name)):
        raise InputError(f"{fn_name} in model file {path} is not a function")
    return ModelFile(
        resolved,
        hparam_ranges,
        model_function=ModelFileRef(str(resolved), fn_name),
        data=_data(module, resolved, dataset),
        options=_options(module, resolved),
    )
