"""The trainable contract, synthetically: the best epoch kept, bad checkpoints retrained."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from conftest import run_settings
from helpers import STEPS
from synthetic import overfitting_curve

from phobbit.core.records import Segment
from phobbit.errors import CheckpointError
from phobbit.execution.trainable import Losses
from phobbit.execution.worker import train_segment
from phobbit.storage import fence
from phobbit.storage.checkpoints import best_path, find_scoring, hparams_fingerprint, read_progress
from phobbit.storage.repository import Repository
from phobbit.testing import SyntheticTrainable

HPARAMS = {"x": 0.9}  # overfits after epoch 3: losses 1.69, 1.28, 1.20, 1.21, 1.25, ...
TRAINABLE = SyntheticTrainable(curve=overfitting_curve, steps_per_epoch=STEPS)


def corrupt(path: Path, how: str) -> None:
    """What a crash, a full disk or a stray process can leave of a checkpoint."""
    if how == "deleted":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(os.urandom(200))


def state(path: str) -> dict:
    return json.loads(Path(path).read_text())


def test_the_best_epoch_is_kept_in_a_file_that_holds_it_when_it_is_not_the_last(
    tmp_path: Path,
) -> None:
    stem = str(tmp_path / "0-2-3")
    losses = TRAINABLE.train(HPARAMS, stem, 0, 2) + TRAINABLE.train(HPARAMS, stem, 2, 6)
    assert losses.index(min(losses)) == 2  # epoch 3 scored best
    assert state(best_path(stem, ".json")) == {
        "epoch": 3,
        "iterations": 3 * STEPS,
        "val_losses": losses[:3],
        "metrics": [TRAINABLE.logs(HPARAMS, epoch) for epoch in (1, 2, 3)],
        # Whose it is: the configuration its stem names (trained outside a run: no run id).
        "identity": {"config": [0, 2, 3], "hparams": hparams_fingerprint(HPARAMS), "run": None},
    }
    assert find_scoring(stem, min(losses)) == Path(best_path(stem, ".json"))
    assert read_progress(stem + ".json").epoch == 6  # the checkpoint goes on from the last
    # While the best epoch is the last, no extra file is written.
    improving = str(tmp_path / "0-2-4")
    TRAINABLE.train({"x": 0.1}, improving, 0, 6)
    assert not Path(best_path(improving, ".json")).exists()


@pytest.mark.parametrize("save_every_epoch", [True, False])
def test_a_best_epoch_never_saved_as_checkpoint_is_kept_too(
    tmp_path: Path, save_every_epoch: bool
) -> None:
    trainable = SyntheticTrainable(
        curve=overfitting_curve, steps_per_epoch=STEPS, checkpoint_every_epoch=save_every_epoch
    )
    stem = str(tmp_path / "c")
    losses = trainable.train(HPARAMS, stem, 0, 6)
    assert read_progress(best_path(stem, ".json")).val_losses == tuple(losses[:3])
    assert state(best_path(stem, ".json"))["iterations"] == 3 * STEPS


@pytest.mark.parametrize("how", ["deleted", "empty", "random bytes"])
def test_a_bad_checkpoint_is_retrained_to_the_losses_of_an_uninterrupted_run(
    tmp_path: Path, how: str
) -> None:
    whole = TRAINABLE.train(HPARAMS, str(tmp_path / "whole"), 0, 9)
    stem = str(tmp_path / "c")
    TRAINABLE.train(HPARAMS, stem, 0, 2)
    corrupt(Path(stem + ".json"), how)
    again = TRAINABLE.train(HPARAMS, stem, 2, 6)
    assert isinstance(again, Losses) and again == whole[2:6]
    what = "is missing" if how == "deleted" else "is unreadable ("
    assert again.note.startswith(f"checkpoint c.json {what}")
    assert again.note.endswith("retrained from scratch")
    assert state(stem + ".json")["iterations"] == 6 * STEPS  # trained from epoch 0 again
    # Its best epoch (3) is kept in its own file: a later bad checkpoint goes on from there.
    corrupt(Path(stem + ".json"), how)
    later = TRAINABLE.train(HPARAMS, stem, 6, 9)
    assert later == whole[6:9]
    assert later.note.endswith("retrained from epoch 3 (c.best.json)")
    assert state(stem + ".json") == state(str(tmp_path / "whole.json"))


def test_a_checkpoint_behind_its_segment_goes_on_from_where_it_is(tmp_path: Path) -> None:
    whole = TRAINABLE.train(HPARAMS, str(tmp_path / "whole"), 0, 6)
    stem = str(tmp_path / "c")
    TRAINABLE.train(HPARAMS, stem, 0, 1)
    again = TRAINABLE.train(HPARAMS, stem, 2, 6)  # epoch 2 was lost, e.g. a stale copy
    assert again == whole[2:6]
    assert again.note == "checkpoint c.json holds epoch 1, not 2; retrained from epoch 1 (c.json)"


def test_a_checkpoint_that_cannot_be_written_stops_the_run_without_failing_the_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(temp: str, path: str) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(fence, "commit", refuse)
    repository = Repository(tmp_path)
    repository.create(run_settings(1))
    segment = Segment(0, 0, 0, 0, HPARAMS, 0, 1, str(tmp_path / "models" / "0-0-0"))
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*0-0-0.json: Permission"):
        train_segment(TRAINABLE, segment, str(tmp_path))
    assert list(repository.iter_results()) == []  # no failed row: the trial is not to blame
