"""What a worker process holds: its pinned slot, its warm models, its fences, its datasets.

The one piece of mutable state a process keeps between the segments it runs, set
up once, on first use, and reached with :func:`worker_state`. Each part's module
says what the part means: ``phobbit.execution.worker`` pins the process
(``slot``, ``device``, ``pin_error``, ``driver``), ``phobbit.execution.warm``
keeps models warm (``warm_caches``), ``phobbit.storage.fence`` fences its writes
(``fences``) and the Keras trainable keeps the datasets it loaded (``datasets``) and
the strategy its models are built under (``strategy``).

This module imports nothing of execution, so that every part's module may use it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from phobbit.storage import fence

# Here, not in worker.py, so that the progress display (``phobbit status``) can name a CPU
# worker without importing the worker's machinery.
HIDDEN = "-1"  # the CUDA_VISIBLE_DEVICES of a CPU worker: no GPU at all


@dataclass(eq=False)
class WorkerState:
    """Everything a worker process holds between segments.

    Attributes:
        slot: the index of the slot ``pin`` leased, or None.
        device: the device of that slot (a GPU id, a group ``0,1``, ``-1`` for the CPU),
            or ``''``.
        slot_fd: the open file whose lock holds the slot for as long as the process lives.
        pin_error: why the process found no slot; its segments go back to the scheduler.
        driver: the pid of the driver that started this pool worker, or None (a
            process that may be the driver, or outlives it on purpose).
        warm_caches: a stack of ``phobbit.execution.warm.WarmCache``; the last one
            serves (a simulated executor pushes each virtual worker's own).
        fences: the fences of the segments running in this process.
        datasets: datasets loaded once and reused by every trial, by source.
        strategy: the Keras trainable's ``[tf.distribute.Strategy or None]`` once decided
            (None inside: one device); empty until then. Made once: every model of the
            worker is built under the same one.
        lock: guards the parts made on first use (two threads of a Dask worker).
    """

    slot: int | None = None
    device: str = ""
    slot_fd: int | None = None
    pin_error: str | None = None
    driver: int | None = None
    warm_caches: list[Any] = field(default_factory=list)
    fences: fence.Fences = field(default_factory=fence.Fences)
    datasets: dict[str, Any] = field(default_factory=dict)
    strategy: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_STATE: list[WorkerState] = []  # the process's one state, made on first use
_STATE_LOCK = threading.Lock()


def worker_state() -> WorkerState:
    """This process's state, set up on first use (its fences then guard ``fence.commit``)."""
    if not _STATE:
        with _STATE_LOCK:
            if not _STATE:
                state = WorkerState()
                fence.serve(state.fences)
                _STATE.append(state)
    return _STATE[0]
