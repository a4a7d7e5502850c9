"""Bracket math: exact s_max, the seed tutorial's table and Li et al.'s."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phobbit import InputError, brackets
from phobbit.core.schedule import format_schedule, s_max


def table(R: int, eta: int) -> list[list[tuple[int, int]]]:
    return [[(r.n, r.epochs) for r in b.rungs] for b in brackets(R, eta)]


def test_seed_tutorial_table_for_R20_eta3() -> None:
    assert table(20, 3) == [[(9, 2), (3, 7), (1, 20)], [(5, 7), (1, 20)], [(3, 20)]]


def test_li_et_al_table_for_R81_eta3() -> None:
    got = table(81, 3)
    assert [[n for n, _ in b] for b in got] == [
        [81, 27, 9, 3, 1],
        [34, 11, 3, 1],
        [15, 5, 1],
        [8, 2],
        [5],
    ]
    assert [e for _, e in got[0]] == [1, 3, 9, 27, 81]
    assert [b.s for b in brackets(81, 3)] == [4, 3, 2, 1, 0]


def test_s_max_is_integer_exact_where_floats_drop_a_bracket() -> None:
    assert math.log(243) / math.log(3) < 5  # the float trap this guards against
    assert s_max(243, 3) == 5
    assert len(brackets(243, 3)) == 6
    assert s_max(1000, 10) == 3


@given(R=st.integers(1, 5000), eta=st.integers(2, 12))
def test_brackets_follow_the_formulas(R: int, eta: int) -> None:
    top = s_max(R, eta)
    assert eta**top <= R < eta ** (top + 1)
    for b in brackets(R, eta):
        s = b.s
        n = math.ceil((top + 1) * eta**s / (s + 1))
        assert [r.n for r in b.rungs] == [n // eta**i for i in range(s + 1)]
        assert [r.r for r in b.rungs] == pytest.approx([R * eta ** (i - s) for i in range(s + 1)])
        epochs = [r.epochs for r in b.rungs]
        assert all(abs(e - r.r) <= 0.5 and e >= 1 for e, r in zip(epochs, b.rungs))
        assert epochs == sorted(set(epochs)), "continuation needs strictly rising epochs"
        assert epochs[-1] == R


def test_totals_with_and_without_continuation() -> None:
    b = brackets(20, 3)[0]
    assert b.total_epochs() == 9 * 2 + 3 * 5 + 1 * 13
    assert b.total_epochs(continuation=False) == 9 * 2 + 3 * 7 + 1 * 20
    text = format_schedule(brackets(20, 3))
    assert "Run 2: 9x2, 3x7, 1x20" in text and "17 configurations" in text


@pytest.mark.parametrize(
    ("R", "eta", "message"),
    [
        (0, 3, "R must be an integer >= 1"),
        (20, 1, "eta must be an integer >= 2"),
        (20, 2.5, "eta must be an integer"),
        (20.0, 3, "R must be an integer"),
        (True, 3, "R must be"),
    ],
)
def test_bad_R_or_eta_is_refused(R: object, eta: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        brackets(R, eta)  # type: ignore[arg-type]


def test_bracket_run_is_a_deprecated_name_of_s() -> None:
    bracket = brackets(27, 3)[1]
    with pytest.warns(DeprecationWarning, match="Bracket.s"):
        assert bracket.run == bracket.s == 2
