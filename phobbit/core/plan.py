"""The plan: a bracket state machine and a dispatch policy, composed. Pure, no I/O.

The state machine (``phobbit.core.hyperband``) says which segments are ready and
what a result promotes; the dispatch policy (``phobbit.core.dispatch``) says which
ready segment a free worker takes next. The plan joins them and keeps what the
scheduler needs on top: which segments are outstanding (handed out, no result
yet). Whatever the order in which results come back, the configurations and
promotions are those of a serial run.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator

from phobbit.core.dispatch import AnytimePolicy, DispatchPolicy
from phobbit.core.hyperband import StateMachine, SynchronousHyperband
from phobbit.core.objective import Objective
from phobbit.core.records import ConfigKey, RungKey, Segment, SegmentKey, SegmentResult, Tuning

PolicyOf = Callable[[SynchronousHyperband], DispatchPolicy]
"""Builds the dispatch policy of a plan from its state machine."""


class Plan:
    """Every bracket of ``iterations`` Hyperband iterations, handed out latest start first
    (the deepest brackets due early where that costs no makespan).

    Args:
        tuning: the space, R, eta, seed, iterations and objective of the run, and
            the checkpoint stem each segment carries (``SynchronousHyperband``).
        workers: how many segments run at once; it shapes the dispatch order only.
        policy: builds the dispatch policy from the state machine; by default
            ``AnytimePolicy`` (latest start, the deepest brackets due early).

    Example:
        >>> plan = Plan(Tuning.of(space, R=9, eta=3, seed=0), workers=4)
        >>> segment = plan.next_segment()        # hand it to a worker ...
        >>> plan.record(result)                  # ... and give its result back
    """

    def __init__(
        self,
        tuning: Tuning,
        workers: int = 1,
        policy: PolicyOf | None = None,
    ) -> None:
        machine = SynchronousHyperband(tuning)
        workers = max(1, workers)
        self._join(
            machine,
            AnytimePolicy(machine.schedule, tuning.iterations, workers)
            if policy is None
            else policy(machine),
            workers,
        )

    @classmethod
    def of(cls, machine: StateMachine, policy: DispatchPolicy, workers: int = 1) -> Plan:
        """The plan of a state machine that has not started and an empty dispatch policy.

        Example:
            >>> machine = SynchronousHyperband(Tuning.of(space, R=9, eta=3))
            >>> plan = Plan.of(machine, LatestStartPolicy(machine.schedule, 1, 4), workers=4)
        """
        plan = cls.__new__(cls)
        plan._join(machine, policy, max(1, workers))
        return plan

    def _join(self, machine: StateMachine, policy: DispatchPolicy, workers: int) -> None:
        self.machine, self.policy, self.workers = machine, policy, workers
        self.objective: Objective = machine.objective  # what ranks configurations
        self.schedule = machine.schedule
        self._outstanding: set[SegmentKey] = set()
        self._recorded = 0
        for segment in machine.start():
            policy.push(segment)

    # -- handing out work --------------------------------------------------------

    def priority(self, segment: Segment) -> tuple:
        """A ready segment's rank in the dispatch policy: ``next_segment`` takes the highest."""
        return self.policy.priority(segment)

    def next_segment(self, prefer: Collection[ConfigKey] = ()) -> Segment | None:
        """The ready segment that shortens the run most, now marked outstanding; None if none.

        With a model-based sampler that has too few results yet, a segment whose draw
        would learn from them waits while other ready work exists (``_pop_informed``).

        Args:
            prefer: configurations whose model the worker that takes the segment
                holds in memory; of segments that rank alike, one of these goes
                first (``DispatchPolicy.pop``).
        """
        segment = self._pop_informed(prefer)
        if segment is not None:
            segment = self.machine.prepare(segment)
        else:
            segment = self.machine.decide()
        if segment is not None:
            self._outstanding.add(segment.key)
        return segment

    def _pop_informed(self, prefer: Collection[ConfigKey]) -> Segment | None:
        """The policy's next segment that the state machine does not defer
        (``StateMachine.defers``); the first deferred one when all are, so no worker
        waits for want of work. The deferred ones go back as they were."""
        held: list[Segment] = []
        segment = self.policy.pop(prefer)
        while segment is not None and self.machine.defers(segment):
            held.append(segment)
            segment = self.policy.pop(prefer)
        if segment is None and held:
            segment = held.pop(0)
        for other in reversed(held):
            self.policy.give_back(other)
        return segment

    def take_decisions(self) -> list[Segment]:
        """Segments decided, or configurations drawn, since the last call: record them
        before they train (see ``StateMachine.take_decisions``)."""
        return self.machine.take_decisions()

    def ready(self) -> list[Segment]:
        """Segments that could start now, without taking them."""
        return self.policy.ready()

    def give_back(self, segment: Segment) -> None:
        """Puts an outstanding segment back among the ready ones (its worker died)."""
        if segment.key in self.policy:
            return
        if segment.key in self._outstanding:
            self._outstanding.discard(segment.key)
            self.policy.give_back(segment)
        else:
            self.policy.push(segment)

    # -- taking results back ------------------------------------------------------

    def record(self, result: SegmentResult) -> list[Segment]:
        """Records a finished segment; returns the segments its result made ready.

        Raises:
            ValueError: when the result is of no segment of this plan.
        """
        key = result.key
        if self.machine.has_result(key):
            return []  # a duplicate row, e.g. a retried segment that did finish
        if key in self._outstanding:
            self._outstanding.discard(key)
        else:  # finished without being handed out by this plan
            self.policy.discard(key)
        self._recorded += 1
        made_ready = self.machine.on_result(result)
        for segment in made_ready:
            self.policy.push(segment)
        return made_ready

    @property
    def done(self) -> bool:
        """Nothing is ready and nothing is outstanding: every bracket has finished.

        Never true of an endless machine (ASHA): a budget stops it.
        """
        return not len(self.policy) and not self._outstanding and not self.machine.endless

    @property
    def recorded(self) -> int:
        """How many results were recorded (duplicates not counted)."""
        return self._recorded

    @property
    def outstanding(self) -> int:
        """How many handed-out segments have not come back."""
        return len(self._outstanding)

    def promotions(self) -> dict[RungKey, list[int]]:
        """(iteration, s, rung) -> IDs promoted from that rung, in order of certainty."""
        return self.machine.promotions()

    def progress(self) -> Iterator[tuple[int, int, int, int, int]]:
        """(iteration, s, rung, finished, n) for every rung, for progress displays."""
        return self.machine.progress()

    def total_segments(self) -> int:
        """How many segments a run of this plan trains at most."""
        return self.machine.total_segments()

    def describe(self) -> str:
        """Which algorithm and sampler run: ``"asha, tpe sampling"``; ``""`` for random
        Hyperband (whose schedule says it all)."""
        algorithm = self.machine.algorithm
        sampler = "random" if self.machine.sampler is None else self.machine.sampler.name
        if (algorithm, sampler) == ("hyperband", "random"):
            return ""
        return f"{algorithm}, {sampler} sampling"
