"""Keras backends: KERAS_BACKEND set in the workers, refused when not installed, and JAX end
to end with checkpoints, continuation and a bit-identical resume; workers' stderr to a log."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from backend_probes import environment_of_worker, jax_only_mlp, write_to_fd2
from keras_models import HPARAMS, small_digits
from synthetic import x_curve

from phobbit import Hyperparameter, InputError, ParallelHyperband
from phobbit.cli import commands as cli
from phobbit.execution.executor import LocalExecutor
from phobbit.keras_adapter.backends import check_backend, use_backend
from phobbit.testing import SyntheticTrainable

TESTS = Path(__file__).resolve().parents[1]
SYNTHETIC = TESTS / "models" / "synthetic.py"
HAS_JAX = importlib.util.find_spec("jax") is not None


def test_an_unknown_or_uninstalled_backend_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(InputError, match="backend 'theano' is unknown; use one of tensorflow"):
        check_backend("theano")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    with pytest.raises(InputError, match="backend 'torch' is not installed: pip install torch"):
        ParallelHyperband(
            None,
            [Hyperparameter("x", "uniform", (0, 1))],
            tmp_path / "lib",
            backend="torch",
            trainable=SyntheticTrainable(curve=x_curve),
        )
    repo = tmp_path / "repo"
    code = cli.main(
        ["train", str(SYNTHETIC), "--jobs", "1", "--repo", str(repo), "--backend", "torch"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("phobbit: error: backend 'torch' is not installed")
    assert not repo.exists() and not (tmp_path / "lib").exists()


def test_workers_get_the_environment_before_anything_runs_there(tmp_path: Path) -> None:
    with LocalExecutor(n_jobs=1, env={"KERAS_BACKEND": "jax"}) as executor:
        assert executor.submit(environment_of_worker, "KERAS_BACKEND").result() == "jax"


def test_workers_stderr_goes_to_the_log_file_when_asked(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    log = tmp_path / "workers.log"
    with LocalExecutor(n_jobs=1, stderr_path=str(log)) as executor:
        executor.submit(write_to_fd2, "absl noise from a worker\n").result()
    assert "absl noise from a worker" in log.read_text()
    assert "absl noise" not in capfd.readouterr().err
    with LocalExecutor(n_jobs=1) as executor:
        executor.submit(write_to_fd2, "shown with -v\n").result()
    assert "shown with -v" in capfd.readouterr().err


@pytest.mark.keras
def test_a_worker_whose_keras_runs_another_backend_stops_the_run_with_a_message() -> None:
    import keras

    other = "jax" if keras.backend.backend() != "jax" else "tensorflow"
    with pytest.raises(
        InputError, match=f"runs the {keras.backend.backend()} backend, not {other}"
    ):
        use_backend(other)
    use_backend(keras.backend.backend())  # the one it runs: nothing to say


JAX_RESUME = """
import json, math, sys
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
from keras_models import DROPOUT, mlp, small_digits
import phobbit.keras_adapter.trainable as kt

kt.SAVE_BUDGET = math.inf  # save every epoch
folder = sys.argv[1]

class Killed(Exception):
    pass

class Kill(keras.callbacks.Callback):
    def on_epoch_end(self, index, logs=None):
        if index + 1 == 2:
            raise Killed

trainable = kt.KerasTrainable(mlp, load_dataset=small_digits, batch_size=32, backend="jax")
whole = trainable.train(DROPOUT, folder + "/whole", 0, 4)
killed = kt.KerasTrainable(
    mlp, load_dataset=small_digits, batch_size=32, backend="jax",
    fit_kwargs={"callbacks": [Kill()]},
)
try:
    killed.train(DROPOUT, folder + "/killed", 0, 4)
except Killed:
    pass
resumed = trainable.train(DROPOUT, folder + "/killed", 0, 4)
rungs = trainable.train(DROPOUT, folder + "/rungs", 0, 2) + trainable.train(
    DROPOUT, folder + "/rungs", 2, 4
)
loaded = keras.saving.load_model(folder + "/whole.keras")
(x, y), (x_val, y_val) = small_digits()
evaluated = loaded.evaluate(x_val, y_val, batch_size=32, verbose=0, return_dict=True)["loss"]
print(json.dumps({"whole": list(whole), "resumed": list(resumed), "rungs": list(rungs),
                  "evaluated": evaluated}))
"""


@pytest.mark.keras
@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
def test_jax_resumes_bit_identically_and_goes_on_with_its_optimizer_state(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
    }
    run = subprocess.run(
        [sys.executable, "-c", JAX_RESUME, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    losses = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(losses["whole"]) == 4
    assert losses["resumed"] == losses["whole"]  # killed after epoch 2, resumed: bit-identical
    assert losses["rungs"] == losses["whole"]  # a promoted configuration goes on as one fit
    # The checkpoint holds the last epoch: it evaluates to that epoch's val loss.
    assert losses["evaluated"] == pytest.approx(losses["whole"][-1], rel=1e-5)


@pytest.mark.keras
@pytest.mark.skipif(not HAS_JAX, reason="jax is not installed")
def test_a_run_with_backend_jax_trains_every_configuration_on_jax(tmp_path: Path) -> None:
    tuner = ParallelHyperband(
        jax_only_mlp,
        HPARAMS,
        tmp_path / "repo",
        dataset=small_digits,
        n_jobs=2,
        batch_size=64,
        verbose=0,
        backend="jax",
        tensorboard=False,
    )
    results = tuner.run(R=3, eta=3)
    assert list(results["Status"]) == ["ok"] * len(results), list(results["Error"])
    # Continued configurations resumed from a JAX checkpoint.
    assert (results["Epochs"] == 3).sum() >= 1 and (results["Epochs"] == 1).sum() >= 1
