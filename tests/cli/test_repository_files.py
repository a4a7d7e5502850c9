"""The command line on a repository whose files are hostile or damaged: a FIFO in a file's
place, a plain file where ``tensorboard/`` goes, an export aimed into the repository, a
best-epoch file that cannot be read. Each ends in one line, exit code 2, nothing written.

The FIFO cases hung ``status``, ``best`` and ``train`` for good: they run in a subprocess
whose timeout only guards the suite against that regression; what they test is the line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import tuner
from test_cli import ROOT, SYNTHETIC, _command, _env, assert_one_line_error, phobbit

from phobbit import open_repository


def phobbit_process(*args: object, timeout: float) -> subprocess.CompletedProcess:
    """Runs ``python -m phobbit ARGS`` to the end in a subprocess (``timeout``: a guard)."""
    return subprocess.run(
        _command(*args), capture_output=True, text=True, env=_env(), timeout=timeout, cwd=ROOT
    )


@pytest.fixture
def done(tmp_path: Path) -> Path:
    """A repository that holds a finished run of R=9, eta=3 (simulated, in this process)."""
    repo = tmp_path / "repo"
    tuner(repo).run(R=9, eta=3)
    return repo


@pytest.mark.parametrize("name", ["run.json", "results.csv", "driver.json"])
def test_a_fifo_in_a_files_place_ends_status_best_and_train_in_one_line(
    done: Path, name: str
) -> None:
    (done / name).unlink()
    os.mkfifo(done / name)
    refused = f"{done / name} is a FIFO (named pipe), not a regular file"
    train = ("train", SYNTHETIC, "--jobs", 1, "--R", 9, "--repo", done)
    for command in (("status", done), ("best", done), train):
        result = phobbit_process(*command, timeout=300)  # a guard: it hung for good before
        if command[0] == "best" and name == "driver.json":
            assert result.returncode == 0, result.stderr  # `best` has no use for driver.json
            continue
        assert refused in assert_one_line_error(result), (command, result.stderr)
    assert (done / name).is_fifo()  # train wrote nothing, not even in its place


def test_tensorboard_where_its_folder_is_a_plain_file_says_so_in_one_line(done: Path) -> None:
    shutil.rmtree(done / "tensorboard", ignore_errors=True)  # the logs the run wrote
    (done / "tensorboard").write_text("my notes\n")
    line = assert_one_line_error(phobbit("tensorboard", done))
    assert f"{done / 'tensorboard'} is a file, not a folder" in line and "move" in line
    assert (done / "tensorboard").read_text() == "my notes\n"


def test_export_onto_a_file_of_the_repository_is_refused_and_the_file_kept(
    done: Path, tmp_path: Path
) -> None:
    target = done / "models" / "0-2-0.best.keras"
    target.write_bytes(b"the run's own checkpoint")
    link = tmp_path / "link"
    link.symlink_to(done, target_is_directory=True)
    pointer = tmp_path / "pointer.keras"
    pointer.symlink_to(target)
    for repo, path in (
        (done, target),
        (link, target),  # the repository through a link, the file by its own path
        (done, link / "models" / "0-2-0.best.keras"),  # and the other way round
        (done, pointer),  # a path outside that is a link into the repository
        (done, done / "best.keras"),  # a new file among the run's own
    ):
        line = assert_one_line_error(phobbit("export", repo, path))
        assert f"PATH {path} is inside the repository {repo}" in line, line
    assert target.read_bytes() == b"the run's own checkpoint"
    assert not (done / "best.keras").exists()
    # Outside the repository the export goes on (this run trained no Keras model).
    assert "is not a Keras model" in assert_one_line_error(
        phobbit("export", link, tmp_path / "out.keras")
    )


def test_export_of_a_best_epoch_file_that_is_corrupt_says_it_is_unreadable(
    done: Path, tmp_path: Path
) -> None:
    scoring = open_repository(done).scoring_file()
    scoring.write_bytes(b"\x00 not what phobbit wrote")
    line = assert_one_line_error(phobbit("export", done, tmp_path / "m.keras"))
    assert "no readable file holds the best epoch of trial" in line, line
    assert f"{scoring} is unreadable" in line and "keep_best" not in line, line
    assert not (tmp_path / "m.keras").exists()


def test_status_and_best_read_a_repository_through_a_link_with_links_inside(
    done: Path, tmp_path: Path
) -> None:
    (done / "kept").mkdir()
    os.replace(done / "results.csv", done / "kept" / "results.csv")
    (done / "results.csv").symlink_to(Path("kept") / "results.csv")
    link = tmp_path / "link"
    link.symlink_to(done, target_is_directory=True)
    status = phobbit("status", link)
    assert status.returncode == 0 and "22/22 segments" in status.stdout, status.stderr
    best = phobbit("best", link, "--top", 1)
    assert best.returncode == 0 and "Best model:" in best.stdout, best.stderr
