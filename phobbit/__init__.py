"""phobbit: parallel Hyperband for Keras models, one worker pinned to each GPU.

Example:
    >>> from phobbit import Hyperparameter, ParallelHyperband
    >>> hparams = [Hyperparameter("lr", "log-uniform", (1e-4, 1e-1))]
    >>> results = ParallelHyperband(my_model, hparams, "repo", dataset=data,
    ...                             gpus=[0, 1]).run(R=20, eta=3)
"""

from __future__ import annotations

from phobbit import algorithms
from phobbit.api import ParallelHyperband
from phobbit.errors import (
    FatalError,
    FencedOutError,
    InputError,
    PhobbitError,
    RepositoryError,
    StorageError,
    TrialFailedError,
)
from phobbit.schedule import Bracket, Rung, brackets
from phobbit.space import Hyperparameter

__version__ = "0.1.0"

__all__ = [
    "Bracket",
    "FatalError",
    "FencedOutError",
    "Hyperparameter",
    "InputError",
    "ParallelHyperband",
    "PhobbitError",
    "RepositoryError",
    "Rung",
    "StorageError",
    "TrialFailedError",
    "algorithms",
    "brackets",
]
