"""The progress tracker's pure helpers (``phobbit.reporting.progress``)."""

from __future__ import annotations

from phobbit.execution.worker import HIDDEN
from phobbit.reporting.progress import slot_summary


def test_a_long_pool_is_summarised_in_the_header_not_listed_name_by_name() -> None:
    assert slot_summary([HIDDEN, HIDDEN]) == "CPU 0, CPU 1"
    assert slot_summary([HIDDEN] * 8) == ", ".join(f"CPU {i}" for i in range(8))
    summary = slot_summary([HIDDEN] * 100_000)
    assert summary == "CPU 0, CPU 1, CPU 2, CPU 3, CPU 4, CPU 5, ..., CPU 99999"
    assert slot_summary(["0", "0", "1"]) == "GPU 0, GPU 0, GPU 1"
