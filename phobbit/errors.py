"""The errors phobbit raises: every one stops the run, or (``StaleDriverError``) a
worker whose driver was replaced.

A failure that marks one trial (its user code raised, its loss diverged) is no
exception: the trial's row says ``failed`` and why, and the run goes on. This
module imports nothing of phobbit: every layer may raise these.
"""

from __future__ import annotations


class PhobbitError(Exception):
    """Base class of every error phobbit raises on purpose."""

    exit_code = 1


class FatalError(PhobbitError):
    """Stops the whole run: the run cannot go on (an unusable repository, a broken pool)."""


class InputError(FatalError, ValueError):
    """Bad input, found before any training starts; nothing has been written.

    The message names the offending value and what is allowed instead.
    """

    exit_code = 2


class RepositoryError(InputError):
    """The repository folder holds another run, is locked by a live driver, or is unreadable."""


class StorageError(FatalError):
    """The repository cannot be written after training started (a full disk, a read-only
    file, a lock that never frees); the run stops and resumes once that is fixed."""


class FencedOutError(FatalError):
    """Another driver took over the repository while this one ran; this one stops."""


class CheckpointError(FatalError):
    """A checkpoint could not be written (permissions, I/O): no fault of the trial.

    It stops the run, which the same command resumes once the folder is fixed.
    """


class StaleDriverError(BaseException):
    """This worker's driver is gone or was replaced: it must write nothing and stop.

    A ``BaseException`` so that user code catching ``Exception`` cannot swallow it.
    """
