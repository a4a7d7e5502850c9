"""A checkpoint proves whose it is: a foreign file is retrained like an unreadable one.

Each attack stops a run (a full disk) just as a promoted configuration, the victim,
starts its next rung, puts a valid checkpoint that is not the victim's in its place
and resumes: the table must be an uninterrupted run's, and the row must say why the
victim retrained. The runs train on the simulated executor, in this process.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import STEPS, DyingTrainable, tuner
from synthetic import overfitting_curve

from phobbit import RepositoryError, StorageError, open_repository
from phobbit.reporting.plain import PlainReporter
from phobbit.storage.repository import Repository

COLUMNS = ["Hparams", "ID", "Run", "Val Loss", "Epochs", "Rung", "Status"]
FOREIGN = "is not its configuration's ("


def shifted_curve(hparams: dict[str, Any], epoch: int) -> float:
    """``overfitting_curve`` one lower: the same promotions, other losses (another model)."""
    return overfitting_curve(hparams, epoch) - 1.0


def reference(folder: Path, **settings: Any) -> pd.DataFrame:
    return tuner(folder, curve=overfitting_curve, **settings).run(R=9, eta=3)


def promoted(table: pd.DataFrame, rungs: int = 1) -> int:
    """The ID of a configuration of bracket 2 that trains at least ``rungs`` more rungs."""
    return int(table[(table["Run"] == 2) & (table["Rung"] >= rungs)]["ID"].iloc[0])


def loser(table: pd.DataFrame) -> int:
    """The ID of a configuration of bracket 2 never promoted: its checkpoint holds epoch 1."""
    return int(table[(table["Run"] == 2) & (table["Rung"] == 0)]["ID"].iloc[0])


def stop_as_it_starts(
    repo: Path, victim: str, rung_epochs: int, curve: Any = overfitting_curve, **settings: Any
) -> None:
    """Runs R=9, eta=3 until ``victim`` starts its segment that ends at ``rung_epochs``:
    then the disk is full, and the run stops."""
    tally = repo.parent / f"tally-{repo.name}"
    tally.mkdir()
    stopper = DyingTrainable(
        curve=curve,
        steps_per_epoch=STEPS,
        victim=victim,
        how="disk-full",
        tally_dir=str(tally),
        victim_rung_epochs=rung_epochs,
    )
    with pytest.raises(StorageError, match="no space left"):
        tuner(repo, trainable=stopper, **settings).run(R=9, eta=3)


def resume(repo: Path, **settings: Any) -> tuple[pd.DataFrame, list, str]:
    """Resumes the run; returns its table, the rows with a note, and what it reported."""
    lines = io.StringIO()
    table = tuner(
        repo, curve=overfitting_curve, reporter=PlainReporter(lines, verbose=1), **settings
    ).run(R=9, eta=3)
    noted = [r for r in Repository(repo).iter_results() if r.note]
    return table, noted, lines.getvalue()


def same_table(resumed: pd.DataFrame, uninterrupted: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        resumed[COLUMNS].sort_index(), uninterrupted[COLUMNS].sort_index()
    )


def retrained_once(noted: list, victim: int, rung: int, why: str, lines: str) -> None:
    """The victim's segment, alone, retrained, and its row and the report say why."""
    assert [(r.s, r.id, r.rung, r.status) for r in noted] == [(2, victim, rung, "ok")]
    assert noted[0].note.startswith(f"checkpoint 0-2-{victim}.json {FOREIGN}{why}"), noted
    assert f"retrained run 2 id {victim} rung {rung}: checkpoint 0-2-{victim}.json" in lines
    assert "1 retrained from a bad checkpoint" in lines


def legacy(repo: Path, settings_of: Path) -> None:
    """Makes ``repo`` a run begun by a phobbit before checkpoint identities: its run.json
    (that of ``settings_of``) names no run."""
    repo.mkdir()
    data = json.loads((settings_of / "run.json").read_text())
    data.pop("run_id", None)
    (repo / "run.json").write_text(json.dumps(data))


def test_a_foreign_checkpoint_of_the_same_epoch_is_retrained_to_the_uninterrupted_table(
    tmp_path: Path,
) -> None:
    uninterrupted = reference(tmp_path / "ref")
    victim = promoted(uninterrupted)
    repo = tmp_path / "repo"
    stop_as_it_starts(repo, f"0-2-{victim}", 3)
    # Another configuration of the bracket, its checkpoint at the same epoch, put in its place.
    other = loser(uninterrupted)
    models = repo / "models"
    assert json.loads((models / f"0-2-{other}.json").read_text())["epoch"] == 1
    shutil.copyfile(models / f"0-2-{other}.json", models / f"0-2-{victim}.json")
    table, noted, lines = resume(repo)
    same_table(table, uninterrupted)
    retrained_once(noted, victim, 1, f"it holds configuration 0-2-{other})", lines)
    assert noted[0].note.endswith("retrained from scratch")


def test_a_foreign_checkpoint_of_an_earlier_epoch_is_retrained_to_the_uninterrupted_table(
    tmp_path: Path,
) -> None:
    uninterrupted = reference(tmp_path / "ref")
    victim = promoted(uninterrupted, rungs=2)
    repo = tmp_path / "repo"
    stop_as_it_starts(repo, f"0-2-{victim}", 9)
    models = repo / "models"
    assert json.loads((models / f"0-2-{victim}.json").read_text())["epoch"] == 3
    other = loser(uninterrupted)
    shutil.copyfile(models / f"0-2-{other}.json", models / f"0-2-{victim}.json")
    table, noted, lines = resume(repo)
    same_table(table, uninterrupted)
    retrained_once(noted, victim, 2, f"it holds configuration 0-2-{other})", lines)
    # From the victim's own best-epoch file when it has one, else from scratch.
    best = models / f"0-2-{victim}.best.json"
    assert "(0-2-" not in noted[0].note or f"({best.name})" in noted[0].note


def test_a_checkpoint_of_another_run_of_the_same_space_is_retrained(tmp_path: Path) -> None:
    """Same seed, so the same configurations, keys and promotions, but another model."""
    uninterrupted = reference(tmp_path / "ref")
    victim = promoted(uninterrupted)
    other_run, repo = tmp_path / "other", tmp_path / "repo"
    stop_as_it_starts(other_run, f"0-2-{victim}", 3, curve=shifted_curve)
    stop_as_it_starts(repo, f"0-2-{victim}", 3)
    name = f"0-2-{victim}.json"
    theirs = json.loads((other_run / "models" / name).read_text())
    ours = json.loads((repo / "models" / name).read_text())
    assert theirs["epoch"] == ours["epoch"] == 1 and theirs["val_losses"] != ours["val_losses"]
    shutil.copyfile(other_run / "models" / name, repo / "models" / name)
    table, noted, lines = resume(repo)
    same_table(table, uninterrupted)
    retrained_once(noted, victim, 1, "it belongs to another tuning run)", lines)


def test_a_repository_started_again_in_the_same_folder_retrains_what_it_left(
    tmp_path: Path,
) -> None:
    """run.json and results deleted, checkpoints left: the new run owns none of them."""
    uninterrupted = reference(tmp_path / "ref")
    repo = tmp_path / "repo"
    tuner(repo, curve=shifted_curve).run(R=9, eta=3)
    for name in ("run.json", "results.csv", "epochs.csv"):
        (repo / name).unlink()
    table, noted, _ = resume(repo)
    same_table(table, uninterrupted)
    # Every first segment found a checkpoint of the run before (at some later epoch too).
    assert sorted((r.s, r.id, r.rung) for r in noted) == sorted(
        (int(s), int(i), 0) for s, i in zip(table["Run"], table["ID"], strict=True)
    )
    assert all(FOREIGN + "it belongs to another tuning run)" in r.note for r in noted)


def test_a_checkpoint_of_the_same_key_with_other_hparams_is_retrained_in_a_legacy_run(
    tmp_path: Path,
) -> None:
    """Runs begun before run ids (checked by key and hparams): another seed's configuration
    0-2-v is another configuration under the same name."""
    uninterrupted = reference(tmp_path / "ref")
    victim = promoted(uninterrupted)
    other_run, repo, scratch = tmp_path / "other", tmp_path / "repo", tmp_path / "scratch"
    tuner(scratch, seed=1).run(R=9, eta=3)  # for the run.json of seed 1
    legacy(other_run, scratch)
    tuner(other_run, curve=shifted_curve, seed=1).run(R=9, eta=3)
    legacy(repo, tmp_path / "ref")
    stop_as_it_starts(repo, f"0-2-{victim}", 3)
    name = f"0-2-{victim}.json"
    shutil.copyfile(other_run / "models" / name, repo / "models" / name)
    table, noted, lines = resume(repo)
    same_table(table, uninterrupted)
    retrained_once(noted, victim, 1, "it holds other hyperparameters)", lines)


def test_a_checkpoint_without_identity_is_refused_in_a_run_that_writes_them(
    tmp_path: Path,
) -> None:
    """A file an earlier phobbit wrote, copied into a run of this one: it cannot be proved
    to be the configuration's, so it is retrained."""
    uninterrupted = reference(tmp_path / "ref")
    victim = promoted(uninterrupted)
    repo = tmp_path / "repo"
    stop_as_it_starts(repo, f"0-2-{victim}", 3)
    path = repo / "models" / f"0-2-{victim}.json"
    record = json.loads(path.read_text())
    del record["identity"]
    path.write_text(json.dumps(record))
    table, noted, lines = resume(repo)
    same_table(table, uninterrupted)
    retrained_once(noted, victim, 1, "it records no identity", lines)


def test_a_repository_begun_by_the_previous_version_resumes_from_its_checkpoints(
    tmp_path: Path,
) -> None:
    """No run id in run.json, no identity in the checkpoints: each is taken as its path
    says, as before, and nothing is retrained."""
    uninterrupted = reference(tmp_path / "ref")
    victim = promoted(uninterrupted)
    repo = tmp_path / "repo"
    legacy(repo, tmp_path / "ref")
    stop_as_it_starts(repo, f"0-2-{victim}", 3)
    for path in (repo / "models").glob("*.json"):
        record = json.loads(path.read_text())
        record.pop("identity", None)
        path.write_text(json.dumps(record))
    # best, export and best_model name its files as before.
    assert open_repository(repo).best(1)[0].checkpoint is not None
    table, noted, _ = resume(repo)
    same_table(table, uninterrupted)
    assert noted == []
    assert "run_id" not in json.loads((repo / "run.json").read_text())  # left as it was
    assert open_repository(repo).scoring_file().is_file()


def test_a_repository_reached_another_way_is_the_same_run(tmp_path: Path) -> None:
    """Identity names no path: a run begun through a symlink and resumed through the
    folder itself (or copied elsewhere) owns its checkpoints."""
    uninterrupted = reference(tmp_path / "ref")
    victim = promoted(uninterrupted)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    stop_as_it_starts(tmp_path / "link" / "repo", f"0-2-{victim}", 3)
    shutil.copytree(tmp_path / "real" / "repo", tmp_path / "copy")
    for repo in (tmp_path / "real" / "repo", tmp_path / "copy"):
        table, noted, _ = resume(repo)
        same_table(table, uninterrupted)
        assert noted == []


def test_best_and_export_refuse_a_best_epoch_file_of_another_run(tmp_path: Path) -> None:
    """Another run of the same space and seed: its file holds the same epoch and the same
    losses under the same name, but it is not this run's model."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    reference(ours)
    reference(theirs)
    run = open_repository(ours)
    (best,) = run.best(1)
    assert best.checkpoint is not None
    shutil.copyfile(theirs / "models" / best.checkpoint.name, best.checkpoint)
    (again,) = run.best(1)
    assert again.checkpoint is None
    row = run.results().iloc[0]
    repository = Repository(ours)
    assert (
        repository.scoring_checkpoint(
            best.iteration, best.s, best.id, best.val_loss, hparams=row["Hparams"]
        )
        is None
    )
    refused = re.escape(f"{best.checkpoint.name} {FOREIGN}it belongs to another tuning run)")
    with pytest.raises(RepositoryError, match=refused):
        run.scoring_file()
    with pytest.raises(RepositoryError, match=refused):
        with run.scoring_copy():
            pass
