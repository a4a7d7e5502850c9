"""CRC-framed CSV lines, the format of every file the repository appends to.

Each line is its fields as CSV, a comma, and the CRC32 of everything before it: a
line torn by a kill in the middle of a write fails its check and is skipped, never
parsed as data. ``results.csv``, ``epochs.csv`` and ``decisions.csv`` are written
with ``framed``, and read with ``read_framed``, which hands each line to the
file's own decoder (built on ``unframed``) and skips the lines it refuses.
"""

from __future__ import annotations

import csv
import io
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO, TypeVar

from phobbit.errors import RepositoryError
from phobbit.storage import files

T = TypeVar("T")


def float_text(value: float | None) -> str:
    """A float as a CSV field: its repr, or empty for None (read back exactly)."""
    return "" if value is None else repr(float(value))


def float_value(text: str) -> float | None:
    """The float of a ``float_text`` field."""
    return None if text == "" else float(text)


def framed(fields: Sequence[Any]) -> str:
    """One CSV line of ``fields``, newline included, ending with its CRC32."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)
    body = buffer.getvalue() + ","
    return f"{body}{zlib.crc32(body.encode()):08x}\n"


def unframed(line: str | bytes) -> list[str] | None:
    """The fields of a CRC-framed line, or None for a torn, corrupt or header line."""
    raw_line = line.encode() if isinstance(line, str) else line
    if not raw_line.endswith(b"\n"):
        return None
    body, _, crc = raw_line[:-1].rpartition(b",")
    if not body or f"{zlib.crc32(body + b','):08x}".encode() != crc:
        return None
    try:
        text = body.decode()
        allow_fields_of(len(text))
        return next(csv.reader([text]))
    except (UnicodeDecodeError, csv.Error, StopIteration):
        return None


def is_header(first: bytes, header: str, *older: str) -> bool:
    """Whether ``first``, a file's first line, is its ``header`` (or an ``older`` one), or a
    header still being written or cut short (a kill, a full disk): none of them holds rows."""
    whole = header.encode()
    if first == whole or first in (h.encode() for h in older):
        return True
    return not first.endswith(b"\n") and whole.startswith(first)


def open_framed(path: str | os.PathLike, remedy: str = "") -> BinaryIO | None:
    """``path`` opened for reading bytes; None when it does not exist (yet).

    It is opened as every file of the repository is (``phobbit.storage.files``): a
    link out of its folder, a FIFO or a device is refused, never read.

    Raises:
        RepositoryError: ``cannot read <path>: <why>``, then ``; <remedy>`` if given;
            or ``files``' refusal.
    """
    try:
        return files.open_read(path)
    except OSError as exc:
        tail = f"; {remedy}" if remedy else ""
        raise RepositoryError(f"cannot read {path}: {exc.strerror}{tail}") from None


def read_framed(
    path: str | os.PathLike,
    decode: Callable[[bytes], T | None],
    check_header: Callable[[bytes], None] | None = None,
    remedy: str = "",
) -> Iterator[T]:
    """What ``decode`` reads from every line of a CRC-framed file, in the order written.

    Lines ``decode`` refuses (None: torn, corrupt, hostile or a header) are skipped. A
    file that does not exist yields nothing.

    Args:
        path: the file.
        decode: one line's value, or None to skip it.
        check_header: given the first line (``b""`` for an empty file), raises when the
            file is not what it should be; None reads the first line as any other.
        remedy: what to do, said after the message when the file cannot be opened.

    Raises:
        RepositoryError: when the file cannot be opened or read, or ``check_header``'s.
    """
    handle = open_framed(path, remedy)
    if handle is None:
        return
    with handle:
        try:
            if check_header is not None:
                check_header(handle.readline(files.MAX_LINE_BYTES))
            for line in bounded_lines(handle):
                value = decode(line)
                if value is not None:
                    yield value
        except OSError as exc:
            raise RepositoryError(f"cannot read {path}: {exc.strerror}") from None


def bounded_lines(handle: BinaryIO, limit: int = files.MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines of ``handle``, each read up to ``limit`` bytes; a longer one is skipped.

    No line phobbit writes comes near ``limit``; a file without newlines (random
    bytes, a copy of a disk image) would otherwise be read whole into memory.
    """
    while line := handle.readline(limit + 1):
        if len(line) <= limit:
            yield line
            continue
        while line and not line.endswith(b"\n"):  # the rest of the long line
            line = handle.readline(limit + 1)


_FIELD_LIMIT = threading.Lock()
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def allow_fields_of(size: int) -> None:
    """Raises the csv module's field size limit (128 KiB by default) to at least ``size``.

    The writer has no such limit, so without this a row holding a long choice
    value would be written but never read back, and its segment trained on
    every resume. The limit is process-wide; it is only ever raised, under a lock.
    """
    with _FIELD_LIMIT:
        if csv.field_size_limit() < size:
            csv.field_size_limit(size)


def nesting(text: str) -> int:
    """How deeply the JSON ``text`` nests arrays and objects, counted without parsing it."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest
