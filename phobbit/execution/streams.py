"""Standard output that a reader who leaves never turns into an error.

``phobbit train ... | head``: once ``head`` has its lines, every later write to
standard output fails with a broken pipe, in the driver and in every worker (a
worker inherits the driver's standard output, and a user's ``print``,
``model.summary()`` or ``verbose=1`` writes there). Hours of training must not be
thrown away, nor segments failed, because a pager quit: ``GuardedStdout`` points
standard output at /dev/null at the first failed write and discards the rest.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from typing import Any, TextIO


def stdout_to_devnull() -> None:
    """Points standard output at /dev/null, so that the flush at exit finds no broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (a test's StringIO): nothing to flush
        pass


class GuardedStdout:
    """A standard output whose first failed write sends the rest to /dev/null.

    A write or flush that fails with an ``OSError`` (a broken pipe, a full disk
    under ``> log``), or on a stream that was closed, loses the stream: standard
    output goes to /dev/null, ``notice`` (when given) says once on stderr why and
    that the run goes on, and later writes are discarded. Any other error (a
    character the stream's encoding cannot take) is raised as before.

    Args:
        stream: the standard output to write to.
        notice: what the run does without it, told once on stderr; None says
            nothing (a worker: its driver tells the user).
    """

    def __init__(self, stream: TextIO, notice: str | None = None) -> None:
        self.stream = stream
        self.notice = notice
        self.lost = False
        self._lock = threading.Lock()  # rich's Live redraws from its own thread

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                self.stream.write(text)
            except OSError as exc:
                self._lose(exc)
            except ValueError:
                if not getattr(self.stream, "closed", False):
                    raise  # e.g. UnicodeEncodeError: not a lost stream
                self._lose(None)
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self.stream.flush()
            except OSError as exc:
                self._lose(exc)
            except ValueError:
                if not getattr(self.stream, "closed", False):
                    raise
                self._lose(None)

    def _lose(self, exc: OSError | None) -> None:
        with self._lock:
            if self.lost:
                return
            self.lost = True
        stdout_to_devnull()
        if self.notice is None:
            return
        why = (
            "was closed"
            if exc is None or exc.errno == errno.EPIPE
            else f"failed ({exc.strerror or exc})"
        )
        try:  # with `2>&1 | head` stderr is the same closed pipe: nobody is left to tell
            print(f"phobbit: standard output {why}; {self.notice}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)  # isatty, fileno, encoding: rich asks


def guard_worker_stdout() -> None:
    """Makes this worker's ``print`` outlive a reader that left (see the module's docstring)."""
    if not isinstance(sys.stdout, GuardedStdout) and sys.stdout is not None:
        sys.stdout = GuardedStdout(sys.stdout)
