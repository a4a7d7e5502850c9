"""The objective: which logged metric ranks configurations, and in which direction. Pure.

``Objective("val_loss", "min")`` is the default and Hobbit's: the lowest
validation loss wins. Any metric a trainable logs per epoch can be the
objective (``"val_accuracy"``, ``"val_auc"``, ...); its direction is inferred
from its name as Keras Tuner infers it (accuracies, AUCs, precisions, recalls
... are maximised; losses and errors minimised) or given.

Every ranking goes through :meth:`Objective.score`, a value where lower is
better (the metric itself, or its negation when maximised), so the reducer, the
best-epoch files and the tables rank with one rule: ties go to the latest
epoch, and then to the lowest ID.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from phobbit.errors import InputError

DIRECTIONS = ("min", "max")

# Keras Tuner's rule (keras_tuner.engine.metrics_tracking.infer_metric_direction, read
# for the facts): these metric names are maximised, losses and errors minimised.
_MAXIMISED = (
    "acc",
    "accuracy",
    "auc",
    "precision",
    "recall",
    "f1",
    "fbeta",
    "f1_score",
    "fbeta_score",
    "r2",
    "r2_score",
    "iou",
    "mean_iou",
    "one_hot_iou",
    "binary_iou",
    "true_positives",
    "true_negatives",
    "precision_at_recall",
    "recall_at_precision",
    "sensitivity_at_specificity",
    "specificity_at_sensitivity",
    "top_k_categorical_accuracy",
    "sparse_top_k_categorical_accuracy",
    "categorical_accuracy",
    "sparse_categorical_accuracy",
    "binary_accuracy",
    "cosine_similarity",
)
_MINIMISED_HINTS = ("loss", "error", "crossentropy", "hinge", "divergence", "false_")


def infer_direction(name: str) -> str | None:
    """``"max"`` or ``"min"`` for a metric name as Keras Tuner would infer it; None if unknown.

    A ``val_`` prefix and a numeric suffix Keras adds to repeated metrics
    (``auc_1``) are ignored.
    """
    base = re.sub(r"_\d+$", "", name[4:] if name.startswith("val_") else name).lower()
    if base in _MAXIMISED or base.endswith(("accuracy", "_acc", "_auc")):
        return "max"
    if base in ("mse", "mae", "mape", "msle", "logcosh") or any(
        hint in base for hint in _MINIMISED_HINTS
    ):
        return "min"
    return None


@dataclass(frozen=True)
class Objective:
    """A metric name and whether it is minimised (``"min"``) or maximised (``"max"``).

    Raises:
        InputError: for an empty name, a direction other than min or max, or a
            loss (``loss``, ``val_loss``) to maximise.

    Example:
        >>> Objective.of("val_accuracy")
        Objective(name='val_accuracy', direction='max')
        >>> Objective.of("val_accuracy").score(0.9)
        -0.9
    """

    name: str = "val_loss"
    direction: str = "min"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(
                f"objective must be a metric name such as 'val_loss', got {self.name!r}"
            )
        if self.direction not in DIRECTIONS:
            raise InputError(
                f"direction of objective {self.name!r} must be 'min' or 'max', got "
                f"{self.direction!r}"
            )
        if self.name in ("val_loss", "loss") and self.direction == "max":
            raise InputError(
                f"objective {self.name!r} is the loss Keras minimises: give direction 'min' "
                "or leave it out"
            )

    @classmethod
    def of(cls, objective: Any = "val_loss", direction: str | None = None) -> Objective:
        """The objective of the ``objective=`` and ``direction=`` arguments.

        Args:
            objective: a metric name, an ``Objective``, a ``(name, direction)``
                pair, or anything with ``name`` and ``direction`` attributes (a
                ``keras_tuner.Objective``).
            direction: ``"min"`` or ``"max"``; None infers it from the name.

        Raises:
            InputError: naming the objective when its direction is given twice
                differently, or cannot be inferred and is not given.
        """
        given = None
        if isinstance(objective, Objective):
            objective, given = objective.name, objective.direction
        elif isinstance(objective, (tuple, list)) and len(objective) == 2:
            objective, given = objective
        elif not isinstance(objective, str) and hasattr(objective, "name"):
            objective, given = objective.name, getattr(objective, "direction", None)
        if not isinstance(objective, str):
            raise InputError(
                f"objective must be a metric name such as 'val_accuracy', got {objective!r}"
            )
        if given is not None and direction is not None and given != direction:
            raise InputError(
                f"objective {objective!r} is given direction {given!r} and direction "
                f"{direction!r}; give one"
            )
        chosen = direction or given or infer_direction(objective)
        if chosen is None:
            raise InputError(
                f"cannot tell whether objective {objective!r} is minimised or maximised; "
                "give direction='min' or direction='max'"
            )
        return cls(objective, chosen)

    @property
    def maximize(self) -> bool:
        return self.direction == "max"

    @property
    def is_val_loss(self) -> bool:
        """Whether this is Hobbit's objective, the lowest val loss."""
        return self.name == "val_loss" and self.direction == "min"

    @property
    def label(self) -> str:
        """The objective as a table column: ``Val Accuracy`` for ``val_accuracy``."""
        return " ".join(part.capitalize() for part in self.name.split("_"))

    def score(self, value: float | None) -> float | None:
        """``value`` as a rank where lower is better; None (and NaN) stay None."""
        if value is None or math.isnan(value):
            return None
        return -float(value) if self.maximize else float(value)

    def value(self, logs: Mapping[str, Any]) -> float:
        """This objective's value in one epoch's logs; NaN when the logs lack it."""
        found = logs.get(self.name)
        return math.nan if found is None else float(found)

    def row_score(self, row: Any) -> float | None:
        """The rank of a results row (lower is better); None when it failed or has no value.

        Rows written before objectives existed carry no ``objective``; their
        objective was the val loss.
        """
        if not getattr(row, "ok", True):
            return None
        value = getattr(row, "objective", None)
        if value is None and self.name == "val_loss":
            value = row.val_loss
        return self.score(value)

    def improves(self, row: Any, best: Any) -> bool:
        """Whether results row ``row`` ranks strictly better than row ``best`` (or None)."""
        score = self.row_score(row)
        if score is None:
            return False
        held = None if best is None else self.row_score(best)
        return held is None or score < held

    def best_of(self, rows: Iterable[Any], best: Any = None) -> Any:
        """The best of results rows ``rows`` (the first of equals), or ``best`` when none
        improves on it; failed rows never count (``improves``)."""
        for row in rows:
            if self.improves(row, best):
                best = row
        return best

    def describe(self, row: Any) -> str:
        """A row's score in words: ``val loss 0.2345``, or ``val_accuracy 0.9312 (val loss
        0.2345)`` with another objective."""
        if self.is_val_loss or row.objective is None:
            return f"val loss {row.val_loss:.4g}"
        return f"{self.name} {row.objective:.4g} (val loss {row.val_loss:.4g})"

    def best_epoch(self, history: Sequence[Mapping[str, Any]]) -> int | None:
        """The epoch (from 1) that scores best in ``history``, the latest of equals, or None."""
        best, best_score = None, math.inf
        for epoch, logs in enumerate(history, start=1):
            score = self.score(self.value(logs))
            if score is not None and math.isfinite(score) and score <= best_score:
                best, best_score = epoch, score
        return best

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "direction": self.direction}


VAL_LOSS = Objective()
"""Hobbit's objective: the lowest validation loss."""


def unknown_metric(objective: Objective, logged: Sequence[str]) -> str:
    """The error of an objective no epoch logs: it names the metric and those logged."""
    names = ", ".join(sorted(logged)) or "none"
    return (
        f"objective {objective.name!r} is not a metric this model logs (it logs {names}; "
        "known only once the first epoch has trained); compile the model with that metric "
        "or choose one of these"
    )
