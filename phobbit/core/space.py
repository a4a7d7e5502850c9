"""The search space: hyperparameters, their distributions, and seeded sampling.

A configuration is drawn from a generator seeded by ``(seed, iteration, s, id)``
alone, so the same seed gives the same configurations whatever the number of
workers or the order in which segments finish.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from phobbit.errors import InputError

if TYPE_CHECKING:
    import numpy as np

DISTRIBUTIONS = (
    "uniform",
    "log-uniform",
    "choice",
    "randint",
    "normal",
    "log-randint",
    "reverse-log-uniform",
)
"""The last two are Keras Tuner's ``hp.Int(sampling="log")`` and ``hp.Float(sampling=
"reverse_log")`` (``phobbit.core.define_by_run``): an integer uniform in log space over
[lo, hi + 1), and a float whose distance to hi + lo is log-uniform (dense near hi)."""
MAX_NESTING = 16
"""How deeply a choice option may nest lists and dicts; rows of deeper hparams are not read."""
INT64 = (-(2**63), 2**63 - 1)  # randint draws with numpy, in int64
NORMAL_REACH = 64  # no standard normal numpy draws comes near 64: mu +- 64 sigma must be finite


class _FrozenDict(dict):
    """A dict option of a choice, hashable so that its hyperparameter hashes by its fields.

    It is never mutated (it lives in a frozen ``Hyperparameter``); ``_thaw``
    hands model functions a plain copy.
    """

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


def _thaw(value: Any) -> Any:
    """Tuples become lists and frozen dicts dicts, recursively: the JSON shape of a value."""
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def _plain(value: Any, name: str, depth: int = 0) -> Any:
    """A choice option as frozen JSON data: numpy scalars become Python numbers, lists
    tuples and dicts frozen dicts, so that the hyperparameter hashes by its fields.

    Raises:
        InputError: for anything JSON cannot hold exactly: NaN or infinite floats
            (NaN never equals itself, so a run with one could never be resumed),
            dicts with non-string keys, other objects, nesting deeper than
            ``MAX_NESTING``.
    """
    np = _numpy()
    if np is not None and isinstance(value, np.ndarray):
        value = value.tolist()
    elif np is not None and isinstance(value, np.generic):
        value = value.item()  # np.int64 -> int, np.float32 -> float, np.str_ -> str
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(
                f"choice hyperparameter {name!r} has the option {value!r}; options must be "
                "finite numbers (NaN and infinity are not JSON and never compare equal)"
            )
        return value
    if isinstance(value, (list, tuple, dict)) and depth >= MAX_NESTING:
        raise InputError(
            f"options of choice hyperparameter {name!r} nest deeper than {MAX_NESTING} levels"
        )
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v, name, depth + 1) for v in value)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return _FrozenDict((k, _plain(v, name, depth + 1)) for k, v in value.items())
    raise InputError(
        f"options of choice hyperparameter {name!r} must be JSON values (numbers, strings, "
        f"booleans, None, lists of them, dicts with string keys), not {type(value).__name__}"
    )


def _number(value: Any) -> Any:
    """A numpy scalar as the Python number it holds; anything else unchanged."""
    np = _numpy()
    if np is None:
        return value
    return value.item() if isinstance(value, (np.integer, np.floating)) else value


def _numpy() -> Any:
    """numpy if something has imported it, else None: then no value can be a numpy one.

    Read this way so that the readers of a repository (``phobbit status``, ``best``)
    start without importing numpy, which only sampling needs.
    """
    return sys.modules.get("numpy")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    """Whether ``value`` converts to a finite float (an int too large to does not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _canonical(value: Any) -> str | None:
    """``value`` as canonical JSON text, or None when it is no JSON value."""
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a hostile value may be huge."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: a name, a distribution and the distribution's arguments.

    Args:
        name: the key under which the model function finds the value.
        distribution: one of ``uniform`` (lo, hi), ``log-uniform`` (lo, hi; uniform
            in log space, lo > 0), ``choice`` (the options, as ``['a', 'b']`` or as
            Hobbit's ``[('a', 'b')]``), ``randint`` (lo, hi, both inclusive) or
            ``normal`` (mu, sigma).
        distr_args: the arguments of the distribution.

    Raises:
        InputError: (a ``ValueError``) naming the hyperparameter when the
            distribution is unknown or its arguments are malformed.

    Example:
        >>> Hyperparameter("lr", "log-uniform", (1e-4, 1e-1))
        Hyperparameter(name='lr', distribution='log-uniform', distr_args=(0.0001, 0.1))
    """

    name: str
    distribution: str
    distr_args: tuple
    conditions: tuple = ()
    """Keras Tuner's conditional hyperparameters: ``((parent, (values...)), ...)``; the
    hyperparameter is active (drawn into a configuration) only while every parent is active
    and holds one of its values. Empty (the default) for an unconditional one."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"hyperparameter name {self.name!r} must be a non-empty string")
        object.__setattr__(self, "name", str(self.name))  # np.str_ prints as np.str_('x')
        if self.distribution not in DISTRIBUTIONS:
            raise InputError(
                f"distribution {self.distribution!r} of hyperparameter {self.name!r} is unknown; "
                f"use one of {', '.join(DISTRIBUTIONS)}"
            )
        args = self.distr_args
        if not isinstance(args, (list, tuple)):
            raise InputError(
                f"arguments of hyperparameter {self.name!r} must be a list or tuple, "
                f"not {type(args).__name__}"
            )
        if self.distribution == "choice" and len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = args[0]  # Hobbit's tutorial writes choices as [('a', 'b', 'c')]
        if self.distribution == "choice":
            args = tuple(_plain(v, self.name) for v in args)
        else:
            args = tuple(_number(v) for v in args)
        object.__setattr__(self, "distr_args", args)
        object.__setattr__(self, "conditions", self._checked_conditions())
        self._validate()

    def _checked_conditions(self) -> tuple:
        conditions = self.conditions
        if not isinstance(conditions, (list, tuple)) or not all(
            isinstance(c, (list, tuple)) and len(c) == 2 and isinstance(c[0], str) and c[0]
            for c in conditions
        ):
            raise InputError(
                f"conditions of hyperparameter {self.name!r} must be (parent name, values) "
                f"pairs, got {_short(conditions)}"
            )
        checked = []
        for parent, values in conditions:
            if not isinstance(values, (list, tuple)) or not values:
                raise InputError(
                    f"hyperparameter {self.name!r} is conditional on {parent!r} with no "
                    "parent values; give at least one"
                )
            checked.append((str(parent), tuple(_plain(v, self.name) for v in values)))
        return tuple(checked)

    def active(self, values: dict[str, Any]) -> bool:
        """Whether this hyperparameter is active given the values drawn before it
        (``values`` holds only active ones): every condition's parent has one of its values."""
        return all(
            parent in values
            and _canonical(values[parent]) in {_canonical(_thaw(v)) for v in options}
            for parent, options in self.conditions
        )

    def _validate(self) -> None:
        name, dist, args = self.name, self.distribution, self.distr_args
        if dist == "choice":
            if not args:
                raise InputError(
                    f"choice hyperparameter {name!r} has no options; give at least one"
                )
            try:
                json.dumps(_thaw(args))
            except (TypeError, ValueError):  # e.g. an int of more digits than Python prints
                raise InputError(
                    f"options of choice hyperparameter {name!r} must be JSON values "
                    "(numbers, strings, booleans, None, lists of them)"
                ) from None
            return
        if len(args) != 2 or not all(_is_number(a) and _finite(a) for a in args):
            shape = "(mu, sigma)" if dist == "normal" else "(lo, hi)"
            raise InputError(
                f"{dist} hyperparameter {name!r} takes two finite numbers {shape}, got {args!r}"
            )
        a, b = args
        if dist == "normal":
            if b <= 0:
                raise InputError(f"normal hyperparameter {name!r} needs sigma > 0, got {b!r}")
            if not _finite(abs(float(a)) + NORMAL_REACH * float(b)):
                raise InputError(
                    f"normal hyperparameter {name!r} would draw infinite values: "
                    f"|mu| + {NORMAL_REACH} sigma must be below {sys.float_info.max:.4g}, "
                    f"got mu={a!r}, sigma={b!r}"
                )
            return
        if a >= b:
            raise InputError(
                f"{dist} hyperparameter {name!r} needs lo < hi, got lo={a!r}, hi={b!r}"
            )
        if dist in ("log-uniform", "log-randint", "reverse-log-uniform") and a <= 0:
            raise InputError(f"{dist} hyperparameter {name!r} needs lo > 0, got lo={a!r}")
        if dist in ("randint", "log-randint"):
            if not all(float(v).is_integer() for v in args):
                raise InputError(
                    f"{dist} hyperparameter {name!r} needs integer bounds, got {args!r}"
                )
            if not all(INT64[0] <= int(v) <= INT64[1] for v in args):
                raise InputError(
                    f"{dist} hyperparameter {name!r} needs bounds within "
                    f"[-2**63, 2**63 - 1] (numpy draws int64), got lo={a!r}, hi={b!r}"
                )
        if dist in ("uniform", "reverse-log-uniform") and not _finite(float(b) - float(a)):
            raise InputError(
                f"uniform hyperparameter {name!r} needs hi - lo to be a finite float, "
                f"got lo={a!r}, hi={b!r}"
            )

    def sample(self, rng: np.random.Generator) -> Any:
        """Draws one value from ``rng``; numbers come back as Python ``int``/``float``."""
        dist, args = self.distribution, self.distr_args
        if dist == "uniform":
            return float(rng.uniform(args[0], args[1]))
        if dist == "log-uniform":
            return float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
        if dist == "randint":
            return int(rng.integers(int(args[0]), int(args[1]), endpoint=True))
        if dist == "normal":
            return float(rng.normal(args[0], args[1]))
        if dist == "log-randint":
            lo, hi = int(args[0]), int(args[1])
            drawn = math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))
            return min(max(int(drawn), lo), hi)  # exp(log(x)) may land an ulp outside
        if dist == "reverse-log-uniform":
            lo, hi = float(args[0]), float(args[1])
            return min(max(hi + lo - lo * (hi / lo) ** (1 - rng.uniform()), lo), hi)
        return _thaw(args[int(rng.integers(len(args)))])

    def refuses(self, value: Any) -> str | None:
        """Why ``value`` (as a row reads it back, JSON-shaped) cannot have been drawn from
        this hyperparameter, or None when it can.

        Types, bounds and options are checked: a ``uniform`` or ``log-uniform`` value is a
        finite number within [lo, hi] (up to float rounding), a ``randint`` value an
        integer within [lo, hi], a ``normal`` value a finite number, a ``choice`` value
        one of the options exactly as JSON writes it (``1`` is not ``true`` nor ``1.0``).
        """
        dist, args = self.distribution, self.distr_args
        if dist == "choice":
            written = _canonical(value)
            if written is not None and any(written == _canonical(_thaw(a)) for a in args):
                return None
            return f"{self.name}={_short(value)} is none of its options"
        if dist in ("randint", "log-randint"):
            if not isinstance(value, int) or isinstance(value, bool):
                return f"{self.name}={_short(value)} is not an integer"
            if not args[0] <= value <= args[1]:
                return f"{self.name}={value} is outside [{args[0]}, {args[1]}]"
            return None
        if not _is_number(value) or not _finite(value):
            return f"{self.name}={_short(value)} is not a finite number"
        if dist == "normal":
            return None
        lo, hi = float(args[0]), float(args[1])
        # exp(log(hi)) may come back an ulp above hi; no honest draw is further out.
        slack = 1e-9 * max(abs(lo), abs(hi))
        if not lo - slack <= float(value) <= hi + slack:
            return f"{self.name}={value!r} is outside [{args[0]!r}, {args[1]!r}]"
        return None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of this hyperparameter (``conditions`` only when it has some, so
        an unconditional space keeps the fingerprint it always had)."""
        data = {
            "name": self.name,
            "distribution": self.distribution,
            "distr_args": _thaw(self.distr_args),
        }
        if self.conditions:
            data["conditions"] = [[p, _thaw(v)] for p, v in self.conditions]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hyperparameter:
        """The inverse of :meth:`to_dict`."""
        args = data["distr_args"]
        if data["distribution"] == "choice" and isinstance(args, (list, tuple)):
            # In Hobbit's form, so that a single option that is itself a list stays one.
            args = [tuple(args)]
        conditions = tuple((p, tuple(v)) for p, v in data.get("conditions", ()))
        return cls(data["name"], data["distribution"], args, conditions)


class Space:
    """An ordered, validated list of hyperparameters.

    Raises:
        InputError: when the list is empty, holds something other than a
            ``Hyperparameter``, or repeats a name.
    """

    def __init__(self, hparams: Iterable[Hyperparameter]) -> None:
        if isinstance(hparams, (str, bytes)) or not isinstance(hparams, Iterable):
            raise InputError("hparam_ranges must be a list of phobbit.Hyperparameter")
        self.hparams: tuple[Hyperparameter, ...] = tuple(hparams)
        if not self.hparams:
            raise InputError("the search space is empty; give at least one Hyperparameter")
        seen: set[str] = set()
        for hp in self.hparams:
            if not isinstance(hp, Hyperparameter):
                raise InputError(
                    f"hparam_ranges holds {hp!r}, which is not a phobbit.Hyperparameter"
                )
            if hp.name in seen:
                raise InputError(
                    f"hyperparameter {hp.name!r} is listed twice; names must be unique"
                )
            for parent, _ in hp.conditions:
                if parent not in seen:
                    raise InputError(
                        f"hyperparameter {hp.name!r} is conditional on {parent!r}, which is "
                        "not listed before it; list a parent before its children"
                    )
            seen.add(hp.name)

    def __len__(self) -> int:
        return len(self.hparams)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and self.hparams == other.hparams

    def __hash__(self) -> int:
        return hash(self.hparams)

    def __repr__(self) -> str:
        return f"Space({list(self.hparams)!r})"

    def sample(self, seed: int, iteration: int, s: int, config_id: int) -> dict[str, Any]:
        """The configuration ``(iteration, s, config_id)`` of the run seeded by ``seed``."""
        import numpy as np  # here: sampling is the one use of numpy (see _numpy)

        rng = np.random.default_rng([seed, iteration, s, config_id])
        # Every hyperparameter draws, active or not, so that a condition never shifts the
        # draws of the hyperparameters after it.
        return self.prune({hp.name: hp.sample(rng) for hp in self.hparams})

    @property
    def conditional(self) -> bool:
        """Whether some hyperparameter is conditional (a configuration may lack it)."""
        return any(hp.conditions for hp in self.hparams)

    def prune(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` without the hyperparameters that are inactive given them, in order."""
        kept: dict[str, Any] = {}
        for hp in self.hparams:
            if hp.name in values and hp.active(kept):
                kept[hp.name] = values[hp.name]
        return kept

    def refuses(self, hparams: Any) -> str | None:
        """Why ``hparams`` (a configuration read back from a file) cannot be one of this
        space's, or None when it can: it must hold exactly the space's names, each value
        one ``Hyperparameter.refuses`` allows.

        Example:
            >>> Space([Hyperparameter("x", "uniform", (0, 1))]).refuses({"x": 5.0})
            'x=5.0 is outside [0, 1]'
        """
        if not isinstance(hparams, dict):
            return f"{_short(hparams)} is not a configuration"
        names = [hp.name for hp in self.hparams]
        kept: dict[str, Any] = {}
        for hp in self.hparams:  # an inactive hyperparameter is absent, an active one present
            if hp.active(kept):
                if hp.name in hparams:
                    kept[hp.name] = hparams[hp.name]
            elif hp.name in hparams:
                return f"{hp.name} is given, but its conditions {hp.conditions} do not hold"
        missing = [n for n in names if n not in hparams and self._active_in(n, hparams)]
        if missing:
            return f"it lacks {', '.join(missing)}"
        unknown = sorted(str(k) for k in hparams if k not in names)
        if unknown:
            return f"the space has no {', '.join(unknown)}"
        for hp in self.hparams:
            if hp.name not in hparams:
                continue
            why = hp.refuses(hparams[hp.name])
            if why is not None:
                return why
        return None

    def _active_in(self, name: str, hparams: dict[str, Any]) -> bool:
        hp = next(h for h in self.hparams if h.name == name)
        return hp.active(self.prune(hparams))

    def to_list(self) -> list[dict[str, Any]]:
        """The JSON shape of the space."""
        return [hp.to_dict() for hp in self.hparams]

    @classmethod
    def from_list(cls, data: Sequence[dict[str, Any]]) -> Space:
        """The inverse of :meth:`to_list`."""
        return cls(Hyperparameter.from_dict(d) for d in data)

    def fingerprint(self) -> str:
        """A short hash of the space: two runs with the same fingerprint sample alike."""
        text = json.dumps(self.to_list(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
