"""The plan: what to train next and what each result unlocks. Pure, no I/O, no processes.

A ``Plan`` holds every bracket of every iteration at once. It hands out ready
segments (a configuration to train through one rung) in an order that keeps
workers busy, and takes back results, promoting a configuration as soon as the
reducer is certain it is among its rung's best. Whatever the order in which
results come back, the configurations and promotions are those of a serial run.

The dispatch order is *latest start first*. Before anything runs, the plan
schedules the shape of the run (how many segments of how many epochs each rung
holds) backwards in time on the workers, from the last rungs to the first, as
if each rung could start only once the one before it had finished. Read
forwards, that gives every segment of every rung the latest moment it can start
without lengthening the run; a free worker takes the ready segment whose latest
start is earliest. It pulls long chains (deep brackets) forward and lets
independent long segments (the last bracket's) fill the end, and it beat every
greedy rule tried in ``benchmarks/simulation.py`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from phobbit import reducer
from phobbit.records import RungKey, Segment, SegmentKey, SegmentResult, config_name
from phobbit.schedule import Bracket, brackets
from phobbit.space import Space


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


def _rung_key(segment: Segment) -> RungKey:
    return (segment.iteration, segment.run, segment.rung)


def latest_starts(
    schedule: list[Bracket], iterations: int, workers: int
) -> dict[RungKey, list[int]]:
    """When each segment of each rung must start at the latest, in epochs from the start.

    A list schedule run backwards: the last rung of every bracket is ready at
    the (reversed) start, a rung becomes ready once every segment of the rung
    after it has finished, and a free worker takes the ready segment that sits
    deepest in its bracket (the most epochs before it), then the longest. Read
    forwards, a segment that finishes at reversed time t may start at T - t at
    the latest, T being the reversed makespan.

    Args:
        schedule: the brackets of one iteration.
        iterations: how many iterations run at once.
        workers: how many segments run at once.

    Returns:
        (iteration, run, rung) -> the rung's latest start times, earliest first:
        the k-th segment of the rung to start should start by the k-th.
    """
    workers = max(1, workers)
    by_run = {b.run: b for b in schedule}
    tiebreak = itertools.count()
    ready: list[tuple[int, int, int, int, RungKey]] = []
    waiting: dict[RungKey, int] = {}

    def release(key: RungKey) -> None:
        bracket = by_run[key[1]]
        rung = bracket.rungs[key[2]]
        waiting[key] = rung.n
        before = bracket.rungs[rung.index - 1].epochs if rung.index else 0
        for _ in range(rung.n):
            # Deepest first backwards is last forwards: the ends of long chains
            # close the run, shallow rungs go early; later iterations go later.
            entry = (-before, -bracket.segment_epochs(rung.index), -key[0], next(tiebreak), key)
            heapq.heappush(ready, entry)

    for iteration in range(iterations):
        for bracket in schedule:
            release((iteration, bracket.run, len(bracket.rungs) - 1))
    clock, running = 0, []
    finished: dict[RungKey, list[int]] = {}
    while ready or running:
        while ready and len(running) < workers:
            key = heapq.heappop(ready)[-1]
            epochs = by_run[key[1]].segment_epochs(key[2])
            heapq.heappush(running, (clock + epochs, next(tiebreak), key))
        clock, _, key = heapq.heappop(running)
        finished.setdefault(key, []).append(clock)
        waiting[key] -= 1
        if waiting[key] == 0 and key[2] > 0:
            release((key[0], key[1], key[2] - 1))
    return {key: sorted(clock - t for t in ends) for key, ends in finished.items()}


class Plan:
    """Every bracket of ``iterations`` Hyperband iterations, as a state machine.

    Args:
        space: the search space configurations are sampled from.
        R: the most epochs a configuration is trained.
        eta: the cut factor.
        seed: configuration (iteration, run, id) is drawn from (seed, iteration, run, id).
        iterations: how many Hyperband iterations, each with its own configurations.
        workers: how many segments run at once; it shapes the dispatch order only.
        checkpoint_of: (iteration, run, id) -> the checkpoint path stem a segment
            carries (the repository knows where checkpoints live); by default the
            bare ``config_name``.

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
        checkpoint_of: Callable[[int, int, int], str] = config_name,
    ) -> None:
        self.schedule = brackets(R, eta)
        self.R, self.eta, self.seed, self.workers = R, eta, seed, max(1, workers)
        self.checkpoint_of = checkpoint_of
        self._brackets: dict[tuple[int, int], _BracketState] = {}
        self._ready: dict[SegmentKey, Segment] = {}
        self._outstanding: set[SegmentKey] = set()
        self._latest = latest_starts(self.schedule, iterations, self.workers)
        # Per rung: the IDs ready to start (a heap, lowest first, from which IDs
        # no longer ready are dropped lazily), how many, and how many segments
        # have started (handed out or finished): that says which latest start is
        # the rung's next. _queue orders the rungs with ready work; an entry is
        # current while its version is the rung's, so a rung whose rank changes
        # is pushed again, never searched for.
        self._ready_ids: dict[RungKey, list[int]] = {}
        self._ready_count: Counter[RungKey] = Counter()
        self._started: Counter[RungKey] = Counter()
        self._version: Counter[RungKey] = Counter()
        self._queue: list[tuple[tuple, int, RungKey]] = []
        self._new: list[Segment] = []
        for iteration in range(iterations):
            for b in self.schedule:
                configs = {i: space.sample(seed, iteration, b.run, i) for i in range(b.n)}
                state = _BracketState(iteration, b, configs)
                self._brackets[(iteration, b.run)] = state
                for config_id in configs:
                    self._enqueue(state, config_id, rung=0, prior_best=None)
        self._new.clear()

    # -- handing out work --------------------------------------------------------

    def _enqueue(
        self, state: _BracketState, config_id: int, rung: int, prior_best: float | None
    ) -> None:
        rungs = state.bracket.rungs
        segment = Segment(
            iteration=state.iteration,
            run=state.bracket.run,
            id=config_id,
            rung=rung,
            hparams=state.hparams[config_id],
            start_epoch=rungs[rung - 1].epochs if rung > 0 else 0,
            epochs=rungs[rung].epochs,
            checkpoint=self.checkpoint_of(state.iteration, state.bracket.run, config_id),
            prior_best=prior_best,
        )
        self._make_ready(segment)
        self._new.append(segment)

    def _make_ready(self, segment: Segment) -> None:
        self._ready[segment.key] = segment
        group = _rung_key(segment)
        heapq.heappush(self._ready_ids.setdefault(group, []), segment.id)
        self._ready_count[group] += 1
        if self._ready_count[group] == 1:
            self._requeue(group)

    def _requeue(self, group: RungKey) -> None:
        """Puts rung ``group`` in the queue at its current rank (older entries go stale)."""
        self._version[group] += 1
        if self._ready_count[group]:
            heapq.heappush(self._queue, (self._rank(group), self._version[group], group))

    def _latest_start(self, group: RungKey) -> int:
        """When the next segment of rung ``group`` to start should start at the latest."""
        starts = self._latest.get(group)
        if not starts:
            return 0
        return starts[min(self._started[group], len(starts) - 1)]

    def _rank(self, group: RungKey) -> tuple:
        """A rung's place in the dispatch order, lowest first: see ``priority``."""
        iteration, run, rung = group
        epochs = self._brackets[(iteration, run)].bracket.segment_epochs(rung)
        return (self._latest_start(group), -epochs, iteration, -run, rung)

    def priority(self, segment: Segment) -> tuple:
        """Higher runs first: the earliest latest start (see ``latest_starts``), then the
        longest segment, then the earliest iteration, the deepest bracket, the lowest ID.

        ``next_segment`` returns the ready segment of highest priority.
        """
        rank = self._rank(_rung_key(segment))
        return tuple(-x for x in rank) + (-segment.id,)

    def next_segment(self) -> Segment | None:
        """The ready segment that shortens the run most, now marked outstanding; None if none."""
        while self._queue:
            _, version, group = heapq.heappop(self._queue)
            if version != self._version[group]:
                continue
            ids = self._ready_ids[group]
            while (group[0], group[1], ids[0], group[2]) not in self._ready:
                heapq.heappop(ids)  # recorded without being handed out
            key = (group[0], group[1], heapq.heappop(ids), group[2])
            segment = self._ready.pop(key)
            self._outstanding.add(key)
            self._ready_count[group] -= 1
            self._started[group] += 1
            self._requeue(group)
            return segment
        return None

    def ready(self) -> list[Segment]:
        """Segments that could start now, without taking them."""
        return list(self._ready.values())

    def give_back(self, segment: Segment) -> None:
        """Puts an outstanding segment back among the ready ones (its worker died)."""
        if segment.key in self._ready:
            return
        if segment.key in self._outstanding:
            self._outstanding.discard(segment.key)
            self._started[_rung_key(segment)] -= 1
        self._make_ready(segment)
        if self._ready_count[_rung_key(segment)] > 1:
            self._requeue(_rung_key(segment))  # its rank moved up with one fewer started

    # -- taking results back ------------------------------------------------------

    def record(self, result: SegmentResult) -> list[Segment]:
        """Records a finished segment; returns the segments its result made ready."""
        key = result.key
        state = self._brackets.get((result.iteration, result.run))
        if state is None or result.id not in state.members[result.rung]:
            raise ValueError(f"segment {key} is not part of this plan")
        if result.id in state.finished[result.rung]:
            return []  # a duplicate row, e.g. a retried segment that did finish
        if key in self._outstanding:
            self._outstanding.discard(key)
        else:  # finished without being handed out by this plan
            group = (result.iteration, result.run, result.rung)
            self._started[group] += 1
            if self._ready.pop(key, None) is not None:
                self._ready_count[group] -= 1
            self._requeue(group)
        state.finished[result.rung][result.id] = result.val_loss if result.ok else None
        for rung in range(result.rung, len(state.bracket.rungs) - 1):
            chosen = reducer.certain_promotions(
                state.finished[rung], state.k(rung), state.unfinished(rung)
            )
            for config_id in chosen:
                if config_id not in state.promoted[rung]:
                    state.promoted[rung].append(config_id)
                    state.members[rung + 1].add(config_id)
                    self._enqueue(state, config_id, rung + 1, state.finished[rung][config_id])
        made_ready, self._new = self._new, []
        return made_ready

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
