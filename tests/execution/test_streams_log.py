"""``workers.log``: what a worker printed to stderr is there, even when the worker was killed.

A guard (issue 22 item 6): it passes on the code it was written against, whose worker
points file descriptor 2 at the log and whose Python standard error writes through
(Python 3.9+), so a line printed just before a SIGKILL is never held in a buffer.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Any

from helpers import STEPS, tuner
from synthetic import x_curve

from phobbit.testing import SyntheticTrainable


@dataclasses.dataclass(frozen=True)
class PrintThenDie(SyntheticTrainable):
    """Prints a line to stderr as a user's code would, then its worker is killed (once)."""

    victim: str = ""
    tally_dir: str = ""

    def train(
        self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int
    ) -> list[float]:
        tally = Path(self.tally_dir)
        if Path(checkpoint).name == self.victim and not list(tally.iterdir()):
            (tally / "died").touch()
            print(f"last words of {os.getpid()}", file=sys.stderr)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().train(hparams, checkpoint, initial_epoch, epochs)


def test_the_last_line_a_killed_worker_printed_is_in_workers_log(tmp_path: Path) -> None:
    (tmp_path / "tally").mkdir()
    trainable = PrintThenDie(
        curve=x_curve, steps_per_epoch=STEPS, victim="0-1-0", tally_dir=str(tmp_path / "tally")
    )
    repo = tmp_path / "repo"
    results = tuner(repo, real=True, trainable=trainable, n_jobs=2).run(R=3, eta=3)
    assert (results["Status"] == "ok").all()
    log = (repo / "workers.log").read_text()
    assert "last words of" in log
