"""The workers' log: their standard error, kept in a temporary file and appended to
``workers.log`` in the repository when the run ends, even when its driver was killed.

A run sends its workers' stderr (TensorFlow's start-up lines, the user's prints and
warnings) to a temporary file rather than straight into the repository, so that a
run stopped by bad input leaves the folder as it was. The run appends the file to
``REPO/workers.log`` as it ends (``keep``). A driver killed with SIGKILL (or by the
OOM killer, or a lost machine) runs no exit code: its file stayed in the temporary
folder and never reached the repository. So the folder is named after the
repository (a digest of its absolute path) and the driver's pid
(``phobbit-log-<digest>-<pid>-<h|v>-<random>``), and the next driver to take that
repository appends what a dead driver left there (``recover``) before it trains:
what the killed run's workers wrote is kept, in order, before what the new run's
write.

What is appended is never trusted to a name alone: only a folder of this user,
not a link, whose driver pid is no live process, on this host's temporary folder.
A driver on another host leaves its file on that host, where the next run there
finds it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from phobbit.errors import InputError, RepositoryError
from phobbit.execution.worker import HIDDEN, without_startup_noise
from phobbit.storage import files
from phobbit.storage.lease import pid_alive
from phobbit.storage.repository import WORKERS_LOG

PREFIX = "phobbit-log-"


def _digest(repo_dir: str | os.PathLike) -> str:
    """A short digest of the repository's real path (links resolved, so that every name of
    one folder gives one digest): its logs' folders carry it."""
    return hashlib.sha256(os.fsencode(os.path.realpath(repo_dir))).hexdigest()[:16]


def folder_prefix(repo_dir: str | os.PathLike, hidden: bool) -> str:
    """How the folder of this process's workers' log for ``repo_dir`` begins."""
    return f"{PREFIX}{_digest(repo_dir)}-{os.getpid()}-{'h' if hidden else 'v'}-"


def capture(executor: Any, repo_dir: str | os.PathLike, stack: ExitStack) -> Callable[..., bool]:
    """Sends ``executor``'s workers' stderr (a ``LocalExecutor`` not started yet) to a
    ``temporary_log`` of ``repo_dir``, removed as ``stack`` unwinds; returns the exit
    callback that appends it to ``repo_dir/workers.log`` (``keep``), for the caller to push
    where it belongs (under the driver lock, or after the pool's shutdown)."""
    hidden = all(slot == HIDDEN for slot in executor.slots)
    temporary = stack.enter_context(temporary_log(repo_dir, hidden))
    executor.stderr_path = str(temporary)
    return functools.partial(keep, temporary, repo_dir, hidden)


@contextlib.contextmanager
def temporary_log(repo_dir: str | os.PathLike, hidden: bool) -> Iterator[Path]:
    """A temporary file for the workers' stderr, removed with its folder on the way out.

    Args:
        repo_dir: the repository the run writes; its digest names the folder so that
            the next driver there finds the file if this one is killed.
        hidden: every worker has its GPUs hidden, so that their "no CUDA driver"
            lines are start-up noise too (kept in the name for ``recover``).

    Yields:
        The file's path (not yet created: the pool opens it).
    """
    with tempfile.TemporaryDirectory(prefix=folder_prefix(repo_dir, hidden)) as folder:
        yield Path(folder) / WORKERS_LOG


def keep(
    temporary: Path, repo_dir: str | os.PathLike, hidden: bool, kind: type | None, *_: object
) -> bool:
    """An exit callback: appends the workers' temporary stderr file to
    ``repo_dir/workers.log`` without TensorFlow's start-up lines (``hidden``: every worker
    has its GPUs hidden, so its no-CUDA lines are noise too; ``worker.without_startup_noise``),
    unless the run stopped on bad input (then nothing is written)."""
    if kind is None or not issubclass(kind, InputError):
        _append(temporary, Path(repo_dir), hidden)
    return False


def _append(temporary: Path, repo_dir: Path, hidden: bool) -> None:
    """Appends ``temporary`` (start-up noise left out) to ``repo_dir/workers.log``."""
    if not temporary.is_file():
        return
    # A log is no reason to fail a run; one made a link out or a FIFO since the
    # run checked it (``Repository.check_files``) is not written through.
    with contextlib.suppress(OSError, RepositoryError):
        fd = files.open_append(repo_dir / WORKERS_LOG)
        with os.fdopen(fd, "ab") as out:
            out.write(without_startup_noise(temporary.read_bytes(), hidden))


def recover(repo_dir: str | os.PathLike) -> list[int]:
    """Appends to ``repo_dir/workers.log`` what killed drivers' workers left in this host's
    temporary folder, oldest first, and removes it; best effort.

    Call it while holding the repository's driver lock, before the run's own workers
    write: no other driver of this repository runs then, and the logs it appends come
    before the new run's.

    Returns:
        The pids of the dead drivers whose logs were appended.
    """
    pattern = re.compile(rf"{re.escape(PREFIX)}{_digest(repo_dir)}-(\d+)-([hv])-")
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(tempfile.gettempdir()):
            match = pattern.match(entry.name)
            if match is None or int(match.group(1)) == os.getpid():
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue  # a link, or another user's: never followed, never removed
            if pid_alive(int(match.group(1))):
                continue  # a driver still starting (or refused, about to clean up)
            found.append((info.st_mtime_ns, int(match.group(1)), match.group(2), entry.path))
    recovered = []
    for _, pid, hidden, folder in sorted(found):
        log = Path(folder) / WORKERS_LOG
        with contextlib.suppress(OSError):
            if not stat.S_ISREG(log.lstat().st_mode):
                continue
        _append(log, Path(repo_dir), hidden == "h")
        shutil.rmtree(folder, ignore_errors=True)
        recovered.append(pid)
    return recovered
