"""Nothing leaves the repository: its files are opened only inside it, only as plain files,
and never read without bound (``phobbit.storage.files``).

The attacks are those of a hostile or damaged folder: a link out of it (to a file, dangling,
to ``/dev/zero``), a FIFO in a file's place, a lock file that is a link, a file too large to
read. A link inside the folder that points inside it, and a folder reached through a link,
keep working.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import tuner

from phobbit import RepositoryError, open_repository
from phobbit.core.records import EpochRow
from phobbit.errors import StorageError
from phobbit.storage import checkpoints, files
from phobbit.storage.framing import bounded_lines
from phobbit.storage.repository import Repository

SEGMENTS_R9 = 22  # the segments of brackets(9, 3)


@contextlib.contextmanager
def no_hang(*fifos: Path, seconds: float = 120) -> Iterator[None]:
    """Guards the suite against a reader that waits for good on one of ``fifos``: after
    ``seconds`` it opens them for writing and closes them, so a blocked reader reads an
    empty file and the test fails on what it asserts. A guard, never what a test measures:
    a reader that does not block never meets it."""
    stop = threading.Event()

    def unblock() -> None:
        if stop.wait(seconds):
            return
        while not stop.wait(0.1):
            for fifo in fifos:
                with contextlib.suppress(OSError):  # ENXIO: nobody waits on it now
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    guard = threading.Thread(target=unblock, daemon=True)
    guard.start()
    try:
        yield
    finally:
        stop.set()
        guard.join()


@pytest.fixture
def done(tmp_path: Path) -> Path:
    """A repository that holds a finished run of R=9, eta=3 (one iteration)."""
    repo = tmp_path / "repo"
    tuner(repo).run(R=9, eta=3)
    return repo


def moved_out(repo: Path, name: str, outside: Path) -> bytes:
    """Moves ``repo/name`` to ``outside`` and leaves a link to it in its place; its bytes."""
    shutil.move(repo / name, outside)
    (repo / name).symlink_to(outside)
    return outside.read_bytes()


# -- links out of the repository --------------------------------------------------------


def test_a_results_csv_linked_out_of_the_repository_gets_no_row(
    done: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.csv"
    rows = list(Repository(done).iter_results())
    before = moved_out(done, "results.csv", outside)
    # A run with one more iteration would append its rows: it is refused before it writes.
    with pytest.raises(RepositoryError, match=r"results\.csv is a link to .*elsewhere\.csv, out"):
        tuner(done).run(R=9, eta=3, iterations=2)
    # A link made under a running driver: its next append stops the run, writing nothing.
    with pytest.raises(StorageError, match=r"results\.csv is a link to .*elsewhere\.csv, out"):
        Repository(done).append(rows[0])
    with pytest.raises(RepositoryError, match="outside"):
        open_repository(done).status()
    assert outside.read_bytes() == before


def test_a_dangling_epochs_csv_link_makes_no_file_outside(done: Path, tmp_path: Path) -> None:
    made = tmp_path / "made.csv"
    (done / "epochs.csv").unlink()
    (done / "epochs.csv").symlink_to(made)
    with pytest.raises(RepositoryError, match=r"epochs\.csv is a link to .*made\.csv, outside"):
        tuner(done).run(R=9, eta=3, iterations=2)
    row = next(iter(Repository(done).iter_results()))
    epoch = EpochRow(row.iteration, row.s, row.id, row.rung, 1, {"val_loss": 0.5})
    with pytest.raises(StorageError, match="outside"):
        Repository(done).append(row, epochs=[epoch])
    assert not made.exists()


READERS = {  # what reads each file
    "run.json": lambda repo: open_repository(repo),
    "results.csv": lambda repo: open_repository(repo).best(3),
    "epochs.csv": lambda repo: open_repository(repo).curves(),
    "driver.json": lambda repo: open_repository(repo).status(),
}


@pytest.mark.parametrize("name", sorted(READERS))
def test_a_link_to_dev_zero_is_refused_not_read_until_memory_runs_out(
    done: Path, name: str
) -> None:
    (done / name).unlink()
    (done / name).symlink_to("/dev/zero")
    with pytest.raises(RepositoryError, match=f"{name} is a link to /dev/zero"):
        READERS[name](done)
    with pytest.raises(RepositoryError, match=f"{name} is a link to /dev/zero"):
        tuner(done).run(R=9, eta=3)


def test_workers_log_and_decisions_linked_out_are_refused_before_a_run_writes(
    done: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "log.txt"
    outside.write_text("someone's file\n")
    (done / "workers.log").symlink_to(outside)
    with pytest.raises(RepositoryError, match=r"workers\.log is a link to .*log\.txt"):
        tuner(done).run(R=9, eta=3, iterations=2)
    (done / "workers.log").unlink()
    (done / "decisions.csv").symlink_to(tmp_path / "decided.csv")
    with pytest.raises(RepositoryError, match=r"decisions\.csv is a link to .*decided\.csv"):
        tuner(done).run(R=9, eta=3, iterations=2)
    assert outside.read_text() == "someone's file\n"
    assert not (tmp_path / "decided.csv").exists()
    assert len(list(Repository(done).iter_results())) == SEGMENTS_R9


@pytest.mark.parametrize("lock", [".results.lock", ".driver.lock"])
def test_a_lock_file_that_is_a_link_is_refused_in_one_line(
    done: Path, tmp_path: Path, lock: str
) -> None:
    outside = tmp_path / "precious"
    outside.write_text("keep me\n")
    (done / lock).unlink()
    (done / lock).symlink_to(outside)
    with pytest.raises(RepositoryError, match=f"lock file .*{lock} is a link, not a plain file"):
        tuner(done).run(R=9, eta=3, iterations=2)
    assert outside.read_text() == "keep me\n"


# -- special files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["run.json", "results.csv", "epochs.csv", "decisions.csv", "driver.json"]
)
def test_a_fifo_in_a_files_place_is_refused_at_once_by_status_best_and_run(
    done: Path, name: str
) -> None:
    (done / name).unlink(missing_ok=True)
    os.mkfifo(done / name)
    refused = rf"{name} is a FIFO \(named pipe\), not a regular file"
    with no_hang(done / name), pytest.raises(RepositoryError, match=refused):
        tuner(done).run(R=9, eta=3)
    with no_hang(done / name):
        if name in ("run.json", "results.csv", "driver.json"):
            with pytest.raises(RepositoryError, match=refused):
                open_repository(done).status()
        if name in ("run.json", "results.csv"):
            with pytest.raises(RepositoryError, match=refused):
                open_repository(done).best(3)
        if name == "epochs.csv":
            with pytest.raises(RepositoryError, match=refused):
                open_repository(done).curves()


def test_a_models_entry_that_is_no_folder_is_refused_before_a_run_writes(done: Path) -> None:
    shutil.rmtree(done / "models")
    (done / "models").write_text("not checkpoints\n")
    with pytest.raises(RepositoryError, match=r"models is not a folder; .* move it away"):
        tuner(done).run(R=9, eta=3, iterations=2)
    assert len(list(Repository(done).iter_results())) == SEGMENTS_R9


def test_a_checkpoint_that_is_a_fifo_is_unreadable_not_waited_for(tmp_path: Path) -> None:
    fifo = tmp_path / "0-2-3.keras"
    os.mkfifo(fifo)
    with no_hang(fifo):
        found = checkpoints.inspect(fifo)
    assert found.progress is None and "FIFO" in found.problem


def test_a_run_json_larger_than_phobbit_ever_writes_is_refused_unread(done: Path) -> None:
    with open(done / "run.json", "r+b") as handle:
        handle.truncate(files.MAX_WHOLE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(RepositoryError, match=r"run\.json holds more than 64 MiB"):
        open_repository(done)


def test_a_line_longer_than_the_bound_is_skipped_and_the_rest_still_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "lines"
    path.write_bytes(b"short\n" + b"x" * 25 + b"\n" + b"y" * 10 + b"\nlast\n" + b"z" * 30)
    with open(path, "rb") as handle:
        assert list(bounded_lines(handle, limit=10)) == [b"short\n", b"last\n"]


# -- what must keep working -------------------------------------------------------------


def test_links_inside_the_repository_pointing_inside_it_keep_working(done: Path) -> None:
    kept = done / "kept"
    kept.mkdir()
    for name in ("results.csv", "run.json", "epochs.csv"):
        shutil.move(done / name, kept / name)
        (done / name).symlink_to(Path("kept") / name)  # relative, as a user makes them
    tuner(done).run(R=9, eta=3, iterations=2)
    rows = list(Repository(kept).iter_results())  # the rows went where the link points
    assert len(rows) == 2 * SEGMENTS_R9
    status = open_repository(done).status()
    assert status.segments_done == status.segments_total == 2 * SEGMENTS_R9
    assert open_repository(done).best(1)[0].checkpoint is not None
    # run.json, rewritten for the second iteration, is so where the link points; the links stay.
    assert all((done / name).is_symlink() for name in ("results.csv", "run.json", "epochs.csv"))
    assert open_repository(kept).settings.iterations == 2


def test_a_dangling_link_inside_the_repository_is_made_where_it_points(done: Path) -> None:
    (done / "epochs.csv").unlink()
    (done / "epochs.csv").symlink_to("curves.csv")
    tuner(done).run(R=9, eta=3, iterations=2)
    assert (done / "curves.csv").is_file() and len(open_repository(done).curves()) > 0


def test_a_repository_reached_through_a_link_trains_resumes_and_reads(tmp_path: Path) -> None:
    real = tmp_path / "real"
    link = tmp_path / "link"
    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    tuner(link).run(R=9, eta=3)
    tuner(link).run(R=9, eta=3, iterations=2)  # a resume through the link
    status = open_repository(link).status()
    assert status.segments_done == status.segments_total == 2 * SEGMENTS_R9
    assert len(list(Repository(real).iter_results())) == 2 * SEGMENTS_R9
    (best,) = open_repository(link).best(1)
    assert best.checkpoint is not None and best.checkpoint.is_file()
    with open_repository(link).scoring_copy() as (source, copy):
        assert copy.read_bytes() == source.read_bytes()
