"""Keras backends: which one the workers' Keras runs (``backend="jax"``, ``--backend jax``).

Keras 3 picks its backend from ``KERAS_BACKEND`` when it is first imported, so the
variable is set in each worker before anything imports Keras: the local pool's
initializer sets it (``LocalExecutor(env=...)``), and the Keras trainable sets it
again before its own import and checks that the Keras it got runs that backend
(a worker whose Keras was imported earlier, such as a Dask worker started
without the variable, stops the run with a message instead of training on
another backend).

The driver never imports Keras or a backend: whether one is installed is told by
``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util

from phobbit.errors import InputError

BACKENDS = ("tensorflow", "jax", "torch")
VARIABLE = "KERAS_BACKEND"
_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
_INSTALL = {
    "tensorflow": "pip install tensorflow",
    "jax": 'pip install "jax[cpu]" (or "jax[cuda12]" for GPUs)',
    "torch": "pip install torch",
}


def check_backend(backend: str | None) -> str | None:
    """``backend`` when it is a Keras backend that is installed; None for Keras' default.

    Raises:
        InputError: for an unknown backend, or one whose package is not installed.
    """
    if backend is None:
        return None
    if backend not in BACKENDS:
        raise InputError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    if importlib.util.find_spec(_PACKAGES[backend]) is None:
        raise InputError(
            f"backend {backend!r} is not installed: {_INSTALL[backend]}, or use another backend"
        )
    return backend


def backend_name(backend: str | None) -> str:
    """The backend the workers' Keras runs, for what a run records: ``backend``, else
    ``KERAS_BACKEND`` of this environment (which the workers inherit), else Keras'
    default, ``tensorflow``."""
    import os

    return backend or os.environ.get(VARIABLE) or "tensorflow"


def worker_environment(backend: str | None) -> dict[str, str]:
    """The variables a worker needs for ``backend`` (none for Keras' default)."""
    return {} if backend is None else {VARIABLE: backend}


def use_backend(backend: str | None) -> None:
    """In a worker, before Keras is imported: makes Keras run ``backend``, or says why not.

    Raises:
        InputError: when this process's Keras was imported with another backend.
    """
    import os
    import sys

    if backend is None:
        return
    if "keras" not in sys.modules:
        os.environ[VARIABLE] = backend
    import keras

    running = keras.backend.backend()
    if running != backend:
        raise InputError(
            f"the workers' Keras runs the {running} backend, not {backend}: Keras was imported "
            f"before phobbit could set {VARIABLE}; set {VARIABLE}={backend} in the workers' "
            "environment (e.g. when starting Dask workers)"
        )
