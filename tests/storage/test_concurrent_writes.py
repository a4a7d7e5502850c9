"""Many processes appending to one results.csv at once, read all the while."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

from conftest import run_settings
from helpers import subprocess_env

from phobbit.core.records import SegmentResult
from phobbit.storage.repository import HEADER, Repository, decode_row

WRITERS, ROWS = 16, 500


def row(writer: int, i: int) -> SegmentResult:
    return SegmentResult(
        iteration=writer,
        s=2,
        id=i,
        rung=0,
        start_epoch=0,
        epochs=3,
        val_loss=0.25 + i,
        last_val_loss=0.5,
        status="ok",
        error="",
        hparams={"writer": writer, "i": i, "s": 'a,"b"\n\u00e9'},
        gpu="0",
        pid=os.getpid(),
        host="box",
        start=1.0,
        end=2.0,
    )


def _writer(
    path: str,
    writer: int,
    go: multiprocessing.synchronize.Event,
    second_half: multiprocessing.synchronize.Event,
) -> None:
    repository = Repository(path)
    go.wait()
    for i in range(ROWS):
        if i == ROWS // 2:
            # Until the reader has read twice: however slow it is, it overlaps the writers.
            second_half.wait(timeout=120)
        repository.append(row(writer, i))


def test_sixteen_writers_append_8000_rows_none_torn_lost_or_doubled_while_read(
    repo: Path,
) -> None:
    Repository(repo).create(run_settings(9))
    context = multiprocessing.get_context("fork")
    go, second_half = context.Event(), context.Event()
    writers = [
        context.Process(target=_writer, args=(str(repo), w, go, second_half))
        for w in range(WRITERS)
    ]
    for process in writers:
        process.start()
    go.set()
    reads, seen, statuses = 0, 0, []
    status = importlib.util.find_spec("phobbit.cli.commands") is not None
    while any(p.is_alive() for p in writers):
        rows = list(Repository(repo).iter_results())  # what `phobbit status` reads
        assert len(rows) >= seen and all(r.s == 2 and r.epochs == 3 for r in rows)
        seen, reads = len(rows), reads + 1
        if status and not statuses:  # `phobbit status` itself, once the CLI is merged
            statuses.append(
                subprocess.run(
                    [sys.executable, "-m", "phobbit", "status", str(repo)],
                    env=subprocess_env(),
                    capture_output=True,
                )
            )
        if reads >= 2:
            second_half.set()
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    assert reads > 1, "the reader never overlapped the writers"
    for done in statuses:
        assert done.returncode == 0, done.stderr.decode()
    lines = Repository(repo).results_path.read_bytes().splitlines(keepends=True)
    assert lines[0] == HEADER.encode() and len(lines) == 1 + WRITERS * ROWS
    decoded = [decode_row(line) for line in lines[1:]]
    assert all(r is not None for r in decoded), "a row did not parse"
    keys = [(r.iteration, r.id) for r in decoded]
    assert sorted(keys) == [(w, i) for w in range(WRITERS) for i in range(ROWS)]
    assert len(Repository(repo).results()) == WRITERS * ROWS


def test_a_reader_skips_a_row_torn_anywhere_and_never_fails(repo: Path) -> None:
    repository = Repository(repo)
    repository.create(run_settings(9))
    repository.results_path.write_bytes(HEADER.encode()[:10])  # the first write, cut
    assert list(repository.iter_results()) == []
    repository.results_path.unlink()
    repository.append(row(0, 0))
    whole = repository.results_path.read_bytes()
    torn = repository.results_path.read_bytes()[len(HEADER) :].replace(b"0.25", b"0.75")
    for cut in range(1, len(torn) + 1):  # every point where a kill can tear the next row
        repository.results_path.write_bytes(whole + torn[:cut])
        assert [r.val_loss for r in repository.iter_results()] == [0.25]
    repository.results_path.write_bytes(whole + "\u00e9".encode()[:1] + b"\n")  # half a character
    assert [r.val_loss for r in repository.iter_results()] == [0.25]
