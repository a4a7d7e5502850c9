"""Issue 19's attack with real ``.keras`` files: a configuration's valid checkpoint copied
over another's (same epoch, same architecture) must not be trained on."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from keras_models import HPARAMS, mlp, small_digits

from phobbit import ParallelHyperband
from phobbit.storage.checkpoints import FOREIGN
from phobbit.storage.repository import Repository

pytestmark = pytest.mark.keras
COLUMNS = ["Hparams", "ID", "Run", "Val Loss", "Epochs", "Rung", "Status"]


def held_epoch(path: Path) -> int:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("phobbit.json"))["epoch"]


def test_a_keras_checkpoint_copied_over_another_is_retrained_to_the_uninterrupted_table(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"

    def run() -> pd.DataFrame:
        tuner = ParallelHyperband(
            mlp, HPARAMS, repo, dataset=small_digits(), n_jobs=1, batch_size=32, verbose=0
        )
        return tuner.run(R=3, eta=3)  # bracket 1: 3 configurations x 1 epoch, 1 x 3

    uninterrupted = run()
    bracket = uninterrupted[uninterrupted["Run"] == 1]
    victim = int(bracket[bracket["Rung"] == 1]["ID"].iloc[0])
    other = int(bracket[bracket["Rung"] == 0]["ID"].iloc[0])
    # The victim's second segment (epochs 1 -> 3) is undone: its row goes, and the
    # checkpoint it resumes from is another configuration's, valid, of the same epoch.
    repository = Repository(repo)
    rows = list(repository.iter_results())
    (repo / "results.csv").unlink()
    for row in rows:
        if (row.s, row.id, row.rung) != (1, victim, 1):
            repository.append(row)
    models = repo / "models"
    assert held_epoch(models / f"0-1-{other}.keras") == 1
    shutil.copyfile(models / f"0-1-{other}.keras", models / f"0-1-{victim}.keras")
    resumed = run()
    pd.testing.assert_frame_equal(
        resumed[COLUMNS].sort_index(), uninterrupted[COLUMNS].sort_index()
    )
    noted = [r for r in Repository(repo).iter_results() if r.note]
    assert [(r.s, r.id, r.rung) for r in noted] == [(1, victim, 1)]
    why = f"it holds configuration 0-1-{other}"
    assert noted[0].note.startswith(f"checkpoint 0-1-{victim}.keras {FOREIGN} ({why})")
    assert held_epoch(models / f"0-1-{victim}.keras") == 3
