"""The column index of ``results.csv``: ``status`` and ``best`` from it equal the full read."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_settings

from phobbit import open_repository
from phobbit.core.records import SegmentResult
from phobbit.storage.index import INDEX
from phobbit.storage.repository import LEGACY_HEADER, Repository, decode_row, encode_row
from phobbit.storage.view import RunStatus

ROOT = Path(__file__).resolve().parents[2]
ERROR = "RuntimeError: checkpoint m.keras is unreadable (bad); delete it to retrain"


def row(config_id: int, rung: int = 0, loss: float | None = 0.5, **changes) -> SegmentResult:
    epochs = {0: 1, 1: 3, 2: 9}[rung]
    values = dict(
        iteration=0,
        s=2,
        id=config_id,
        rung=rung,
        start_epoch={0: 0, 1: 1, 2: 3}[rung],
        epochs=epochs,
        val_loss=loss,
        last_val_loss=loss,
        status="ok" if loss is not None else "failed",
        error="" if loss is not None else "ValueError: boom",
        hparams={"x": config_id / 10},
        gpu="0",
        start=100.0 + config_id + rung,
        end=200.0 + config_id + rung,
    )
    values.update(changes)
    return SegmentResult(**values)


def every_kind_of_row() -> list[SegmentResult]:
    """Rows of each kind a reader treats apart: ok, failed, superseded, not final, duplicated,
    stopped early, from an iteration of its own, and one no schedule of the run makes."""
    return [
        row(0, loss=0.3),
        row(1, loss=None),  # failed in user code: final
        row(2, loss=0.2),
        row(3, loss=None, error=ERROR),  # not final: trained again below
        row(4, loss=None),  # failed, then retried (superseded) below
        row(0, rung=1, loss=0.25),
        row(3, loss=0.4),
        row(4, loss=0.15),
        row(2, rung=1, loss=0.1, epochs=2, note="stopped early by a callback after epoch 2 of 3"),
        row(2, loss=0.2),  # the same segment written twice (a kill after the append)
        row(5, loss=0.05, iteration=1),
        row(6, rung=2, loss=0.01, s=7),  # no bracket 7 at R=9: skipped with a warning
    ]


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    repository = Repository(tmp_path / "repo")
    repository.create(run_settings(R=9, eta=3, seed=4, iterations=2))
    return repository


def reference_status(repository: Repository) -> tuple:
    """What status counts, read the slow way: every row decoded (``Repository.results``)."""
    rows = repository.results()
    best = min(
        (r for r in rows.values() if r.ok and r.val_loss is not None),
        key=lambda r: r.val_loss,
        default=None,
    )
    return (
        len(rows),
        sum(r.epochs - r.start_epoch for r in rows.values() if r.ok),
        sum(1 for r in rows.values() if not r.ok),
        min(r.start for r in rows.values()),
        max(r.end for r in rows.values()),
        None if best is None else best.key,
    )


def counts(status: RunStatus) -> tuple:
    best = None if status.best is None else status.best.key
    return (
        status.segments_done,
        status.epochs_done,
        status.failed,
        status.first_start,
        status.last_end,
        best,
    )


def test_status_and_best_from_the_index_equal_the_full_read_as_rows_are_appended(
    repo: Repository,
) -> None:
    rows = every_kind_of_row()
    for count, new in enumerate(rows, 1):
        repo.append(new)
        run = open_repository(repo.path)
        assert counts(run.status()) == reference_status(run.repository), count
        frame = run.results()  # the pandas table, from every row decoded
        best = run.best(len(frame) + 2)
        assert [b.trial for b in best] == list(frame.index), count
        assert [(b.val_loss, b.status, b.epochs, b.train_time_s) for b in best] == [
            (None if pd.isna(v) else v, s, e, round(t, 3))
            for v, s, e, t in zip(
                frame["Val Loss"], frame["Status"], frame["Epochs"], frame["Train Time"]
            )
        ], count
        assert (repo.path / INDEX).is_file(), "saved, to be extended by the next read"


def test_the_index_is_extended_by_appended_rows_and_rebuilt_when_the_file_is_another(
    repo: Repository,
) -> None:
    for new in every_kind_of_row()[:5]:
        repo.append(new)
    first = repo.index()
    assert len(first) == 5
    repo.append(row(7, loss=0.9))
    grown = repo.index()
    assert list(grown.offset[:5]) == list(first.offset) and len(grown) == 6
    # An older version's file, migrated by the next append (a new file, a new inode).
    old = repo.results_path.read_text().replace(
        repo.results_path.read_text().splitlines()[0] + "\n", LEGACY_HEADER
    )
    repo.results_path.write_text(old)
    repo.append(row(8, loss=0.8))
    assert [r.id for r in (repo.index().rows(list(range(7))))] == [0, 1, 2, 3, 4, 7, 8]


def test_a_saved_index_is_read_back_and_only_the_rows_appended_since_are_decoded(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phobbit.storage import repository as module

    for new in every_kind_of_row()[:5]:
        repo.append(new)
    repo.index()
    decoded: list[bytes] = []

    def counting(line: bytes) -> SegmentResult | None:
        decoded.append(line)
        return decode_row(line)

    monkeypatch.setattr(module, "decode_row", counting)
    assert len(Repository(repo.path).index()) == 5 and decoded == []
    repo.append(row(7, loss=0.9))
    fresh = Repository(repo.path)
    assert len(fresh.index()) == 6 and len(decoded) == 1
    assert [r.id for r in fresh.index().rows([5])] == [7]


def test_an_edited_results_file_or_a_damaged_index_is_read_anew(repo: Repository) -> None:
    for new in every_kind_of_row()[:4]:
        repo.append(new)
    repo.index()
    # Edited in place (same inode): the bytes before the indexed offset differ.
    text = repo.results_path.read_bytes()
    swapped = encode_row(row(0, loss=0.7)).encode()
    with open(repo.results_path, "r+b") as handle:
        handle.seek(text.index(b"\n") + 1)
        handle.write(swapped)
    assert repo.index().val_loss[0] == 0.7
    whole = [r.key for r in repo.index().rows(list(range(4)))]
    for damage in (b"", b"{}\n", b'{"version": 1}\n' + os.urandom(64), os.urandom(300)):
        (repo.path / INDEX).write_bytes(damage)
        assert [r.key for r in repo.index().rows(list(range(4)))] == whole
        assert len(repo.index()) == 4


def test_a_row_being_written_is_left_for_the_next_read(repo: Repository) -> None:
    repo.append(row(0))
    line = encode_row(row(1))
    with open(repo.results_path, "a") as handle:
        handle.write(line[:20])  # a write in progress
    assert len(repo.index()) == 1
    with open(repo.results_path, "a") as handle:
        handle.write(line[20:])
    assert [r.id for r in repo.index().rows([0, 1])] == [0, 1]


def test_a_reader_that_cannot_save_the_index_still_reads(repo: Repository) -> None:
    repo.append(row(0))
    (repo.path / INDEX).mkdir()  # in the way, as a folder the reader may not write is
    assert open_repository(repo.path).status().segments_done == 1
    repo.append(row(1))
    assert open_repository(repo.path).status().segments_done == 2
    assert (repo.path / INDEX).is_dir()


def test_index_rows_from_more_iterations_count_once_run_json_allows_them(
    repo: Repository, tmp_path: Path
) -> None:
    repo.append(row(0))
    repo.append(row(1, iteration=2))  # not a run of 2 iterations: skipped
    assert open_repository(repo.path).status().segments_done == 1
    repo.create(dataclasses.replace(run_settings(R=9, eta=3, seed=4), iterations=3))
    assert open_repository(repo.path).status().segments_done == 2


def test_status_and_best_import_no_numpy_nor_pandas(repo: Repository) -> None:
    repo.append(row(0))
    code = (
        "import sys, io, contextlib\n"
        "from phobbit.cli.commands import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    for args in (['status'], ['best'], ['best', '--json']):\n"
        "        assert main([*args, sys.argv[1]]) == 0\n"
        "print(sorted(m for m in ('numpy', 'pandas') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code, str(repo.path)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
