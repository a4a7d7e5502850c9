"""Functions that tests of backends and worker set-up run in worker processes (by reference)."""

from __future__ import annotations

import os
from typing import Any


def environment_of_worker(name: str) -> str | None:
    """The worker's value of environment variable ``name``."""
    return os.environ.get(name)


def write_to_fd2(text: str) -> None:
    """Writes ``text`` to file descriptor 2, as TensorFlow's C++ start-up lines are."""
    os.write(2, text.encode())


def jax_only_mlp(hparams: dict[str, Any]) -> Any:
    """The tutorial MLP, refusing to build on any backend but JAX."""
    import keras
    from keras_models import mlp

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"built on {keras.backend.backend()}, not jax")
    return mlp(hparams)


def noisy_curve(hparams: dict[str, Any], epoch: int) -> float:
    """``synthetic.x_curve``, writing a line to file descriptor 2 as TensorFlow does in every
    worker (``synthetic`` is not imported: ``tests/models/synthetic.py`` may shadow it)."""
    os.write(2, b"I0000 cuda_platform.cc:52] failed call to cuInit (a worker's noise)\n")
    return abs(hparams["x"] - 0.3) + 1.0 / epoch


def always_failing_curve(hparams: dict[str, Any], epoch: int) -> float:
    """Every trial fails."""
    raise ValueError("broken on purpose")


def accuracy_metrics(hparams: dict[str, Any], epoch: int) -> dict[str, float]:
    """A ``val_accuracy`` that rises with epochs, best near x = 0.6 (not where val loss is)."""
    return {"val_accuracy": 1.0 - abs(hparams["x"] - 0.6) - 0.5 / epoch}
