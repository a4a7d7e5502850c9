"""Which rows a run can have written: every row of an honest run passes, and a CRC-valid
row that no schedule of the run makes (rung 999, id -5, epochs 10**12, hparams outside
the space) is refused, naming why. Pure: no file, no process."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from helpers import space

from phobbit.core.asha import AsynchronousHyperband
from phobbit.core.budget import Budget
from phobbit.core.hyperband import SynchronousHyperband
from phobbit.core.provenance import Provenance, check_decisions, sift
from phobbit.core.records import (
    STOPPED_EARLY,
    EpochRow,
    RunSettings,
    Segment,
    SegmentResult,
    Status,
    Tuning,
)
from phobbit.core.search import Search
from phobbit.core.space import Space
from phobbit.errors import RepositoryError


def settings(R: int = 9, eta: int = 3, iterations: int = 1, algorithm: str = "hyperband"):
    return RunSettings.of(Space(space()), R, eta, 0, iterations, algorithm=algorithm)


def result_of(segment: Segment, **changes: Any) -> SegmentResult:
    values: dict[str, Any] = dict(
        val_loss=0.5,
        last_val_loss=0.5,
        status=Status.OK,
        error="",
        start=1_700_000_000.0,
        end=1_700_000_001.0,
    )
    values.update(changes)
    return segment.result(**values)


def every_segment(tuning: Tuning) -> list[Segment]:
    """Every segment of a serial run of ``tuning`` (each rung's results in ID order)."""
    machine = SynchronousHyperband(tuning)
    ready, made = list(machine.start()), []
    while ready:
        segment = ready.pop(0)
        made.append(segment)
        loss = (segment.id * 7919 % 101) / 101  # any ranking will do
        ready.extend(machine.on_result(result_of(segment, val_loss=loss, last_val_loss=loss)))
    return made


@pytest.mark.parametrize(
    ("R", "eta", "iterations"), [(1, 2, 1), (9, 3, 2), (20, 3, 1), (81, 3, 1)]
)
def test_every_row_an_honest_hyperband_run_writes_is_possible(
    R: int, eta: int, iterations: int
) -> None:
    run = settings(R, eta, iterations)
    check = Provenance.of(run)
    segments = every_segment(Tuning(run))
    assert len(segments) == sum(r.n for b in check.schedule.values() for r in b.rungs) * iterations
    for segment in segments:
        assert check.decision(segment) is None
        assert check.result(result_of(segment)) is None
        failed = result_of(segment, status=Status.FAILED, error="boom", val_loss=None)
        assert check.result(failed) is None
        for epoch in range(segment.start_epoch + 1, segment.epochs + 1):
            row = EpochRow(segment.iteration, segment.s, segment.id, segment.rung, epoch, {})
            assert check.epoch(row) is None
        if segment.epochs - segment.start_epoch > 1:  # a callback stopped it after one epoch
            stopped = dataclasses.replace(
                result_of(segment, note=f"{STOPPED_EARLY} after epoch ..."),
                epochs=segment.start_epoch + 1,
            )
            assert check.result(stopped) is None


def test_every_decision_and_row_of_an_asha_run_is_possible() -> None:
    run = settings(27, 3, algorithm="asha")
    machine = AsynchronousHyperband(Tuning(run))
    check = Provenance.of(run)
    for n in range(300):
        segment = machine.decide()
        assert check.decision(segment) is None and check.result(result_of(segment)) is None
        loss = (n * 7919 % 101) / 101
        machine.on_result(result_of(segment, val_loss=loss, last_val_loss=loss))
    assert max(machine.take_decisions(), key=lambda s: s.id).id >= 27  # past Hyperband's n


def honest() -> SegmentResult:
    # Bracket 2 of R=9, eta=3 trains 9 x 1, 3 x 3, 1 x 9 epochs; this is id 4 at rung 1.
    segment = Segment(0, 2, 4, 1, {"x": 0.5, "act": "relu"}, 1, 3, "0-2-4")
    return result_of(segment)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"rung": 999}, "rung 999 is not one of bracket 2's (0 to 2)"),
        ({"id": -5}, "id -5 is not one of bracket 2's (0 to 8)"),
        ({"id": 9}, "id 9 is not one of bracket 2's (0 to 8)"),
        ({"s": 7}, "bracket 7 is not one of R's (0 to 2)"),
        ({"iteration": 1}, "iteration 1 is not one of the run's 1"),
        ({"iteration": -1}, "iteration -1 is negative"),
        ({"epochs": 10**12}, "it ends at epoch 1000000000000, where rung 1 trains to 3"),
        ({"epochs": 2}, "it ends at epoch 2, where rung 1 trains to 3"),
        ({"start_epoch": 0}, "it starts at epoch 0, where rung 1 starts at 1"),
        ({"end": 1e30}, "were read from no clock"),
        ({"start": -5.0}, "were read from no clock"),
        ({"val_loss": float("-inf")}, "succeeded with a val loss or objective that is not"),
        ({"hparams": {"x": 5.0, "act": "relu"}}, "x=5.0 is outside [0.0, 1.0]"),
        ({"hparams": {"x": 0.5, "act": "gelu"}}, "act='gelu' is none of its options"),
        ({"hparams": {"x": 0.5}}, "it lacks act"),
    ],
)
def test_a_row_no_schedule_of_the_run_makes_is_refused_naming_why(
    changes: dict[str, Any], why: str
) -> None:
    check = Provenance.of(settings())
    assert check.result(honest()) is None
    refused = check.result(dataclasses.replace(honest(), **changes))
    assert refused is not None and why in refused


def test_an_epoch_no_rung_trains_is_refused() -> None:
    check = Provenance.of(settings())
    assert check.epoch(EpochRow(0, 2, 4, 1, 3, {"val_loss": 0.5})) is None
    for epoch in (0, 4, 10**30):
        why = check.epoch(EpochRow(0, 2, 4, 1, epoch, {"val_loss": 0.5}))
        assert why == f"epoch {epoch} is not one of rung 1's (1 to 3)"
    assert "rung 5" in check.epoch(EpochRow(0, 2, 4, 5, 1, {}))


def test_a_resume_with_more_or_fewer_iterations_reads_every_iteration_begun() -> None:
    row = dataclasses.replace(honest(), iteration=2)
    # run.json keeps the most iterations any invocation asked for.
    assert Provenance.of(settings(iterations=3)).result(row) is None
    assert Provenance.of(settings(iterations=2)).result(row) is not None
    assert Provenance.of(settings(iterations=1), bounded=False).result(row) is None


def test_asha_keys_configurations_of_iteration_0_with_ids_unbounded_above() -> None:
    check = Provenance.of(settings(algorithm="asha"))
    assert check.result(dataclasses.replace(honest(), id=10**6)) is None
    assert "not ASHA's" in check.result(dataclasses.replace(honest(), iteration=1))
    assert "id -1" in check.result(dataclasses.replace(honest(), id=-1))


def test_sift_keeps_the_allowed_rows_in_order_and_the_reasons_of_the_others() -> None:
    kept, refused = sift([1, -2, 3, -4], lambda n: None if n > 0 else f"{n} < 0")
    assert kept == [1, 3] and refused == ["-2 < 0", "-4 < 0"]


# -- decisions replayed ------------------------------------------------------------------


def outside(segment: Segment) -> Segment:
    return dataclasses.replace(segment, hparams={**segment.hparams, "x": 5.0})


@pytest.mark.parametrize("algorithm", ["hyperband", "asha"])
def test_a_decision_with_hparams_outside_the_space_stops_the_replay(algorithm: str) -> None:
    tuning = Tuning(settings(algorithm=algorithm))
    machine = AsynchronousHyperband(tuning) if algorithm == "asha" else None
    first = machine.decide() if machine else every_segment(tuning)[0]
    search = Search(algorithm, "random")
    search.plan(tuning, [first], [], 1, Budget(None, 10))  # an honest decision replays
    with pytest.raises(RepositoryError) as refused:
        search.plan(tuning, [outside(first)], [], 1, Budget(None, 10))
    message = str(refused.value)
    assert f"decisions.csv records segment {first.key}" in message
    assert "hparams are outside the search space: x=5.0 is outside [0.0, 1.0]" in message
    assert "Restore it, or use another repository" in message


def test_asha_replay_alone_refuses_hparams_outside_the_space_and_an_undrawn_promotion() -> None:
    tuning = Tuning(settings(algorithm="asha"))
    first = AsynchronousHyperband(tuning).decide()
    with pytest.raises(RepositoryError, match="outside the search space"):
        AsynchronousHyperband(tuning).replay([outside(first)], [])
    promoted = dataclasses.replace(first, id=5, rung=1, start_epoch=1, epochs=3)
    with pytest.raises(RepositoryError, match=r"promotes configuration \(0, 2, 5\), which it"):
        AsynchronousHyperband(tuning).replay([first, promoted], [])


def test_decisions_of_iterations_this_invocation_does_not_run_replay() -> None:
    three = every_segment(Tuning(settings(iterations=3)))
    late = next(s for s in three if s.iteration == 2)
    check_decisions([late], Tuning(settings(iterations=1)), asha=False)  # no error
