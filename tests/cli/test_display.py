"""What ``best``, ``status`` and ``train`` show (issue 22, items 1, 2 and 5), in this process.

The repositories are filled on the simulated executor (``helpers.tuner``); the commands
that only read them run through ``cli.main``, as a user's would.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
from helpers import tuner

from phobbit import open_repository


def cli(*args: object) -> tuple[int, str, str]:
    """``phobbit ARGS`` through ``cli.main``: (exit code, stdout, stderr)."""
    from phobbit.cli.commands import main

    out, err = io.StringIO(), io.StringIO()
    columns = os.environ.pop("COLUMNS", None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(arg) for arg in args])
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        if columns is not None:
            os.environ["COLUMNS"] = columns
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A finished R=9 run in ``tmp_path/repo``, trained by two CPU workers; cwd is tmp_path."""
    tuner(tmp_path / "repo", n_jobs=2).run(R=9, eta=3)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "repo"


def test_best_json_and_the_api_name_one_absolute_checkpoint_and_no_gpu_for_a_cpu_worker(
    trained: Path,
) -> None:
    code, out, err = cli("best", "repo", "--top", 3, "--json")
    assert code == 0, err
    records = json.loads(out)
    api = open_repository("repo").best(3)  # a relative path, as a script would give
    assert [r["trial"] for r in records] == [b.trial for b in api]
    for record, best in zip(records, api, strict=True):
        assert record["checkpoint"] is not None and Path(record["checkpoint"]).is_absolute()
        assert record["checkpoint"] == str(best.checkpoint)
        assert Path(record["checkpoint"]).is_file()
        assert record["gpu"] is None and best.gpu is None  # a CPU worker: no GPU, not "-1"
