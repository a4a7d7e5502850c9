"""Opening the repository's files: only inside it, only plain files, never read without bound.

A repository folder may come from anywhere (copied, unpacked, shared, edited), so
phobbit trusts none of its names. Every file of the repository (``results.csv``,
``epochs.csv``, ``decisions.csv``, ``run.json``, ``driver.json``, the lock files,
``workers.log``, the checkpoints phobbit reads itself) is opened here:

- a name that is a link is followed only while it stays inside the repository's
  real folder: ``results.csv -> ~/.bashrc`` or a dangling ``epochs.csv -> /tmp/x``
  is refused, never appended to or created. A link inside the folder pointing
  inside it works, and so does a repository reached through a link
  (``repo_dir=/tmp/link -> /data/run``): the boundary is the folder's real path;
- only regular files are read or written: a FIFO would block its reader for
  good and a device (``/dev/zero``) never ends, so each file is opened without
  blocking and checked with ``fstat`` before a byte is read;
- what is read whole (``run.json``, ``driver.json``) is read up to
  ``MAX_WHOLE_BYTES``, and a line of a framed file up to ``MAX_LINE_BYTES``: no
  file makes a reader run out of memory.

Every refusal is a ``RepositoryError`` (exit code 2 from the command line) in one
line that names the file, what it is, and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from phobbit.errors import RepositoryError

# Far above anything phobbit writes (a run.json holds a search space; a row its
# hparams), far below what would exhaust a reader's memory.
MAX_WHOLE_BYTES = 64 * 2**20
MAX_LINE_BYTES = 64 * 2**20

_REMEDY = "move it away, or use another repository folder"
_OPEN = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def inside(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """The real path of ``path``, which must lie inside ``root`` (by default its folder).

    Both are resolved, so a repository reached through a link works, and a link
    inside it that points inside it too is followed.

    Raises:
        RepositoryError: when ``path`` is (or passes through) a link that leads
            out of ``root``.
    """
    path = Path(path)
    base = Path(os.path.realpath(path.parent if root is None else root))
    real = Path(os.path.realpath(path))
    if real != base and base not in real.parents:
        raise RepositoryError(
            f"{path} is a link to {real}, outside {base}; phobbit reads and writes only "
            "files inside the repository folder: put the file itself there (or remove the "
            "link), or use another repository folder"
        )
    return real


def open_read(path: str | os.PathLike, root: str | os.PathLike | None = None) -> BinaryIO | None:
    """``path`` opened for reading bytes; None when it does not exist.

    Raises:
        RepositoryError: a link out of ``root`` (see :func:`inside`), or no regular file.
        OSError: when it cannot be opened for another reason (permissions, I/O).
    """
    try:
        fd = _open(path, os.O_RDONLY, root)
    except FileNotFoundError:
        return None
    return os.fdopen(fd, "rb")


def open_append(path: str | os.PathLike, root: str | os.PathLike | None = None) -> int:
    """A descriptor of ``path`` opened to read and append, made when missing (mode 0o644).

    Raises:
        RepositoryError: a link out of ``root``, dangling or not, or no regular file.
        OSError: when it cannot be opened or made (permissions, a full disk).
    """
    return _open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, root)


def read_whole(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    limit: int = MAX_WHOLE_BYTES,
) -> bytes | None:
    """Every byte of ``path``, at most ``limit``; None when it does not exist.

    Raises:
        RepositoryError: as :func:`open_read`, or when it holds more than ``limit`` bytes.
        OSError: when it cannot be read.
    """
    handle = open_read(path, root)
    if handle is None:
        return None
    with handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise RepositoryError(
            f"{path} holds more than {limit // 2**20} MiB, far more than phobbit ever "
            f"writes there; restore it, or use another repository folder"
        )
    return data


def replace(path: str | os.PathLike, data: bytes, root: str | os.PathLike | None = None) -> None:
    """Replaces ``path`` with a file holding ``data``: written to a temporary file, then
    ``os.replace``. A link inside ``root`` is kept and its target replaced.

    The temporary file is made new (``O_EXCL``, no link followed), so a link planted
    under its name cannot lead the write out of the folder.

    Raises:
        RepositoryError: when ``path`` is a link out of ``root`` (see :func:`inside`).
        OSError: when it cannot be written (permissions, a full disk).
    """
    path = inside(path, root)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()  # one a killed writer left, or a planted link: the link itself goes
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def check(path: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
    """Checks, without opening it, that ``path`` is absent or a regular file inside ``root``.

    A run calls this for every file of the repository before it starts, so that
    what it would refuse half-way is refused before anything is written.

    Raises:
        RepositoryError: as :func:`open_read` would.
    """
    real = inside(path, root)
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return
    except OSError:
        return  # unreadable for another reason: opening it says why
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode)


def check_lock(path: str | os.PathLike) -> None:
    """Checks that the lock file ``path`` is absent or a plain file, not a link.

    A lock file is phobbit's own and empty: a link there (in or out of the folder)
    or anything but a regular file is refused, and deleting it is always safe.

    Raises:
        RepositoryError: naming the file and saying to delete it.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        return
    what = "a link" if stat.S_ISLNK(mode) else _kind(mode)
    raise RepositoryError(
        f"lock file {path} is {what}, not a plain file; delete it (phobbit makes it "
        "again), then run again"
    )


def _open(path: str | os.PathLike, flags: int, root: str | os.PathLike | None) -> int:
    """``os.open`` of ``path``'s real path, refused unless inside ``root`` and regular."""
    real = inside(path, root)
    try:
        # Non-blocking: opening a FIFO would wait for a writer for good.
        fd = os.open(real, flags | _OPEN, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.ENXIO, errno.ELOOP, errno.ENODEV):
            with contextlib.suppress(OSError):
                mode = os.lstat(real).st_mode
                if stat.S_ISLNK(mode):  # a loop, or a link made since it was resolved
                    raise _unfollowable(path) from None
                raise _not_regular(path, mode) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unfollowable(path: str | os.PathLike) -> RepositoryError:
    return RepositoryError(
        f"{path} is a link phobbit cannot follow (a loop, or one made while it was "
        "opened); put the file itself there (or remove the link), or use another "
        "repository folder"
    )


def _not_regular(path: str | os.PathLike, mode: int) -> RepositoryError:
    return RepositoryError(
        f"{path} is {_kind(mode)}, not a regular file; phobbit reads and writes only "
        f"plain files in a repository: {_REMEDY}"
    )


def _kind(mode: int) -> str:
    """What a file of ``mode`` is, in words (``a FIFO (named pipe)``)."""
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a link"),
    )
    return next((word for test, word in kinds if test(mode)), "not a regular file")
