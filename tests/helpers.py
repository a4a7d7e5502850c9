"""Trainables, curves and a driver for the robustness tests.

Everything here is at module level so that loky pickles it by reference and
worker processes import it (``tests/`` is on their ``sys.path``); ``python
helpers.py`` runs a driver in a subprocess that tests kill.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from gates import GatedTrainable
from synthetic import x_curve  # the curve shared with the core tests; workers import it too

from phobbit import Hyperparameter, ParallelHyperband
from phobbit.trainable import SyntheticTrainable

STEPS = 10
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def space() -> list[Hyperparameter]:
    """The search space of these tests."""
    return [
        Hyperparameter("x", "uniform", (0.0, 1.0)),
        Hyperparameter("act", "choice", [("relu", "tanh")]),
    ]


def bad_curve(hparams: dict[str, Any], epoch: int) -> float:
    """Raises for x > 0.8, NaN for x < 0.1, infinite for 0.1 <= x < 0.2: failing user code."""
    if hparams["x"] > 0.8:
        raise ValueError(f"user code broke on x={hparams['x']:.3f}")
    if hparams["x"] < 0.1:
        return math.nan
    if hparams["x"] < 0.2:
        return math.inf
    return x_curve(hparams, epoch)


def exiting_curve(hparams: dict[str, Any], epoch: int) -> float:
    """Calls ``sys.exit`` for x > 0.6: user code that exits must fail its trial only."""
    if hparams["x"] > 0.6:
        sys.exit(3)
    return x_curve(hparams, epoch)


def mislabelled_dataset() -> tuple:
    """A dataset function whose result has fewer training labels than inputs."""
    return ([[0.0]] * 4, [0] * 3), ([[0.0]], [0])


def no_model(hparams: dict[str, Any]) -> None:
    """A model function that is never reached in the tests that use it."""
    raise AssertionError("the model function ran although the dataset is bad")


@dataclass(frozen=True)
class DyingTrainable(SyntheticTrainable):
    """A synthetic trainable whose worker process dies while it trains one configuration.

    Args:
        victim: the checkpoint stem (``iteration-run-id``) whose worker dies.
        how: ``exit`` (``os._exit(1)``), ``sigkill`` (what the out-of-memory killer
            sends), ``raise`` (an exception in user code: the trial fails, the worker lives)
            or ``disk-full`` (saving its checkpoint finds no space left).
        deaths: how many times it dies; then it trains normally.
        tally_dir: a folder where each death leaves a file, to count them across processes.
        after_epochs: epochs of the segment it trains (and checkpoints) before it dies.
        victim_rung_epochs: die only in the segment that ends at this epoch (0: any).
    """

    victim: str = ""
    how: str = "exit"
    deaths: int = 1_000_000
    tally_dir: str = ""
    after_epochs: int = 0
    victim_rung_epochs: int = 0

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> list[float]:
        tally = Path(self.tally_dir)
        if (
            Path(checkpoint).name == self.victim
            and self.victim_rung_epochs in (0, epochs)
            and len(list(tally.iterdir())) < self.deaths
        ):
            stop = min(initial_epoch + self.after_epochs, epochs - 1)
            if stop > initial_epoch:
                super().train(hparams, checkpoint, initial_epoch, stop)
            (tally / f"death-{len(list(tally.iterdir()))}-{os.getpid()}").touch()
            if self.how == "raise":
                raise RuntimeError(f"{self.victim} fails")
            if self.how == "disk-full":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), checkpoint)
            if self.how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(1)
        return super().train(hparams, checkpoint, initial_epoch, epochs)


def tuner(repo: Path | str, records: Path | str | None = None, **kwargs: Any) -> ParallelHyperband:
    """A ParallelHyperband over ``space()`` with a synthetic trainable.

    ``gate_dir`` and ``hold_after`` hold segments at a gate (``gates.GatedTrainable``).
    """
    trainable_kwargs = {
        k: kwargs.pop(k) for k in ("curve", "epoch_seconds", "jitter") if k in kwargs
    }
    gate = {k: kwargs.pop(k) for k in ("gate_dir", "hold_after") if k in kwargs}
    trainable = kwargs.pop("trainable", None) or (GatedTrainable if gate else SyntheticTrainable)(
        curve=trainable_kwargs.get("curve", x_curve),
        epoch_seconds=trainable_kwargs.get("epoch_seconds", 0.0),
        jitter=trainable_kwargs.get("jitter", 0.0),
        steps_per_epoch=STEPS,
        record_dir=None if records is None else str(records),
        **gate,
    )
    kwargs.setdefault("verbose", 0)
    return ParallelHyperband(None, space(), repo, trainable=trainable, **kwargs)


def subprocess_env() -> dict[str, str]:
    """The environment of a driver subprocess: this worktree's package and these helpers."""
    env = dict(os.environ)
    paths = [str(TESTS), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def driver_command(repo: Path, records: Path, settings: dict[str, Any]) -> list[str]:
    """The command line of a driver subprocess running ``settings``."""
    return [
        sys.executable,
        str(TESTS / "helpers.py"),
        str(repo),
        str(records),
        json.dumps(settings),
    ]


def kill_tree(pids: list[int]) -> None:
    """Kills what is left of these processes (a test's cleanup of orphaned workers)."""
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def main(argv: list[str]) -> None:
    """``python helpers.py REPO RECORDS SETTINGS_JSON``: one driver, as a user would run it."""
    repo, records, settings = argv[0], argv[1], json.loads(argv[2])
    run = {k: settings.pop(k) for k in ("R", "eta")}
    tuner(repo, records, **settings).run(**run)


if __name__ == "__main__":
    main(sys.argv[1:])
