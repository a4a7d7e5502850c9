"""Several GPUs per trial: each worker is pinned to a disjoint group of GPU ids
(``CUDA_VISIBLE_DEVICES=0,1`` and ``2,3``), every group is used, a replacement worker
takes a free group and never one a live worker holds, and a list that does not split
into such groups is refused in one line before anything starts.

The ids are made up (conftest turns off the check against this machine's GPUs): what
is tested is what each worker process sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import read_records
from gates import GatedTrainable
from helpers import STEPS, DyingTrainable, tuner, x_curve

from phobbit import InputError, ParallelHyperband, Resources
from phobbit.execution.executor import gpu_groups, most_local_workers
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.reporting.progress import device_label, slot_summary
from phobbit.storage.repository import Repository

PAIRS = {"0,1", "2,3"}


def assert_never_overlapping(records: list[dict]) -> None:
    """No two segments that ran at the same time saw a GPU in common."""
    for a in records:
        for b in records:
            if a is b or a["end"] <= b["start"] or b["end"] <= a["start"]:
                continue
            shared = set(a["cuda_visible_devices"].split(",")) & set(
                b["cuda_visible_devices"].split(",")
            )
            assert not shared, f"GPUs {shared} trained two trials at once: {a} and {b}"


# -- the groups, refusals and labels (no process) -----------------------------------------


def test_gpus_split_into_disjoint_groups_of_consecutive_ids() -> None:
    assert gpu_groups([0, 1, 2, 3], 2) == ["0,1", "2,3"]
    assert gpu_groups([4, 6, 5, 7], 2) == ["4,6", "5,7"]  # in the order given
    assert gpu_groups([0, 1, 2, 3], 4) == ["0,1,2,3"]
    assert gpu_groups([0, 1, 2], 1) == ["0", "1", "2"]
    assert gpu_groups(None, 1) == []


def test_gpus_that_do_not_split_into_disjoint_pairs_are_refused_naming_why() -> None:
    with pytest.raises(InputError) as caught:
        Resources(gpus="0,1,2", gpus_per_trial=2)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        "gpus 0,1,2 do not split into disjoint groups of gpus_per_trial 2: 3 GPUs leave 1 "
        "over, and no GPU may serve two trials; give a multiple of 2 GPU ids, or "
        "gpus_per_trial 1 or 3"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpus_per_trial": 2}, "gpus_per_trial 2 needs gpus: give 2 GPU ids per worker"),
        ({"gpus": [0, 1], "gpus_per_trial": 0}, "gpus_per_trial must be an integer >= 1"),
        ({"executor": SimulatedExecutor(2), "gpus_per_trial": 2}, "give gpus_per_trial to"),
    ],
    ids=["no-gpus", "zero", "beside-an-executor"],
)
def test_bad_gpus_per_trial_is_refused_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        Resources(**kwargs)
    assert "\n" not in str(caught.value)


def test_each_group_gets_jobs_per_gpu_workers_counted_by_group() -> None:
    executor = Resources(gpus="0,1,2,3", gpus_per_trial=2, jobs_per_gpu=2).make_executor()
    assert executor.slots == ["0,1", "0,1", "2,3", "2,3"]
    # Two groups may run half the workers per core of this machine each; four GPUs alone
    # could not.
    per_group = most_local_workers() // 2
    Resources(gpus=[0, 1, 2, 3], gpus_per_trial=2, jobs_per_gpu=per_group)
    with pytest.raises(InputError, match=r"2 GPU group\(s\) of 2 x jobs_per_gpu"):
        Resources(gpus=[0, 1, 2, 3], gpus_per_trial=2, jobs_per_gpu=per_group + 1)


def test_the_header_and_the_display_name_gpu_groups() -> None:
    assert device_label("0,1") == "GPU 0,1"
    assert slot_summary(["0,1", "2,3"]) == "GPU 0,1; GPU 2,3"
    assert slot_summary(["0", "1"]) == "GPU 0, GPU 1"  # unchanged for one GPU a worker


# -- real workers -------------------------------------------------------------------------


def test_two_gpus_per_trial_pin_workers_to_disjoint_pairs_all_used(
    hparams, repo: Path, tmp_path: Path
) -> None:
    records_dir, gate = tmp_path / "rec", tmp_path / "gate"
    records_dir.mkdir()
    gate.mkdir()
    # The first two segments wait until both workers hold one: both pairs take work.
    trainable = GatedTrainable(
        curve=x_curve, record_dir=str(records_dir), gate_dir=str(gate), barrier=2
    )
    tuner = ParallelHyperband(
        None, hparams, repo, trainable=trainable, verbose=0, gpus="0,1,2,3", gpus_per_trial=2
    )
    assert tuner.executor.slots == ["0,1", "2,3"]
    results = tuner.run(R=9, eta=3)
    records = read_records(records_dir)
    assert len(records) == len(results) + sum(results["Rung"])
    by_pair: dict[str, set[int]] = defaultdict(set)
    for record in records:
        by_pair[record["cuda_visible_devices"]].add(record["pid"])
    assert set(by_pair) == PAIRS, "every worker saw one pair; both pairs were used"
    assert all(len(pids) == 1 for pids in by_pair.values()), "one worker per pair"
    assert_never_overlapping(records)
    # The rows name the pair (a comma inside a CSV field) and read back as written.
    assert set(results["GPU"]) <= PAIRS
    assert {row.gpu for row in Repository(repo).iter_results()} <= PAIRS


def test_a_killed_workers_replacement_is_pinned_to_a_free_pair_never_a_held_one(
    repo: Path, tmp_path: Path, hparams
) -> None:
    tally, records_dir = tmp_path / "tally", tmp_path / "rec"
    tally.mkdir()
    records_dir.mkdir()
    trainable = DyingTrainable(
        curve=x_curve,
        steps_per_epoch=STEPS,
        victim="0-0-1",
        how="sigkill",
        deaths=1,
        after_epochs=4,
        tally_dir=str(tally),
        record_dir=str(records_dir),
    )
    tuner = ParallelHyperband(
        None, hparams, repo, trainable=trainable, verbose=0, gpus=[0, 1, 2, 3], gpus_per_trial=2
    )
    results = tuner.run(R=9, eta=3)
    assert len(list(tally.iterdir())) == 1, "the victim's worker died once"
    assert (results["Status"] == "ok").all(), "its segment was trained again and nothing lost"
    records = read_records(records_dir)
    assert {r["cuda_visible_devices"] for r in records} <= PAIRS
    assert_never_overlapping(records)
    death = next(tally.iterdir())
    dead, died_at = int(death.name.rsplit("-", 1)[1]), death.stat().st_mtime
    # The victim's segment, trained again after the death by a worker of the new pool.
    later = [r for r in records if r["start"] >= died_at]
    assert later and all(r["pid"] != dead for r in later)
    assert {r["cuda_visible_devices"] for r in later} <= PAIRS, "replacements re-pinned"


# -- the lease of a pair, process by process --------------------------------------------

PINNER = (
    "import os, sys\n"
    "from phobbit.execution.worker import pin, worker_state\n"
    "pin(['0,1', '2,3'], sys.argv[1], 1, False)\n"
    "print(os.environ.get('CUDA_VISIBLE_DEVICES'), worker_state().pin_error, flush=True)\n"
    "sys.stdin.readline()\n"  # holds its lease until told to go (or killed)
)


def pinned(lease_dir: Path) -> tuple[subprocess.Popen, str]:
    """A process that pins itself to a free pair; returns it and the pair it holds."""
    process = subprocess.Popen(
        [sys.executable, "-c", PINNER, str(lease_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert process.stdout is not None
    line = process.stdout.readline().split()  # printed once pinned: no sleep needed
    assert line[1] == "None", line
    return process, line[0]


def test_a_replacement_worker_takes_the_pair_its_killed_predecessor_freed(
    tmp_path: Path,
) -> None:
    first, pair_a = pinned(tmp_path)
    second, pair_b = pinned(tmp_path)
    try:
        assert {pair_a, pair_b} == PAIRS, "two workers, two disjoint pairs"
        first.kill()  # the out-of-memory killer's SIGKILL: its lock goes with it
        first.wait()
        third, pair_c = pinned(tmp_path)
        try:
            assert pair_c == pair_a, "the replacement took the freed pair, not the held one"
        finally:
            third.kill()
            third.wait()
    finally:
        second.kill()
        second.wait()


# -- Dask ---------------------------------------------------------------------------------


def test_dask_workers_are_pinned_to_disjoint_pairs_too(hparams, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    from phobbit.execution.dask import DaskExecutor

    with pytest.raises(InputError, match="3 GPUs leave 1 over"):
        DaskExecutor(object(), gpus=[0, 1, 2], gpus_per_trial=2)  # before asking the cluster
    records_dir, gate = tmp_path / "rec", tmp_path / "gate"
    records_dir.mkdir()
    gate.mkdir()
    trainable = GatedTrainable(
        curve=x_curve, record_dir=str(records_dir), gate_dir=str(gate), barrier=2
    )
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        executor = DaskExecutor(client, gpus=[0, 1, 2, 3], gpus_per_trial=2)
        assert executor.slots == ["0,1", "2,3"]
        ParallelHyperband(
            None, hparams, tmp_path / "repo", trainable=trainable, executor=executor, verbose=0
        ).run(R=9, eta=3)
    records = read_records(records_dir)
    by_pair: dict[str, set[int]] = defaultdict(set)
    for record in records:
        by_pair[record["cuda_visible_devices"]].add(record["pid"])
    assert set(by_pair) == PAIRS and all(len(p) == 1 for p in by_pair.values())
    assert_never_overlapping(records)


# -- gpus_per_trial in run.json (simulated: what is decided, not where it trains) ----------


def _pairs(workers: int = 2) -> SimulatedExecutor:
    """A simulated executor whose slots are GPU pairs, as ``gpus_per_trial=2`` makes them."""
    executor = SimulatedExecutor(workers)
    executor.slots = [f"{2 * i},{2 * i + 1}" for i in range(workers)]
    return executor


def test_gpus_per_trial_is_recorded_and_a_resume_with_another_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    tuner(repo, executor=_pairs()).run(R=9, eta=3, iterations=1)
    assert json.loads((repo / "run.json").read_text())["gpus_per_trial"] == 2

    def files() -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}

    before = files()
    with pytest.raises(InputError) as caught:
        tuner(repo, executor=SimulatedExecutor(2)).run(R=9, eta=3, iterations=2)
    message = str(caught.value)
    assert "\n" not in message
    assert "gpus_per_trial 2 (run.json)" in message, "what was recorded"
    assert "asks for 1" in message, "what was asked"
    assert "resume with gpus_per_trial 2" in message, "how to proceed"
    assert files() == before, "nothing written"
    # Asked again with what was recorded, it resumes.
    table = tuner(repo, executor=_pairs()).run(R=9, eta=3, iterations=2)
    assert table["Iteration"].max() == 1


def test_a_run_json_without_gpus_per_trial_reads_as_one(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tuner(repo, executor=SimulatedExecutor(2)).run(R=9, eta=3)
    recorded = json.loads((repo / "run.json").read_text())
    assert "gpus_per_trial" not in recorded, "1 is not written: older files read the same"
    assert Repository(repo).read_settings().gpus_per_trial == 1
    with pytest.raises(InputError, match="was tuned with gpus_per_trial 1 .* asks for 2"):
        tuner(repo, executor=_pairs()).run(R=9, eta=3)
