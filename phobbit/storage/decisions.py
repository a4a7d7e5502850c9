"""``decisions.csv``: what a run decided before it trained, for runs whose decisions
depend on the order of results (ASHA, TPE sampling).

Every decision (a segment ASHA dispatches, or a configuration a lazy sampler
drew) is appended as one row before its segment trains, as ``results.csv`` rows
are: under the results lock, only while the driver holds the repository's
fencing token, in a single write, each row ending with a CRC32 of the rest of
it, so a row torn by a kill is skipped. A resumed run reads them back in order
and rebuilds what it decided; a decision with no result yet is dispatched again
as it was, so nothing is trained twice and nothing is lost.

Example:
    >>> log = DecisionLog(repository)
    >>> log.append(segment, fence=token)     # before the segment trains
    >>> [d.key for d in log.read()]
"""

from __future__ import annotations

import json
from typing import Any

from phobbit.core.records import Segment
from phobbit.core.space import MAX_NESTING
from phobbit.errors import RepositoryError
from phobbit.storage.framing import (
    float_text,
    float_value,
    framed,
    is_header,
    nesting,
    read_framed,
    unframed,
)
from phobbit.storage.repository import DECISIONS, Repository

COLUMNS = ("iteration", "run", "id", "rung", "start_epoch", "epochs", "prior_best", "hparams")
HEADER = ",".join(COLUMNS) + ",crc\n"


def encode_decision(segment: Segment) -> str:
    """One CSV line of a decision, newline included, ending with its CRC32."""
    values = [
        segment.iteration,
        segment.s,
        segment.id,
        segment.rung,
        segment.start_epoch,
        segment.epochs,
        float_text(segment.prior_best),
        json.dumps(segment.hparams, sort_keys=True),
    ]
    return framed(values)


def decode_decision(line: bytes) -> dict[str, Any] | None:
    """The fields of a decision line, or None for a torn, corrupt or header line."""
    fields = unframed(line)
    if fields is None:
        return None
    if len(fields) != len(COLUMNS):
        return None
    raw = dict(zip(COLUMNS, fields))
    if nesting(raw["hparams"]) > 1 + MAX_NESTING:
        return None
    try:
        hparams = json.loads(raw["hparams"])
        if not isinstance(hparams, dict):
            return None
        out: dict[str, Any] = {c: int(raw[c]) for c in COLUMNS[:6]}
        out["prior_best"] = float_value(raw["prior_best"])
        out["hparams"] = hparams
        return out
    except (ValueError, TypeError):
        return None


class DecisionLog:
    """The ``decisions.csv`` of a repository.

    Args:
        repository: the run's repository (its results lock and fence guard the file).
    """

    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.path = repository.path / DECISIONS

    def append(self, segment: Segment, fence: str | None = None) -> None:
        """Appends one decision under the results lock, with a single write.

        Raises:
            StaleDriverError: when ``fence`` is no longer the repository's token.
            StorageError: when the row cannot be written in full.
        """
        line = encode_decision(segment).encode()
        self.repository.append_framed([(self.path, line, HEADER)], fence)

    def read(self) -> list[Segment]:
        """Every intact decision, in the order recorded (torn or corrupt rows skipped).

        Raises:
            RepositoryError: when the file cannot be read or is not a decisions file.
        """
        return list(read_framed(self.path, self._decode, self._check_header))

    def _check_header(self, first: bytes) -> None:
        if not is_header(first, HEADER):  # a torn header: a full disk cut it
            raise RepositoryError(
                f"{self.path} is not a phobbit decisions file; restore it or use another "
                "repository folder"
            )

    def _decode(self, line: bytes) -> Segment | None:
        fields = decode_decision(line)
        if fields is None:
            return None
        return Segment(
            iteration=fields["iteration"],
            s=fields["run"],
            id=fields["id"],
            rung=fields["rung"],
            hparams=fields["hparams"],
            start_epoch=fields["start_epoch"],
            epochs=fields["epochs"],
            checkpoint=self.repository.checkpoint_stem(
                fields["iteration"], fields["run"], fields["id"]
            ),
            prior_best=fields["prior_best"],
        )
