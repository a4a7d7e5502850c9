"""Fencing: no process of a dead or replaced driver writes a row or replaces a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import run_settings
from helpers import (
    STEPS,
    PausingTrainable,
    driver_command,
    kill_tree,
    paused_pid,
    subprocess_env,
    tuner,
    x_curve,
)

from phobbit import RepositoryError
from phobbit.core.records import Segment
from phobbit.errors import StaleDriverError
from phobbit.execution.worker import train_segment
from phobbit.storage.fence import commit
from phobbit.storage.lease import DriverLease
from phobbit.storage.repository import DRIVER_FRESH_S, Repository
from phobbit.testing import SyntheticTrainable

COLUMNS = ["Hparams", "ID", "Run", "Val Loss", "Epochs", "Rung", "Status"]
VICTIM = "0-0-1"  # bracket 0 of R=9, eta=3 trains its configurations 9 epochs at once
SETTINGS = {"R": 9, "eta": 3, "n_jobs": 2, "seed": 7, "epoch_seconds": 0.01}


def segment_of(checkpoint: Path, start: int, epochs: int) -> Segment:
    return Segment(
        iteration=0,
        s=0,
        id=0,
        rung=0,
        hparams={"x": 0.5},
        start_epoch=start,
        epochs=epochs,
        checkpoint=str(checkpoint),
    )


def files_of(repo: Path) -> dict[str, bytes]:
    """Every row and checkpoint of a repository, by path."""
    found = {"results.csv": (repo / "results.csv").read_bytes()}
    for path in sorted((repo / "models").iterdir()):
        if ".tmp" not in path.name:
            found[path.name] = path.read_bytes()
    return found


def ended(process: psutil.Process, timeout: float = 300.0, unless: Path | None = None) -> bool:
    """Waits until ``process`` has ended (True), or ``unless`` exists or time is up (False).

    An orphan's exit status goes to whoever adopted it, so only its end can be seen.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (unless is not None and unless.exists()):
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def paused_driver(repo: Path, barrier: Path, hold_gil: bool = False) -> subprocess.Popen:
    """A driver whose victim's worker pauses mid-segment until ``barrier/go`` exists."""
    barrier.mkdir()
    pause = {"victim": VICTIM, "barrier_dir": str(barrier), "after_epochs": 3}
    pause["hold_gil"] = hold_gil
    return subprocess.Popen(
        driver_command(repo, barrier, {**SETTINGS, "pause": pause}),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@dataclass
class PausedDriver:
    """A driver in a process of its own, its victim's worker paused mid-segment.

    Attributes:
        repo: its repository.
        barrier: the folder where the worker waits; ``go`` lets it go on.
        process: the driver's process (its stderr a pipe).
        workers: the driver's worker processes, as they were at the pause.
    """

    repo: Path
    barrier: Path
    process: subprocess.Popen
    workers: list[psutil.Process]

    def go(self) -> None:
        """Lets the paused worker go on."""
        (self.barrier / "go").touch()


@pytest.fixture
def paused(tmp_path: Path) -> Iterator[PausedDriver]:
    """A ``PausedDriver``; whatever is left of it is killed after the test."""
    repo, barrier = tmp_path / "repo", tmp_path / "barrier"
    driver = paused_driver(repo, barrier)
    workers: list[psutil.Process] = []
    try:
        paused_pid(barrier)
        workers = psutil.Process(driver.pid).children()
        yield PausedDriver(repo, barrier, driver, workers)
    finally:
        kill_tree([p.pid for p in workers] + [driver.pid])
        driver.wait()
        driver.stderr.close()


def resumed_tuner(repo: Path, barrier: Path):
    trainable = PausingTrainable(
        curve=x_curve, steps_per_epoch=STEPS, victim=VICTIM, barrier_dir=str(barrier)
    )
    return tuner(repo, real=True, trainable=trainable, n_jobs=2, seed=SETTINGS["seed"])


def reference(tmp_path: Path) -> pd.DataFrame:
    return tuner(tmp_path / "reference", real=True, n_jobs=2, seed=SETTINGS["seed"]).run(
        R=9, eta=3
    )


def test_commit_outside_a_segment_is_a_plain_replace(tmp_path: Path) -> None:
    temp, path = tmp_path / "new", tmp_path / "old"
    temp.write_text("new")
    path.write_text("old")
    commit(temp, path)
    assert path.read_text() == "new" and not temp.exists()


def test_a_segment_of_a_replaced_driver_writes_no_row_and_no_checkpoint(tmp_path: Path) -> None:
    repository = Repository(tmp_path / "repo")
    repository.create(run_settings(3))
    checkpoint = repository.models / "0-0-0"
    SyntheticTrainable(steps_per_epoch=STEPS).train({"x": 0.5}, str(checkpoint), 0, 1)
    saved = Path(f"{checkpoint}.json").read_bytes()
    with repository.driver_lock() as old:
        pass  # a driver that was killed, or whose lock file was deleted
    with repository.driver_lock() as new:
        with pytest.raises(StaleDriverError, match="taken over by another driver"):
            train_segment(
                SyntheticTrainable(), segment_of(checkpoint, 1, 3), str(repository.path), old
            )
        assert Path(f"{checkpoint}.json").read_bytes() == saved, "the checkpoint was replaced"
        assert not repository.results_path.exists(), "a row was written"
        assert sorted(p.name for p in repository.models.iterdir()) == ["0-0-0.json"]
        # The driver that holds the repository now writes as usual.
        result = train_segment(
            SyntheticTrainable(), segment_of(checkpoint, 1, 3), str(repository.path), new
        )
        assert result.ok and list(repository.iter_results()) == [result]
        assert json.loads(Path(f"{checkpoint}.json").read_text())["epoch"] == 3


WORKER_AFTER_DRIVER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from phobbit.execution.worker import pin
    driver, lease_dir, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    while os.getppid() == driver:  # start up only once the driver is gone
        time.sleep(0.01)
    pin(["-1"], lease_dir, 1, False, driver)
    out.write_text("trained on")
    time.sleep(120)
    """
)
DRIVER_THAT_DIES = textwrap.dedent(
    """
    import os, subprocess, sys
    worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())] + sys.argv[2:])
    print(worker.pid, flush=True)
    """
)


def test_a_pool_worker_that_starts_after_its_driver_died_exits_at_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER_THAT_DIES, WORKER_AFTER_DRIVER, str(tmp_path), str(out)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    worker = psutil.Process(int(driver.stdout))
    try:
        # It exits by itself, before it could take a segment: nothing is ever written.
        assert ended(worker, unless=out) and not out.exists(), "the dead driver's worker went on"
    finally:
        kill_tree([worker.pid])


def test_a_stopped_orphan_continued_after_a_resume_rolls_nothing_back(tmp_path: Path) -> None:
    repo, barrier = tmp_path / "repo", tmp_path / "barrier"
    # Holding the GIL, the orphan's training thread writes before its parent watchdog can
    # end it: only the fence stands between it and the repository.
    driver = paused_driver(repo, barrier, hold_gil=True)
    orphan: psutil.Process | None = None
    children: list[psutil.Process] = []
    try:
        orphan = psutil.Process(paused_pid(barrier))
        assert orphan.ppid() == driver.pid
        orphan.suspend()  # SIGSTOP, in the middle of the victim's segment
        children = psutil.Process(driver.pid).children(recursive=True)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        (barrier / "go").touch()
        resumed = resumed_tuner(repo, barrier).run(R=9, eta=3)
        before = files_of(repo)
        assert json.loads(before[f"{VICTIM}.json"])["epoch"] == 9
        orphan.resume()  # SIGCONT: it goes on from epoch 4 of a segment resumed meanwhile
        assert ended(orphan), "the orphan still runs"  # by its watchdog, or at the fence
        assert files_of(repo) == before, "the stopped orphan wrote to the repository"
        # Nothing of the killed driver is left (loky's trackers end with the last worker).
        assert all(ended(p) for p in children)
    finally:
        kill_tree([orphan.pid] if orphan else [])
        kill_tree([p.pid for p in children])
        kill_tree([driver.pid])
    pd.testing.assert_frame_equal(
        resumed[COLUMNS].sort_index(), reference(tmp_path)[COLUMNS].sort_index()
    )


def test_a_second_driver_is_refused_while_the_first_runs_although_its_lock_file_is_gone(
    paused: PausedDriver,
) -> None:
    repo, driver = paused.repo, paused.process
    (repo / ".driver.lock").unlink()  # e.g. a clean-up script that removes lock files
    before = (repo / "results.csv").read_bytes()
    running = rf"in use by a running phobbit \(pid {driver.pid} on {socket.gethostname()}\)"
    with pytest.raises(RepositoryError, match=running + r" although its lock file"):
        resumed_tuner(repo, paused.barrier).run(R=9, eta=3)
    # The first driver's other worker may still be adding rows: every row is its.
    assert (repo / "results.csv").read_bytes().startswith(before)
    first = {driver.pid, *(p.pid for p in paused.workers)}
    assert {row.pid for row in Repository(repo).iter_results()} <= first
    assert json.loads((repo / "driver.json").read_text())["pid"] == driver.pid
    paused.go()
    assert driver.wait(timeout=120) == 0, driver.stderr.read().decode()


def test_a_driver_taken_over_stops_and_its_workers_write_nothing_after(
    tmp_path: Path, paused: PausedDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, driver = paused.repo, paused.process
    # The worst case: a second driver that cannot tell the first one still runs (the
    # lock file deleted, and the first driver's pid not checkable from where it runs).
    (repo / ".driver.lock").unlink()
    monkeypatch.setattr(DriverLease, "_refuse_running_driver", lambda self: None)
    taken_over = resumed_tuner(repo, paused.barrier).run(R=9, eta=3)
    after = files_of(repo)
    paused.go()  # the first driver's paused worker goes on
    assert driver.wait(timeout=300) == 1
    message = driver.stderr.read().decode()
    assert "was taken over by another phobbit" in message, message
    _, alive = psutil.wait_procs(paused.workers, timeout=120)
    assert not alive, f"the first driver's workers still run: {alive}"
    assert files_of(repo) == after, "a worker of the replaced driver wrote"
    keys = [row.key for row in Repository(repo).iter_results()]
    assert len(keys) == len(set(keys)), "a segment was trained by both drivers"
    pd.testing.assert_frame_equal(
        taken_over[COLUMNS].sort_index(), reference(tmp_path)[COLUMNS].sort_index()
    )


def test_a_run_whose_driver_json_is_deleted_stops_and_writes_nothing_more(
    paused: PausedDriver,
) -> None:
    repo, driver = paused.repo, paused.process
    with Repository(repo)._lock:  # as a write would: no write is half-way through
        (repo / "driver.json").unlink()
        before = files_of(repo)
    paused.go()
    assert driver.wait(timeout=300) == 1
    message = driver.stderr.read().decode()
    assert "driver.json no longer names this run" in message, message
    _, alive = psutil.wait_procs(paused.workers, timeout=120)
    assert not alive and files_of(repo) == before


def write_driver_json(repo: Path, **record: object) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "driver.json").write_text(json.dumps({"token": "old", **record}))


def test_driver_json_of_a_dead_or_reused_pid_does_not_block_a_resume(tmp_path: Path) -> None:
    repository = Repository(tmp_path / "repo")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_driver_json(repository.path, pid=dead.pid, host=socket.gethostname())
    with repository.driver_lock() as token:
        assert repository.holds(token)
    # A live pid that is not the driver that wrote driver.json: another start time.
    write_driver_json(
        repository.path, pid=os.getppid(), host=socket.gethostname(), process_start=1.0
    )
    with repository.driver_lock() as token:
        assert repository.driver_record()["pid"] == os.getpid()


TAKE_OVER = textwrap.dedent(
    """
    import sys
    from phobbit.storage.repository import Repository
    with Repository(sys.argv[1]).driver_lock():
        print("took over")
    """
)


def test_a_driver_that_ended_does_not_block_the_next_while_its_process_lives_on(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    tuner(repo, real=True, n_jobs=1).run(R=3, eta=3)  # this process ran a driver, and lives on
    record = Repository(repo).driver_record()
    assert record["pid"] == os.getpid() and record["ended"] and record["token"] is None
    taking_over = subprocess.run(
        [sys.executable, "-c", TAKE_OVER, str(repo)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert taking_over.stdout == "took over\n", taking_over.stderr


def test_a_driver_of_another_host_is_trusted_gone_only_once_its_heartbeat_is_stale(
    tmp_path: Path,
) -> None:
    repository = Repository(tmp_path / "repo")
    write_driver_json(repository.path, pid=4242, host="another-host")
    with pytest.raises(RepositoryError, match="may be in use by phobbit pid 4242 on another-host"):
        with repository.driver_lock():
            pass
    stale = time.time() - DRIVER_FRESH_S - 1
    os.utime(repository.path / "driver.json", (stale, stale))
    with repository.driver_lock() as token:
        assert repository.holds(token)


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from filelock import FileLock
    lock = FileLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    time.sleep(120)
    """
)


def test_a_results_lock_held_by_a_stopped_process_stops_a_new_driver_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    # What a worker stopped with SIGSTOP while it appended a row would leave behind.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(repo / ".results.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        holder.send_signal(signal.SIGSTOP)
        monkeypatch.setattr("phobbit.storage.repository.LOCK_TIMEOUT_S", 1.0)
        with pytest.raises(RepositoryError, match=r"could not lock .* within 1 s: .*fuser -v"):
            tuner(repo, real=True, n_jobs=1).run(R=3, eta=3)
        assert not (repo / "results.csv").exists()
    finally:
        holder.kill()
        holder.wait()
