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
    "FatalError": "phobbit.errors",
    "FencedOutError": "phobbit.errors",
    "Hyperparameter": "phobbit.core.space",
    "InputError": "phobbit.errors",
    "ParallelHyperband": "phobbit.api",
    "PhobbitError": "phobbit.errors",
    "RepositoryError": "phobbit.errors",
    "RepositoryView": "phobbit.storage.view",
    "Rung": "phobbit.core.schedule",
    "StorageError": "phobbit.errors",
    "brackets": "phobbit.core.schedule",
    "open_repository": "phobbit.storage.view",
}
_SUBMODULES = {"algorithms"}

__all__ = [
    "Bracket",
    "FatalError",
    "FencedOutError",
    "Hyperparameter",
    "InputError",
    "ParallelHyperband",
    "PhobbitError",
    "RepositoryError",
    "RepositoryView",
    "Rung",
    "StorageError",
    "algorithms",
    "brackets",
    "open_repository",
]

if TYPE_CHECKING:
    from phobbit import algorithms
    from phobbit.api import ParallelHyperband
    from phobbit.core.schedule import Bracket, Rung, brackets
    from phobbit.core.space import Hyperparameter
    from phobbit.errors import (
        FatalError,
        FencedOutError,
        InputError,
        PhobbitError,
        RepositoryError,
        StorageError,
    )
    from phobbit.storage.view import RepositoryView, open_repository


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
