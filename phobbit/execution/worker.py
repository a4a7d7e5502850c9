"""The worker side: pinning a process to its GPUs, and running one segment of a configuration.

Everything here runs in a worker process. ``pin`` is the pool's initializer: it
takes a free *slot* (a GPU id, a disjoint group of them such as ``0,1`` when
trials take several GPUs, or the CPU) by an OS file lock that the process
holds until it dies, so a replacement worker finds the slot of the one it
replaces free, and sets ``CUDA_VISIBLE_DEVICES`` before anything imports
TensorFlow. ``train_segment`` trains one segment and appends its row to the
repository.

A pool worker whose driver died (SIGKILL, a crash) stops within a fraction of a
second instead of finishing a segment nobody waits for, and one that starts
after its driver died exits at once: the resumed driver trains that segment
again from its last epoch checkpoint. Should a stale worker get as far as a
write anyway (it was stopped with SIGSTOP and continued later), the fence
(``phobbit.storage.fence``) refuses it and the worker ends.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import math
import os
import re
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from phobbit.core import reducer
from phobbit.core.objective import Objective, unknown_metric
from phobbit.core.records import STOPPED_EARLY, EpochRow, Segment, SegmentResult, Status
from phobbit.errors import FatalError, InputError, StaleDriverError, StorageError
from phobbit.execution import warm
from phobbit.execution.streams import guard_worker_stdout
from phobbit.execution.trainable import (
    ChecksInput,
    Losses,
    Trainable,
    note_of,
    objective_of,
    training,
)
from phobbit.execution.worker_state import HIDDEN, worker_state  # noqa: F401 - HIDDEN re-exported
from phobbit.storage.repository import Repository, this_host

SLOT_WAIT_S = 30.0
PARENT_POLL_S = 0.05
MAX_ERROR_CHARS = 500
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
STALE_EXIT = 75  # the exit code of a pool worker whose driver is gone or was replaced

log = logging.getLogger(__name__)


def thread_environment(threads: int) -> dict[str, str]:
    """Variables that cap a worker's CPU threads (BLAS, OpenMP, TensorFlow)."""
    value = str(max(1, threads))
    names = (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "TF_NUM_INTRAOP_THREADS",
    )
    env = {name: value for name in names}
    env["TF_NUM_INTEROP_THREADS"] = "2" if threads > 1 else "1"
    return env


def pin(
    slots: list[str],
    lease_dir: str,
    threads: int,
    allow_growth: bool,
    driver_pid: int | None = None,
    env: dict[str, str] | None = None,
    stderr_path: str | None = None,
) -> None:
    """Pool initializer: lease a free slot and pin this process to its device.

    Args:
        slots: one device per worker slot: a GPU id, a group of them (``"0,1"``,
            which ``CUDA_VISIBLE_DEVICES`` takes as it is), or ``HIDDEN`` for a CPU worker.
        lease_dir: a folder of this pool's lease files.
        threads: CPU threads this worker may use.
        allow_growth: let TensorFlow grow GPU memory (several jobs share a GPU).
        driver_pid: the pid of the driver that started this pool worker: the
            worker exits at once if its parent is not (or no longer) that
            process, and ignores SIGINT, which a Ctrl-C on a terminal sends to
            the whole process group: the driver alone decides to stop, and
            kills its workers. None for a process that may be the driver (a
            Dask worker thread) or outlives it on purpose.
        env: more variables to set before anything imports Keras (``KERAS_BACKEND``).
        stderr_path: a file that this worker's standard error (file descriptor 2)
            is appended to, so that TensorFlow's start-up lines and warnings of
            every worker stay off the driver's display; None leaves it as it is.

    It never raises: an exception in an initializer breaks the whole pool. A
    worker that found no slot records why in its state (``worker_state``), and
    ``train_segment`` reports it.
    """
    state = worker_state()
    try:
        if driver_pid is not None:
            # Compared with the pid the driver passed, not with getppid() read now: a
            # worker that starts after its driver died has already been re-parented.
            if os.getppid() != driver_pid:
                os._exit(STALE_EXIT)
            _watch_parent(driver_pid)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            # The driver's standard output, inherited: a reader that left (`| head`) must
            # not fail the trials that print (model.summary(), verbose=1).
            guard_worker_stdout()
            state.driver = driver_pid
        os.environ.update(thread_environment(threads))
        os.environ.update(env or {})
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if stderr_path is not None:
            _redirect_stderr(stderr_path)
        if allow_growth:
            os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        deadline = time.monotonic() + SLOT_WAIT_S
        while True:
            for index, device in enumerate(slots):
                fd = os.open(os.path.join(lease_dir, f"slot-{index}.lock"), os.O_CREAT | os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                # The lock lives as long as this process: a dead worker frees its slot.
                os.environ["CUDA_VISIBLE_DEVICES"] = device
                state.slot, state.device, state.slot_fd = index, device, fd
                log.info("worker %d pinned to slot %d (device %s)", os.getpid(), index, device)
                return
            if time.monotonic() > deadline:
                state.pin_error = f"no free slot among {len(slots)} after {SLOT_WAIT_S:.0f} s"
                log.warning("worker %d not pinned: %s", os.getpid(), state.pin_error)
                return
            time.sleep(0.05)
    except BaseException as exc:  # noqa: BLE001 - must never break the pool
        state.pin_error = f"{type(exc).__name__}: {exc}"
        log.warning("worker %d not pinned: %s", os.getpid(), state.pin_error)


def _redirect_stderr(path: str) -> None:
    """Appends this process's file descriptor 2 to ``path``; leaves it as it is on failure.

    TensorFlow's C++ start-up lines (absl, cuInit) are written before its log level
    is read, so only the descriptor itself silences them. A log that cannot be
    opened is no reason to lose the worker.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        log.warning("worker %d keeps its stderr: cannot open %s (%s)", os.getpid(), path, exc)
        return
    os.dup2(fd, 2)
    os.close(fd)


# TensorFlow's start-up lines that say nothing about the user's run: absl writes them
# before it reads any log level (TF_CPP_MIN_LOG_LEVEL cannot hide them), once per import.
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called"
# absl's prefix: severity, MMDD, a time (TensorFlow 2.21 writes 00:00:<epoch seconds>), the
# thread, file:line].
_ABSL_LINE = re.compile(rb"^[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] (.*)$")
_STARTUP_NOISE = (
    b"oneDNN custom operations are on",
    b"This TensorFlow binary is optimized to use available CPU instructions",
    b"Unable to register cuDNN factory",
    b"Unable to register cuFFT factory",
    b"Unable to register cuBLAS factory",
    b"computation placer already registered",
    b"TF-TRT Warning: Could not find TensorRT",
)
# Expected where GPUs are hidden (CPU workers); on a GPU worker they are news and stay.
_NO_GPU_NOISE = (
    b"Could not find cuda drivers on your machine",
    b"failed call to cuInit",
)


def without_startup_noise(log: bytes, gpus_hidden: bool) -> bytes:
    """``log`` (the workers' standard error) without TensorFlow's start-up lines.

    What the user's code printed or warned, tracebacks and every line not known
    to be start-up noise stay, in order. ``gpus_hidden``: the workers ran on the
    CPU with GPUs hidden, so "no CUDA driver" lines are expected there too.
    """
    noise = _STARTUP_NOISE + (_NO_GPU_NOISE if gpus_hidden else ())
    kept = []
    for line in log.splitlines(keepends=True):
        if line.startswith(_ABSL_PREAMBLE):
            continue
        match = _ABSL_LINE.match(line.rstrip(b"\r\n"))
        if match is not None and any(text in match.group(1) for text in noise):
            continue
        kept.append(line)
    return b"".join(kept)


def _watch_parent(parent: int) -> None:
    """Ends this worker once its parent (the driver, pid ``parent``) has died.

    A killed driver's workers would otherwise train on as orphans while the
    resumed driver trains the same segments.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(STALE_EXIT)

    threading.Thread(target=watch, name="phobbit-parent-watch", daemon=True).start()


def pinned_device() -> str:
    """The device this worker is pinned to (a GPU id, a group ``0,1``, ``-1`` for the CPU),
    or ``''``."""
    return worker_state().device


class WorkerNotPinnedError(RuntimeError):
    """The worker found no free slot; the segment goes back to the scheduler."""


# ANSI escape sequences: CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ESC \\), and the
# other escapes (ESC, intermediate bytes, a final byte); the 8-bit forms of CSI and OSC too.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|(?:\x1b\]|\x9d).*?(?:\x07|\x1b\\|\x9c|$)"  # OSC: titles, hyperlinks
    r"|\x1b[ -/]*[0-~]?",  # any other escape (ESC c, ESC ( B, ESC 7), or a lone ESC
    re.DOTALL,
)
# Control characters that are left once the escapes are gone, whitespace aside (a tab or a
# newline becomes a space when the line is joined): C0, DEL and C1.
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` without terminal escapes (ANSI CSI and OSC sequences) or control characters.

    Keras and TensorFlow colour their messages (``\\x1b[1m`` ... ``\\x1b[0m``); written
    raw into a row or onto a terminal, such a sequence reformats the display, and in a
    CSV or a log it is noise. Whitespace is kept for the caller to join.
    """
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def one_line(exc: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """An exception as one line of at most ``limit`` characters: its type and message,
    without terminal escapes or control characters (``printable``)."""
    text = " ".join(printable(str(exc)).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk or the quota is full (h5py and TensorFlow wrap errno)."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return True
    text = str(exc)
    return any(os.strerror(code) in text for code in DISK_FULL)


def _failure(losses: list[float], segment: Segment, stopped: bool = False) -> str:
    """Why the losses a trainable returned fail the segment, or ``''``.

    A segment a callback stopped early returns fewer losses (at least one).
    """
    expected = segment.epochs - segment.start_epoch
    if len(losses) != expected and not (stopped and 0 < len(losses) < expected):
        return f"trainable returned {len(losses)} val losses for {expected} epochs"
    for epoch, value in enumerate(losses, start=segment.start_epoch + 1):
        if not math.isfinite(value):
            return f"val loss is {value} at epoch {epoch}; the model diverged"
    return ""


def _history(returned: object, segment: Segment, losses: list[float]) -> list[dict] | None:
    """Every epoch's logs of the configuration, 1 .. the last trained, when the trainable
    gave them whole (``Losses.history``); else None."""
    history = returned.history if isinstance(returned, Losses) else None
    trained = segment.start_epoch + len(losses)
    # Longer when the checkpoint held later epochs (a later rung's): the segment's end is here.
    if history is None or len(history) < trained:
        return None
    return [numbers_of(logs) for logs in history[:trained]]


def numbers_of(logs: Mapping[str, Any]) -> dict[str, float]:
    """An epoch's logs as plain floats (Keras may give tensors); what is no number (a
    trainable's own logs may hold a note, a matrix) is left out, so that no record or
    display of it fails a segment that trained."""
    found = {}
    for name, value in logs.items():
        try:
            found[str(name)] = float(value)
        except (TypeError, ValueError):
            continue
    return found


def _scored(
    objective: Objective, history: list[dict] | None, segment: Segment, losses: list[float]
) -> tuple[float | None, float | None, str]:
    """(objective value, val loss) at the configuration's best epoch, and an error or ``''``.

    Raises:
        InputError: for an objective the model does not log (bad input: the run stops).
    """
    if history is None:
        if not objective.is_val_loss:
            return (
                None,
                None,
                (
                    f"trainable reports no per-epoch logs (Losses.history), which objective "
                    f"{objective.name!r} needs"
                ),
            )
        best = reducer.best_so_far(losses, segment.prior_best)
        return best, best, ""
    trained = history[segment.start_epoch :]
    if trained and all(objective.name not in logs for logs in trained):
        raise InputError(unknown_metric(objective, list(trained[0])))
    for epoch, logs in enumerate(trained, start=segment.start_epoch + 1):
        value = objective.value(logs)
        if not math.isfinite(value):
            return None, None, f"{objective.name} is {value} at epoch {epoch}; the model diverged"
    best = objective.best_epoch(history)
    if best is None:
        return None, None, f"no epoch scored a finite {objective.name}"
    return objective.value(history[best - 1]), history[best - 1]["val_loss"], ""


def _scoring_logs(objective: Objective, history: list[dict] | None) -> dict[str, float]:
    """What the configuration's scoring epoch logged, for the displays; ``{}`` without logs."""
    best = None if history is None else objective.best_epoch(history)
    return {} if best is None else dict(history[best - 1])


def _epoch_rows(
    segment: Segment, history: list[dict] | None, losses: list[float]
) -> list[EpochRow]:
    """The ``epochs.csv`` rows of the epochs a segment trained (its val losses alone when
    the trainable gave no logs)."""
    first = segment.start_epoch + 1
    if history is None:
        logs = [{"val_loss": v} for v in losses]
    else:
        logs = history[segment.start_epoch :]
    return [
        EpochRow(segment.iteration, segment.s, segment.id, segment.rung, epoch, metrics)
        for epoch, metrics in enumerate(logs, start=first)
    ]


def train_segment(
    trainable: Trainable, segment: Segment, repository: str, fence_token: str | None = None
) -> SegmentResult:
    """Trains one segment and appends its row to ``repository``'s results.

    Anything user code raises, ``KeyboardInterrupt`` and ``SystemExit``
    included, or a NaN or infinite loss, fails the segment: its row says why in
    one line. Only the driver's own Ctrl-C stops a run.

    Args:
        trainable: what trains the segment.
        segment: the segment.
        repository: the repository folder.
        fence_token: the fencing token of the driver that handed the segment
            out: its row and checkpoints are written only while that driver
            holds the repository. None writes unfenced (tests, tools).

    Raises:
        WorkerNotPinnedError: when the worker found no free slot.
        FatalError: bad input only a worker can see (what a dataset function returns).
        StorageError: when the disk is full, which is no fault of the trial:
            the run stops, and resumes once there is space again.
        StaleDriverError: when the driver was replaced, in a process that is not a
            pool worker of its own (a pool worker exits instead: nobody waits for it).
    """
    state = worker_state()
    if state.pin_error is not None:
        raise WorkerNotPinnedError(state.pin_error)
    store = Repository(Path(repository))
    warm.process_cache().serve(fence_token)
    try:
        with state.fences.segment(store, fence_token):
            result, epochs = _train(trainable, segment)
            store.append(result, fence=fence_token, epochs=epochs)
    except StaleDriverError:
        if state.driver is not None:
            # A worker of a driver that is gone or was replaced: what it trained must
            # not be written, and nobody waits for its result.
            log.warning("segment %s refused its write: the driver was replaced", segment.key)
            os._exit(STALE_EXIT)
        raise
    return result


def check_input(trainable: ChecksInput, hparams: dict[str, Any]) -> None:
    """Runs ``trainable``'s input check (``ChecksInput.preflight``) in this worker.

    Raises:
        WorkerNotPinnedError: when the worker found no free slot.
        InputError: when the data does not fit the model: the run stops as bad input.
    """
    state = worker_state()
    if state.pin_error is not None:
        raise WorkerNotPinnedError(state.pin_error)
    trainable.preflight(dict(hparams))


def _train(trainable: Trainable, segment: Segment) -> tuple[SegmentResult, list[EpochRow]]:
    """Trains ``segment``; returns its row, failed when user code raised, and the rows of
    the epochs it trained."""
    start = time.time()
    losses: list[float] = []
    error = note = ""
    objective = objective_of(trainable)
    value = val_loss = None
    history = None
    stopped = started_warm = False
    try:
        with training(segment):  # the identity its checkpoint's files carry
            returned = trainable.train(
                dict(segment.hparams), segment.checkpoint, segment.start_epoch, segment.epochs
            )
        losses, note = [float(v) for v in returned], note_of(returned)
        stopped = isinstance(returned, Losses) and returned.stopped_early
        started_warm = isinstance(returned, Losses) and returned.warm
        error = _failure(losses, segment, stopped)
        history = _history(returned, segment, losses)
        if not error:
            value, val_loss, error = _scored(objective, history, segment, losses)
    except (FatalError, StaleDriverError):
        raise  # bad input found in the worker (a dataset function's result), or fenced out
    except BaseException as exc:  # noqa: BLE001 - user code: fail the trial, not the run
        if _disk_full(exc):
            raise StorageError(
                f"no space left on the disk while training {Path(segment.checkpoint).name} "
                f"({one_line(exc)}); free some disk space, then run the same command again "
                "to resume"
            ) from None
        error = one_line(exc)
    trained = segment.start_epoch + len(losses)
    cache = warm.process_cache()
    if error:
        cache.discard(segment.checkpoint)  # what failed is no model to go on from
    if stopped and not error:  # at the segment's last epoch too: it is not promoted
        stop = (
            f"{STOPPED_EARLY} after epoch {trained} of {segment.epochs}"
            if trained < segment.epochs
            else f"{STOPPED_EARLY} at epoch {trained}, its segment's last: not promoted"
        )
        note = f"{note}; {stop}" if note else stop
    result = segment.result(
        val_loss=None if error else val_loss,
        last_val_loss=losses[-1] if losses and not error else None,
        status=Status.FAILED if error else Status.OK,
        error=error,
        gpu=pinned_device(),
        pid=os.getpid(),
        host=this_host(),
        start=start,
        end=time.time(),
        note=note,
        objective=None if error else value,
        started_warm=started_warm,
        warm_held=cache.held(),
        warm_worker=cache.owner,
        metrics={} if error else _scoring_logs(objective, history),
    )
    if result.stopped_early:
        result = dataclasses.replace(result, epochs=trained)
    return result, _epoch_rows(segment, history, losses)
