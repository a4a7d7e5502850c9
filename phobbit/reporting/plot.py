"""Plots of a run with matplotlib (``pip install "phobbit[plot]"``): learning curves per
bracket, the workers' timeline, and the objective against each hyperparameter.

Each plot is a function of plain tables (the repository's segment rows, the
per-epoch curves, the results table) that draws on a matplotlib ``Figure`` made
without pyplot, so nothing here touches a global backend or opens a window;
``plot_repository`` reads a repository and saves a file (``phobbit plot``).

- ``plot_curves``: every configuration's objective against epochs, one panel
  per bracket; configurations promoted past a rung are drawn in colour, the
  others in grey, and the rung cuts (the epochs where the reducer chose) as
  dashed lines.
- ``plot_timeline``: one lane per GPU (or CPU worker), one bar per segment from
  its start to its end, coloured by bracket, so idle time shows as gaps.
- ``plot_hparams``: the objective of each configuration against each
  hyperparameter, one panel per hyperparameter.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phobbit.core.records import SegmentResult
from phobbit.core.schedule import brackets
from phobbit.core.space import Hyperparameter
from phobbit.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

KINDS = ("all", "curves", "timeline", "hparams")
CURVE_KEYS = ("Iteration", "Run", "ID", "Rung", "Epoch")
PANEL_INCHES = (5.0, 3.2)


def require() -> None:
    """Raises ``InputError`` with how to install matplotlib when it is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise InputError('matplotlib is not installed; pip install "phobbit[plot]"')


def _figure(columns: int, rows: int) -> Figure:
    from matplotlib.figure import Figure

    return Figure(
        figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows), layout="constrained"
    )


def _bracket_colors(values: Iterable[int]) -> dict[int, Any]:
    from matplotlib import colormaps

    ordered = sorted(set(values), reverse=True)
    palette = colormaps["tab10"]
    return {s: palette(i % 10) for i, s in enumerate(ordered)}


# -- (a) learning curves ------------------------------------------------------------


def curve_points(
    rows: Iterable[SegmentResult], curves: pd.DataFrame | None, objective: str = "val_loss"
) -> dict[tuple[int, int, int], list[tuple[int, float]]]:
    """(epoch, objective) points of each configuration (iteration, s, id), epochs ascending.

    With ``curves`` every epoch; without (a repository of a phobbit that recorded no
    curves), each segment's last val loss at its last epoch.
    """
    points: dict[tuple[int, int, int], list[tuple[int, float]]] = {}
    if curves is not None and not curves.empty and objective in curves.columns:
        for (i, s, c), frame in curves.groupby(["Iteration", "Run", "ID"], sort=True):
            ordered = frame.sort_values("Epoch")
            points[(int(i), int(s), int(c))] = [
                (int(e), float(v))
                for e, v in zip(ordered["Epoch"], ordered[objective], strict=True)
                if v is not None and math.isfinite(float(v))
            ]
        return points
    if objective != "val_loss":
        return {}  # rows hold the val loss at segment ends, no other metric
    for row in rows:
        if row.ok and row.last_val_loss is not None and math.isfinite(row.last_val_loss):
            points.setdefault((row.iteration, row.s, row.id), []).append(
                (row.epochs, float(row.last_val_loss))
            )
    return {key: sorted(value) for key, value in sorted(points.items())}


def plot_curves(
    rows: Sequence[SegmentResult],
    curves: pd.DataFrame | None,
    R: int,
    eta: int,
    objective: str = "val_loss",
    figure: Figure | None = None,
) -> Figure:
    """Every configuration's objective against epochs, one panel per bracket (and iteration).

    Args:
        rows: the repository's segment rows (which rung each configuration reached).
        curves: the per-epoch curves, or None (then each segment's last val loss).
        R, eta: the run's settings (the rung cuts).
        objective: the curves column to draw.
        figure: draw into this figure (a subfigure, say) instead of a new one.
    """
    points = curve_points(rows, curves, objective)
    reached: dict[tuple[int, int, int], int] = {}
    for row in rows:
        key = (row.iteration, row.s, row.id)
        reached[key] = max(reached.get(key, 0), row.rung)
    panels = sorted({(i, s) for i, s, _ in points} or {(0, b.s) for b in brackets(R, eta)})
    panels.sort(key=lambda p: (p[0], -p[1]))
    several = len({i for i, _ in panels}) > 1
    figure = figure or _figure(min(3, len(panels)), -(-len(panels) // 3))
    axes = figure.subplots(-(-len(panels) // 3), min(3, len(panels)), squeeze=False).ravel()
    cuts = {b.s: [r.epochs for r in b.rungs[:-1]] for b in brackets(R, eta)}
    colors = _bracket_colors(s for _, s in panels)
    for ax, (iteration, s) in zip(axes, panels, strict=False):
        for epoch in cuts.get(s, []):
            ax.axvline(epoch, color="0.6", linestyle="--", linewidth=0.8)
        for (i, bracket, config), line in points.items():
            if (i, bracket) != (iteration, s) or not line:
                continue
            epochs, values = zip(*line, strict=True)
            promoted = reached.get((i, bracket, config), 0) > 0
            ax.plot(
                epochs,
                values,
                marker="o" if len(line) < 3 else None,
                markersize=3,
                color=colors[s] if promoted else "0.7",
                linewidth=1.6 if promoted else 0.8,
                zorder=3 if promoted else 2,
                label=f"id {config}" if promoted else None,
            )
        ax.set_title(f"iteration {iteration}, run {s}" if several else f"run {s}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(objective)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle(f"{objective} per epoch (promoted in colour, rung cuts dashed)")
    return figure


# -- (b) timeline -------------------------------------------------------------------


def _device(row: SegmentResult) -> str:
    return "CPU" if row.gpu in ("", "-1") else f"GPU {row.gpu}"


def timeline_lanes(rows: Iterable[SegmentResult]) -> list[tuple[str, list[SegmentResult]]]:
    """The segments each worker ran, as (label, segments) lanes.

    Segments of one device (a GPU, or the CPU) on one host are packed into as few
    lanes as never overlap (one per worker slot that ran at once), first started
    first. Rows the driver wrote for a worker that died (pid 0) ran nowhere and
    are left out.
    """
    devices: dict[tuple[str, str], list[SegmentResult]] = {}
    for row in rows:
        if row.pid and row.end >= row.start:
            devices.setdefault((row.host, _device(row)), []).append(row)
    several_hosts = len({host for host, _ in devices}) > 1
    lanes: list[tuple[str, list[SegmentResult]]] = []
    for (host, device), segments in sorted(devices.items()):
        packed: list[list[SegmentResult]] = []
        for row in sorted(segments, key=lambda r: (r.start, r.end)):
            for lane in packed:
                if lane[-1].end <= row.start:
                    lane.append(row)
                    break
            else:
                packed.append([row])
        prefix = f"{host} " if several_hosts else ""
        for number, lane in enumerate(packed):
            if device == "CPU":
                label = f"{prefix}CPU {number}"
            else:
                label = f"{prefix}{device}" + (f" #{number}" if len(packed) > 1 else "")
            lanes.append((label, lane))
    return lanes


def plot_timeline(rows: Sequence[SegmentResult], figure: Figure | None = None) -> Figure:
    """One lane per worker, one bar per segment (start to end), coloured by bracket.

    Bars are ``Rectangle`` patches of the axes, in lane order, each from
    ``row.start - t0`` seconds and ``row.end - row.start`` wide, where ``t0`` is the
    first start.
    """
    lanes = timeline_lanes(rows)
    figure = figure or _figure(2, max(1, len(lanes) // 4 + 1))
    ax: Axes = figure.subplots()
    t0 = min((r.start for _, lane in lanes for r in lane), default=0.0)
    colors = _bracket_colors(r.s for _, lane in lanes for r in lane)
    labelled: set[int] = set()
    for y, (_, lane) in enumerate(lanes):
        for row in lane:
            ax.barh(
                y,
                row.end - row.start,
                left=row.start - t0,
                height=0.8,
                color=colors[row.s] if row.ok else "black",
                edgecolor="white",
                linewidth=0.5,
                label=f"run {row.s}" if row.s not in labelled else None,
            )
            labelled.add(row.s)
    ax.set_yticks(range(len(lanes)), [label for label, _ in lanes])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first segment started")
    if labelled:
        ax.legend(loc="upper right", fontsize="small")
    busy = sum(r.end - r.start for _, lane in lanes for r in lane)
    span = max((r.end for _, lane in lanes for r in lane), default=t0) - t0
    used = busy / (span * len(lanes)) if span > 0 and lanes else 0.0
    ax.set_title(f"segments per worker (busy {100 * used:.0f}% of {span:.3g} s; failed in black)")
    return figure


# -- (c) objective against hyperparameters ------------------------------------------


def plot_hparams(
    results: pd.DataFrame,
    space: Sequence[Hyperparameter],
    objective: str = "Val Loss",
    figure: Figure | None = None,
) -> Figure:
    """The objective of each configuration against each hyperparameter, one panel each.

    Args:
        results: the results table (``Hparams`` and the ``objective`` column).
        space: the hyperparameters (log axes for log-uniform ones, categories for choices).
        objective: the results column to draw (``Val Loss`` by default).
    """
    ok = results[results[objective].notna()] if objective in results else results.iloc[0:0]
    columns = min(3, max(1, len(space)))
    figure = figure or _figure(columns, -(-max(1, len(space)) // columns))
    axes = figure.subplots(-(-max(1, len(space)) // columns), columns, squeeze=False).ravel()
    colors = _bracket_colors(ok["Run"]) if len(ok) else {}
    for ax, hp in zip(axes, space, strict=False):
        values = [h.get(hp.name) for h in ok["Hparams"]]
        ys = list(ok[objective])
        if hp.distribution == "choice":
            labels = [repr(v) for v in hp.distr_args]
            xs = [labels.index(repr(v)) if repr(v) in labels else -1 for v in values]
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        else:
            xs = values
            if hp.distribution == "log-uniform":
                ax.set_xscale("log")
        ax.scatter(xs, ys, s=14, c=[colors[s] for s in ok["Run"]] if len(ok) else None)
        ax.set_xlabel(hp.name)
        ax.set_ylabel(objective)
    for ax in axes[len(space) :]:
        ax.set_visible(False)
    figure.suptitle(f"{objective} against each hyperparameter (colour: run)")
    return figure


# -- a repository -------------------------------------------------------------------


def plot_repository(
    path: str | os.PathLike,
    output: str | os.PathLike,
    kind: str = "all",
    objective: str | None = None,
    dpi: int = 100,
) -> Path:
    """Draws the run in repository ``path`` and saves it to ``output`` (PNG, SVG, PDF ...).

    Args:
        kind: ``curves``, ``timeline``, ``hparams``, or ``all`` (one figure, the
            three stacked).
        objective: the curves column to draw; by default the run's objective (the
            results table's column of the same name is drawn against hparams).

    Returns:
        The file written.

    Raises:
        InputError: for an unknown kind, an output whose name has no image format
            matplotlib writes, or a folder that does not exist or cannot be written,
            and when matplotlib is not installed.
        RepositoryError: when the folder holds no readable run.

    Example:
        >>> plot_repository("phobbit_repo", "run.png", kind="timeline")
    """
    if kind not in KINDS:
        raise InputError(f"kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    require()
    from matplotlib.backend_bases import FigureCanvasBase

    output = Path(output)
    formats = FigureCanvasBase.get_supported_filetypes()
    if output.suffix.lstrip(".").lower() not in formats:
        raise InputError(
            f"cannot tell the image format of {output}: end its name with one of "
            f"{', '.join('.' + f for f in sorted(formats))}"
        )
    if not output.parent.is_dir():
        raise InputError(f"folder {output.parent} does not exist: make it, or write elsewhere")
    from phobbit.storage.view import open_repository

    run = open_repository(path)
    rows = list(run.repository.iter_results())
    settings = run.settings
    hparams = settings.space.hparams
    goal = settings.goal
    objective = objective or goal.name
    column = "Val Loss" if objective == "val_loss" else goal.label

    def curves(figure: Figure | None = None) -> Figure:
        return plot_curves(rows, run.curves(), settings.R, settings.eta, objective, figure)

    def timeline(figure: Figure | None = None) -> Figure:
        return plot_timeline(rows, figure)

    def by_hparam(figure: Figure | None = None) -> Figure:
        return plot_hparams(run.results(), hparams, column, figure)

    if kind == "all":
        figure = _figure(3, 6)
        top, middle, bottom = figure.subfigures(3, 1, height_ratios=[3, 1.5, 1.5])
        curves(top)
        timeline(middle)
        by_hparam(bottom)
    else:
        figure = {"curves": curves, "timeline": timeline, "hparams": by_hparam}[kind]()
    try:
        figure.savefig(output, dpi=dpi)
    except OSError as exc:
        raise InputError(f"cannot write {output}: {exc.strerror or exc}") from None
    return output
