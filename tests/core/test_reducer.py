"""The reducer: the best floor(n/eta) by Val Loss, ties by ID, failures last and never promoted."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from phobbit.core import reducer

losses = st.one_of(st.none(), st.just(math.nan), st.floats(0, 10, allow_nan=False))


def test_keeps_lowest_losses_with_ties_broken_by_id() -> None:
    finished = {0: 0.5, 1: 0.2, 2: 0.3, 3: 0.2, 4: 0.9, 5: 0.1}
    assert reducer.serial_promotions(finished, 3) == [5, 1, 3]


def test_failed_and_nan_trials_rank_last_and_are_not_promoted() -> None:
    finished = {0: None, 1: math.nan, 2: 3.0, 3: 9.0}
    assert reducer.ranked(finished)[:2] == [2, 3]
    assert reducer.serial_promotions(finished, 3) == [2, 3]
    assert reducer.serial_promotions({0: None, 1: math.nan}, 1) == []


def test_early_promotion_waits_while_unfinished_trials_could_win() -> None:
    finished = {0: 0.1, 1: 0.5}
    assert reducer.certain_promotions(finished, k=1, unfinished=1) == []
    assert reducer.certain_promotions(finished, k=2, unfinished=1) == [0]
    assert reducer.certain_promotions(finished, k=3, unfinished=1) == [0, 1]


@given(
    scores=st.lists(losses, min_size=1, max_size=30),
    k=st.integers(0, 12),
    order=st.randoms(use_true_random=False),
)
def test_early_promotions_are_always_a_subset_of_the_serial_ones(scores, k, order) -> None:
    everything = dict(enumerate(scores))
    serial = reducer.serial_promotions(everything, k)
    ids = list(everything)
    order.shuffle(ids)
    seen: dict[int, float | None] = {}
    for done, config_id in enumerate(ids, start=1):
        seen[config_id] = everything[config_id]
        early = reducer.certain_promotions(seen, k, unfinished=len(ids) - done)
        assert set(early) <= set(serial)
    assert reducer.certain_promotions(seen, k, 0) == serial


def test_best_so_far_ignores_nan_and_keeps_the_earlier_best() -> None:
    assert reducer.best_so_far([0.4, math.nan, 0.3], before=0.35) == 0.3
    assert reducer.best_so_far([0.4], before=0.2) == 0.2
    assert reducer.best_so_far([math.nan]) is None


@given(st.lists(losses, min_size=1, max_size=40), st.data())
def test_rung_ranking_promotes_what_certain_promotions_does_in_the_same_order(
    values: list[float | None], data: st.DataObject
) -> None:
    n = len(values)
    k = data.draw(st.integers(0, n), label="k")
    order = data.draw(st.permutations(range(n)), label="finish order")
    # An upper bound on the unfinished that may run above the true count, never growing.
    slack = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n), label="slack")
    slack = [max(slack[i:]) for i in range(n)]  # never grows from one result to the next
    ranking = reducer.RungRanking()
    finished: dict[int, float | None] = {}
    incremental: list[int] = []
    from_scratch: list[int] = []  # what re-ranking the whole rung per result promotes
    for step, config_id in enumerate(order):
        finished[config_id] = values[config_id]
        unfinished = n - len(finished) + slack[step]
        ranking.add(config_id, values[config_id])
        incremental += ranking.promote(k, unfinished)
        from_scratch += [
            c for c in reducer.certain_promotions(finished, k, unfinished) if c not in from_scratch
        ]
        assert incremental == from_scratch
