"""Several devices per trial: a worker that sees two devices trains each model under
``tf.distribute.MirroredStrategy`` with two replicas, deterministically, and a segment
resumed from its checkpoint ends bit-identical to one trained straight through.

Two logical CPU devices stand in for two GPUs; they must be made before TensorFlow
initialises, so each segment trains in a fresh process (``replica_probe.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parent.parent / "replica_probe.py"


def segment(tmp_path: Path, devices: int, stem: str, start: int, end: int) -> dict:
    """Trains ``stem``'s epochs ``start .. end`` in a process split into ``devices``."""
    out = tmp_path / f"{stem}-{start}-{end}.json"
    args = [str(devices), str(tmp_path / stem), str(start), str(end), str(out)]
    done = subprocess.run(
        [sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_devices_train_under_mirrored_strategy_deterministically_and_resume_exactly(
    tmp_path: Path,
) -> None:
    straight = segment(tmp_path, 2, "straight", 0, 4)
    assert straight["replicas"] == 2 and straight["built_under"] == [2]
    again = segment(tmp_path, 2, "again", 0, 4)
    assert again == straight, "two runs of one configuration on two replicas differ"
    first = segment(tmp_path, 2, "resumed", 0, 2)
    rest = segment(tmp_path, 2, "resumed", 2, 4)
    assert rest["built_under"] == [2], "the resumed model was rebuilt under the strategy"
    assert first["losses"] + rest["losses"] == straight["losses"]
    assert rest["digest"] == straight["digest"], "weights and optimizer state differ"


def test_one_device_builds_no_strategy(tmp_path: Path) -> None:
    alone = segment(tmp_path, 1, "alone", 0, 1)
    assert alone["replicas"] == 1 and alone["built_under"] == [1]


REFUSER = (
    "from keras_models import DROPOUT, mlp, small_digits\n"
    "from phobbit.errors import InputError\n"
    "from phobbit.execution.worker_state import worker_state\n"
    "from phobbit.keras_adapter.trainable import KerasTrainable\n"
    "worker_state().device = '0,1'\n"  # what pin leaves in a worker of gpus_per_trial 2
    "trainable = KerasTrainable(mlp, load_dataset=small_digits, backend='jax')\n"
    "try:\n"
    "    trainable.preflight(DROPOUT)\n"
    "except InputError as exc:\n"
    "    print(exc)\n"
)


def test_a_worker_pinned_to_two_gpus_refuses_a_backend_other_than_tensorflow() -> None:
    pytest.importorskip("jax")
    tests = str(PROBE.parent)
    done = subprocess.run(
        [sys.executable, "-c", REFUSER],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([tests, *sys.path])},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == (
        "gpus_per_trial > 1 trains each trial on its GPUs 0,1 with "
        "tf.distribute.MirroredStrategy, which needs the TensorFlow backend, not 'jax'; "
        "use backend 'tensorflow', or gpus_per_trial 1"
    )
