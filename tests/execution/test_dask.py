"""The Dask executor: the same scheduler on a dask.distributed cluster, workers pinned."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
from conftest import read_records
from gates import GatedTrainable
from synthetic import x_curve

from phobbit import InputError, ParallelHyperband
from phobbit.testing import SyntheticTrainable

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_dask_workers_are_pinned_and_compute_what_a_local_run_does(
    client, hparams, tmp_path: Path
) -> None:
    from phobbit.execution.dask import DaskExecutor

    records, gate = tmp_path / "records", tmp_path / "gate"
    records.mkdir()
    gate.mkdir()
    # The first two segments wait for each other: both workers take one, however loaded.
    trainable = GatedTrainable(
        curve=x_curve, record_dir=str(records), gate_dir=str(gate), barrier=2
    )
    executor = DaskExecutor(client, gpus=[0, 1])
    on_dask = ParallelHyperband(
        None, hparams, tmp_path / "dask", trainable=trainable, executor=executor, verbose=0
    ).run(R=9, eta=3)
    local = ParallelHyperband(
        None,
        hparams,
        tmp_path / "local",
        trainable=SyntheticTrainable(curve=x_curve),
        n_jobs=2,
        verbose=0,
    ).run(R=9, eta=3)
    columns = ["Hparams", "ID", "Run", "Val Loss", "Epochs", "Status"]
    pd.testing.assert_frame_equal(on_dask[columns].sort_index(), local[columns].sort_index())
    pids_by_gpu = defaultdict(set)
    for record in read_records(records):
        pids_by_gpu[record["cuda_visible_devices"]].add(record["pid"])
    assert set(pids_by_gpu) == {"0", "1"}
    assert all(len(pids) == 1 for pids in pids_by_gpu.values())


def test_dask_workers_with_several_threads_are_refused(tmp_path: Path) -> None:
    from phobbit.execution.dask import DaskExecutor

    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        with pytest.raises(InputError, match="one thread each"):
            DaskExecutor(client)


def test_a_hung_segment_on_dask_is_cancelled_its_worker_restarted_and_it_fails(
    client, tmp_path: Path
) -> None:
    from helpers import HangingTrainable, space

    from phobbit.execution.dask import DaskExecutor

    tally = tmp_path / "tally"
    tally.mkdir()
    hanging = HangingTrainable(curve=x_curve, victim="0-1-2", tally_dir=str(tally))
    executor = DaskExecutor(client)
    assert executor.supports_timeout  # its workers run under nannies
    results = ParallelHyperband(
        None,
        space(),
        tmp_path / "repo",
        trainable=hanging,
        executor=executor,
        max_retries=0,
        segment_timeout=30.0,  # a restarted worker comes back well within it, even under load
        verbose=0,
    ).run(R=9, eta=3)
    assert len(list(tally.iterdir())) == 1
    assert results.loc["1-2", "Error"].startswith("timed out after 30s once (segment_timeout)")
    assert results.drop(index="1-2")["Status"].eq("ok").all()
    assert len(results) == 17


def test_segment_timeout_is_refused_on_dask_workers_without_a_nanny(tmp_path: Path) -> None:
    from helpers import space

    from phobbit.execution.dask import DaskExecutor

    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        executor = DaskExecutor(client)
        with pytest.raises(InputError, match="segment_timeout cannot be used with DaskExecutor"):
            ParallelHyperband(
                None,
                space(),
                tmp_path / "repo",
                trainable=SyntheticTrainable(),
                executor=executor,
                segment_timeout=60,
            )


def test_a_dask_run_leaves_no_lease_folder_behind(client, hparams, tmp_path: Path) -> None:
    import tempfile

    from phobbit.execution.dask import DaskExecutor, lease_folder

    executor = DaskExecutor(client)
    with executor:
        ParallelHyperband(
            None,
            hparams,
            tmp_path / "dask",
            trainable=SyntheticTrainable(curve=x_curve),
            executor=executor,
            verbose=0,
        ).run(R=3, eta=3)
        folder = Path(lease_folder(executor._plugin.token))
        assert folder.is_dir(), "the workers lease their slots there while the run goes on"
        assert folder.parent == Path(tempfile.gettempdir())
    assert not folder.exists()


def test_a_task_preferring_an_idle_worker_runs_there_and_never_waits_behind_a_busy_one(
    client, tmp_path: Path
) -> None:
    from phobbit.execution.dask import DaskExecutor, whoami

    def meet(folder: str, name: str) -> tuple[str, int]:
        """Waits (2 minutes at most) until two tasks have arrived; returns where it ran."""
        Path(folder, name).touch()
        for _ in range(1200):
            if len(list(Path(folder).iterdir())) >= 2:
                break
            time.sleep(0.1)
        return whoami()

    executor = DaskExecutor(client)
    (_, at_a), (_, at_b) = sorted(client.run(whoami).items())
    # Two tasks that wait for each other: each worker runs one, and is then known idle.
    first = [executor.submit(meet, str(tmp_path), name) for name in "12"]
    assert sorted(f.result(timeout=300) for f in first) == sorted([at_a, at_b])
    # Dask alone hands idle workers tasks in turn: three in a row on one is the preference.
    for preferred in [at_b, at_b, at_b, at_a, at_a, at_a]:
        assert executor.submit(whoami, prefer=preferred).result(timeout=120) == preferred
    release = distributed.Event(f"release-{id(executor)}", client=client)
    blocker = executor.submit(release.wait, 300, prefer=at_b)
    try:
        # b is busy: the task goes to a, not into b's queue behind the blocker.
        assert executor.submit(whoami, prefer=at_b).result(timeout=120) == at_a
        assert executor.submit(whoami, prefer=("gone", 1)).result(timeout=120) == at_a
    finally:
        release.set()
    assert blocker.result(timeout=120) is True
    with pytest.raises(ValueError, match="invalid literal"):
        executor.submit(int, "x").result(timeout=120)
    executor.shutdown()


def test_a_task_submitted_while_every_worker_is_busy_goes_to_the_first_that_frees() -> None:
    import dask

    from phobbit.execution.dask import DaskExecutor

    # Without work stealing, a task Dask placed behind a blocked one would stay there.
    with (
        dask.config.set({"distributed.scheduler.work-stealing": False}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        _the_first_to_free_takes_the_held_tasks(client, DaskExecutor(client))


def _the_first_to_free_takes_the_held_tasks(client, executor) -> None:
    from concurrent.futures import CancelledError

    from phobbit.execution.dask import whoami

    assert executor.fifo_queue
    release = [distributed.Event(f"release-{i}-{id(executor)}", client=client) for i in (0, 1)]
    try:
        busy = [executor.submit(event.wait, 300) for event in release]  # one on each worker
        waiting = [executor.submit(whoami) for _ in range(2)]
        dropped = executor.submit(whoami)
        executor.kill([dropped])
        release[1].set()
        assert busy[1].result(timeout=120) is True
        # Both ran on the worker that freed, one after the other, not one behind the
        # blocked task (where Dask alone would have placed it).
        assert waiting[0].result(timeout=120) == waiting[1].result(timeout=120)
        assert not busy[0].done()
        with pytest.raises(CancelledError):
            dropped.result(timeout=120)
    finally:
        for event in release:
            event.set()
    assert busy[0].result(timeout=120) is True
    executor.shutdown()
