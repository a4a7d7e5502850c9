"""The search-quality benchmark: its test functions' optima, and its quick path end to end."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "search_quality.py"


@pytest.fixture(scope="module")
def sq():
    spec = importlib.util.spec_from_file_location("search_quality", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["search_quality"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("search_quality", None)


def _uniform_points(space, count, seed=0):
    rng = np.random.default_rng(seed)
    return [{hp.name: hp.sample(rng) for hp in space} for _ in range(count)]


@pytest.mark.parametrize("name", ["branin", "hartmann6"])
def test_known_optimum_is_the_full_fidelity_minimum(sq, name):
    problem = sq.make_problem(name, R=27)
    if name == "branin":
        argmins = [{"x1": a, "x2": b} for a, b in sq.BRANIN_ARGMIN]
    else:
        argmins = [{f"x{i + 1}": v for i, v in enumerate(sq.HARTMANN6_ARGMIN)}]
    for point in argmins:
        # At R epochs the loss is the test function itself: no bias, no noise.
        assert problem.curve(point, problem.R) == pytest.approx(problem.optimum, abs=1e-4)
        assert problem.objective(point) == pytest.approx(problem.optimum, abs=1e-4)
    names = [hp.name for hp in problem.space]
    bounds = [hp.distr_args for hp in problem.space]
    scipy_optimize = pytest.importorskip("scipy.optimize")
    # Nothing in the domain beats it: neither 20,000 random points nor local searches
    # started from the best of them.
    samples = _uniform_points(problem.space, 20_000)
    values = [problem.objective(x) for x in samples]
    assert min(values) >= problem.optimum - 1e-6
    for start in np.argsort(values)[:5]:
        found = scipy_optimize.minimize(
            lambda v: problem.objective(dict(zip(names, v))),
            [samples[start][n] for n in names],
            bounds=bounds,
            method="L-BFGS-B",
        )
        assert found.fun >= problem.optimum - 1e-4


@pytest.mark.parametrize("name", ["branin", "hartmann6"])
def test_fidelity_biases_and_blurs_below_R_only(sq, name):
    problem = sq.make_problem(name, R=27)
    points = _uniform_points(problem.space, 50, seed=1)
    exact = [problem.objective(x) for x in points]
    for epoch in (1, 3, 9):
        low = [problem.curve(x, epoch) for x in points]
        assert low != pytest.approx(exact)
        # A function of configuration and epoch alone, as a resumed configuration needs.
        assert low == [problem.curve(dict(x), epoch) for x in points]
    errors = [
        np.mean([abs(problem.curve(x, e) - f) for x, f in zip(points, exact)])
        for e in (1, 3, 9, 27)
    ]
    assert errors[-1] == 0 and errors == sorted(errors, reverse=True)


def test_quick_run_records_every_cell_within_budget(sq, tmp_path):
    runs, plots = tmp_path / "runs.json", tmp_path / "plots"
    methods = "hyperband,random search"
    code = sq.main(
        [
            "--quick",
            "--problems",
            "branin",
            "--methods",
            methods,
            "--runs",
            str(runs),
            "--plots",
            str(plots),
        ]
    )
    assert code == 0
    kept = json.loads(runs.read_text())
    args = sq.parse(["--quick"])
    limit = sq.budget(27, 3, args.iterations)
    problem = sq.make_problem("branin", R=27)
    finals = {}
    for method in methods.split(","):
        for workers in args.workers:
            for seed in range(args.seeds):
                record = kept[sq.key_of(("branin", 27, 3, method, workers, seed, 2))]
                points = record["points"]
                values = [math.inf if p[2] is None else p[2] for p in points]
                assert values == sorted(values, reverse=True)  # the incumbent only improves
                assert min(values) >= problem.optimum - 1e-9
                assert record["epochs"] <= limit
                assert 0 < record["busy"] <= 1 + 1e-9
                assert [p[0] for p in points] == sorted(p[0] for p in points)
                finals[(method, workers, seed)] = values[-1]
    # Random Hyperband finds the same configurations whatever the number of workers.
    for seed in range(args.seeds):
        assert finals[("hyperband", 1, seed)] == finals[("hyperband", 4, seed)]
    # Running again runs nothing new: the runs kept answer.
    before = runs.read_text()
    assert (
        sq.main(
            [
                "--quick",
                "--problems",
                "branin",
                "--methods",
                methods,
                "--runs",
                str(runs),
                "--plots",
                str(plots),
            ]
        )
        == 0
    )
    assert json.loads(runs.read_text()) == json.loads(before)


def test_quick_run_draws_plots(sq, tmp_path):
    pytest.importorskip("matplotlib")
    plots = tmp_path / "plots"
    sq.main(
        [
            "--quick",
            "--problems",
            "branin",
            "--methods",
            "random search",
            "--runs",
            str(tmp_path / "runs.json"),
            "--plots",
            str(plots),
        ]
    )
    assert {p.name for p in plots.iterdir()} == {
        "search_quality_branin_epochs.png",
        "search_quality_branin_time.png",
    }


def test_unknown_problem_is_refused(sq):
    with pytest.raises(SystemExit):
        sq.parse(["--problems", "rosenbrock"])


def test_keras_surrogate_trains_a_configuration_as_its_nearest_grid_point(sq):
    if not sq.KERAS_CURVES.is_file():
        pytest.skip("benchmarks/keras_curves.json is not built")
    problem = sq.make_problem("keras-mlp")
    curve = problem.curve
    grid = dict(curve.grid)
    names = list(grid)
    for index, values in enumerate(itertools.product(*grid.values())):
        point = dict(zip(names, values))
        assert curve.index(point) == index
        assert curve(point, 5) == curve.curves[index][4]
    nudged = {"dropout1": 0.3, "dropout2": 0.05, "activation": "tanh", "learning_rate": 4e-3}
    nearest = {"dropout1": 0.25, "dropout2": 0.0, "activation": "tanh", "learning_rate": 3.16e-3}
    assert curve.index(nudged) == curve.index(nearest)
    assert problem.optimum == min(min(c[: problem.R]) for c in curve.curves)


def test_smooth_keras_surrogate_interpolates_between_grid_points(sq):
    if not sq.KERAS_CURVES.is_file():
        pytest.skip("benchmarks/keras_curves.json is not built")
    smooth, nearest = sq.make_problem("keras-mlp-smooth", 9), sq.make_problem("keras-mlp", 9)
    grid = dict(smooth.curve.grid)
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        assert smooth.curve(point, 4) == pytest.approx(nearest.curve(point, 4), abs=1e-12)
    # Halfway between two dropouts (and a log-halfway rate) is the mean of the two curves.
    a = {"dropout1": 0.0, "dropout2": 0.25, "activation": "relu", "learning_rate": 1e-3}
    b = {**a, "dropout1": 0.25}
    assert smooth.curve({**a, "dropout1": 0.125}, 3) == pytest.approx(
        (nearest.curve(a, 3) + nearest.curve(b, 3)) / 2
    )
    c = {**a, "learning_rate": 3.16e-3}
    mid = {**a, "learning_rate": math.sqrt(1e-3 * 3.16e-3)}
    assert smooth.curve(mid, 3) == pytest.approx((nearest.curve(a, 3) + nearest.curve(c, 3)) / 2)
    # Two configurations within half a grid step are one grid point to the nearest-point
    # surrogate, two losses to the smooth one.
    near = {**a, "dropout1": 0.05}
    assert nearest.curve(near, 3) == nearest.curve(a, 3)
    assert smooth.curve(near, 3) != smooth.curve(a, 3)
    assert smooth.optimum == nearest.optimum
    assert "keras-mlp-smooth" not in sq.parse([]).problems
