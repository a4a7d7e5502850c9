"""A model file without TensorFlow: a synthetic trainable whose epochs sleep a little.

The sleep comes from PHOBBIT_TEST_EPOCH_S (default 0) so tests can slow a run down.
"""

from __future__ import annotations

import os

from phobbit import Hyperparameter
from phobbit.trainable import SyntheticTrainable

hparam_ranges = [
    Hyperparameter("x", "uniform", (0.0, 1.0)),
    Hyperparameter("act", "choice", [("relu", "tanh")]),
]

trainable = SyntheticTrainable(epoch_seconds=float(os.environ.get("PHOBBIT_TEST_EPOCH_S", "0")))
