"""Plain value objects that cross module boundaries: no I/O, no processes, no frameworks.

A ``Segment`` is one unit of work (a configuration trained through one rung),
a ``SegmentResult`` what training it gave (one row of ``results.csv``), a
``Status`` whether it succeeded; the key types name a segment, a rung and a
configuration. ``RunSettings`` is what ``run.json`` records: the settings that
make a run's rows mean what they mean, validated as one typed object whether
they come from the caller or from a file. ``Tuning`` is what a bracket state
machine, a plan and the serial reference are built from: those settings and
where segments' checkpoints go. Everything here pickles, compares and hashes by
its fields.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from phobbit.core.objective import DIRECTIONS, Objective
from phobbit.core.schedule import brackets, validate
from phobbit.core.space import Space
from phobbit.core.units import check_int
from phobbit.errors import InputError, RepositoryError

SegmentKey = tuple[int, int, int, int]
"""(iteration, bracket s, configuration id, rung): what identifies a segment."""
RungKey = tuple[int, int, int]
"""(iteration, bracket s, rung): what identifies a rung of one iteration's bracket."""
ConfigKey = tuple[int, int, int]
"""(iteration, bracket s, configuration id): what identifies a configuration."""
CheckpointOf = Callable[[int, int, int], str]
"""(iteration, bracket s, configuration id) -> the path stem of its checkpoint."""


class Status(str, Enum):
    """How a segment ended; a ``str``, so rows and tables read ``ok`` and ``failed``.

    ``enum.StrEnum`` would do, but it needs Python 3.11 and phobbit runs on 3.10.
    """

    OK = "ok"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def config_name(iteration: int, s: int, config_id: int) -> str:
    """The file-name stem of a configuration's checkpoint: ``<iteration>-<s>-<id>``."""
    return f"{iteration}-{s}-{config_id}"


# Failed rows that older versions wrote for a checkpoint they could not use: no fault of
# the configuration, so not final; the segment is trained again (phobbit now retrains such a
# checkpoint itself, and never fails the configuration for it).
_CHECKPOINT_FAILURE = re.compile(
    r"^RuntimeError: checkpoint .* (is unreadable \(|is missing; expected epoch "
    r"|holds \d+ val losses for |holds epoch \d+, (expected|beyond) )"
)


STOPPED_EARLY = "stopped early by a callback"
"""How a row's note begins when a callback (``EarlyStopping``) ended its training."""


@dataclass(frozen=True)
class SegmentResult:
    """One finished segment: a configuration trained from ``start_epoch`` to ``epochs``.

    ``val_loss`` is the lowest validation loss the configuration has seen so far
    (the reducer's ranking value); ``status`` is a ``Status`` (a string given
    for it is converted), and ``error`` says why in one line when it failed.
    ``note`` says why the segment retrained epochs (its checkpoint was missing or
    unreadable), or that a callback stopped it early (``STOPPED_EARLY``), or is
    empty. ``s`` is the bracket's s (Hobbit's ``Run``). ``objective`` is the run's
    objective at the configuration's best epoch so far (by the objective), and
    ``val_loss`` is then that epoch's val loss; with the default objective both
    are the lowest val loss. A row that a callback stopped early has ``epochs``
    the epochs it really trained.

    Three fields tell the scheduler about models kept warm (``phobbit.execution.warm``) and
    are not written to ``results.csv`` (nor compared: a row read back equals the
    one returned): ``started_warm``, the segment went on from the model its
    worker held in memory; ``warm_held``, the checkpoints (absolute path stems)
    whose models that worker holds after it; ``warm_worker``, that worker as
    ``(host, pid)``.

    ``metrics``, what the configuration's scoring epoch logged (``loss``, ``val_loss``,
    each compiled metric and its ``val_``), travels in memory from the worker to the
    displays alone: ``epochs.csv`` keeps every epoch's, so it is neither written to
    ``results.csv`` nor compared; a row read back has none.

    Raises:
        ValueError: for a ``status`` that is no ``Status``.
    """

    iteration: int
    s: int
    id: int
    rung: int
    start_epoch: int
    epochs: int
    val_loss: float | None
    last_val_loss: float | None
    status: Status
    error: str
    hparams: dict[str, Any] = field(hash=False)
    gpu: str = ""
    pid: int = 0
    host: str = ""
    start: float = 0.0
    end: float = 0.0
    note: str = ""
    objective: float | None = None
    started_warm: bool = field(default=False, compare=False)
    warm_held: tuple[str, ...] = field(default=(), compare=False)
    warm_worker: tuple[str, int] | None = field(default=None, compare=False)
    metrics: dict[str, float] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))

    @property
    def stopped_early(self) -> bool:
        """Whether a callback (``EarlyStopping``) ended the configuration's training here."""
        return STOPPED_EARLY in self.note

    @property
    def retrained(self) -> bool:
        """Whether the segment retrained epochs (its checkpoint was missing or unreadable)."""
        return bool(self.note) and not self.note.startswith(STOPPED_EARLY)

    @property
    def key(self) -> SegmentKey:
        """(iteration, s, id, rung): what identifies a segment."""
        return (self.iteration, self.s, self.id, self.rung)

    @property
    def ok(self) -> bool:
        """Whether the segment trained without failing."""
        return self.status is Status.OK

    @property
    def final(self) -> bool:
        """False for a failed row whose cause lay outside user code: it is trained again."""
        return self.ok or not _CHECKPOINT_FAILURE.match(self.error)


@dataclass(frozen=True)
class Segment:
    """One unit of work: train configuration ``id`` of bracket ``s`` through ``rung``.

    It is plain data, so it pickles cheaply and can be logged. It hashes by its
    identity and epochs (not by ``hparams``, a dict), so it can be a dict key or
    a set member; equal segments have equal hparams too.

    Attributes:
        iteration: the Hyperband iteration.
        s: the bracket's s (Hobbit's ``Run``).
        id: the configuration's index in its bracket.
        rung: the rung this segment trains the configuration through.
        hparams: the configuration.
        start_epoch: epochs already trained (resumed from ``checkpoint``).
        epochs: the total epochs the configuration has trained when it ends.
        checkpoint: the path stem of the configuration's checkpoint.
        prior_best: the best score (``Objective.row_score``: its lowest val loss
            by default) of the configuration's earlier rungs.
        run_id: the tuning run's id (``RunSettings.run_id``), which the
            checkpoint's files must record (``phobbit.storage.checkpoints.Identity``);
            None for a run whose ``run.json`` names none. Not compared: every
            segment of a run carries the same.
    """

    iteration: int
    s: int
    id: int
    rung: int
    hparams: dict[str, Any] = field(hash=False)
    start_epoch: int
    epochs: int
    checkpoint: str
    prior_best: float | None = None
    run_id: str | None = field(default=None, compare=False)

    @property
    def key(self) -> SegmentKey:
        """(iteration, s, id, rung): what identifies a segment."""
        return (self.iteration, self.s, self.id, self.rung)

    @property
    def rung_key(self) -> RungKey:
        """(iteration, s, rung): the rung this segment belongs to."""
        return (self.iteration, self.s, self.rung)

    def result(self, **outcome: Any) -> SegmentResult:
        """The row of this segment with ``outcome`` (val_loss, status, error, gpu, ...)."""
        return SegmentResult(
            iteration=self.iteration,
            s=self.s,
            id=self.id,
            rung=self.rung,
            start_epoch=self.start_epoch,
            epochs=self.epochs,
            hparams=self.hparams,
            **outcome,
        )


_RUN_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
ALGORITHMS = ("hyperband", "asha")
SAMPLERS = ("random", "tpe")
_OPTIONAL = {
    "objective": "val_loss",
    "direction": "min",
    "algorithm": "hyperband",
    "sampler": "random",
    "gpus_per_trial": 1,
}
"""Settings ``run.json`` holds only when they are not these defaults (so files of earlier
versions, which lack them, read as before)."""


@dataclass(frozen=True)
class EpochRow:
    """One epoch a segment trained: a row of ``epochs.csv``.

    ``epoch`` counts from 1 for the configuration (a segment of rung 1 that
    trains epochs 3 to 9 writes epochs 3 .. 9); ``metrics`` holds what the epoch
    logged (``loss``, ``val_loss``, every compiled metric and its ``val_``).
    """

    iteration: int
    s: int
    id: int
    rung: int
    epoch: int
    metrics: dict[str, float] = field(hash=False)

    @property
    def key(self) -> tuple[int, int, int, int]:
        """(iteration, s, id, epoch): one epoch of one configuration."""
        return (self.iteration, self.s, self.id, self.epoch)


MAX_SEGMENTS = 1_000_000
"""The most segments a run may plan: a plan holds every configuration, so more would
never finish sampling, let alone training (R=81, eta=3 plans 206 per iteration)."""


@dataclass(frozen=True)
class RunSettings:
    """The settings of a run: a repository resumes only a run with equal settings.

    Attributes:
        R: the most epochs a configuration is trained (an integer >= 1).
        eta: the cut factor (an integer >= 2).
        seed: the sampling seed (an integer >= 0).
        iterations: Hyperband iterations (an integer >= 1).
        space_fingerprint: ``space.fingerprint()``, kept in ``run.json`` for people
            and tools that compare runs without parsing the space.
        space: the search space.
        objective: the metric that ranks configurations (``val_loss`` by default).
        direction: ``"min"`` or ``"max"``: whether the objective is minimised.
        algorithm: ``"hyperband"`` or ``"asha"``.
        sampler: ``"random"`` or ``"tpe"``. ``run.json`` holds these two only when
            they are not the defaults, so files of earlier versions read as before.
        gpus_per_trial: GPUs each trial trains on (``MirroredStrategy`` past 1): a
            model trained on 2 replicas is not the one trained on 1, so a resume must
            match it. Written only when it is not 1; a ``run.json`` without it reads as 1.
        run_id: what names this tuning run apart from every other, even one of the
            same settings in another folder or begun again in the same one: a
            random hex string ``Repository.create`` writes once; every checkpoint
            records it. None for a run begun by a phobbit that wrote none (its
            ``run.json`` is kept as it is, and its checkpoints are checked by
            configuration and hyperparameters alone). Not compared: it names a
            run, it is no setting (the settings a caller gives have none yet).

    Raises:
        InputError: (a ``ValueError``) naming the field that is wrong, including a
            run of more than ``MAX_SEGMENTS`` segments.

    Example:
        >>> settings = RunSettings.of(Space(hparams), R=9, eta=3, seed=0, iterations=1)
        >>> RunSettings.from_dict(settings.to_dict()) == settings
        True
    """

    R: int
    eta: int
    seed: int
    iterations: int
    space_fingerprint: str
    space: Space
    objective: str = "val_loss"
    direction: str = "min"
    algorithm: str = "hyperband"
    sampler: str = "random"
    gpus_per_trial: int = 1
    run_id: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        validate(self.R, self.eta)
        if self.run_id is not None and not (
            isinstance(self.run_id, str) and _RUN_ID.fullmatch(self.run_id)
        ):
            raise InputError(
                f"run_id must be 1 to 64 letters, digits, '-' or '_', got {self.run_id!r}"
            )
        Objective(self.objective, self.direction)  # raises for a bad name or direction
        for name, known in (("algorithm", ALGORITHMS), ("sampler", SAMPLERS)):
            if getattr(self, name) not in known:
                raise InputError(
                    f"{name} must be one of {', '.join(map(repr, known))}, "
                    f"got {getattr(self, name)!r}"
                )
        check_int("seed", self.seed, minimum=0)
        check_int("iterations", self.iterations, minimum=1)
        check_int("gpus_per_trial", self.gpus_per_trial, minimum=1)
        if not isinstance(self.space, Space):
            raise InputError(f"space must be a phobbit Space, got {type(self.space).__name__}")
        if self.space_fingerprint != self.space.fingerprint():
            raise InputError(
                f"space_fingerprint {self.space_fingerprint!r} is not that of the space "
                f"({self.space.fingerprint()!r})"
            )
        for name in ("R", "eta", "seed", "iterations"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.segments() > MAX_SEGMENTS:
            raise InputError(
                f"R={self.R}, eta={self.eta} and iterations={self.iterations} make more than "
                f"{MAX_SEGMENTS:,} segments, the most a run may plan; use a smaller R, a "
                "larger eta or fewer iterations"
            )

    @classmethod
    def of(
        cls,
        space: Space,
        R: int,
        eta: int,
        seed: int,
        iterations: int = 1,
        objective: Objective | None = None,
        algorithm: str = "hyperband",
        sampler: str = "random",
        gpus_per_trial: int = 1,
    ) -> RunSettings:
        """The settings of a run of ``space``, with its fingerprint filled in."""
        goal = objective or Objective()
        return cls(
            R,
            eta,
            seed,
            iterations,
            space.fingerprint(),
            space,
            objective=goal.name,
            direction=goal.direction,
            algorithm=algorithm,
            sampler=sampler,
            gpus_per_trial=gpus_per_trial,
        )

    @property
    def goal(self) -> Objective:
        """The run's objective as an ``Objective``."""
        return Objective(self.objective, self.direction)

    def segments(self) -> int:
        """Segments the run trains at most, or ``MAX_SEGMENTS + 1`` when that is more."""
        # The widest bracket alone starts eta**s_max > R / eta configurations: an
        # absurd R is refused before its brackets are built.
        if self.R > self.eta * MAX_SEGMENTS:
            return MAX_SEGMENTS + 1
        per_iteration = sum(r.n for b in brackets(self.R, self.eta) for r in b.rungs)
        return min(per_iteration * self.iterations, MAX_SEGMENTS + 1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the settings: what ``run.json`` holds.

        The objective (with its direction), the algorithm, the sampler and the GPUs per
        trial are written only when they are not the defaults, so that the run.json of
        such a run is what older versions wrote and read; the run id when there is one (an older
        version refuses such a run.json, naming the key it does not know).
        """
        data: dict[str, Any] = {
            "R": self.R,
            "eta": self.eta,
            "seed": self.seed,
            "iterations": self.iterations,
            "space_fingerprint": self.space_fingerprint,
            "space": self.space.to_list(),
            **{
                name: getattr(self, name)
                for name in _OPTIONAL
                if getattr(self, name) != _OPTIONAL[name]
            },
        }
        if not self.goal.is_val_loss:
            data.update(objective=self.objective, direction=self.direction)
        if self.run_id is not None:
            data["run_id"] = self.run_id
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "run.json") -> RunSettings:
        """The inverse of :meth:`to_dict`, checking every field of what a file holds.

        Keys it does not know are refused, not ignored: a setting from a newer
        phobbit (or a hand edit) may change what the rows mean, and a resume that
        ignored it would mix two runs.

        Args:
            data: what ``json.loads`` gave for the file.
            source: the file, named in messages.

        Raises:
            RepositoryError: naming ``source``, the field and what is wrong.
        """
        names = [f.name for f in fields(cls)]
        remedy = "restore it or use another repository folder"
        if not isinstance(data, dict):
            raise RepositoryError(f"{source} does not hold a phobbit run; {remedy}")
        # Written before objectives existed: its objective was the lowest val loss.
        missing = [n for n in names if n not in data and n not in _OPTIONAL and n != "run_id"]
        if missing:
            raise RepositoryError(f"{source} lacks {', '.join(missing)}; {remedy}")
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise RepositoryError(
                f"{source} holds settings this phobbit does not know ({', '.join(unknown)}); "
                f"it was edited or written by a newer phobbit: {remedy}"
            )
        try:
            if not isinstance(data["space"], list) or not all(
                isinstance(hp, dict) for hp in data["space"]
            ):
                raise InputError("space must be a list of hyperparameters")
            space = Space.from_list(data["space"])
            if data.get("direction", "min") not in DIRECTIONS:
                raise InputError(f"direction must be min or max, got {data['direction']!r}")
            values = {n: data[n] for n in names if n != "space" and n in data}
            return cls(space=space, **values)
        except (InputError, KeyError, TypeError) as exc:
            what = f"a hyperparameter lacks {exc}" if isinstance(exc, KeyError) else str(exc)
            raise RepositoryError(f"{source} is not valid: {what}; {remedy}") from None


@dataclass(frozen=True)
class Tuning:
    """What the brackets of a run are built from: its settings and its checkpoints' names.

    The state machines (``SynchronousHyperband``, ``AsynchronousHyperband``), the
    ``Plan`` and the serial reference all take one, so that the search space, R,
    eta, seed, iterations and objective travel together, validated once by
    ``RunSettings``. The settings' algorithm and sampler name the run for
    ``run.json``; the machine that reads a ``Tuning`` is chosen by its caller.

    Attributes:
        settings: the run's settings (what ``run.json`` records).
        checkpoint_of: (iteration, s, id) -> the checkpoint path stem a segment
            carries (the repository knows where checkpoints live:
            ``Repository.checkpoint_stem``); by default the bare ``config_name``.

    Example:
        >>> tuning = Tuning.of(space, R=9, eta=3, seed=0)
        >>> plan = Plan(tuning, workers=4)
    """

    settings: RunSettings
    checkpoint_of: CheckpointOf = config_name

    @classmethod
    def of(
        cls,
        space: Space,
        R: int,
        eta: int,
        seed: int = 0,
        iterations: int = 1,
        objective: Objective | None = None,
        checkpoint_of: CheckpointOf = config_name,
    ) -> Tuning:
        """The tuning of ``space`` with these settings (Hyperband, random sampling).

        Raises:
            InputError: (a ``ValueError``) naming the setting that is wrong.
        """
        return cls(RunSettings.of(space, R, eta, seed, iterations, objective), checkpoint_of)

    @property
    def space(self) -> Space:
        """The search space configurations are drawn from."""
        return self.settings.space

    @property
    def R(self) -> int:
        """The most epochs a configuration is trained."""
        return self.settings.R

    @property
    def eta(self) -> int:
        """The cut factor."""
        return self.settings.eta

    @property
    def seed(self) -> int:
        """Configuration (iteration, s, id) is drawn from (seed, iteration, s, id)."""
        return self.settings.seed

    @property
    def iterations(self) -> int:
        """How many Hyperband iterations, each with its own configurations."""
        return self.settings.iterations

    @property
    def objective(self) -> Objective:
        """What ranks configurations (the lowest val loss by default)."""
        return self.settings.goal
