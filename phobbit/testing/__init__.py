"""What tests and benchmarks check phobbit against: a serial Hyperband written out
from the definitions (``reference``).

Nothing else in phobbit imports this package. It imports ``phobbit.core`` and
``phobbit.execution``'s trainables.
"""

from __future__ import annotations

from phobbit.testing.reference import (
    SerialRun,
    SerialRung,
    serial_hyperband,
    serial_rungs,
    synthetic_result,
)

__all__ = ["SerialRun", "SerialRung", "serial_hyperband", "serial_rungs", "synthetic_result"]
