"""A killed driver loses nothing: a rerun resumes and ends with an uninterrupted run's table."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import zlib
from pathlib import Path

import pandas as pd
import psutil
import pytest
from helpers import (
    STEPS,
    DyingTrainable,
    driver_command,
    kill_tree,
    subprocess_env,
    tuner,
    x_curve,
)
from synthetic import overfitting_curve

from phobbit import RepositoryError, StorageError
from phobbit.core.records import SegmentResult
from phobbit.reporting.plain import PlainReporter
from phobbit.storage.checkpoints import hparams_fingerprint
from phobbit.storage.repository import LEGACY_HEADER, Repository, encode_row
from phobbit.storage.results import results_frame
from phobbit.testing import SyntheticTrainable

COLUMNS = ["Hparams", "ID", "Run", "Val Loss", "Epochs", "Rung", "Status"]
RUNG_EPOCHS = (1, 3, 9, 27)  # of R=27, eta=3
SETTINGS = {"R": 27, "eta": 3, "n_jobs": 2, "seed": 7, "epoch_seconds": 0.02, "jitter": 0.5}


def rows_in(repo: Path) -> int:
    try:
        return len(list(Repository(repo).iter_results()))
    except RepositoryError:
        return 0


def start_driver(repo: Path, records: Path, settings: dict = SETTINGS) -> subprocess.Popen:
    return subprocess.Popen(
        driver_command(repo, records, dict(settings)),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for(condition, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def records_of(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in folder.glob("*.json")]


def second_driver_is_refused_at_once(repo: Path, driver: subprocess.Popen) -> None:
    """Two drivers on one repository: the second stops at once, naming the first."""
    wait_for(lambda: (repo / "driver.json").exists())
    wait_for(lambda: json.loads((repo / "driver.json").read_text())["pid"] == driver.pid)
    running = rf"in use by a running phobbit \(pid {driver.pid} on {socket.gethostname()}\)"
    with pytest.raises(RepositoryError, match=running):
        tuner(repo, real=True, **{k: v for k, v in SETTINGS.items() if k not in ("R", "eta")}).run(
            27, 3
        )
    # Refused while the first still runs: it did not wait for it (no stopwatch needed).
    assert driver.poll() is None, driver.stderr.read().decode()


def mid_segment(repo: Path) -> tuple[str, int] | None:
    """A configuration whose checkpoint is at least 4 epochs short of its rung: mid-segment."""
    for path in (repo / "models").glob("*.json"):
        try:
            epoch = json.loads(path.read_text())["epoch"]
        except (OSError, ValueError):
            continue  # replaced while read
        rung_end = min(r for r in RUNG_EPOCHS if r >= epoch)
        if rung_end - epoch >= 4:
            return path.stem, epoch
    return None


def interrupted(repo: Path) -> set[tuple[str, int]]:
    """Configurations whose checkpoint is ahead of their rows: their segment was cut short.

    Returns (checkpoint stem, epoch held) pairs.
    """
    done: dict[str, int] = {}
    for row in Repository(repo).results().values():
        stem = f"{row.iteration}-{row.s}-{row.id}"
        done[stem] = max(done.get(stem, 0), row.epochs)
    found = set()
    for path in (repo / "models").glob("*.json"):
        epoch = json.loads(path.read_text())["epoch"]
        if epoch > done.get(path.stem, 0):
            found.add((path.stem, epoch))
    return found


def kill_mid_segment(
    repo: Path, driver: subprocess.Popen, rows: int, delay: float, orphans: list[int]
) -> set[tuple[str, int]]:
    """SIGKILLs the driver after ``rows`` more rows, the next time a segment is mid-way
    and ``delay`` s later; its workers go to ``orphans``. Returns the segments it cut short."""
    target = rows_in(repo) + rows
    wait_for(lambda: rows_in(repo) >= target or driver.poll() is not None)
    wait_for(lambda: mid_segment(repo) is not None or driver.poll() is not None)
    assert driver.poll() is None, driver.stderr.read().decode()
    time.sleep(delay)
    workers = psutil.Process(driver.pid).children(recursive=True)
    orphans += [p.pid for p in workers]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    driver.stderr.close()  # its pipe, unread: left open it warned when collected
    # Orphaned by the kill, the workers must stop by themselves, not train on.
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, f"orphaned workers still run: {alive}"
    return interrupted(repo)


def test_driver_killed_at_random_moments_resumes_to_the_table_of_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    repo, records = tmp_path / "repo", tmp_path / "records"
    records.mkdir()
    rng = random.Random(5)
    orphans: list[int] = []
    cut_short: set[tuple[str, int]] = set()
    try:
        # Three kills, and more (up to six) until one has cut a segment short: an orphaned
        # worker may finish its segment in the moment before it notices the kill.
        for kill in range(6):
            if kill >= 3 and cut_short:
                break
            driver = start_driver(repo, records)
            if kill == 0:
                second_driver_is_refused_at_once(repo, driver)
            cut_short |= kill_mid_segment(
                repo, driver, rng.randint(2, 8), rng.uniform(0, 0.01), orphans
            )
            if kill == 0:
                # A row torn by the kill in the middle of a write: it must never be parsed.
                torn = SegmentResult(
                    iteration=0,
                    s=0,
                    id=0,
                    rung=0,
                    start_epoch=0,
                    epochs=27,
                    val_loss=-1.0,
                    last_val_loss=-1.0,
                    status="ok",
                    error="",
                    hparams={"x": 0.3},
                )
                with open(repo / "results.csv", "a") as handle:
                    handle.write(encode_row(torn)[:60])
        # A stale driver.json names the last killed driver; it must not block the resume.
        assert json.loads((repo / "driver.json").read_text())["pid"] == driver.pid
        driver = start_driver(repo, records)  # the same command, run again
        assert driver.wait(timeout=120) == 0, driver.stderr.read().decode()
        driver.stderr.close()
    finally:
        kill_tree(orphans)
    resumed = results_frame(Repository(repo).iter_results())
    reference = tuner(tmp_path / "reference", real=True, n_jobs=2, seed=SETTINGS["seed"]).run(
        R=27, eta=3
    )
    pd.testing.assert_frame_equal(resumed[COLUMNS].sort_index(), reference[COLUMNS].sort_index())
    assert (resumed["Val Loss"] > 0).all(), "the torn row was parsed"

    rows = list(Repository(repo).iter_results())
    first_end = {}
    for row in rows:
        first_end.setdefault(row.key, row.end)
    by_call = {}
    for row in rows:
        by_call.setdefault((f"0-{row.s}-{row.id}", row.epochs), row.key)
    trained = records_of(records)
    for record in trained:
        key = by_call[(Path(record["checkpoint"]).name, record["epochs"])]
        if record["resumed_epoch"] < record["epochs"]:
            # Nothing was trained for a segment that was already in results.csv.
            assert record["start"] <= first_end[key], record
    assert cut_short, "no kill cut a segment short"
    for stem, epoch in cut_short:
        # A segment cut short went on from its last checkpoint, not from its rung's start.
        assert any(
            Path(r["checkpoint"]).name == stem
            and r["initial_epoch"] < epoch
            and r["resumed_epoch"] >= epoch
            for r in trained
        ), (stem, epoch)
    for index, row in resumed.iterrows():
        run, config_id = index.split("-")
        state = json.loads((repo / "models" / f"0-{run}-{config_id}.json").read_text())
        # Total epochs trained per configuration never exceed its final rung's epochs.
        assert (state["epoch"], state["iterations"]) == (row["Epochs"], row["Epochs"] * STEPS)

    # run() on the same repository now trains nothing and returns the same table.
    shutil.rmtree(records)
    records.mkdir()
    again = tuner(repo, records, real=True, n_jobs=2, seed=SETTINGS["seed"]).run(R=27, eta=3)
    assert records_of(records) == []
    pd.testing.assert_frame_equal(again[COLUMNS].sort_index(), reference[COLUMNS].sort_index())


def test_an_interrupted_segment_resumes_from_its_last_epoch_checkpoint(tmp_path: Path) -> None:
    trainable = SyntheticTrainable(curve=x_curve, steps_per_epoch=STEPS)
    hparams = {"x": 0.5}
    whole = trainable.train(hparams, str(tmp_path / "whole"), 0, 9)
    stem = str(tmp_path / "cut")
    trainable.train(hparams, stem, 0, 3)
    # A segment 3 -> 9 killed after its epoch 5 was saved, then run again from 3.
    assert trainable.train(hparams, stem, 3, 5) == whole[3:5]
    assert trainable.train(hparams, stem, 3, 9) == whole[3:9]
    state = json.loads(Path(stem + ".json").read_text())
    assert state == {
        "epoch": 9,
        "iterations": 9 * STEPS,
        "val_losses": whole,
        "metrics": [trainable.logs(hparams, epoch) for epoch in range(1, 10)],
        # Whose it is: trained outside a run, under a stem that names no configuration.
        "identity": {"config": None, "hparams": hparams_fingerprint(hparams), "run": None},
    }
    # A segment that finished but whose row was lost trains nothing when run again,
    # nor one that its checkpoint has gone past: its losses are recorded there.
    assert trainable.train(hparams, stem, 3, 9) == whole[3:9]
    assert trainable.train(hparams, stem, 3, 7) == whole[3:7]
    assert json.loads(Path(stem + ".json").read_text())["iterations"] == 9 * STEPS


def small_model(hparams: dict):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def keras_data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    return (x[:48], y[:48]), (x[48:], y[48:])


class KilledAfterEpoch(Exception):
    pass


def kill_after(epoch: int):
    import keras

    # At the next epoch's start: phobbit saves an epoch after the user's callbacks
    # saw its end, so a callback that raises at an epoch's end prevents that save.
    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, index: int, logs=None) -> None:
            if index == epoch:
                raise KilledAfterEpoch

    return Kill()


@pytest.mark.keras
def test_keras_segment_killed_mid_way_resumes_from_its_last_epoch_with_optimizer_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras

    from phobbit.keras_adapter.trainable import KerasTrainable
    from phobbit.storage.checkpoints import read_progress

    # This model's epochs take milliseconds: let it save after each one whatever it costs.
    monkeypatch.setattr("phobbit.keras_adapter.trainable.SAVE_BUDGET", math.inf)

    trainable = KerasTrainable(small_model, load_dataset=keras_data, batch_size=16)
    whole = trainable.train({}, str(tmp_path / "whole"), 0, 5)
    killed = KerasTrainable(
        small_model,
        load_dataset=keras_data,
        batch_size=16,
        fit_kwargs={"callbacks": [kill_after(3)]},
    )
    stem = str(tmp_path / "cut")
    with pytest.raises(KilledAfterEpoch):
        killed.train({}, stem, 0, 5)
    recorded = read_progress(stem + ".keras")
    assert recorded.epoch == 3
    again = trainable.train({}, stem, 0, 5)
    assert again[:3] == list(recorded.val_losses), "epochs trained before the kill are kept"
    assert again == whole
    restored = keras.saving.load_model(stem + ".keras", safe_mode=True)
    assert int(restored.optimizer.iterations.numpy()) == 5 * 3  # 48 samples / 16 per batch
    progress = read_progress(stem + ".keras")
    assert (progress.epoch, progress.val_losses) == (5, tuple(again))
    # The checkpoint is read on another machine from a copy of the repository.
    copy = tmp_path / "elsewhere" / "cut.keras"
    copy.parent.mkdir()
    shutil.copy(stem + ".keras", copy)
    assert keras.saving.load_model(copy, safe_mode=True).count_params() == restored.count_params()


def test_repository_copied_to_another_folder_reads_and_resumes_there(tmp_path: Path) -> None:
    original = tuner(tmp_path / "here", real=True, n_jobs=2).run(R=9, eta=3)
    shutil.copytree(tmp_path / "here", tmp_path / "there")
    shutil.rmtree(tmp_path / "here")
    there = Repository(tmp_path / "there")
    read = results_frame(there.iter_results())
    pd.testing.assert_frame_equal(read, original)
    records = tmp_path / "records"
    records.mkdir()
    again = tuner(tmp_path / "there", records, real=True, n_jobs=2).run(R=9, eta=3)
    assert records_of(records) == [] and not (tmp_path / "here").exists()
    pd.testing.assert_frame_equal(again, original)


def test_orphan_rows_of_a_segment_written_twice_are_read_once(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tuner(repo, real=True, n_jobs=1).run(R=3, eta=3)
    repository = Repository(repo)
    rows = list(repository.iter_results())
    for row in rows[:2]:  # what an orphaned worker finishing a resumed segment would add
        repository.append(SegmentResult(**{**row.__dict__, "pid": os.getpid() + 1}))
    assert len(list(repository.iter_results())) == len(rows) + 2
    assert repository.results() == {row.key: row for row in rows}
    records = tmp_path / "records"
    records.mkdir()
    tuner(repo, records, real=True, n_jobs=1).run(R=3, eta=3)
    assert records_of(records) == []


def test_what_a_killed_drivers_workers_wrote_reaches_workers_log_with_the_next_run(
    tmp_path: Path,
) -> None:
    repo, records, temporary = tmp_path / "repo", tmp_path / "records", tmp_path / "tmp"
    records.mkdir()
    temporary.mkdir()
    # Each worker writes every segment it trains to its stderr, as a user's print does.
    command = driver_command(repo, records, {**SETTINGS, "shout": True})
    env = {**subprocess_env(), "TMPDIR": str(temporary)}
    orphans: list[int] = []
    try:
        driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        wait_for(lambda: rows_in(repo) >= 8 or driver.poll() is not None)
        assert driver.poll() is None, "the driver ended before it was killed"
        workers = psutil.Process(driver.pid).children(recursive=True)
        orphans += [p.pid for p in workers]
        driver.send_signal(signal.SIGKILL)  # no exit code runs: the log stays where it was
        driver.wait()
        psutil.wait_procs(workers, timeout=60)
        killed = [row.key for row in Repository(repo).iter_results()]
        assert list(temporary.glob("phobbit-log-*/workers.log")), "the kill left no log"
        assert subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode == 0
    finally:
        kill_tree(orphans)
    log = (repo / "workers.log").read_text()
    for row in Repository(repo).iter_results():
        line = f"trained 0-{row.s}-{row.id} {row.start_epoch}->{row.epochs}\n"
        assert line in log, f"{line!r} of {'the killed' if row.key in killed else 'the'} run"
    assert not list(temporary.glob("phobbit-log-*")), "a log folder was left behind"


def test_ctrl_c_stops_driver_and_workers_at_once_and_a_rerun_resumes(tmp_path: Path) -> None:
    repo, records, gate = tmp_path / "repo", tmp_path / "records", tmp_path / "gate"
    records.mkdir()
    gate.mkdir()
    # Segments after the fourth wait at a gate never opened: the run cannot end before Ctrl-C.
    settings = {**SETTINGS, "R": 9, "gate_dir": str(gate), "hold_after": 4}
    driver = subprocess.Popen(
        driver_command(repo, records, settings),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    workers: list[psutil.Process] = []
    try:
        wait_for(lambda: rows_in(repo) >= 4 or driver.poll() is not None)
        assert driver.poll() is None, driver.stderr.read().decode()
        workers = psutil.Process(driver.pid).children(recursive=True)
        os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        assert driver.wait(timeout=300) != 0
        assert "KeyboardInterrupt" in driver.stderr.read().decode()
        _, alive = psutil.wait_procs(workers, timeout=60)
        assert not alive, f"workers outlived Ctrl-C: {alive}"
    finally:
        kill_tree([p.pid for p in workers] + [driver.pid])
    rows = Repository(repo).results()
    assert 4 <= len(rows) < 22 and all(row.ok for row in rows.values())
    resumed = tuner(repo, real=True, n_jobs=2, seed=SETTINGS["seed"]).run(R=9, eta=3)
    reference = tuner(tmp_path / "reference", real=True, n_jobs=2, seed=SETTINGS["seed"]).run(
        R=9, eta=3
    )
    pd.testing.assert_frame_equal(resumed[COLUMNS].sort_index(), reference[COLUMNS].sort_index())


@pytest.mark.keras
def test_keras_saves_skip_epochs_where_saving_costs_more_than_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phobbit.keras_adapter.trainable import KerasTrainable
    from phobbit.storage.checkpoints import read_progress

    monkeypatch.setattr(
        "phobbit.keras_adapter.trainable.SAVE_BUDGET", 0.0
    )  # no save is affordable
    killed = KerasTrainable(
        small_model,
        load_dataset=keras_data,
        batch_size=16,
        fit_kwargs={"callbacks": [kill_after(3)]},
    )
    with pytest.raises(KilledAfterEpoch):
        killed.train({}, str(tmp_path / "cut"), 0, 5)
    # The first save measures what a save costs; epochs 2 and 3 could not afford one.
    assert read_progress(str(tmp_path / "cut.keras")).epoch == 1
    finished = KerasTrainable(small_model, load_dataset=keras_data, batch_size=16)
    losses = finished.train({}, str(tmp_path / "whole"), 0, 5)
    whole = read_progress(str(tmp_path / "whole.keras"))
    assert (whole.epoch, whole.val_losses) == (5, tuple(losses))  # the last


@pytest.mark.parametrize("how", ["deleted", "empty", "random bytes"])
def test_a_bad_checkpoint_due_for_promotion_is_retrained_to_the_uninterrupted_table(
    tmp_path: Path, how: str
) -> None:
    reference = tuner(tmp_path / "ref", real=True, curve=overfitting_curve, n_jobs=2).run(
        R=9, eta=3
    )
    promoted = reference[(reference["Run"] == 2) & (reference["Rung"] >= 1)]
    victim = f"0-2-{promoted['ID'].iloc[0]}"
    # The run stops (a full disk) just as the victim starts its second rung ...
    repo = tmp_path / "repo"
    (tmp_path / "tally").mkdir()
    stopper = DyingTrainable(
        curve=overfitting_curve,
        steps_per_epoch=STEPS,
        victim=victim,
        how="disk-full",
        tally_dir=str(tmp_path / "tally"),
        victim_rung_epochs=3,
    )
    with pytest.raises(StorageError, match="no space left"):
        tuner(repo, real=True, trainable=stopper, n_jobs=2).run(R=9, eta=3)
    checkpoint = repo / "models" / f"{victim}.json"
    assert json.loads(checkpoint.read_text())["epoch"] == 1
    # ... and its checkpoint is lost or spoilt before the run resumes.
    if how == "deleted":
        checkpoint.unlink()
    else:
        checkpoint.write_bytes(b"" if how == "empty" else os.urandom(300))
    lines = io.StringIO()
    resumed = tuner(
        repo,
        real=True,
        curve=overfitting_curve,
        n_jobs=2,
        reporter=PlainReporter(lines, verbose=1),
    ).run(R=9, eta=3)
    pd.testing.assert_frame_equal(resumed[COLUMNS].sort_index(), reference[COLUMNS].sort_index())
    rows = [r for r in Repository(repo).iter_results() if r.note]
    what = "is missing" if how == "deleted" else "is unreadable ("
    assert [(r.s, r.id, r.rung, r.status) for r in rows] == [(2, int(victim[4:]), 1, "ok")]
    assert rows[0].note.startswith(f"checkpoint {victim}.json {what}")
    assert rows[0].note.endswith("retrained from scratch")
    assert f"retrained run 2 id {victim[4:]} rung 1: checkpoint {victim}.json" in lines.getvalue()
    assert "1 retrained from a bad checkpoint" in lines.getvalue()


def legacy_row(row: SegmentResult) -> str:
    """``row`` as a version before the note column wrote it."""
    body = encode_row(row).rpartition(",")[0]
    for _ in range(2):  # drop the (empty) objective and note fields
        body = body[: body.rindex(",", 0, len(body) - 1) + 1]
    return f"{body}{zlib.crc32(body.encode()):08x}\n"


def test_a_failed_row_an_unreadable_checkpoint_caused_is_not_final(tmp_path: Path) -> None:
    """A repository of an older version: its trial failed on a checkpoint, since deleted."""
    reference = tuner(tmp_path / "ref", real=True, curve=overfitting_curve, n_jobs=2).run(
        R=9, eta=3
    )
    rows = list(Repository(tmp_path / "ref").iter_results())
    victim = next(r for r in rows if r.s == 1 and r.rung == 1)  # bracket 1's last rung
    repo = tmp_path / "repo"
    shutil.copytree(tmp_path / "ref", repo)
    (repo / "models" / f"0-1-{victim.id}.json").unlink()
    failed = dataclasses.replace(
        victim,
        val_loss=None,
        last_val_loss=None,
        status="failed",
        error=f"RuntimeError: checkpoint {repo}/models/0-1-{victim.id}.keras is unreadable "
        "(File is not a zip file); delete it to retrain",
    )
    with open(repo / "results.csv", "w") as results:
        results.write(LEGACY_HEADER)
        results.writelines(legacy_row(failed if r.key == victim.key else r) for r in rows)
    assert not Repository(repo).results().get(victim.key)  # read, but not final
    records = tmp_path / "records"
    records.mkdir()
    resumed = tuner(repo, records, real=True, curve=overfitting_curve, n_jobs=2).run(R=9, eta=3)
    pd.testing.assert_frame_equal(resumed[COLUMNS].sort_index(), reference[COLUMNS].sort_index())
    trained = records_of(records)
    assert [(Path(r["checkpoint"]).name, r["initial_epoch"]) for r in trained] == [
        (f"0-1-{victim.id}", 3)
    ]
