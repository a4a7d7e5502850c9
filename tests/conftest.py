"""Shared fixtures: a temporary repository and synthetic trainables without TensorFlow."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

from phobbit import Hyperparameter
from phobbit.core.records import RunSettings
from phobbit.core.space import Space

# No per-example deadline: on a loaded machine a slow example is no failure, and
# hypothesis would report it as one (DeadlineExceeded, then Flaky on the rerun).
settings.register_profile("phobbit", deadline=None)
settings.load_profile("phobbit")


def pytest_configure(config: pytest.Config) -> None:
    """Gives this session a temporary folder of its own.

    By default every session of one user shares /tmp/pytest-of-<user> and deletes
    all but the three newest ``pytest-N`` folders in it when it starts. On a shared
    CI machine, sessions that start while this one runs would delete the
    repositories its drivers are still writing. Those runs then hang or fail, which
    looks like a flaky test. ``--basetemp`` still wins.
    """
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="phobbit-tests-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Removes the session's own folder when every test passed (kept for a post-mortem)."""
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own is not None and exitstatus == 0:
        shutil.rmtree(own, ignore_errors=True)


_OWN_BASETEMP = pytest.StashKey[str]()


@pytest.fixture
def hparams() -> list[Hyperparameter]:
    """A small mixed search space."""
    return [
        Hyperparameter("x", "uniform", (0.0, 1.0)),
        Hyperparameter("lr", "log-uniform", (1e-4, 1e-1)),
        Hyperparameter("act", "choice", [("relu", "tanh", "elu")]),
        Hyperparameter("units", "randint", (8, 64)),
    ]


@pytest.fixture
def space(hparams: list[Hyperparameter]) -> Space:
    return Space(hparams)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository folder that does not exist yet."""
    return tmp_path / "repo"


def read_records(folder: Path) -> list[dict]:
    """The JSON records a SyntheticTrainable(record_dir=folder) wrote."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


@pytest.fixture(autouse=True)
def no_gpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests pin to made-up GPU ids; on a machine with GPUs, do not check them against it."""
    monkeypatch.setattr("phobbit.execution.executor.visible_gpu_count", lambda: None)


def run_settings(R: int = 9, eta: int = 3, seed: int = 0, iterations: int = 1) -> RunSettings:
    """The settings of a run over a one-hyperparameter space: for tests that need a run.json."""
    space = Space([Hyperparameter("x", "uniform", (0.0, 1.0))])
    return RunSettings.of(space, R, eta, seed, iterations)


@pytest.fixture(autouse=True)
def model_files_forgotten():
    """Each test leaves ``sys.path`` and the model-file modules as it found them.

    ``cli.main(["train", MODEL_FILE, ...])`` in this process puts the model file's folder
    first on ``sys.path``; ``tests/models/synthetic.py`` would then shadow
    ``tests/synthetic.py`` in the workers of every later test, which die importing it.
    """
    import sys

    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name.startswith("_phobbit_model_"):
            del sys.modules[name]
