"""The progress tracker's pure helpers (``phobbit.reporting.progress``)."""

from __future__ import annotations

import io
import re
from pathlib import Path

from helpers import tuner

from phobbit.execution.worker import HIDDEN
from phobbit.reporting.plain import PlainReporter
from phobbit.reporting.progress import slot_summary
from phobbit.storage.repository import Repository


def test_a_long_pool_is_summarised_in_the_header_not_listed_name_by_name() -> None:
    assert slot_summary([HIDDEN, HIDDEN]) == "CPU 0, CPU 1"
    assert slot_summary([HIDDEN] * 8) == ", ".join(f"CPU {i}" for i in range(8))
    summary = slot_summary([HIDDEN] * 100_000)
    assert summary == "CPU 0, CPU 1, CPU 2, CPU 3, CPU 4, CPU 5, ..., CPU 99999"
    assert slot_summary(["0", "0", "1"]) == "GPU 0, GPU 0, GPU 1"


def test_a_resumed_library_run_announces_a_best_only_when_it_beats_the_recorded_ones(
    tmp_path: Path,
) -> None:
    # The library's plain lines on a resume (here: a second iteration of the same run) said
    # "best so far" of the first new result, though the repository held better ones.
    first = io.StringIO()
    hyperband = tuner(tmp_path / "repo", n_jobs=2)
    hyperband.reporter = PlainReporter(first)
    hyperband.run(R=9, eta=3)
    recorded = min(r.val_loss for r in Repository(tmp_path / "repo").results().values() if r.ok)
    again = io.StringIO()
    hyperband = tuner(tmp_path / "repo", n_jobs=2)
    hyperband.reporter = PlainReporter(again)
    hyperband.run(R=9, eta=3, iterations=2)
    bests = [float(m) for m in re.findall(r"best so far: val loss ([\d.e-]+)", again.getvalue())]
    assert "Resuming: 22 segments" in again.getvalue()
    assert all(value < recorded for value in bests), (bests, recorded)
