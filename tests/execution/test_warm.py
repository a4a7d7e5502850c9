"""Models kept warm (``phobbit.execution.warm``): a cache that only ever stands for the checkpoint.

Without TensorFlow: the cache's rules, a synthetic trainable whose state (its
iteration count) goes on from memory, real worker processes whose tables equal
a serial run's, and the scheduler's affinity on a virtual clock. The Keras
proofs (bit-identical weights) are in ``test_keras.py``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import STEPS, report_serially, space, tuner
from synthetic import x_curve

from phobbit.core.plan import Plan
from phobbit.core.records import RunSettings, Segment, Tuning
from phobbit.core.space import Space
from phobbit.errors import InputError
from phobbit.execution import warm
from phobbit.execution.scheduler import Scheduler
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.execution.worker import train_segment
from phobbit.reporting.plain import PlainReporter
from phobbit.storage.repository import Repository, decode_row, encode_row
from phobbit.storage.results import results_frame
from phobbit.testing import WARM_STATE_BYTES, SyntheticTrainable

COLUMNS = ["Hparams", "ID", "Run", "Val Loss", "Epochs", "Rung", "Status"]
H = {"x": 0.5}


@pytest.fixture(autouse=True)
def fresh_cache() -> Any:
    """Each test starts with an empty cache of this process, and leaves none behind."""
    with warm.installed(warm.WarmCache()) as cache:
        yield cache


def saved(path: Path, text: str = "x") -> Path:
    path.write_text(text)
    return path


# -- the cache ----------------------------------------------------------------------------------


def test_a_hit_needs_the_same_configuration_epoch_and_file(tmp_path: Path) -> None:
    cache, stem = warm.WarmCache(100), str(tmp_path / "c")
    path = saved(tmp_path / "c.json")
    for other in ({"x": 0.6}, None):
        assert cache.put(stem, H, "model", 10, 2, path)
        if other is None:
            assert cache.take(stem, H, 3, path) is None  # the file holds another epoch
        else:
            assert cache.take(stem, other, 2, path) is None
        assert cache.held() == ()  # a stale entry is dropped
    assert cache.put(stem, H, "model", 10, 2, path)
    assert cache.take(stem, H, 2, path) == "model"
    assert cache.held() == ()  # taken: the caller trains it and puts it back


@pytest.mark.parametrize("how", ["replaced", "deleted", "rewritten in place"])
def test_a_checkpoint_changed_behind_the_cache_misses(tmp_path: Path, how: str) -> None:
    cache, stem = warm.WarmCache(100), str(tmp_path / "c")
    path = saved(tmp_path / "c.json", "first")
    cache.put(stem, H, "model", 10, 2, path)
    if how == "replaced":
        os.replace(saved(tmp_path / "other", "first"), path)
    elif how == "deleted":
        path.unlink()
    else:
        path.write_text("second, longer")
    assert cache.take(stem, H, 2, path) is None
    assert cache.misses == 1


def test_the_least_recently_used_go_first_and_nothing_larger_than_the_limit_is_kept(
    tmp_path: Path,
) -> None:
    cache = warm.WarmCache(25)
    paths = [saved(tmp_path / f"{i}.json") for i in range(4)]
    for i in range(3):
        assert cache.put(str(tmp_path / str(i)), H, i, 10, 1, paths[i])
    assert [Path(s).name for s in cache.held()] == ["1", "2"]  # 0 was evicted
    assert not cache.put(str(tmp_path / "3"), H, 3, 26, 1, paths[3])
    assert [Path(s).name for s in cache.held()] == ["1", "2"]
    cache.resize(10)
    assert [Path(s).name for s in cache.held()] == ["2"]
    cache.resize(0)
    assert cache.held() == () and cache.size == 0


def test_no_more_entries_than_max_entries_are_kept_however_small(tmp_path: Path) -> None:
    cache = warm.WarmCache(10**9, max_entries=3)
    for i in range(5):
        assert cache.put(str(tmp_path / str(i)), H, i, 1, 1, saved(tmp_path / f"{i}.json"))
    assert [Path(s).name for s in cache.held()] == ["2", "3", "4"] and cache.size == 3
    assert cache.take(str(tmp_path / "3"), H, 1, tmp_path / "3.json") == 3
    assert cache.size == 2


def test_a_new_run_forgets_the_models_of_the_run_before(tmp_path: Path) -> None:
    """A worker outliving its driver (Dask) must not hand a resumed run a model built by
    the code of the run before: a new fencing token clears the cache."""
    cache = warm.WarmCache()
    cache.serve("run-1")
    assert cache.put(str(tmp_path / "a"), H, "model", 1, 1, saved(tmp_path / "a.json"))
    cache.serve("run-1")
    assert cache.held() == (str(tmp_path / "a"),)
    cache.serve("run-2")
    assert cache.held() == () and cache.size == 0
    assert cache.take(str(tmp_path / "a"), H, 1, tmp_path / "a.json") is None


@pytest.mark.parametrize(
    "text, expected",
    [("0", 0), ("1GB", 10**9), ("512MB", 512 * 10**6), ("1GiB", 2**30), ("64 kib", 65536)],
)
def test_sizes_read_as_people_write_them(text: str, expected: int) -> None:
    assert warm.parse_bytes(text, "warm_cache") == expected


@pytest.mark.parametrize("bad", ["-1", "1XB", "", "GB", "nan", "inf", -5, 1.5, True, None])
def test_a_bad_size_is_refused_naming_it(bad: Any) -> None:
    with pytest.raises(InputError, match=r"warm_cache must be a number of bytes >= 0"):
        warm.parse_bytes(bad, "warm_cache")


def test_a_bad_warm_cache_stops_the_tuner_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="warm_cache must be a number of bytes"):
        tuner(tmp_path / "repo", warm_cache="lots")
    assert not (tmp_path / "repo").exists()


# -- a synthetic trainable ----------------------------------------------------------------------


def test_a_continued_segment_goes_on_from_memory_as_from_its_checkpoint(tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    on = SyntheticTrainable(curve=x_curve, warm_bytes=10**6, record_dir=str(records))
    off = SyntheticTrainable(curve=x_curve, record_dir=str(records))
    warm_losses = on.train(H, str(tmp_path / "on"), 0, 2) + on.train(H, str(tmp_path / "on"), 2, 5)
    cold_losses = off.train(H, str(tmp_path / "off"), 0, 2)
    cold_losses += off.train(H, str(tmp_path / "off"), 2, 5)
    assert warm_losses == cold_losses == off.train(H, str(tmp_path / "whole"), 0, 5)
    found = {(Path(r["checkpoint"]).name, r["epochs"]): r for r in read(records)}
    assert found["on", 5]["warm"] and not found["off", 5]["warm"]
    assert not found["on", 2]["warm"]  # nothing to go on from yet
    assert found["on", 5]["iterations"] == found["off", 5]["iterations"] == 5 * 10
    assert json.loads((tmp_path / "on.json").read_text()) == json.loads(
        (tmp_path / "off.json").read_text()
    )


@pytest.mark.parametrize("how", ["replaced", "corrupted"])
def test_a_checkpoint_replaced_or_corrupted_behind_the_cache_is_read_from_disk(
    tmp_path: Path, how: str
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    trainable = SyntheticTrainable(curve=x_curve, warm_bytes=10**6, record_dir=str(records))
    stem = str(tmp_path / "c")
    trainable.train(H, stem, 0, 2)
    path = Path(stem + ".json")
    if how == "replaced":  # another worker's save of the same epoch, with another state
        state = json.loads(path.read_text())
        saved(tmp_path / "other.json", json.dumps({**state, "iterations": 1000}))
        os.replace(tmp_path / "other.json", path)
    else:
        path.write_bytes(b"\0" * 7)
    trainable.train(H, stem, 2, 4)
    last = max(read(records), key=lambda r: r["end"])
    assert not last["warm"]
    if how == "replaced":
        assert last["iterations"] == 1000 + 2 * 10  # the file's state, not the cache's
    else:
        assert last["resumed_epoch"] == 0 and "unreadable" in last["note"]
        assert last["iterations"] == 4 * 10


def test_a_configuration_stopped_early_is_not_kept_warm(tmp_path: Path) -> None:
    trainable = SyntheticTrainable(curve=x_curve, warm_bytes=10**6, stops=stops_at_two)
    losses = trainable.train(H, str(tmp_path / "c"), 0, 4)
    assert losses.stopped_early and warm.process_cache().held() == ()


def stops_at_two(hparams: dict[str, Any], epoch: int) -> bool:
    return epoch == 2


def test_warm_flags_are_not_written_and_a_row_read_back_equals_the_one_returned(
    tmp_path: Path,
) -> None:
    segment = Segment(0, 2, 0, 1, H, 1, 3, str(tmp_path / "0-2-0"))
    trainable = SyntheticTrainable(curve=x_curve, warm_bytes=10**6)
    trainable.train(H, segment.checkpoint, 0, 1)
    result = train_segment(trainable, segment, str(tmp_path))
    assert result.started_warm and result.warm_held == (os.path.abspath(segment.checkpoint),)
    assert result.warm_worker == (warm.process_cache().owner)
    back = decode_row(encode_row(result))
    assert back == result and not back.started_warm and back.warm_held == ()


# -- worker processes and the scheduler ---------------------------------------------------------


def read(records: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in records.glob("*.json")]


def test_two_workers_with_models_warm_give_the_serial_table_and_hits_are_recorded(
    tmp_path: Path,
) -> None:
    tables, records = {}, {}
    for name, size in (("on", "1MB"), ("off", 0), ("serial", "1MB")):
        records[name] = tmp_path / f"records-{name}"
        records[name].mkdir()
        jobs = 1 if name == "serial" else 2
        run = tuner(tmp_path / name, records[name], real=True, n_jobs=jobs, warm_cache=size)
        tables[name] = run.run(R=9, eta=3)[COLUMNS].sort_index()
        continued = [r for r in read(records[name]) if r["initial_epoch"] > 0]
        assert run.continued == len(continued) > 0
        assert run.warm_starts == sum(r["warm"] for r in continued)
        # Every segment's state is what epochs from scratch give: no step lost or repeated.
        assert all(r["iterations"] == r["epochs"] * STEPS for r in read(records[name]))
    pd.testing.assert_frame_equal(tables["on"], tables["off"])
    pd.testing.assert_frame_equal(tables["on"], tables["serial"])
    hits = {name: sum(r["warm"] for r in read(records[name])) for name in records}
    assert hits["off"] == 0
    assert hits["on"] > 0
    # One worker holds every model it trained: every continued segment starts warm.
    assert hits["serial"] == len([r for r in read(records["serial"]) if r["initial_epoch"] > 0])


class Affinity:
    """A run of R=27 on three virtual workers whose models stay warm on them."""

    def __init__(self, folder: Path, prefer_warm: bool, reporter: Any = None) -> None:
        self.repository = Repository(folder)
        self.repository.create(RunSettings.of(Space(space()), 27, 3, 0, 1))
        plan = Plan(
            Tuning.of(Space(space()), 27, 3, checkpoint_of=self.repository.checkpoint_stem), 3
        )
        self.executor = SimulatedExecutor(3)
        trainable = SyntheticTrainable(
            curve=x_curve, epoch_seconds=1.0, jitter=0.5, warm_bytes=100 * WARM_STATE_BYTES
        )
        self.scheduler = Scheduler(
            trainable,
            plan,
            self.repository,
            self.executor,
            reporter=reporter,
            prefer_warm=prefer_warm,
        )
        self.scheduler.drive()

    def table(self) -> pd.DataFrame:
        return results_frame(self.repository.iter_results())[COLUMNS].sort_index()


def test_promoted_segments_go_to_the_worker_that_holds_them(tmp_path: Path) -> None:
    preferred = Affinity(tmp_path / "preferred", prefer_warm=True)
    blind = Affinity(tmp_path / "blind", prefer_warm=False)
    pd.testing.assert_frame_equal(preferred.table(), blind.table())
    assert preferred.scheduler.continued == blind.scheduler.continued > 0
    assert preferred.scheduler.warm_starts > blind.scheduler.warm_starts


def test_the_summary_line_says_how_many_continued_segments_started_warm(tmp_path: Path) -> None:
    stream = io.StringIO()
    run = Affinity(tmp_path, prefer_warm=True, reporter=PlainReporter(stream))
    warm_starts, continued = run.scheduler.warm_starts, run.scheduler.continued
    assert 0 < warm_starts < continued
    last = stream.getvalue().strip().splitlines()[-1]
    assert last.endswith(f", {warm_starts} of {continued} continued segments started warm")


def test_a_bad_warm_cache_on_the_command_line_is_one_line_and_exit_2(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    done = subprocess.run(
        [sys.executable, "-m", "phobbit", "train", "model.py", "--repo", str(repo)]
        + ["--warm-cache", "lots"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 2
    assert "--warm-cache: must be a number of bytes >= 0" in done.stderr
    assert "Traceback" not in done.stderr and not repo.exists()


def test_the_terminal_reporters_count_warm_starts_in_their_last_line() -> None:
    from rich.console import Console

    from phobbit.cli.terminal import LineReporter, LiveReporter

    live, lines = io.StringIO(), io.StringIO()
    reporters = [
        LiveReporter(Console(file=live, force_terminal=True, width=200)),
        LineReporter(lines, verbose=1),
    ]
    continued = warm_starts = 0

    def half_warm(segment: Segment) -> Any:
        nonlocal continued, warm_starts
        started_warm = segment.start_epoch > 0 and segment.id % 2 == 0
        continued += segment.start_epoch > 0
        warm_starts += started_warm
        return segment.result(
            val_loss=1.0 / (1 + segment.id),
            last_val_loss=1.0 / (1 + segment.id),
            status="ok",
            error="",
            gpu="-1",
            pid=1,
            started_warm=started_warm,
        )

    report_serially(Plan(Tuning.of(Space(space()), R=9, eta=3)), reporters, half_warm)
    assert 0 < warm_starts < continued
    words = f"{warm_starts} of {continued} continued segments started warm"
    for out in (live.getvalue(), lines.getvalue()):
        assert words in out.strip().splitlines()[-1]
