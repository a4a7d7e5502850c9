"""The repository: CRC-checked rows, appends under a file lock, run.json settings."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_settings

from phobbit import Hyperparameter, RepositoryError
from phobbit.core.records import RunSettings, SegmentResult
from phobbit.core.space import MAX_NESTING, Space
from phobbit.storage.repository import (
    COLUMNS,
    HEADER,
    LEGACY_HEADER,
    NOTE_HEADER,
    Repository,
    decode_row,
    encode_row,
)


def row(config_id: int, rung: int = 0, **changes) -> SegmentResult:
    values = dict(
        iteration=0,
        s=2,
        id=config_id,
        rung=rung,
        start_epoch=0,
        epochs=3,
        val_loss=0.25,
        last_val_loss=0.3,
        status="ok",
        error="",
        gpu="1",
        pid=42,
        host="box",
        start=1.5,
        end=2.5,
        hparams={"act": "relu", "lr": 0.001, "s": 'a,"b"\n'},
    )
    values.update(changes)
    return SegmentResult(**values)


def test_rows_round_trip_exactly() -> None:
    original = row(3, val_loss=0.1 + 0.2, error="ValueError: bad\nthing")
    line = encode_row(original)
    assert line.count("\n") == 1 and line.endswith("\n")
    decoded = decode_row(line)
    assert decoded == SegmentResult(**{**original.__dict__, "error": "ValueError: bad thing"})
    assert decoded.hparams == original.hparams
    failed = decode_row(encode_row(row(4, val_loss=None, last_val_loss=None, status="failed")))
    assert failed.val_loss is None and not failed.ok


def test_a_retrain_note_round_trips_and_rows_from_before_it_still_read(repo: Path) -> None:
    noted = row(5, note="checkpoint 0-2-5.keras is missing;\nretrained from scratch")
    assert (
        decode_row(encode_row(noted)).note
        == "checkpoint 0-2-5.keras is missing; retrained from scratch"
    )
    # A results.csv begun by a version without the note column: one field fewer per row.
    old = encode_row(row(6)).rpartition(",")[0]
    old = old[: old.rindex(",")] + ","
    old_line = f"{old}{zlib.crc32(old.encode()):08x}\n"
    assert decode_row(old_line) == row(6)
    repository = Repository(repo)
    repository.create(run_settings(9))
    repository.results_path.write_text(LEGACY_HEADER + old_line)
    repository.check_results()
    repository.append(noted)  # a newer version goes on appending to it
    assert list(repository.iter_results()) == [row(6), decode_row(encode_row(noted))]


def test_torn_and_corrupt_lines_are_ignored_not_parsed() -> None:
    line = encode_row(row(1))
    assert decode_row(line[:-1]) is None  # no newline: torn at the end
    assert decode_row(line[: len(line) // 2] + "\n") is None
    assert decode_row(line.replace("0.25", "0.75")) is None  # a changed value fails the CRC
    assert decode_row(HEADER) is None


def test_append_after_a_torn_row_starts_a_new_line(repo: Path) -> None:
    repository = Repository(repo)
    repository.create(run_settings(9))
    repository.append(row(0))
    with open(repository.results_path, "a") as handle:
        handle.write(encode_row(row(1))[:30])  # a writer killed mid-row
    repository.append(row(2))
    assert [r.id for r in repository.iter_results()] == [0, 2]


def test_a_header_cut_short_by_a_full_disk_is_completed_by_the_next_append(repo: Path) -> None:
    repository = Repository(repo)
    repository.create(run_settings(9))
    repository.results_path.write_text(HEADER[:40])  # the file's first write was cut short
    repository.check_results()
    repository.append(row(0))
    assert [r.id for r in repository.iter_results()] == [0]
    assert repository.results_path.read_text().startswith(HEADER)


def test_first_row_of_a_segment_wins_over_duplicates(repo: Path) -> None:
    repository = Repository(repo)
    repository.create(run_settings(9))
    repository.append(row(0, val_loss=0.5))
    repository.append(row(0, val_loss=0.9))
    repository.append(row(0, rung=1, val_loss=0.4))
    found = repository.results()
    assert len(found) == 2 and found[(0, 2, 0, 0)].val_loss == 0.5


def test_settings_of_another_run_are_refused_and_nothing_written(repo: Path) -> None:
    repository = Repository(repo)
    settings = run_settings(9)
    assert repository.check_settings(settings) is False
    assert not repo.exists()
    repository.create(settings)
    assert repository.check_settings(settings) is True
    assert repository.read_settings() == settings
    before = repository.run_path.read_text()
    with pytest.raises(RepositoryError, match=r"R=9 there, 27 here.*delete this one to start"):
        repository.check_settings(run_settings(27))
    with pytest.raises(RepositoryError, match=r"holds another run \(seed=0 there, 5 here\)"):
        repository.check_settings(run_settings(9, seed=5, iterations=2))
    assert repository.run_path.read_text() == before


def test_iterations_are_a_budget_a_resume_may_raise(repo: Path) -> None:
    repository = Repository(repo)
    repository.create(run_settings(9, iterations=2))
    assert repository.check_settings(run_settings(9, iterations=3)) is True
    repository.create(run_settings(9, iterations=3))
    assert repository.read_settings() == run_settings(9, iterations=3)
    repository.create(run_settings(9, iterations=1))  # fewer: the count begun is kept
    assert repository.read_settings() == run_settings(9, iterations=3)


def test_a_run_gets_its_id_once_and_keeps_it_and_a_legacy_run_stays_without(
    repo: Path, tmp_path: Path
) -> None:
    repository = Repository(repo)
    recorded = repository.create(run_settings(9, iterations=2))
    assert recorded.run_id is not None and recorded.run_id == repository.read_settings().run_id
    # Resumed, with more iterations (run.json rewritten) or as it was: the same run.
    assert repository.create(run_settings(9, iterations=3)).run_id == recorded.run_id
    assert repository.create(run_settings(9)).run_id == recorded.run_id
    assert repository.read_settings().run_id == recorded.run_id
    # Another folder of the same settings is another run.
    assert Repository(tmp_path / "other").create(run_settings(9)).run_id != recorded.run_id
    # A run.json of a phobbit before run ids: read, resumed and rewritten without one.
    legacy = Repository(tmp_path / "legacy")
    legacy.create(run_settings(9))
    data = json.loads(legacy.run_path.read_text())
    del data["run_id"]
    legacy.run_path.write_text(json.dumps(data))
    assert legacy.create(run_settings(9, iterations=2)).run_id is None
    assert "run_id" not in json.loads(legacy.run_path.read_text())


@pytest.mark.parametrize("run_id", ["", "../x", "a" * 65, 7, ["a"]])
def test_a_run_json_with_a_bad_run_id_is_refused_in_one_line(repo: Path, run_id) -> None:
    repository = Repository(repo)
    repository.create(run_settings(9))
    data = json.loads(repository.run_path.read_text())
    repository.run_path.write_text(json.dumps({**data, "run_id": run_id}))
    with pytest.raises(RepositoryError, match=r"run.json is not valid: run_id must be 1 to 64"):
        repository.read_settings()


def test_results_without_run_json_are_not_taken_for_a_run(repo: Path) -> None:
    repo.mkdir()
    (repo / "results.csv").write_text("something else\n")
    with pytest.raises(RepositoryError, match="no run.json"):
        Repository(repo).check_settings(run_settings())


def test_second_driver_is_refused_with_the_first_ones_pid(repo: Path) -> None:
    first = Repository(repo)
    with first.driver_lock():
        with pytest.raises(RepositoryError, match=f"pid {os.getpid()} on "):
            with Repository(repo).driver_lock():
                pass
    with Repository(repo).driver_lock():  # free again once the first is done
        pass


def test_a_changed_search_space_is_named_by_its_hyperparameters(repo: Path) -> None:
    def settings(hi: float, extra: bool, options: tuple = (1, 2)) -> RunSettings:
        hps = [Hyperparameter("lr", "uniform", (0, hi)), Hyperparameter("c", "choice", options)]
        hps += [Hyperparameter("units", "randint", (1, 9))] * extra
        return RunSettings.of(Space(hps), R=9, eta=3, seed=0)

    repository = Repository(repo)
    repository.create(settings(1.0, False))
    with pytest.raises(RepositoryError, match=r"search space differs \(added units; changed lr\)"):
        repository.check_settings(settings(2.0, True))
    # 1.0 == 1 in Python, but the model function would get another type: a changed space.
    with pytest.raises(RepositoryError, match=r"search space differs \(changed c\)"):
        repository.check_settings(settings(1.0, False, (1.0, 2)))


def forged(config_id: int, hparams_json: str) -> bytes:
    """A row whose hparams field is ``hparams_json``, with a correct CRC."""
    fields = encode_row(row(config_id, hparams={})).rsplit(",", 1)[0].split(",")
    fields[COLUMNS.index("hparams")] = '"' + hparams_json.replace('"', '""') + '"'
    body = ",".join(fields) + ","
    return f"{body}{zlib.crc32(body.encode()):08x}\n".encode()


def test_a_row_with_a_correct_crc_and_hostile_nesting_is_skipped_like_a_corrupt_one() -> None:
    hostile = forged(7, "[" * 60_000 + "]" * 60_000)
    assert decode_row(hostile) is None  # no RecursionError
    assert decode_row(forged(7, '{"a": 1, "b": "[[[["}')).hparams == {"a": 1, "b": "[[[["}
    deepest = {"x": json.loads("[" * MAX_NESTING + "]" * MAX_NESTING)}
    assert decode_row(encode_row(row(8, hparams=deepest))).hparams == deepest
    too_deep = json.dumps({"x": json.loads("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1))})
    assert decode_row(forged(8, too_deep)) is None


def test_a_repository_reader_skips_a_hostile_row_and_reads_the_rest(repo: Path) -> None:
    repository = Repository(repo)
    repository.append(row(0))
    with open(repository.results_path, "ab") as handle:
        handle.write(forged(1, '{"a": ' + "[" * 60_000 + "]" * 60_000 + "}"))
    repository.append(row(2))
    assert [r.id for r in repository.iter_results()] == [0, 2]


def test_a_row_holding_a_value_longer_than_the_csv_field_limit_is_read_back() -> None:
    long = row(3, hparams={"act": "r" * 200_000, "n" * 140_000: 1})
    assert decode_row(encode_row(long)) == long


def test_results_csv_keeps_hobbits_run_column_for_the_brackets_s(tmp_path: Path) -> None:
    repository = Repository(tmp_path)
    repository.append(row(4, s=3))
    frame = pd.read_csv(repository.results_path)
    assert list(frame.columns[:3]) == ["iteration", "run", "id"]
    assert (frame.loc[0, "run"], frame.loc[0, "id"]) == (3, 4)
    assert [r.s for r in repository.iter_results()] == [3]


def _older(line: str, missing: int) -> str:
    """``line`` as a phobbit from before the last ``missing`` columns wrote it."""
    body = line.rpartition(",")[0]
    for _ in range(missing):
        body = body[: body.rindex(",")]
    body += ","
    return f"{body}{zlib.crc32(body.encode()):08x}\n"


@pytest.mark.parametrize("header, missing", [(LEGACY_HEADER, 2), (NOTE_HEADER, 1)])
def test_a_results_file_begun_by_an_older_version_gets_todays_header_and_reads_in_pandas(
    repo: Path, header: str, missing: int
) -> None:
    import pandas as pd

    repository = Repository(repo)
    repository.create(run_settings(9))
    repository.results_path.write_text(header + _older(encode_row(row(6)), missing))
    stopped = row(7, note="stopped early by a callback after epoch 1 of 1")
    repository.append(stopped)  # under the lock, the header is brought up to date first
    text = repository.results_path.read_text()
    assert text.startswith(HEADER) and text.count(HEADER) == 1
    assert list(repository.iter_results()) == [row(6), stopped]
    frame = pd.read_csv(repository.results_path)
    assert list(frame.columns) == [*COLUMNS, "crc"] and list(frame["id"]) == [6, 7]
    assert frame["note"].isna().tolist() == [True, False]


def test_epochs_of_reads_the_given_configurations_alone(tmp_path: Path) -> None:
    from phobbit.core.records import EpochRow
    from phobbit.storage.repository import EPOCH_HEADER, encode_epoch

    rows = [
        EpochRow(0, s, i, 0, e, {"val_loss": 0.1 * e + s + i})
        for s in range(3)
        for i in (2, 21, 12)
        for e in (1, 2, 3)
    ]
    (tmp_path / "epochs.csv").write_text(EPOCH_HEADER + "".join(map(encode_epoch, rows)))
    repository = Repository(tmp_path)
    wanted = {(0, 1, 2), (0, 2, 12)}
    # (0, 1, 2) must not take (0, 1, 21)'s lines: the key is matched whole.
    expected = {k: v for k, v in repository.epochs().items() if k[:3] in wanted}
    assert repository.epochs_of(wanted) == expected and len(expected) == 6
    assert repository.epochs_of(set()) == {}


def test_a_damaged_or_hostile_time_used_line_is_skipped_and_the_rest_counted(
    tmp_path: Path,
) -> None:
    from phobbit.storage.framing import framed
    from phobbit.storage.time_used import HEADER, TimeLog

    repository = Repository(tmp_path)
    time_used = TimeLog(repository)
    time_used.append("a", 30.0)
    time_used.append("a", 60.0)  # the same invocation, later: its total so far
    time_used.append("b", 45.0)
    good = time_used.path.read_bytes()
    torn = framed(["c", "1000.0"]).encode()[:-5] + b"\n"  # cut short by a kill
    hostile = b"".join(framed(["d", v]).encode() for v in ("nan", "-5", "inf", "1e999"))
    flipped = framed(["e", "7.0"]).replace("7.0", "9.0").encode()  # CRC no longer holds
    time_used.path.write_bytes(good + torn + hostile + flipped)
    assert good.startswith(HEADER.encode())
    assert time_used.used() == 105.0
