"""Fencing: no process of a dead or replaced driver ever writes to the repository.

Every write a worker makes that another driver could see (a row appended to
``results.csv``, a checkpoint that replaces another) goes through this module,
so a stale worker (an orphan of a killed driver, a worker stopped with SIGSTOP
and continued after a new driver took over) is refused instead of rolling the
repository back.

Each driver, once it holds the repository, writes a fresh *token* to
``driver.json`` under the results lock (``Repository.driver_lock``). Every
segment it hands out carries that token, and ``train_segment`` makes it this
process's fence for the segment's duration (:meth:`Fences.segment`). A write
then checks, under the same results lock, that the token is still the
repository's and writes before it lets go: a new driver cannot take over
between the check and the write.

Trainables commit every checkpoint with :func:`commit` instead of a bare
``os.replace``. The fences it checks are those of the worker's state
(``phobbit.execution.worker_state``), which hands them here with :func:`serve`
when it is set up; in a process that runs no segment (a test calling ``train``
directly) it is a plain ``os.replace``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol


class FenceHolder(Protocol):
    """What a fence needs of a repository: a block that runs only while ``token`` is its
    driver's (``Repository.fenced``), raising ``StaleDriverError`` when it is not."""

    def fenced(self, token: str) -> AbstractContextManager[None]:
        """Holds the repository's results lock while ``token`` is its driver's token."""
        ...


class Fences:
    """The fences of the segments a process runs, by thread.

    A pool worker runs one segment at a time; a trainable may still save from a
    thread of its own, which then takes the fence of any segment running here.
    """

    def __init__(self) -> None:
        self._by_thread: dict[int, tuple[FenceHolder, str]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def segment(self, holder: FenceHolder, token: str | None) -> Iterator[None]:
        """Fences this process's commits with ``token`` while a segment runs (None: unfenced)."""
        if token is None:
            yield
            return
        me = threading.get_ident()
        with self._lock:
            self._by_thread[me] = (holder, token)
        try:
            yield
        finally:
            with self._lock:
                self._by_thread.pop(me, None)

    def current(self) -> tuple[FenceHolder, str] | None:
        """The fence of this thread's segment, else of any segment running here, else None."""
        with self._lock:
            found = self._by_thread.get(threading.get_ident())
            return found or next(iter(self._by_thread.values()), None)

    def commit(self, temp: str | os.PathLike, path: str | os.PathLike) -> None:
        """Replaces ``path`` with the complete file ``temp``, if the driver is current.

        Raises:
            StaleDriverError: when the driver that handed out the running segment
                is no longer the repository's driver; ``temp`` is removed.
        """
        fence = self.current()
        if fence is None:
            os.replace(temp, path)
            return
        holder, token = fence
        try:
            with holder.fenced(token):
                os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temp)
            raise


# The worker state's fences, once it is set up; storage cannot import the execution
# layer that owns them, so the owner hands them down.
_served: list[Fences] = []


def serve(fences: Fences) -> None:
    """Makes ``fences`` the ones :func:`commit` checks in this process (the worker state's)."""
    _served[:] = [fences]


def commit(temp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Replaces ``path`` with the complete file ``temp``, if this worker's driver is current.

    Raises:
        StaleDriverError: when the driver that handed out the running segment
            is no longer the repository's driver; ``temp`` is removed.
    """
    if not _served:
        os.replace(temp, path)
        return
    _served[0].commit(temp, path)
