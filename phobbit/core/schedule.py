"""Hyperband's bracket math: pure functions of R and eta, no I/O.

For max epochs R and cut factor eta, ``s_max`` is the largest integer s with
``eta**s <= R``. Bracket s starts ``n = ceil((s_max+1) * eta**s / (s+1))``
configurations; its rung i keeps ``floor(n / eta**i)`` of them, trained to
``r_i = R * eta**(i-s)`` epochs (rounded to the nearest integer, at least 1).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction

from phobbit.core.units import check_int


@dataclass(frozen=True)
class Rung:
    """One rung of a bracket: ``n`` configurations trained to ``epochs`` epochs in total.

    Attributes:
        index: the rung's position in its bracket, from 0.
        n: how many configurations reach this rung.
        r: the exact epoch budget ``R * eta**(index - s)``.
        epochs: ``r`` rounded to the nearest integer, at least 1; what is trained.
    """

    index: int
    n: int
    r: float
    epochs: int


@dataclass(frozen=True)
class Bracket:
    """One bracket of Hyperband: successive halving started with ``rungs[0].n`` configurations.

    Attributes:
        s: the bracket's s (Hyperband's index: ``eta**s`` configurations at most),
            which Hobbit's results table calls ``Run``.
        rungs: its rungs, from the widest (fewest epochs) to the narrowest.
    """

    s: int
    rungs: tuple[Rung, ...]

    @property
    def run(self) -> int:
        """Deprecated name of :attr:`s` (phobbit 0.x called it ``run``, after the table)."""
        warnings.warn("Bracket.run is deprecated; use Bracket.s", DeprecationWarning, stacklevel=2)
        return self.s

    @property
    def n(self) -> int:
        """How many configurations the bracket starts."""
        return self.rungs[0].n

    def segment_epochs(self, rung: int) -> int:
        """Epochs trained at ``rung`` by a configuration resumed from the previous rung."""
        before = self.rungs[rung - 1].epochs if rung > 0 else 0
        return self.rungs[rung].epochs - before

    def total_epochs(self, continuation: bool = True) -> int:
        """Epochs the whole bracket trains, resuming from checkpoints or from scratch."""
        if continuation:
            return sum(r.n * self.segment_epochs(r.index) for r in self.rungs)
        return sum(r.n * r.epochs for r in self.rungs)


def validate(R: object, eta: object) -> None:
    """Raises ``InputError`` unless R is an integer >= 1 and eta an integer >= 2."""
    check_int("R", R, minimum=1)
    check_int("eta", eta, minimum=2)


def s_max(R: int, eta: int) -> int:
    """The largest s with ``eta**s <= R``, in integers (``log(243)/log(3)`` is 4.999...)."""
    validate(R, eta)
    s = 0
    while eta ** (s + 1) <= R:
        s += 1
    return s


def _nearest(x: Fraction) -> int:
    """Rounds half up (not to even), and never below 1 epoch."""
    return max(1, math.floor(x + Fraction(1, 2)))


def brackets(R: int, eta: int = 3) -> list[Bracket]:
    """The brackets of one Hyperband iteration, from s_max down to 0.

    Args:
        R: the most epochs any configuration is trained (an integer >= 1).
        eta: the cut factor: each rung keeps the best 1/eta (an integer >= 2).

    Returns:
        A list of ``Bracket``; bracket s has rungs with ``.n``, ``.r`` and ``.epochs``.

    Raises:
        InputError: (a ``ValueError``) when R or eta is not an allowed integer.

    Example:
        >>> [[(r.n, r.epochs) for r in b.rungs] for b in brackets(20, 3)]
        [[(9, 2), (3, 7), (1, 20)], [(5, 7), (1, 20)], [(3, 20)]]
    """
    top = s_max(R, eta)
    R, eta = int(R), int(eta)
    result = []
    for s in range(top, -1, -1):
        n = -(-(top + 1) * eta**s // (s + 1))  # ceil in integers
        rungs = []
        for i in range(s + 1):
            r = Fraction(R) * Fraction(eta) ** (i - s)
            rungs.append(Rung(index=i, n=n // eta**i, r=float(r), epochs=_nearest(r)))
        result.append(Bracket(s=s, rungs=tuple(rungs)))
    return result


def format_schedule(schedule: list[Bracket], iterations: int = 1) -> str:
    """The schedule as the seed tutorial prints it, one bracket a line, with totals.

    With several ``iterations`` a last line gives the totals of them all.
    """
    lines = []
    for b in schedule:
        rungs = ", ".join(f"{r.n}x{r.epochs}" for r in b.rungs)
        lines.append(f"Run {b.s}: {rungs}  ({b.n} configurations, {b.total_epochs()} epochs)")
    configs = sum(b.n for b in schedule)
    total = sum(b.total_epochs() for b in schedule)
    scratch = sum(b.total_epochs(continuation=False) for b in schedule)
    lines.append(
        f"Total: {configs} configurations, {total} epochs with checkpoint continuation "
        f"({scratch} from scratch)"
    )
    if iterations > 1:
        lines.append(
            f"{iterations} iterations: {iterations * configs} configurations, "
            f"{iterations * total} epochs with checkpoint continuation"
        )
    return "\n".join(lines)
