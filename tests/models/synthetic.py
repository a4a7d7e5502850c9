"""A model file without TensorFlow: a synthetic trainable.

Tests steer it through the environment, which its workers inherit:
PHOBBIT_TEST_EPOCH_S (default 0) makes each epoch sleep; PHOBBIT_TEST_GATE names a
folder where every segment after the first PHOBBIT_TEST_HOLD_AFTER waits until the
test opens the gate (``tests/gates.py``), so a test finds the run mid-way however
loaded the machine is; with a gate, PHOBBIT_TEST_PRINT=1 makes every segment print a
line to standard output.
"""

from __future__ import annotations

import os

from phobbit import Hyperparameter
from phobbit.testing import SyntheticTrainable

hparam_ranges = [
    Hyperparameter("x", "uniform", (0.0, 1.0)),
    Hyperparameter("act", "choice", [("relu", "tanh")]),
]

epoch_seconds = float(os.environ.get("PHOBBIT_TEST_EPOCH_S", "0"))
if os.environ.get("PHOBBIT_TEST_GATE"):
    from gates import GatedTrainable  # tests/ is on the PYTHONPATH of the tests' subprocesses

    trainable = GatedTrainable(
        epoch_seconds=epoch_seconds,
        gate_dir=os.environ["PHOBBIT_TEST_GATE"],
        hold_after=int(os.environ["PHOBBIT_TEST_HOLD_AFTER"]),
        prints=os.environ.get("PHOBBIT_TEST_PRINT") == "1",
    )
else:
    trainable = SyntheticTrainable(epoch_seconds=epoch_seconds)
