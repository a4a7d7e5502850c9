"""The results table, shaped like Hobbit's, built from the repository's rows."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from phobbit.core.objective import VAL_LOSS, Objective
from phobbit.core.records import SegmentResult, Status

COLUMNS = [
    "Hparams",
    "ID",
    "Run",
    "Val Loss",
    "Epochs",
    "Rung",
    "Status",
    "Error",
    "Iteration",
    "GPU",
    "Train Time",
    "Start",
    "End",
]


def results_frame(rows: Iterable[SegmentResult], objective: Objective = VAL_LOSS) -> pd.DataFrame:
    """One row per configuration, at the last rung it reached, best objective first.

    The index is ``"<run>-<id>"`` as in Hobbit (``"<iteration>:<run>-<id>"`` when
    there are several iterations). ``Val Loss`` is the lowest validation loss the
    configuration saw; with another ``objective``, it is the val loss of the
    epoch that scored best by it, whose value is in a column of its own
    (``objective.label``, e.g. ``Val Accuracy``) right after ``Val Loss``.
    ``Train Time`` adds up its segments' seconds; failed configurations
    (``Status`` "failed", ``Error`` saying why) come last. A failed row that is
    not final (``SegmentResult.final``: its checkpoint, not its code, failed) is
    left out: its segment is trained again. A configuration a callback stopped
    early shows the epochs it trained and ``Status`` "ok" (its row's note says so).
    """
    extra = [] if objective.is_val_loss else [objective.label]
    columns = COLUMNS[:4] + extra + COLUMNS[4:]
    latest: dict[tuple[int, int, int], SegmentResult] = {}
    seconds: dict[tuple[int, int, int], float] = {}
    first: dict[tuple[int, int, int], float] = {}
    for row in rows:
        if not row.final:
            continue  # a failure outside user code: the segment is trained again
        config = (row.iteration, row.s, row.id)
        seconds[config] = seconds.get(config, 0.0) + max(0.0, row.end - row.start)
        first[config] = min(first.get(config, row.start), row.start)
        if config not in latest or row.rung > latest[config].rung:
            latest[config] = row
    several = len({config[0] for config in latest}) > 1
    records, index = [], []
    for config, row in latest.items():
        iteration, s, config_id = config
        index.append(f"{iteration}:{s}-{config_id}" if several else f"{s}-{config_id}")
        records.append(
            {
                "Hparams": row.hparams,
                "ID": config_id,
                "Run": s,
                "Val Loss": np.nan if row.val_loss is None else row.val_loss,
                **{
                    label: np.nan if row.objective is None or not row.ok else row.objective
                    for label in extra
                },
                "Epochs": row.epochs,
                "Rung": row.rung,
                "Status": row.status.value,
                "Error": row.error,
                "Iteration": iteration,
                "GPU": row.gpu,
                "Train Time": seconds[config],
                "Start": pd.Timestamp(first[config], unit="s"),
                "End": pd.Timestamp(row.end, unit="s"),
            }
        )
    frame = pd.DataFrame(records, index=pd.Index(index, name="Trial"), columns=columns)
    if frame.empty:
        return frame
    ranked = frame[extra[0]] if extra else frame["Val Loss"]
    score = -ranked if objective.maximize else ranked
    order = np.lexsort(
        (
            frame["ID"],
            -frame["Run"],
            frame["Iteration"],
            score.fillna(np.inf),
            frame["Status"] != Status.OK,
        )
    )
    return frame.iloc[order]
