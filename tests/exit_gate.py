"""A worker whose own exit waits at a gate: proof, without timing, that a pool's shutdown
does not wait for its workers to exit by themselves.

Importing this module in a process whose ``PHOBBIT_TEST_EXIT_GATE`` names a folder
registers an exit hook there: as the process exits on its own it writes
``exiting-<pid>``, waits until the folder holds ``open`` (``gates.open_gate``) or
``give_up_s`` passes, then writes ``exited-<pid>``. A worker that is ended instead of
asked to exit writes neither. ``ExitGatedTrainable`` brings the module into every
worker that trains one of its segments (workers import it by reference).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from pathlib import Path

from gates import OPEN, _wait

from phobbit.testing import SyntheticTrainable

GATE_ENV = "PHOBBIT_TEST_EXIT_GATE"
GIVE_UP_S = 60.0


def _exit_at_gate(folder: Path) -> None:
    (folder / f"exiting-{os.getpid()}").touch()
    _wait(lambda: (folder / OPEN).exists(), GIVE_UP_S)
    (folder / f"exited-{os.getpid()}").touch()


def exited(folder: str | Path) -> list[str]:
    """The markers of processes that ran their exit hook (``exiting-``/``exited-<pid>``)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("exit"))


if os.environ.get(GATE_ENV):
    atexit.register(_exit_at_gate, Path(os.environ[GATE_ENV]))


@dataclass(frozen=True)
class ExitGatedTrainable(SyntheticTrainable):
    """A ``SyntheticTrainable`` whose module, imported in a worker, gates the worker's exit."""
