"""Every epoch recorded: ``epochs.csv`` rows, torn-row safety, and ``curves()``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import run_settings
from hypothesis import given
from hypothesis import strategies as st
from synthetic import x_curve

import phobbit
from phobbit import Hyperparameter, ParallelHyperband
from phobbit.core.records import EpochRow, SegmentResult
from phobbit.core.schedule import brackets
from phobbit.errors import StaleDriverError
from phobbit.storage.repository import Repository, decode_epoch, encode_epoch
from phobbit.testing import SyntheticTrainable

SPACE = [Hyperparameter("x", "uniform", (0.0, 1.0))]


def accuracy(hparams: dict, epoch: int) -> dict[str, float]:
    """A made-up accuracy that rises with epochs, best near x = 0.6 (not x_curve's 0.3)."""
    value = 1.0 - abs(hparams["x"] - 0.6) - 0.5 / epoch
    return {"accuracy": value + 0.01, "val_accuracy": value}


def synthetic_run(repo: Path, **trainable: object) -> phobbit.RepositoryView:
    tuner = ParallelHyperband(
        None,
        SPACE,
        repo,
        trainable=SyntheticTrainable(curve=x_curve, **trainable),
        n_jobs=2,
        verbose=0,
    )
    tuner.run(R=9, eta=3)
    return phobbit.open_repository(repo)


def test_curves_hold_every_epoch_trained_once_with_its_logged_metrics(repo: Path) -> None:
    view = synthetic_run(repo, metrics=accuracy)
    curves = view.curves()
    assert list(curves.columns) == [
        "Iteration",
        "Run",
        "ID",
        "Rung",
        "Epoch",
        "loss",
        "val_loss",
        "accuracy",
        "val_accuracy",
    ]
    # One row per epoch the plan trains: each segment's epochs, summed over brackets.
    planned = sum(
        rung.n * b.segment_epochs(rung.index) for b in brackets(9, 3) for rung in b.rungs
    )
    assert len(curves) == planned
    keys = list(zip(curves["Iteration"], curves["Run"], curves["ID"], curves["Epoch"]))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    hparams = {
        (row.iteration, row.s, row.id): row.hparams for row in view.repository.iter_results()
    }
    trainable = SyntheticTrainable(curve=x_curve, metrics=accuracy)
    for row in curves.itertuples(index=False):
        logs = trainable.logs(hparams[(row.Iteration, row.Run, row.ID)], row.Epoch)
        assert (row.loss, row.val_loss, row.accuracy, row.val_accuracy) == (
            logs["loss"],
            logs["val_loss"],
            logs["accuracy"],
            logs["val_accuracy"],
        )
    # Each configuration's epochs run 1 .. its last, without a gap, rung by rung.
    for _, epochs in curves.groupby(["Iteration", "Run", "ID"]):
        assert list(epochs["Epoch"]) == list(range(1, len(epochs) + 1))
        assert list(epochs["Rung"]) == sorted(epochs["Rung"])


def test_curves_of_a_repository_without_epochs_are_empty_with_the_key_columns(
    repo: Path,
) -> None:
    Repository(repo).create(run_settings())
    curves = phobbit.open_repository(repo).curves()
    assert curves.empty and list(curves.columns) == ["Iteration", "Run", "ID", "Rung", "Epoch"]


def result(config_id: int, val_loss: float) -> SegmentResult:
    return SegmentResult(0, 2, config_id, 0, 0, 2, val_loss, val_loss, "ok", "", {"x": 0.5})


def epochs(config_id: int, *losses: float) -> list[EpochRow]:
    return [
        EpochRow(0, 2, config_id, 0, e, {"loss": v, "val_loss": v})
        for e, v in enumerate(losses, 1)
    ]


def test_an_epoch_written_again_by_a_retry_appears_once_as_written_last(repo: Path) -> None:
    repository = Repository(repo)
    # R=18: bracket 2's first rung trains 2 epochs, as these rows do (a view skips rows
    # that the run's schedule cannot have written).
    repository.create(run_settings(R=18))
    repository.append(result(0, 0.5), epochs=epochs(0, 0.9, 0.5))
    repository.append(result(0, 0.5), epochs=epochs(0, 0.9, 0.4))  # a retry, written later
    curves = phobbit.open_repository(repo).curves()
    assert list(curves["val_loss"]) == [0.9, 0.4]


def test_torn_and_corrupt_epoch_lines_are_skipped_and_later_appends_read(repo: Path) -> None:
    repository = Repository(repo)
    repository.create(run_settings())
    repository.append(result(0, 0.5), epochs=epochs(0, 0.9, 0.5))
    with open(repository.epochs_path, "a") as handle:
        handle.write(encode_epoch(epochs(1, 0.7)[0])[:20])  # torn by a kill mid-write
    repository.append(result(2, 0.5), epochs=epochs(2, 0.6))
    text = repository.epochs_path.read_text()
    repository.epochs_path.write_text(text.replace("0.6", "0.1"))  # fails its CRC
    rows = list(repository.iter_epochs())
    assert [(r.id, r.epoch) for r in rows] == [(0, 1), (0, 2)]
    assert decode_epoch(encode_epoch(rows[0])[:-1]) is None  # no newline: torn


def test_a_fenced_out_segment_writes_no_epoch(repo: Path) -> None:
    repository = Repository(repo)
    repository.create(run_settings())
    with repository.driver_lock():
        with pytest.raises(StaleDriverError):
            repository.append(result(0, 0.5), fence="not-the-token", epochs=epochs(0, 0.5))
    assert not repository.epochs_path.exists()
    assert list(repository.iter_results()) == []


finite = st.floats(allow_nan=False, allow_infinity=False)


@given(
    key=st.tuples(*[st.integers(0, 10**6)] * 5),
    metrics=st.dictionaries(st.text(min_size=1, max_size=20), finite | st.just(math.inf)),
)
def test_epoch_rows_round_trip_exactly(key: tuple, metrics: dict[str, float]) -> None:
    row = EpochRow(*key, metrics)
    assert decode_epoch(encode_epoch(row)) == row


def test_hostile_epoch_rows_with_a_correct_crc_are_skipped() -> None:
    from phobbit.storage.repository import _framed

    nested = _framed([0, 2, 1, 0, 1, '{"loss": {"deep": [[[1]]]}}'])
    not_numbers = _framed([0, 2, 1, 0, 1, '{"loss": "high"}'])
    not_an_object = _framed([0, 2, 1, 0, 1, "[1, 2]"])
    short = _framed([0, 2, 1, 0, '{"loss": 1.0}'])
    for line in (nested, not_numbers, not_an_object, short):
        assert decode_epoch(line) is None, line


def test_a_checkpoint_whose_logs_do_not_match_its_epochs_is_unreadable(tmp_path: Path) -> None:
    import json

    from phobbit.storage.checkpoints import inspect, progress_record

    path = tmp_path / "0-2-1.json"
    record = progress_record([0.5, 0.4], [{"loss": 0.6, "val_loss": 0.5}])  # one log short
    path.write_text(json.dumps(record))
    assert inspect(path).problem.startswith("is unreadable (it records 1 epochs' logs")
    path.write_text(json.dumps({**record, "metrics": ["loss", "val_loss"]}))
    assert inspect(path).problem.startswith("is unreadable (")
    path.write_text(json.dumps(progress_record([0.5, 0.4])))  # before logs were kept: reads
    assert inspect(path).progress.history == [{"val_loss": 0.5}, {"val_loss": 0.4}]
