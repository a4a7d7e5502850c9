"""Search quality: how fast each search method finds a good configuration, on a virtual clock.

Run it with ``python benchmarks/search_quality.py --jobs 2`` (the full run:
R=27, eta=3, a budget of 8 Hyperband iterations, 2 for the Keras MLP; 20
seeds per cell, 10 for the Keras MLP; ~45 minutes on two loaded cores) or
``--quick`` (a smoke run: 3 seeds, W=1,4, a budget of two Hyperband
iterations, ~20 s). Runs are kept in
``benchmarks/search_quality_runs.json``: a later call runs only the cells that
are missing (``--fresh`` forgets them), and ``--report`` only redraws the
plots and tables from what is kept.

Problems (``PROBLEMS``), each with a known optimum and a fidelity, the epochs,
that biases the objective and blurs it with noise that vanishes at ``R`` epochs:

- ``branin``: Branin on [-5, 10] x [0, 15] with the fidelity term of Kandasamy
  et al., "Multi-fidelity Bayesian optimisation with continuous
  approximations", ICML 2017 (BOCA): b(z) = b - 0.01 (1 - z), c(z) = c - 0.1 (1 - z),
  t(z) = t + 0.05 (1 - z). At z = 1 it is Branin, whose minimum is
  0.397887 at (-pi, 12.275), (pi, 2.275) and (9.42478, 2.475).
- ``hartmann6``: Hartmann-6 on [0, 1]^6 with the fidelity term of the same
  paper (and of BoTorch's ``AugmentedHartmann``, Wu et al., "Practical
  multi-fidelity Bayesian optimization for hyperparameter tuning", UAI 2019):
  alpha(z) = alpha - 0.1 (1 - z). At z = 1 its minimum is -3.32237 at
  (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573).
- ``keras-mlp``: the digits MLP of ``examples/mnist_mlp.py`` as a tabular
  surrogate: learning curves of a 189-point grid trained once with real Keras
  (``benchmarks/keras_curves.py``); a configuration trains as its nearest grid
  point. Its optimum is the lowest val loss of any grid point at any epoch.
- ``keras-mlp-smooth`` (not run unless named in ``--problems``): the same curves
  interpolated between grid points (multilinear in the dropouts and the log
  learning rate, the activation exact), as the real MLP's loss is continuous;
  the nearest-point surrogate ties configurations half a grid step apart. Same
  optimum. Issue 21.2's sign test was measured on ``keras-mlp`` before tpe5.

The fidelity of epoch e is z = log(e) / log(R) (0 at one epoch, 1 at R), and
the loss after epoch e is f_z(x) + b (1 - z) + sigma (1 - z) N(0, 1): a
learning curve that falls with the epochs, ranks configurations with a bias
at low fidelity and is noisy there; the normal draw is a function of the
configuration and the epoch, so a configuration resumed from its checkpoint
sees the losses it would have seen without a pause, as ``SyntheticTrainable``
requires. An epoch costs 1 virtual second +-30% (drawn per configuration and
epoch, the same for every method).

Methods, all on the same budget in epochs (``budget``: that of ``iterations``
Hyperband iterations at R and eta), on W = 1, 4, 16, 64 virtual workers:

- phobbit's ``ParallelHyperband`` on a ``SimulatedExecutor`` (the real
  scheduler, plan and repository, a virtual clock): random Hyperband, and,
  where this checkout's API takes ``algorithm`` and ``sampler``, ASHA,
  Hyperband+TPE and ASHA+TPE (otherwise their cells say "not in this checkout");
- random search: configurations trained to R epochs, W at a time;
- Optuna: ``TPESampler(multivariate=True, constant_liar=True)`` and
  ``HyperbandPruner(1, R, eta)``, a trial training epoch by epoch, reporting
  each epoch and asking ``should_prune``, W trials in flight (a study with
  ``n_jobs=W`` does the same with threads);
- DEHB (Awad et al., IJCAI 2021; ``pip install dehb``) through ``ask``/``tell``
  with W jobs in flight; it trains every job from scratch at its fidelity
  (no checkpoint continuation, as DEHB's examples do), so its epochs are spent
  on retraining.

The peers run in loops of this module on the same virtual clock and cost
model: each worker takes the next job when it is free, and a job's duration
is the sum of its epochs' costs. The answer of a run at any moment is the
best full-fidelity objective among configurations trained to R epochs (for
the Keras MLP: the lowest val loss of any epoch trained, which is what
``phobbit best`` lists); regret is that minus the optimum. Busy fraction =
epochs' seconds / (W x the run's makespan).

This is a benchmark: it measures and prints, and asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import inspect
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# This checkout's phobbit (not an installed one).
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from phobbit import Hyperparameter, ParallelHyperband  # noqa: E402
from phobbit import api as phobbit_api  # noqa: E402
from phobbit.core.schedule import brackets  # noqa: E402
from phobbit.core.space import Space  # noqa: E402
from phobbit.execution.simulated import SimulatedExecutor  # noqa: E402
from phobbit.testing import SyntheticTrainable  # noqa: E402

RUNS = HERE / "search_quality_runs.json"
KERAS_CURVES = HERE / "keras_curves.json"
EPOCH_SECONDS, JITTER = 1.0, 0.3

# -- the test functions -----------------------------------------------------------------------

BRANIN_OPTIMUM = 0.397887
BRANIN_ARGMIN = [(-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475)]
HARTMANN6_OPTIMUM = -3.32237
HARTMANN6_ARGMIN = (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)
_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H6_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)


def branin(x1: float, x2: float, z: float = 1.0) -> float:
    """Branin at fidelity ``z`` in [0, 1] (Kandasamy et al. 2017); Branin itself at z = 1."""
    b = 5.1 / (4 * math.pi**2) - 0.01 * (1 - z)
    c = 5 / math.pi - 0.1 * (1 - z)
    t = 1 / (8 * math.pi) + 0.05 * (1 - z)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def hartmann6(x: Sequence[float], z: float = 1.0) -> float:
    """Hartmann-6 at fidelity ``z`` in [0, 1]: alpha - 0.1 (1 - z); Hartmann-6 at z = 1."""
    alpha = _H6_ALPHA - 0.1 * (1 - z)
    inner = np.sum(_H6_A * (np.asarray(x, dtype=float) - _H6_P) ** 2, axis=1)
    return float(-np.dot(alpha, np.exp(-inner)))


def _normal(hparams: dict[str, Any], epoch: int) -> float:
    """A standard normal draw that is a function of the configuration and the epoch alone."""
    text = json.dumps(hparams, sort_keys=True) + f"/{epoch}"
    digest = hashlib.sha256(text.encode()).digest()
    u1 = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64
    u2 = int.from_bytes(digest[8:16], "big") / 2**64
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def fidelity(epoch: int, R: int) -> float:
    """z of ``epoch``: 0 at one epoch, 1 at ``R`` (log scale, as Hyperband's rungs)."""
    return min(1.0, math.log(epoch) / math.log(R)) if R > 1 else 1.0


@dataclass(frozen=True)
class TestFunctionCurve:
    """A learning curve from a test function: ``f_z(x) + bias (1 - z) + sigma (1 - z) N(0, 1)``."""

    function: str
    R: int
    bias: float
    sigma: float

    def objective(self, hparams: dict[str, Any], z: float = 1.0) -> float:
        """The test function at fidelity ``z`` (noise-free)."""
        if self.function == "branin":
            return branin(hparams["x1"], hparams["x2"], z)
        return hartmann6([hparams[f"x{i}"] for i in range(1, 7)], z)

    def __call__(self, hparams: dict[str, Any], epoch: int) -> float:
        z = fidelity(epoch, self.R)
        noise = self.sigma * (1 - z) * _normal(hparams, epoch) if z < 1 else 0.0
        return self.objective(hparams, z) + self.bias * (1 - z) + noise


@dataclass(frozen=True)
class TabularCurve:
    """Learning curves of a grid trained once: a configuration follows its nearest grid point."""

    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    curves: tuple[tuple[float, ...], ...]

    def index(self, hparams: dict[str, Any]) -> int:
        """The grid index of the grid point nearest ``hparams`` (log scale for the rate)."""
        index = 0
        for name, values in self.grid:
            value = hparams[name]
            if isinstance(values[0], str):
                position = values.index(value)
            elif name == "learning_rate":
                position = int(np.argmin([abs(math.log(value / v)) for v in values]))
            else:
                position = int(np.argmin([abs(value - v) for v in values]))
            index = index * len(values) + position
        return index

    def __call__(self, hparams: dict[str, Any], epoch: int) -> float:
        return self.curves[self.index(hparams)][epoch - 1]


@dataclass(frozen=True)
class InterpolatedCurve(TabularCurve):
    """The same grid's curves, interpolated: multilinear in the numeric hyperparameters
    (the learning rate on a log scale) between the grid points around a configuration, the
    activation (a choice) exact. The real MLP's loss is continuous in dropout and learning
    rate; the nearest-point surrogate makes every configuration within half a grid step of
    another the same one, so near draws tie artificially. A multilinear interpolation is
    extreme at the grid's points, so the optimum is the nearest-point surrogate's."""

    def weights(self, hparams: dict[str, Any]) -> list[tuple[int, float]]:
        """(grid index, weight) of the grid points that ``hparams`` interpolates between."""
        corners: list[tuple[int, float]] = [(0, 1.0)]
        for name, values in self.grid:
            value = hparams[name]
            if isinstance(values[0], str):
                axis = [(values.index(value), 1.0)]
            else:
                coord = [math.log(v) for v in values] if name == "learning_rate" else values
                x = math.log(value) if name == "learning_rate" else float(value)
                x = min(max(x, coord[0]), coord[-1])
                upper = min(int(np.searchsorted(coord, x, side="right")), len(coord) - 1)
                lower = upper - 1
                t = (x - coord[lower]) / (coord[upper] - coord[lower])
                axis = [(lower, 1.0 - t), (upper, t)]
            corners = [
                (index * len(values) + position, weight * w)
                for index, weight in corners
                for position, w in axis
                if w > 0.0
            ]
        return corners

    def __call__(self, hparams: dict[str, Any], epoch: int) -> float:
        return sum(w * self.curves[i][epoch - 1] for i, w in self.weights(hparams))


@dataclass(frozen=True)
class Problem:
    """A search problem: a space, a curve, the optimum and whether to rank by full fidelity.

    ``full_fidelity``: a run's answer is the best objective among configurations
    trained to R epochs (the test functions); otherwise the lowest val loss of
    any epoch trained (the Keras MLP, as ``phobbit best`` ranks).
    """

    name: str
    space: tuple[Hyperparameter, ...]
    curve: Callable[[dict[str, Any], int], float]
    optimum: float
    R: int
    eta: int
    full_fidelity: bool
    note: str = ""

    def objective(self, hparams: dict[str, Any]) -> float:
        """The value a configuration trained to R epochs counts for (test functions)."""
        return self.curve.objective(hparams)  # type: ignore[attr-defined]

    def trainable(self) -> SyntheticTrainable:
        """What phobbit trains: the curve, epochs of 1 virtual second +-30%."""
        return SyntheticTrainable(curve=self.curve, epoch_seconds=EPOCH_SECONDS, jitter=JITTER)


def make_problem(name: str, R: int = 27, eta: int = 3) -> Problem:
    """One of ``PROBLEMS`` at max epochs ``R`` (the Keras MLP has 27 epochs at most)."""
    if name == "branin":
        space = (
            Hyperparameter("x1", "uniform", (-5.0, 10.0)),
            Hyperparameter("x2", "uniform", (0.0, 15.0)),
        )
        curve = TestFunctionCurve("branin", R, bias=10.0, sigma=5.0)
        return Problem(name, space, curve, BRANIN_OPTIMUM, R, eta, True)
    if name == "hartmann6":
        space = tuple(Hyperparameter(f"x{i}", "uniform", (0.0, 1.0)) for i in range(1, 7))
        curve = TestFunctionCurve("hartmann6", R, bias=0.5, sigma=0.2)
        return Problem(name, space, curve, HARTMANN6_OPTIMUM, R, eta, True)
    if is_keras(name):
        data = json.loads(KERAS_CURVES.read_text())
        R = min(R, data["epochs"])
        grid = tuple((k, tuple(v)) for k, v in data["grid"].items())
        kind = InterpolatedCurve if name == "keras-mlp-smooth" else TabularCurve
        tabular = kind(grid, tuple(tuple(c) for c in data["curves"]))
        space = (
            Hyperparameter("dropout1", "uniform", (0.0, 0.5)),
            Hyperparameter("dropout2", "uniform", (0.0, 0.5)),
            Hyperparameter("activation", "choice", [("relu", "tanh", "sigmoid")]),
            Hyperparameter("learning_rate", "log-uniform", (1e-4, 1e-1)),
        )
        optimum = min(min(c[:R]) for c in data["curves"])
        note = f"{len(data['curves'])} grid points, {data['source']}, Keras {data['keras']}"
        return Problem(name, space, tabular, optimum, R, eta, False, note)
    raise ValueError(f"problem {name!r} is unknown; use one of {', '.join(PROBLEMS)}")


PROBLEMS = ("branin", "hartmann6", "keras-mlp", "keras-mlp-smooth")
"""Every problem; the default runs leave ``keras-mlp-smooth`` out (``DEFAULT_PROBLEMS``)."""
DEFAULT_PROBLEMS = "branin,hartmann6,keras-mlp"


def is_keras(name: str) -> bool:
    """Whether problem ``name`` is a Keras surrogate (27 epochs at most, its own budget)."""
    return name.startswith("keras-mlp")


def budget(R: int, eta: int, iterations: int) -> int:
    """Epochs that ``iterations`` Hyperband iterations train (with continuation)."""
    return iterations * sum(b.total_epochs() for b in brackets(R, eta))


# -- one run's trace ------------------------------------------------------------------------------


@dataclass
class Trace:
    """What one run gives: the incumbent after each completed job, and the workers' use.

    ``points`` are (virtual seconds, epochs spent, incumbent value) after each
    job that ended; the value is inf until the first answer.
    """

    points: list[tuple[float, int, float]] = field(default_factory=list)
    intervals: list[tuple[float, float]] = field(default_factory=list)
    makespan: float = 0.0
    workers: int = 1
    epochs: int = 0
    note: str = ""

    def add(self, t: float, epochs: int, value: float) -> None:
        best = min(value, self.points[-1][2]) if self.points else value
        self.points.append((t, epochs, best))

    def compact(self) -> dict[str, Any]:
        """A JSON-able record keeping the points where the incumbent changed, and the last."""
        kept = [p for i, p in enumerate(self.points) if i == 0 or p[2] < self.points[i - 1][2]]
        if self.points and kept[-1] is not self.points[-1]:
            kept.append(self.points[-1])
        busy = sum(b - a for a, b in self.intervals)
        busy /= self.workers * self.makespan if self.makespan else 1.0
        # Until the last job started: the drain at the end (the last jobs run while the
        # budget is spent and nothing new may start) left out.
        last = max((a for a, _ in self.intervals), default=0.0)
        fed = sum(min(b, last) - a for a, b in self.intervals if a < last)
        fed = fed / (self.workers * last) if last else None  # every job started at 0
        return {
            "points": [[round(t, 4), e, v if math.isfinite(v) else None] for t, e, v in kept],
            "busy": round(busy, 5),
            "busy_fed": None if fed is None else round(fed, 5),
            "makespan": round(self.makespan, 3),
            "epochs": self.epochs,
            "note": self.note,
        }


class Unavailable(Exception):
    """A method that this checkout or environment cannot run (its reason in one line)."""


# -- phobbit --------------------------------------------------------------------------------------

PHOBBIT_METHODS = {
    "hyperband": {},
    "asha": {"algorithm": "asha"},
    "hyperband+tpe": {"sampler": "tpe"},
    "asha+tpe": {"algorithm": "asha", "sampler": "tpe"},
}


def phobbit_accepts(options: dict[str, Any]) -> str:
    """'' when this checkout's ``ParallelHyperband`` takes ``options``, else why not."""
    parameters = set(inspect.signature(ParallelHyperband.__init__).parameters)
    # Flat keywords (sampler=, algorithm=, max_epochs=) fill the objects the API takes.
    parameters |= set(getattr(phobbit_api, "_FLAT", {}))
    missing = [name for name in options if name not in parameters]
    if missing:
        return f"ParallelHyperband of this checkout takes no {', '.join(missing)}"
    return ""


def run_phobbit(problem: Problem, method: str, workers: int, seed: int, iterations: int) -> Trace:
    """``ParallelHyperband`` with ``method``'s options on ``workers`` simulated workers."""
    options = dict(PHOBBIT_METHODS[method])
    why = phobbit_accepts({**options, "max_epochs": None} if "asha" in method else options)
    if why:
        raise Unavailable(why)
    limit = budget(problem.R, problem.eta, iterations)
    if "asha" in method:
        options["max_epochs"] = limit  # ASHA has no end of its own: the same epochs as HB
    executor = SimulatedExecutor(workers)
    scratch = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="phobbit-sq-", dir=scratch) as folder:
        tuner = ParallelHyperband(
            None,
            list(problem.space),
            folder,
            trainable=problem.trainable(),
            executor=executor,
            seed=seed,
            verbose=0,
            **options,
        )
        tuner.run(problem.R, problem.eta, iterations)
        rows = list(tuner.repository.iter_results())
    return phobbit_trace(problem, rows, executor, workers)


def phobbit_trace(
    problem: Problem, rows: list[Any], executor: SimulatedExecutor, workers: int
) -> Trace:
    """The trace of a phobbit run from its rows (completion order) and the executor's trace."""
    trace = Trace(workers=workers)
    done = sorted(
        (e for e in executor.trace if e.outcome == "done" and e.key is not None),
        key=lambda e: e.end,
    )
    ends: dict[Any, list[float]] = {}
    for entry in done:
        ends.setdefault(entry.key, []).append(entry.end)
    timed = []
    for order, row in enumerate(rows):
        times = ends.get(row.key)
        timed.append((times.pop(0) if times else done[order].end, order, row))
    epochs = 0
    for t, _, row in sorted(timed, key=lambda item: (item[0], item[1])):
        epochs += row.epochs - row.start_epoch
        trace.add(t, epochs, answer(problem, row.hparams, row.epochs, row.val_loss))
    trace.intervals = [(e.start, e.end) for e in executor.trace]
    trace.makespan = executor.makespan()
    trace.epochs = epochs
    return trace


def answer(
    problem: Problem, hparams: dict[str, Any], epochs: int, val_loss: float | None
) -> float:
    """What a job that trained ``hparams`` to ``epochs`` adds to the run's answer."""
    if problem.full_fidelity:
        return problem.objective(hparams) if epochs >= problem.R else math.inf
    return math.inf if val_loss is None or not math.isfinite(val_loss) else val_loss


# -- peers, on the same virtual clock -------------------------------------------------------------


class Clock:
    """W virtual workers: jobs start when a worker is free and end after their duration."""

    def __init__(self, workers: int) -> None:
        self.workers, self.now = workers, 0.0
        self.intervals: list[tuple[float, float]] = []
        self._running: list[tuple[float, int, Any]] = []
        self._order = 0

    def free(self) -> int:
        return self.workers - len(self._running)

    def start(self, duration: float, job: Any) -> None:
        self.intervals.append((self.now, self.now + duration))
        self._order += 1
        heapq.heappush(self._running, (self.now + duration, self._order, job))

    def next(self) -> Any:
        end, _, job = heapq.heappop(self._running)
        self.now = end
        return job

    def running(self) -> int:
        return len(self._running)


def run_random_search(problem: Problem, workers: int, seed: int, iterations: int) -> Trace:
    """Configurations drawn as phobbit draws them, each trained to R epochs, W at once."""
    space, trainable = Space(problem.space), problem.trainable()
    limit, started, spent = budget(problem.R, problem.eta, iterations), 0, 0
    clock, trace, count = Clock(workers), Trace(workers=workers), 0
    while True:
        while clock.free() and started + problem.R <= limit:
            hparams = space.sample(seed, 0, 0, count)
            count += 1
            started += problem.R
            clock.start(trainable.segment_time(hparams, 0, problem.R), hparams)
        if not clock.running():
            break
        hparams = clock.next()
        spent += problem.R
        losses = [problem.curve(hparams, e) for e in range(1, problem.R + 1)]
        trace.add(clock.now, spent, answer(problem, hparams, problem.R, min(losses)))
    trace.intervals, trace.makespan, trace.epochs = clock.intervals, clock.now, spent
    return trace


def _optuna_distributions(space: Sequence[Hyperparameter]) -> dict[str, Any]:
    import optuna

    out = {}
    for hp in space:
        if hp.distribution == "uniform":
            out[hp.name] = optuna.distributions.FloatDistribution(*hp.distr_args)
        elif hp.distribution == "log-uniform":
            out[hp.name] = optuna.distributions.FloatDistribution(*hp.distr_args, log=True)
        elif hp.distribution == "choice":
            out[hp.name] = optuna.distributions.CategoricalDistribution(list(hp.distr_args))
        else:
            raise Unavailable(f"no Optuna distribution for {hp.distribution}")
    return out


def run_optuna(problem: Problem, workers: int, seed: int, iterations: int) -> Trace:
    """Optuna's TPE with its Hyperband pruner, W trials in flight, an event per epoch."""
    try:
        import optuna
    except ImportError:
        raise Unavailable("optuna is not installed (pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed),
        pruner=optuna.pruners.HyperbandPruner(1, problem.R, problem.eta),
    )
    distributions = _optuna_distributions(problem.space)
    trainable = problem.trainable()
    limit, started, spent = budget(problem.R, problem.eta, iterations), 0, 0
    clock, trace = Clock(workers), Trace(workers=workers)

    def start_epoch(trial: Any, epoch: int, best: float) -> None:
        nonlocal started
        started += 1
        duration = trainable.epoch_time(trial.params, epoch)
        clock.start(duration, (trial, epoch, best))

    while True:
        while clock.free() and started < limit:
            start_epoch(study.ask(distributions), 1, math.inf)
        if not clock.running():
            break
        trial, epoch, best = clock.next()
        spent += 1
        loss = problem.curve(trial.params, epoch)
        best = min(best, loss)
        trial.report(loss, epoch)
        trace.add(clock.now, spent, answer(problem, trial.params, epoch, best))
        if epoch >= problem.R:
            study.tell(trial, loss)
        elif trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif started < limit:
            start_epoch(trial, epoch + 1, best)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # out of budget
    trace.intervals, trace.makespan, trace.epochs = clock.intervals, clock.now, spent
    return trace


def _configspace(space: Sequence[Hyperparameter], seed: int) -> Any:
    import ConfigSpace as CS

    cs = CS.ConfigurationSpace(seed=seed)
    for hp in space:
        if hp.distribution in ("uniform", "log-uniform"):
            low, high = hp.distr_args
            log = hp.distribution == "log-uniform"
            cs.add(CS.UniformFloatHyperparameter(hp.name, low, high, log=log))
        elif hp.distribution == "choice":
            cs.add(CS.CategoricalHyperparameter(hp.name, list(hp.distr_args)))
        else:
            raise Unavailable(f"no ConfigSpace hyperparameter for {hp.distribution}")
    return cs


def run_dehb(problem: Problem, workers: int, seed: int, iterations: int) -> Trace:
    """DEHB through ask/tell, W jobs in flight; a job trains from scratch to its fidelity."""
    try:
        from dehb import DEHB
        from loguru import logger
    except ImportError:
        raise Unavailable("dehb is not installed (pip install dehb)") from None
    logger.remove()  # DEHB logs every job to stderr through loguru
    trainable = problem.trainable()
    limit, started, spent = budget(problem.R, problem.eta, iterations), 0, 0
    clock, trace = Clock(workers), Trace(workers=workers)
    with tempfile.TemporaryDirectory(prefix="phobbit-dehb-") as folder:
        optimizer = DEHB(
            cs=_configspace(problem.space, seed),
            min_fidelity=1,
            max_fidelity=problem.R,
            eta=problem.eta,
            n_workers=1,  # more would start a Dask cluster; the virtual clock runs W jobs
            seed=seed,
            output_path=folder,
            save_freq="end",
            log_level="ERROR",
        )
        while True:
            while clock.free() and started < limit:
                job = optimizer.ask()
                epochs = int(round(job["fidelity"]))
                hparams = dict(job["config"])
                started += epochs
                clock.start(trainable.segment_time(hparams, 0, epochs), (job, hparams, epochs))
            if not clock.running():
                break
            job, hparams, epochs = clock.next()
            spent += epochs
            losses = [problem.curve(hparams, e) for e in range(1, epochs + 1)]
            fitness = losses[-1] if problem.full_fidelity else min(losses)
            optimizer.tell(job, {"fitness": fitness, "cost": float(epochs)})
            trace.add(clock.now, spent, answer(problem, hparams, epochs, min(losses)))
    trace.intervals, trace.makespan, trace.epochs = clock.intervals, clock.now, spent
    return trace


PEERS: dict[str, Callable[[Problem, int, int, int], Trace]] = {
    "random search": run_random_search,
    "optuna tpe+hyperband": run_optuna,
    "dehb": run_dehb,
}
METHODS = (*PHOBBIT_METHODS, *PEERS)


def run_cells(jobs: Sequence[tuple], n_jobs: int) -> Iterator[tuple[tuple, dict[str, Any]]]:
    """``run_cell`` of each job, in order: on ``n_jobs`` processes, or in this one for 1."""
    with ExitStack() as stack:
        if n_jobs > 1:
            pool = stack.enter_context(ProcessPoolExecutor(n_jobs))
            yield from pool.map(run_cell, jobs, chunksize=1)
        else:
            yield from map(run_cell, jobs)


def run_cell(job: tuple[str, int, int, str, int, int]) -> tuple[tuple, dict[str, Any]]:
    """One (problem, R, eta, method, W, seed, iterations) run; a record or why it did not run."""
    name, R, eta, method, workers, seed, iterations = job
    problem = make_problem(name, R, eta)
    began = time.process_time()
    try:
        if method in PHOBBIT_METHODS:
            trace = run_phobbit(problem, method, workers, seed, iterations)
        else:
            trace = PEERS[method](problem, workers, seed, iterations)
    except Unavailable as why:
        return job, {"unavailable": str(why)}
    record = trace.compact()
    record["cpu_s"] = round(time.process_time() - began, 2)
    return job, record


# -- the sign test: Hyperband+TPE against random Hyperband, seed by seed --------------------------


def sign_test_p(wins: int, losses: int) -> float:
    """The two-sided p of the sign test: ``wins`` of ``wins + losses`` paired seeds (ties
    dropped), under the null that each method is as likely to win a seed."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(0, min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def final_regret(problem: Problem, record: dict[str, Any]) -> float:
    """A kept run's final answer minus the optimum (inf: it found no answer)."""
    value = record["points"][-1][2] if record.get("points") else None
    return math.inf if value is None else value - problem.optimum


def sign_test_rows(
    args: argparse.Namespace, runs: dict[str, dict[str, Any]]
) -> list[tuple[str, int, int, int, int, int, float, float, float]]:
    """(problem, iterations, W, wins, losses, ties, p, median regret of TPE, of random):
    Hyperband+TPE against random Hyperband on the same seeds, from the runs kept."""
    rows = []
    for name in args.problems:
        R = min(args.R, 27) if is_keras(name) else args.R
        problem = make_problem(name, R, args.eta)
        for iterations in args.sign_iterations:
            for workers in args.workers:
                pairs = []
                for seed in range(args.seeds):
                    job = (name, R, args.eta, "{}", workers, seed, iterations)
                    tpe = runs.get(key_of(job).replace("{}", "hyperband+tpe"))
                    rnd = runs.get(key_of(job).replace("{}", "hyperband"))
                    if tpe and rnd and "points" in tpe and "points" in rnd:
                        pairs.append((final_regret(problem, tpe), final_regret(problem, rnd)))
                if not pairs:
                    continue
                wins = sum(t < r for t, r in pairs)
                losses = sum(t > r for t, r in pairs)
                ties = len(pairs) - wins - losses
                median_tpe = float(np.median([t for t, _ in pairs]))
                median_rnd = float(np.median([r for _, r in pairs]))
                p = sign_test_p(wins, losses)
                rows.append(
                    (name, iterations, workers, wins, losses, ties, p, median_tpe, median_rnd)
                )
    return rows


def sign_test_table(args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> str:
    """The sign-test table in Markdown, with the verdict of issue 21's target per row."""
    lines = [
        f"Hyperband+TPE vs random Hyperband, final regret per paired seed (R={args.R}, "
        f"eta={args.eta}, {args.seeds} seeds; keras-mlp at R<=27):",
        "",
        "| problem | iterations | W | TPE better | worse | tied | sign test p "
        "| median regret TPE | random | target met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, iterations, workers, wins, losses, ties, p, med_t, med_r in sign_test_rows(
        args, runs
    ):
        met = wins > losses and p < 0.05 and med_t <= med_r
        lines.append(
            f"| {name} | {iterations} | {workers} | {wins} | {losses} | {ties} | {p:.2g} "
            f"| {fmt(med_t, 4)} | {fmt(med_r, 4)} | {'yes' if met else 'no'} |"
        )
    return "\n".join(lines)


def sign_test_jobs(args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> list[tuple]:
    """The (problem, R, eta, method, W, seed, iterations) runs the sign test needs, not kept."""
    jobs = []
    for name in args.problems:
        R = min(args.R, 27) if is_keras(name) else args.R
        for iterations in args.sign_iterations:
            for method in ("hyperband", "hyperband+tpe"):
                for workers in args.workers:
                    for seed in range(args.seeds):
                        job = (name, R, args.eta, method, workers, seed, iterations)
                        if key_of(job) not in runs:
                            jobs.append(job)
    return jobs


def add_sign_test_options(parser: argparse.ArgumentParser) -> None:
    """``--sign-test`` and ``--sign-iterations``: issue 21's paired comparison of TPE."""
    parser.add_argument(
        "--sign-test",
        action="store_true",
        help="only Hyperband+TPE against random Hyperband: a sign test of final regret per "
        "paired seed (e.g. --R 9 --workers 4 --seeds 20)",
    )
    parser.add_argument(
        "--sign-iterations", default="1,2", help="Hyperband iterations of the sign test"
    )


def main_sign_test(args: argparse.Namespace) -> int:
    """Runs the sign test's missing runs (kept with the others) and prints its table."""
    args.sign_iterations = [int(i) for i in args.sign_iterations.split(",") if i]
    args.keras_seeds = args.seeds  # one seed count for every problem here
    runs = load_runs(args.runs)
    jobs = sign_test_jobs(args, runs)
    began = time.time()
    for job, record in run_cells(jobs, args.jobs):
        runs[key_of(job)] = record
    save_runs(args.runs, runs)
    print(f"{len(jobs)} runs in {time.time() - began:.0f} s")
    print(sign_test_table(args, runs))
    print(f"Runs kept in {args.runs}. {machine()} at the end.")
    return 0


# -- storing, summarising, plotting ---------------------------------------------------------------


def key_of(job: Sequence[Any]) -> str:
    return "|".join(str(x) for x in job)


def load_runs(path: Path) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_runs(path: Path, runs: dict[str, dict[str, Any]]) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(runs, sort_keys=True, separators=(",", ":")))
    os.replace(temp, path)


def step_values(points: list[list[Any]], axis: int, grid: np.ndarray) -> np.ndarray:
    """The incumbent (inf before the first answer) at each value of ``grid`` on ``axis``."""
    xs = np.array([p[axis] for p in points], dtype=float)
    ys = np.array([math.inf if p[2] is None else p[2] for p in points], dtype=float)
    where = np.searchsorted(xs, grid, side="right") - 1
    out = np.full(len(grid), math.inf)
    out[where >= 0] = ys[where[where >= 0]]
    return out


@dataclass
class Cell:
    """The seeds of one (problem, method, W) cell: regret curves on common grids."""

    regrets_epochs: np.ndarray  # seeds x epoch grid
    regrets_time: np.ndarray  # seeds x time grid
    final: np.ndarray
    busy: np.ndarray
    busy_fed: np.ndarray
    cpu: np.ndarray
    makespan: np.ndarray
    epochs: np.ndarray


def summarise(
    records: list[dict[str, Any]], optimum: float, epoch_grid: np.ndarray, time_grid: np.ndarray
) -> Cell:
    regrets_e = np.array([step_values(r["points"], 1, epoch_grid) for r in records]) - optimum
    regrets_t = np.array([step_values(r["points"], 0, time_grid) for r in records]) - optimum
    final = np.array(
        [(math.inf if r["points"][-1][2] is None else r["points"][-1][2]) for r in records]
    )
    return Cell(
        np.maximum(regrets_e, 0),
        np.maximum(regrets_t, 0),
        np.maximum(final - optimum, 0),
        np.array([r["busy"] for r in records]),
        np.array([math.nan if r.get("busy_fed") is None else r["busy_fed"] for r in records]),
        np.array([r.get("cpu_s", math.nan) for r in records]),
        np.array([r["makespan"] for r in records]),
        np.array([r["epochs"] for r in records]),
    )


BIG = 1e300  # inf stands for "no answer yet"; percentiles of inf are NaN, of BIG are BIG


def percentiles(values: np.ndarray, q: Sequence[float], axis: int | None = None) -> np.ndarray:
    """Percentiles where "no answer yet" (inf) counts as the worst value, and stays inf."""
    out = np.percentile(np.minimum(values, BIG), q, axis=axis)
    return np.where(out >= BIG * 1e-10, math.inf, out)  # interpolated towards BIG: no answer


def first_reach(curve: np.ndarray, grid: np.ndarray, target: float) -> float:
    """The first grid value where ``curve`` is at or below ``target`` (inf if never)."""
    hits = np.nonzero(curve <= target + 1e-12)[0]
    return float(grid[hits[0]]) if len(hits) else math.inf


def _share(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def fmt(x: float, digits: int = 3) -> str:
    if not math.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def report(args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> str:
    """Markdown tables and PNG plots of every cell kept in ``runs`` for ``args``' settings."""
    lines: list[str] = []
    targets: list[str] = []
    for name in args.problems:
        try:
            problem = make_problem(name, args.R, args.eta)
        except (OSError, ValueError) as exc:
            lines.append(f"{name}: not run ({exc})\n")
            continue
        iterations = args.iterations_of(name)
        limit = budget(problem.R, problem.eta, iterations)
        epoch_grid = np.linspace(0, limit, 401)
        cells: dict[tuple[str, int], Cell] = {}
        missing: dict[str, str] = {}
        horizon = 0.0
        for method in args.methods:
            for workers in args.workers:
                records = []
                for seed in range(args.seeds_of(name)):
                    job = (name, problem.R, problem.eta, method, workers, seed, iterations)
                    record = runs.get(key_of(job))
                    if record is None:
                        continue
                    if "unavailable" in record:
                        missing[method] = record["unavailable"]
                        break
                    records.append(record)
                if records:
                    cells[(method, workers)] = records  # type: ignore[assignment]
                    horizon = max(horizon, max(r["makespan"] for r in records))
        time_grid = {w: np.linspace(0, 1, 401) for w in args.workers}
        for workers in args.workers:
            spans = [
                max(r["makespan"] for r in recs)
                for (m, w), recs in cells.items()  # type: ignore[misc]
                if w == workers
            ]
            time_grid[workers] = np.linspace(0, max(spans, default=1.0), 401)
        summary = {
            key: summarise(recs, problem.optimum, epoch_grid, time_grid[key[1]])  # type: ignore
            for key, recs in cells.items()
        }
        lines += table(problem, iterations, limit, summary, epoch_grid, time_grid, args, missing)
        targets += check_targets(problem, limit, summary, epoch_grid, time_grid, args)
        plot(problem, summary, epoch_grid, time_grid, args)
    if targets:
        lines += ["### Targets of issue 11", "", "| problem | W | target | measured | met |"]
        lines += ["|---|---|---|---|---|", *targets, ""]
    return "\n".join(lines)


def check_targets(
    problem: Problem,
    limit: int,
    summary: dict[tuple[str, int], Cell],
    epoch_grid: np.ndarray,
    time_grid: dict[int, np.ndarray],
    args: argparse.Namespace,
) -> list[str]:
    """Rows of the targets table: what the issue asks, what was measured, whether it holds."""
    rows = []

    def row(workers: int, target: str, measured: str, met: bool) -> None:
        rows.append(
            f"| {problem.name} | {workers} | {target} | {measured} | "
            f"{'yes' if met else '**no**'} |"
        )

    for workers in args.workers:
        hb = summary.get(("hyperband", workers))
        if hb is None:
            continue
        hb_final = float(percentiles(hb.final, 50))
        for tpe, base in (("hyperband+tpe", "hyperband"), ("asha+tpe", "asha")):
            cell, reference = summary.get((tpe, workers)), summary.get((base, workers))
            if cell is None or reference is None or not problem.full_fidelity:
                continue
            median = percentiles(cell.regrets_epochs, 50, axis=0)
            reach = first_reach(median, epoch_grid, hb_final)
            row(
                workers,
                f"{tpe} reaches HB's final median regret ({fmt(hb_final)}) "
                "within 1/3 of the budget",
                f"{fmt(reach / limit, 2)} of the budget",
                reach <= limit / 3 + 1e-9,
            )
            end, ref_end = (
                float(percentiles(cell.final, 50)),
                float(percentiles(reference.final, 50)),
            )
            row(
                workers,
                f"{tpe} final median regret <= {base}'s",
                f"{fmt(end)} vs {fmt(ref_end)}",
                end <= ref_end,
            )
        asha = summary.get(("asha", workers))
        if asha is not None and workers >= 16 and problem.full_fidelity:
            busy = float(np.median(asha.busy))
            fed = float(np.median(asha.busy_fed))
            row(
                workers,
                "asha busy >= 0.98",
                f"{busy:.3f} (until the last start: {fed:.3f})",
                busy >= 0.98,
            )
            grid = time_grid[workers]
            for factor in (4, 2, 1.25, 1):
                level = factor * hb_final
                a = first_reach(percentiles(asha.regrets_time, 50, axis=0), grid, level)
                h = first_reach(percentiles(hb.regrets_time, 50, axis=0), grid, level)
                row(
                    workers,
                    f"asha's median regret reaches {factor:g} x HB's final ({fmt(level)}) "
                    "sooner than HB's (virtual s)",
                    f"{fmt(a, 4)} vs {fmt(h, 4)}",
                    a < h,
                )
        cell = summary.get(("hyperband+tpe", workers))
        if cell is not None and not problem.full_fidelity:
            end = float(percentiles(cell.final, 50))
            row(
                workers,
                "hyperband+tpe median best val loss <= hyperband's",
                f"{fmt(end + problem.optimum, 4)} vs {fmt(hb_final + problem.optimum, 4)}",
                end <= hb_final,
            )
    return rows


def table(
    problem: Problem,
    iterations: int,
    limit: int,
    summary: dict[tuple[str, int], Cell],
    epoch_grid: np.ndarray,
    time_grid: dict[int, np.ndarray],
    args: argparse.Namespace,
    missing: dict[str, str],
) -> list[str]:
    seeds = {len(c.final) for c in summary.values()}
    lines = [
        f"### {problem.name}: R={problem.R}, eta={problem.eta}, budget {limit} epochs "
        f"({iterations} Hyperband iterations), seeds per cell {sorted(seeds)}, optimum "
        f"{problem.optimum:.6g}" + (f" ({problem.note})" if problem.note else ""),
        "",
        "Regret: median [25%, 75%] over seeds. 'to HB final': the epochs (fraction of the "
        "budget) and the virtual time at which the method's median regret first reaches "
        "random Hyperband's final median regret at the same W. Busy: median busy fraction "
        "(whole run; until the last job started). CPU: median seconds of this process per run "
        "(the search's own cost: sampling, scheduling, bookkeeping; no training).",
        "",
        "| W | method | regret at 1/3 budget | final regret | to HB final: epochs | "
        "to HB final: time (s) | makespan (s) | busy | CPU (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    third = int(np.searchsorted(epoch_grid, limit / 3))
    for workers in args.workers:
        reference = summary.get(("hyperband", workers))
        target = float(percentiles(reference.final, 50)) if reference is not None else math.nan
        for method in args.methods:
            cell = summary.get((method, workers))
            if cell is None:
                if method in missing:
                    lines.append(f"| {workers} | {method} | {missing[method]} ||||||||")
                continue
            median_e = percentiles(cell.regrets_epochs, 50, axis=0)
            median_t = percentiles(cell.regrets_time, 50, axis=0)
            q = percentiles(cell.final, [25, 50, 75])
            third_q = percentiles(cell.regrets_epochs[:, third], [25, 50, 75])
            reach_e = first_reach(median_e, epoch_grid, target)
            reach_t = first_reach(median_t, time_grid[workers], target)
            lines.append(
                f"| {workers} | {method} | {fmt(third_q[1])} [{fmt(third_q[0])}, "
                f"{fmt(third_q[2])}] | {fmt(q[1])} [{fmt(q[0])}, {fmt(q[2])}] | "
                f"{fmt(reach_e, 4)} ({fmt(reach_e / limit, 2)}) | {fmt(reach_t, 4)} | "
                f"{fmt(float(np.median(cell.makespan)), 4)} | "
                f"{float(np.median(cell.busy)):.3f}; {_share(float(np.median(cell.busy_fed)))} | "
                f"{float(np.median(cell.cpu)):.2g} |"
            )
    lines.append("")
    return lines


def plot(
    problem: Problem,
    summary: dict[tuple[str, int], Cell],
    epoch_grid: np.ndarray,
    time_grid: dict[int, np.ndarray],
    args: argparse.Namespace,
) -> None:
    """Two PNGs per problem: regret against epochs spent and against virtual time, per W."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-4 if problem.full_fidelity else 1e-3
    for axis_name in ("epochs", "time"):
        fig, axes = plt.subplots(
            1, len(args.workers), figsize=(4.2 * len(args.workers), 3.6), squeeze=False
        )
        for ax, workers in zip(axes[0], args.workers):
            for index, method in enumerate(args.methods):
                cell = summary.get((method, workers))
                if cell is None:
                    continue
                grid = epoch_grid if axis_name == "epochs" else time_grid[workers]
                values = cell.regrets_epochs if axis_name == "epochs" else cell.regrets_time
                # No answer yet (inf) is left undrawn.
                q25, q50, q75 = (
                    np.where(np.isinf(q), np.nan, np.maximum(q, floor))
                    for q in (percentiles(values, p, axis=0) for p in (25, 50, 75))
                )
                color = f"C{index}"
                ax.plot(grid, q50, color=color, label=method)
                ax.fill_between(grid, q25, q75, color=color, alpha=0.15, linewidth=0)
            ax.set_yscale("log")
            ax.set_title(f"{problem.name}, W={workers}")
            ax.set_xlabel("epochs spent" if axis_name == "epochs" else "virtual time (s)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("regret (median, 25-75%)")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plots / f"search_quality_{problem.name}_{axis_name}.png", dpi=80)
        plt.close(fig)


# -- the command line -----------------------------------------------------------------------------


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs, load average {load}; Python {platform.python_version()} "
        f"on {platform.system()}"
    )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=DEFAULT_PROBLEMS)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workers", default="1,4,16,64", help="W values (default 1,4,16,64)")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per cell (default 20)")
    parser.add_argument(
        "--keras-seeds", type=int, default=10, help="seeds per keras-mlp cell (default 10)"
    )
    parser.add_argument("--R", type=int, default=27, help="max epochs (default 27)")
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument(
        "--iterations", type=int, default=8, help="budget: Hyperband iterations (default 8)"
    )
    parser.add_argument(
        "--keras-iterations",
        type=int,
        default=2,
        help="budget of keras-mlp (default 2: at 8 every method finds the grid's best point)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="processes running seeds (default 1)")
    parser.add_argument("--runs", type=Path, default=RUNS, help="where runs are kept")
    parser.add_argument("--plots", type=Path, default=HERE, help="folder of the PNGs")
    parser.add_argument(
        "--fresh", action="store_true", help="forget the runs kept of these problems and methods"
    )
    parser.add_argument("--report", action="store_true", help="only report the runs kept")
    parser.add_argument(
        "--asha-busy",
        action="store_true",
        help="only ASHA's busy fraction and final regret: the end of the budget drained, fitted, "
        "or fresh draws first (front)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 3 seeds, W=1,4, 2 iterations"
    )
    add_sign_test_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.keras_seeds, args.workers, args.iterations = 3, 3, "1,4", 2
        if args.runs == RUNS:
            args.runs = Path(tempfile.gettempdir()) / "phobbit_search_quality_quick.json"
        if args.plots == HERE:
            args.plots = Path(tempfile.mkdtemp(prefix="phobbit-sq-plots-"))
    args.problems = [p for p in args.problems.split(",") if p]
    args.methods = [m for m in args.methods.split(",") if m]
    args.workers = [int(w) for w in args.workers.split(",")]
    for name in args.problems:
        if name not in PROBLEMS:
            parser.error(f"problem {name!r} is unknown; use one of {', '.join(PROBLEMS)}")
    for method in args.methods:
        if method not in METHODS:
            parser.error(f"method {method!r} is unknown; use one of {', '.join(METHODS)}")
    args.iterations_of = lambda name: (
        args.keras_iterations if is_keras(name) and not args.quick else args.iterations
    )
    args.seeds_of = lambda name: args.keras_seeds if is_keras(name) else args.seeds
    return args


def _asha_front(machine: Any) -> None:
    """Patches one ``AsynchronousHyperband`` into "front" (issue 21.3, asha3; measured, not
    kept): while a new configuration can still reach R within the horizon (1.2 R) and the
    budget can carry it with the promotions already owed (the top 1/eta of each rung), it
    draws new configurations before any promotion; after that, when no promotion is
    certain, the best not yet promoted of the highest rung that still reaches R in time."""
    R, eta, choose = machine.R, machine.eta, machine._choose

    def owed(state: Any) -> float:
        expected, total = len(state.members[0]), 0.0
        for rung in range(1, len(state.bracket.rungs)):
            have = len(state.members[rung])
            total += max(0, expected // eta - have) * state.step(rung)
            expected = max(have, expected // eta)
        return total

    def front() -> tuple[Any, Any]:
        state, found = choose()
        horizon = machine.horizon()
        if horizon is None:
            return state, found
        fresh_cost = sum(state.step(k) / eta**k for k in range(len(state.bracket.rungs)))
        committed = machine.epochs_decided() + sum(map(owed, machine._brackets.values()))
        if 1.2 * R <= horizon and committed + fresh_cost <= machine.budget_epochs:
            return state, None
        if found is not None:
            return state, found
        best = None
        for other in machine._brackets.values():
            for rung in reversed(range(len(other.bracket.rungs) - 1)):
                if R - other.bracket.rungs[rung].epochs > horizon:
                    continue
                waiting = sorted(
                    k
                    for k in other.unpromoted[rung]
                    if k[2] not in other.promoted_set[rung] and not k[0]
                )
                if waiting:
                    if best is None or (-rung, waiting[0]) < best[0]:
                        best = ((-rung, waiting[0]), other, (rung, waiting[0][2]))
                    break
        return (best[1], best[2]) if best is not None else (state, found)

    machine._choose = front


def asha_busy_cell(job: tuple[str, int, str, int, int]) -> tuple[float, float, float, float]:
    """One ASHA run of ``asha_busy``: (problem, W, "drain", "fit" or "front", seed,
    iterations) -> (busy, final regret, makespan, regret at half the budget's epochs).
    "drain" patches the horizon away in this process; "front" see ``_asha_front``."""
    from phobbit.core.asha import AsynchronousHyperband

    name, workers, label, seed, iterations = job
    problem = make_problem(name)
    fit, init = AsynchronousHyperband.horizon, AsynchronousHyperband.__init__
    if label == "drain":
        AsynchronousHyperband.horizon = lambda self: None  # type: ignore[method-assign]
    if label == "front":

        def patched(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            _asha_front(self)

        AsynchronousHyperband.__init__ = patched  # type: ignore[method-assign]
    try:
        trace = run_phobbit(problem, "asha", workers, seed, iterations)
    finally:
        AsynchronousHyperband.horizon = fit  # type: ignore[method-assign]
        AsynchronousHyperband.__init__ = init  # type: ignore[method-assign]
    half = [v for _, e, v in trace.points if e <= trace.epochs / 2]
    regret_half = (half[-1] if half else math.inf) - problem.optimum
    return (
        trace.compact()["busy"],
        trace.points[-1][2] - problem.optimum,
        trace.makespan,
        regret_half,
    )


def asha_busy(
    problems: Sequence[str], workers: Sequence[int], seeds: int, iterations: int, n_jobs: int = 1
) -> str:
    """ASHA's busy fraction and final regret with and without fitting the end of the budget
    (``AsynchronousHyperband.horizon``), side by side on the same seeds: a Markdown table.

    "drain" is ASHA as it was before (no horizon: any segment may start until the
    epochs are committed, and the long ones run on while other workers idle); "fit"
    is today's; "front" draws new configurations first while they can still reach R
    (``_asha_front``). Median [min, max] over ``seeds``, and the median regret when half
    the budget's epochs had come back; runs on ``n_jobs`` processes.
    """
    lines = [
        "| problem | W | ASHA | busy | final regret | makespan (s) | regret at half |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = ("drain", "fit", "front")
    cells = [(n, w, label) for n in problems for w in workers for label in labels]
    jobs = [(*cell, seed, iterations) for cell in cells for seed in range(seeds)]
    with ExitStack() as stack:
        if n_jobs > 1:
            pool = stack.enter_context(ProcessPoolExecutor(n_jobs))
            runs = list(pool.map(asha_busy_cell, jobs, chunksize=1))
        else:
            runs = list(map(asha_busy_cell, jobs))
    for index, (name, w, label) in enumerate(cells):
        traces = runs[index * seeds : (index + 1) * seeds]
        busy, regret, spans, half = ([t[i] for t in traces] for i in range(4))
        text = [f"{np.median(v):.3g} [{min(v):.3g}, {max(v):.3g}]" for v in (busy, regret)]
        lines.append(
            f"| {name} | {w} | {label} | {' | '.join(text)} | {np.median(spans):.1f} "
            f"| {np.median(half):.3g} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.asha_busy:
        print(f"ASHA's busy fraction: {machine()} at the start.", flush=True)
        iterations = args.iterations_of("branin")
        print(asha_busy(args.problems, args.workers, args.seeds, iterations, args.jobs))
        print(f"{machine()} at the end.")
        return 0
    print(f"Search quality: {machine()} at the start.", flush=True)
    if args.sign_test:
        return main_sign_test(args)
    runs = load_runs(args.runs)
    if args.fresh:  # forget the runs of the problems and methods selected, keep the others
        runs = {
            k: v
            for k, v in runs.items()
            if not (k.split("|")[0] in args.problems and k.split("|")[3] in args.methods)
        }
    if not args.report:
        jobs = []
        for name in args.problems:
            iterations = args.iterations_of(name)
            R = min(args.R, 27) if is_keras(name) else args.R
            for method in args.methods:
                for workers in args.workers:
                    for seed in range(args.seeds_of(name)):
                        job = (name, R, args.eta, method, workers, seed, iterations)
                        if key_of(job) not in runs:
                            jobs.append(job)
        began = time.time()
        for count, (job, record) in enumerate(run_cells(jobs, args.jobs), 1):
            runs[key_of(job)] = record
            if count % 20 == 0 or count == len(jobs):
                save_runs(args.runs, runs)
                print(
                    f"{count}/{len(jobs)} runs, {time.time() - began:.0f} s; {machine()}",
                    file=sys.stderr,
                    flush=True,
                )
        save_runs(args.runs, runs)
    args.plots.mkdir(parents=True, exist_ok=True)
    print(report(args, runs))
    print(f"Plots in {args.plots}; runs kept in {args.runs}. {machine()} at the end.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
