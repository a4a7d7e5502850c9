"""CRC-framed CSV lines, the format of every file the repository appends to.

Each line is its fields as CSV, a comma, and the CRC32 of everything before it: a
line torn by a kill in the middle of a write fails its check and is skipped, never
parsed as data. ``results.csv``, ``epochs.csv`` and ``decisions.csv`` are written
with ``framed`` and read with ``unframed``.
"""

from __future__ import annotations

import csv
import io
import re
import threading
import zlib
from collections.abc import Sequence
from typing import Any


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
