"""GPU pinning: one worker per GPU id, set before TensorFlow, never two trials on one GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import psutil
import pytest
from conftest import read_records
from gates import GatedTrainable
from synthetic import x_curve

from phobbit import InputError, ParallelHyperband
from phobbit.execution.executor import LocalExecutor, parse_gpus
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.execution.worker import HIDDEN


def run_recorded(hparams, repo: Path, records: Path, **kwargs):
    """Runs R=9 with every record kept; its first segments wait until every slot holds one.

    The barrier is what proves "every worker took work": without it, a loaded
    machine may start one worker late and the others may take every segment.
    """
    records.mkdir()
    gate = records.parent / "gate"
    gate.mkdir()
    executor = LocalExecutor(parse_gpus(kwargs.pop("gpus", None)), **kwargs)
    trainable = GatedTrainable(
        curve=x_curve, record_dir=str(records), gate_dir=str(gate), barrier=executor.capacity
    )
    tuner = ParallelHyperband(
        None, hparams, repo, trainable=trainable, verbose=0, executor=executor
    )
    return tuner.run(R=9, eta=3), read_records(records)


def test_four_gpus_four_pinned_workers_and_no_gpu_runs_two_trials_at_once(
    hparams, repo: Path, tmp_path: Path
) -> None:
    results, records = run_recorded(hparams, repo, tmp_path / "rec", gpus=[0, 1, 2, 3])
    assert len(records) == len(results) + sum(results["Rung"])  # one record per segment
    by_gpu: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_gpu[record["cuda_visible_devices"]].append(record)
    assert set(by_gpu) == {"0", "1", "2", "3"}, "every trial saw exactly one id; all were used"
    pids_by_gpu = {gpu: {r["pid"] for r in rs} for gpu, rs in by_gpu.items()}
    assert all(len(p) == 1 for p in pids_by_gpu.values()), "one worker process per GPU"
    for gpu, rows in by_gpu.items():
        rows.sort(key=lambda r: r["start"])
        for before, after in zip(rows, rows[1:]):
            assert before["end"] <= after["start"], f"two trials overlapped on GPU {gpu}"
    assert not any(r["tensorflow_imported"] for r in records)
    assert set(results["GPU"]) <= {"0", "1", "2", "3"}


def test_jobs_per_gpu_shares_a_gpu_between_that_many_trials(hparams, repo, tmp_path) -> None:
    _, records = run_recorded(hparams, repo, tmp_path / "rec", gpus=[3, 5], jobs_per_gpu=2)
    events = defaultdict(list)
    for r in records:
        events[r["cuda_visible_devices"]] += [(r["start"], 1), (r["end"], -1)]
    assert set(events) == {"3", "5"}
    for changes in events.values():
        running = peak = 0
        for _, change in sorted(changes, key=lambda e: (e[0], e[1])):
            running += change
            peak = max(peak, running)
        assert peak <= 2


def test_cpu_workers_hide_gpus_and_split_threads(hparams, repo, tmp_path) -> None:
    _, records = run_recorded(hparams, repo, tmp_path / "rec", n_jobs=2)
    assert {r["cuda_visible_devices"] for r in records} == {HIDDEN}
    assert len({r["pid"] for r in records}) == 2
    executor = LocalExecutor(n_jobs=2)
    assert executor.threads == max(1, (os.cpu_count() or 1) // 2)


def test_workers_are_reused_across_trials(hparams, repo, tmp_path) -> None:
    results, records = run_recorded(hparams, repo, tmp_path / "rec", gpus=[0, 1])
    assert len(records) > 10 and len({r["pid"] for r in records}) == 2


def test_driver_never_imports_tensorflow(tmp_path: Path) -> None:
    script = f"""
import sys
from phobbit import Hyperparameter, ParallelHyperband
from phobbit.testing import SyntheticTrainable
if __name__ == "__main__":
    hp = [Hyperparameter("x", "uniform", (0, 1))]
    ParallelHyperband(None, hp, {str(tmp_path / "repo")!r}, trainable=SyntheticTrainable(),
                      gpus=[0, 1], verbose=0).run(R=3, eta=3)
    assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')], "imported"
    print("clean")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "clean" in done.stdout


@pytest.mark.parametrize(
    ("gpus", "message"),
    [
        ("0,,1", "malformed"),
        ("a", "malformed"),
        ([0, 0], "listed twice"),
        ("1,1", "listed twice"),
        ([-1], "negative"),
        ([0.5], "integer GPU ids"),
    ],
)
def test_bad_gpu_lists_are_refused(gpus, message) -> None:
    with pytest.raises(InputError, match=message):
        parse_gpus(gpus)


def test_gpu_lists_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two cores, so that 2 GPUs x 3 jobs stays within the 4-workers-per-core bound even on a
    # one-core CI runner (the bound itself is tested below).
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert parse_gpus("0, 2,3") == [0, 2, 3]
    assert parse_gpus(None) is None and parse_gpus("") is None
    assert LocalExecutor([0, 1], jobs_per_gpu=3).slots == ["0"] * 3 + ["1"] * 3


def test_gpu_ids_beyond_what_the_machine_has_are_refused(monkeypatch) -> None:
    monkeypatch.setattr("phobbit.execution.executor.visible_gpu_count", lambda: 2)
    assert parse_gpus("0,1") == [0, 1]
    with pytest.raises(InputError, match="GPU id 2 does not exist: this machine has 2 GPU"):
        parse_gpus("0,2")


@pytest.mark.parametrize(("cores", "most"), [(1, 4), (2, 8), (128, 512)])
def test_more_than_four_workers_per_core_are_refused_naming_the_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, most: int
) -> None:
    from phobbit.execution.resources import Resources

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert Resources(n_jobs=most).n_jobs == most and Resources().n_jobs is None
    with pytest.raises(InputError) as refused:
        Resources(n_jobs=most + 1)
    message = str(refused.value)
    assert f"n_jobs {most + 1:,} makes {most + 1:,} workers" in message
    assert f"it has {cores} core(s) (os.cpu_count())" in message
    assert f"give n_jobs {most:,} or fewer" in message
    # With GPUs the workers are GPUs x jobs_per_gpu.
    Resources(gpus=[0], jobs_per_gpu=most)
    with pytest.raises(InputError, match=rf"2 GPU\(s\) x jobs_per_gpu {most:,} makes"):
        Resources(gpus=[0, 1], jobs_per_gpu=most)
    with pytest.raises(InputError, match="n_jobs 100,000 makes 100,000 workers"):
        Resources(n_jobs=100_000)


def test_a_pool_made_directly_is_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(InputError, match="more than this machine can run"):
        LocalExecutor(n_jobs=9)
    assert len(LocalExecutor(n_jobs=8).slots) == 8  # nothing starts before a submit


def test_library_logger_is_silent_by_default_and_logs_pool_restarts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    logger = logging.getLogger("phobbit")
    assert [type(h) for h in logger.handlers] == [logging.NullHandler]
    caplog.set_level(logging.INFO, logger="phobbit")
    with LocalExecutor(None, n_jobs=1) as executor:
        assert executor.submit(os.getpid).result(timeout=120) != os.getpid()
        executor.restart()
    messages = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert (
        "phobbit.execution.executor",
        "INFO",
        "starting a pool of 1 workers on ['-1']",
    ) in messages
    assert any(m[1] == "WARNING" and "worker pool broken or killed" in m[2] for m in messages)


def test_workers_are_born_ignoring_ctrl_c_and_the_driver_keeps_its_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C reaches the whole process group: a worker still importing must not die of
    it (a KeyboardInterrupt traceback in the terminal). loky starts workers in this thread."""
    import signal

    from joblib.externals.loky.backend import fork_exec

    seen = []
    spawn = fork_exec.fork_exec

    def spy(*args, **kwargs):
        seen.append(signal.getsignal(signal.SIGINT))
        return spawn(*args, **kwargs)

    monkeypatch.setattr(fork_exec, "fork_exec", spy)
    before = signal.getsignal(signal.SIGINT)
    executor = LocalExecutor(n_jobs=2)
    try:
        assert executor.submit(os.getpid).result(timeout=120) > 0
    finally:
        executor.shutdown()
    assert len(seen) >= 2, "loky started the workers elsewhere: the test proves nothing"
    assert all(handler is signal.SIG_IGN for handler in seen)
    assert signal.getsignal(signal.SIGINT) is before


_HELD: list[bytearray] = []


def _memory_leak_limit() -> int:
    from joblib.externals.loky import process_executor

    return process_executor._MAX_MEMORY_LEAK_SIZE


def _grow() -> int:
    """Holds 32 MB for good and lets loky's guard look at once (it waits 1 s between looks)."""
    from joblib.externals.loky import process_executor

    process_executor._MEMORY_LEAK_CHECK_DELAY = -1.0
    _HELD.append(bytearray(32 * 2**20))
    return os.getpid()


def test_workers_run_without_lokys_memory_leak_guard_unless_a_limit_is_set() -> None:
    with LocalExecutor(n_jobs=1) as executor:
        assert executor.submit(_memory_leak_limit).result() >= sys.maxsize
    with LocalExecutor(n_jobs=1, worker_memory_limit=2**30) as executor:
        assert executor.submit(_memory_leak_limit).result() == 2**30


@pytest.mark.filterwarnings("ignore:A worker stopped:UserWarning")
def test_a_worker_replaced_for_its_memory_is_counted_and_logged(caplog) -> None:
    with LocalExecutor(n_jobs=1, worker_memory_limit=2**20) as executor:
        executor.submit(os.getpid).result()  # loky measures the worker after its first task
        grown = executor.submit(_grow).result()
        with caplog.at_level("WARNING", logger="phobbit"):
            future = executor.submit(os.getpid)
            executor.wait([future])
        assert future.result() != grown
        assert executor.workers_replaced == 1
    assert "replaced 1 worker process" in caplog.text


def test_a_worker_that_grows_is_kept_without_a_limit() -> None:
    with LocalExecutor(n_jobs=1) as executor:
        executor.submit(os.getpid).result()
        grown = executor.submit(_grow).result()
        assert executor.submit(os.getpid).result() == grown
        assert executor.workers_replaced == 0


@pytest.mark.parametrize("limit", [0, -5, 1.5, True, "1G"])
def test_a_bad_worker_memory_limit_is_refused(limit) -> None:
    with pytest.raises(InputError, match="worker_memory_limit must be"):
        LocalExecutor(n_jobs=1, worker_memory_limit=limit)


# -- starting the pool ahead of the input check (issue 21 item 4) --------------------------


def _in_sys_modules(name: str) -> bool:
    return name in sys.modules


def test_start_spawns_the_workers_and_each_imports_preload_before_its_first_task() -> None:
    # colorsys: a standard module nothing of a worker imports on its own.
    with LocalExecutor(n_jobs=2) as executor:
        executor.start(("colorsys", "no_such_module_phobbit"))  # a failed import: no harm
        assert executor._pool is not None, "started without a task of the caller's"
        futures = [executor.submit(_in_sys_modules, "colorsys") for _ in range(4)]
        assert all(f.result() for f in futures)


def _collector_load() -> tuple[int, int, bool]:
    import gc

    tracked = {id(o) for o in gc.get_objects()}
    return gc.get_freeze_count(), len(tracked), id(sys.modules["colorsys"].__dict__) in tracked


def test_what_a_worker_imported_at_start_up_is_no_work_for_its_collector() -> None:
    # loky forces a full collection after each worker's first task: with TensorFlow's
    # heap still in the collector's generations, that took 0.25-0.6 s of the first check
    # or segment.
    with LocalExecutor(n_jobs=1) as executor:
        executor.start(("colorsys",))
        frozen, tracked, preload_tracked = executor.submit(_collector_load).result()
    assert frozen > 0 and not preload_tracked, (frozen, tracked)


def test_a_run_starts_its_workers_before_it_checks_the_repository_and_bad_input_kills_them(
    hparams, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phobbit.storage.repository import Repository
    from phobbit.testing import SyntheticTrainable

    ParallelHyperband(
        None,
        hparams,
        repo,
        trainable=SyntheticTrainable(curve=x_curve),
        verbose=0,
        executor=SimulatedExecutor(2),
    ).run(R=3, eta=3)
    before = {
        p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and p.name != "driver.json"
    }
    seen: dict[str, object] = {}
    check = Repository.check_settings

    def observed(self, settings):
        pids = tuner.executor._worker_pids()
        seen.update(started=tuner.executor._pool is not None, pids=pids)
        seen["alive"] = [psutil.pid_exists(pid) for pid in pids]
        return check(self, settings)

    monkeypatch.setattr(Repository, "check_settings", observed)
    tuner = ParallelHyperband(
        None, hparams, repo, trainable=SyntheticTrainable(curve=x_curve), verbose=0, n_jobs=2
    )
    with pytest.raises(InputError) as caught:
        tuner.run(R=9, eta=3)  # the repository holds R=3: bad input
    assert "\n" not in str(caught.value) and "R=3 there, 9 here" in str(caught.value)
    assert seen["started"] and len(seen["pids"]) == 2 and all(seen["alive"]), (
        "the workers were up while the driver still checked its input"
    )
    for pid in seen["pids"]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", (
            "no worker is left running after bad input"
        )
    assert tuner.executor._pool is None
    after = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and p.name != "driver.json"}
    assert after == before, "nothing written"


def test_a_keras_run_asks_its_workers_to_import_keras_as_they_start(
    hparams, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from phobbit.api import KERAS_WORKER

    class Started(Exception):
        pass

    asked: list[tuple] = []

    def start(self, preload=()):
        asked.append(tuple(preload))
        raise Started

    monkeypatch.setattr(LocalExecutor, "start", start)
    data = ((np.zeros((8, 3)), np.zeros(8)), (np.zeros((4, 3)), np.zeros(4)))
    tuner = ParallelHyperband(lambda hp: None, hparams, repo, data, n_jobs=1, verbose=0)
    with pytest.raises(Started):
        tuner.run(R=9, eta=3)
    assert asked == [KERAS_WORKER]
    assert not repo.exists(), "started before anything is written"


def test_a_finished_run_ends_its_idle_workers_without_waiting_for_their_own_exit(
    hparams, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker's own exit with TensorFlow loaded takes seconds; here it would wait at a
    # gate nobody opens. The run must return without running it, every worker ended.
    from exit_gate import GATE_ENV, ExitGatedTrainable, exited

    gate = tmp_path / "exit-gate"
    gate.mkdir()
    monkeypatch.setenv(GATE_ENV, str(gate))  # the workers inherit the driver's environment
    tuner = ParallelHyperband(
        None, hparams, repo, trainable=ExitGatedTrainable(curve=x_curve), verbose=0, n_jobs=2
    )
    results = tuner.run(R=9, eta=3)
    assert exited(gate) == [], "the run waited for a worker's own exit"
    rows = list(tuner.repository.iter_results())
    assert len(results) == 17 and len(rows) == 17 + sum(results["Rung"]), "nothing lost"
    assert all(row.ok for row in rows)
    pids = {row.pid for row in rows}
    assert pids and tuner.executor._pool is None
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", (
            "no worker is left running once the run returns"
        )


def test_a_keras_pool_has_keras_imported_before_its_first_task() -> None:
    # The worker-side trainable imports Keras only inside its methods: preloading it alone
    # left Keras to each worker's first task, the input check waiting on a 5-15 s import.
    from phobbit.api import KERAS_WORKER

    with LocalExecutor(n_jobs=1) as executor:
        executor.start(KERAS_WORKER)
        assert executor.submit(_in_sys_modules, "keras").result(), (
            "Keras was not imported as the worker started"
        )


def test_a_simulated_executors_workers_read_as_cpu_workers_in_displays() -> None:
    """A loose end of issue 21: the simulated executor's slots were ``"cpu"``, which
    displays read as a GPU id ("GPU cpu"); they are CPU slots as a LocalExecutor's are."""
    from phobbit.reporting.progress import slot_labels, slot_summary

    slots = SimulatedExecutor(3).slots
    assert slots == [HIDDEN] * 3
    assert slot_labels(slots) == ["CPU 0", "CPU 1", "CPU 2"]
    assert slot_summary(slots) == "CPU 0, CPU 1, CPU 2"
