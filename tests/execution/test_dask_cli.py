"""``phobbit train --dask``: the command line on a real Dask cluster.

The cluster is a ``dask scheduler`` and two ``dask worker`` processes started here
(not an in-process ``LocalCluster``), all on this machine, so the test's folders
are a file system they share. Runs are caught mid-way by the gate of
``tests/gates.py``, never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gates import open_gate, started

from phobbit.core.schedule import brackets
from phobbit.storage.repository import Repository

distributed = pytest.importorskip("distributed")

from phobbit.cli.commands import main  # noqa: E402 - after the skip without Dask
from phobbit.errors import InputError  # noqa: E402
from phobbit.execution.dask import PinPlugin, check_shared, cluster_gpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = ROOT / "tests" / "models" / "synthetic.py"
GUARD_S = 240  # a failure guard only: nothing here waits for time to pass


def _per_rung(R: int, eta: int) -> dict[tuple[int, int], int]:
    """How many segments each (run, rung) of ``brackets(R, eta)`` trains."""
    return {(b.s, rung.index): rung.n for b in brackets(R, eta) for rung in b.rungs}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # This worktree's phobbit, and tests/ for the gate the model file imports, in the
    # driver and in every Dask worker (which import the model file by its path).
    paths = [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A scheduler and its workers, each a process of its own."""

    address: str
    scheduler_file: Path
    processes: list[subprocess.Popen]

    def client(self):
        return distributed.Client(self.address, timeout=GUARD_S, set_as_default=False)


def _start_cluster(folder: Path, workers: int, env: dict[str, str]) -> Cluster:
    port = _free_port()
    scheduler_file = folder / "scheduler.json"
    log = open(folder / "cluster.log", "ab")  # noqa: SIM115 - closed with the processes
    common = {"env": env, "stdout": log, "stderr": subprocess.STDOUT, "start_new_session": True}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                ":0",
                "--scheduler-file",
                str(scheduler_file),
            ],
            **common,
        )
    ]
    address = f"tcp://127.0.0.1:{port}"
    for _ in range(workers):
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    address,
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                ],
                **common,
            )
        )
    cluster = Cluster(address, scheduler_file, processes)
    with cluster.client() as client:
        client.wait_for_workers(workers, timeout=GUARD_S)
    return cluster


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in reversed(processes):  # workers first, the scheduler last
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the worker's nanny and its child
        process.wait(timeout=GUARD_S)


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator:
    started_processes: list[subprocess.Popen] = []

    def make(workers: int = 2, **env: str) -> Cluster:
        cluster = _start_cluster(tmp_path, workers, _env(**env))
        started_processes.extend(cluster.processes)
        return cluster

    yield make
    _stop(started_processes)


def _train(*args: object, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "phobbit", "train", str(SYNTHETIC), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(**env),
        cwd=ROOT,
    )


def _rows(repo: Path) -> list:
    return list(Repository(repo).iter_results())


def _table(repo: Path) -> dict[tuple[int, int, int], tuple]:
    """What each segment computed: (run, id, rung) -> (epochs, val loss, hparams)."""
    return {
        (r.s, r.id, r.rung): (r.epochs, r.val_loss, json.dumps(r.hparams, sort_keys=True))
        for r in _rows(repo)
        if r.ok
    }


def test_a_dask_run_that_loses_a_worker_mid_way_loses_nothing_and_trains_nothing_twice(
    cluster_factory, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    hold_after = 4
    gated = {"PHOBBIT_TEST_GATE": str(gate), "PHOBBIT_TEST_HOLD_AFTER": str(hold_after)}
    cluster = cluster_factory(**gated)
    repo = tmp_path / "repo"
    run = _train(
        "--dask", cluster.address, "--R", 9, "--repo", repo, "--progress", "plain", **gated
    )
    try:
        with cluster.client() as client:
            # Segments hold_after and hold_after + 1 wait at the gate: one on each worker.
            deadline = time.monotonic() + GUARD_S
            while started(gate) < hold_after + 2 and time.monotonic() < deadline:
                assert run.poll() is None, run.communicate()
                time.sleep(0.05)
            assert started(gate) >= hold_after + 2
            pids = client.run(os.getpid)
            victim = sorted(pids)[0]
            os.kill(pids[victim], signal.SIGKILL)  # its nanny starts a new worker process
        open_gate(gate)
        out, err = run.communicate(timeout=GUARD_S)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    reference = tmp_path / "reference"
    uninterrupted = _train("--jobs", 2, "--R", 9, "--repo", reference, "--progress", "plain")
    assert uninterrupted.wait(timeout=GUARD_S) == 0, uninterrupted.communicate()

    rows = _rows(repo)
    ok = Counter((r.s, r.id, r.rung) for r in rows if r.ok)
    assert max(ok.values()) == 1, f"a segment trained twice: {ok.most_common(3)}"
    assert Counter((s, rung) for s, _, rung in ok) == _per_rung(9, 3), "a segment is lost"
    assert [r for r in rows if not r.ok] == [], "the lost worker's segment was retried"
    assert _table(repo) == _table(reference)
    # Each segment reached the gate once, and the one the lost worker held once more.
    assert started(gate) == sum(_per_rung(9, 3).values()) + 1
    status = subprocess.run(
        [sys.executable, "-m", "phobbit", "status", str(repo)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=GUARD_S,
    )
    assert "22/22 segments" in status.stdout, status.stdout


def _fake_nvidia_smi(folder: Path, gpus: int) -> str:
    """A folder holding an ``nvidia-smi`` that lists ``gpus`` GPUs, for a worker's PATH."""
    folder.mkdir()
    script = folder / "nvidia-smi"
    lines = "".join(f"echo 'GPU {i}: Fake GPU (UUID: GPU-{i})'\n" for i in range(gpus))
    script.write_text(f"#!/bin/sh\n{lines}")
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def test_a_scheduler_file_reaches_the_cluster_whose_workers_are_pinned_to_their_hosts_gpus(
    cluster_factory, tmp_path: Path
) -> None:
    cluster = cluster_factory(PATH=_fake_nvidia_smi(tmp_path / "bin", 2))
    repo = tmp_path / "repo"
    run = _train(
        "--dask-scheduler-file",
        cluster.scheduler_file,
        "--R",
        9,
        "--repo",
        repo,
        "--progress",
        "plain",
    )
    out, err = run.communicate(timeout=GUARD_S)
    assert run.returncode == 0, err
    assert "2 workers (GPU 0, GPU 1)" in out, out
    rows = _rows(repo)
    assert len(rows) == sum(_per_rung(9, 3).values())
    gpu_of: dict[int, set[str]] = {}
    for row in rows:
        gpu_of.setdefault(row.pid, set()).add(row.gpu)
    assert sorted(g for gpus in gpu_of.values() for g in gpus) == ["0", "1"], gpu_of
    # Running again resumes: nothing is trained twice.
    again = _train("--dask-scheduler-file", cluster.scheduler_file, "--R", 9, "--repo", repo)
    assert again.wait(timeout=GUARD_S) == 0, again.communicate()
    assert len(_rows(repo)) == len(rows)
    with cluster.client() as client:
        # The run's client is gone and its pinning plugin with it; the cluster stays.
        assert len(client.nthreads()) == 2
        plugins = client.run(lambda dask_worker: list(dask_worker.plugins))
        assert not any(PinPlugin.name in names for names in plugins.values()), plugins


def test_an_unreachable_scheduler_is_one_line_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run = _train("--dask", f"tcp://127.0.0.1:{_free_port()}", "--repo", repo)
    out, err = run.communicate(timeout=GUARD_S)  # the connect timeout ends it, not this guard
    assert run.returncode == 2
    assert err.count("\n") == 1 and "cannot reach the Dask scheduler" in err, err
    assert not repo.exists()
    missing = _train("--dask-scheduler-file", tmp_path / "none.json", "--repo", repo)
    out, err = missing.communicate(timeout=GUARD_S)
    assert missing.returncode == 2
    assert err.count("\n") == 1 and "scheduler file" in err, err
    assert not repo.exists()


@pytest.mark.parametrize(
    ("option", "why"),
    [
        (["--gpus", "0"], "--gpus sets a local pool's GPUs"),
        (["--jobs", "2"], "--jobs sets a local pool's CPU workers"),
    ],
)
def test_local_pool_options_beside_dask_are_refused_naming_why(
    option, why, tmp_path: Path, capsys
) -> None:
    repo = tmp_path / "repo"
    code = main(
        ["train", str(SYNTHETIC), "--dask", "tcp://127.0.0.1:1", *option, "--repo", str(repo)]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and why in err, err
    assert not repo.exists()


def test_dask_without_the_extra_is_refused_naming_it(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "phobbit.execution.dask")
    code = main(
        ["train", str(SYNTHETIC), "--dask", "tcp://127.0.0.1:1", "--repo", str(tmp_path / "repo")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "phobbit[dask]" in err, err
    assert not (tmp_path / "repo").exists()


class _OtherDisk:
    """A client whose one worker sees another file system: what ``mutate`` makes it see."""

    def __init__(self, mutate) -> None:
        self.mutate = mutate

    def nthreads(self) -> dict[str, int]:
        return {"tcp://elsewhere:1": 1}

    def run(self, fn, *args):
        self.mutate()
        return {"tcp://elsewhere:1": fn(*args)}


def test_workers_that_do_not_share_the_repository_or_the_model_file_are_refused(
    tmp_path: Path,
) -> None:
    model = tmp_path / "model.py"
    model.write_text("x = 1\n")

    def lose_probe() -> None:  # the worker's disk has no file written here
        for probe in tmp_path.glob(".phobbit-dask-probe-*"):
            probe.unlink()

    with pytest.raises(InputError, match="does not see the repository's folder"):
        check_shared(_OtherDisk(lose_probe), tmp_path / "repo", [model])
    with pytest.raises(InputError, match=f"does not see the file {model}"):
        check_shared(_OtherDisk(lambda: model.write_text("x = 2\n")), tmp_path / "repo", [model])
    model.write_text("x = 1\n")
    check_shared(_OtherDisk(lambda: None), tmp_path / "repo", [model])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py"], "the probe is removed"


class _Hosts:
    """A client whose workers report (host, GPU count) as given."""

    def __init__(self, found: dict[str, tuple[str, int]]) -> None:
        self.found = found

    def run(self, fn, *args):
        return dict(self.found)


def test_workers_are_pinned_to_the_gpus_their_hosts_share_and_unlike_hosts_are_refused() -> None:
    two = {"tcp://a:1": ("a", 2), "tcp://a:2": ("a", 2), "tcp://b:1": ("b", 2)}
    assert cluster_gpus(_Hosts(two)) == [0, 1]
    assert cluster_gpus(_Hosts({"tcp://a:1": ("a", 0)})) is None  # CPU workers, GPUs hidden
    with pytest.raises(InputError, match=r"different numbers of GPUs \(a: 2, b: 1\)"):
        cluster_gpus(_Hosts({"tcp://a:1": ("a", 2), "tcp://b:1": ("b", 1)}))
    crowded = {f"tcp://a:{i}": ("a", 1) for i in range(3)}
    with pytest.raises(InputError, match="host a runs 3 workers but has 2 GPU slots"):
        cluster_gpus(_Hosts(crowded), jobs_per_gpu=2)
    assert cluster_gpus(_Hosts(crowded), jobs_per_gpu=3) == [0]


def test_gpus_per_trial_counts_a_hosts_slots_by_group() -> None:
    four = {f"tcp://a:{i}": ("a", 4) for i in range(2)}  # 2 workers, 4 GPUs: 2 pairs
    assert cluster_gpus(_Hosts(four), gpus_per_trial=2) == [0, 1, 2, 3]
    three = {f"tcp://a:{i}": ("a", 4) for i in range(3)}
    with pytest.raises(InputError, match=r"3 workers but has 2 GPU slots \(4 GPUs in groups of 2"):
        cluster_gpus(_Hosts(three), gpus_per_trial=2)
