"""Hobbit's API: ``Hyperband(model_function, dataset, hparam_ranges, repo_dir)``.

A Hobbit script ports by replacing the word ``hobbit`` with ``phobbit``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from phobbit.api import ParallelHyperband
from phobbit.core.space import Hyperparameter


class Hyperband(ParallelHyperband):
    """The parallel engine under Hobbit's constructor signature.

    Args:
        model_function: ``hparams -> compiled keras.Model``.
        dataset: ``((x_train, y_train), (x_val, y_val))``; None with the generator form.
        hparam_ranges: a list of ``Hyperparameter``.
        repo_dir: the repository folder.
        **kwargs: the generator form (``generator_function``, ``train_gen_args``,
            ``valid_gen_args``, ``steps_per_epoch``, ``validation_steps``) and any
            other argument of ``ParallelHyperband`` (``gpus``, ``seed``, ...).

    Example:
        >>> hb = Hyperband(model_function=my_model, dataset=my_dataset,
        ...                hparam_ranges=my_hparam_ranges, repo_dir="my_repo")
        >>> results = hb.run(R=20, eta=3)
    """

    def __init__(
        self,
        model_function: Callable[[dict[str, Any]], Any],
        dataset: Any = None,
        hparam_ranges: Sequence[Hyperparameter] = (),
        repo_dir: str | os.PathLike = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(model_function, hparam_ranges, repo_dir, dataset=dataset, **kwargs)
