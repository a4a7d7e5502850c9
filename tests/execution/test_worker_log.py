"""What of the workers' standard error reaches ``workers.log``: the user's lines, not
TensorFlow's start-up noise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest

from phobbit.execution import worker_log
from phobbit.execution.worker import without_startup_noise

# What a CPU worker's TensorFlow 2.21 import wrote, as workers.log held it.
STARTUP = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796669324.313032   30654 port.cc:153] oneDNN custom operations are on. "
    b"You may see slightly different numerical results due to floating-point round-off "
    b"errors from different computation orders. To turn them off, set the environment "
    b"variable `TF_ENABLE_ONEDNN_OPTS=0`.\n"
    b"I0000 00:00:1796669324.313628   30654 cudart_stub.cc:31] Could not find cuda drivers "
    b"on your machine, GPU will not be used.\n"
    b"E0000 00:00:1796669338.276083   30654 cuda_platform.cc:52] failed call to cuInit: "
    b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
)
USER = (
    b"/home/me/model.py:12: UserWarning: Do not pass an `input_shape` to a layer.\n"
    b"  model.add(Dense(8, input_shape=(4,)))\n"
    b"E0000 00:00:1796669338.3 30654 some_op.cc:9] Resource exhausted: OOM when allocating\n"
)
TAIL = b"my own last line, cut short by a kill"


def test_tensorflows_start_up_lines_are_dropped_and_the_users_lines_kept_in_order() -> None:
    log = STARTUP + USER + STARTUP + TAIL
    assert without_startup_noise(log, gpus_hidden=True) == USER + TAIL


def test_no_cuda_driver_is_news_on_a_gpu_worker_and_stays() -> None:
    kept = without_startup_noise(STARTUP, gpus_hidden=False)
    assert b"Could not find cuda drivers" in kept and b"failed call to cuInit" in kept
    assert b"oneDNN" not in kept and b"absl::InitializeLog" not in kept


# -- a killed driver's workers' log ----------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def left_by(repo: Path, pid: int, hidden: bool, text: bytes) -> Path:
    """The log folder a driver of ``repo`` with ``pid`` leaves when it is killed: its
    ``temporary_log``, never cleaned up."""
    with mock.patch("os.getpid", return_value=pid):
        folder = Path(tempfile.mkdtemp(prefix=worker_log.folder_prefix(repo, hidden)))
    (folder / "workers.log").write_bytes(text)
    return folder


@pytest.fixture
def temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder of this test's own (where drivers leave their logs)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_killed_drivers_log_is_appended_by_the_next_driver_and_removed(
    tmp_path: Path, temporary: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "workers.log").write_bytes(b"from the first run\n")
    first, second = dead_pid(), dead_pid()
    older = left_by(repo, first, True, STARTUP + b"killed run 1\n")
    os.utime(older, ns=(1, 1))  # the older of the two
    newer = left_by(repo, second, False, STARTUP + b"killed run 2\n")
    assert sorted(worker_log.recover(repo)) == sorted([first, second])
    kept = (repo / "workers.log").read_bytes()
    # In the order the drivers ran, each with its own noise rule: the hidden-GPU run's
    # no-CUDA lines are noise, the other run's are news.
    assert kept.startswith(b"from the first run\nkilled run 1\n"), kept
    assert kept.endswith(without_startup_noise(STARTUP + b"killed run 2\n", False)), kept
    assert not older.exists() and not newer.exists()
    assert worker_log.recover(repo) == []  # appended once


def test_a_log_of_a_live_driver_or_of_another_repository_is_left_alone(
    tmp_path: Path, temporary: Path
) -> None:
    repo, other = tmp_path / "repo", tmp_path / "other"
    repo.mkdir()
    other.mkdir()
    # A driver still starting on this repository (refused at the lock, it cleans up itself).
    live = left_by(repo, os.getppid(), True, b"a live driver's line\n")
    elsewhere = left_by(other, dead_pid(), True, b"another repository's line\n")
    assert worker_log.recover(repo) == []
    assert live.exists() and elsewhere.exists()
    assert not (repo / "workers.log").exists()


def test_a_link_named_like_a_killed_drivers_log_is_never_followed_nor_removed(
    tmp_path: Path, temporary: Path
) -> None:
    repo, target = tmp_path / "repo", tmp_path / "secret"
    repo.mkdir()
    target.mkdir()
    (target / "workers.log").write_bytes(b"not a log of ours\n")
    name = left_by(repo, dead_pid(), True, b"").name
    shutil.rmtree(temporary / name)
    os.symlink(target, temporary / name)
    assert worker_log.recover(repo) == []
    assert (target / "workers.log").read_bytes() == b"not a log of ours\n"
    assert not (repo / "workers.log").exists()


def test_every_name_of_one_repository_finds_its_killed_drivers_log(
    tmp_path: Path, temporary: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "alias").symlink_to(repo)
    left_by(tmp_path / "alias", dead_pid(), True, b"written through a link's name\n")
    worker_log.recover(repo)
    assert (repo / "workers.log").read_bytes() == b"written through a link's name\n"
