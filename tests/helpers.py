"""Trainables, curves and a driver for the robustness tests.

Everything here is at module level so that loky pickles it by reference and
worker processes import it (``tests/`` is on their ``sys.path``); ``python
helpers.py`` runs a driver in a subprocess that tests kill.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import psutil
from gates import GatedTrainable
from synthetic import x_curve  # the curve shared with the core tests; workers import it too

from phobbit import Hyperparameter, ParallelHyperband
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.storage import fence
from phobbit.testing import SyntheticTrainable

STEPS = 10
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def space() -> list[Hyperparameter]:
    """The search space of these tests."""
    return [
        Hyperparameter("x", "uniform", (0.0, 1.0)),
        Hyperparameter("act", "choice", [("relu", "tanh")]),
    ]


def report_serially(plan: Any, reporters: list[Any], result_of: Any) -> None:
    """Runs ``plan`` one segment at a time through ``reporters``: started, every segment
    dispatched and finished with ``result_of(segment)`` (recorded in the plan), closed."""
    for reporter in reporters:
        reporter.started(plan, resumed=0)
    while (segment := plan.next_segment()) is not None:
        result = result_of(segment)
        plan.record(result)
        for reporter in reporters:
            reporter.dispatched(segment)
            reporter.finished(result)
    for reporter in reporters:
        reporter.closed()


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


class UserStop(BaseException):
    """A BaseException of user code that is neither an Exception nor KeyboardInterrupt."""


def interrupting_curve(hparams: dict[str, Any], epoch: int) -> float:
    """Raises KeyboardInterrupt for x > 0.7 and another BaseException for x < 0.2."""
    if hparams["x"] > 0.7:
        raise KeyboardInterrupt(f"user code stopped on x={hparams['x']:.3f}")
    if hparams["x"] < 0.2:
        raise UserStop("a BaseException of its own")
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


@dataclass(frozen=True)
class ShoutingTrainable(SyntheticTrainable):
    """A synthetic trainable whose worker writes each segment it trains to its stderr
    (``trained <checkpoint name> <initial epoch>-><epochs>``), as a user's print does:
    what ``workers.log`` must keep."""

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> list[float]:
        losses = super().train(hparams, checkpoint, initial_epoch, epochs)
        print(f"trained {Path(checkpoint).name} {initial_epoch}->{epochs}", file=sys.stderr)
        return losses


@dataclass(frozen=True)
class PausingTrainable(SyntheticTrainable):
    """A synthetic trainable that pauses once, mid-segment, until a test lets it go on.

    The victim's first segment trains and checkpoints ``after_epochs`` epochs and
    trains one more in memory; then it leaves ``paused-<pid>`` in ``barrier_dir``
    and waits until ``go`` exists there. Then it saves that epoch over whatever
    the checkpoint holds by then, as a process stopped in the middle of an epoch
    does, and trains the rest of its segment. Later calls do not pause.

    With ``hold_gil``, it waits without ever releasing the GIL, so a test that
    stops it with SIGSTOP and continues it later knows that this thread runs on
    before any other of its process (a parent watchdog, say) can: the race a
    stale worker would otherwise win by chance, it then always gets to run.
    """

    victim: str = ""
    barrier_dir: str = ""
    after_epochs: int = 1
    hold_gil: bool = False

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> list[float]:
        barrier = Path(self.barrier_dir)
        if Path(checkpoint).name != self.victim or list(barrier.glob("paused-*")):
            return super().train(hparams, checkpoint, initial_epoch, epochs)
        stop = min(initial_epoch + self.after_epochs, epochs - 1)
        super().train(hparams, checkpoint, initial_epoch, stop)
        path = Path(checkpoint + ".json")
        held = json.loads(path.read_text())
        state = {"epoch": stop + 1, "iterations": held["iterations"] + self.steps_per_epoch}
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps(state))
        marker, go = barrier / f"paused-{os.getpid()}", barrier / "go"
        if self.hold_gil:
            with _holding_the_gil(), mock.patch("os.replace", _rename):
                _creat(marker)
                while not _exists(go):
                    pass
                fence.commit(temp, path)  # what lets the GIL go first is the fence's lock
        else:
            marker.touch()
            while not go.exists():
                time.sleep(0.01)
            fence.commit(temp, path)
        return super().train(hparams, checkpoint, initial_epoch, epochs)


_LIBC = ctypes.PyDLL(None, use_errno=True)  # its calls keep the GIL, unlike os.stat or open


def _creat(path: Path) -> None:
    _LIBC.close(_LIBC.creat(os.fsencode(path), 0o644))


def _exists(path: Path) -> bool:
    return _LIBC.access(os.fsencode(path), os.F_OK) == 0


def _rename(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``os.replace`` that keeps the GIL: no other thread can end the process mid-way."""
    if _LIBC.rename(os.fsencode(source), os.fsencode(target)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(source))


@contextlib.contextmanager
def _holding_the_gil() -> Iterator[None]:
    """No other thread of this process runs until the block releases the GIL by itself.

    A long switch interval keeps the others from asking for it; the block must only
    call what keeps it (``_creat``, ``_exists``) until the call it means to go first.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@dataclass(frozen=True)
class HangingTrainable(SyntheticTrainable):
    """A synthetic trainable that hangs for ever (``time.sleep(1e6)``) on one configuration.

    Each hang leaves a file in ``tally_dir``, to count attempts across processes.
    """

    victim: str = ""
    tally_dir: str = ""

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> list[float]:
        if Path(checkpoint).name == self.victim:
            tally = Path(self.tally_dir)
            (tally / f"hang-{len(list(tally.iterdir()))}-{os.getpid()}").touch()
            time.sleep(1e6)
        return super().train(hparams, checkpoint, initial_epoch, epochs)


def paused_pid(barrier: Path, timeout: float = 120.0) -> int:
    """The pid of the worker that a PausingTrainable paused, once it has paused."""
    deadline = time.monotonic() + timeout
    while not (found := list(barrier.glob("paused-*"))):
        assert time.monotonic() < deadline, "the victim never paused"
        time.sleep(0.02)
    return int(found[0].name.split("-")[1])


def tuner(
    repo: Path | str, records: Path | str | None = None, real: bool = False, **kwargs: Any
) -> ParallelHyperband:
    """A ParallelHyperband over ``space()`` with a synthetic trainable.

    What it decides (promotions, tables, budgets, refusals) does not depend on where
    segments train, so by default they train on a ``SimulatedExecutor`` in this process,
    with ``n_jobs`` (default 1) virtual workers. ``real`` trains them in a process pool
    instead, as a user's run does: for what only processes show (pinning, crashes,
    kills, concurrent drivers, resuming across processes). ``gate_dir`` and
    ``hold_after`` hold segments at a gate (``gates.GatedTrainable``).
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
    if not real and "executor" not in kwargs:
        if "gpus" in kwargs:
            raise TypeError("gpus pin worker processes: pass real=True")
        kwargs["executor"] = SimulatedExecutor(kwargs.pop("n_jobs", None) or 1)
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
    """``python helpers.py REPO RECORDS SETTINGS_JSON``: one driver, as a user would run it.

    ``SETTINGS_JSON`` holds ``tuner``'s keyword arguments, R and eta, and optionally
    ``pause``: the keyword arguments of a ``PausingTrainable`` to train with, or ``shout``
    (true): train with a ``ShoutingTrainable``.
    """
    repo, records, settings = argv[0], argv[1], json.loads(argv[2])
    run = {k: settings.pop(k) for k in ("R", "eta")}
    pause = settings.pop("pause", None)
    if settings.pop("shout", False):
        from helpers import ShoutingTrainable

        settings["trainable"] = ShoutingTrainable(
            curve=x_curve, epoch_seconds=settings.pop("epoch_seconds", 0.0), steps_per_epoch=STEPS
        )
    if pause is not None:
        # Imported by name: a class of __main__ would be pickled by value, not by reference.
        from helpers import PausingTrainable

        settings["trainable"] = PausingTrainable(
            curve=x_curve,
            epoch_seconds=settings.pop("epoch_seconds", 0.0),
            steps_per_epoch=STEPS,
            **pause,
        )
    tuner(repo, records, real=True, **settings).run(**run)


def forge_rows(repo: Path) -> tuple[int, int]:
    """Appends CRC-valid rows that no schedule of the run in ``repo`` (R=9, eta=3, one
    iteration, ``space()``) can have written, each scoring better than any honest one: a
    rung past its bracket's last, a negative id, 10**12 epochs, hparams outside the
    space; and epochs numbered 10**30 and past the rung's last. Returns how many results
    and epochs rows it appended."""
    from phobbit.storage.repository import Repository, encode_epoch, encode_row

    repository = Repository(repo)
    first = next(iter(repository.iter_results()))
    assert (first.s, first.rung, first.epochs) == (2, 0, 1), first  # bracket 2: 9 x 1 epoch
    forged = [
        dataclasses.replace(first, rung=999),
        dataclasses.replace(first, id=-5),
        dataclasses.replace(first, epochs=10**12),
        dataclasses.replace(first, hparams={**first.hparams, "x": 5.0}),
    ]
    forged = [
        dataclasses.replace(r, val_loss=-1.0 - n, objective=-1.0 - n) for n, r in enumerate(forged)
    ]
    epoch = next(iter(repository.iter_epochs()))
    epochs = [dataclasses.replace(epoch, epoch=10**30), dataclasses.replace(epoch, epoch=2)]
    with open(repository.results_path, "a") as handle:
        handle.writelines(encode_row(row) for row in forged)
    with open(repository.epochs_path, "a") as handle:
        handle.writelines(encode_epoch(row) for row in epochs)
    return len(forged), len(epochs)


if __name__ == "__main__":
    main(sys.argv[1:])


@dataclass(frozen=True)
class BestFileCounter(SyntheticTrainable):
    """Writes, as each segment starts, how many best-epoch files its repository holds.

    Args:
        count_dir: where each segment writes one file holding that count.
    """

    count_dir: str = ""

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> list[float]:
        count = len(list(Path(checkpoint).parent.glob("*.best.json")))
        name = f"{os.getpid()}-{time.monotonic_ns()}.count"
        Path(self.count_dir, name).write_text(str(count))
        return super().train(hparams, checkpoint, initial_epoch, epochs)
