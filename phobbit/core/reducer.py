"""The reducer: which configurations of a rung go on to the next. Pure, no I/O.

A rung keeps its ``k = floor(n_i / eta)`` best configurations by Val Loss (the
lowest validation loss seen so far), ties broken by ID; a failed configuration (an
exception, a NaN or infinite loss) ranks last and is never promoted.

Early promotion: a finished configuration is promoted before its rung has
finished when it is certain to be among the best k whatever the unfinished
configurations score, that is when the finished ones that beat it plus every
configuration still unfinished are fewer than k. The set promoted that way is
always a subset of, and in the end equal to, what a serial run promotes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping


def rank_key(config_id: int, val_loss: float | None) -> tuple[int, float, int]:
    """Sort key of a finished configuration: failed (None or NaN) last, then loss, then ID."""
    if val_loss is None or math.isnan(val_loss):
        return (1, math.inf, config_id)
    return (0, val_loss, config_id)


def ranked(finished: Mapping[int, float | None]) -> list[int]:
    """IDs of the finished configurations from best to worst."""
    return sorted(finished, key=lambda i: rank_key(i, finished[i]))


def certain_promotions(finished: Mapping[int, float | None], k: int, unfinished: int) -> list[int]:
    """The finished configurations already certain to be among the best ``k``.

    Args:
        finished: ID -> Val Loss of every finished configuration of the rung (None if failed).
        k: how many configurations the rung promotes.
        unfinished: how many configurations of the rung may still finish, an upper bound.

    Returns:
        IDs, best first. With ``unfinished == 0`` this is exactly the serial
        reducer's choice: the best ``k`` that did not fail.
    """
    promoted = []
    for position, config_id in enumerate(ranked(finished)):
        if position + unfinished >= k:
            break
        if rank_key(config_id, finished[config_id])[0]:
            break  # failed configurations are never promoted
        promoted.append(config_id)
    return promoted


class RungRanking:
    """The finished configurations of one rung, promoting them as ``certain_promotions`` does in
    O(log n) per result instead of a sort of the whole rung per result.

    Promotions only ever grow a prefix of the ranking: the promoted are always
    the best so far, and a configuration that finishes ahead of one already promoted is
    itself certain the moment it finishes (it took the place of an unfinished
    configuration, so the count of those that could still beat it fell by one). So only
    the configurations not yet promoted are kept, in a heap by rank, and one is
    certain when the promoted plus every unfinished configuration are fewer than k.

    Example:
        >>> ranking = RungRanking()
        >>> ranking.add(3, 0.5)
        >>> ranking.promote(k=1, unfinished=0)
        [3]
    """

    def __init__(self) -> None:
        self._waiting: list[tuple[int, float, int]] = []  # rank keys of the unpromoted
        self.promoted = 0

    def add(self, config_id: int, val_loss: float | None) -> None:
        """A configuration of the rung finished with ``val_loss`` (None: it failed)."""
        heapq.heappush(self._waiting, rank_key(config_id, val_loss))

    def promote(self, k: int, unfinished: int) -> list[int]:
        """The configurations newly certain to be among the best ``k``, best first.

        Args:
            k: how many configurations the rung promotes.
            unfinished: how many configurations of the rung may still finish, an upper bound
                that never grows from one call to the next.
        """
        chosen = []
        while self._waiting and self.promoted + unfinished < k and not self._waiting[0][0]:
            chosen.append(heapq.heappop(self._waiting)[2])
            self.promoted += 1
        return chosen


def serial_promotions(finished: Mapping[int, float | None], k: int) -> list[int]:
    """What a serial run promotes from a rung that has wholly finished."""
    return certain_promotions(finished, k, unfinished=0)


def best_so_far(losses: Iterable[float], before: float | None = None) -> float | None:
    """The lowest loss among ``losses`` and ``before``; None when there is none."""
    values = [v for v in losses if v is not None and math.isfinite(v)]
    if before is not None:
        values.append(before)
    return min(values) if values else None
