"""Fencing: no process of a dead or replaced driver ever writes to the repository.

Every write a worker makes that another driver could see (a row appended to
``results.csv``, a checkpoint that replaces another) goes through this module,
so a stale worker (an orphan of a killed driver, a worker stopped with SIGSTOP
and continued after a new driver took over) is refused instead of rolling the
repository back.

Trainables commit every checkpoint with :func:`commit` instead of a bare
``os.replace``; outside a worker segment (a test calling ``train`` directly)
it is a plain ``os.replace``.
"""

from __future__ import annotations

import os


class StaleDriverError(BaseException):
    """This worker's driver is gone or was replaced: it must write nothing and stop.

    A ``BaseException`` so that user code catching ``Exception`` cannot swallow it.
    """


def commit(temp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Replaces ``path`` with the complete file ``temp``, if this worker's driver is current.

    Raises:
        StaleDriverError: when the driver that handed out the running segment
            is no longer the repository's driver; ``temp`` is removed.
    """
    os.replace(temp, path)
