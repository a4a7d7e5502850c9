"""Fencing: no process of a dead or replaced driver ever writes to the repository.

Every write a worker makes that another driver could see (a row appended to
``results.csv``, a checkpoint that replaces another) goes through this module,
so a stale worker (an orphan of a killed driver, a worker stopped with SIGSTOP
and continued after a new driver took over) is refused instead of rolling the
repository back.

Each driver, once it holds the repository, writes a fresh *token* to
``driver.json`` under the results lock (``Repository.driver_lock``). Every
segment it hands out carries that token, and ``train_segment`` makes it this
process's fence for the segment's duration (:func:`segment`). A write then
checks, under the same results lock, that the token is still the repository's
and writes before it lets go: a new driver cannot take over between the check
and the write.

Trainables commit every checkpoint with :func:`commit` instead of a bare
``os.replace``; outside a worker segment (a test calling ``train`` directly)
it is a plain ``os.replace``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # repository imports this module; only its type is needed here
    from phobbit.storage.repository import Repository


class StaleDriverError(BaseException):
    """This worker's driver is gone or was replaced: it must write nothing and stop.

    A ``BaseException`` so that user code catching ``Exception`` cannot swallow it.
    """


# The fences of the segments running in this process, by thread. A pool worker runs
# one segment at a time; a trainable may still save from a thread of its own.
_FENCES: dict[int, tuple[Repository, str]] = {}
_FENCES_LOCK = threading.Lock()


@contextlib.contextmanager
def segment(repository: Repository, token: str | None) -> Iterator[None]:
    """Fences this process's commits with ``token`` while a segment runs (None: unfenced)."""
    if token is None:
        yield
        return
    me = threading.get_ident()
    with _FENCES_LOCK:
        _FENCES[me] = (repository, token)
    try:
        yield
    finally:
        with _FENCES_LOCK:
            _FENCES.pop(me, None)


def _current() -> tuple[Repository, str] | None:
    with _FENCES_LOCK:
        return _FENCES.get(threading.get_ident()) or next(iter(_FENCES.values()), None)


def commit(temp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Replaces ``path`` with the complete file ``temp``, if this worker's driver is current.

    Raises:
        StaleDriverError: when the driver that handed out the running segment
            is no longer the repository's driver; ``temp`` is removed.
    """
    fence = _current()
    if fence is None:
        os.replace(temp, path)
        return
    repository, token = fence
    try:
        with repository.fenced(token):
            os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise
