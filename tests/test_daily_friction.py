"""What a new user runs into daily: GPUs that are not there, workers' noise on stderr, a
pipe closed early, a resume with nothing left, several iterations, a run where everything
failed, CPU workers told apart."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from backend_probes import always_failing_curve
from synthetic import x_curve

from phobbit import Hyperparameter, ParallelHyperband
from phobbit.cli import commands as cli
from phobbit.cli.terminal import LineReporter
from phobbit.core.records import SegmentResult, Tuning
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.reporting.progress import ProgressTracker, device_label
from phobbit.storage.repository import Repository
from phobbit.testing import SyntheticTrainable

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SYNTHETIC = TESTS / "models" / "synthetic.py"
SPACE = [Hyperparameter("x", "uniform", (0.0, 1.0))]
NOISY_MODEL = """
from backend_probes import noisy_curve
from phobbit import Hyperparameter
from phobbit.testing import SyntheticTrainable

hparam_ranges = [Hyperparameter("x", "uniform", (0.0, 1.0))]
trainable = SyntheticTrainable(curve=noisy_curve)
"""


def plain_run(folder: Path, curve=x_curve, iterations: int = 1) -> list[str]:
    """A run on the simulated executor with the CLI's plain lines; returns them."""
    out = io.StringIO()
    executor = SimulatedExecutor(2)
    tuner = ParallelHyperband(
        None,
        SPACE,
        folder,
        trainable=SyntheticTrainable(curve=curve),
        executor=executor,
        reporter=LineReporter(
            out,
            1,
            "title",
            list(Repository(folder).iter_results()) if folder.exists() else [],
            executor.slots,
        ),
        tensorboard=False,
    )
    tuner.run(R=9, eta=3, iterations=iterations)
    return out.getvalue().splitlines()


def test_gpus_on_a_machine_without_nvidia_smi_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    repo = tmp_path / "repo"
    code = cli.main(["train", str(SYNTHETIC), "--gpus", "0,1", "--repo", str(repo)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "--gpus 0,1: this machine shows no NVIDIA GPU" in err and "use --jobs N" in err
    assert not repo.exists()


def test_workers_noise_stays_off_the_display_unless_verbose(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    model = tmp_path / "noisy.py"
    model.write_text(NOISY_MODEL)
    quiet, loud = tmp_path / "quiet", tmp_path / "loud"
    args = ["train", str(model), "--jobs", "2", "--R", "3", "--progress", "plain"]
    assert cli.main([*args, "--repo", str(quiet)]) == 0
    assert "cuInit" not in capfd.readouterr().err
    assert "cuInit" in (quiet / "workers.log").read_text()
    assert cli.main([*args, "--repo", str(loud), "-v"]) == 0
    assert "cuInit" in capfd.readouterr().err
    assert not (loud / "workers.log").exists()


def test_best_piped_into_head_exits_quietly(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo")
    from conftest import run_settings

    from phobbit.core.schedule import brackets

    # 20 iterations of R=81: 2,860 configurations, far more than a pipe's buffer holds;
    # rows the run can have written (a view skips the others).
    repo.create(run_settings(R=81, iterations=20))
    for i in range(20):
        for b in brackets(81, 3):
            for n in range(b.n):
                epochs = b.rungs[0].epochs
                row = SegmentResult(i, b.s, n, 0, 0, epochs, 0.5, 0.5, "ok", "", {"x": n / b.n})
                repo.append(row)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    for extra in ([], ["--json"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "phobbit", "best", str(repo.path), "--top", "2860", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()  # as `head -1` does once it has its line
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 0, err
        assert err == ""


def test_a_resume_with_nothing_left_says_so(tmp_path: Path) -> None:
    plain_run(tmp_path / "repo")
    lines = plain_run(tmp_path / "repo")
    assert lines[-1] == "Nothing left to train: all 22 segments (69 epochs) are in the repository"
    assert not any("0/69" in line for line in lines)


def test_several_iterations_are_named_in_best_lines_and_totalled_in_the_header(
    tmp_path: Path,
) -> None:
    lines = plain_run(tmp_path / "repo", iterations=2)
    assert "2 iterations: 34 configurations, 138 epochs with checkpoint continuation" in lines
    best = [line for line in lines if "best so far" in line]
    assert best and all("(iteration " in line for line in best)
    assert "138/138 epochs (100%), 44/44 segments" in lines[-1]
    one = plain_run(tmp_path / "one")
    assert not any("iteration" in line for line in one)


def test_a_run_where_every_trial_failed_ends_without_an_estimate_of_what_is_left(
    tmp_path: Path,
) -> None:
    lines = plain_run(tmp_path / "repo", curve=always_failing_curve)
    last = lines[-1]
    assert "left ~" not in last
    # Every configuration failed at rung 0: the 17 segments of rung 0 ran, no other.
    assert last.startswith("Trained 17 segments: ") and "17/22 segments" in last
    assert "17 failed" in last
    assert "the other 5 planned segments never run: failed configurations are not promoted" in last


def finished(key: tuple[int, int, int, int], pid: int) -> SegmentResult:
    i, s, c, rung = key
    return SegmentResult(i, s, c, rung, 0, 1, 0.5, 0.5, "ok", "", {}, gpu="-1", pid=pid)


def test_cpu_workers_are_numbered_in_the_title_and_in_what_trains_now(tmp_path: Path) -> None:
    from phobbit.core.plan import Plan
    from phobbit.core.space import Space

    plan = Plan(Tuning.of(Space(SPACE), 9, 3), workers=2)
    tracker = ProgressTracker(["-1", "-1"])
    tracker.started(plan, 0)
    first, second = plan.next_segment(), plan.next_segment()
    tracker.dispatched(first)
    tracker.dispatched(second)
    labels = {k: device_label(r.gpu) for k, r in tracker.running.items()}
    assert sorted(labels.values()) == ["CPU 0", "CPU 1"]
    # The worker that finishes the second segment takes the next one: it keeps its number.
    tracker.finished(finished(second.key, pid=222))
    third = plan.next_segment()
    tracker.dispatched(third)
    assert device_label(tracker.running[third.key].gpu) == labels[second.key]
    tracker.finished(finished(first.key, pid=111))
    tracker.finished(finished(third.key, pid=222))
    fourth = plan.next_segment()
    tracker.dispatched(fourth)
    assert device_label(tracker.running[fourth.key].gpu) == labels[first.key]


def test_the_title_numbers_cpu_workers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["train", str(SYNTHETIC), "--jobs", "2", "--R", "3", "--progress", "plain"]
    assert cli.main([*args, "--repo", str(tmp_path / "repo")]) == 0
    assert "2 workers (CPU 0, CPU 1)" in capsys.readouterr().out


def test_the_live_display_names_iterations_of_what_trains_now(tmp_path: Path) -> None:
    from rich.console import Console

    from phobbit.cli.terminal import render
    from phobbit.core.plan import Plan
    from phobbit.core.space import Space

    plan = Plan(Tuning.of(Space(SPACE), 9, 3, iterations=2), workers=2)
    tracker = ProgressTracker(["-1", "-1"])
    tracker.started(plan, 0)
    segment = plan.next_segment()
    tracker.dispatched(segment)
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(render(tracker))
    shown = console.export_text()
    now = shown.split("Training now")[1].splitlines()
    assert "Iteration:Run" in now[1]
    assert now[2].split()[:4] == ["CPU", "0", f"{segment.iteration}:{segment.s}", str(segment.id)]
