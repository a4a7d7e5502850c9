"""Rows of a repository's files that this run cannot have written, skipped with a warning.

A CRC-valid row can still be a hand edit or another run's (rung 999, epoch 10**30,
hyperparameters outside the space): ``phobbit.core.provenance`` says why, and
``possible`` lets through only the rows it allows, so that no reader (the plan, the
results table, ``status``, ``best``, ``plot``, ``tensorboard``) takes them as data.
Each file's skipped rows are logged once, with their count and the first reason,
on the ``phobbit.skipped`` logger, which the command line prints on stderr.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import TypeVar

Row = TypeVar("Row")

SKIPPED_LOGGER = "phobbit.skipped"
log = logging.getLogger(SKIPPED_LOGGER)


def possible(
    rows: Iterable[Row],
    why: Callable[[Row], str | None],
    path: str | os.PathLike,
    warned: MutableMapping[str, int],
) -> Iterator[Row]:
    """The ``rows`` that ``why`` allows, in order; the others are skipped.

    Once the rows are read to the end, the skipped ones are logged as one warning
    naming ``path``, unless ``warned`` (the caller's memory of what it logged, by
    path) says the same count was logged before: a file read twice warns once.
    """
    skipped, first = 0, ""
    for row in rows:
        reason = why(row)
        if reason is None:
            yield row
            continue
        skipped += 1
        first = first or (reason if len(reason) <= 200 else f"{reason[:197]}...")
    warn_skipped(path, skipped, first, warned)


def warn_skipped(
    path: str | os.PathLike, skipped: int, first: str, warned: MutableMapping[str, int]
) -> None:
    """Logs ``skipped`` rows of ``path`` (``first`` the first one's reason) as one warning,
    unless there are none or ``warned`` says the same count was logged before."""
    if skipped and warned.get(str(path)) != skipped:
        warned[str(path)] = skipped
        log.warning(
            "%s: skipped %d row(s) that this run cannot have written (the first: %s); "
            "they were edited, or are another run's",
            path,
            skipped,
            first,
        )
