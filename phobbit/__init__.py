"""phobbit: parallel Hyperband for Keras models, one worker pinned to each GPU.

Example:
    >>> from phobbit import Hyperparameter, ParallelHyperband
    >>> hparams = [Hyperparameter("lr", "log-uniform", (1e-4, 1e-1))]
    >>> results = ParallelHyperband(my_model, hparams, "repo", dataset=data,
    ...                             gpus=[0, 1]).run(R=20, eta=3)
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The library's logger (pool restarts, pinning, retries, fencing) is silent until
# the application configures logging, e.g. ``logging.basicConfig(level="INFO")``.
logging.getLogger("phobbit").addHandler(logging.NullHandler())

# Where each public name lives. They are imported on first use (PEP 562), so that
# `import phobbit.core.schedule` and `phobbit brackets` load neither pandas, joblib nor rich.
_EXPORTS = {
    "Bracket": "phobbit.core.schedule",
    "Budget": "phobbit.core.budget",
    "CheckpointError": "phobbit.errors",
    "DaskExecutor": "phobbit.execution.dask",
    "Executor": "phobbit.execution.executor",
    "FatalError": "phobbit.errors",
    "FencedOutError": "phobbit.errors",
    "Hyperparameter": "phobbit.core.space",
    "InputError": "phobbit.errors",
    "KerasFit": "phobbit.keras_adapter.fit",
    "LocalExecutor": "phobbit.execution.executor",
    "Losses": "phobbit.execution.trainable",
    "ParallelHyperband": "phobbit.api",
    "PhobbitError": "phobbit.errors",
    "RepositoryError": "phobbit.errors",
    "RepositoryView": "phobbit.storage.view",
    "Resources": "phobbit.execution.resources",
    "Rung": "phobbit.core.schedule",
    "RunSettings": "phobbit.core.records",
    "Search": "phobbit.core.search",
    "SimulatedExecutor": "phobbit.execution.simulated",
    "StorageError": "phobbit.errors",
    "SyntheticTrainable": "phobbit.testing.synthetic",
    "Trainable": "phobbit.execution.trainable",
    "brackets": "phobbit.core.schedule",
    "open_repository": "phobbit.storage.view",
}
_SUBMODULES = {"algorithms", "keras_tuner"}

__all__ = [
    "Bracket",
    "Budget",
    "CheckpointError",
    "DaskExecutor",
    "Executor",
    "FatalError",
    "FencedOutError",
    "Hyperparameter",
    "InputError",
    "KerasFit",
    "LocalExecutor",
    "Losses",
    "ParallelHyperband",
    "PhobbitError",
    "RepositoryError",
    "RepositoryView",
    "Resources",
    "RunSettings",
    "Rung",
    "Search",
    "SimulatedExecutor",
    "StorageError",
    "SyntheticTrainable",
    "Trainable",
    "algorithms",
    "keras_tuner",
    "brackets",
    "open_repository",
]

if TYPE_CHECKING:
    from phobbit import algorithms
    from phobbit.api import ParallelHyperband
    from phobbit.core.budget import Budget
    from phobbit.core.records import RunSettings
    from phobbit.core.schedule import Bracket, Rung, brackets
    from phobbit.core.search import Search
    from phobbit.core.space import Hyperparameter
    from phobbit.errors import (
        CheckpointError,
        FatalError,
        FencedOutError,
        InputError,
        PhobbitError,
        RepositoryError,
        StorageError,
    )
    from phobbit.execution.dask import DaskExecutor
    from phobbit.execution.executor import Executor, LocalExecutor
    from phobbit.execution.resources import Resources
    from phobbit.execution.simulated import SimulatedExecutor
    from phobbit.execution.trainable import Losses, Trainable
    from phobbit.keras_adapter.fit import KerasFit
    from phobbit.storage.view import RepositoryView, open_repository
    from phobbit.testing.synthetic import SyntheticTrainable


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"phobbit.{name}")
    else:
        raise AttributeError(f"module 'phobbit' has no attribute {name!r}")
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
