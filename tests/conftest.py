"""Shared fixtures, the tests' markers by mechanism, and a per-session temporary folder.

The markers (``pool``, ``subprocess``, ``keras``, ``dask``, ``benchmark``, each with
``slow``) are set by ``pytest_collection_modifyitems`` from what a test's code names,
never by hand; the fast lane is ``python -m pytest -m "not slow" -n auto``.
"""

from __future__ import annotations

import json
import multiprocessing.process
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import mechanisms
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
    """Gives this session a temporary folder of its own, and Ctrl-C back to its children.

    By default every session of one user shares /tmp/pytest-of-<user> and deletes
    all but the three newest ``pytest-N`` folders in it when it starts. On a shared
    CI machine, sessions that start while this one runs would delete the
    repositories its drivers are still writing. Those runs then hang or fail, which
    looks like a flaky test. ``--basetemp`` still wins.
    """
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="phobbit-tests-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp
    # A shell starts a background job (`python -m pytest ... &`) with SIGINT ignored, and an
    # ignored signal stays ignored in every process started after it: the drivers of the
    # Ctrl-C tests would never see theirs (pytest-xdist's workers keep it so). A handled
    # signal is reset to the default in a new program, so the session handles it.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks each test with the slow mechanisms its code uses, and then with ``slow``.

    How it knows (``mechanisms.of``): it reads the source of the test, of the fixtures
    it requests from ``tests/``, and of every module-level function, class or value
    (and shared helper function) these name, transitively, and looks there for what
    starts each mechanism: ``LocalExecutor``, ``ParallelHyperband``/``Hyperband``
    called without ``executor=``, ``helpers.tuner(real=True)``, an in-process ``train``
    command (``pool``); ``subprocess.run``/``Popen``/``check_output``...,
    ``multiprocessing``, ``ProcessPoolExecutor``, ``os.fork`` (``subprocess``); imports
    of ``keras``/``tensorflow``/``jax``, ``KerasTrainable``, TensorBoard's reader
    (``keras``); imports of ``dask``/``distributed``/``phobbit.execution.dask``,
    ``DaskExecutor`` (``dask``); a benchmark script's ``main`` (``benchmark``).
    Reading the code rather than marking by hand puts a new test in its lane by itself.
    The reading errs towards slow (code that names a mechanism it never reaches costs
    the fast lane a test); what it misses is caught as the test runs: a test left fast
    that starts a process or imports Keras errors (``pytest_runtest_teardown``).
    """
    for item in items:
        found = mechanisms.of(item)
        for name in found - {m.name for m in item.iter_markers()}:
            item.add_marker(name)
        if found:
            item.add_marker("slow")


class _Started:
    """What a test of the fast lane started: processes, and modules it must not import."""

    def __init__(self) -> None:
        self.kinds: set[str] = set()
        self.modules = {name for name in mechanisms.HEAVY_MODULES if name in sys.modules}
        self.undo: list[tuple[type, str, object]] = []
        for kind, owner, name in (
            ("a subprocess", subprocess.Popen, "__init__"),
            ("a process", multiprocessing.process.BaseProcess, "start"),
        ):
            self.undo.append((owner, name, getattr(owner, name)))
            setattr(owner, name, self.recorded(kind, getattr(owner, name)))

    def recorded(self, kind: str, original: Any) -> Any:
        def start(*args: Any, **kwargs: Any) -> Any:
            self.kinds.add(kind)
            return original(*args, **kwargs)

        return start

    def end(self) -> list[str]:
        """Undoes the patches; what was started or imported meanwhile."""
        for owner, name, original in self.undo:
            setattr(owner, name, original)
        now = {name for name in mechanisms.HEAVY_MODULES if name in sys.modules}
        return sorted(self.kinds) + [f"imported {name}" for name in sorted(now - self.modules)]


_STARTED = pytest.StashKey[_Started]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    """Watches a test the collection hook left unmarked (fast), fixtures included."""
    if item.get_closest_marker("slow") is None:
        item.stash[_STARTED] = _Started()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Fails a test of the fast lane that started a process or imported Keras, TensorFlow
    or JAX: the collection hook missed a mechanism (teach ``mechanisms`` its name).

    What it started still ran; the test errors after it, naming what it started.
    """
    result = yield
    started = item.stash.get(_STARTED, None)
    if started is not None and (what := started.end()):
        pytest.fail(
            f"{item.nodeid} is in the fast lane but {', '.join(what)}: "
            "teach tests/mechanisms.py the name that does it",
            pytrace=False,
        )
    return result
