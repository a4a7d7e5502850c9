"""The bracket state machine: which segments are ready, what a result promotes. Pure.

A state machine knows the brackets of a run and the results they have had; it
says which segments a result makes ready, and nothing about the order in which
ready segments run (that is the dispatch policy's job, ``phobbit.core.dispatch``).
``StateMachine`` is the small interface a promotion rule implements;
``SynchronousHyperband`` is Hyperband's: a configuration goes on to the next
rung once the reducer is certain it is among its rung's best
(``reducer.certain_promotions``, kept per result by ``reducer.RungRanking``),
so that whatever the order in which results come back, the promotions are those
of a serial run.

Example:
    >>> machine = SynchronousHyperband(Tuning.of(space, R=9, eta=3))
    >>> ready = machine.start()               # every configuration's first rung
    >>> ready += machine.on_result(result)    # what a finished segment promotes
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from phobbit.core import reducer
from phobbit.core.objective import VAL_LOSS, Objective
from phobbit.core.records import (
    ConfigKey,
    RungKey,
    Segment,
    SegmentKey,
    SegmentResult,
    Tuning,
)
from phobbit.core.schedule import Bracket, brackets


class StateMachine(ABC):
    """What a promotion rule keeps: the segments it has made ready and their results.

    Every segment it makes ready is returned once, by ``start`` or by
    ``on_result``; it holds no order among them.

    Attributes:
        schedule: the brackets of one iteration (what progress displays and
            dispatch policies read the run's shape from).
        iterations: how many iterations run at once.
        objective: what ranks configurations (the lowest val loss by default).
    """

    schedule: list[Bracket]
    iterations: int
    objective: Objective = VAL_LOSS

    @abstractmethod
    def start(self) -> list[Segment]:
        """The segments ready before any result; called once."""

    @abstractmethod
    def has_result(self, key: SegmentKey) -> bool:
        """Whether segment ``key`` has a result recorded already.

        Raises:
            ValueError: when ``key`` is no segment made ready by this machine.
        """

    @abstractmethod
    def on_result(self, result: SegmentResult) -> list[Segment]:
        """Records a finished segment; returns the segments its result made ready.

        A second result of the same segment is ignored (returns ``[]``).

        Raises:
            ValueError: when the result is of no segment made ready by this machine.
        """

    @property
    @abstractmethod
    def done(self) -> bool:
        """Every segment made ready has a result, and no result can make more ready."""

    @abstractmethod
    def promotions(self) -> dict[RungKey, list[int]]:
        """(iteration, s, rung) -> IDs promoted from that rung, in the order promoted."""

    @abstractmethod
    def progress(self) -> Iterator[tuple[int, int, int, int, int]]:
        """(iteration, s, rung, finished, n) for every rung, for progress displays."""

    @abstractmethod
    def total_segments(self) -> int:
        """How many segments a run trains at most."""

    # Hooks with defaults, for machines that decide as they go (ASHA) or sample lazily.

    endless = False
    """True for a machine that never ends by itself (ASHA): a budget must stop it."""
    algorithm = "hyperband"
    """The name ``run.json`` and the displays give the promotion rule."""
    sampler: Any = None
    """Where configurations come from when not ``Space.sample`` (``phobbit.core.samplers``)."""

    def decide(self) -> Segment | None:
        """A segment made on demand for a free worker when none is ready; None: wait."""
        return None

    def prepare(self, segment: Segment) -> Segment:
        """``segment``, about to be dispatched, with its configuration drawn if it had none."""
        return segment

    def defers(self, segment: Segment) -> bool:
        """Whether ready ``segment`` had better wait while other ready work can keep the
        workers busy (a draw that would learn more later); it never waits for want of work."""
        return False

    def take_decisions(self) -> list[Segment]:
        """The segments decided (or whose configuration was drawn) since the last call,
        in order: the driver records them before they train, so a resume reuses them."""
        return []


@dataclass
class _BracketState:
    """Bookkeeping of one bracket of one iteration."""

    iteration: int
    bracket: Bracket
    hparams: dict[int, dict[str, Any]]
    members: list[set[int]] = field(default_factory=list)
    finished: list[dict[int, float | None]] = field(default_factory=list)
    promoted: list[list[int]] = field(default_factory=list)
    rankings: list[reducer.RungRanking] = field(default_factory=list)

    def __post_init__(self) -> None:
        depth = len(self.bracket.rungs)
        self.members = [set(self.hparams)] + [set() for _ in range(depth - 1)]
        self.finished = [{} for _ in range(depth)]
        self.promoted = [[] for _ in range(depth)]
        self.rankings = [reducer.RungRanking() for _ in range(depth)]

    def k(self, rung: int) -> int:
        """How many configurations rung ``rung`` promotes."""
        rungs = self.bracket.rungs
        return rungs[rung + 1].n if rung + 1 < len(rungs) else 0

    def closed(self, rung: int) -> bool:
        """Every configuration that will ever reach ``rung`` has finished it."""
        if rung < 0:
            return True
        return self.closed(rung - 1) and len(self.finished[rung]) == len(self.members[rung])

    def unfinished(self, rung: int) -> int:
        """An upper bound on the configurations of ``rung`` that may still finish."""
        running = len(self.members[rung]) - len(self.finished[rung])
        if rung == 0 or self.closed(rung - 1):
            return running
        return running + self.k(rung - 1) - len(self.promoted[rung - 1])


class SynchronousHyperband(StateMachine):
    """Every bracket of ``iterations`` Hyperband iterations, promoting as a serial run does.

    Args:
        tuning: the space, R, eta, seed, iterations and objective, and the
            checkpoint stem each segment carries. Configuration (iteration, s, id)
            is drawn from (seed, iteration, s, id); the objective ranks a rung
            (``Objective.row_score``), and a configuration a callback stopped early
            ranks as a failed one here: it is never promoted, and its place goes
            to the next best.
        sampler: where configurations come from (``phobbit.core.samplers``); by default
            ``Space.sample``. A lazy sampler (TPE) draws a configuration when its
            first segment is about to be dispatched (``prepare``), so later draws
            see earlier results; those draws go out through ``take_decisions``.
        recorded: (iteration, s, id) -> the configuration a lazy sampler drew before
            a resume: used as it is, never drawn again.
    """

    def __init__(
        self,
        tuning: Tuning,
        sampler: Any = None,
        recorded: dict[ConfigKey, dict[str, Any]] | None = None,
    ) -> None:
        self.tuning = tuning
        self.objective = tuning.objective
        self.R, self.eta, self.seed = tuning.R, tuning.eta, tuning.seed
        self.iterations = iterations = tuning.iterations
        self.schedule = brackets(self.R, self.eta)
        self.checkpoint_of = tuning.checkpoint_of
        space, seed = tuning.space, tuning.seed
        self.sampler = sampler
        self._lazy = sampler is not None and sampler.lazy
        self._recorded = dict(recorded or {})
        self._drawn: list[Segment] = []
        self._brackets: dict[tuple[int, int], _BracketState] = {}
        for iteration in range(iterations):
            for b in self.schedule:
                if self._lazy:
                    configs: dict[int, Any] = {i: None for i in range(b.n)}
                else:
                    configs = {i: space.sample(seed, iteration, b.s, i) for i in range(b.n)}
                self._brackets[(iteration, b.s)] = _BracketState(iteration, b, configs)
        self._started = False
        self._waiting = 0  # segments made ready that have no result yet

    def bracket(self, iteration: int, s: int) -> Bracket:
        """Bracket ``s`` (of iteration ``iteration``: every iteration has the same)."""
        return self._brackets[(iteration, s)].bracket

    def finished_in(self, rung: RungKey) -> int:
        """How many segments of rung (iteration, s, rung) have a result."""
        iteration, s, index = rung
        return len(self._brackets[(iteration, s)].finished[index])

    def start(self) -> list[Segment]:
        """Rung 0 of every bracket: iteration by iteration, deepest bracket first, by ID."""
        if self._started:
            raise RuntimeError("start() was called before")
        self._started, ready = True, []
        for state in self._brackets.values():
            for config_id in state.hparams:
                ready.append(self._segment(state, config_id, rung=0, prior_best=None))
        return ready

    def _segment(
        self, state: _BracketState, config_id: int, rung: int, prior_best: float | None
    ) -> Segment:
        rungs = state.bracket.rungs
        self._waiting += 1
        return Segment(
            iteration=state.iteration,
            s=state.bracket.s,
            id=config_id,
            rung=rung,
            hparams=state.hparams[config_id] or {},
            start_epoch=rungs[rung - 1].epochs if rung > 0 else 0,
            epochs=rungs[rung].epochs,
            checkpoint=self.checkpoint_of(state.iteration, state.bracket.s, config_id),
            prior_best=prior_best,
            run_id=self.tuning.settings.run_id,
        )

    def prepare(self, segment: Segment) -> Segment:
        state = self._state(segment.key)
        if not self._lazy or state.hparams[segment.id] is not None:
            return segment
        key = (segment.iteration, segment.s, segment.id)
        if key in self._recorded:
            hparams = self._recorded[key]
            self.sampler.replayed(key, hparams)  # in flight until its result
            drawn = False
        else:
            hparams, drawn = self.sampler.draw(key), True
        state.hparams[segment.id] = hparams
        segment = dataclasses.replace(segment, hparams=hparams)
        if drawn:
            self._drawn.append(segment)
        return segment

    def defers(self, segment: Segment) -> bool:
        """A first-rung segment of any bracket but the deepest whose configuration a lazy
        sampler has yet to draw, while that sampler cannot fit its model: the deepest
        bracket's many one-epoch segments bring the results first, and the shallower
        brackets (whose configurations reach R) draw from them. Not the random sampler's:
        its draws and their order are a function of the seed alone."""
        if not self._lazy or segment.rung != 0 or segment.s == self.schedule[0].s:
            return False
        state = self._state(segment.key)
        key = (segment.iteration, segment.s, segment.id)
        if state.hparams[segment.id] is not None or key in self._recorded:
            return False
        return not self.sampler.informed

    def take_decisions(self) -> list[Segment]:
        drawn, self._drawn = self._drawn, []
        return drawn

    def _state(self, key: SegmentKey) -> _BracketState:
        iteration, s, config_id, rung = key
        state = self._brackets.get((iteration, s))
        if (
            state is None
            or not 0 <= rung < len(state.members)
            or config_id not in state.members[rung]
        ):
            raise ValueError(f"segment {key} is not part of this plan")
        return state

    def has_result(self, key: SegmentKey) -> bool:
        return key[2] in self._state(key).finished[key[3]]

    def on_result(self, result: SegmentResult) -> list[Segment]:
        state = self._state(result.key)
        if result.id in state.finished[result.rung]:
            return []  # a duplicate row, e.g. a retried segment that did finish
        # Stopped early: it is not trained further, so its place goes to the next best.
        score = None if result.stopped_early else self.objective.row_score(result)
        state.finished[result.rung][result.id] = score
        state.rankings[result.rung].add(result.id, score)
        self._waiting -= 1
        if self.sampler is not None:  # a failed result too: no longer in flight
            hparams = state.hparams[result.id] or result.hparams
            key = (result.iteration, result.s, result.id)
            # The sampler minimises: the objective's rank (negated when maximised).
            self.sampler.observe(key, hparams, result.epochs, self.objective.row_score(result))
        made_ready = []
        # A result can make its own rung's configurations certain, and, by closing its rung,
        # the next rung's too; each rung's ranking keeps this O(log n) per result.
        for rung in range(result.rung, len(state.bracket.rungs) - 1):
            for config_id in state.rankings[rung].promote(state.k(rung), state.unfinished(rung)):
                state.promoted[rung].append(config_id)
                state.members[rung + 1].add(config_id)
                if self.sampler is not None:
                    self.sampler.promoted(
                        (state.iteration, state.bracket.s, config_id),
                        state.bracket.rungs[rung + 1].epochs,
                    )
                best = state.finished[rung][config_id]
                made_ready.append(self._segment(state, config_id, rung + 1, best))
        return made_ready

    @property
    def done(self) -> bool:
        return self._started and self._waiting == 0

    def promotions(self) -> dict[RungKey, list[int]]:
        return {
            (i, s, rung): list(ids)
            for (i, s), state in self._brackets.items()
            for rung, ids in enumerate(state.promoted)
            if rung < len(state.bracket.rungs) - 1
        }

    def progress(self) -> Iterator[tuple[int, int, int, int, int]]:
        for (i, s), state in sorted(self._brackets.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
            for r in state.bracket.rungs:
                yield (i, s, r.index, len(state.finished[r.index]), r.n)

    def total_segments(self) -> int:
        return sum(r.n for state in self._brackets.values() for r in state.bracket.rungs)
