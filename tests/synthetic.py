"""Trainables and curves for tests, importable by worker processes (by reference)."""

from __future__ import annotations

import math
from typing import Any


def x_curve(hparams: dict[str, Any], epoch: int) -> float:
    """Loss falls with epochs; a configuration's floor is its distance from x = 0.3."""
    return abs(hparams["x"] - 0.3) + 1.0 / epoch


def failing_curve(hparams: dict[str, Any], epoch: int) -> float:
    """Raises for x > 0.7, diverges to NaN for x < 0.2: trials that fail but not the run."""
    if hparams["x"] > 0.7:
        raise ValueError(f"user code broke on x={hparams['x']:.3f}")
    if hparams["x"] < 0.2:
        return math.nan
    return x_curve(hparams, epoch)


def overfitting_curve(hparams: dict[str, Any], epoch: int) -> float:
    """Loss falls, then rises again once the configuration overfits: the sooner, the larger x.

    Its best epoch is often not its last, as with real models.
    """
    return x_curve(hparams, epoch) + 0.1 * hparams["x"] * epoch
