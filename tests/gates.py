"""A synthetic trainable whose segments wait at a gate: tests that must not depend on timing.

Two kinds of wait, both through files in a folder every worker sees:

* a *barrier*: the first ``barrier`` segments each wait until ``barrier`` segments
  have started, so that many workers hold one segment at the same moment (proof
  that every slot takes work, however loaded the machine is);
* a *hold*: segments after the first ``hold_after`` wait until the test calls
  ``open_gate``, so a run is certain to be mid-way when the test looks at it.

Every wait gives up after ``give_up_s`` so that a failing test cannot hang; the
test's own assertions then fail. Workers import this module by reference
(``tests/`` is on their ``sys.path``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phobbit.testing import SyntheticTrainable

POLL_S = 0.01
OPEN = "open"


def open_gate(folder: str | Path) -> None:
    """Lets every segment held at the gate in ``folder`` go on."""
    (Path(folder) / OPEN).touch()


def started(folder: str | Path) -> int:
    """How many segments have reached the gate in ``folder``."""
    return sum(1 for p in Path(folder).iterdir() if p.name.startswith("ticket-"))


def _ticket(folder: Path) -> int:
    """The next free ordinal, claimed atomically (O_EXCL) among every process."""
    number = 0
    while True:
        try:
            os.close(os.open(folder / f"ticket-{number}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return number
        except FileExistsError:
            number += 1


def _wait(done: Any, give_up_s: float) -> None:
    deadline = time.monotonic() + give_up_s
    while not done() and time.monotonic() < deadline:
        time.sleep(POLL_S)


@dataclass(frozen=True)
class GatedTrainable(SyntheticTrainable):
    """A ``SyntheticTrainable`` whose segments wait at a barrier or a gate first.

    Args:
        gate_dir: the folder of tickets and of the ``open`` file.
        barrier: the first this many segments wait until this many have started.
        hold_after: segments after the first this many wait until ``open_gate``
            (None: none waits).
        give_up_s: the longest any wait lasts.
        prints: print a line to standard output as each segment starts training
            (after any wait), as a user's ``model.summary()`` or ``verbose=1`` does.
    """

    gate_dir: str = ""
    barrier: int = 0
    hold_after: int | None = None
    give_up_s: float = 120.0
    prints: bool = False

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> list[float]:
        folder = Path(self.gate_dir)
        ticket = _ticket(folder)
        if ticket < self.barrier:
            _wait(lambda: started(folder) >= self.barrier, self.give_up_s)
        if self.hold_after is not None and ticket >= self.hold_after:
            _wait(lambda: (folder / OPEN).exists(), self.give_up_s)
        if self.prints:
            print(f"training {Path(checkpoint).name} from epoch {initial_epoch}", flush=True)
        return super().train(hparams, checkpoint, initial_epoch, epochs)
