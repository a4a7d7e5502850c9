"""Define-by-run hyperparameters with Keras Tuner's names and semantics, mapped onto ``Space``.

A Keras Tuner ``build(hp)`` declares its hyperparameters as it runs:
``hp.Int("units", 32, 512, step=32)`` returns the value of this trial (or the
default while the space is being discovered) and records the range. Here the
ranges become phobbit ``Hyperparameter``s, so the sampling stays a function of
(seed, iteration, s, id) and the TPE sampler models them too:

- ``Int(min, max, step=None|1)``: ``randint``; with ``step`` > 1 or
  ``sampling="log"|"reverse_log"`` and a step, a ``choice`` of Keras Tuner's grid
  (a uniform index, as Keras Tuner draws it); ``sampling="log"`` without a step:
  ``log-randint``.
- ``Float(min, max)``: ``uniform``, ``log-uniform`` or ``reverse-log-uniform``
  after ``sampling``; with ``step``, a ``choice`` of the grid.
- ``Choice(values)``, ``Boolean()``, ``Fixed(value)``: a ``choice``.
- ``parent_name``/``parent_values`` and ``conditional_scope``: the hyperparameter's
  ``conditions``; a configuration holds it only while they hold.

``discover`` finds the whole space of a build function by running it: with the
defaults first, then once more for every value of every Choice, Boolean and small
Int it met (the two ends of a large Int), and so on for what those runs reveal, so
that ``for i in range(hp.Int("layers", 1, 3)): hp.Int(f"units_{i}", ...)`` yields
``units_0`` to ``units_2``. Pure: it calls the function it is given, nothing else.

Example:
    >>> hp = HyperParameters()
    >>> hp.Int("units", 32, 128, step=32)
    32
    >>> hp.to_space().hparams[0].distribution
    'choice'
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from phobbit.core.space import Hyperparameter, Space
from phobbit.errors import InputError

SAMPLINGS = ("linear", "log", "reverse_log")
MAX_BUILDS = 200
"""How many times ``discover`` runs a build function at most."""
SMALL_INT = 8
"""An Int with at most this many values is explored at each; a larger one at its ends."""


@dataclass(frozen=True)
class Spec:
    """One hyperparameter as ``build(hp)`` declared it: Keras Tuner's class name, its
    arguments (plain JSON data), and the conditions of the scopes it was declared in."""

    kind: str  # "Int", "Float", "Choice", "Boolean" or "Fixed"
    name: str
    config: dict = field(hash=False)
    conditions: tuple = ()

    @property
    def default(self) -> Any:
        """The value a build gets while the hyperparameter is not drawn (Keras Tuner's)."""
        c = self.config
        if self.kind == "Fixed":
            return c["value"]
        if self.kind == "Boolean":
            return bool(c.get("default", False))
        if self.kind == "Choice":
            return c["values"][0] if c.get("default") is None else c["default"]
        return c["min_value"] if c.get("default") is None else c["default"]

    def grid(self) -> list[Any] | None:
        """The values a stepped Int or Float takes (Keras Tuner's), or None when continuous."""
        c, kind = self.config, self.kind
        step, sampling = c.get("step"), c.get("sampling", "linear")
        if kind == "Int" and step is None and sampling == "linear":
            step = 1
        if kind not in ("Int", "Float") or step is None:
            return None
        lo, hi = c["min_value"], c["max_value"]
        if sampling == "linear":
            # Not Keras Tuner's (hi - lo) // step: (0.3 - 0.0) // 0.1 is 2.0 and drops 0.3.
            count = int(math.floor((hi - lo) / step + 1e-9)) + 1
            values = [lo + i * step for i in range(count)]
        else:
            count = int(math.log(hi / lo, step) + 1e-8) + 1
            powers = [lo * math.pow(step, i) for i in range(count)]
            values = powers if sampling == "log" else [hi + lo - p for p in powers]
        return [int(v) for v in values] if kind == "Int" else [float(v) for v in values]

    def hyperparameter(self) -> Hyperparameter:
        """This hyperparameter as phobbit samples it (see the module's docstring)."""
        c, kind, name = self.config, self.kind, self.name
        conditions = tuple((p, tuple(v)) for p, v in self.conditions)
        if kind in ("Choice", "Boolean", "Fixed"):
            options = {"Choice": c.get("values"), "Boolean": [False, True]}.get(kind)
            return Hyperparameter(name, "choice", [tuple(options or [c.get("value")])], conditions)
        grid = self.grid()
        lo, hi = c["min_value"], c["max_value"]
        if grid is not None and not (kind == "Int" and grid == list(range(lo, hi + 1))):
            return Hyperparameter(name, "choice", [tuple(grid)], conditions)
        if lo == hi:
            return Hyperparameter(name, "choice", [(lo,)], conditions)
        sampling = c.get("sampling", "linear")
        if kind == "Int":
            dist = {"linear": "randint", "log": "log-randint"}.get(sampling)
            if dist is None:
                raise InputError(
                    f"hp.Int({name!r}, sampling='reverse_log') without a step is not "
                    "supported; give step= (a grid) or use sampling='log'"
                )
        else:
            dist = {"linear": "uniform", "log": "log-uniform"}.get(sampling, "reverse-log-uniform")
        return Hyperparameter(name, dist, (lo, hi), conditions)

    def branches(self) -> list[Any]:
        """The values ``discover`` runs the build with: those that may change its code path."""
        if self.kind == "Boolean":
            return [False, True]
        if self.kind == "Choice":
            return list(self.config["values"])
        if self.kind == "Int":
            grid = self.grid()
            if grid is not None and len(grid) <= SMALL_INT:
                return grid
            return [self.config["min_value"], self.config["max_value"]]
        return []

    def summary(self) -> str:
        """Keras Tuner's line for ``search_space_summary``."""
        shown = {k: v for k, v in self.config.items() if k != "name"}
        if self.conditions:
            shown["conditions"] = [{"parent": p, "values": list(v)} for p, v in self.conditions]
        return f"{self.name} ({self.kind})\n{shown}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data, to cross a process boundary."""
        return {
            "kind": self.kind,
            "name": self.name,
            "config": self.config,
            "conditions": [[p, list(v)] for p, v in self.conditions],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spec:
        """The inverse of :meth:`to_dict`."""
        conditions = tuple((p, tuple(v)) for p, v in data["conditions"])
        return cls(data["kind"], data["name"], dict(data["config"]), conditions)


def _number(kind: str, name: str, arg: str, value: Any) -> Any:
    """A bound or step as the number Keras Tuner keeps (an int for Int), or a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"hp.{kind}({name!r}): {arg} must be a finite number, got {value!r}")
    if kind == "Int":
        if not float(value).is_integer():
            raise InputError(f"hp.Int({name!r}): {arg} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _numeric(kind: str, name: str, lo: Any, hi: Any, step: Any, sampling: Any) -> dict:
    lo, hi = _number(kind, name, "min_value", lo), _number(kind, name, "max_value", hi)
    step = None if step is None else _number(kind, name, "step", step)
    sampling = "linear" if sampling is None else str(sampling).lower()
    if sampling not in SAMPLINGS:
        raise InputError(
            f"hp.{kind}({name!r}): sampling must be one of {', '.join(SAMPLINGS)}, "
            f"got {sampling!r}"
        )
    if lo > hi:
        raise InputError(f"hp.{kind}({name!r}): min_value {lo} is greater than max_value {hi}")
    if sampling != "linear" and lo <= 0:
        raise InputError(
            f"hp.{kind}({name!r}): sampling={sampling!r} needs min_value > 0, got {lo}"
        )
    if step is not None and (step <= 0 or (sampling != "linear" and step <= 1)):
        need = "> 1" if sampling != "linear" else "> 0"
        raise InputError(f"hp.{kind}({name!r}): step must be {need}, got {step}")
    return {"min_value": lo, "max_value": hi, "step": step, "sampling": sampling}


class HyperParameters:
    """The ``hp`` a ``build(hp)`` receives: Keras Tuner's define-by-run hyperparameters.

    Each method returns this trial's value of the hyperparameter (its default
    while the space is discovered, None when its conditions do not hold) and
    records its range.

    Args:
        values: this trial's configuration (a dict from the run), or None.

    Attributes:
        values: the active values so far: the configuration, plus the default of
            each hyperparameter declared that it lacks.
    """

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.values: dict[str, Any] = dict(values or {})
        self._specs: dict[str, Spec] = {}
        self._conditions: list[tuple[str, tuple]] = []
        self._scopes: list[str] = []

    # -- declaring -------------------------------------------------------------------------

    def Int(  # noqa: N802 - Keras Tuner's name
        self,
        name: str,
        min_value: int,
        max_value: int,
        step: int | None = None,
        sampling: str = "linear",
        default: int | None = None,
        parent_name: str | None = None,
        parent_values: Any = None,
    ) -> Any:
        """An integer in [min_value, max_value] (on the grid of ``step``)."""
        config = _numeric("Int", name, min_value, max_value, step, sampling)
        if default is not None:
            config["default"] = _number("Int", name, "default", default)
        return self._declare("Int", name, config, parent_name, parent_values)

    def Float(  # noqa: N802 - Keras Tuner's name
        self,
        name: str,
        min_value: float,
        max_value: float,
        step: float | None = None,
        sampling: str = "linear",
        default: float | None = None,
        parent_name: str | None = None,
        parent_values: Any = None,
    ) -> Any:
        """A float in [min_value, max_value], ``sampling`` linear, log or reverse_log."""
        config = _numeric("Float", name, min_value, max_value, step, sampling)
        if default is not None:
            config["default"] = _number("Float", name, "default", default)
        return self._declare("Float", name, config, parent_name, parent_values)

    def Choice(  # noqa: N802 - Keras Tuner's name
        self,
        name: str,
        values: Sequence[Any],
        ordered: bool | None = None,
        default: Any = None,
        parent_name: str | None = None,
        parent_values: Any = None,
    ) -> Any:
        """One of ``values`` (ints, floats, strings or booleans, of one type)."""
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise InputError(f"hp.Choice({name!r}): values must be a non-empty list")
        kinds = {type(v) for v in values}
        if len(kinds) > 1 or not kinds <= {int, float, str, bool}:
            raise InputError(
                f"hp.Choice({name!r}): values must be ints, floats, strings or booleans "
                f"of one type, got {list(values)!r}"
            )
        if default is not None and default not in values:
            raise InputError(f"hp.Choice({name!r}): default {default!r} is none of the values")
        numeric = isinstance(values[0], (int, float)) and not isinstance(values[0], bool)
        if ordered and not numeric:
            raise InputError(f"hp.Choice({name!r}): ordered=True needs numeric values")
        config = {
            "values": list(values),
            "ordered": numeric if ordered is None else bool(ordered),
            "default": default,
        }
        return self._declare("Choice", name, config, parent_name, parent_values)

    def Boolean(  # noqa: N802 - Keras Tuner's name
        self,
        name: str,
        default: bool = False,
        parent_name: str | None = None,
        parent_values: Any = None,
    ) -> Any:
        """True or False."""
        if not isinstance(default, bool):
            raise InputError(f"hp.Boolean({name!r}): default must be True or False")
        return self._declare("Boolean", name, {"default": default}, parent_name, parent_values)

    def Fixed(  # noqa: N802 - Keras Tuner's name
        self, name: str, value: Any, parent_name: str | None = None, parent_values: Any = None
    ) -> Any:
        """Always ``value`` (an int, float, string or boolean)."""
        if not isinstance(value, (int, float, str, bool)):
            raise InputError(f"hp.Fixed({name!r}): value must be an int, float, str or bool")
        return self._declare("Fixed", name, {"value": value}, parent_name, parent_values)

    @contextlib.contextmanager
    def conditional_scope(self, parent_name: str, parent_values: Any) -> Iterator[None]:
        """Hyperparameters declared inside are active only while ``parent_name`` holds one
        of ``parent_values`` (Keras Tuner's ``conditional_scope``)."""
        parent = self._scoped(parent_name)
        if parent not in self._specs:
            raise InputError(
                f"conditional_scope({parent_name!r}): no hyperparameter {parent!r} is "
                "declared before it; declare the parent first"
            )
        if isinstance(parent_values, (list, tuple)):
            options = tuple(parent_values)
        else:
            options = (parent_values,)
        self._conditions.append((parent, options))
        try:
            yield
        finally:
            self._conditions.pop()

    @contextlib.contextmanager
    def name_scope(self, name: str) -> Iterator[None]:
        """Names declared inside are prefixed ``name/`` (Keras Tuner's ``name_scope``)."""
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def _scoped(self, name: str) -> str:
        return "/".join([*self._scopes, name])

    def _declare(
        self, kind: str, name: str, config: dict, parent_name: Any, parent_values: Any
    ) -> Any:
        if not isinstance(name, str) or not name:
            raise InputError(f"a hyperparameter's name must be a non-empty string, got {name!r}")
        with contextlib.ExitStack() as stack:
            if parent_name is not None:
                stack.enter_context(self.conditional_scope(parent_name, parent_values))
            spec = Spec(kind, self._scoped(name), config, tuple(self._conditions))
            known = self._specs.get(spec.name)
            if known is None:
                spec.hyperparameter()  # refuses what phobbit cannot sample, at once
                self._specs[spec.name] = spec
            elif known.to_dict() != spec.to_dict():
                raise InputError(
                    f"hyperparameter {spec.name!r} is declared twice, differently "
                    f"({known.kind} {known.config} and {spec.kind} {spec.config}); give "
                    "each range its own name"
                )
            if not self._active(spec):
                return None  # as Keras Tuner: an inactive value is not to be relied on
            return self.values.setdefault(spec.name, spec.default)

    def _active(self, spec: Spec) -> bool:
        return all(
            parent in self.values and self.values[parent] in options
            for parent, options in spec.conditions
        )

    # -- reading ---------------------------------------------------------------------------

    def get(self, name: str) -> Any:
        """The value of ``name``.

        Raises:
            ValueError: when it is declared but inactive.
            KeyError: when no hyperparameter has that name.
        """
        name = self._scoped(name)
        if name in self.values:
            return self.values[name]
        if name in self._specs:
            raise ValueError(f"hyperparameter {name!r} is inactive in this trial")
        raise KeyError(f"no hyperparameter {name!r}")

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __contains__(self, name: str) -> bool:
        return self._scoped(name) in self.values

    @property
    def specs(self) -> list[Spec]:
        """The hyperparameters declared so far, in order."""
        return list(self._specs.values())

    @property
    def space(self) -> list[Hyperparameter]:
        """The hyperparameters declared so far, as phobbit samples them."""
        return [spec.hyperparameter() for spec in self._specs.values()]

    def to_space(self) -> Space:
        """The phobbit ``Space`` of what was declared (parents before their children).

        Raises:
            InputError: when nothing was declared.
        """
        if not self._specs:
            raise InputError("build(hp) declared no hyperparameter; there is nothing to tune")
        return Space(self.space)

    def summary(self) -> str:
        """Keras Tuner's ``search_space_summary`` text."""
        lines = ["Search space summary", f"Default search space size: {len(self._specs)}"]
        return "\n".join(lines + [spec.summary() for spec in self._specs.values()])

    @classmethod
    def from_specs(cls, specs: Sequence[Spec], values: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
        """Hyperparameters with ``specs`` declared and ``values`` (a configuration) set."""
        hp = cls(values)
        for spec in specs:
            hp._specs[spec.name] = spec
        return hp

    def __repr__(self) -> str:
        return f"HyperParameters(values={self.values!r})"


def _key(assignment: dict[str, Any]) -> str:
    return json.dumps(assignment, sort_keys=True)


def discover(
    build: Callable[[HyperParameters], Any], limit: int = MAX_BUILDS
) -> tuple[list[Spec], bool]:
    """The hyperparameters ``build`` declares over the code paths its values take.

    Runs ``build`` with the defaults, then with each branch value (``Spec.branches``)
    of each hyperparameter that run declared, and each run's newly declared ones in
    turn, breadth first.

    Returns:
        The specs in the order first declared (parents before their children), and
        whether every path was run (False when ``limit`` builds did not suffice).
    """
    found: dict[str, Spec] = {}
    queue: list[tuple[dict[str, Any], set[str]]] = [({}, set())]
    tried: set[str] = set()
    builds = 0
    while queue:
        assignment, seen_before = queue.pop(0)
        if _key(assignment) in tried:
            continue
        if builds >= limit:
            return list(found.values()), False
        tried.add(_key(assignment))
        builds += 1
        hp = HyperParameters(assignment)
        build(hp)
        declared = hp.specs
        for spec in declared:
            known = found.setdefault(spec.name, spec)
            if known.to_dict() != spec.to_dict():
                raise InputError(
                    f"hyperparameter {spec.name!r} is declared differently on different "
                    "code paths; give each range its own name"
                )
        for spec in declared:
            if spec.name in seen_before or spec.name not in hp.values:
                continue
            for value in spec.branches():
                if value != hp.values[spec.name]:
                    queue.append(({**assignment, spec.name: value}, {s.name for s in declared}))
    return list(found.values()), True
