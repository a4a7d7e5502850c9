"""Executors: where segments run. The base class, and a process pool on this machine.

``Executor`` is what the scheduler drives, and all it calls: ``submit``,
``wait``, ``kill``, ``restart``, ``shutdown`` and ``clock``. What an executor
can do is declared as class attributes (as joblib's ``ParallelBackendBase``
does), so callers ask, they do not probe with ``getattr``:

- ``supports_timeout``: ``kill`` can stop a segment that hangs;
- ``can_kill_one``: ``kill`` (or a worker's death) ends that task alone, not
  every task in flight (Dask with nannies: yes; a loky pool: no, one dead
  worker breaks the whole pool);
- ``stages_data_in_repository``: workers may run on other hosts, so data they
  read must be staged on the repository's shared file system, not in /tmp.

``slots`` lists the device of each worker slot (a GPU id, a group of them such
as ``0,1``, or ``worker.HIDDEN``);
``capacity`` is how many segments run at once; ``workers_replaced`` counts the
worker processes the executor replaced on its own while its pool stayed up
(loky's memory-leak guard), each of which imports TensorFlow again.

Whoever creates an executor shuts it down: the scheduler never does (it kills
what it has in flight when it stops on an error, nothing more), so one executor
can serve several runs. ``ParallelHyperband`` shuts down the ``LocalExecutor``
it creates itself, not one it was given.

``LocalExecutor`` wraps joblib's loky process pool: workers are reused across
trials (TensorFlow is imported once per worker), never time out while the
reducer thinks, and each one is pinned to one GPU, or to one disjoint group of
``gpus_per_trial`` GPUs, by the initializer ``worker.pin``. A worker that
dies breaks the pool; ``restart`` builds a new one and the scheduler resubmits
what was in flight. ``DaskExecutor`` (``phobbit.execution.dask``) runs past one
machine, ``SimulatedExecutor`` (``phobbit.execution.simulated``) on a virtual clock.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent import futures as _futures
from concurrent.futures import FIRST_COMPLETED, Future
from typing import TYPE_CHECKING, Any

from phobbit.core.units import check_int
from phobbit.errors import InputError
from phobbit.execution.worker import HIDDEN, pin

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations only, so 3.10 runs

    from joblib.externals.loky import ProcessPoolExecutor

log = logging.getLogger(__name__)


def parse_gpus(gpus: str | int | Sequence[int] | None) -> list[int] | None:
    """GPU ids from ``"0,1,2"``, an int or a list; None or empty means no GPUs.

    Raises:
        InputError: for a malformed list, a negative or repeated id, or (when
            this machine can tell how many GPUs it has) an id that does not exist.
    """
    if gpus is None:
        return None
    if isinstance(gpus, str):
        text = gpus.strip()
        if not text:
            return None
        if not re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
            raise InputError(f"gpus {gpus!r} is malformed; give GPU ids like 0,1,2,3")
        ids = [int(part) for part in text.split(",")]
    elif isinstance(gpus, int) and not isinstance(gpus, bool):
        ids = [gpus]
    else:
        ids = list(gpus)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise InputError(f"gpus {gpus!r} must be a list of integer GPU ids")
    if not ids:
        return None
    if any(i < 0 for i in ids):
        raise InputError(f"gpus {ids} holds a negative id; GPU ids start at 0")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise InputError(
            f"GPU id {repeated[0]} is listed twice in {ids}; "
            "use jobs_per_gpu to run several trials on one GPU"
        )
    count = visible_gpu_count()
    if count is not None and max(ids) >= count:
        raise InputError(
            f"GPU id {max(ids)} does not exist: this machine has {count} GPU(s), ids 0-{count - 1}"
        )
    return ids


def gpu_groups(gpus: Sequence[int] | None, gpus_per_trial: int = 1) -> list[str]:
    """The devices of the workers' GPU groups: ``[0, 1, 2, 3]`` by 2 is ``["0,1", "2,3"]``.

    Each group is what one worker's ``CUDA_VISIBLE_DEVICES`` holds: consecutive ids
    of ``gpus`` in their order, no id in two groups. None or empty gives no group.

    Raises:
        InputError: for a ``gpus_per_trial`` below 1, above 1 without GPUs, or one that
            does not divide the GPUs into disjoint groups, naming the GPUs left over.
    """
    check_int("gpus_per_trial", gpus_per_trial, minimum=1)
    if not gpus:
        if gpus_per_trial > 1:
            raise InputError(
                f"gpus_per_trial {gpus_per_trial} needs gpus: give {gpus_per_trial} GPU ids "
                "per worker (gpus 0,1,2,3 makes two workers of two), or gpus_per_trial 1"
            )
        return []
    ids = list(gpus)
    left = len(ids) % gpus_per_trial
    if left:
        fits = [n for n in range(1, len(ids) + 1) if len(ids) % n == 0]
        raise InputError(
            f"gpus {','.join(map(str, ids))} do not split into disjoint groups of "
            f"gpus_per_trial {gpus_per_trial}: {len(ids)} GPUs leave {left} over, and no "
            f"GPU may serve two trials; give a multiple of {gpus_per_trial} GPU ids, or "
            f"gpus_per_trial {' or '.join(map(str, fits))}"
        )
    return [
        ",".join(str(i) for i in ids[start : start + gpus_per_trial])
        for start in range(0, len(ids), gpus_per_trial)
    ]


# A local pool runs at most this many workers per core. One per core is the default and
# what CPU training can use; a few more hide a worker's data loading or start-up, and GPU
# workers mostly wait on their GPU. Past it, each extra worker is one more process with
# its own Keras (hundreds of MB) sharing the same cores, and an absurd count (--jobs
# 100000) would spawn for minutes and train nothing.
WORKERS_PER_CORE = 4


def most_local_workers() -> int:
    """The most workers a local pool runs on this machine: ``WORKERS_PER_CORE`` per core."""
    return WORKERS_PER_CORE * (os.cpu_count() or 1)


def check_worker_count(
    gpus: Sequence[int] | None, jobs_per_gpu: int, n_jobs: int | None, gpus_per_trial: int = 1
) -> None:
    """Refuses a local pool of more workers than this machine can run.

    The workers are ``len(gpus) // gpus_per_trial * jobs_per_gpu`` with GPUs, else
    ``n_jobs`` (None: one per core, always allowed).

    Raises:
        InputError: naming the count asked for, the cores (``os.cpu_count()``) and
            the most that may be asked for.
    """
    cores, most = os.cpu_count() or 1, most_local_workers()
    if gpus:
        groups = max(1, len(gpus) // gpus_per_trial)
        workers = groups * jobs_per_gpu
        asked = f"{len(gpus)} GPU(s) x jobs_per_gpu {jobs_per_gpu:,}"
        if gpus_per_trial > 1:
            asked = f"{groups} GPU group(s) of {gpus_per_trial} x jobs_per_gpu {jobs_per_gpu:,}"
        fix = f"jobs_per_gpu {max(1, most // groups):,} or fewer"
    else:
        workers = cores if n_jobs is None else n_jobs
        asked = f"n_jobs {workers:,}"
        fix = f"n_jobs {most:,} or fewer (None: one per core)"
    if workers > most:
        raise InputError(
            f"{asked} makes {workers:,} workers, more than this machine can run: it has "
            f"{cores} core(s) (os.cpu_count()) and a local pool runs at most "
            f"{WORKERS_PER_CORE} workers per core ({most:,}), each a process with its own "
            f"Keras; give {fix}"
        )


def visible_gpu_count() -> int | None:
    """How many NVIDIA GPUs this machine has, without touching CUDA; None if it cannot tell."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


class Executor(ABC):
    """Where segments run: what the scheduler calls, and what it may count on.

    Subclasses set ``slots`` and the capabilities below, and implement
    ``submit``, ``kill``, ``restart`` and ``shutdown``; ``wait`` and ``clock``
    are real time by default (a simulated executor overrides both).
    """

    supports_timeout: bool = False
    """Whether ``kill`` can stop a segment that hangs."""
    can_kill_one: bool = False
    """Whether ``kill``, or a worker's death, ends that task alone and not all in flight."""
    stages_data_in_repository: bool = False
    """Whether workers may sit on other hosts: data goes beside the repository, not in /tmp."""
    fifo_queue: bool = False
    """Whether a task submitted while every worker is busy waits in one queue for the
    next free worker (the scheduler then keeps a segment queued ahead); elsewhere it
    could wait behind a long segment on a busy worker (as Dask itself places it)."""

    slots: list[str]
    """The device of each worker slot: a GPU id, a group (``0,1``), or ``worker.HIDDEN``."""
    workers_replaced: int = 0
    """Worker processes replaced by the executor itself, not after a crash or a kill."""

    @property
    def capacity(self) -> int:
        """How many segments run at once."""
        return len(self.slots)

    @property
    def gpus_per_trial(self) -> int:
        """GPUs each segment trains on: the ids of one slot (``0,1`` is 2); 1 on the CPU."""
        return len(self.slots[0].split(",")) if self.slots else 1

    def start(self, preload: Sequence[str] = ()) -> None:
        """Starts the workers now, ahead of the first ``submit``; a hint, by default ignored.

        The driver calls it before it checks its input, so that the workers' start-up
        and framework import overlap that check instead of following it.

        Args:
            preload: modules each worker imports as it starts (``("keras",)``), after its
                pinning: an import that fails is left for the first task to meet.
        """
        return  # an executor whose workers are up already (Dask) or simulated: nothing to do

    @abstractmethod
    def submit(
        self, fn: Callable[..., Any], *args: Any, prefer: tuple[str, int] | None = None
    ) -> Future:
        """Runs ``fn(*args)`` on a worker; the future holds its result or exception.

        Args:
            prefer: the worker, as ``(host, pid)``, that should run it if it can:
                the scheduler names the free worker that holds the segment's
                model warm (``phobbit.execution.warm``). A hint; any worker may run it.

        Raises:
            BrokenProcessPool: when a worker died while idle; ``restart`` first.
        """

    def wait(
        self,
        futures: Iterable[Future],
        timeout: float | None = None,
        return_when: str = FIRST_COMPLETED,
    ) -> tuple[set[Future], set[Future]]:
        """(done, not done) once one of ``futures`` is done (or all, with ``ALL_COMPLETED``).

        Returns early after ``timeout`` seconds of ``clock``; None waits for ever.
        """
        done, not_done = _futures.wait(futures, timeout=timeout, return_when=return_when)
        return set(done), set(not_done)

    @abstractmethod
    def kill(self, futures: Collection[Future]) -> None:
        """Ends the tasks of ``futures``, and others too unless ``can_kill_one``.

        Every future it ends is done (with an exception) once ``wait`` returns it.
        """

    @abstractmethod
    def restart(self) -> None:
        """Makes a pool that a dead worker broke usable again (what ran there is lost)."""

    @abstractmethod
    def shutdown(self, kill: bool = False) -> None:
        """Stops the workers, the owner's call; ``kill`` ends running tasks at once."""

    def clock(self) -> float:
        """Monotonic seconds, which segment timeouts are counted in."""
        return time.monotonic()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(kill=exc[0] is not None)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignores SIGINT in the driver for the instant loky starts a pool's workers.

    A Ctrl-C on a terminal goes to the whole process group, workers included,
    and one that reaches a worker still importing (before ``pin`` ignores it)
    kills it with a traceback. An ignored signal stays ignored across exec, and
    Python then installs no KeyboardInterrupt handler: the workers are born
    ignoring it. loky starts them in this thread, from the first ``submit`` of a
    pool (a signal mask would not do: the child does not keep it). A Ctrl-C
    during those milliseconds is dropped; a second one stops the run.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _pin_with_memory_limit(
    memory_limit: int | None, preload: Sequence[str], *pin_args: Any
) -> None:
    """The pool's initializer: sets loky's memory-leak guard in this worker, pins it, then
    imports ``preload`` (the framework: 5-10 s of TensorFlow, now, in every worker at once,
    not on each worker's first task, one after the other while the driver waits) and
    freezes what that import made (``gc.freeze``: no collection walks it again).

    After each task, a loky worker whose memory grew by more than
    ``_MAX_MEMORY_LEAK_SIZE`` (300 MB) since its first task exits, and a new
    one (which imports TensorFlow again, 10-50 s) takes its place. A TensorFlow
    worker's memory grows by design (traced functions, allocator pools), so the
    guard is off unless the user sets a limit. The guard reads the module's
    global after every task, so setting it here, in the worker, is enough.
    """
    from joblib.externals.loky import process_executor

    process_executor._MAX_MEMORY_LEAK_SIZE = sys.maxsize if memory_limit is None else memory_limit
    pin(*pin_args)
    for module in preload:
        # After pin: CUDA_VISIBLE_DEVICES and the thread caps are set before the import.
        # Never raises (that would break the pool): the first task meets the error itself.
        try:
            importlib.import_module(module)
        except BaseException as exc:  # noqa: BLE001
            log.warning("worker %d could not import %s: %s", os.getpid(), module, exc)
    # What the imports made (TensorFlow's ~450,000 objects) lives as long as the worker:
    # moved out of the collector's reach, it is not traversed by every full collection,
    # the first of which loky forces right after the worker's first task (its memory
    # baseline), 0.25-0.6 s of the first check, discovery or segment before this.
    gc.freeze()


class LocalExecutor(Executor):
    """A loky process pool on this machine with one worker per slot.

    Args:
        gpus: GPU ids; each group of ``gpus_per_trial`` of them gets ``jobs_per_gpu``
            worker slots. None runs on the CPU.
        jobs_per_gpu: trials run at once on one GPU, or one group of them (TensorFlow's
            memory growth is turned on when it is above 1).
        n_jobs: CPU workers when there are no GPUs (default: the number of cores).
            The workers, ``n_jobs`` or GPUs x ``jobs_per_gpu``, are at most
            ``WORKERS_PER_CORE`` (4) per core of this machine.
        worker_memory_limit: bytes a worker's memory may grow past its size after
            its first segment before it is replaced by a fresh process (loky's
            memory-leak guard); None (the default) never replaces a worker for its
            memory. A replaced worker is counted (``workers_replaced``) and logged.
        env: more environment variables for the workers, set before anything
            imports Keras (``{"KERAS_BACKEND": "jax"}``).
        stderr_path: a file the workers' standard error goes to (TensorFlow's
            start-up lines, warnings); None leaves it on the driver's.
        gpus_per_trial: GPUs each worker is pinned to, a disjoint group of consecutive
            ids of ``gpus`` (``gpu_groups``); its models train on all of them
            (``tf.distribute.MirroredStrategy``). ``gpus`` must split into such groups.

    Example:
        >>> executor = LocalExecutor(gpus=[0, 1])   # two workers, one per GPU
        >>> executor.slots
        ['0', '1']
        >>> LocalExecutor(gpus=[0, 1, 2, 3], gpus_per_trial=2).slots
        ['0,1', '2,3']
    """

    supports_timeout = True  # ``kill`` can end a hung segment (with the whole pool)
    can_kill_one = False  # one dead loky worker breaks the whole pool
    stages_data_in_repository = False  # its workers share this host's /tmp
    fifo_queue = True  # loky's call queue: the next free worker takes the oldest task

    def __init__(
        self,
        gpus: Sequence[int] | None = None,
        jobs_per_gpu: int = 1,
        n_jobs: int | None = None,
        worker_memory_limit: int | None = None,
        env: Mapping[str, str] | None = None,
        stderr_path: str | None = None,
        gpus_per_trial: int = 1,
    ) -> None:
        check_int("worker_memory_limit", worker_memory_limit, minimum=1, allow_none=True)
        check_int("jobs_per_gpu", jobs_per_gpu, minimum=1)
        check_int("n_jobs", n_jobs, minimum=1, allow_none=True)
        groups = gpu_groups(gpus, gpus_per_trial)
        check_worker_count(gpus, jobs_per_gpu, n_jobs, gpus_per_trial)
        cores = os.cpu_count() or 1
        if groups:
            self.slots = [group for group in groups for _ in range(jobs_per_gpu)]
        else:
            self.slots = [HIDDEN] * (n_jobs or cores)
        self.threads = max(1, cores // len(self.slots))
        self.allow_growth = jobs_per_gpu > 1
        self.worker_memory_limit = worker_memory_limit
        self.workers_replaced = 0
        self.env, self.stderr_path = dict(env or {}), stderr_path
        self._lease_dir: str | None = None
        self._preload: tuple[str, ...] = ()
        self._pool: ProcessPoolExecutor | None = None
        self._pids: set[int] = set()  # the worker processes of this pool seen so far
        self._pending: set[Future] = set()  # tasks submitted and not done yet

    def _start(self) -> ProcessPoolExecutor:
        from joblib.externals.loky import ProcessPoolExecutor

        # A fresh lease folder per pool: slots of a broken pool's dying workers
        # cannot be mistaken for taken ones.
        self._lease_dir = tempfile.mkdtemp(prefix="phobbit-slots-")
        log.info("starting a pool of %d workers on %s", self.capacity, self.slots)
        return ProcessPoolExecutor(
            max_workers=self.capacity,
            timeout=None,  # idle workers stay: no TensorFlow re-import after a reducer pause
            initializer=_pin_with_memory_limit,
            # Workers end with their driver: a killed driver's orphans must not train on.
            initargs=(
                self.worker_memory_limit,
                self._preload,
                self.slots,
                self._lease_dir,
                self.threads,
                self.allow_growth,
                os.getpid(),
                self.env,
                self.stderr_path,
            ),
        )

    def start(self, preload: Sequence[str] = ()) -> None:
        """Starts the pool's workers now, each importing ``preload`` once pinned.

        loky spawns a pool's workers on its first task, so a no-op task starts them.
        A pool that breaks later is replaced with the same ``preload``.
        """
        self._preload = tuple(preload)
        if self._pool is None:
            self.submit(os.getpid)

    def submit(
        self, fn: Callable[..., Any], *args: Any, prefer: tuple[str, int] | None = None
    ) -> Future:
        """Runs ``fn(*args)`` in a pinned worker.

        ``prefer`` is not passed on: loky's one shared queue has no per-worker
        placement. The scheduler names a worker only when it has just come back
        free with every other one busy, so that worker is the one that takes it.
        """
        if self._pool is None:
            with _sigint_ignored():  # a pool's first submit starts its workers
                self._pool = self._start()
                future = self._pool.submit(fn, *args)
            self._pids = self._worker_pids()
        else:
            future = self._pool.submit(fn, *args)
            self._count_replaced()
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def wait(
        self,
        futures: Iterable[Future],
        timeout: float | None = None,
        return_when: str = FIRST_COMPLETED,
    ) -> tuple[set[Future], set[Future]]:
        """(done, not done) once one of ``futures`` is done; see ``Executor.wait``."""
        outcome = super().wait(futures, timeout, return_when)
        self._count_replaced()
        return outcome

    def _worker_pids(self) -> set[int]:
        # loky keeps its live workers by pid; no public call lists them.
        processes = getattr(self._pool, "_processes", None) or {}
        try:
            return set(processes)
        except RuntimeError:  # loky's manager thread changed it meanwhile: look next time
            return set(self._pids)

    def _count_replaced(self) -> None:
        """Counts and logs the workers loky started in place of live-pool workers that left."""
        pids = self._worker_pids()
        new = pids - self._pids
        if new and self._pids:
            self.workers_replaced += len(new)
            limit = self.worker_memory_limit
            why = "" if limit is None else f" (worker_memory_limit={limit} bytes)"
            log.warning(
                "loky replaced %d worker process(es) while the pool ran (%d so far), e.g. "
                "for its memory-leak guard%s; each new one imports TensorFlow again",
                len(new),
                self.workers_replaced,
                why,
            )
        self._pids |= pids

    def restart(self) -> None:
        """Replaces a broken pool with a new one (its dead workers freed their slots)."""
        log.warning("worker pool broken or killed: its workers are replaced")
        self.shutdown(kill=True)

    def kill(self, futures: Collection[Future]) -> None:
        """Ends the workers running ``futures`` (segments past their timeout).

        Killing one loky worker breaks the whole pool, so every worker is killed
        and every future in flight fails; the next ``submit`` starts a new pool.
        """
        self.restart()

    def shutdown(self, kill: bool = False) -> None:
        """Stops the workers; ``kill`` ends running trials at once (Ctrl-C, a broken pool).

        Workers with no task of the pool's left are ended at once too, not asked to exit:
        everything they did is recorded (a segment's row and checkpoints are written
        before its future is done) and their warm models are of no further use, while
        a worker's own exit with TensorFlow loaded (its atexit hooks, the interpreter's
        teardown) takes seconds, 12 s on a loaded machine, that the caller would wait.
        Either way every worker has ended when this returns: none is left running.
        """
        pool, self._pool = self._pool, None
        self._pids = set()
        if pool is not None:
            idle = not any(not future.done() for future in list(self._pending))
            pool.shutdown(wait=True, kill_workers=kill or idle)
        self._pending = set()
        if self._lease_dir is not None:
            shutil.rmtree(self._lease_dir, ignore_errors=True)
            self._lease_dir = None
