"""The search: which algorithm decides (Hyperband or ASHA) and which sampler draws
configurations (random or TPE), and the plan they make for a run. Pure, no I/O.

Example:
    >>> Search("asha", "tpe")
    Search(algorithm='asha', sampler='tpe')
    >>> Search.of("asha") == Search(algorithm="asha")
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from phobbit.core.asha import AsynchronousHyperband, asha_budget_epochs
from phobbit.core.budget import Budget
from phobbit.core.dispatch import AnytimePolicy, FifoPolicy
from phobbit.core.hyperband import StateMachine, SynchronousHyperband
from phobbit.core.plan import Plan
from phobbit.core.provenance import check_decisions
from phobbit.core.records import ALGORITHMS, Segment, SegmentResult, Tuning
from phobbit.core.samplers import check_sampler, make_sampler
from phobbit.errors import InputError


@dataclass(frozen=True)
class Search:
    """How a run searches: the algorithm that decides and the sampler that draws.

    Args:
        algorithm: ``"hyperband"`` (the default: exact, synchronous Hyperband) or
            ``"asha"`` (asynchronous successive halving over Hyperband's brackets,
            ``phobbit.core.asha``: no idle worker, but its promotions depend on the
            order of results). ASHA has no natural end: it stops at a budget, by
            default after the epochs ``iterations`` Hyperband iterations would train.
        sampler: ``"random"`` (the default: configuration (iteration, s, id) is a
            function of the seed alone) or ``"tpe"`` (BOHB-style model-based sampling
            through Optuna, ``phobbit.core.samplers``; needs ``phobbit[tpe]``). A run
            with ASHA or TPE records its decisions in ``decisions.csv`` before they
            train, so a resume repeats them exactly.

    Raises:
        InputError: (a ``ValueError``) for an unknown algorithm or sampler, or TPE
            without Optuna.
    """

    algorithm: str = "hyperband"
    sampler: str = "random"

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise InputError(
                f"algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, "
                f"got {self.algorithm!r}"
            )
        check_sampler(self.sampler)

    @classmethod
    def of(cls, value: Any) -> Search:
        """``value`` as a ``Search``: None is the default, a string names the algorithm.

        Raises:
            InputError: for anything else, or a string that names no algorithm.
        """
        if value is None:
            return cls()
        if isinstance(value, Search):
            return value
        if isinstance(value, str):
            return cls(algorithm=value)
        raise InputError(
            f"search must be a Search or an algorithm's name, got {type(value).__name__}"
        )

    def plan(
        self,
        tuning: Tuning,
        decisions: Sequence[Segment],
        results: Iterable[SegmentResult],
        workers: int,
        budget: Budget,
    ) -> tuple[Plan, Budget]:
        """The plan of a run and the budget that stops it.

        A resume rebuilds the plan from what the repository recorded: ASHA replays
        its ``decisions`` and ``results``; Hyperband draws again the configurations
        TPE drew (the recorded rung-0 decisions).

        Args:
            tuning: the run's settings (space, R, eta, seed, iterations, objective)
                and the checkpoint stem of (iteration, s, id).
            decisions: the decisions recorded (``decisions.csv``), in order.
            results: the results recorded, in order (read by ASHA only).
            workers: how many segments run at once.
            budget: the budget given (``time_limit``, ``max_epochs``).

        Returns:
            The plan, and the budget: ``budget`` itself, except for ASHA with none,
            whose default is the epochs of ``iterations`` Hyperband iterations.

        Raises:
            RepositoryError: when a decision is none this run can have made (a key that
                fits no bracket, hyperparameters outside the space): see
                ``phobbit.core.provenance.check_decisions``.
        """
        check_decisions(decisions, tuning, asha=self.algorithm == "asha")
        sampler = make_sampler(self.sampler, tuning.space, tuning.seed)
        if self.algorithm == "asha":
            if budget.max_epochs is None and budget.time_limit is None:
                epochs = asha_budget_epochs(tuning.R, tuning.eta, tuning.iterations)
                budget = Budget(None, epochs, epochs_name="iterations")
            machine: StateMachine = AsynchronousHyperband(
                tuning, sampler, budget_epochs=budget.max_epochs, workers=workers
            )
            machine.replay(decisions, results)
            return Plan.of(machine, FifoPolicy(), workers), budget
        recorded = {(d.iteration, d.s, d.id): d.hparams for d in decisions if d.rung == 0}
        machine = SynchronousHyperband(
            tuning, sampler=sampler if sampler.lazy else None, recorded=recorded
        )
        policy = AnytimePolicy(machine.schedule, tuning.iterations, workers)
        return Plan.of(machine, policy, workers), budget
