"""The plan: what to train next and what each result unlocks. Pure, no I/O, no processes.

A ``Plan`` holds every bracket of every iteration at once. It hands out ready
segments (a configuration to train through one rung) in an order that keeps
workers busy, and takes back results, promoting a configuration as soon as the
reducer is certain it is among its rung's best. Whatever the order in which
results come back, the configurations and promotions are those of a serial run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from phobbit import reducer
from phobbit.repository import SegmentResult, config_name
from phobbit.schedule import Bracket, brackets
from phobbit.space import Space
from phobbit.worker import Segment


@dataclass
class _BracketState:
    """Bookkeeping of one bracket of one iteration."""

    iteration: int
    bracket: Bracket
    hparams: dict[int, dict[str, Any]]
    members: list[set[int]] = field(default_factory=list)
    finished: list[dict[int, float | None]] = field(default_factory=list)
    promoted: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        depth = len(self.bracket.rungs)
        self.members = [set(self.hparams)] + [set() for _ in range(depth - 1)]
        self.finished = [{} for _ in range(depth)]
        self.promoted = [[] for _ in range(depth)]

    def k(self, rung: int) -> int:
        """How many configurations rung ``rung`` promotes."""
        rungs = self.bracket.rungs
        return rungs[rung + 1].n if rung + 1 < len(rungs) else 0

    def closed(self, rung: int) -> bool:
        """Every trial that will ever reach ``rung`` has finished it."""
        if rung < 0:
            return True
        return self.closed(rung - 1) and len(self.finished[rung]) == len(self.members[rung])

    def unfinished(self, rung: int) -> int:
        """An upper bound on the trials of ``rung`` that may still finish."""
        running = len(self.members[rung]) - len(self.finished[rung])
        if rung == 0 or self.closed(rung - 1):
            return running
        return running + self.k(rung - 1) - len(self.promoted[rung - 1])

    def remaining_epochs(self, rung: int, workers: int) -> float:
        """The span of the bracket from ``rung`` on if it had every worker: its critical path."""
        span = 0.0
        for r in self.bracket.rungs[rung:]:
            left = r.n - len(self.finished[r.index])
            span += math.ceil(max(left, 0) / workers) * self.bracket.segment_epochs(r.index)
        return span


class Plan:
    """Every bracket of ``iterations`` Hyperband iterations, as a state machine.

    Args:
        space: the search space configurations are sampled from.
        R: the most epochs a configuration is trained.
        eta: the cut factor.
        seed: configuration (iteration, run, id) is drawn from (seed, iteration, run, id).
        iterations: how many Hyperband iterations, each with its own configurations.
        workers: how many segments run at once; it shapes the dispatch order only.
        checkpoint_dir: the folder that checkpoint path stems point into.

    Example:
        >>> plan = Plan(space, R=9, eta=3, seed=0)
        >>> segment = plan.next_segment()        # hand it to a worker ...
        >>> plan.record(result)                  # ... and give its result back
    """

    def __init__(
        self,
        space: Space,
        R: int,
        eta: int,
        seed: int = 0,
        iterations: int = 1,
        workers: int = 1,
        checkpoint_dir: str = "models",
    ) -> None:
        self.schedule = brackets(R, eta)
        self.R, self.eta, self.seed, self.workers = R, eta, seed, max(1, workers)
        self.checkpoint_dir = checkpoint_dir
        self._brackets: dict[tuple[int, int], _BracketState] = {}
        self._ready: dict[tuple[int, int, int, int], Segment] = {}
        self._outstanding: set[tuple[int, int, int, int]] = set()
        for iteration in range(iterations):
            for b in self.schedule:
                configs = {i: space.sample(seed, iteration, b.run, i) for i in range(b.n)}
                state = _BracketState(iteration, b, configs)
                self._brackets[(iteration, b.run)] = state
                for config_id in configs:
                    self._enqueue(state, config_id, rung=0, prior_best=None)

    # -- handing out work --------------------------------------------------------

    def _enqueue(
        self, state: _BracketState, config_id: int, rung: int, prior_best: float | None
    ) -> None:
        rungs = state.bracket.rungs
        stem = config_name(state.iteration, state.bracket.run, config_id)
        segment = Segment(
            iteration=state.iteration,
            run=state.bracket.run,
            id=config_id,
            rung=rung,
            hparams=state.hparams[config_id],
            start_epoch=rungs[rung - 1].epochs if rung > 0 else 0,
            epochs=rungs[rung].epochs,
            checkpoint=os.path.join(self.checkpoint_dir, stem),
            prior_best=prior_best,
        )
        self._ready[segment.key] = segment

    def priority(self, segment: Segment) -> tuple:
        """Higher runs first: the longest chain of epochs still ahead of the segment,
        then the span of what is left of its bracket, then the longest segment."""
        state = self._brackets[(segment.iteration, segment.run)]
        chain = self.R - segment.start_epoch
        span = state.remaining_epochs(segment.rung, self.workers)
        return (chain, span, segment.epochs - segment.start_epoch, -segment.iteration, -segment.id)

    def next_segment(self) -> Segment | None:
        """The ready segment that shortens the run most, now marked outstanding; None if none."""
        if not self._ready:
            return None
        key = max(self._ready, key=lambda k: self.priority(self._ready[k]))
        self._outstanding.add(key)
        return self._ready.pop(key)

    def ready(self) -> list[Segment]:
        """Segments that could start now, without taking them."""
        return list(self._ready.values())

    def give_back(self, segment: Segment) -> None:
        """Puts an outstanding segment back among the ready ones (its worker died)."""
        self._outstanding.discard(segment.key)
        self._ready[segment.key] = segment

    # -- taking results back ------------------------------------------------------

    def record(self, result: SegmentResult) -> list[Segment]:
        """Records a finished segment; returns the segments its result made ready."""
        key = result.key
        state = self._brackets.get((result.iteration, result.run))
        if state is None or result.id not in state.members[result.rung]:
            raise ValueError(f"segment {key} is not part of this plan")
        if result.id in state.finished[result.rung]:
            return []  # a duplicate row, e.g. a retried segment that did finish
        self._outstanding.discard(key)
        self._ready.pop(key, None)
        state.finished[result.rung][result.id] = result.val_loss if result.ok else None
        before = set(self._ready)
        for rung in range(result.rung, len(state.bracket.rungs) - 1):
            chosen = reducer.certain_promotions(
                state.finished[rung], state.k(rung), state.unfinished(rung)
            )
            for config_id in chosen:
                if config_id not in state.promoted[rung]:
                    state.promoted[rung].append(config_id)
                    state.members[rung + 1].add(config_id)
                    self._enqueue(state, config_id, rung + 1, state.finished[rung][config_id])
        return [self._ready[k] for k in self._ready if k not in before]

    @property
    def done(self) -> bool:
        """Nothing is ready and nothing is outstanding: every bracket has finished."""
        return not self._ready and not self._outstanding

    @property
    def outstanding(self) -> int:
        """How many handed-out segments have not come back."""
        return len(self._outstanding)

    def promotions(self) -> dict[tuple[int, int, int], list[int]]:
        """(iteration, run, rung) -> IDs promoted from that rung, in order of certainty."""
        return {
            (i, s, rung): list(ids)
            for (i, s), state in self._brackets.items()
            for rung, ids in enumerate(state.promoted)
            if rung < len(state.bracket.rungs) - 1
        }

    def progress(self) -> Iterator[tuple[int, int, int, int, int]]:
        """(iteration, run, rung, finished, n) for every rung, for progress displays."""
        for (i, s), state in sorted(self._brackets.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
            for r in state.bracket.rungs:
                yield (i, s, r.index, len(state.finished[r.index]), r.n)

    def total_segments(self) -> int:
        """How many segments a run of this plan trains at most."""
        return sum(r.n for state in self._brackets.values() for r in state.bracket.rungs)
