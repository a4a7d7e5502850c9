"""The one grammar of durations, byte sizes and integer settings (``phobbit.core.units``)."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phobbit.core.units import (
    MAX_BYTES,
    MAX_SECONDS,
    MIN_SECONDS,
    check_int,
    format_bytes,
    format_duration,
    parse_bytes,
    parse_duration,
)
from phobbit.errors import InputError

# -- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("1.5h", 5400),
        ("1.5d", 129600),
        (".5s", 0.5),
        ("5.", 5),
        ("1h30m", 5400),
        ("1d12h", 129600),
        ("1d2h3m4.5s", 86400 + 7200 + 180 + 4.5),
        ("1H30M", 5400),
        (" 1 h 30 m ", 5400),
        ("\t2D\n", 172800),
        ("0.001s", 0.001),
        ("366d", 366 * 86400),
    ],
)
def test_a_duration_reads_as_people_write_it(text: str, seconds: float) -> None:
    assert parse_duration(text, "time_limit") == seconds


@pytest.mark.parametrize(
    "number", [90, 0.5, 2.5, np.float64(60.0), np.int64(3600), Fraction(3, 2), MAX_SECONDS]
)
def test_a_number_is_seconds(number: Any) -> None:
    seconds = parse_duration(number, "segment_timeout")
    assert type(seconds) is float and seconds == float(number)


def test_none_is_no_duration() -> None:
    assert parse_duration(None, "time_limit") is None


@pytest.mark.parametrize(
    "bad",
    [
        True,
        False,
        0,
        0.0,
        "0",
        "0s",
        -1,
        "-5m",
        math.nan,
        math.inf,
        -math.inf,
        "nan",
        "inf",
        "soon",
        "",
        "   ",
        "h",
        "5x",
        "1e3",
        "1h30",  # a bare number only stands alone
        "30m1h",  # units go from the largest down
        "1h1h",
        "1.2.3s",
        "1 000s",  # a space separates units, never digits
        "1 5m",
        "0.0000001s",  # issue 19: shorter than anything phobbit can time
        0.0009,
        "367d",
        "99999999999999999999",  # issue 19: past the clock's timestamps
        10**400,  # past float's range: no OverflowError
        "9" * 500,
        [90],
        b"90s",
        {"s": 90},
    ],
)
def test_a_bad_duration_is_refused_naming_the_setting_the_value_and_the_grammar(
    bad: Any,
) -> None:
    with pytest.raises(InputError) as refused:
        parse_duration(bad, "segment_timeout")
    message = str(refused.value)
    assert message.startswith("segment_timeout must be a duration > 0 such as 90s, 15m, 2h, 1d")
    assert "from 0.001s to 366d" in message
    assert message.endswith(f"got {bad!r}") or message.endswith("...")


def test_a_huge_refused_value_is_quoted_short() -> None:
    with pytest.raises(InputError) as refused:
        parse_duration("9" * 10_000, "time_limit")
    assert len(str(refused.value)) < 300


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (86400, "1d"),
        (5400, "1h30m"),
        (90, "1m30s"),
        (0.5, "0.5s"),
        (4.0, "4s"),
        (30, "30s"),
        (1800, "30m"),
        (7200.0, "2h"),
        (86400 + 1, "1d1s"),
        (90061.25, "1d1h1m1.25s"),
        (0.001, "0.001s"),
        (0, "0s"),
        (MAX_SECONDS, "366d"),
    ],
)
def test_a_duration_is_written_compactly(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_tiny_remainder_is_written_without_an_exponent() -> None:
    text = format_duration(3600.00001)
    assert "e" not in text and text.startswith("1h0.0000")
    assert parse_duration(text, "t") == 3600.00001


@given(st.floats(min_value=MIN_SECONDS, max_value=MAX_SECONDS))
def test_every_float_duration_reads_back_exactly(seconds: float) -> None:
    assert parse_duration(format_duration(seconds), "time_limit") == seconds


@given(st.integers(min_value=1, max_value=MAX_SECONDS))
def test_every_whole_duration_reads_back_exactly_and_uses_whole_units(seconds: int) -> None:
    text = format_duration(seconds)
    assert parse_duration(text, "time_limit") == seconds
    assert "." not in text


# -- byte sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("512", 512),
        ("512B", 512),
        ("64k", 64_000),
        ("64K", 64_000),
        ("64KB", 64_000),
        ("64 kib", 65_536),
        ("512MB", 512 * 10**6),
        ("512m", 512 * 10**6),
        ("1GB", 10**9),
        ("1g", 10**9),
        ("1GiB", 2**30),
        ("1.5GiB", 3 * 2**29),
        ("2TB", 2 * 10**12),
        ("1TiB", 2**40),
        ("1PiB", 2**50),
        ("1PB", 10**15),
        (".5KiB", 512),
        ("0.5B", 0),  # a fraction of a byte is dropped
        ("1.1GB", 1_100_000_000),  # exact: no float rounding
        (" 1 G B ", 10**9),
        (0, 0),
        (4096, 4096),
        (np.int64(2**20), 2**20),
        (MAX_BYTES, MAX_BYTES),
    ],
)
def test_a_size_reads_as_people_write_it(text: Any, size: int) -> None:
    parsed = parse_bytes(text, "warm_cache")
    assert type(parsed) is int and parsed == size


@pytest.mark.parametrize(
    "bad",
    [
        "-1",
        -5,
        "1XB",
        "1KI",
        "1BK",
        "",
        "GB",
        "nan",
        "inf",
        "1e3",
        "lots",
        1.5,
        1.0,
        True,
        None,
        "1.0.0GB",
        "1 000MB",
        MAX_BYTES + 1,
        "2PiB",
        "9" * 400,
        [1],
    ],
)
def test_a_bad_size_is_refused_naming_the_setting_and_the_grammar(bad: Any) -> None:
    with pytest.raises(InputError) as refused:
        parse_bytes(bad, "warm_cache")
    message = str(refused.value)
    assert message.startswith("warm_cache must be a number of bytes >= 0 such as 1GB, 512MB")
    assert "at most 1PiB" in message


def test_a_size_with_a_minimum_refuses_less_and_says_so() -> None:
    assert parse_bytes("1", "worker_memory_limit", minimum=1) == 1
    with pytest.raises(InputError, match=r"worker_memory_limit must be a number of bytes >= 1 "):
        parse_bytes(0, "worker_memory_limit", minimum=1)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1, "1B"),
        (999, "999B"),
        (1000, "1KB"),
        (1024, "1KiB"),
        (1536, "1.5KiB"),
        (1_500_000, "1.5MB"),
        (512 * 10**6, "512MB"),
        (10**9, "1GB"),
        (2**30, "1GiB"),
        (1_234_567, "1234567B"),
        (MAX_BYTES, "1PiB"),
    ],
)
def test_a_size_is_written_in_the_unit_it_was_most_likely_given_in(size: int, text: str) -> None:
    assert format_bytes(size) == text


@given(st.integers(min_value=0, max_value=MAX_BYTES))
def test_every_size_reads_back_exactly(size: int) -> None:
    assert parse_bytes(format_bytes(size), "warm_cache") == size


@given(
    st.integers(min_value=0, max_value=1024),
    st.sampled_from(["B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"]),
)
def test_a_written_size_keeps_its_value(number: int, unit: str) -> None:
    size = parse_bytes(f"{number}{unit}", "warm_cache")
    assert parse_bytes(format_bytes(size), "warm_cache") == size


# -- integers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "minimum", "maximum"),
    [(0, 0, None), (1, 1, None), (7, 2, 7), (np.int64(3), 1, None), (10**30, 0, None)],
)
def test_an_integer_in_range_is_returned_as_an_int(value: Any, minimum: int, maximum: Any) -> None:
    checked = check_int("n", value, minimum, maximum)
    assert type(checked) is int and checked == value


def test_none_passes_only_when_allowed() -> None:
    assert check_int("n_jobs", None, minimum=1, allow_none=True) is None
    with pytest.raises(InputError, match=r"^steps_per_epoch must be an integer >= 1, got None$"):
        check_int("steps_per_epoch", None, minimum=1)


@pytest.mark.parametrize(
    ("value", "minimum", "maximum", "message"),
    [
        (True, 0, None, "seed must be an integer >= 0, got True"),
        (False, 0, None, "seed must be an integer >= 0, got False"),
        (-1, 0, None, "seed must be an integer >= 0, got -1"),
        (0, 1, None, "seed must be an integer >= 1, got 0"),
        (2.0, 1, None, "seed must be an integer >= 1, got 2.0"),
        (2.5, 1, None, "seed must be an integer >= 1, got 2.5"),
        ("3", 1, None, "seed must be an integer >= 1, got '3'"),
        (math.nan, 1, None, "seed must be an integer >= 1, got nan"),
        (8, 1, 7, "seed must be an integer >= 1 and <= 7, got 8"),
        (0, 1, 7, "seed must be an integer >= 1 and <= 7, got 0"),
    ],
)
def test_a_bad_integer_is_refused_in_one_message_shape(
    value: Any, minimum: int, maximum: Any, message: str
) -> None:
    with pytest.raises(InputError) as refused:
        check_int("seed", value, minimum, maximum)
    assert str(refused.value) == message


def test_the_refusals_are_value_errors_for_callers_that_catch_those() -> None:
    for call in (
        lambda: parse_duration("soon", "t"),
        lambda: parse_bytes("lots", "b"),
        lambda: check_int("n", -1),
    ):
        with pytest.raises(ValueError):
            call()
