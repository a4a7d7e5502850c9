"""A column index of ``results.csv``: what ``status`` and ``best`` need, read in a blink.

Decoding a row (its CRC, its CSV, its hparams' JSON, its provenance) costs tens of
microseconds; a run of 100,000 rows would keep ``phobbit status`` busy for seconds.
The index holds the numbers of every row the run can have written (key, epochs,
losses, times, status) in flat arrays, with each row's byte offset in the file, so
that a reader ranks and counts from the arrays and decodes in full only the rows it
shows. It is saved beside the results (``.results.index``, replaced whole, best
effort: a folder the reader cannot write is read the slow way each time) and
extended on the next read by the rows appended since: ``results.csv`` only grows by
appends, so the rows before the saved offset are the ones indexed. The index is
thrown away and built again when the file is another (a new inode: a migrated
header), when the bytes it indexed differ (an edit: their CRC32 is kept), when ``run.json``
changes what rows the run can have written (more iterations), or when the index
file itself is damaged. It holds numbers only, never code or pickles: a hostile
index can at worst make a reader build it again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import zlib
from array import array
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phobbit.core.records import SegmentKey, SegmentResult
from phobbit.errors import RepositoryError
from phobbit.storage import files
from phobbit.storage.sifting import warn_skipped

if TYPE_CHECKING:
    from phobbit.core.provenance import Provenance

INDEX = ".results.index"
VERSION = 1
CHUNK_BYTES = 2**20
MAX_INDEX_BYTES = 2**31  # about 24 million rows; a larger index is built anew on each read
_INTS = ("iteration", "s", "id", "rung", "start_epoch", "epochs", "offset")
_FLOATS = ("val_loss", "objective", "start", "end")
_FLAGS = ("ok", "final")
OK, FINAL = 1, 2  # the bits of ``ResultsIndex.flags``


@dataclass
class ResultsIndex:
    """The indexed rows of ``results.csv``, in the order written (see the module's docstring).

    Each attribute of ``_INTS``, ``_FLOATS`` and ``flags`` holds one value per row that
    the run can have written: ``val_loss`` and ``objective`` are NaN where the row has
    none; ``offset`` is where the row's line starts in the file; ``flags`` has bit 1
    for an ``ok`` row and bit 2 for a ``final`` one.

    Attributes:
        path: the results file.
        decode: a line's row, or None (``repository.decode_row``).
        size: the bytes of the file indexed (up to the last whole line).
        skipped: rows the run cannot have written, left out; ``first`` says why the
            first was.
    """

    path: Path
    decode: Callable[[bytes], SegmentResult | None]
    iteration: array = field(default_factory=lambda: array("q"))
    s: array = field(default_factory=lambda: array("q"))
    id: array = field(default_factory=lambda: array("q"))
    rung: array = field(default_factory=lambda: array("q"))
    start_epoch: array = field(default_factory=lambda: array("q"))
    epochs: array = field(default_factory=lambda: array("q"))
    offset: array = field(default_factory=lambda: array("q"))
    val_loss: array = field(default_factory=lambda: array("d"))
    objective: array = field(default_factory=lambda: array("d"))
    start: array = field(default_factory=lambda: array("d"))
    end: array = field(default_factory=lambda: array("d"))
    flags: array = field(default_factory=lambda: array("B"))
    size: int = 0
    skipped: int = 0
    first: str = ""

    def __len__(self) -> int:
        return len(self.offset)

    def keys(self) -> list[SegmentKey]:
        """Every row's segment key, (iteration, s, id, rung)."""
        return list(zip(self.iteration, self.s, self.id, self.rung))

    def kept(self) -> list[int]:
        """The rows ``Repository.iter_results`` yields, by index: every ok row, and a failed
        row only when no later row of its segment supersedes it."""
        keys = self.keys()
        last = dict(zip(keys, range(len(keys))))  # a later row of a key overwrites
        flags = self.flags
        return [i for i in range(len(keys)) if flags[i] & OK or last[keys[i]] == i]

    def segments(self) -> list[int]:
        """The rows ``Repository.results`` holds, by index: the first kept final row of
        every segment, in the order they were first written."""
        keys, flags = self.keys(), self.flags
        first: dict[SegmentKey, int] = {}
        for i in self.kept():
            if flags[i] & FINAL:
                first.setdefault(keys[i], i)
        return list(first.values())

    def ok(self, i: int) -> bool:
        """Whether row ``i`` trained without failing."""
        return bool(self.flags[i] & OK)

    def final(self, i: int) -> bool:
        """Whether row ``i`` is final (``SegmentResult.final``)."""
        return bool(self.flags[i] & FINAL)

    def value(self, column: str, i: int) -> float | None:
        """A float column's value of row ``i``, None where the row has none."""
        found = getattr(self, column)[i]
        return None if math.isnan(found) else found

    def rows(self, indices: list[int]) -> list[SegmentResult]:
        """Rows ``indices`` decoded in full from the file (their hparams, error, gpu ...).

        Raises:
            RepositoryError: when the file cannot be read again, or no longer holds them.
        """
        found = []
        try:
            handle = files.open_read(self.path)
            if handle is None:
                raise FileNotFoundError(self.path)
            with handle:
                for i in indices:
                    handle.seek(self.offset[i])
                    row = self.decode(handle.readline(files.MAX_LINE_BYTES))
                    if row is None:
                        raise RepositoryError(f"{self.path} changed while it was read; try again")
                    found.append(row)
        except OSError as exc:
            raise RepositoryError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        return found

    def _add(self, row: SegmentResult, offset: int) -> None:
        for name in ("iteration", "s", "id", "rung", "start_epoch", "epochs"):
            getattr(self, name).append(getattr(row, name))
        self.offset.append(offset)
        self.val_loss.append(math.nan if row.val_loss is None else row.val_loss)
        self.objective.append(math.nan if row.objective is None else row.objective)
        self.start.append(row.start)
        self.end.append(row.end)
        self.flags.append((OK if row.ok else 0) | (FINAL if row.final else 0))

    def _columns(self) -> Iterator[array]:
        for name in (*_INTS, *_FLOATS, "flags"):
            yield getattr(self, name)


def read_index(
    path: Path,
    provenance: Provenance | None,
    check_header: Callable[[bytes], None],
    warned: MutableMapping[str, int],
    decode: Callable[[bytes], SegmentResult | None],
    remedy: str = "",
    save: bool = True,
) -> ResultsIndex:
    """The index of results file ``path``: the saved one, extended by the rows appended
    since, or a new one when it is missing or no longer fits (see the module's docstring).

    Args:
        path: ``results.csv``.
        provenance: what rows the run can have written; None indexes every intact row.
        check_header: raises ``RepositoryError`` for a first line that is no results header.
        warned: the repository's memory of skipped rows it logged (``sifting.possible``).
        decode: a line's row, or None for a torn, corrupt or header line.
        remedy: what to do when the file cannot be read, said after the message.
        save: write the index back when it grew (best effort).

    Raises:
        RepositoryError: when ``results.csv`` cannot be read or is not a results file.
    """
    try:
        handle = files.open_read(path)
    except OSError as exc:
        tail = f"; {remedy}" if remedy else ""
        raise RepositoryError(f"cannot read {path}: {exc.strerror}{tail}") from None
    if handle is None:
        return ResultsIndex(path, decode)
    sift = _fingerprint(provenance)
    with handle:
        stat = os.fstat(handle.fileno())
        index = _load(path, decode, stat, sift, handle)
        grown = index is None
        if index is None:
            index = ResultsIndex(path, decode)
            check_header(handle.readline(files.MAX_LINE_BYTES))
            index.size = handle.tell()
        handle.seek(index.size)
        try:
            grown = _extend(index, handle, provenance) or grown
        except OSError as exc:
            raise RepositoryError(f"cannot read {path}: {exc.strerror}") from None
    warn_skipped(path, index.skipped, index.first, warned)
    if grown and save:
        _save(path, stat, sift, index)
    return index


def _extend(index: ResultsIndex, handle: Any, provenance: Provenance | None) -> bool:
    """Indexes the whole lines from ``index.size`` on; returns whether it read any."""
    limit, grown = files.MAX_LINE_BYTES, False
    while line := handle.readline(limit + 1):
        if len(line) > limit:  # no row phobbit writes: skipped whole, as every reader does
            while line and not line.endswith(b"\n"):
                line = handle.readline(limit + 1)
            if not line:
                break  # still being written: read it next time
            index.size, grown = handle.tell(), True
            continue
        if not line.endswith(b"\n"):
            break  # a row being written (or torn at the end): read it next time
        offset = index.size
        index.size, grown = offset + len(line), True
        row = index.decode(line)
        if row is None:
            continue
        reason = None if provenance is None else provenance.result(row)
        if reason is None:
            index._add(row, offset)
            continue
        index.skipped += 1
        index.first = index.first or (reason if len(reason) <= 200 else f"{reason[:197]}...")
    return grown


def _fingerprint(provenance: Provenance | None) -> str:
    """What rows the index admits, as a short digest (the provenance's fields)."""
    return hashlib.sha256(repr(provenance).encode()).hexdigest()[:32]


def _prefix_crc(handle: Any, size: int) -> int:
    """The CRC32 of the first ``size`` bytes of ``handle``'s file: any edit of the rows
    indexed changes it (tens of milliseconds for 100,000 rows, read from the page cache)."""
    crc, at = 0, 0
    while at < size:
        chunk = os.pread(handle.fileno(), min(CHUNK_BYTES, size - at), at)
        if not chunk:
            break
        crc, at = zlib.crc32(chunk, crc), at + len(chunk)
    return crc


def _load(
    path: Path,
    decode: Callable[[bytes], SegmentResult | None],
    stat: os.stat_result,
    sift: str,
    handle: Any,
) -> ResultsIndex | None:
    """The saved index of ``path``, if it still fits the file; None when it must be built."""
    try:
        raw = files.read_whole(path.with_name(INDEX), path.parent, MAX_INDEX_BYTES)
    except (OSError, RepositoryError):
        return None
    if raw is None:
        return None
    try:
        head, _, body = raw.partition(b"\n")
        meta = json.loads(head)
        if (
            meta.get("version") != VERSION
            or meta.get("byteorder") != sys.byteorder
            or meta.get("file") != [stat.st_dev, stat.st_ino]
            or meta.get("sift") != sift
        ):
            return None
        size, rows = int(meta["size"]), int(meta["rows"])
        if not 0 < size <= stat.st_size or rows < 0 or _prefix_crc(handle, size) != meta["crc"]:
            return None
        index = ResultsIndex(
            path, decode, size=size, skipped=int(meta["skipped"]), first=str(meta["first"])
        )
        at = 0
        for column in index._columns():
            width = column.itemsize * rows
            column.frombytes(body[at : at + width])
            at += width
        if at != len(body) or len(index.offset) != rows:
            return None
        return index
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OSError):
        return None


def _save(path: Path, stat: os.stat_result, sift: str, index: ResultsIndex) -> None:
    """Writes the index beside ``path`` (temporary file, then replace); skipped on failure."""
    try:
        handle = files.open_read(path, path.parent)
        if handle is None:
            return
        with handle:
            if os.fstat(handle.fileno()).st_ino != stat.st_ino:
                return  # replaced since it was read (a migrated header): index it next time
            crc = _prefix_crc(handle, index.size)
        meta = {
            "version": VERSION,
            "byteorder": sys.byteorder,
            "file": [stat.st_dev, stat.st_ino],
            "sift": sift,
            "size": index.size,
            "rows": len(index),
            "crc": crc,
            "skipped": index.skipped,
            "first": index.first,
        }
        body = b"".join(column.tobytes() for column in index._columns())
        files.replace(path.with_name(INDEX), json.dumps(meta).encode() + b"\n" + body, path.parent)
    except (OSError, RepositoryError):
        pass  # a folder this reader cannot write: the next read builds it again
