"""The command line, driven as a user drives it.

Most commands run in this process through ``cli.main(argv)`` (``phobbit``); those
that need a process of their own, for signals, ``python -m phobbit`` itself or a
run that a test watches from outside, run in a subprocess (``phobbit_process``,
``start``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from gates import open_gate

from phobbit.core.records import Status
from phobbit.execution.executor import visible_gpu_count
from phobbit.execution.streams import GuardedStdout
from phobbit.storage.repository import Repository, encode_row

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "models"
SYNTHETIC = MODELS / "synthetic.py"
SEGMENTS_R9 = 9 + 3 + 1 + 5 + 1 + 3  # the segments of brackets(9, 3)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # This worktree's package, not an installed one, in the driver and its workers; and
    # tests/ for the gate of the synthetic model file.
    paths = [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


def _command(*args: object) -> list[str]:
    return [sys.executable, "-m", "phobbit", *map(str, args)]


def phobbit_process(
    *args: object, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess:
    """Runs ``python -m phobbit ARGS`` to the end, in a subprocess."""
    return subprocess.run(
        _command(*args), capture_output=True, text=True, env=_env(**env), timeout=timeout, cwd=ROOT
    )


def phobbit(*args: object, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Runs ``phobbit ARGS`` to the end in this process, through ``cli.main``.

    ``env`` is set for the call only (workers started by it inherit it). Model
    files the call imported are forgotten after it, and their folders taken off
    ``sys.path``, as a new process would not know them: their top level reads the
    environment, and ``tests/models/synthetic.py`` would shadow ``tests/synthetic.py``.
    """
    from phobbit.cli.commands import main

    out, err = io.StringIO(), io.StringIO()
    modules, path = set(sys.modules), list(sys.path)
    saved = {name: os.environ.get(name) for name in {*env, "COLUMNS"}}
    os.environ.pop("COLUMNS", None)  # tables as wide as off a terminal, as in a pipe
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(arg) for arg in args])
            except SystemExit as exc:  # argparse: usage errors, --help, --version
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for name in set(sys.modules) - modules:
            if name.startswith("_phobbit_model_"):
                del sys.modules[name]
        # A model file's folder went first on sys.path; tests/models would shadow tests/.
        sys.path[:] = path
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def start(*args: object, **env: str) -> subprocess.Popen:
    """Starts ``python -m phobbit ARGS`` in its own process group, as a terminal would."""
    return subprocess.Popen(
        _command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(**env),
        cwd=ROOT,
        start_new_session=True,
    )


def held_after(tmp_path: Path, segments: int) -> dict[str, str]:
    """The environment that holds every segment of the synthetic model file after the
    first ``segments`` until ``open_gate`` (``tests/gates.py``)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    return {"PHOBBIT_TEST_GATE": str(gate), "PHOBBIT_TEST_HOLD_AFTER": str(segments)}


def wait_for_rows(repo: Path, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(list(Repository(repo).iter_results())) < count:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {count} rows")
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {count} rows after {timeout} s")
        time.sleep(0.05)


def keys(repo: Path) -> list[tuple[int, int, int, int]]:
    return [row.key for row in Repository(repo).iter_results()]


def assert_one_line_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phobbit: error: "), result.stderr
    return lines[0]


# -- train ---------------------------------------------------------------------------


@pytest.mark.keras
def test_train_keras_model_file_on_gpus_0_1_fills_repository(tmp_path: Path) -> None:
    count = visible_gpu_count()
    if count is None or count < 2:
        # Without nvidia-smi, --gpus is refused: its workers would train on the CPU.
        pytest.skip(f"--gpus 0,1 needs two GPUs; this machine has {count or 'none'}")
    repo = tmp_path / "repo"
    result = phobbit(
        "train",
        MODELS / "tiny_keras.py",
        "--gpus",
        "0,1",
        "--R",
        3,
        "--eta",
        3,
        "--repo",
        repo,
        "--batch-size",
        64,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # The schedule of R=3, eta=3 comes before any result.
    assert out.index("Run 1: 3x1, 1x3") < out.index("Run 0: 2x3") < out.index("best so far")
    assert "Total: 5 configurations, 11 epochs with checkpoint continuation" in out
    assert "2 workers (GPU 0, GPU 1)" in out
    rows = list(Repository(repo).iter_results())
    assert sorted(r.key for r in rows) == sorted(set(r.key for r in rows))
    assert len(rows) == 6 and all(r.ok for r in rows), [r.error for r in rows]
    assert {r.gpu for r in rows} == {"0", "1"}  # each worker pinned to its own id
    assert json.loads((repo / "run.json").read_text())["R"] == 3
    best = min(rows, key=lambda r: r.val_loss)
    # The file of the epoch that scored: the checkpoint, or its best-epoch file.
    model = Repository(repo).scoring_checkpoint(best.iteration, best.s, best.id, best.val_loss)
    assert model is not None and model.name.startswith(f"{best.iteration}-{best.s}-{best.id}.")
    assert f"Best model: {model}" in out
    assert f"{best.s}-{best.id}" in out.split("Best ")[-2]  # the table lists it


def test_train_prints_schedule_and_best_table(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = phobbit("train", SYNTHETIC, "--jobs", 2, "--R", 9, "--repo", repo)
    assert result.returncode == 0, result.stderr
    assert "Run 2: 9x1, 3x3, 1x9" in result.stdout
    assert "Total: 17 configurations, 69 epochs" in result.stdout
    assert "run 2 rung 2 done" in result.stdout
    assert "Trained 22 segments" in result.stdout
    assert f"Repository: {repo}" in result.stdout
    assert len(keys(repo)) == SEGMENTS_R9


def test_same_command_again_skips_everything(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert phobbit("train", SYNTHETIC, "--jobs", 2, "--R", 9, "--repo", repo).returncode == 0
    again = phobbit("train", SYNTHETIC, "--jobs", 2, "--R", 9, "--repo", repo)
    assert again.returncode == 0, again.stderr
    assert f"Resuming: {SEGMENTS_R9} segments" in again.stdout
    assert len(keys(repo)) == SEGMENTS_R9


def test_live_progress_renders_when_forced(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = phobbit(
        "train", SYNTHETIC, "--jobs", 2, "--R", 9, "--repo", repo, "--progress", "live"
    )
    assert result.returncode == 0, result.stderr
    assert "Segments done per bracket and rung" in result.stdout
    assert "Best Val Loss" in result.stdout
    assert "Trained 22 segments" in result.stdout


@pytest.mark.parametrize("kill", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_run_resumes_without_retraining(tmp_path: Path, kill: signal.Signals) -> None:
    repo = tmp_path / "repo"
    args = ("train", SYNTHETIC, "--jobs", 2, "--R", 9, "--repo", repo)
    proc = start(*args, **held_after(tmp_path, 4))  # the run cannot end before the kill
    wait_for_rows(repo, 4, proc)
    os.killpg(proc.pid, kill)  # the whole group, as Ctrl-C in a terminal (or a crash)
    _, stderr = proc.communicate(timeout=300)
    if kill == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert "Run the same command again to resume" in stderr
        assert "Traceback" not in stderr
    before = keys(repo)
    assert 4 <= len(before) < SEGMENTS_R9
    status = phobbit("status", repo)
    assert status.returncode == 0 and "driver not running" in status.stdout, status.stdout

    again = phobbit(*args)
    assert again.returncode == 0, again.stderr
    assert f"Resuming: {len(before)} segments" in again.stdout
    after = keys(repo)
    assert after[: len(before)] == before  # appended to, never rewritten
    assert len(after) == len(set(after)) == SEGMENTS_R9  # nothing trained twice


@pytest.mark.parametrize("progress", ["plain", "live"])
def test_closed_standard_output_lets_the_run_finish_with_its_own_exit_code(
    tmp_path: Path, progress: str
) -> None:
    # `phobbit train ... | head -1`: the reader leaves while the run is held mid-way.
    repo = tmp_path / "repo"
    gate = held_after(tmp_path, 3)
    # Its workers print too (model.summary(), verbose=1), to the same closed pipe.
    proc = start(
        *("train", SYNTHETIC, "--jobs", 2, "--R", 9, "--repo", repo, "--progress", progress),
        **gate,
        PHOBBIT_TEST_PRINT="1",
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline()
        proc.stdout.close()  # every later write to standard output is a broken pipe
        open_gate(gate["PHOBBIT_TEST_GATE"])
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr
    assert "standard output was closed; the run goes on" in stderr
    assert len(set(keys(repo))) == SEGMENTS_R9  # finished, not stopped
    assert all(r.status == Status.OK for r in Repository(repo).iter_results())  # none failed
    assert "driver not running" in phobbit("status", repo).stdout


def test_a_reader_that_leaves_with_stderr_on_the_same_pipe_stops_nothing(tmp_path: Path) -> None:
    # `phobbit train ... 2>&1 | head -1`: the notice itself meets the closed pipe.
    repo = tmp_path / "repo"
    gate = held_after(tmp_path, 3)
    proc = subprocess.Popen(
        _command("train", SYNTHETIC, "--jobs", 2, "--R", 9, "--repo", repo, "--progress", "plain"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(**gate, PHOBBIT_TEST_PRINT="1"),
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline()
        proc.stdout.close()
        open_gate(gate["PHOBBIT_TEST_GATE"])
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert len(set(keys(repo))) == SEGMENTS_R9
    assert all(r.status == Status.OK for r in Repository(repo).iter_results())


def test_guarded_stdout_loses_a_closed_stream_but_raises_what_is_no_lost_stream() -> None:
    class Ascii(io.StringIO):
        def write(self, text: str) -> int:
            text.encode("ascii")  # UnicodeEncodeError, a ValueError: the text, not the stream
            return super().write(text)

    guarded = GuardedStdout(Ascii())
    guarded.write("plain")
    with pytest.raises(UnicodeEncodeError):
        guarded.write("lr=1e-3 \u2192 0.5")
    assert not guarded.lost and guarded.getvalue() == "plain"
    closed = io.StringIO()
    closed.close()
    lost = GuardedStdout(closed)
    assert lost.write("after the reader left") == len("after the reader left")
    assert lost.lost


def test_warm_cache_reaches_a_model_files_own_trainable(tmp_path: Path) -> None:
    result = phobbit(
        *("train", SYNTHETIC, "--jobs", 1, "--R", 9, "--repo", tmp_path / "repo"),
        *("--progress", "plain", "--warm-cache", "1MB"),
    )
    assert result.returncode == 0, result.stderr
    # One worker holds every model it trained: each continued segment starts warm.
    assert "continued segments started warm" in result.stdout
    found = re.search(r"(\d+) of (\d+) continued segments started warm", result.stdout)
    assert found is not None and int(found[1]) == int(found[2]) > 0, result.stdout


def test_different_settings_on_same_repo_are_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert phobbit("train", SYNTHETIC, "--jobs", 1, "--R", 3, "--repo", repo).returncode == 0
    written = (repo / "results.csv").read_bytes()
    result = phobbit("train", SYNTHETIC, "--jobs", 1, "--R", 9, "--repo", repo)
    line = assert_one_line_error(result)
    assert "R=3 there, 9 here" in line and "start fresh" in line
    assert (repo / "results.csv").read_bytes() == written


# -- bad input -----------------------------------------------------------------------

NO_MODEL = (
    "from phobbit import Hyperparameter\n"
    "hparam_ranges = [Hyperparameter('x', 'uniform', (0, 1))]\n"
)
EMPTY_SPACE = (
    "from phobbit.testing import SyntheticTrainable\n"
    "hparam_ranges = []\n"
    "trainable = SyntheticTrainable()\n"
)
BROKEN = "x = 1\nraise RuntimeError('no data here')\n"


@pytest.mark.parametrize(
    ("source", "options", "message"),
    [
        (None, [], "does not exist"),
        (NO_MODEL, [], "no model function: looked for my_model, model_function"),
        (BROKEN, [], "failed to load (line 2): RuntimeError: no data here"),
        (EMPTY_SPACE, [], "the search space is empty"),
        ("synthetic", ["--R", 0], "R must be an integer >= 1, got 0"),
        ("synthetic", ["--eta", 1], "eta must be an integer >= 2, got 1"),
        ("synthetic", ["--gpus", "0,,1"], "--gpus '0,,1' is malformed"),
        ("synthetic", ["--gpus", "0,1", "--jobs", 2], "with --gpus use --jobs-per-gpu"),
        ("synthetic", ["--gpus", "0,5"], "GPU id 5 does not exist: this machine has 2 GPU(s)"),
        ("synthetic", ["--jobs", 100_000], "--jobs 100,000 makes 100,000 workers, more than"),
        (
            "synthetic",
            ["--gpus", "0,1", "--jobs-per-gpu", 100_000],
            "2 GPU(s) x --jobs-per-gpu 100,000 makes 200,000 workers",
        ),
    ],
    ids=[
        "missing-file",
        "no-model-function",
        "broken-file",
        "empty-space",
        "R<1",
        "eta<2",
        "malformed-gpus",
        "jobs-with-gpus",
        "no-such-gpu",
        "jobs-beyond-the-cores",
        "jobs-per-gpu-beyond-the-cores",
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path,
    source: str | None,
    options: list,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        "phobbit.execution.executor.visible_gpu_count", visible_gpu_count
    )  # conftest's off
    model = tmp_path / "model.py"
    if source == "synthetic":
        model = SYNTHETIC
    elif source is not None:
        model.write_text(source)
    # A fake nvidia-smi that lists two GPUs: this machine can then tell which ids exist.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: Fake (UUID: GPU-0)'\necho 'GPU 1: Fake (UUID: GPU-1)'\n"
    )
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    repo = tmp_path / "repo"
    result = phobbit(
        "train", model, "--repo", repo, *options, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    )
    assert message in assert_one_line_error(result)
    assert not repo.exists()


def test_unknown_option_is_a_usage_error() -> None:
    result = phobbit("train", SYNTHETIC, "--R", "many")
    assert result.returncode == 2
    assert "invalid int value: 'many'" in result.stderr


@pytest.mark.parametrize(
    ("args", "command"),
    [
        ([], "phobbit"),
        (["bogus"], "phobbit"),
        (["--nope"], "phobbit"),
        (["train"], "phobbit train"),
        (["train", "m.py", "--jobs", "0"], "phobbit train"),
        (["train", "m.py", "--R", "many"], "phobbit train"),
        (["train", "m.py", "--nope"], "phobbit train"),
        (["train", "m.py", "--progress", "loud"], "phobbit train"),
        (["brackets", "--eta", "x"], "phobbit brackets"),
        (["status"], "phobbit status"),
        (["status", "a", "b"], "phobbit status"),
        (["best", "d", "--top", "0"], "phobbit best"),
        (["export", "d"], "phobbit export"),
        (["plot", "d"], "phobbit plot"),
        (["plot", "d", "-o", "x.png", "--kind", "pie"], "phobbit plot"),
        (["tensorboard"], "phobbit tensorboard"),
    ],
)
def test_every_commands_usage_error_is_one_line_naming_its_help(
    args: list[str], command: str
) -> None:
    line = assert_one_line_error(phobbit(*args))
    assert "usage:" not in line
    assert line.endswith(f"; try '{command} --help'"), line


def test_a_usage_error_is_one_line_in_a_real_process_too(tmp_path: Path) -> None:
    result = phobbit_process("train", SYNTHETIC, "--repo", tmp_path / "repo", "--jobs", "zero")
    line = assert_one_line_error(result)
    assert line == (
        "phobbit: error: argument --jobs: must be an integer >= 1, got 'zero'; "
        "try 'phobbit train --help'"
    )
    assert not (tmp_path / "repo").exists()


def test_run_where_every_trial_fails_exits_1(tmp_path: Path) -> None:
    model = tmp_path / "failing.py"
    model.write_text(
        "from phobbit import Hyperparameter\n"
        "hparam_ranges = [Hyperparameter('x', 'uniform', (0, 1))]\n"
        "class Broken:\n"
        "    def train(self, hparams, checkpoint, initial_epoch, epochs):\n"
        "        raise OSError('data went missing')\n"
        "trainable = Broken()\n"
    )
    result = phobbit("train", model, "--jobs", 1, "--R", 1, "--repo", tmp_path / "repo")
    assert result.returncode == 1
    assert "every trial failed" in result.stderr and "data went missing" in result.stderr


def test_every_trial_failed_names_retry_failed_which_retrains_them_after_a_fix(
    tmp_path: Path,
) -> None:
    """The failed rows are final until --retry-failed; Keras' escapes never reach stderr."""
    flag = tmp_path / "broken"
    flag.touch()
    model = tmp_path / "flaky.py"
    model.write_text(
        "import os\n"
        "from phobbit import Hyperparameter\n"
        "hparam_ranges = [Hyperparameter('x', 'uniform', (0, 1))]\n"
        "class Flaky:\n"
        "    def train(self, hparams, checkpoint, initial_epoch, epochs):\n"
        f"        if os.path.exists({str(flag)!r}):\n"
        "            raise ValueError('\\x1b[1mexpected axis -1 to have value 784\\x1b[0m')\n"
        "        return [1.0 + hparams['x'] / e for e in range(initial_epoch + 1, epochs + 1)]\n"
        "trainable = Flaky()\n"
    )
    command = ["train", model, "--jobs", 1, "--R", 3, "--repo", tmp_path / "repo"]
    failed = phobbit(*command)
    assert failed.returncode == 1
    line = failed.stderr.splitlines()[-1]
    assert "every trial failed; the first says: ValueError: expected axis -1" in line
    assert "run the same command with --retry-failed" in line
    assert "\x1b" not in failed.stderr + failed.stdout
    results = (tmp_path / "repo" / "results.csv").read_bytes()
    flag.unlink()  # the fix
    again = phobbit(*command)
    assert again.returncode == 1 and "every trial failed" in again.stderr
    assert (tmp_path / "repo" / "results.csv").read_bytes() == results  # final: none trained
    retried = phobbit(*command, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert (tmp_path / "repo" / "results.csv").read_bytes().startswith(results)  # kept
    best = phobbit("best", tmp_path / "repo", "--json")
    assert {row["status"] for row in json.loads(best.stdout)} == {"ok"}


# -- brackets, status, best ----------------------------------------------------------------


def test_brackets_prints_schedule_with_totals() -> None:
    result = phobbit_process("brackets", "--R", 20, "--eta", 3)  # python -m phobbit itself
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Run 2: 9x2, 3x7, 1x20")
    assert lines[1].startswith("Run 1: 5x7, 1x20")
    assert lines[2].startswith("Run 0: 3x20")
    assert lines[3] == (
        "Total: 17 configurations, 154 epochs with checkpoint continuation (174 from scratch)"
    )


def test_brackets_rejects_eta_1() -> None:
    assert "eta must be" in assert_one_line_error(phobbit("brackets", "--R", 9, "--eta", 1))


def test_status_while_run_is_writing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    gate = held_after(tmp_path, 3)
    proc = start("train", SYNTHETIC, "--jobs", 2, "--R", 9, "--repo", repo, **gate)
    try:
        wait_for_rows(repo, 3, proc)  # and no more until the gate opens: the run is mid-way
        during = phobbit("status", repo)
        assert during.returncode == 0, during.stderr
        assert f"driver running (pid {proc.pid} on " in during.stdout
        assert "3/22 segments" in during.stdout
        assert "Segments done per bracket and rung" in during.stdout
        open_gate(gate["PHOBBIT_TEST_GATE"])
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    after = phobbit("status", repo)
    assert "driver not running" in after.stdout
    assert "69/69 epochs (100%), 22/22 segments" in after.stdout


def test_status_of_a_folder_without_run_exits_2(tmp_path: Path) -> None:
    assert "does not exist" in assert_one_line_error(phobbit("status", tmp_path / "nothing"))
    assert "no run.json" in assert_one_line_error(phobbit("status", tmp_path))


def test_best_json_lists_best_configurations_first(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert phobbit("train", SYNTHETIC, "--jobs", 2, "--R", 9, "--repo", repo).returncode == 0
    result = phobbit("best", repo, "--top", 3, "--json")
    assert result.returncode == 0, result.stderr
    best = json.loads(result.stdout)
    assert len(best) == 3
    losses = [b["val_loss"] for b in best]
    assert losses == sorted(losses)
    rows = list(Repository(repo).iter_results())
    assert losses[0] == min(r.val_loss for r in rows)
    top = next(r for r in rows if r.val_loss == losses[0])
    assert (best[0]["run"], best[0]["id"], best[0]["hparams"]) == (top.s, top.id, top.hparams)
    assert (repo / best[0]["checkpoint"]).is_file()

    table = phobbit("best", repo, "--top", 2)
    assert table.returncode == 0
    assert f"{best[0]['run']}-{best[0]['id']}" in table.stdout
    assert "Best model:" in table.stdout


def test_iterations_run_their_own_configurations_and_status_counts_them(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    done = phobbit("train", SYNTHETIC, "--jobs", 2, "--R", 9, "--iterations", 2, "--repo", repo)
    assert done.returncode == 0, done.stderr
    assert "2 iterations" in done.stdout
    assert len(keys(repo)) == 2 * SEGMENTS_R9
    assert {key[0] for key in keys(repo)} == {0, 1}
    status = phobbit("status", repo)
    assert status.returncode == 0, status.stderr
    assert "2 iteration(s)" in status.stdout
    assert f"{2 * SEGMENTS_R9}/{2 * SEGMENTS_R9} segments" in status.stdout


BAD_DATASET = (
    "from phobbit import Hyperparameter\n"
    "hparam_ranges = [Hyperparameter('x', 'uniform', (0, 1))]\n"
    "def my_model(hparams):\n"
    "    raise AssertionError('the model function ran although the dataset is bad')\n"
    "def load_dataset():\n"
    "    return ([[0.0]] * 4, [0] * 3), ([[0.0]], [0])\n"
)


def test_a_dataset_function_returning_bad_shapes_exits_2_and_leaves_no_repository(
    tmp_path: Path,
) -> None:
    model = tmp_path / "model.py"
    model.write_text(BAD_DATASET)
    repo = tmp_path / "repo"
    result = phobbit("train", model, "--jobs", 1, "--R", 3, "--repo", repo)
    assert "dataset has 4 training inputs for 3 labels" in assert_one_line_error(result)
    assert not repo.exists(), sorted(p.name for p in repo.rglob("*"))


@pytest.mark.parametrize(
    ("run_json", "message"),
    [
        ("{}", "run.json lacks R, eta, seed, iterations, space_fingerprint, space"),
        ("[" * 60_000 + "]" * 60_000, "run.json is not valid JSON"),
        ("iterations", "iterations=1000000000 make more than 1,000,000 segments"),
        ("unknown", "run.json holds settings this phobbit does not know (shuffle)"),
    ],
    ids=["emptied", "nested", "iterations-1e9", "unknown-key"],
)
def test_an_edited_run_json_is_refused_by_every_command_in_one_line(
    tmp_path: Path, run_json: str, message: str
) -> None:
    repo = tmp_path / "repo"
    assert phobbit("train", SYNTHETIC, "--jobs", 1, "--R", 3, "--repo", repo).returncode == 0
    settings = json.loads((repo / "run.json").read_text())
    if run_json == "iterations":
        run_json = json.dumps({**settings, "iterations": 10**9})
    elif run_json == "unknown":
        run_json = json.dumps({**settings, "shuffle": True})
    (repo / "run.json").write_text(run_json)
    written = (repo / "results.csv").read_bytes()
    for command in (
        ("status", repo),
        ("best", repo),
        ("train", SYNTHETIC, "--jobs", 1, "--R", 3, "--seed", 5, "--repo", repo),
    ):
        line = assert_one_line_error(phobbit(*command, timeout=300))
        assert message in line and str(repo / "run.json") in line, line
    assert (repo / "results.csv").read_bytes() == written


HOSTILE_NAMES = (
    "from dataclasses import dataclass\n"
    "from phobbit import Hyperparameter\n"
    "from phobbit.testing import SyntheticTrainable\n"
    "hparam_ranges = [\n"
    "    Hyperparameter('x', 'uniform', (0, 1)),\n"
    "    Hyperparameter('[red]c', 'choice', ['[/]', '[red]', '[bold]b[/bold]', ':smile:']),\n"
    "]\n"
    "@dataclass(frozen=True)\n"
    "class Picky(SyntheticTrainable):\n"
    "    def train(self, hparams, checkpoint, initial_epoch, epochs):\n"
    "        if hparams['x'] > 0.6:\n"
    "            raise ValueError('[/] broke on [red]' + hparams['[red]c'])\n"
    "        return super().train(hparams, checkpoint, initial_epoch, epochs)\n"
    "trainable = Picky()\n"
)


@pytest.mark.parametrize("progress", ["plain", "live"])
def test_user_text_is_printed_as_it_is_never_as_rich_markup(tmp_path: Path, progress: str) -> None:
    folder = tmp_path / "[dim]models"
    folder.mkdir()
    model = folder / "hostile.py"
    model.write_text(HOSTILE_NAMES)
    repo = tmp_path / "r_[exp1]"
    train = phobbit("train", model, "--jobs", 2, "--R", 9, "--repo", repo, "--progress", progress)
    assert train.returncode == 0, train.stderr
    assert "Traceback" not in train.stderr
    results = {row.key[:3]: row for row in Repository(repo).iter_results()}
    failed = [row for row in results.values() if not row.ok]
    assert failed and len(failed) < len(results)  # both kinds are printed
    best = phobbit("best", repo, "--top", 100)
    status = phobbit("status", repo)
    for done in (best, status):
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    for row in results.values():
        shown = f"'[red]c': {row.hparams['[red]c']!r}"[1:].replace("': ", "=")  # name=value
        assert shown in train.stdout and shown in best.stdout
    for row in failed:
        assert f"[/] broke on [red]{row.hparams['[red]c']}" in train.stdout + best.stdout
    assert f"Repository: {repo}" in train.stdout
    assert f"Repository {repo}: R=9" in status.stdout
    top = min((r for r in results.values() if r.ok), key=lambda r: r.val_loss)
    checkpoint = repo / "models" / f"{top.iteration}-{top.s}-{top.id}.json"
    for done in (train, best):
        assert f"Best model: {checkpoint}" in done.stdout
    assert f"[red]c={top.hparams['[red]c']!r}" in status.stdout
    if progress == "live":
        assert f"phobbit train {model}: R=9" in train.stdout
        assert f"FAILED run {failed[0].s} id {failed[0].id}" in train.stdout


LONG_VALUES = (
    "from phobbit import Hyperparameter\n"
    "from phobbit.testing import SyntheticTrainable\n"
    "hparam_ranges = [\n"
    "    Hyperparameter('x', 'uniform', (0, 1)),\n"
    "    Hyperparameter('c' * 140_000, 'choice', ['a' * 200_000, 'b']),\n"
    "]\n"
    "trainable = SyntheticTrainable()\n"
)


def test_values_longer_than_the_csv_field_limit_are_read_back_and_never_trained_twice(
    tmp_path: Path,
) -> None:
    model = tmp_path / "long.py"
    model.write_text(LONG_VALUES)
    repo = tmp_path / "repo"
    args = ("train", model, "--jobs", 2, "--R", 3, "--repo", repo, "--top", 1)
    first = phobbit(*args)
    assert first.returncode == 0, first.stderr
    rows = list(Repository(repo).iter_results())
    assert len(rows) == 6 and any(len(r.hparams["c" * 140_000]) == 200_000 for r in rows)
    again = phobbit(*args)
    assert again.returncode == 0, again.stderr
    assert "Resuming: 6 segments" in again.stdout
    assert keys(repo) == [r.key for r in rows]  # nothing trained twice


def test_a_hostile_row_with_a_correct_crc_is_skipped_by_every_command(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    args = ("train", SYNTHETIC, "--jobs", 1, "--R", 3, "--repo", repo)
    assert phobbit(*args).returncode == 0
    rows = list(Repository(repo).iter_results())
    fields = encode_row(dataclasses.replace(rows[0], id=99, hparams={})).rsplit(",", 1)[0]
    body = fields.replace(",{},", ',"[' + "[" * 60_000 + "]" * 60_000 + ']",') + ","
    with open(repo / "results.csv", "a") as handle:
        handle.write(f"{body}{zlib.crc32(body.encode()):08x}\n")
    for command in (args, ("status", repo), ("best", repo), ("best", repo, "--json")):
        done = phobbit(*command)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert keys(repo) == [r.key for r in rows]


def test_rows_no_schedule_makes_are_skipped_by_every_command_with_one_warning_a_file(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    from helpers import forge_rows, tuner

    repo = tmp_path / "repo"
    honest = tuner(repo, n_jobs=2, tensorboard=False).run(R=9, eta=3)
    results, epochs = forge_rows(repo)
    skipped = {
        "results.csv": f"phobbit: warning: {repo / 'results.csv'}: skipped {results} row(s) "
        "that this run cannot have written (the first: rung 999 is not one of bracket 2's "
        "(0 to 2)); they were edited, or are another run's",
        "epochs.csv": f"phobbit: warning: {repo / 'epochs.csv'}: skipped {epochs} row(s) "
        "that this run cannot have written (the first: epoch "
        f"{10**30} is not one of rung 0's (1 to 1)); they were edited, or are another run's",
    }
    commands = {
        ("status", repo): ["results.csv"],
        # best reads the scoring epochs of the configurations it shows from epochs.csv
        # (issue 22 item 1): all of them here, the forged epochs' among them.
        ("best", repo, "--json", "--top", 100): ["results.csv", "epochs.csv"],
        ("plot", repo, "-o", tmp_path / "run.png"): ["results.csv", "epochs.csv"],
        ("tensorboard", repo): ["results.csv", "epochs.csv"],
    }
    for command, files in commands.items():
        done = phobbit(*command)
        assert done.returncode == 0, done.stderr
        assert sorted(done.stderr.splitlines()) == sorted(skipped[f] for f in files)
    best = json.loads(phobbit("best", repo, "--json", "--top", 1).stdout)
    assert best[0]["trial"] == honest.index[0] and best[0]["val_loss"] > 0


@pytest.mark.parametrize(
    ("hparams", "message"),
    [
        ("Hyperparameter('c', 'choice', [0.1, float('nan')])", "has the option nan"),
        ("Hyperparameter('n', 'randint', (0, 10**20))", "bounds within [-2**63, 2**63 - 1]"),
        ("Hyperparameter('u', 'uniform', (-1e308, 1e308))", "hi - lo to be a finite float"),
    ],
    ids=["nan-choice", "randint-10**20", "uniform-1e308"],
)
def test_hyperparameters_that_cannot_round_trip_exit_2_in_one_line(
    tmp_path: Path, hparams: str, message: str
) -> None:
    model = tmp_path / "model.py"
    model.write_text(
        "from phobbit import Hyperparameter\n"
        "from phobbit.testing import SyntheticTrainable\n"
        f"hparam_ranges = [{hparams}]\n"
        "trainable = SyntheticTrainable()\n"
    )
    result = phobbit("train", model, "--jobs", 1, "--R", 3, "--repo", tmp_path / "repo")
    assert message in assert_one_line_error(result)
    assert not (tmp_path / "repo").exists()


def test_numpy_bounds_and_options_in_a_model_file_train_and_resume(tmp_path: Path) -> None:
    model = tmp_path / "model.py"
    model.write_text(
        "import numpy as np\n"
        "from phobbit import Hyperparameter\n"
        "from phobbit.testing import SyntheticTrainable\n"
        "hparam_ranges = [\n"
        "    Hyperparameter('units', 'randint', (np.int64(16), np.int64(128))),\n"
        "    Hyperparameter('lr', 'choice', [np.float32(0.5), np.float64(0.1)]),\n"
        "]\n"
        "trainable = SyntheticTrainable()\n"
    )
    args = ("train", model, "--jobs", 1, "--R", 3, "--repo", tmp_path / "repo")
    first = phobbit(*args)
    assert first.returncode == 0, first.stderr
    again = phobbit(*args)
    assert again.returncode == 0 and "Resuming: 6 segments" in again.stdout, again.stderr


def test_status_of_a_repository_with_a_hostile_driver_json_says_unknown(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert phobbit("train", SYNTHETIC, "--jobs", 1, "--R", 1, "--repo", repo).returncode == 0
    (repo / "driver.json").write_text("[" * 60_000 + "]" * 60_000)
    status = phobbit("status", repo)
    assert status.returncode == 0 and "driver not running" in status.stdout


# -- failures after training started -------------------------------------------------

DISK_FULL_AT = (
    "import errno, os\n"
    "from phobbit import Hyperparameter\n"
    "hparam_ranges = [Hyperparameter('x', 'uniform', (0, 1))]\n"
    "class FillsTheDisk:\n"
    "    def train(self, hparams, checkpoint, initial_epoch, epochs):\n"
    "        if hparams['x'] > 0.5:\n"
    "            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), checkpoint)\n"
    "        return [hparams['x'] + 1 / e for e in range(initial_epoch + 1, epochs + 1)]\n"
    "trainable = FillsTheDisk()\n"
)


def test_a_full_disk_after_training_started_exits_1_not_the_bad_input_code(
    tmp_path: Path,
) -> None:
    model = tmp_path / "model.py"
    model.write_text(DISK_FULL_AT)
    result = phobbit("train", model, "--jobs", 1, "--R", 9, "--repo", tmp_path / "repo")
    line = assert_one_line_error(result, code=1)
    assert "no space left on the disk" in line and "run the same command again" in line


INTERRUPTING = (
    "from phobbit import Hyperparameter\n"
    "hparam_ranges = [Hyperparameter('x', 'uniform', (0, 1))]\n"
    "class Interrupting:\n"
    "    def train(self, hparams, checkpoint, initial_epoch, epochs):\n"
    "        if hparams['x'] > 0.5:\n"
    "            raise KeyboardInterrupt('raised by user code')\n"
    "        return [hparams['x'] + 1 / e for e in range(initial_epoch + 1, epochs + 1)]\n"
    "trainable = Interrupting()\n"
)


def test_keyboard_interrupt_raised_in_user_code_fails_trials_and_the_run_finishes(
    tmp_path: Path,
) -> None:
    model = tmp_path / "model.py"
    model.write_text(INTERRUPTING)
    repo = tmp_path / "repo"
    result = phobbit("train", model, "--jobs", 2, "--R", 9, "--repo", repo)
    assert result.returncode == 0, result.stderr
    rows = list(Repository(repo).iter_results())
    assert len({(r.s, r.id) for r in rows}) == 17  # every configuration got its row
    failed = [r for r in rows if not r.ok]
    assert failed and {r.error for r in failed} == {"KeyboardInterrupt: raised by user code"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
    ],
)
def test_segment_timeout_and_time_limit_take_the_same_durations(text: str, seconds: float) -> None:
    from phobbit.cli.parser import build_parser as _parser

    for option in ("--segment-timeout", "--time-limit"):
        args = _parser().parse_args(["train", "model.py", option, text])
        assert (args.segment_timeout, args.time_limit) == (
            (seconds, None) if option == "--segment-timeout" else (None, seconds)
        )
    assert _parser().parse_args(["train", "model.py"]).segment_timeout is None


@pytest.mark.parametrize(
    "text", ["0", "-5m", "367d", "soon", "99999999999999999999", "0.0000001s", "nan", "1e400"]
)
@pytest.mark.parametrize("option", ["--segment-timeout", "--time-limit"])
def test_a_duration_out_of_bounds_is_one_line_and_writes_nothing(
    tmp_path: Path, text: str, option: str
) -> None:
    repo = tmp_path / "repo"
    result = phobbit("train", SYNTHETIC, "--repo", repo, f"{option}={text}")
    line = assert_one_line_error(result)
    assert f"argument {option}: must be a duration > 0 such as 90s, 15m, 2h, 1d or 1h30m" in line
    assert "from 0.001s to 366d" in line
    # Not even run.json, driver.json or models/: the repository folder is never made.
    assert not repo.exists()


def test_a_time_limit_spent_before_any_segment_finished_is_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phobbit.core.budget import Budget

    # The limit is spent before the first dispatch, whatever this machine's speed.
    monkeypatch.setattr(Budget, "spent", lambda self, elapsed, epochs: "time_limit")
    repo = tmp_path / "repo"
    result = phobbit(
        "train", SYNTHETIC, "--repo", repo, "--jobs", 1, "--time-limit", "0.001s",
        "--progress", "plain",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "every trial failed" not in result.stderr and result.stderr == ""
    assert "Stopped: time_limit (0.001s) spent; run again with a larger" in result.stdout


def test_verbose_train_shows_the_library_log_on_stderr_for_that_run_only(tmp_path: Path) -> None:
    import logging

    args = ("train", SYNTHETIC, "--jobs", 1, "--R", 1, "--progress", "plain")
    quiet = phobbit(*args, "--repo", tmp_path / "quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""
    verbose = phobbit(*args, "--repo", tmp_path / "verbose", "-v")
    assert verbose.returncode == 0, verbose.stderr
    assert "phobbit: INFO: starting a pool of 1 workers" in verbose.stderr
    assert [type(h) for h in logging.getLogger("phobbit").handlers] == [logging.NullHandler]


def test_a_live_display_on_a_terminal_that_closed_neither_raises_nor_stops(
    capsys: pytest.CaptureFixture,
) -> None:
    from rich.console import Console
    from rich.live import Live

    class ClosedTerminal(io.StringIO):
        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> int:
            raise OSError(5, "Input/output error")  # EIO: the terminal went away

    stdout = GuardedStdout(ClosedTerminal(), notice="the run goes on without printing")
    console = Console(file=stdout, force_terminal=True, width=100)
    console.print("a line")  # what the live reporter prints between redraws
    assert stdout.lost
    live = Live("frame", console=console, auto_refresh=False)
    live.start()
    live.refresh()  # what its refresh thread does (there, an error was a traceback)
    live.stop()
    err = capsys.readouterr().err
    assert err.count("standard output failed (Input/output error); the run goes on") == 1, err


def test_the_command_line_runs_asha_with_tpe_to_a_budget_and_goes_on(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    args = ("train", SYNTHETIC, "--jobs", 2, "--R", 9, "--repo", repo, "--progress", "plain")
    args += ("--algorithm", "asha", "--sampler", "tpe")
    first = phobbit(*args, "--max-epochs", 20)
    assert first.returncode == 0, first.stderr
    assert "asha, tpe sampling" in first.stdout
    assert "Stopped: max_epochs budget (20 epochs) spent" in first.stdout
    trained = _epochs_trained(repo)
    assert 20 <= trained < 20 + 9
    again = phobbit(*args, "--time-limit", "1h", "--max-epochs", 40)
    assert again.returncode == 0, again.stderr
    assert 40 <= _epochs_trained(repo) < 40 + 9
    assert len({r.key for r in _rows(repo)}) == len(_rows(repo))
    status = phobbit("status", repo)
    assert "asha, tpe sampling" in status.stdout
    assert "Algorithm: asha, tpe sampling" in phobbit("best", repo).stdout
    refused = phobbit("train", SYNTHETIC, "--jobs", 1, "--R", 9, "--repo", repo)
    assert refused.returncode != 0 and "algorithm='asha' there" in refused.stderr
    bad = phobbit(*args, "--time-limit", "soon")
    assert bad.returncode != 0 and "must be a duration > 0" in bad.stderr


def _rows(repo: Path) -> list:
    return list(Repository(repo).iter_results())


def _epochs_trained(repo: Path) -> int:
    return sum(row.epochs - row.start_epoch for row in _rows(repo))
