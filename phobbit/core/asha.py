"""Asynchronous successive halving (ASHA, Li et al., MLSys 2020) as a state machine. Pure.

``AsynchronousHyperband`` decides what a free worker does the moment it is
free (``decide``), from the results so far, never waiting for a rung to close:

* within a bracket, it scans the rungs from the highest that can promote down
  to the bottom; at rung k with n results, the best ``n // eta`` of them are
  promotable, and the best promotable configuration not promoted yet goes on
  to rung k + 1 (failed results rank last and are never promoted; ties go to
  the lower ID);
* when no rung has one, a new configuration starts at the bracket's bottom rung.

The brackets are Hyperband's (``phobbit.core.schedule.brackets``): bracket s starts
configurations at ``R * eta**-s`` epochs and trains them, rung by rung, up to
R. Several brackets run side by side (asynchronous Hyperband): each decision
goes to the bracket that has dispatched the fewest epochs so far (ties to the
larger s), so every bracket gets about the same share of the budget, as in
Hyperband. Configurations of bracket s are keyed (0, s, id), IDs counting up
from 0 in each bracket; the iteration is always 0.

ASHA has no natural end: ``done`` is never true, and a budget (the scheduler's
``max_epochs`` or ``time_limit``) stops it. Its decisions depend on the order
in which results came back, so every decision is handed out once through
``take_decisions`` for the driver to record (``decisions.csv``) before it
trains; ``replay`` rebuilds the machine from those records and the results,
and ``start`` then hands back the decisions that have no result yet (they were
in flight when the last run stopped), as they were.

Example:
    >>> machine = AsynchronousHyperband(Tuning.of(space, R=27, eta=3))
    >>> segment = machine.decide()            # a free worker's next segment
    >>> machine.on_result(result)             # a finished one; returns []
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from phobbit.core import reducer
from phobbit.core.hyperband import StateMachine
from phobbit.core.records import RungKey, Segment, SegmentKey, SegmentResult, Tuning
from phobbit.core.samplers import RandomSampler
from phobbit.core.schedule import Bracket, brackets
from phobbit.errors import RepositoryError


@dataclass
class _Bracket:
    """One ASHA bracket: its configurations, what each rung holds, what it promoted."""

    bracket: Bracket
    hparams: dict[int, dict[str, Any]] = field(default_factory=dict)
    members: list[set[int]] = field(default_factory=list)  # dispatched at each rung
    finished: list[dict[int, float | None]] = field(default_factory=list)
    promoted: list[list[int]] = field(default_factory=list)
    epochs: int = 0  # epochs of every segment decided in this bracket
    # The next new configuration's ID: past the highest seen, not len(hparams), since a
    # decision row lost in the middle (corrupt) leaves a gap whose ID may name a checkpoint.
    next_id: int = 0
    eta: int = 3

    def __post_init__(self) -> None:
        depth = len(self.bracket.rungs)
        self.members = [set() for _ in range(depth)]
        self.finished = [{} for _ in range(depth)]
        self.promoted = [[] for _ in range(depth)]
        self.promoted_set: list[set[int]] = [set() for _ in range(depth)]
        self.ranking: list[list[tuple[int, float, int]]] = [[] for _ in range(depth)]
        self.unpromoted: list[list[tuple[int, float, int]]] = [[] for _ in range(depth)]

    def promotable(self, longest: float | None = None) -> tuple[int, int] | None:
        """(rung, id) of the configuration to promote now, highest rung first; None if none.

        Results rank as Hyperband's reducer ranks them (``reducer.rank_key``: by Val
        Loss, then ID; failed ones last, never promoted).

        Args:
            longest: only promotions that train at most this many epochs (None: any).
        """
        for rung in reversed(range(len(self.bracket.rungs) - 1)):
            if longest is not None and self.step(rung + 1) > longest:
                continue
            waiting = self.unpromoted[rung]  # the best result not promoted yet, first
            while waiting and waiting[0][2] in self.promoted_set[rung]:
                heapq.heappop(waiting)
            if not waiting or waiting[0][0]:
                continue  # none, or only failed ones: never promoted
            top = len(self.finished[rung]) // self.eta
            if bisect.bisect_left(self.ranking[rung], waiting[0]) < top:
                return rung, waiting[0][2]
        return None

    def step(self, rung: int) -> int:
        """Epochs a segment that ends at ``rung`` trains."""
        rungs = self.bracket.rungs
        return rungs[rung].epochs - (rungs[rung - 1].epochs if rung > 0 else 0)

    def promote(self, rung: int, config_id: int) -> None:
        self.promoted[rung].append(config_id)
        self.promoted_set[rung].add(config_id)

    def finish(self, rung: int, config_id: int, loss: float | None) -> None:
        self.finished[rung][config_id] = loss
        key = reducer.rank_key(config_id, loss)
        bisect.insort(self.ranking[rung], key)
        heapq.heappush(self.unpromoted[rung], key)


class AsynchronousHyperband(StateMachine):
    """ASHA over Hyperband's brackets (see the module's docstring).

    Args:
        tuning: the space, R, eta (the top 1/eta of a rung is promotable), the
            sampling seed, the objective that ranks a rung (``Objective.row_score``;
            a configuration a callback stopped early is never promoted) and the
            checkpoint stem each segment carries. Its iterations are not ASHA's to
            read (ASHA has one, endless): a budget counts them.
        sampler: where new configurations come from; by default ``RandomSampler``.
        brackets_s: which brackets run (their s); by default every bracket of (R, eta).
            ``[s_max]`` alone is plain ASHA with one bracket.
        budget_epochs: the epochs the run may train in all (the budget's ``max_epochs``);
            near its end, only segments that end with the others start (see ``decide``).
            None: no epoch budget, every decision as above.
        workers: how many segments run at once; it shapes the end of the budget only.
    """

    endless = True
    algorithm = "asha"

    def __init__(
        self,
        tuning: Tuning,
        sampler: RandomSampler | None = None,
        brackets_s: Iterable[int] | None = None,
        budget_epochs: int | None = None,
        workers: int = 1,
    ) -> None:
        R, eta, seed = tuning.R, tuning.eta, tuning.seed
        self.tuning = tuning
        self.objective = tuning.objective
        self.schedule = brackets(R, eta)
        self.iterations = 1
        self.R, self.eta, self.seed = R, eta, seed
        self.sampler = sampler or RandomSampler(tuning.space, seed)
        self.checkpoint_of = tuning.checkpoint_of
        chosen = set(b.s for b in self.schedule) if brackets_s is None else set(brackets_s)
        self._brackets = {b.s: _Bracket(b, eta=eta) for b in self.schedule if b.s in chosen}
        if not self._brackets:
            raise ValueError(f"no bracket of R={R}, eta={eta} has s in {sorted(chosen)}")
        self.budget_epochs, self.workers = budget_epochs, max(1, workers)
        self._decided: list[Segment] = []  # every decision, in order
        # The epoch clock: epochs a worker busy from the start has trained when the latest
        # result came (an estimate; only the end of the budget reads it), and when each
        # segment decided without a result yet ends on it.
        self._clock = 0.0
        self._open: dict[SegmentKey, float] = {}
        self._new: list[Segment] = []  # decisions not yet taken by take_decisions
        self._started = False

    # -- deciding -------------------------------------------------------------------

    def decide(self) -> Segment:
        """What a free worker trains next: a promotion, else a new configuration.

        Near the end of an epoch budget (``budget_epochs``, with several workers) a
        segment longer than what is left per worker (``horizon``) would run on while
        the others, the budget spent, stand idle. Then the decision goes to work that
        ends within it: a promotion that fits (the bracket with the fewest epochs
        first, the highest rung that fits in it), else a new configuration whose first
        rung fits, else the shortest first rung of any bracket.
        """
        state, found = self._choose()
        if found is not None:
            rung, config_id = found
            state.promote(rung, config_id)
            segment = self._segment(state, config_id, rung + 1, state.finished[rung][config_id])
        else:
            config_id = state.next_id
            key = (0, state.bracket.s, config_id)
            state.hparams[config_id] = self.sampler.draw(key)
            state.next_id += 1
            segment = self._segment(state, config_id, 0, None)
        self._take(state, segment)
        self._new.append(segment)
        return segment

    def _choose(self) -> tuple[_Bracket, tuple[int, int] | None]:
        """The bracket that decides and the (rung, id) it promotes; None: a new one."""
        order = sorted(self._brackets.values(), key=lambda b: (b.epochs, -b.bracket.s))
        first = order[0]
        found = first.promotable()
        horizon = self.horizon()
        if horizon is None or first.step(0 if found is None else found[0] + 1) <= horizon:
            return first, found
        for state in order:
            found = state.promotable(horizon)
            if found is not None:
                return state, found
        fresh = [state for state in order if state.step(0) <= horizon]
        return (fresh[0] if fresh else min(order, key=lambda b: b.step(0))), None

    def horizon(self) -> float | None:
        """Epochs a segment may train and still end about when the run's last others do;
        None: no limit (no epoch budget, or one worker, whom no one waits for).

        Each segment in flight keeps its worker until it ends on the epoch clock (a
        long one that just started, all its epochs; one nearly done, a few); the
        budget's rest then fills the workers from the first free up to one level, as
        water fills a basin. That level, from now, is the horizon: a segment that
        starts now and trains longer runs on while the others, the budget spent,
        stand idle. Workers whose segment ends past the level take none of the rest.
        """
        if self.budget_epochs is None or self.workers < 2:
            return None
        left = float(max(0, self.budget_epochs - self.epochs_decided()))
        ends = sorted(max(0.0, end - self._clock) for end in self._open.values())
        # Decided past one per worker (queued ahead): they run after the first to end;
        # counted with the budget's rest, which they are part of.
        left += sum(ends[self.workers :])
        busy = ends[: self.workers]
        busy = [0.0] * (self.workers - len(busy)) + busy  # the free workers
        filled = 0.0
        for count, until in enumerate(busy, 1):
            filled += until
            level = (left + filled) / count
            if count == len(busy) or level <= busy[count]:
                return level
        raise AssertionError("unreachable: the last worker always returns")

    def _segment(
        self, state: _Bracket, config_id: int, rung: int, prior_best: float | None
    ) -> Segment:
        rungs, s = state.bracket.rungs, state.bracket.s
        return Segment(
            iteration=0,
            s=s,
            id=config_id,
            rung=rung,
            hparams=state.hparams[config_id],
            start_epoch=rungs[rung - 1].epochs if rung > 0 else 0,
            epochs=rungs[rung].epochs,
            checkpoint=self.checkpoint_of(0, s, config_id),
            prior_best=prior_best,
            run_id=self.tuning.settings.run_id,
        )

    def _take(self, state: _Bracket, segment: Segment) -> None:
        state.members[segment.rung].add(segment.id)
        state.epochs += segment.epochs - segment.start_epoch
        self._decided.append(segment)
        self._open[segment.key] = self._clock + segment.epochs - segment.start_epoch

    def take_decisions(self) -> list[Segment]:
        new, self._new = self._new, []
        return new

    # -- resuming -------------------------------------------------------------------

    def replay(self, decisions: Iterable[Segment], results: Iterable[SegmentResult]) -> None:
        """Rebuilds the machine from the decisions recorded and the results, each in order.

        Raises:
            RepositoryError: when a record names no segment this run could have made
                (another run's file, or a hand edit): a key that fits no bracket,
                hyperparameters outside the space, a promotion of a configuration
                never drawn.
        """
        if self._started or self._decided:
            raise RuntimeError("replay() must come before start() and any decision")
        seen: set[SegmentKey] = set()
        for record in decisions:
            if record.key in seen:
                continue
            state = self._brackets.get(record.s)
            rungs = state.bracket.rungs if state is not None else ()
            if state is None or record.iteration != 0 or not 0 <= record.rung < len(rungs):
                raise RepositoryError(
                    f"decisions.csv records segment {record.key}, which this run (R={self.R}, "
                    f"eta={self.eta}) cannot have made; restore it or use another repository"
                )
            if record.rung == 0:
                why = self.tuning.space.refuses(record.hparams)
                if why is not None:
                    raise RepositoryError(
                        f"decisions.csv records configuration {record.key[:3]} outside the "
                        f"search space ({why}); restore it or use another repository"
                    )
                state.hparams[record.id] = record.hparams
                state.next_id = max(state.next_id, record.id + 1)
                self.sampler.replayed((0, record.s, record.id), record.hparams)
            elif record.id not in state.hparams:
                raise RepositoryError(
                    f"decisions.csv promotes configuration {record.key[:3]}, which it never "
                    "drew; restore it or use another repository"
                )
            else:
                state.promote(record.rung - 1, record.id)
            seen.add(record.key)
            self._take(state, self._segment(state, record.id, record.rung, record.prior_best))
        for result in results:
            if result.key not in seen:
                raise RepositoryError(
                    f"results.csv holds segment {result.key}, which decisions.csv does not "
                    "record (was it deleted?); restore it or use another repository"
                )
            self.on_result(result)

    # -- the StateMachine interface -------------------------------------------------------

    def start(self) -> list[Segment]:
        """The decisions recorded before a resume that have no result yet, in order."""
        if self._started:
            raise RuntimeError("start() was called before")
        self._started = True
        again = [seg for seg in self._decided if not self.has_result(seg.key)]
        # A resume trains what was in flight from its start: the epoch clock starts anew.
        self._clock = 0.0
        self._open = {seg.key: float(seg.epochs - seg.start_epoch) for seg in again}
        return again

    def _state(self, key: SegmentKey) -> _Bracket:
        iteration, s, config_id, rung = key
        state = self._brackets.get(s)
        if (
            state is None
            or iteration != 0
            or not 0 <= rung < len(state.members)
            or config_id not in state.members[rung]
        ):
            raise ValueError(f"segment {key} is not part of this plan")
        return state

    def has_result(self, key: SegmentKey) -> bool:
        return key[2] in self._state(key).finished[key[3]]

    def on_result(self, result: SegmentResult) -> list[Segment]:
        state = self._state(result.key)
        finished = state.finished[result.rung]
        if result.id in finished:
            return []
        end = self._open.pop(result.key, None)
        if end is not None:  # results come back about in the order they end
            self._clock = max(self._clock, end)
        score = self.objective.row_score(result)  # lower is better; None when failed
        # Stopped early by a callback: ranked like a failed result, so never promoted.
        state.finish(result.rung, result.id, None if result.stopped_early else score)
        self.sampler.observe(
            (0, result.s, result.id), state.hparams[result.id], result.epochs, score
        )
        return []

    @property
    def done(self) -> bool:
        return False

    def promotions(self) -> dict[RungKey, list[int]]:
        return {
            (0, s, rung): list(ids)
            for s, state in self._brackets.items()
            for rung, ids in enumerate(state.promoted)
            if rung < len(state.bracket.rungs) - 1
        }

    def progress(self) -> Iterator[tuple[int, int, int, int, int]]:
        for s in sorted(self._brackets, reverse=True):
            state = self._brackets[s]
            for index in range(len(state.bracket.rungs)):
                yield (0, s, index, len(state.finished[index]), len(state.members[index]))

    def total_segments(self) -> int:
        """The segments decided so far (ASHA decides as it goes)."""
        return len(self._decided)

    def epochs_decided(self) -> int:
        """Epochs of every segment decided so far."""
        return sum(state.epochs for state in self._brackets.values())


def asha_budget_epochs(R: int, eta: int, iterations: int = 1) -> int:
    """ASHA's default budget: the epochs ``iterations`` Hyperband iterations train."""
    return iterations * sum(b.total_epochs() for b in brackets(R, eta))
