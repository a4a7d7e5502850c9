"""``time_used.csv``: the training time each invocation of a run has used, for ``time_limit``.

A time limit bounds the run's training time over all its invocations, as
``max_epochs`` bounds its epochs (``phobbit.core.budget``), so a resume gets
what is left, not the whole limit again. Each invocation (named by its fencing
token) appends the seconds it has used so far, now and then while it trains and
once when it stops; a line is CRC-framed and appended under the results lock and
the fence, like a row of ``results.csv``, so a kill loses at most the time since
the last line and never tears one. The time used is the sum, over invocations,
of each one's last (largest) line.

Example:
    >>> log = TimeLog(repository)
    >>> log.append(token, 42.5, fence=token)
    >>> log.used()
    42.5
"""

from __future__ import annotations

from phobbit.errors import RepositoryError
from phobbit.storage.framing import framed, is_header, read_framed, unframed
from phobbit.storage.repository import TIME_USED, Repository

HEADER = "invocation,seconds,crc\n"


class TimeLog:
    """The ``time_used.csv`` of a repository.

    Args:
        repository: the run's repository (its results lock and fence guard the file).
    """

    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.path = repository.path / TIME_USED

    def append(self, invocation: str, seconds: float, fence: str | None = None) -> None:
        """Records that ``invocation`` has used ``seconds`` of training time in all so far.

        Raises:
            StaleDriverError: when ``fence`` is no longer the repository's token.
            StorageError: when the line cannot be written in full.
        """
        line = framed([invocation, repr(float(seconds))]).encode()
        self.repository.append_framed([(self.path, line, HEADER)], fence)

    def used(self) -> float:
        """Seconds of training time every invocation recorded, together (0 for none).

        Raises:
            RepositoryError: when the file cannot be read or is not a time file.
        """
        last: dict[str, float] = {}
        for invocation, seconds in read_framed(self.path, _decode, self._check_header):
            last[invocation] = max(seconds, last.get(invocation, 0.0))
        return sum(last.values())

    def _check_header(self, first: bytes) -> None:
        if not is_header(first, HEADER):
            raise RepositoryError(
                f"{self.path} is not a phobbit time file; restore it, or delete it to let "
                "the run's time limit start again"
            )


def _decode(line: bytes) -> tuple[str, float] | None:
    """(invocation, seconds) of one line; None for a torn, corrupt or hostile one."""
    fields = unframed(line)
    if fields is None or len(fields) != 2:
        return None
    try:
        seconds = float(fields[1])
    except ValueError:
        return None
    if not 0.0 <= seconds < float("inf"):  # NaN fails both
        return None
    return fields[0], seconds
