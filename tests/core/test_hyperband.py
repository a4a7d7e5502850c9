"""The bracket state machine alone: what is ready, what a result promotes; no order, no clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_plan import SPACE, outcome, serial_promotions

from phobbit.core.hyperband import SynchronousHyperband
from phobbit.core.records import Segment, Status, Tuning, config_name


def drain(machine: SynchronousHyperband, pick: random.Random) -> list[Segment]:
    """Feeds the machine results in a random order; returns every segment it made ready."""
    result = outcome(7, fail_rate=0.1, levels=6)
    ready = machine.start()
    made = list(ready)
    while ready:
        segment = ready.pop(pick.randrange(len(ready)))
        new = machine.on_result(result(segment))
        ready += new
        made += new
    return made


@settings(max_examples=60)
@given(
    seed=st.integers(0, 10_000),
    shape=st.sampled_from([(9, 3), (20, 3), (27, 3), (16, 2), (81, 3)]),
    fail_rate=st.sampled_from([0.0, 0.2]),
    levels=st.sampled_from([0, 3]),
    data=st.data(),
)
def test_promotions_equal_a_serial_run_under_any_result_order(
    seed: int, shape: tuple[int, int], fail_rate: float, levels: int, data: st.DataObject
) -> None:
    R, eta = shape
    result = outcome(seed, fail_rate, levels)
    serial = serial_promotions(SPACE, R, eta, 2, result)
    machine = SynchronousHyperband(Tuning.of(SPACE, R, eta, iterations=2))
    ready = machine.start()
    while ready:
        segment = ready.pop(data.draw(st.integers(0, len(ready) - 1), label="finishes next"))
        ready += machine.on_result(result(segment))
        for key, ids in machine.promotions().items():
            assert set(ids) <= set(serial[key]), f"rung {key} promoted {ids}, serial {serial[key]}"
    assert machine.done
    assert {k: sorted(v) for k, v in machine.promotions().items()} == serial


def test_every_segment_is_made_ready_once_and_the_machine_is_done_after_the_last_result() -> None:
    machine = SynchronousHyperband(Tuning.of(SPACE, R=27, eta=3, iterations=2))
    made = drain(machine, random.Random(1))
    assert machine.done
    assert len(made) == len(set(made)), "a segment was made ready twice"
    assert len(made) <= machine.total_segments()
    finished = sum(f for *_, f, _ in machine.progress())
    assert finished == len(made)


def test_start_gives_rung_0_of_every_bracket_deepest_first_and_only_once() -> None:
    machine = SynchronousHyperband(Tuning.of(SPACE, R=9, eta=3))
    first = machine.start()
    assert [(s.s, s.id) for s in first][:3] == [(2, 0), (2, 1), (2, 2)]
    assert {s.rung for s in first} == {0} and len(first) == 9 + 5 + 3
    assert not machine.done
    with pytest.raises(RuntimeError):
        machine.start()


def test_a_promoted_segment_resumes_where_its_rung_ended_with_its_best_loss() -> None:
    machine = SynchronousHyperband(Tuning.of(SPACE, R=9, eta=3))
    rung0 = [s for s in machine.start() if s.s == 1]  # 5 x 3 epochs, 1 goes on to 9
    made = []
    for segment in rung0:
        loss = 0.5 - 0.1 * segment.id
        made += machine.on_result(
            segment.result(val_loss=loss, last_val_loss=loss, status=Status.OK, error="")
        )
    assert [(s.id, s.rung, s.start_epoch, s.epochs) for s in made] == [(4, 1, 3, 9)]
    assert made[0].prior_best == pytest.approx(0.1)
    assert machine.promotions()[(0, 1, 0)] == [4]


def test_a_duplicate_result_is_ignored_and_a_foreign_one_refused() -> None:
    machine = SynchronousHyperband(Tuning.of(SPACE, R=9, eta=3))
    segment = machine.start()[0]
    row = segment.result(val_loss=0.1, last_val_loss=0.1, status=Status.OK, error="")
    assert not machine.has_result(segment.key)
    machine.on_result(row)
    assert machine.has_result(segment.key)
    assert machine.on_result(row) == []
    for key in [(0, 2, 0, 1), (0, 7, 0, 0), (3, 2, 0, 0), (0, 2, 99, 0), (0, 2, 0, 9)]:
        with pytest.raises(ValueError, match="not part of this plan"):
            machine.has_result(key)


def test_segments_carry_the_checkpoint_stem_that_checkpoint_of_names() -> None:
    bare = SynchronousHyperband(Tuning.of(SPACE, R=3, eta=3)).start()
    assert [s.checkpoint for s in bare] == [config_name(0, s.s, s.id) for s in bare]
    named = SynchronousHyperband(
        Tuning.of(SPACE, R=3, eta=3, checkpoint_of=lambda i, s, c: f"m/{i}{s}{c}")
    )
    assert [s.checkpoint for s in named.start()][:2] == ["m/010", "m/011"]
