"""One grammar for the small values a user types: durations, byte sizes, integers. Pure.

Every duration (``time_limit``, ``segment_timeout``, ``--time-limit``,
``--segment-timeout``), every byte size (``warm_cache``, ``--warm-cache``) and
every integer setting is read by one function here, so the same text means the
same thing wherever it is given, and a refusal always names the setting, the
value and what is allowed.

* A **duration** is a number of seconds, or text: a number with a unit ``s``,
  ``m``, ``h`` or ``d`` (``90s``, ``15m``, ``1.5h``, ``2d``), a bare number of
  seconds (``90``), or units combined from the largest down (``1h30m``,
  ``1d12h``). It lies between ``MIN_SECONDS`` (a millisecond: nothing phobbit
  times, a segment's dispatch or a clock check, is that quick, so anything
  shorter is a typo such as ``0.0000001s``) and ``MAX_SECONDS`` (366 days: a
  longer run is no plan, and a value past it, such as ``99999999999999999999``,
  would overflow the clock's timestamps).
* A **byte size** is a whole number of bytes, or text: a number with a unit
  ``B``, ``KB``/``K``, ``MB``/``M``, ``GB``/``G``, ``TB``/``T``, ``PB``/``P``
  (powers of 1000) or ``KiB``, ``MiB``, ``GiB``, ``TiB``, ``PiB`` (powers of
  1024); a fraction of a byte is dropped. It is at most ``MAX_BYTES`` (1 PiB,
  beyond any machine's memory).

In both, case does not matter, nor do spaces, except inside a number (``1 000s``
is refused). A number is decimal digits with an optional point, no sign, no
exponent.

``format_duration`` and ``format_bytes`` write what the parsers read back
exactly.

Example:
    >>> parse_duration("1h30m", "time_limit"), format_duration(86400)
    (5400.0, '1d')
    >>> parse_bytes("1GiB", "warm_cache"), format_bytes(512 * 10**6)
    (1073741824, '512MB')
"""

from __future__ import annotations

import math
import numbers
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal, overload

from phobbit.errors import InputError

MIN_SECONDS = 0.001
"""The shortest duration accepted, in seconds."""

MAX_SECONDS = 366 * 86400
"""The longest duration accepted, in seconds (366 days)."""

MAX_BYTES = 2**50
"""The largest byte size accepted (1 PiB)."""

_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile("".join(rf"(?:(?P<{unit}>{_NUMBER}){unit})?" for unit in _SECONDS))

_PREFIXES = tuple(enumerate("KMGTP", start=1))
_BYTE_UNITS = {
    "": 1,
    "B": 1,
    **{prefix: 1000**power for power, prefix in _PREFIXES},
    **{f"{prefix}B": 1000**power for power, prefix in _PREFIXES},
    **{f"{prefix}IB": 1024**power for power, prefix in _PREFIXES},
}
_SIZE = re.compile(rf"({_NUMBER})([A-Z]*)")
# The units format_bytes may write, largest first, the binary one first at each power.
_FORMAT_UNITS = [
    (f"{prefix}{infix}B", base**power)
    for power, prefix in reversed(_PREFIXES)
    for infix, base in (("i", 1024), ("", 1000))
]

_SPLIT_NUMBER = re.compile(r"[\d.]\s+[\d.]")  # "1 000s", "1 5m": spaces part units, not digits


def _compact(text: str) -> str | None:
    """``text`` without its spaces, None where a space splits a number."""
    return None if _SPLIT_NUMBER.search(text) else re.sub(r"\s+", "", text)


_SHOWN = 60  # characters of a refused value quoted back: a megabyte of text is no message


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 3]}..."


@overload
def parse_duration(value: None, name: str) -> None: ...
@overload
def parse_duration(value: str | float, name: str) -> float: ...
@overload
def parse_duration(value: Any, name: str) -> float | None: ...


def parse_duration(value: Any, name: str) -> float | None:
    """Seconds, from a number or text such as ``90``, ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``.

    Args:
        value: None (no duration), a number of seconds (not a bool), or text (see
            the module's docstring).
        name: the setting ``value`` was given for, named when it is refused.

    Returns:
        The seconds, or None for None.

    Raises:
        InputError: naming ``name``, the value and what is allowed, for anything
            else: garbage, zero, a negative, NaN, infinity, less than a millisecond
            or more than 366 days.
    """
    if value is None:
        return None
    seconds = math.nan
    if isinstance(value, str):
        seconds = _seconds_of(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range: too long, said below
            seconds = math.inf
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:  # NaN fails this too
        raise InputError(
            f"{name} must be a duration > 0 such as 90s, 15m, 2h, 1d or 1h30m (a bare number "
            f"is seconds; from {format_duration(MIN_SECONDS)} to {format_duration(MAX_SECONDS)}"
            f"), got {_shown(value)}"
        )
    return seconds


def _seconds_of(text: str) -> float:
    """The seconds ``text`` says, NaN if it is no duration."""
    compact = (_compact(text) or "").lower()
    if re.fullmatch(_NUMBER, compact):
        return float(compact)
    match = _DURATION.fullmatch(compact)
    if not compact or match is None:
        return math.nan
    # Adding the parts from the largest down keeps format_duration's text exact: the
    # whole units sum exactly, and the last part is what the float lacks of them.
    seconds = 0.0
    for unit, size in _SECONDS.items():
        if match[unit] is not None:
            seconds += float(match[unit]) * size
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as ``parse_duration`` reads it back exactly: ``1d``, ``1h30m``, ``0.5s``.

    Example:
        >>> [format_duration(s) for s in (86400, 5400, 90, 0.5)]
        ['1d', '1h30m', '1m30s', '0.5s']
    """
    if not math.isfinite(seconds):
        return f"{seconds}s"
    if seconds < 0:
        return f"-{format_duration(-seconds)}"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, whole_seconds = divmod(rest, 60)
    # Exact: a float less its whole days, hours and minutes (an integer below it) is a float.
    left = seconds - (whole - whole_seconds)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    if left or not parts:
        # The shortest decimal that reads back as this float, written without an exponent.
        digits = f"{Decimal(repr(float(left))):f}" if left != whole_seconds else str(whole_seconds)
        parts.append(f"{digits}s")
    return "".join(parts)


def parse_bytes(value: Any, name: str, *, minimum: int = 0) -> int:
    """A number of bytes, from an integer or text such as ``1GB``, ``512MB``, ``1GiB``, ``64k``.

    Args:
        value: a whole number (not a bool), or text (see the module's docstring).
        name: the setting ``value`` was given for, named when it is refused.
        minimum: the fewest bytes allowed (0: off is allowed).

    Raises:
        InputError: naming ``name``, the value and what is allowed, for anything
            else: garbage, a float, fewer than ``minimum`` or more than 1 PiB.
    """
    size: Fraction | None = None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        size = Fraction(int(value))
    elif isinstance(value, str):
        match = _SIZE.fullmatch((_compact(value) or "").upper())
        if match and match[2] in _BYTE_UNITS:
            size = Fraction(match[1]) * _BYTE_UNITS[match[2]]
    if size is None or not minimum <= size <= MAX_BYTES:
        examples = "1GB, 512MB, 64KiB" + (" or 0" if minimum == 0 else "")
        raise InputError(
            f"{name} must be a number of bytes >= {minimum} such as {examples} (KB, MB, GB "
            f"by 1000, KiB, MiB, GiB by 1024; at most {format_bytes(MAX_BYTES)}), "
            f"got {_shown(value)}"
        )
    return math.floor(size)


def format_bytes(n: int) -> str:
    """A byte size as ``parse_bytes`` reads it back exactly: ``1GB``, ``1GiB``, ``1.5KiB``.

    The unit is the one that needs the fewest digits (at most three decimals), so
    a size keeps the unit it was most likely written in.

    Example:
        >>> [format_bytes(n) for n in (10**9, 2**30, 1536, 1234567)]
        ['1GB', '1GiB', '1.5KiB', '1234567B']
    """
    best = (len(str(n)), 0, f"{n}B")
    for unit, size in _FORMAT_UNITS:
        if n < size or (n * 1000) % size:
            continue
        number = f"{Decimal(n) / Decimal(size):f}"  # exact: at most three decimals
        if "." in number:
            number = number.rstrip("0").rstrip(".")
        decimals = len(number.partition(".")[2])
        candidate = (len(number.replace(".", "")), decimals, f"{number}{unit}")
        if candidate[:2] < best[:2]:
            best = candidate
    return best[2]


@overload
def check_int(
    name: str,
    value: Any,
    minimum: int = 0,
    maximum: int | None = None,
    allow_none: Literal[False] = False,
) -> int: ...
@overload
def check_int(
    name: str, value: Any, minimum: int = 0, maximum: int | None = None, allow_none: bool = ...
) -> int | None: ...


def check_int(
    name: str,
    value: Any,
    minimum: int = 0,
    maximum: int | None = None,
    allow_none: bool = False,
) -> int | None:
    """``value`` as an int, if it is an integer (not a bool) in ``[minimum, maximum]``.

    Args:
        name: the setting ``value`` was given for, named when it is refused.
        value: what was given.
        minimum: the smallest value allowed.
        maximum: the largest value allowed; None: no bound.
        allow_none: whether None is allowed (and returned).

    Raises:
        InputError: ``NAME must be an integer >= MIN[ and <= MAX], got VALUE``.
    """
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = "" if maximum is None else f" and <= {maximum}"
        raise InputError(f"{name} must be an integer >= {minimum}{bound}, got {_shown(value)}")
    return int(value)
