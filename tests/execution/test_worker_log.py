"""What of the workers' standard error reaches ``workers.log``: the user's lines, not
TensorFlow's start-up noise."""

from __future__ import annotations

from phobbit.execution.worker import without_startup_noise

# What a CPU worker's TensorFlow 2.21 import wrote, as workers.log held it.
STARTUP = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796669324.313032   30654 port.cc:153] oneDNN custom operations are on. "
    b"You may see slightly different numerical results due to floating-point round-off "
    b"errors from different computation orders. To turn them off, set the environment "
    b"variable `TF_ENABLE_ONEDNN_OPTS=0`.\n"
    b"I0000 00:00:1796669324.313628   30654 cudart_stub.cc:31] Could not find cuda drivers "
    b"on your machine, GPU will not be used.\n"
    b"E0000 00:00:1796669338.276083   30654 cuda_platform.cc:52] failed call to cuInit: "
    b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
)
USER = (
    b"/home/me/model.py:12: UserWarning: Do not pass an `input_shape` to a layer.\n"
    b"  model.add(Dense(8, input_shape=(4,)))\n"
    b"E0000 00:00:1796669338.3 30654 some_op.cc:9] Resource exhausted: OOM when allocating\n"
)
TAIL = b"my own last line, cut short by a kill"


def test_tensorflows_start_up_lines_are_dropped_and_the_users_lines_kept_in_order() -> None:
    log = STARTUP + USER + STARTUP + TAIL
    assert without_startup_noise(log, gpus_hidden=True) == USER + TAIL


def test_no_cuda_driver_is_news_on_a_gpu_worker_and_stays() -> None:
    kept = without_startup_noise(STARTUP, gpus_hidden=False)
    assert b"Could not find cuda drivers" in kept and b"failed call to cuInit" in kept
    assert b"oneDNN" not in kept and b"absl::InitializeLog" not in kept
