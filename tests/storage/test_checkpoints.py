"""Checkpoint files: reading them, choosing what to resume from, keeping the best epoch."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phobbit.storage.checkpoints import (
    FOREIGN,
    BestConfigurations,
    BestEpoch,
    CheckpointFile,
    ForeignCheckpointError,
    Identity,
    Progress,
    UnreadableCheckpointError,
    best_epoch,
    best_path,
    find_scoring,
    hparams_fingerprint,
    inspect,
    plan_resume,
    progress_record,
    prune_best,
    read_progress,
)

LOSSES = [0.9, 0.5, 0.3, 0.4, 0.6]


def write(path: Path, losses: list[float], **extra: object) -> Path:
    path.write_text(json.dumps({**progress_record(losses), **extra}))
    return path


def file(path: str, losses: list[float] | None, problem: str = "") -> CheckpointFile:
    return CheckpointFile(
        path, None if losses is None else Progress(len(losses), tuple(losses)), problem
    )


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "JSONDecodeError"),
        (random.Random(0).randbytes(64) + b"\xff", "UnicodeDecodeError|JSONDecodeError"),
        (b'{"epoch": 3, "val_losses": [0.5]}', "records 1 val losses for epoch 3"),
        (b'{"epoch": 1}', "KeyError"),
    ],
    ids=["empty", "not-text", "too-few-losses", "no-losses"],
)
def test_a_bad_file_is_unreadable_and_a_missing_one_is_none(
    tmp_path: Path, content: bytes, why: str
) -> None:
    for suffix in (".json", ".keras"):
        path = tmp_path / f"c{suffix}"
        path.write_bytes(content)
        with pytest.raises(UnreadableCheckpointError, match=why if suffix == ".json" else None):
            read_progress(path)
        assert inspect(path).problem.startswith("is unreadable (")
    assert read_progress(tmp_path / "none.keras") is None
    assert inspect(tmp_path / "none.json") == CheckpointFile(str(tmp_path / "none.json"), None)


def test_resume_goes_on_from_the_checkpoint_when_it_holds_the_segment_start() -> None:
    resume = plan_resume(file("m/c.json", LOSSES[:3]), file("m/c.best.json", None), 3, 5)
    assert (resume.start, resume.source, resume.history, resume.note) == (
        3,
        "m/c.json",
        tuple(LOSSES[:3]),
        "",
    )
    assert resume.from_checkpoint
    # An attempt killed after epoch 4 goes on from 4; one that finished trains nothing.
    assert plan_resume(file("m/c.json", LOSSES[:4]), file("x", None), 3, 5).start == 4
    assert plan_resume(file("m/c.json", LOSSES), file("x", None), 3, 5).start == 5
    # A first segment starts from scratch without a word.
    first = plan_resume(file("m/c.json", None), file("x", None), 0, 1)
    assert (first.start, first.source, first.note) == (0, None, "")


@pytest.mark.parametrize(
    ("checkpoint", "note"),
    [
        (file("m/c.json", None), "checkpoint c.json is missing"),
        (
            file("m/c.json", None, "is unreadable (BadZipFile)"),
            "checkpoint c.json is unreadable (BadZipFile)",
        ),
        (file("m/c.json", LOSSES[:1]), "checkpoint c.json holds epoch 1, not 3"),
    ],
)
def test_a_bad_checkpoint_goes_on_from_the_best_epoch_file_or_from_scratch(
    checkpoint: CheckpointFile, note: str
) -> None:
    best = file("m/c.best.json", LOSSES[:2])
    resume = plan_resume(checkpoint, best, 3, 5)
    assert (resume.start, resume.source, resume.history) == (2, "m/c.best.json", tuple(LOSSES[:2]))
    assert not resume.from_checkpoint
    assert resume.note == f"{note}; retrained from epoch 2 (c.best.json)"
    alone = plan_resume(checkpoint, file("m/c.best.json", None), 3, 5)
    expected = (1, "m/c.json") if checkpoint.epoch == 1 else (0, None)
    assert (alone.start, alone.source) == expected
    assert alone.note.startswith(note) and alone.note.endswith(
        "retrained from epoch 1 (c.json)" if checkpoint.epoch == 1 else "retrained from scratch"
    )


def test_a_checkpoint_past_the_segment_holds_its_losses() -> None:
    resume = plan_resume(file("m/c.json", LOSSES), file("m/c.best.json", LOSSES[:3]), 1, 3)
    assert (resume.start, resume.history[1:3], resume.note) == (5, tuple(LOSSES[1:3]), "")


def test_best_epoch_is_the_latest_lowest_finite_loss() -> None:
    assert best_epoch([]) is None
    assert best_epoch([math.nan]) is None
    assert best_epoch([0.5, 0.3, 0.4]) == 2
    assert best_epoch([0.5, 0.3, 0.3, math.nan, math.inf]) == 3


@settings(max_examples=300, deadline=None)
@given(
    losses=st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=12),
    saves=st.lists(st.booleans(), min_size=12, max_size=12),
    start=st.integers(0, 4),
)
def test_after_every_save_the_best_epoch_is_on_disk(
    losses: list[float], saves: list[bool], start: int
) -> None:
    """A model of a trainable and its disk: whatever the save pattern, the best epoch is kept."""
    start = min(start, len(losses) - 1)
    disk = {"checkpoint": start, "best": None}  # the epoch each file holds
    history = losses[:start]
    keeper = BestEpoch(list(history), saved=start, kept=None)
    if start and best_epoch(history) != start:
        disk["best"] = keeper.kept = best_epoch(history)  # the invariant a resume starts from
    snapshot = None
    for epoch in range(start + 1, len(losses) + 1):
        save = saves[epoch - 1] or epoch == len(losses)
        if keeper.ended(losses[epoch - 1], save):
            snapshot = epoch
        if save:
            keep = keeper.keep_from()
            if keep == "checkpoint":
                disk["best"] = disk["checkpoint"]
            elif keep == "snapshot":
                assert snapshot is not None
                disk["best"] = snapshot
            if keep is not None:
                keeper.kept_best()
            disk["checkpoint"] = epoch
            keeper.saved_checkpoint()
            best = best_epoch(losses[:epoch])
            assert best in (disk["checkpoint"], disk["best"]), (losses[:epoch], disk)
            # No extra file while the best epoch is the last one saved.
            assert keep is None or best != epoch


def test_the_scoring_file_is_found_by_what_it_holds(tmp_path: Path) -> None:
    stem = tmp_path / "0-2-3"
    write(Path(f"{stem}.json"), LOSSES)
    write(Path(best_path(stem, ".json")), LOSSES[:3])
    assert find_scoring(stem, 0.3) == Path(best_path(stem, ".json"))
    assert find_scoring(stem, 0.6) == Path(f"{stem}.json")
    assert find_scoring(stem, 0.5) is None  # no file holds epoch 2
    assert find_scoring(stem, math.nan) is None
    Path(best_path(stem, ".json")).write_bytes(b"\x00garbage")
    assert find_scoring(stem, 0.3) is None  # never a file that holds another epoch


HPARAMS = {"x": 0.25, "act": "relu"}
OURS = Identity.of((0, 2, 3), HPARAMS, "run-a")


@pytest.mark.parametrize(
    ("theirs", "why"),
    [
        (Identity.of((0, 2, 4), HPARAMS, "run-a"), "it holds configuration 0-2-4"),
        (Identity.of((0, 2, 3), {**HPARAMS, "x": 0.5}, "run-a"), "it holds other hyperparameters"),
        (Identity.of((0, 2, 3), HPARAMS, "run-b"), "it belongs to another tuning run"),
        (Identity.of((0, 2, 3), HPARAMS, None), "it belongs to another tuning run"),
        (None, "it records no identity, as every file of this run does"),
    ],
)
def test_a_file_of_another_configuration_or_run_is_foreign(
    tmp_path: Path, theirs: Identity | None, why: str
) -> None:
    path = tmp_path / "0-2-3.json"
    path.write_text(json.dumps(progress_record(LOSSES[:2], identity=theirs)))
    with pytest.raises(ForeignCheckpointError, match=why):
        read_progress(path, OURS)
    assert inspect(path, OURS) == CheckpointFile(str(path), None, f"{FOREIGN} ({why})")
    # What checks nothing reads it as before: a test, a tool.
    assert read_progress(path) == Progress(2, tuple(LOSSES[:2]))
    # Foreign is unusable as unreadable is: the segment goes on from the best-epoch file.
    resume = plan_resume(inspect(path, OURS), file("m/0-2-3.best.json", LOSSES[:1]), 2, 5)
    assert (resume.start, resume.source) == (1, "m/0-2-3.best.json")
    assert resume.note == f"checkpoint 0-2-3.json {FOREIGN} ({why}); retrained from epoch 1 " + (
        "(0-2-3.best.json)"
    )


def test_a_file_of_its_own_reads_and_a_legacy_run_takes_files_without_identity(
    tmp_path: Path,
) -> None:
    path = tmp_path / "0-2-3.json"
    path.write_text(json.dumps(progress_record(LOSSES[:2], identity=OURS)))
    assert read_progress(path, OURS) == Progress(2, tuple(LOSSES[:2]))
    # A reader that does not know the hparams (``Repository.scoring_checkpoint``) checks the rest.
    assert read_progress(path, Identity((0, 2, 3), None, "run-a")) is not None
    with pytest.raises(ForeignCheckpointError):
        read_progress(path, Identity((0, 2, 4), None, "run-a"))
    # A run begun before run ids: its old files (no identity) are taken as their path says,
    # its new ones checked by configuration and hparams.
    legacy = Identity.of((0, 2, 3), HPARAMS, None)
    write(path, LOSSES[:2])
    assert read_progress(path, legacy) == Progress(2, tuple(LOSSES[:2]))
    path.write_text(json.dumps(progress_record(LOSSES[:2], identity=legacy)))
    assert read_progress(path, legacy) is not None
    with pytest.raises(ForeignCheckpointError, match="other hyperparameters"):
        read_progress(path, Identity.of((0, 2, 3), {"x": 0.9}, None))


@pytest.mark.parametrize(
    "identity",
    [[], {"config": [0, 2], "hparams": "ab", "run": None}, {"config": None, "hparams": 3}],
)
def test_a_malformed_identity_is_unreadable_not_foreign(tmp_path: Path, identity) -> None:
    path = write(tmp_path / "0-2-3.json", LOSSES[:2], identity=identity)
    with pytest.raises(UnreadableCheckpointError) as raised:
        read_progress(path, OURS)
    assert not isinstance(raised.value, ForeignCheckpointError)
    assert inspect(path).problem.startswith("is unreadable (")


def test_the_hparams_fingerprint_is_that_of_their_json() -> None:
    """What a results row reads back (JSON) fingerprints as what the sampler drew."""
    drawn = {"x": 0.1 + 0.2, "units": 8, "act": "tanh", "lr": 1e-3}
    assert hparams_fingerprint(json.loads(json.dumps(drawn))) == hparams_fingerprint(drawn)
    assert hparams_fingerprint(dict(reversed(drawn.items()))) == hparams_fingerprint(drawn)
    assert hparams_fingerprint({**drawn, "units": 8.0}) != hparams_fingerprint(drawn)


def test_the_scoring_file_is_one_of_the_configuration(tmp_path: Path) -> None:
    stem = tmp_path / "0-2-3"
    Path(f"{stem}.json").write_text(json.dumps(progress_record(LOSSES, identity=OURS)))
    assert find_scoring(stem, 0.6, identity=OURS) == Path(f"{stem}.json")
    other = Identity.of((0, 2, 3), HPARAMS, "run-b")
    assert find_scoring(stem, 0.6, identity=other) is None


def test_prune_keeps_the_best_epoch_files_of_the_configurations_kept(tmp_path: Path) -> None:
    for name, losses in {"0-2-0": LOSSES, "0-2-1": [0.8, 0.7, 0.9], "0-1-0": [0.4, 0.9]}.items():
        write(tmp_path / f"{name}.json", losses)
        write(Path(best_path(tmp_path / name, ".json")), losses[: losses.index(min(losses)) + 1])
    (tmp_path / ".0-2-0.best.json.123.tmp").write_text("a temp file of a live writer")
    removed = prune_best(tmp_path, {"0-2-0": 0.3, "0-2-1": 0.65})
    # 0-1-0 is not kept; 0-2-1's best-epoch file is stale (it scored 0.65 since).
    assert sorted(p.name for p in removed) == ["0-1-0.best.json", "0-2-1.best.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".0-2-0.best.json.123.tmp",
        "0-1-0.json",
        "0-2-0.best.json",
        "0-2-0.json",
        "0-2-1.json",
    ]


@settings(max_examples=200)
@given(
    keep=st.integers(0, 4),
    rows=st.lists(
        st.tuples(st.integers(0, 6), st.one_of(st.none(), st.floats(0, 1, allow_nan=False))),
        max_size=40,
    ),
)
def test_the_best_configurations_are_the_best_keep_of_the_latest_rows(keep, rows) -> None:
    best = BestConfigurations(keep)
    latest: dict[tuple[int, int, int], float | None] = {}
    for config_id, loss in rows:
        config = (0, 2, config_id)
        before = best.kept()
        latest[config] = loss
        dropped = best.offer(config, loss)
        ranked = sorted((v, i, -s, c) for (i, s, c), v in latest.items() if v is not None)
        top = {(i, -s, c) for _, i, s, c in ranked[:keep]}
        assert best.kept() == top
        assert set(dropped) == (before | {config}) - top
