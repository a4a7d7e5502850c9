"""Samplers: where a new configuration comes from. Pure: no files, no processes.

``RandomSampler`` is phobbit's default: configuration (iteration, s, id) is a
pure function of (seed, iteration, s, id) (``Space.sample``), whatever else
happened in the run.

``TPESampler`` is BOHB-style model-based sampling (Falkner et al., ICML 2018):
it fits a tree-structured Parzen estimator (Optuna's ``TPESampler``,
multivariate, with a constant liar for configurations in flight) on every
configuration with a result, at any budget and of every iteration so far, once
there are enough of them (the number of hyperparameters + 1, BOHB's rule, and
at least 5: on fewer the model's draws were worse than random ones). It ranks
them as Hyperband judged them: by the promotions each won (told by
``SynchronousHyperband`` as it promotes, before the result at the new rung),
then by the most epochs it has a result at, then by its loss there; where BOHB
fits the largest budget with enough results, which at R=9 holds 5 of 17
configurations. It splits that ranking into the best 30% and the rest
(Optuna's 10% leaves a single good result of the few a small run has). The
kernels at the edge of the results reach to the range's end (Optuna's
``consider_endpoints``, hyperopt's rule: with a small run's few results, kernels
as wide as the inner neighbour only kept the draws on a narrow strip). It
keeps a share of random draws (drawn exactly as the random sampler would draw
that configuration):
0.15 while results are few (BOHB's 1/3 lost more paired seeds to random
Hyperband), falling to 0.1 as they grow. Until the model
has its results, a run defers the draws of all but its deepest bracket while
other work can keep the workers busy (``SynchronousHyperband.defers``).
Its draws depend on the results seen so far, so a run that samples with it
records every configuration it draws before it trains (``decisions.csv``); a
resumed run reuses those, and holds the ones that have no result yet as in
flight (liars), as the run that drew them did.

A draw is a function of the seed, its configuration's key, the results
observed and the configurations in flight, never of the order in which it
learnt them: Optuna is seeded from (seed, key), and each model draw builds a
study of its own from the results and the liars in key order, so the study
holds #results + #in flight trials, however many draws came before.

How phobbit's distributions map onto Optuna's: ``uniform`` and ``log-uniform``
to a float range (log for the second), ``randint`` to an integer range,
``log-randint`` to a log integer range, ``choice`` to a categorical over the
options' indices (options may be lists or dicts, which Optuna cannot hold), and
``normal`` to a float in (0, 1) read through the normal's inverse CDF: uniform
in that coordinate is the normal prior exactly, so random draws keep the prior
and the density model works on a bounded range (values beyond 1e-9 of either
tail are clipped); ``reverse-log-uniform`` likewise through the uniform it is
drawn from. A conditional hyperparameter is
given to Optuna only in the trials where it is active.

Example:
    >>> sampler = make_sampler("tpe", space, seed=0)
    >>> hparams = sampler.draw((0, 2, 5))          # configuration (0, 2, 5)
    >>> sampler.observe((0, 2, 5), hparams, epochs=3, loss=0.41)
"""

from __future__ import annotations

import math
import warnings
from statistics import NormalDist
from typing import Any

import numpy as np

from phobbit.core.records import SAMPLERS, ConfigKey
from phobbit.core.space import Hyperparameter, Space
from phobbit.errors import InputError

RANDOM_FRACTION = 0.15
"""The largest share of a TPE sampler's draws that are random. BOHB's 1/3 spent a third of
the few draws a small run has on random ones: at R=9, W=4, 50 paired seeds, the
all-fidelity model with 0.15 beat random Hyperband in 141 seeds and lost 69, with 1/3 in 115
and lost 71 (benchmarks/README.md, issue 21.2 (tpe3))."""
EI_CANDIDATES = 24
"""Candidates a TPE model draw scores by expected improvement."""
MIN_RANDOM_FRACTION = 0.1
"""The share of a TPE sampler's draws that stay random once results abound."""
GOOD_FRACTION = 0.3
"""The share of a TPE model's results that make its density of good configurations: of the
9 first-rung results of an R=9 bracket, 3 (Optuna's default, 10%, keeps 1, and its draws on
Branin were worse than random ones; see benchmarks/README.md, issue 21.2 (tpe2))."""
MIN_MODEL_POINTS = 5
"""The fewest results a TPE model is fit on, whatever the number of hyperparameters: two
good and three others by ``GOOD_FRACTION``."""
_TAIL = 1e-9
_STD_NORMAL = NormalDist()


def check_sampler(name: Any) -> str:
    """``name`` if it names a sampler; a one-line ``InputError`` otherwise (or if unusable)."""
    if name not in SAMPLERS:
        raise InputError(f"sampler must be one of {', '.join(map(repr, SAMPLERS))}, got {name!r}")
    if name == "tpe":
        _optuna()
    return name


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise InputError(
            'sampler="tpe" needs Optuna, which is not installed: pip install "phobbit[tpe]"'
        ) from None
    return optuna


class RandomSampler:
    """Configuration (iteration, s, id) from (seed, iteration, s, id) alone.

    Attributes:
        lazy: False: its draws depend on nothing but their key, so they need no record.
    """

    lazy = False
    name = "random"

    def __init__(self, space: Space, seed: int = 0) -> None:
        self.space, self.seed = space, seed

    def draw(self, key: ConfigKey) -> dict[str, Any]:
        """The configuration of ``key``."""
        return self.space.sample(self.seed, *key)

    informed = True
    """Whether a draw now would use what the run has learnt (always, as far as a random
    draw goes: it never waits for results)."""

    def observe(
        self, key: ConfigKey, hparams: dict[str, Any], epochs: int, loss: float | None
    ) -> None:
        """A result of configuration ``key`` after ``epochs`` epochs (None: it failed); ignored."""

    def replayed(self, key: ConfigKey, hparams: dict[str, Any] | None = None) -> None:
        """Configuration ``key`` (``hparams``) was drawn before this resume (its record is
        reused); ignored."""

    def promoted(self, key: ConfigKey, epochs: int) -> None:
        """Configuration ``key`` was promoted to train to ``epochs`` epochs; ignored."""


class TPESampler(RandomSampler):
    """BOHB-style model-based sampling through Optuna (see the module's docstring).

    Args:
        space: the search space.
        seed: the run's seed.
        random_fraction: the largest share of draws that are random (BOHB's is 1/3); it
            falls as results come in, to ``min_random_fraction``.
        min_points: results a model needs; by default the number of hyperparameters
            + 1 (BOHB's rule), at least ``MIN_MODEL_POINTS``.
        min_random_fraction: the share of random draws once results abound.

    Attributes:
        study_size: trials in the study of the last model draw: the results it was fit
            on, the configurations in flight (its liars) and the draw itself (0 before
            the first model draw).
    """

    lazy = True
    name = "tpe"

    def __init__(
        self,
        space: Space,
        seed: int = 0,
        random_fraction: float = RANDOM_FRACTION,
        min_points: int | None = None,
        min_random_fraction: float = MIN_RANDOM_FRACTION,
    ) -> None:
        super().__init__(space, seed)
        self._optuna = _optuna()
        self.random_fraction = random_fraction
        self.min_random_fraction = min(min_random_fraction, random_fraction)
        self.min_points = (
            min_points if min_points is not None else max(len(space) + 1, MIN_MODEL_POINTS)
        )
        self.draws = 0  # draws made or replayed so far
        self.study_size = 0
        self._observed: dict[int, dict[ConfigKey, tuple[dict[str, Any], float]]] = {}
        self._promotions: dict[ConfigKey, set[int]] = {}  # the epochs each was promoted to
        self._with_result: set[ConfigKey] = set()  # the keys of ``_observed``, all budgets
        self._pending: dict[ConfigKey, dict[str, Any]] = {}  # drawn, no result yet
        self._distributions = {hp.name: _distribution(self._optuna, hp) for hp in space.hparams}

    def replayed(self, key: ConfigKey, hparams: dict[str, Any] | None = None) -> None:
        """Configuration ``key`` was drawn before this resume: in flight (a liar) until
        its result is observed, as it was in the run that drew it."""
        self.draws += 1
        if hparams is not None:
            self._pending[key] = hparams

    def observe(
        self, key: ConfigKey, hparams: dict[str, Any], epochs: int, loss: float | None
    ) -> None:
        """A result of configuration ``key``: its best loss after ``epochs`` epochs, or None
        when it failed (it is no longer in flight; a failure is not modelled)."""
        self._pending.pop(key, None)
        if loss is None or not math.isfinite(loss):
            return
        self._observed.setdefault(epochs, {})[key] = (hparams, float(loss))
        self._with_result.add(key)

    def promoted(self, key: ConfigKey, epochs: int) -> None:
        """Configuration ``key`` was promoted to train to ``epochs`` epochs: before its
        result there it already ranks above every configuration promoted fewer times (the
        promotion is a function of the results, so a resume learns it again)."""
        self._promotions.setdefault(key, set()).add(epochs)

    def draw(self, key: ConfigKey) -> dict[str, Any]:
        """A new configuration for ``key``: random while the results are fewer than
        ``min_points`` and with a share that falls as they grow, else the model's pick.

        A function of (seed, key, the results observed, the configurations in flight),
        none of them taken in the order it learnt them, so a resumed run that has
        observed the same results draws what the uninterrupted one did.
        """
        self.draws += 1
        points = self._model_points()
        coin = np.random.default_rng([self.seed, *key, 0x7E5]).random()
        if not points or coin < self._random_share(len(points)):
            hparams = self.space.sample(self.seed, *key)
        else:
            hparams = self._ask(key, points)
        self._pending[key] = hparams
        return hparams

    @property
    def informed(self) -> bool:
        """Whether a model can be fit: ``min_points`` configurations have a result."""
        # Asked for each first segment a run dispatches: counted as results come, not rebuilt.
        return len(self._with_result) >= self.min_points

    def _random_share(self, points: int) -> float:
        """The share of random draws when the model has ``points`` results:
        ``random_fraction`` while they are few, then min_points / points once that is
        smaller (a sharper model earns more of the draws), never below the floor."""
        share = self.min_points / max(points, 1)
        return min(self.random_fraction, max(self.min_random_fraction, share))

    def _best_results(self) -> dict[ConfigKey, tuple[int, dict[str, Any], float]]:
        """Each configuration with a result: (its most epochs with a result, its
        hyperparameters, its loss there)."""
        best: dict[ConfigKey, tuple[int, dict[str, Any], float]] = {}
        for epochs in sorted(self._observed):
            for key, (hparams, loss) in self._observed[epochs].items():
                best[key] = (epochs, hparams, loss)
        return best

    def _model_points(self) -> list[tuple[ConfigKey, dict[str, Any], float]]:
        """What the model is fit on, ordered by configuration: every configuration with a
        result, of every iteration so far, valued by its place in the ranking "survived
        most, and best there": the promotions it won, then the most epochs it has a result
        at, then its loss there. Hyperband's promotions are its verdicts, so a promoted
        configuration ranks above every one that was not, whatever their losses at
        different budgets, even before its result at the rung it was promoted to; BOHB's
        model of the largest budget with enough results saw only the few that reached it
        (5 of 17 at R=9) and, on a lower budget, dropped who was promoted. Counting
        promotions rather than epochs keeps the straight-to-R bracket's random
        configurations, which reach R unselected, below those selected twice (sign test,
        benchmarks/README.md, issue 21.2 (tpe3)). Empty while fewer than ``min_points``
        configurations have a result."""
        best = self._best_results()
        if len(best) < self.min_points:
            return []
        order = sorted(
            best,
            key=lambda k: (
                -len(self._promotions.get(k, ())),
                -best[k][0],
                best[k][2],
                k,
            ),
        )
        place = {k: float(i) for i, k in enumerate(order)}
        return [(k, best[k][1], place[k]) for k in sorted(best)]

    def _ask(
        self, key: ConfigKey, points: list[tuple[ConfigKey, dict[str, Any], float]]
    ) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate TPE is "experimental"
            return self._ask_optuna(key, points)

    def _ask_optuna(
        self, key: ConfigKey, points: list[tuple[ConfigKey, dict[str, Any], float]]
    ) -> dict[str, Any]:
        """The model's pick from a study of its own: ``points`` as complete trials and the
        configurations in flight as running ones (the constant liar), so its size is
        bounded by the results and the workers, never by the draws made so far."""
        optuna = self._optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        trial = optuna.trial
        sampler = optuna.samplers.TPESampler(
            seed=int(np.random.default_rng([self.seed, *key, 0x0B0]).integers(2**31)),
            multivariate=True,
            constant_liar=True,
            n_startup_trials=0,
            # Optuna's 24: on the all-fidelity model, 64 (a greedier pick of the density
            # ratio) won fewer paired seeds at R=9 (benchmarks/README.md, issue 21.2 (tpe3)).
            n_ei_candidates=EI_CANDIDATES,
            gamma=_good_points,
            # A kernel at the edge of the results reaches as far as the range's end (as
            # hyperopt's), not only to its inner neighbour: with the few results of a small
            # run, the outermost good ones kept draws on a narrow strip, which on the Keras
            # surrogate's grid drew the same grid points again (benchmarks/README.md, 21.2
            # (tpe4)).
            consider_endpoints=True,
        )
        study = optuna.create_study(direction="minimize", sampler=sampler)
        study.add_trials(
            [
                trial.create_trial(
                    params=self._to_optuna(hparams), distributions=self._dists(hparams), value=v
                )
                for _, hparams, v in points
            ]
            + [
                trial.create_trial(
                    params=self._to_optuna(self._pending[k]),
                    distributions=self._dists(self._pending[k]),
                    state=trial.TrialState.RUNNING,
                )
                for k in sorted(self._pending)
            ]
        )
        asked = study.ask(self._distributions)
        self.study_size = len(study.get_trials(deepcopy=False))
        # Optuna proposes every hyperparameter; a conditional one is kept only when active.
        picked = {hp.name: _from_optuna(hp, asked.params[hp.name]) for hp in self.space.hparams}
        return self.space.prune(picked)

    def _dists(self, hparams: dict[str, Any]) -> dict[str, Any]:
        """The distributions of the hyperparameters ``hparams`` holds (an inactive
        conditional one is absent: Optuna's TPE models each from the trials that hold it)."""
        return {n: d for n, d in self._distributions.items() if n in hparams}

    def _to_optuna(self, hparams: dict[str, Any]) -> dict[str, Any]:
        return {
            hp.name: _to_optuna(hp, hparams[hp.name])
            for hp in self.space.hparams
            if hp.name in hparams
        }


def make_sampler(name: str, space: Space, seed: int = 0) -> RandomSampler:
    """The sampler called ``name`` (``"random"`` or ``"tpe"``)."""
    check_sampler(name)
    return TPESampler(space, seed) if name == "tpe" else RandomSampler(space, seed)


def _good_points(n: int) -> int:
    """How many of ``n`` results the model counts as good (Optuna's ``gamma``): 30%, at
    least one, at most Optuna's 25."""
    return max(1, min(math.ceil(GOOD_FRACTION * n), 25))


def _distribution(optuna: Any, hp: Hyperparameter) -> Any:
    dist, args = hp.distribution, hp.distr_args
    d = optuna.distributions
    if dist == "uniform":
        return d.FloatDistribution(float(args[0]), float(args[1]))
    if dist == "log-uniform":
        return d.FloatDistribution(float(args[0]), float(args[1]), log=True)
    if dist == "randint":
        return d.IntDistribution(int(args[0]), int(args[1]))
    if dist == "log-randint":
        return d.IntDistribution(int(args[0]), int(args[1]), log=True)
    if dist in ("normal", "reverse-log-uniform"):
        return d.FloatDistribution(_TAIL, 1 - _TAIL)
    return d.CategoricalDistribution(list(range(len(args))))


def _to_optuna(hp: Hyperparameter, value: Any) -> Any:
    """A value of ``hp`` in the coordinates of its Optuna distribution."""
    dist, args = hp.distribution, hp.distr_args
    if dist == "normal":
        u = _STD_NORMAL.cdf((float(value) - args[0]) / args[1])
        return min(max(u, _TAIL), 1 - _TAIL)
    if dist == "choice":
        thawed = [_json_shape(a) for a in args]
        return thawed.index(_json_shape(value)) if _json_shape(value) in thawed else 0
    if dist in ("randint", "log-randint"):
        return int(value)
    if dist == "reverse-log-uniform":  # the uniform coordinate it is drawn from
        lo, hi = float(args[0]), float(args[1])
        u = 1 - math.log(max(hi + lo - float(value), lo) / lo) / math.log(hi / lo)
        return min(max(u, _TAIL), 1 - _TAIL)
    lo, hi = float(args[0]), float(args[1])
    return min(max(float(value), lo), hi)


def _from_optuna(hp: Hyperparameter, value: Any) -> Any:
    """The value of ``hp`` that Optuna's ``value`` stands for."""
    dist, args = hp.distribution, hp.distr_args
    if dist == "normal":
        return float(args[0] + args[1] * _STD_NORMAL.inv_cdf(float(value)))
    if dist == "choice":
        return _json_shape(args[int(value)])
    if dist in ("randint", "log-randint"):
        return int(value)
    if dist == "reverse-log-uniform":
        lo, hi = float(args[0]), float(args[1])
        return min(max(hi + lo - lo * (hi / lo) ** (1 - float(value)), lo), hi)
    return float(value)


def _json_shape(value: Any) -> Any:
    """Tuples as lists, dicts as plain dicts: how a choice option reads back from a row."""
    if isinstance(value, (list, tuple)):
        return [_json_shape(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_shape(v) for k, v in value.items()}
    return value
