"""Plain value objects that cross module boundaries: no I/O, no processes, no frameworks.

For now it holds ``RunSettings``, what ``run.json`` records: the settings that
make a run's rows mean what they mean, validated as one typed object whether
they come from the caller or from a file.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from phobbit.errors import InputError, RepositoryError
from phobbit.schedule import brackets, validate
from phobbit.space import Space

MAX_SEGMENTS = 1_000_000
"""The most segments a run may plan: a plan holds every configuration, so more would
never finish sampling, let alone training (R=81, eta=3 plans 206 per iteration)."""


def _integer(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class RunSettings:
    """The settings of a run: a repository resumes only a run with equal settings.

    Attributes:
        R: the most epochs a configuration is trained (an integer >= 1).
        eta: the cut factor (an integer >= 2).
        seed: the sampling seed (an integer >= 0).
        iterations: Hyperband iterations (an integer >= 1).
        space_fingerprint: ``space.fingerprint()``, kept in ``run.json`` for people
            and tools that compare runs without parsing the space.
        space: the search space.

    Raises:
        InputError: (a ``ValueError``) naming the field that is wrong, including a
            run of more than ``MAX_SEGMENTS`` segments.

    Example:
        >>> settings = RunSettings.of(Space(hparams), R=9, eta=3, seed=0, iterations=1)
        >>> RunSettings.from_dict(settings.to_dict()) == settings
        True
    """

    R: int
    eta: int
    seed: int
    iterations: int
    space_fingerprint: str
    space: Space

    def __post_init__(self) -> None:
        validate(self.R, self.eta)
        _integer("seed", self.seed, 0)
        _integer("iterations", self.iterations, 1)
        if not isinstance(self.space, Space):
            raise InputError(f"space must be a phobbit Space, got {type(self.space).__name__}")
        if self.space_fingerprint != self.space.fingerprint():
            raise InputError(
                f"space_fingerprint {self.space_fingerprint!r} is not that of the space "
                f"({self.space.fingerprint()!r})"
            )
        for name in ("R", "eta", "seed", "iterations"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.segments() > MAX_SEGMENTS:
            raise InputError(
                f"R={self.R}, eta={self.eta} and iterations={self.iterations} make more than "
                f"{MAX_SEGMENTS:,} segments, the most a run may plan; use a smaller R, a "
                "larger eta or fewer iterations"
            )

    @classmethod
    def of(cls, space: Space, R: int, eta: int, seed: int, iterations: int = 1) -> RunSettings:
        """The settings of a run of ``space``, with its fingerprint filled in."""
        return cls(R, eta, seed, iterations, space.fingerprint(), space)

    def segments(self) -> int:
        """Segments the run trains at most, or ``MAX_SEGMENTS + 1`` when that is more."""
        # The widest bracket alone starts eta**s_max > R / eta configurations: an
        # absurd R is refused before its brackets are built.
        if self.R > self.eta * MAX_SEGMENTS:
            return MAX_SEGMENTS + 1
        per_iteration = sum(r.n for b in brackets(self.R, self.eta) for r in b.rungs)
        return min(per_iteration * self.iterations, MAX_SEGMENTS + 1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the settings: what ``run.json`` holds."""
        return {
            "R": self.R,
            "eta": self.eta,
            "seed": self.seed,
            "iterations": self.iterations,
            "space_fingerprint": self.space_fingerprint,
            "space": self.space.to_list(),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "run.json") -> RunSettings:
        """The inverse of :meth:`to_dict`, checking every field of what a file holds.

        Keys it does not know are refused, not ignored: a setting from a newer
        phobbit (or a hand edit) may change what the rows mean, and a resume that
        ignored it would mix two runs.

        Args:
            data: what ``json.loads`` gave for the file.
            source: the file, named in messages.

        Raises:
            RepositoryError: naming ``source``, the field and what is wrong.
        """
        names = [f.name for f in fields(cls)]
        remedy = "restore it or use another repository folder"
        if not isinstance(data, dict):
            raise RepositoryError(f"{source} does not hold a phobbit run; {remedy}")
        missing = [n for n in names if n not in data]
        if missing:
            raise RepositoryError(f"{source} lacks {', '.join(missing)}; {remedy}")
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise RepositoryError(
                f"{source} holds settings this phobbit does not know ({', '.join(unknown)}); "
                f"it was edited or written by a newer phobbit: {remedy}"
            )
        try:
            if not isinstance(data["space"], list) or not all(
                isinstance(hp, dict) for hp in data["space"]
            ):
                raise InputError("space must be a list of hyperparameters")
            space = Space.from_list(data["space"])
            values = {n: data[n] for n in names if n != "space"}
            return cls(space=space, **values)
        except (InputError, KeyError, TypeError) as exc:
            what = f"a hyperparameter lacks {exc}" if isinstance(exc, KeyError) else str(exc)
            raise RepositoryError(f"{source} is not valid: {what}; {remedy}") from None
