"""What tests and benchmarks check phobbit against: a serial Hyperband written out
from the definitions (``reference``) and a trainable without TensorFlow
(``synthetic``).

Nothing else in phobbit imports this package. It imports ``phobbit.core``,
``phobbit.storage`` (checkpoints, the fence) and ``phobbit.execution``'s trainable
contract and warm models.
"""

from __future__ import annotations

from phobbit.testing.reference import (
    SerialRun,
    SerialRung,
    serial_hyperband,
    serial_rungs,
    synthetic_result,
)
from phobbit.testing.synthetic import (
    WARM_STATE_BYTES,
    InputCheckedTrainable,
    SyntheticTrainable,
    default_curve,
)

__all__ = [
    "WARM_STATE_BYTES",
    "InputCheckedTrainable",
    "SerialRun",
    "SerialRung",
    "SyntheticTrainable",
    "default_curve",
    "serial_hyperband",
    "serial_rungs",
    "synthetic_result",
]
