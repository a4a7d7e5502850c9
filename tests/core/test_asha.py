"""ASHA, TPE sampling and budgets: the promotion rule, decisions recorded before they train,
exact resumes after a kill, and budgets that stop and extend. No TensorFlow: the synthetic
trainable on the simulated executor."""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import statistics
import sys
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import space
from synthetic import failing_curve, x_curve

from phobbit import ParallelHyperband
from phobbit.core.asha import AsynchronousHyperband, asha_budget_epochs
from phobbit.core.budget import Budget, format_duration, parse_duration
from phobbit.core.records import RunSettings, Segment, Status, Tuning, config_name
from phobbit.core.samplers import RandomSampler, TPESampler
from phobbit.core.schedule import brackets
from phobbit.core.space import Hyperparameter, Space
from phobbit.errors import InputError, RepositoryError
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.storage.decisions import HEADER as DECISIONS_HEADER
from phobbit.storage.decisions import DecisionLog
from phobbit.storage.repository import Repository
from phobbit.testing import SyntheticTrainable

optuna = pytest.importorskip("optuna")


def tuner(repo: Path, executor: SimulatedExecutor, **kwargs: Any) -> ParallelHyperband:
    trainable = kwargs.pop("trainable", SyntheticTrainable(curve=x_curve, epoch_seconds=1.0))
    return ParallelHyperband(
        None, space(), repo, trainable=trainable, executor=executor, verbose=0, **kwargs
    )


def rows(repo: Path) -> list:
    return list(Repository(repo).iter_results())


def epochs_of(segments: list) -> int:
    return sum(s.epochs - s.start_epoch for s in segments)


# -- the promotion rule ------------------------------------------------------------------


def test_asha_promotes_the_top_third_of_each_rung_highest_rung_first() -> None:
    """One bracket (R=9, eta=3: rungs of 1, 3, 9 epochs), results fed by hand; the expected
    decisions were worked out on paper from the rule of Li et al. (2020): at rung k with n
    results, the best n // 3 are promotable; the highest rung with one promotes it; else a
    new configuration starts at rung 0. A failed result is never promoted."""
    machine = AsynchronousHyperband(Tuning.of(Space(space()), R=9, eta=3), brackets_s=[2])
    assert machine.start() == []
    made: dict[tuple[int, int], Segment] = {}

    def decide(config_id: int, rung: int) -> None:
        segment = machine.decide()
        assert (segment.id, segment.rung) == (config_id, rung)
        made[(config_id, rung)] = segment

    def result(config_id: int, rung: int, loss: float | None) -> None:
        segment = made[(config_id, rung)]
        status = Status.OK if loss is not None else Status.FAILED
        machine.on_result(
            segment.result(val_loss=loss, last_val_loss=loss, status=status, error="")
        )

    decide(0, 0), decide(1, 0), decide(2, 0)
    result(0, 0, 0.5), result(1, 0, 0.3)
    decide(3, 0)  # 2 results: 2 // 3 = 0 promotable
    result(2, 0, 0.9)
    decide(1, 1)  # 3 results: the best, 1, goes on
    decide(4, 0)  # 1 is promoted already
    result(3, 0, 0.1)
    decide(3, 1)  # 4 results: the best one is 3 now
    result(4, 0, None)
    decide(5, 0)  # 5 results, 1 promotable (3, done); the failed 4 is never promoted
    result(5, 0, 0.4)
    decide(6, 0)  # 6 results, top 2 = 3 and 1, both promoted
    result(1, 1, 0.25), result(3, 1, 0.05), result(6, 0, 0.2)
    decide(6, 1)  # 7 results, top 2 = 3 and 6
    decide(7, 0)
    result(7, 0, 0.01)  # rung 0: 8 results, top 2 = 7 and 3: 7 is promotable
    result(6, 1, 0.15)  # rung 1: 3 results, top 1 = 3: promotable
    decide(3, 2)  # the higher rung goes first
    decide(7, 1)
    decide(8, 0)
    assert made[(3, 2)].start_epoch == 3 and made[(3, 2)].epochs == 9
    assert made[(3, 2)].prior_best == 0.05
    assert machine.promotions()[(0, 2, 0)] == [1, 3, 6, 7]
    assert machine.promotions()[(0, 2, 1)] == [3]
    assert [s.key for s in machine.take_decisions()] == [s.key for s in made.values()]
    assert machine.take_decisions() == []


def test_asha_gives_each_decision_to_the_bracket_with_the_fewest_epochs() -> None:
    """R=9, eta=3: brackets s=2, 1, 0 start configurations at 1, 3 and 9 epochs; ties go to
    the larger s. Worked out by hand: epochs after each decision (s2, s1, s0):
    (1,0,0) (1,3,0) (1,3,9) (2,3,9) (3,3,9) (4,3,9) (4,6,9) (5,6,9) (6,6,9) (7,6,9)."""
    machine = AsynchronousHyperband(Tuning.of(Space(space()), R=9, eta=3))
    assert [machine.decide().s for _ in range(10)] == [2, 1, 0, 2, 2, 2, 1, 2, 2, 2]
    assert machine.epochs_decided() == 7 + 6 + 9


def test_a_second_result_and_a_stranger_are_handled_like_hyperbands() -> None:
    machine = AsynchronousHyperband(Tuning.of(Space(space()), R=9, eta=3))
    segment = machine.decide()
    row = segment.result(val_loss=0.5, last_val_loss=0.5, status="ok", error="")
    assert machine.on_result(row) == [] and machine.has_result(segment.key)
    assert machine.on_result(row) == []
    with pytest.raises(ValueError, match="not part of this plan"):
        machine.has_result((0, 2, 99, 0))
    assert not machine.done


# -- the end of the budget: no drain ----------------------------------------------------


def fed(machine: AsynchronousHyperband, losses: list[float]) -> list[Segment]:
    """Decides one segment per loss and feeds each its loss back, in order."""
    made = [machine.decide() for _ in losses]
    for segment, loss in zip(made, losses, strict=True):
        machine.on_result(segment.result(val_loss=loss, last_val_loss=loss, status="ok", error=""))
    return made


@pytest.mark.parametrize(("budget", "expected"), [(None, (0, 1)), (7, (0, 1)), (6, (3, 0))])
def test_near_the_end_of_the_budget_asha_starts_only_what_ends_with_the_others(
    budget: int | None, expected: tuple[int, int]
) -> None:
    """One bracket (R=9, eta=3: 1, 3, 9 epochs), 2 workers. After three 1-epoch results,
    configuration 0 is promotable to rung 1 (2 more epochs). With budget 7, 4 epochs are
    left: 2 per worker, so the promotion fits; with budget 6, 1.5 per worker, a 2-epoch
    segment would run on while the other worker idles, and a new 1-epoch one starts."""
    machine = AsynchronousHyperband(
        Tuning.of(Space(space()), R=9, eta=3), brackets_s=[2], budget_epochs=budget, workers=2
    )
    fed(machine, [0.1, 0.2, 0.3])
    decision = machine.decide()
    assert (decision.id, decision.rung) == expected
    assert machine.horizon() is None if budget is None else machine.horizon() is not None


def test_near_the_end_asha_takes_a_promotion_that_fits_from_another_bracket() -> None:
    """R=9, eta=3, every bracket, 2 workers. The bracket with the fewest epochs would start
    a 9-epoch configuration (s=0) that does not fit; bracket s=2 has a promotion of 2 epochs
    that does, and takes the decision."""
    machine = AsynchronousHyperband(Tuning.of(Space(space()), R=9, eta=3), workers=2)
    fed(machine, [0.1, 0.2])  # s=2 at 1 epoch, s=1 at 3 epochs
    fed(machine, [0.5])  # s=0: 9 epochs
    fed(machine, [0.3])  # s=2's second: 2 results, nothing promotable yet
    fed(machine, [0.4])  # s=2's third: 0 is now promotable to rung 1
    before = machine.epochs_decided()
    assert [b.epochs for b in machine._brackets.values()] == [3, 3, 9]
    machine.budget_epochs = before + 5  # 2.5 epochs per worker left
    decision = machine.decide()
    assert (decision.s, decision.id, decision.rung) == (2, 0, 1)
    machine.budget_epochs = machine.epochs_decided() + 1  # nothing but 1 epoch fits
    decision = machine.decide()
    assert (decision.s, decision.rung, decision.epochs) == (2, 0, 1)


def test_the_horizon_counts_a_segment_in_flight_by_when_it_ends() -> None:
    """Issue 21 item 3: the horizon counted half of every segment in flight, however far
    along it was. R=9, eta=3, brackets s=2 and s=0, 2 workers: a 9-epoch segment of s=0
    runs on one worker while the other trains s=2's short ones and the epoch clock
    reaches 8. With 4 epochs of budget left, the long one holds its worker for 1 more
    epoch, so both end together 2.5 epochs from now ((4 + 1) / 2); the old rule said
    (4 + 9 / 2) / 2 = 4.25, and a 4-epoch segment started now would run 1.5 epochs past
    the other worker's end."""
    machine = AsynchronousHyperband(
        Tuning.of(Space(space()), R=9, eta=3), brackets_s=[2, 0], workers=2
    )
    short, long = machine.decide(), machine.decide()
    assert (short.s, long.s, long.epochs) == (2, 0, 9)
    elapsed = 0  # on the other worker: one short segment after another
    while True:
        machine.on_result(short.result(val_loss=0.5, last_val_loss=0.5, status="ok", error=""))
        elapsed += short.epochs - short.start_epoch
        if elapsed >= 8:
            break
        short = machine.decide()
        assert short.s == 2  # s=0 has the most epochs: the short ones go to s=2
    assert elapsed == 8
    machine.budget_epochs = machine.epochs_decided() + 4
    assert machine.horizon() == 2.5


def busy_on_the_epoch_clock(workers: int, seed: int, R: int = 27) -> float:
    """ASHA alone on a virtual clock (no scheduler, no files): ``workers`` workers, a
    budget of 8 Hyperband iterations, epochs of 1 s +-30% (drawn from the configuration
    and the epoch); a worker that frees takes ``decide()`` at once. The busy fraction."""
    tuning = Tuning.of(Space(space()), R=R, eta=3, seed=seed)
    budget = asha_budget_epochs(R, 3, 8)
    machine = AsynchronousHyperband(tuning, budget_epochs=budget, workers=workers)
    timing = SyntheticTrainable(curve=x_curve, epoch_seconds=1.0, jitter=0.3)
    running: list[tuple[float, int, Segment]] = []
    now = busy = 0.0
    spent = 0
    while True:
        while len(running) < workers and spent < budget:
            segment = machine.decide()
            took = timing.segment_time(segment.hparams, segment.start_epoch, segment.epochs)
            spent += segment.epochs - segment.start_epoch
            busy += took
            heapq.heappush(running, (now + took, len(machine._decided), segment))
        if not running:
            return busy / (workers * now)
        now, _, segment = heapq.heappop(running)
        loss = min(x_curve(segment.hparams, e) for e in range(1, segment.epochs + 1))
        machine.on_result(segment.result(val_loss=loss, last_val_loss=loss, status="ok", error=""))


@pytest.mark.parametrize("workers", [16, 64])
def test_asha_ends_its_budget_with_every_worker_busy_when_epochs_take_uneven_times(
    workers: int,
) -> None:
    """Issue 21 item 3: with epochs of uneven length (1 s +-30%), R=27 and a budget of 8
    Hyperband iterations, counting half of the epochs in flight kept 0.95 busy at W=64
    (the least of 3 seeds); counting each segment by when it ends keeps >= 0.98 at both."""
    assert min(busy_on_the_epoch_clock(workers, seed) for seed in range(3)) >= 0.98


@pytest.mark.parametrize("workers", [16, 64])
def test_asha_keeps_its_workers_busy_to_the_end_of_the_budget(tmp_path, workers) -> None:
    """Issue 21: once the epochs were committed, long promotions and fresh full-R segments
    ran on while the other workers idled (0.90 busy at W=16, 0.68 at W=64 over a whole run).
    On the simulated clock every epoch takes 1 s: busy = epochs' seconds / (W x makespan)."""
    executor = SimulatedExecutor(workers)
    run = tuner(tmp_path / "repo", executor, algorithm="asha")
    run.run(R=9, eta=3, iterations=8)  # before: 0.86 busy at W=16, 0.62 at W=64
    busy = sum(e.end - e.start for e in executor.trace) / (workers * executor.makespan())
    assert busy >= (0.97 if workers == 16 else 0.90)
    assert run.stopped_by == "iterations"


def test_asha_numbers_new_configurations_past_the_highest_id_when_a_middle_row_is_lost(
    tmp_path: Path,
) -> None:
    """Issue 22: ASHA numbered a new configuration ``len(hparams)``; with the decision (and
    result) of configuration 1 of bracket 2 unreadable, a resume drew a second configuration
    under an ID already in use, with other hyperparameters and the same checkpoint."""
    repo = tmp_path / "repo"
    tuner(repo, SimulatedExecutor(1), algorithm="asha", max_epochs=30).run(R=9, eta=3)
    drawn = {d.key[:3]: d.hparams for d in DecisionLog(Repository(repo)).read() if d.rung == 0}
    assert (0, 2, 1) in drawn and (0, 2, 5) in drawn
    assert not any(
        d.key[:3] == (0, 2, 1) and d.rung > 0 for d in DecisionLog(Repository(repo)).read()
    )
    for name in ("decisions.csv", "results.csv"):
        path = repo / name
        lines = path.read_text().splitlines(keepends=True)
        # A flipped character: the row's CRC no longer matches, so it reads as corrupt.
        lines = [("X" + line[1:]) if line.startswith("0,2,1,") else line for line in lines]
        path.write_text("".join(lines))
    assert (0, 2, 1) not in {d.key[:3] for d in DecisionLog(Repository(repo)).read()}
    tuner(repo, SimulatedExecutor(1), algorithm="asha", max_epochs=60).run(R=9, eta=3)
    firsts = [d for d in DecisionLog(Repository(repo)).read() if d.rung == 0]
    assert len({d.key for d in firsts}) == len(firsts)  # no ID drawn twice
    for d in firsts:
        assert drawn.get(d.key[:3], d.hparams) == d.hparams  # none drawn anew under an old ID
    later = [d.id for d in firsts if d.s == 2 and d.key[:3] not in drawn]
    assert later and min(later) == 6


# -- decisions are recorded before they train -------------------------------------------------


@dataclass(frozen=True)
class Inspector(SyntheticTrainable):
    """Checks, as each segment starts to train, that decisions.csv already records it."""

    def train(self, hparams: dict[str, Any], checkpoint: str, initial_epoch: int, epochs: int):
        repo, name = Path(checkpoint).parent.parent, Path(checkpoint).name
        mine = [
            d
            for d in DecisionLog(Repository(repo)).read()
            if config_name(d.iteration, d.s, d.id) == name
        ]
        assert any(d.rung == 0 and d.hparams == hparams for d in mine), f"{name} not drawn"
        assert self.every_segment is False or any(d.epochs == epochs for d in mine)
        return super().train(hparams, checkpoint, initial_epoch, epochs)

    every_segment: bool = False


@pytest.mark.parametrize(("algorithm", "sampler"), [("asha", "random"), ("hyperband", "tpe")])
def test_every_decision_is_recorded_before_it_trains(tmp_path, algorithm, sampler) -> None:
    trainable = Inspector(curve=x_curve, epoch_seconds=1.0, every_segment=algorithm == "asha")
    run = tuner(
        tmp_path / "repo",
        SimulatedExecutor(4),
        trainable=trainable,
        algorithm=algorithm,
        sampler=sampler,
    )
    frame = run.run(R=9, eta=3)
    assert (frame["Status"] == Status.OK).all()
    decided = DecisionLog(Repository(tmp_path / "repo")).read()
    if algorithm == "asha":  # every segment is a decision
        assert sorted(d.key for d in decided) == sorted(r.key for r in rows(tmp_path / "repo"))
    else:  # every configuration drawn, once
        configs = {(r.iteration, r.s, r.id) for r in rows(tmp_path / "repo")}
        assert sorted((d.iteration, d.s, d.id) for d in decided) == sorted(configs)


def test_random_hyperband_writes_no_decisions(tmp_path: Path) -> None:
    tuner(tmp_path / "repo", SimulatedExecutor(2)).run(R=9, eta=3)
    assert not (tmp_path / "repo" / "decisions.csv").exists()


# -- resume after a kill ----------------------------------------------------------------------


def killed_then_resumed(tmp_path: Path, victim_at: int, **kwargs: Any) -> tuple[list, list, list]:
    """Runs until the ``victim_at``-th decision's segment ends with Ctrl-C (the driver is
    interrupted, what is in flight is killed), then resumes to the end.

    Returns the decisions before the resume, the decisions after, and the rows after.
    """
    repo = tmp_path / "repo"
    record = tmp_path / "trained"
    record.mkdir()
    trainable = SyntheticTrainable(curve=x_curve, epoch_seconds=1.0, record_dir=str(record))
    # The victim: found by a dry run of the same settings on a scratch repository.
    dry = tmp_path / "dry"
    tuner(dry, SimulatedExecutor(3), **kwargs).run(R=9, eta=3)
    victim = DecisionLog(Repository(dry)).read()[victim_at]
    key = victim.key
    first = tuner(
        repo,
        SimulatedExecutor(3, fail={key: [KeyboardInterrupt()]}),
        trainable=trainable,
        **kwargs,
    )
    with pytest.raises(KeyboardInterrupt):
        first.run(R=9, eta=3)
    before = DecisionLog(Repository(repo)).read()
    assert key in {d.key for d in before} and key not in {r.key for r in rows(repo)}
    tuner(repo, SimulatedExecutor(3), trainable=trainable, **kwargs).run(R=9, eta=3)
    after = DecisionLog(Repository(repo)).read()
    done = rows(repo)
    # Trains nothing twice: every epoch trained is one a row accounts for.
    trained = [json.loads(p.read_text()) for p in record.glob("*.json")]
    assert sum(t["epochs"] - t["initial_epoch"] for t in trained) == epochs_of(done)
    assert len({r.key for r in done}) == len(done)
    return before, after, done


def test_a_killed_asha_run_resumes_its_decisions_and_trains_nothing_twice(tmp_path) -> None:
    before, after, done = killed_then_resumed(tmp_path, victim_at=12, algorithm="asha")
    assert after[: len(before)] == before  # recorded once, never rewritten
    assert len({d.key for d in after}) == len(after)
    # Loses nothing: every decision, those in flight at the kill too, has its row.
    assert {d.key for d in after} == {r.key for r in done}
    # Each configuration trains with the hparams recorded for it.
    drawn = {(d.s, d.id): d.hparams for d in after if d.rung == 0}
    assert all(r.hparams == drawn[(r.s, r.id)] for r in done)
    assert epochs_of(done) >= asha_budget_epochs(9, 3)


def test_a_killed_tpe_run_reuses_the_configurations_it_drew(tmp_path: Path) -> None:
    before, after, done = killed_then_resumed(tmp_path, victim_at=10, sampler="tpe")
    assert after[: len(before)] == before
    configs = [(d.iteration, d.s, d.id) for d in after]
    assert len(set(configs)) == len(configs)  # each configuration drawn once
    drawn = {(d.iteration, d.s, d.id): d.hparams for d in after}
    assert all(r.hparams == drawn[(r.iteration, r.s, r.id)] for r in done)
    assert len(done) == sum(r.n for b in brackets(9, 3) for r in b.rungs)  # it ran to the end


def test_a_killed_asha_tpe_run_resumes(tmp_path: Path) -> None:
    before, after, done = killed_then_resumed(tmp_path, 15, algorithm="asha", sampler="tpe")
    assert after[: len(before)] == before
    assert {d.key for d in after} == {r.key for r in done}


def test_decisions_of_another_run_are_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tuner(repo, SimulatedExecutor(2), algorithm="asha", max_epochs=20).run(R=9, eta=3)
    log = repo / "decisions.csv"
    log.write_text(log.read_text().replace("\n0,2,", "\n3,2,", 1))  # a torn row: skipped
    with pytest.raises(RepositoryError, match="decisions.csv does not record"):
        tuner(repo, SimulatedExecutor(2), algorithm="asha", max_epochs=40).run(R=9, eta=3)
    log.write_text("something else\n")
    with pytest.raises(RepositoryError, match="not a phobbit decisions file"):
        tuner(repo, SimulatedExecutor(2), algorithm="asha", max_epochs=40).run(R=9, eta=3)


@pytest.mark.parametrize(("algorithm", "sampler"), [("asha", "random"), ("hyperband", "tpe")])
def test_a_forged_decision_outside_the_space_stops_the_resume_before_it_trains(
    tmp_path: Path, algorithm: str, sampler: str
) -> None:
    """A decision with hparams outside the space is refused, not skipped or drawn afresh:
    what the run decided later follows from it, so either would resume into another run."""
    repo = tmp_path / "repo"
    options = dict(algorithm=algorithm, sampler=sampler)
    tuner(repo, SimulatedExecutor(2), max_epochs=20, **options).run(R=9, eta=3)
    log = DecisionLog(Repository(repo))
    decided = log.read()
    drawn = {d.key for d in decided}
    # The first configuration not drawn yet, as the next decision would draw it.
    bracket, config_id = next(
        (b, i) for b in brackets(9, 3) for i in range(b.n) if (0, b.s, i, 0) not in drawn
    )
    first = decided[0]
    forged = dataclasses.replace(
        first,
        s=bracket.s,
        id=config_id,
        epochs=bracket.rungs[0].epochs,
        hparams={**first.hparams, "x": 5.0},
    )
    log.append(forged)  # CRC-valid: a hand edit, or a script
    written = (repo / "results.csv").read_bytes()
    with pytest.raises(RepositoryError) as refused:
        tuner(repo, SimulatedExecutor(2), max_epochs=60, **options).run(R=9, eta=3)
    assert f"decisions.csv records segment {forged.key}" in str(refused.value)
    assert "outside the search space: x=5.0 is outside [0.0, 1.0]" in str(refused.value)
    assert (repo / "results.csv").read_bytes() == written  # nothing trained


# -- settings -----------------------------------------------------------------------------------


def test_a_resume_with_another_algorithm_or_sampler_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tuner(repo, SimulatedExecutor(2), algorithm="asha", max_epochs=20).run(R=9, eta=3)
    settings = json.loads((repo / "run.json").read_text())
    assert settings["algorithm"] == "asha" and "sampler" not in settings
    written = (repo / "results.csv").read_bytes()
    with pytest.raises(RepositoryError, match="algorithm='asha' there, 'hyperband' here"):
        tuner(repo, SimulatedExecutor(2)).run(R=9, eta=3)
    with pytest.raises(RepositoryError, match="sampler='random' there, 'tpe' here"):
        tuner(repo, SimulatedExecutor(2), algorithm="asha", sampler="tpe").run(R=9, eta=3)
    assert (repo / "results.csv").read_bytes() == written


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"algorithm": "bohb"}, "algorithm must be one of 'hyperband', 'asha', got 'bohb'"),
        ({"sampler": "grid"}, "sampler must be one of 'random', 'tpe', got 'grid'"),
        ({"time_limit": "8x"}, "time_limit must be a duration > 0"),
        ({"time_limit": -1}, "time_limit must be a duration > 0"),
        ({"time_limit": math.inf}, "time_limit must be a duration > 0"),
        ({"max_epochs": 0}, "max_epochs must be an integer >= 1"),
        ({"max_epochs": 2.5}, "max_epochs must be an integer >= 1"),
    ],
)
def test_bad_algorithm_sampler_or_budget_is_refused_before_anything_is_written(
    tmp_path: Path, kwargs: dict, match: str
) -> None:
    with pytest.raises(InputError, match=match):
        tuner(tmp_path / "repo", SimulatedExecutor(1), **kwargs)
    assert not (tmp_path / "repo").exists()


def test_tpe_without_optuna_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(InputError, match=r'needs Optuna.*pip install "phobbit\[tpe\]"'):
        tuner(tmp_path / "repo", SimulatedExecutor(1), sampler="tpe")


def test_durations_take_suffixes() -> None:
    assert [parse_duration(t, "time_limit") for t in ("90", "90s", "15m", "8h", "1.5d")] == [
        90,
        90,
        900,
        8 * 3600,
        1.5 * 86400,
    ]
    assert Budget(max_epochs=10).spent(0.0, 10) == "max_epochs"
    assert Budget(time_limit=5.0).spent(5.0, 0) == "time_limit"
    assert Budget().spent(1e9, 10**9) is None


# -- budgets -----------------------------------------------------------------------------------


def test_max_epochs_stops_hyperband_exactly_and_a_larger_budget_finishes_it(tmp_path) -> None:
    whole = tuner(tmp_path / "whole", SimulatedExecutor(1)).run(R=9, eta=3)
    repo = tmp_path / "repo"
    stopped = tuner(repo, SimulatedExecutor(1), max_epochs=20)
    stopped.run(R=9, eta=3)
    assert stopped.stopped_by == "max_epochs" and "20 epochs" in stopped.stop_reason()
    done = rows(repo)  # one worker: the rows are in dispatch order
    assert epochs_of(done[:-1]) < 20 <= epochs_of(done)
    again = tuner(repo, SimulatedExecutor(1), max_epochs=20)
    again.run(R=9, eta=3)  # the same budget: spent already, nothing new
    assert rows(repo) == done and again.stopped_by == "max_epochs"
    rest = tuner(repo, SimulatedExecutor(1))
    table = rest.run(R=9, eta=3)
    assert rest.stopped_by == "iterations"
    assert rows(repo)[: len(done)] == done
    columns = ["Hparams", "Val Loss", "Epochs", "Rung", "Status"]
    assert table[columns].sort_index().equals(whole[columns].sort_index())


def test_max_epochs_stops_asha_and_a_larger_budget_goes_on(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = tuner(repo, SimulatedExecutor(3), algorithm="asha", max_epochs=40)
    first.run(R=9, eta=3)
    decided = DecisionLog(Repository(repo)).read()
    assert first.stopped_by == "max_epochs"
    assert epochs_of(decided[:-1]) < 40 <= epochs_of(decided)
    assert epochs_of(rows(repo)) == epochs_of(decided)  # in flight ones finished
    second = tuner(repo, SimulatedExecutor(3), algorithm="asha", max_epochs=100)
    second.run(R=9, eta=3)
    more = DecisionLog(Repository(repo)).read()
    assert more[: len(decided)] == decided and len(more) > len(decided)
    assert epochs_of(more[:-1]) < 100 <= epochs_of(more)
    assert len({r.key for r in rows(repo)}) == len(rows(repo))


def test_asha_stops_by_default_after_hyperbands_epochs(tmp_path: Path) -> None:
    run = tuner(tmp_path / "repo", SimulatedExecutor(4), algorithm="asha")
    run.run(R=9, eta=3, iterations=2)
    decided = DecisionLog(Repository(tmp_path / "repo")).read()
    budget = asha_budget_epochs(9, 3, iterations=2)
    assert run.stopped_by == "iterations"
    assert epochs_of(decided[:-1]) < budget <= epochs_of(decided)


def test_time_limit_stops_at_a_segment_boundary_on_the_simulated_clock(tmp_path) -> None:
    repo = tmp_path / "repo"
    executor = SimulatedExecutor(2)
    run = tuner(repo, executor, algorithm="asha", time_limit="20s")
    run.run(R=9, eta=3)
    assert run.stopped_by == "time_limit"
    assert all(entry.start < 20 for entry in executor.trace)  # none dispatched past it
    assert executor.makespan() >= 20  # it stopped when a worker came free past it
    assert len(rows(repo)) == len(executor.trace)  # those in flight finished
    before = rows(repo)
    # The limit is the run's, over its invocations: the same limit again has nothing left.
    again = SimulatedExecutor(2)
    resumed = tuner(repo, again, algorithm="asha", time_limit="20s")
    resumed.run(R=9, eta=3)
    assert resumed.stopped_by == "time_limit" and not again.trace and rows(repo) == before
    assert resumed.budget.time_used == executor.makespan()
    # A larger one gives the run what it adds: here 20 s more.
    later = SimulatedExecutor(2)
    more = tuner(repo, later, algorithm="asha", time_limit="40s")
    more.run(R=9, eta=3)
    assert rows(repo)[: len(before)] == before and len(rows(repo)) > len(before)
    assert all(entry.start < 40 - executor.makespan() for entry in later.trace)
    assert (
        more.budget.time_text()
        == f"time limit 40s, {format_duration(round(40 - executor.makespan()))} left"
    )


@pytest.mark.parametrize("algorithm", ["hyperband", "asha"])
def test_no_segment_starts_past_the_time_limit_even_one_queued_ahead(
    tmp_path, algorithm: str
) -> None:
    whole = SimulatedExecutor(2)
    tuner(tmp_path / "whole", whole, algorithm=algorithm, max_epochs=60).run(R=9, eta=3)
    limit = whole.makespan() / 2  # mid-run, with segments queued ahead
    executor = SimulatedExecutor(2)
    run = tuner(tmp_path / "repo", executor, algorithm=algorithm, time_limit=limit)
    run.run(R=9, eta=3)
    assert run.stopped_by == "time_limit"
    assert executor.trace and all(entry.start < limit for entry in executor.trace)


def test_a_decisions_header_cut_short_by_a_full_disk_is_completed_not_refused(tmp_path) -> None:
    repository = Repository(tmp_path)
    log = DecisionLog(repository)
    log.path.write_bytes(DECISIONS_HEADER.encode()[:20])  # the first write was cut short
    assert log.read() == []
    segment = Segment(0, 2, 0, 0, {"x": 0.5}, 0, 1, config_name(0, 2, 0))
    log.append(segment)
    assert [(d.key, d.hparams) for d in log.read()] == [(segment.key, segment.hparams)]
    assert log.path.read_text().startswith(DECISIONS_HEADER)


# -- TPE sampling ----------------------------------------------------------------------------


def bowl(hparams: dict[str, Any]) -> float:
    return (hparams["x"] - 0.3) ** 2 + (hparams["y"] - 0.7) ** 2


TOY = Space(
    [Hyperparameter("x", "uniform", (0.0, 1.0)), Hyperparameter("y", "uniform", (0.0, 1.0))]
)


def distances(sampler: RandomSampler, draws: int = 80) -> list[float]:
    """Draws one by one, each observed before the next; the distances to the optimum."""
    out = []
    for i in range(draws):
        key = (0, 0, i)
        hparams = sampler.draw(key)
        sampler.observe(key, hparams, 1, bowl(hparams))
        out.append(math.dist((hparams["x"], hparams["y"]), (0.3, 0.7)))
    return out


def test_tpe_draws_concentrate_near_the_optimum_and_differ_from_random() -> None:
    tpe, rnd = distances(TPESampler(TOY, seed=3)), distances(RandomSampler(TOY, seed=3))
    assert tpe[:3] == rnd[:3]  # before any model (dimensions + 1 results): random draws
    assert tpe != rnd
    # The last 40 draws: random ones lie about 0.4 from the optimum; TPE's far closer.
    assert statistics.median(tpe[40:]) < 0.5 * statistics.median(rnd[40:])


def test_tpe_draws_are_deterministic_given_the_seed_and_the_results() -> None:
    assert distances(TPESampler(TOY, seed=1), 30) == distances(TPESampler(TOY, seed=1), 30)
    assert distances(TPESampler(TOY, seed=1), 30) != distances(TPESampler(TOY, seed=2), 30)


def test_tpe_keeps_every_kind_of_hyperparameter_in_its_range() -> None:
    kinds = Space(
        [
            Hyperparameter("u", "uniform", (-1.0, 1.0)),
            Hyperparameter("lr", "log-uniform", (1e-4, 1e-1)),
            Hyperparameter("n", "randint", (1, 5)),
            Hyperparameter("act", "choice", [("relu", [1, 2], {"a": 1})]),
            Hyperparameter("w", "normal", (10.0, 2.0)),
        ]
    )
    sampler = TPESampler(kinds, seed=0)
    for i in range(40):
        hp = sampler.draw((0, 0, i))
        assert -1 <= hp["u"] <= 1 and 1e-4 <= hp["lr"] <= 1e-1 and hp["n"] in range(1, 6)
        assert hp["act"] in ("relu", [1, 2], {"a": 1}) and math.isfinite(hp["w"])
        sampler.observe((0, 0, i), hp, 1, abs(hp["w"] - 12.0) + hp["n"])
    assert sampler.study_size > 0  # the model was fit


# -- failures and worker deaths ------------------------------------------------------------


def test_asha_retries_a_segment_whose_worker_died_and_never_promotes_a_failure(tmp_path):
    dry = tmp_path / "dry"
    tuner(dry, SimulatedExecutor(3), algorithm="asha").run(R=9, eta=3)
    victim = DecisionLog(Repository(dry)).read()[5].key
    oom = BrokenProcessPool("a worker died")
    repo = tmp_path / "repo"
    run = tuner(
        repo,
        SimulatedExecutor(3, fail={victim: [oom]}),
        algorithm="asha",
        trainable=SyntheticTrainable(curve=failing_curve, epoch_seconds=1.0),
    )
    run.run(R=9, eta=3)
    assert run.executor.attempts[victim] == 2  # it died once, and ran again
    done = rows(repo)
    assert len({r.key for r in done}) == len(done)
    assert {d.key for d in DecisionLog(Repository(repo)).read()} == {r.key for r in done}
    assert victim in {r.key for r in done}
    failed = {(r.s, r.id) for r in done if not r.ok}
    assert failed, "the curve fails some configurations"
    promoted_from_failure = [
        r
        for r in done
        if r.rung > 0
        and any((f.s, f.id, f.rung) == (r.s, r.id, r.rung - 1) and not f.ok for f in done)
    ]
    assert promoted_from_failure == []


# -- progress against the budget ----------------------------------------------------------


def test_plain_progress_of_asha_is_measured_against_its_budget(tmp_path: Path) -> None:
    import io
    import re

    from phobbit.cli.terminal import LineReporter

    out = io.StringIO()
    asha = tuner(tmp_path / "repo", SimulatedExecutor(2), algorithm="asha", max_epochs=60)
    asha.reporter = reporter = LineReporter(out, budget=lambda: asha.budget)
    asha.run(9, 3)
    trained = epochs_of(rows(tmp_path / "repo"))
    # Its header: the rungs and the budget, not Hyperband's schedule and epoch total.
    assert "Run 2: rungs of 1, 3, 9 epochs" in out.getvalue()
    assert "Budget: 60 epochs" in out.getvalue() and "Total:" not in out.getvalue()
    lines = [m for m in re.finditer(r"(\d+)/60 epochs, (\d+)% of the budget", out.getvalue())]
    # A line per 5% of the budget (several per line when a long segment lands), as
    # Hyperband's per rung; the epochs are the run's, of the budget's 60.
    assert len(lines) >= 10
    percents = [int(m[2]) for m in lines]
    assert percents == sorted(percents) and percents[-1] == 100
    assert int(lines[-1][1]) == trained >= 60
    assert reporter.tracker.fraction() == 1.0 and reporter.tracker.left() == 0.0
    # Decided but unfinished segments are no part of the total: the budget is.
    assert reporter.tracker.summary().startswith(f"{trained}/60 epochs, 100% of the budget")


def test_the_library_header_and_lines_of_asha_show_its_budget_and_rungs(tmp_path: Path) -> None:
    """Issue 21/22: ASHA's header printed Hyperband's schedule and its total ("69 epochs"
    for a 30-epoch budget) and the library's plain lines no progress at all."""
    import io
    import re

    from phobbit.reporting.plain import PlainReporter

    out = io.StringIO()
    asha = tuner(tmp_path / "repo", SimulatedExecutor(2), algorithm="asha", max_epochs=30)
    asha.reporter = PlainReporter(out, budget=lambda: asha.budget)
    asha.run(9, 3)
    text = out.getvalue()
    assert "Run 2: rungs of 1, 3, 9 epochs\nRun 1: rungs of 3, 9 epochs\nRun 0: rungs of 9" in text
    assert "Budget: 30 epochs" in text
    assert "69" not in text and "Total:" not in text and "configurations" not in text
    percents = [int(m[2]) for m in re.finditer(r"(\d+)/30 epochs, (\d+)% of the budget", text)]
    assert len(percents) >= 5 and percents == sorted(percents) and percents[-1] == 100


# -- the command line, on a local process pool ---------------------------------------------


def test_asha_is_a_function_of_the_seed_and_the_order_of_results(tmp_path: Path) -> None:
    for name in ("a", "b"):
        tuner(tmp_path / name, SimulatedExecutor(3), algorithm="asha", sampler="tpe").run(9, 3)
    a, b = (
        [(d.key, d.hparams, d.prior_best) for d in DecisionLog(Repository(tmp_path / n)).read()]
        for n in ("a", "b")
    )
    assert a == b and len(a) > 10


def test_a_driver_that_lost_the_repository_records_no_decision(tmp_path: Path) -> None:
    from phobbit.core.plan import Plan
    from phobbit.core.records import RunSettings
    from phobbit.errors import FencedOutError
    from phobbit.execution.scheduler import Scheduler

    repository = Repository(tmp_path / "repo")
    repository.create(RunSettings.of(Space(space()), 9, 3, 0, 1, algorithm="asha"))
    machine = AsynchronousHyperband(
        Tuning.of(Space(space()), 9, 3, checkpoint_of=repository.checkpoint_stem)
    )
    from phobbit.core.dispatch import FifoPolicy

    with repository.driver_lock():
        scheduler = Scheduler(
            SyntheticTrainable(curve=x_curve),
            Plan.of(machine, FifoPolicy(), 2),
            repository,
            SimulatedExecutor(2),
            fence="not-this-drivers-token",
            budget=Budget(max_epochs=30),
        )
        with pytest.raises(FencedOutError):
            scheduler.drive()
    assert DecisionLog(repository).read() == [] and rows(tmp_path / "repo") == []


def test_an_endless_plan_without_a_budget_is_refused() -> None:
    from phobbit.core.dispatch import FifoPolicy
    from phobbit.core.plan import Plan
    from phobbit.execution.scheduler import Scheduler

    machine = AsynchronousHyperband(Tuning.of(Space(space()), 9, 3))
    with pytest.raises(ValueError, match="never ends by itself: give a budget"):
        Scheduler(SyntheticTrainable(), Plan.of(machine, FifoPolicy()), None, SimulatedExecutor())


def test_asha_and_tpe_run_on_dask(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    from phobbit.execution.dask import DaskExecutor

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        executor = DaskExecutor(client)
        run = ParallelHyperband(
            None,
            space(),
            tmp_path / "repo",
            trainable=SyntheticTrainable(curve=x_curve),
            executor=executor,
            verbose=0,
            algorithm="asha",
            sampler="tpe",
            max_epochs=30,
        )
        run.run(R=9, eta=3)
    done = rows(tmp_path / "repo")
    assert run.stopped_by == "max_epochs" and 30 <= epochs_of(done) < 30 + 9
    assert {d.key for d in DecisionLog(Repository(tmp_path / "repo")).read()} == {
        r.key for r in done
    }


def test_more_iterations_extend_an_asha_run(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tuner(repo, SimulatedExecutor(2), algorithm="asha").run(R=9, eta=3, iterations=1)
    before = DecisionLog(Repository(repo)).read()
    assert epochs_of(before) >= asha_budget_epochs(9, 3, 1)
    run = tuner(repo, SimulatedExecutor(2), algorithm="asha")
    run.run(R=9, eta=3, iterations=2)
    after = DecisionLog(Repository(repo)).read()
    assert after[: len(before)] == before and run.stopped_by == "iterations"
    assert epochs_of(after[:-1]) < asha_budget_epochs(9, 3, 2) <= epochs_of(after)
    assert json.loads((repo / "run.json").read_text())["iterations"] == 2


@pytest.mark.keras
def test_asha_with_tpe_tunes_a_keras_model(tmp_path: Path) -> None:
    from keras_models import HPARAMS, mlp, small_digits

    tuner = ParallelHyperband(
        mlp,
        HPARAMS,
        tmp_path / "repo",
        dataset=small_digits(),
        n_jobs=1,
        batch_size=64,
        verbose=0,
        algorithm="asha",
        sampler="tpe",
        max_epochs=12,
    )
    results = tuner.run(R=3, eta=3)
    assert tuner.stopped_by == "max_epochs"
    assert (results["Status"] == "ok").all(), results["Error"].tolist()
    done = rows(tmp_path / "repo")
    assert 12 <= epochs_of(done) < 12 + 3
    assert {d.key for d in DecisionLog(Repository(tmp_path / "repo")).read()} == {
        r.key for r in done
    }


def test_a_decision_with_a_long_choice_value_reads_back(tmp_path: Path) -> None:
    long = "x" * 300_000  # past the csv module's default field limit
    segment = Segment(0, 2, 0, 0, {"a": long}, 0, 1, "stem")
    repository = Repository(tmp_path)
    repository.create(RunSettings.of(Space(space()), 9, 3, 0, 1))
    DecisionLog(repository).append(segment)
    with open(tmp_path / "decisions.csv", "ab") as handle:
        handle.write(b"0,2,1,0,0,1,,{}")  # torn by a kill: no CRC, no newline
    DecisionLog(repository).append(segment)
    read = DecisionLog(repository).read()
    assert [d.hparams for d in read] == [{"a": long}, {"a": long}]


def test_a_time_limit_counts_the_time_earlier_invocations_used() -> None:
    budget = Budget(time_limit="10m", time_used=180.0)
    assert budget.spent(419.0, 0) is None and budget.spent(420.0, 0) == "time_limit"
    assert budget.time_left(60.0) == 360.0
    assert budget.time_text() == "time limit 10m, 7m left"
    assert Budget(time_limit=60, time_used=90.0).time_text() == "time limit 1m, 0s left"
    assert Budget(max_epochs=5).time_text() is None
    with pytest.raises(ValueError, match="time_used must be seconds >= 0"):
        Budget(time_used=-1.0)
