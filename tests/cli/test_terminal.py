"""Progress displays: the terminal's tracker, rich display and lines, and the library's lines."""

from __future__ import annotations

import dataclasses
import io
import statistics

import pytest
from helpers import report_serially
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from phobbit import Hyperparameter
from phobbit.cli.commands import best_table
from phobbit.cli.terminal import LineReporter, LiveReporter, render
from phobbit.core.plan import Plan
from phobbit.core.records import Segment, SegmentResult, Tuning
from phobbit.core.space import Space
from phobbit.reporting.plain import PlainReporter, SlowWatch
from phobbit.reporting.progress import ProgressTracker
from phobbit.storage.results import results_frame
from phobbit.storage.view import estimate_left


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def result_of(segment: Segment, gpu: str, loss: float, ok: bool = True) -> SegmentResult:
    return segment.result(
        val_loss=loss if ok else None,
        last_val_loss=loss if ok else None,
        status="ok" if ok else "failed",
        error="" if ok else "ValueError: boom",
        gpu=gpu,
        pid=1234,
    )


def text_of(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(renderable)
    return console.export_text()


def test_estimate_left_scales_remaining_epochs_by_the_rate_so_far() -> None:
    assert estimate_left(done=10, total=30, trained=10, seconds=5) == 10
    assert estimate_left(done=10, total=30, trained=0, seconds=5) is None
    assert estimate_left(done=30, total=30, trained=30, seconds=5) == 0


def test_tracker_counts_epochs_and_infers_the_gpu_of_new_segments(space: Space) -> None:
    clock = Clock()
    plan = Plan(Tuning.of(space, R=9, eta=3), workers=2)
    tracker = ProgressTracker(slots=["0", "1"], clock=clock)
    tracker.started(plan, resumed=0)
    assert (tracker.epochs_done, tracker.epochs_total) == (0, 69)
    assert (tracker.segments_done, tracker.segments_total) == (0, 22)
    first, second = plan.next_segment(), plan.next_segment()
    tracker.dispatched(first)
    tracker.dispatched(second)
    assert {r.gpu for r in tracker.running.values()} == {"?"}  # nobody has reported yet
    clock.now += 10
    plan.record(result_of(first, gpu="1", loss=0.5))
    tracker.finished(result_of(first, gpu="1", loss=0.5))
    third = plan.next_segment()
    tracker.dispatched(third)
    assert tracker.running[third.key].gpu == "1"  # the worker that just reported is the free one
    trained = first.epochs - first.start_epoch
    assert tracker.epochs_done == trained and tracker.epochs_now == trained
    # A fresh worker's first segment carries its start-up: it gives no time per epoch.
    assert tracker.left() is None
    assert tracker.best is not None and tracker.best.val_loss == 0.5

    shown = text_of(render(tracker, title="phobbit train"))
    assert "Segments done per bracket and rung" in shown
    assert "GPU 1" in shown and "GPU ?" in shown
    assert f"{trained}/69 epochs" in shown and "1/22 segments" in shown
    assert "Best Val Loss (min) 0.5" in shown

    clock.now += 4  # the worker that came back trains its next segment in 4 s
    plan.record(result_of(third, gpu="1", loss=0.6))
    tracker.finished(result_of(third, gpu="1", loss=0.6))
    assert tracker.cost.fit() == (0.0, 4 / (third.epochs - third.start_epoch))
    left = tracker.left()
    assert left is not None and left > 0


def test_tracker_knows_the_device_when_every_slot_is_the_cpu(space: Space) -> None:
    plan = Plan(Tuning.of(space, R=3, eta=3))
    tracker = ProgressTracker(slots=["-1", "-1"])
    tracker.started(plan, resumed=0)
    segment = plan.next_segment()
    tracker.dispatched(segment)
    assert "CPU" in text_of(render(tracker))


def test_live_reporter_draws_on_a_terminal_and_stops(space: Space) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    plan = Plan(Tuning.of(space, R=3, eta=3))
    reporter = LiveReporter(console, "phobbit train model.py", slots=["0"])
    reporter.started(plan, resumed=0)
    while (segment := plan.next_segment()) is not None:
        reporter.dispatched(segment)
        result = result_of(segment, gpu="0", loss=1.0 / (1 + segment.id), ok=segment.id != 1)
        plan.record(result)
        reporter.finished(result)
    reporter.closed()
    shown = out.getvalue()
    assert "Run 1: 3x1, 1x3" in shown  # the schedule first
    assert "FAILED run" in shown and "ValueError: boom" in shown
    assert "Trained 6 segments" in shown


def test_line_reporter_announces_each_rung_once(space: Space) -> None:
    out = io.StringIO()
    plan = Plan(Tuning.of(space, R=3, eta=3))
    reporter = LineReporter(out, verbose=1, title="phobbit train model.py")
    reporter.started(plan, resumed=0)
    while (segment := plan.next_segment()) is not None:
        reporter.dispatched(segment)
        result = result_of(segment, gpu="-1", loss=1.0 / (1 + segment.id))
        plan.record(result)
        reporter.finished(result)
    reporter.closed()
    lines = out.getvalue().splitlines()
    assert lines[0] == "phobbit train model.py"
    done = [line for line in lines if " done (" in line]
    assert len(done) == 3  # run 1 rung 0, run 1 rung 1, run 0 rung 0
    assert "11/11 epochs (100%), 6/6 segments" in lines[-1]


def test_user_text_reaches_any_console_as_written_never_as_markup() -> None:
    """Errors, hparams, names and titles print as they are, on a console that reads markup."""
    hostile = Space(
        [
            Hyperparameter("[red]c", "choice", ["[/]", "[bold]b[/bold]", ":smile:"]),
            Hyperparameter("x", "uniform", (0, 1)),
        ]
    )
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)  # markup and emoji on
    plan = Plan(Tuning.of(hostile, R=3, eta=3))
    reporter = LiveReporter(console, "phobbit train [dim]m.py --repo r_[exp1]", slots=["0"])
    reporter.started(plan, resumed=0)
    segment = plan.next_segment()
    reporter.dispatched(segment)
    failed = segment.result(
        val_loss=None,
        last_val_loss=None,
        status="failed",
        error="ValueError: [/] broke on [red] :smile:",
        gpu="0",
        pid=1,
    )
    reporter.finished(failed)
    reporter.retrying(plan.next_segment(), "died on [/]", 1)
    best = result_of(plan.next_segment(), gpu="0", loss=0.5)
    reporter.tracker.finished(best)
    shown = text_of(render(reporter.tracker, reporter.title))
    reporter.closed()
    printed = out.getvalue()
    assert "ValueError: [/] broke on [red] :smile:" in printed
    assert "died on [/]" in printed
    assert "phobbit train [dim]m.py --repo r_[exp1]" in shown
    assert f"[red]c={best.hparams['[red]c']!r}" in shown

    frame = results_frame([failed, best])
    table = text_of(best_table(frame, 5, ["[red]c", "x"]))
    assert f"[red]c={best.hparams['[red]c']!r}" in table
    assert "failed: ValueError: [/] broke on [red] :smile:" in table


def test_a_segment_retrained_from_a_bad_checkpoint_is_said_and_counted(space: Space) -> None:
    note = "checkpoint 0-1-2.keras is unreadable (BadZipFile); retrained from scratch"
    live, lines = io.StringIO(), io.StringIO()
    reporters = [
        LiveReporter(Console(file=live, force_terminal=True, width=200)),
        LineReporter(lines, verbose=1),
    ]

    def retrained_once(segment: Segment) -> SegmentResult:
        result = result_of(segment, gpu="-1", loss=1.0 / (1 + segment.id))
        if (segment.s, segment.id, segment.rung) == (1, 2, 0):
            result = dataclasses.replace(result, note=note)
        return result

    report_serially(Plan(Tuning.of(space, R=3, eta=3)), reporters, retrained_once)
    for out in (live.getvalue(), lines.getvalue()):
        assert f"retrained run 1 id 2 rung 0: {note}" in out
        assert "1 retrained from a bad checkpoint" in out


def timed_result(segment: Segment, start: float, seconds: float) -> SegmentResult:
    return segment.result(
        val_loss=0.5,
        last_val_loss=0.5,
        status="ok",
        error="",
        gpu="0",
        pid=1234,
        start=start,
        end=start + seconds,
    )


def test_a_segment_far_slower_than_its_peers_is_flagged_with_a_timeout_hint(space: Space) -> None:
    clock = Clock()
    plan = Plan(Tuning.of(space, R=9, eta=3), workers=2)
    tracker = ProgressTracker(slots=["0", "1"], clock=clock)
    tracker.started(plan, resumed=0)
    hung = plan.next_segment()  # one epoch
    tracker.dispatched(hung)
    for _ in range(3):  # peers that took 2 s per epoch
        peer = plan.next_segment()
        tracker.dispatched(peer)
        epochs = peer.epochs - peer.start_epoch
        plan.record(timed_result(peer, clock.now, 2.0 * epochs))
        tracker.finished(timed_result(peer, clock.now, 2.0 * epochs))
    clock.now += 50  # 25 times its peers' time, but under a minute: not yet
    assert tracker.slow_running() == []
    assert " slow" not in text_of(render(tracker))
    clock.now += 20
    assert [r.segment for r in tracker.slow_running()] == [hung]
    shown = text_of(render(tracker))
    assert "0:01:10 slow" in shown
    assert f"run {hung.s} id {hung.id} rung {hung.rung} has run 70s" in shown
    assert "--segment-timeout" in shown


def test_plain_lines_flag_a_slow_segment_once(space: Space) -> None:
    clock = Clock()
    out = io.StringIO()
    plan = Plan(Tuning.of(space, R=9, eta=3), workers=2)
    reporter = PlainReporter(out, verbose=1, clock=clock)
    reporter.started(plan, resumed=0)
    hung = plan.next_segment()
    reporter.dispatched(hung)
    for _ in range(2):
        peer = plan.next_segment()
        reporter.dispatched(peer)
        reporter.finished(timed_result(peer, clock.now, 1.0))
    clock.now += 600
    reporter.check_slow()
    assert "has run" not in out.getvalue(), "two peers are too few to judge"
    peer = plan.next_segment()
    reporter.dispatched(peer)
    reporter.finished(timed_result(peer, clock.now, 1.0))  # the third peer: now it is slow
    reporter.check_slow()
    reporter.closed()
    flagged = [line for line in out.getvalue().splitlines() if "has run" in line]
    assert len(flagged) == 1 and flagged[0].startswith(f"run {hung.s} id {hung.id} rung 0")
    assert "--segment-timeout" in flagged[0]


@given(st.lists(st.floats(0.001, 100), min_size=1, max_size=30))
def test_slow_watch_median_is_the_median_of_every_segment_learnt(seconds: list[float]) -> None:
    watch = SlowWatch()
    segment = Segment(0, 0, 0, 0, {}, start_epoch=0, epochs=1, checkpoint="c")
    for k, took in enumerate(seconds, 1):
        watch.finished(timed_result(segment, 0.0, took))
        assert watch.median() == pytest.approx(statistics.median(seconds[:k]))


def test_tracker_counts_a_resumed_run_and_ignores_duplicate_rows(space: Space) -> None:
    plan = Plan(Tuning.of(space, R=9, eta=3), workers=2)
    tracker = ProgressTracker()
    tracker.started(plan, resumed=1)
    resumed = plan.next_segment()
    plan.record(result_of(resumed, gpu="0", loss=0.3))  # recorded without a report
    segment = plan.next_segment()
    tracker.dispatched(segment)
    assert tracker.segments_done == 1
    result = result_of(segment, gpu="0", loss=0.5)
    plan.record(result)
    tracker.finished(result)
    plan.record(result)
    tracker.finished(result)  # a duplicate row: the plan ignores it, so does the count
    assert tracker.segments_done == 2 == sum(d for *_, d, _ in plan.progress())
    assert tracker.epochs_done == resumed.epochs + segment.epochs


def test_with_several_iterations_retry_retrain_and_slow_lines_name_the_iteration() -> None:
    from phobbit.reporting.plain import retrain_line, retry_line, slow_line

    segment = Segment(1, 2, 3, 0, {}, 0, 1, "m/1-2-3")
    result = segment.result(
        val_loss=0.5, last_val_loss=0.5, status="ok", error="", note="checkpoint gone"
    )
    for several, at in ((True, "iteration 1 run 2 id 3 rung 0"), (False, "run 2 id 3 rung 0")):
        lines = [
            retry_line(segment, "killed", 1, several),
            retrain_line(result, several),
            slow_line(segment, 70.0, several),
        ]
        assert all(at in line for line in lines), lines
        assert several or all("iteration" not in line for line in lines)


def test_more_iterations_on_a_resumed_run_count_the_rows_already_there_from_the_start(
    tmp_path,
) -> None:
    from helpers import tuner

    from phobbit.execution.simulated import SimulatedExecutor
    from phobbit.storage.repository import Repository

    tuner(tmp_path / "repo", executor=SimulatedExecutor(2)).run(9, 3, iterations=1)
    previous = list(Repository(tmp_path / "repo").iter_results())
    counts: list[int] = []

    class Watching(LineReporter):
        def finished(self, result: SegmentResult) -> None:
            super().finished(result)
            counts.append(self.tracker.segments_done)

    out = io.StringIO()
    more = tuner(tmp_path / "repo", executor=SimulatedExecutor(2))
    more.reporter = Watching(out, previous=previous)
    more.run(9, 3, iterations=2)
    # The plan reaches iteration 0's rows only as it dispatches around them; the
    # counters knew them from the start: each new result adds one to all already there.
    assert counts == list(range(len(previous) + 1, 2 * len(previous) + 1))
    assert "iteration 0 run" not in out.getvalue()  # its rungs were announced by that run


def test_a_one_rung_table_keeps_its_title_on_one_line() -> None:
    from phobbit.cli.terminal import rung_table
    from phobbit.storage.view import RungProgress

    # R=3, eta=3: run 0 has a single rung, so the table is narrower than its title, which
    # rich would otherwise wrap mid-sentence ("...per bracket and" / "rung").
    rungs = [RungProgress(0, 0, 0, done=2, n=2, epochs=3, segment_epochs=3)]
    lines = text_of(rung_table(rungs)).splitlines()
    assert lines[0].strip() == "Segments done per bracket and rung"
