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
