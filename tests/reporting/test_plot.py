"""Plots of a run: files made from a small repository, and bars that are the rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import x_curve
from test_tensorboard import SPACE, curves_of

from phobbit import InputError, ParallelHyperband, open_repository
from phobbit.cli import commands as cli
from phobbit.core.records import SegmentResult
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.reporting import plot as phplot
from phobbit.testing import SyntheticTrainable

pytest.importorskip("matplotlib")
from matplotlib.patches import Rectangle  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plot") / "repo"
    ParallelHyperband(
        None,
        SPACE,
        folder,
        trainable=SyntheticTrainable(curve=x_curve),
        executor=SimulatedExecutor(2),
        verbose=0,
        tensorboard=False,
    ).run(R=9, eta=3)
    return folder


def row(config_id: int, s: int, gpu: str, start: float, end: float, **changes) -> SegmentResult:
    values = dict(
        iteration=0,
        s=s,
        id=config_id,
        rung=0,
        start_epoch=0,
        epochs=1,
        val_loss=0.5,
        last_val_loss=0.5,
        status="ok",
        error="",
        hparams={"x": 0.1},
        gpu=gpu,
        pid=100 + config_id,
        host="box",
        start=start,
        end=end,
    )
    values.update(changes)
    return SegmentResult(**values)


@pytest.mark.parametrize("kind", phplot.KINDS)
def test_phobbit_plot_makes_an_image_of_each_kind(
    repo: Path, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / f"{kind}.png"
    assert cli.main(["plot", str(repo), "-o", str(output), "--kind", kind]) == 0
    assert capsys.readouterr().out.strip() == str(output)
    assert output.read_bytes().startswith(PNG)


def test_an_unknown_kind_is_refused_before_anything_is_drawn(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="kind 'bars' is unknown; use one of all, curves"):
        phplot.plot_repository(repo, tmp_path / "x.png", kind="bars")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("name", "why"),
    [("x.txt", "cannot tell the image format of"), ("nowhere/x.png", "does not exist")],
)
def test_an_output_it_cannot_write_is_one_line_exit_2(
    repo: Path, tmp_path: Path, name: str, why: str, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["plot", str(repo), "-o", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip()
    assert why in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / name).exists()


def test_timeline_bars_are_the_rows_one_lane_per_worker() -> None:
    rows = [
        row(0, 2, "0", 10.0, 12.0),
        row(1, 2, "1", 10.5, 11.0),
        row(2, 1, "0", 12.0, 15.0),
        row(3, 1, "1", 13.0, 14.0, status="failed", error="boom", val_loss=None),
        row(4, 0, "0", 15.5, 16.0, pid=0),  # written by the driver for a dead worker
    ]
    figure = phplot.plot_timeline(rows)
    (ax,) = figure.axes
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    drawn = sorted(
        (round(b.get_x(), 6), round(b.get_width(), 6), round(b.get_y() + 0.4)) for b in bars
    )
    lanes = {"0": 0, "1": 1}
    expected = sorted((r.start - 10.0, r.end - r.start, lanes[r.gpu]) for r in rows if r.pid)
    assert drawn == expected
    assert [t.get_text() for t in ax.get_yticklabels()] == ["GPU 0", "GPU 1"]
    colors = {tuple(b.get_facecolor()) for b in bars}
    assert len(colors) == 3  # run 2, run 1, and black for the failed one


def test_cpu_workers_get_a_numbered_lane_each_and_overlapping_segments_never_share_one() -> None:
    rows = [row(i, 2, "-1", 3.0 * (i // 2), 3.0 * (i // 2) + 2.5) for i in range(6)]
    lanes = phplot.timeline_lanes(rows)
    assert [label for label, _ in lanes] == ["CPU 0", "CPU 1"]
    for _, lane in lanes:
        assert all(a.end <= b.start for a, b in zip(lane, lane[1:], strict=False))
    assert sorted(r.id for _, lane in lanes for r in lane) == list(range(6))


def test_curves_draw_one_line_per_configuration_per_bracket_promoted_in_colour(
    repo: Path,
) -> None:
    view = open_repository(repo)
    rows = list(view.repository.iter_results())
    curves = curves_of(repo)
    figure = phplot.plot_curves(rows, curves, 9, 3)
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["run 2", "run 1", "run 0"]
    reached: dict[tuple[int, int], int] = {}
    for r in rows:
        reached[(r.s, r.id)] = max(reached.get((r.s, r.id), 0), r.rung)
    for ax, s in zip(panels, (2, 1, 0), strict=True):
        lines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
        configs = sorted(c for (b, c) in reached if b == s)
        assert len(lines) == len(configs)
        promoted = sorted(ln.get_label() for ln in lines if not ln.get_label().startswith("_"))
        assert promoted == sorted(f"id {c}" for c in configs if reached[(s, c)] > 0)
        cuts = sorted(ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == "--")
        assert cuts == {2: [1, 3], 1: [3], 0: []}[s]
    # Every epoch of the curves is a point of its line.
    assert sum(
        len(ln.get_xdata()) for ax in panels for ln in ax.get_lines() if ln.get_linestyle() == "-"
    ) == len(curves)


def test_hparams_panels_have_one_point_per_configuration(repo: Path) -> None:
    results = open_repository(repo).results()
    figure = phplot.plot_hparams(results, SPACE)
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_xlabel() for ax in panels] == [hp.name for hp in SPACE]
    for ax in panels:
        (points,) = ax.collections
        assert len(points.get_offsets()) == len(results)
    assert panels[3].get_xscale() == "log"  # lr is log-uniform
