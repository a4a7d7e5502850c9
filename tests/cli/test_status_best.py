"""``phobbit status`` and ``phobbit best`` read from the column index: the same tables, quick."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from conftest import run_settings
from rich.console import Console

from phobbit.cli import commands
from phobbit.core.objective import Objective
from phobbit.core.records import RunSettings, SegmentResult
from phobbit.core.schedule import brackets
from phobbit.storage.repository import Repository
from phobbit.storage.view import open_repository


def fill(repo: Path, settings: RunSettings, iterations: int, seed: int = 0) -> Repository:
    """Every segment of ``iterations`` iterations, with seeded losses, failures, early stops."""
    repository = Repository(repo)
    repository.create(settings)
    draw = random.Random(seed)
    for i in range(iterations):
        for bracket in brackets(settings.R, settings.eta):
            for rung in bracket.rungs:
                start = bracket.rungs[rung.index - 1].epochs if rung.index else 0
                for n in range(rung.n):
                    failed = draw.random() < 0.1
                    loss = None if failed else round(draw.uniform(0.1, 1.0), 3)
                    accuracy = None if failed else round(draw.uniform(0.5, 1.0), 3)
                    repository.append(
                        SegmentResult(
                            i, bracket.s, n, rung.index, start, rung.epochs, loss, loss,
                            "failed" if failed else "ok", "ValueError: boom" if failed else "",
                            {"x": n / 10}, "0", start=100.0 + n, end=150.0 + n + rung.index,
                            objective=accuracy,
                        )
                    )  # fmt: skip
    return repository


def printed(*renderables: object) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    for renderable in renderables:
        console.print(renderable)
    return console.file.getvalue()


def test_status_of_many_iterations_says_the_finished_ones_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    fill(tmp_path / "repo", run_settings(R=3, iterations=5), 5)
    assert commands.main(["status", str(tmp_path / "repo")]) == 0
    out = capsys.readouterr().out
    assert "Iterations 0-2: every segment done" in out
    assert " 3:1 " in out and " 4:0 " in out and " 2:1 " not in out
    segments = 5 * sum(r.n for b in brackets(3, 3) for r in b.rungs)
    assert f"{segments}/{segments} segments" in out  # counted over every iteration all the same


def test_fold_keeps_unfinished_iterations_and_the_last_finished_one() -> None:
    from phobbit.storage.view import schedule_progress

    # R=3: bracket 1 trains 3 then 1 configuration, bracket 0 trains 2; iteration 2's
    # first rung and iteration 5's last are not done.
    done = {(i, 1, 0): 3 for i in range(6) if i != 2} | {(i, 1, 1): 1 for i in range(6)}
    done |= {(i, 0, 0): 2 for i in range(5)}
    rungs = schedule_progress(brackets(3, 3), 6, done)
    words, shown = commands._fold_finished(rungs)
    assert words == "0-1, 3"  # 4, the last finished, stays
    assert sorted({r.iteration for r in shown}) == [2, 4, 5]
    assert commands._fold_finished(schedule_progress(brackets(3, 3), 3, done)) == (
        "",
        schedule_progress(brackets(3, 3), 3, done),
    )


@pytest.mark.parametrize("objective", [None, Objective("val_accuracy", "max")])
def test_best_from_the_index_prints_the_table_the_results_frame_gives(
    tmp_path: Path, objective: Objective | None
) -> None:
    settings = run_settings(R=9, iterations=2)
    if objective is not None:
        settings = RunSettings.of(settings.space, 9, 3, 0, 2, objective=objective)
    fill(tmp_path / "repo", settings, 2)
    run = open_repository(tmp_path / "repo")
    order = run.hparam_names
    for top in (1, 5, 1000):
        assert printed(commands.ranking_table(run.ranking(), top, order)) == printed(
            commands.best_table(run.results(), top, order)
        )
    best = run.best(1000)
    frame = run.results()
    assert [b.trial for b in best] == list(frame.index)
    assert [b.train_time_s for b in best] == [round(t, 3) for t in frame["Train Time"]]
