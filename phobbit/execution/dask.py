"""Past one machine: the same scheduler drives a Dask cluster (``dask.distributed``).

Each Dask worker (one thread each) is pinned to one GPU slot of its host (one
GPU, or a disjoint group of ``gpus_per_trial`` of them) the way local workers
are: a worker plugin runs ``worker.pin`` when the worker starts, before any task
imports TensorFlow, and a restarted worker leases the slot its predecessor freed.
The repository (and the staged dataset) must then sit on a file system that
every host shares.

A Dask worker runs a task in a thread, which nothing can stop; a segment past
its ``segment_timeout`` is stopped by cancelling its task and restarting its
worker process through the worker's nanny (``Client.restart_workers``), so
timeouts need workers that run under a nanny, as ``dask worker`` starts them.

What the driver waits on per segment is Dask's round trip, so the executor
cuts it short in two ways. A task sends its outcome to the client as an event
on the worker's message stream (``run_and_report``), which arrives with the
news that the task ended, instead of the client then fetching the result from
the worker (one more round trip through the scheduler). And the executor knows
which workers are idle (those whose outcome came back since it last gave them
a task): a task goes to one of them, to the one ``prefer`` names when it is
idle, and one submitted while every worker is busy is held here and handed,
from the client's event loop, to the first worker that frees (``fifo_queue``,
so the scheduler's queued segment works as with the local pool). Dask alone
would place it on a busy worker at once, behind a segment that may run long
while the queued one's timeout runs.

Example:
    >>> from dask.distributed import Client
    >>> client = Client("tcp://scheduler:8786")   # workers started with --nthreads 1
    >>> executor = DaskExecutor(client, gpus=[0, 1, 2, 3])
    >>> ParallelHyperband(my_model, hparams, "/shared/repo", dataset=data,
    ...                   executor=executor).run(R=81, eta=3)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker
from distributed.protocol import deserialize_bytes, serialize_bytes

from phobbit.errors import InputError
from phobbit.execution.executor import Executor, gpu_groups
from phobbit.execution.worker import HIDDEN, pin
from phobbit.storage.repository import this_host

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
"""How long ``connect`` tries to reach a scheduler before it gives up."""


class WorkerLostError(BrokenProcessPool):
    """A Dask worker died running the segment more often than Dask retries."""


class PinPlugin(WorkerPlugin):
    """A Dask worker plugin: pins the worker's process to a free slot of its host."""

    name = "phobbit-pin"

    def __init__(self, slots: list[str], token: str, threads: int, allow_growth: bool) -> None:
        self.slots, self.token = slots, token
        self.threads, self.allow_growth = threads, allow_growth

    def setup(self, worker: Any) -> None:
        # Leases are OS file locks, so they are per host: one folder per run on each host.
        # Not removed at a worker's teardown: the host's other workers hold leases there,
        # and a restarted worker must find their files, not a fresh folder.
        lease_dir = lease_folder(self.token)
        os.makedirs(lease_dir, exist_ok=True)
        pin(self.slots, lease_dir, self.threads, self.allow_growth)


def whoami() -> tuple[str, int]:
    """The (host, pid) of the worker process it runs in, as its segments' rows give them."""
    return this_host(), os.getpid()


def run_and_report(topic: str, key: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Runs ``fn(*args)`` in a Dask task and sends its outcome to the client as an event.

    The event rides the worker's message stream just ahead of its note that the
    task finished, so the client has the result without asking for it (a
    gather: one more round trip through the scheduler to the worker and back).
    The value is also returned, for when the event cannot be sent.
    """
    try:
        value = fn(*args)
    except BaseException as exc:  # noqa: BLE001 - sent to the client, then raised as Dask would
        _report(topic, key, False, exc)
        raise
    _report(topic, key, True, value)
    return value


def _report(topic: str, key: str, ok: bool, outcome: Any) -> None:
    # Dask's own serialisation, as for a task's result: these bytes travel only between
    # this run's client and its workers, never through the repository.
    try:
        payload = serialize_bytes(outcome)
    except Exception:  # noqa: BLE001 - it does not serialise: the client gathers it from Dask
        return
    worker = get_worker()
    worker.log_event(topic, [key, ok, payload, worker.address])


def lease_folder(token: str) -> str:
    """The folder of a Dask run's slot leases on this host."""
    return os.path.join(tempfile.gettempdir(), f"phobbit-dask-{token}")


def drop_lease_folder(token: str) -> None:
    """Removes this host's lease folder of a run (run on every worker at shutdown)."""
    shutil.rmtree(lease_folder(token), ignore_errors=True)


class DaskExecutor(Executor):
    """Runs segments on a ``dask.distributed`` cluster, one per worker thread at a time.

    Args:
        client: a connected ``dask.distributed.Client``; start its workers with
            one thread each (``--nthreads 1``), as many per host as GPU slots.
        gpus: the GPU ids of every host; each group of ``gpus_per_trial`` of them
            gets ``jobs_per_gpu`` slots. None runs on the CPU with GPUs hidden.
        jobs_per_gpu: segments trained at once on one GPU (or one group).
        gpus_per_trial: GPUs each worker is pinned to, a disjoint group of
            consecutive ids of ``gpus`` on its host, as for the local pool
            (``executor.gpu_groups``); its models train under ``MirroredStrategy``.
    """

    stages_data_in_repository = True  # workers on other hosts cannot read this host's /tmp
    fifo_queue = True  # held here while every worker is busy; the first to free takes the oldest

    def __init__(
        self,
        client: Any,
        gpus: Sequence[int] | None = None,
        jobs_per_gpu: int = 1,
        gpus_per_trial: int = 1,
    ) -> None:
        groups = gpu_groups(gpus, gpus_per_trial)  # refused before the cluster is asked
        threads = client.nthreads()
        if not threads:
            raise InputError("the Dask cluster has no workers; start some, then run again")
        if any(n != 1 for n in threads.values()):
            raise InputError(
                "Dask workers must have one thread each (dask worker --nthreads 1), "
                f"got {sorted(set(threads.values()))}"
            )
        self.client = client
        self._capacity = len(threads)
        slots = [group for group in groups for _ in range(jobs_per_gpu)]
        self.slots = slots or [HIDDEN] * self._capacity
        self._plugin = PinPlugin(self.slots, uuid.uuid4().hex[:12], 1, jobs_per_gpu > 1)
        self._topic = f"phobbit-results-{self._plugin.token}"
        self._registered = False
        # Shared by the driver's thread, the client's event loop (events) and Dask's
        # callback thread (tasks that end): every field below is read and changed under it.
        self._lock = threading.Lock()
        self._tasks: set[Any] = set()
        self._task_of: dict[Future, Any] = {}
        self._result_of: dict[str, Future] = {}  # by task key, until its outcome comes
        self._sent: set[str] = set()  # keys of tasks on a worker whose outcome has not come
        self._held: deque[_Held] = deque()  # submitted while every worker was busy
        # Workers whose task sent its outcome and that were handed nothing since, oldest
        # first: the event reaches this client before the scheduler hears the task ended.
        self._idle: list[str] = []
        self._address: dict[tuple[str, int], str | None] = {}  # (host, pid) -> worker address
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        # Only a worker under a nanny can be restarted, which is how a hung task is stopped.
        nannies = bool(workers) and all(w.get("nanny") for w in workers.values())
        self.supports_timeout = self.can_kill_one = nannies

    @property
    def capacity(self) -> int:
        """How many segments run at once: one per Dask worker."""
        return self._capacity

    def submit(
        self, fn: Callable[..., Any], *args: Any, prefer: tuple[str, int] | None = None
    ) -> Future:
        """Runs ``fn(*args)`` on a pinned Dask worker; a lost worker raises ``WorkerLostError``.

        With ``prefer`` (the host and pid of a worker process, as a segment's row
        gives them), the task goes to that worker when it is idle, else to the
        worker idle longest. While every worker is busy the task is held here, and
        the first worker whose task ends takes the oldest held one: Dask itself
        would place it on a busy worker at once, where it could wait behind a long
        segment while its timeout runs.
        """
        if not self._registered:
            self.client.register_plugin(self._plugin, name=PinPlugin.name)
            self.client.subscribe_topic(self._topic, self._receive)
            self._registered = True
        result: Future = Future()
        result.set_running_or_notify_cancel()
        held = _Held(f"train-{uuid.uuid4().hex}", fn, args, result)
        # Looked up before the lock: it may ask the workers, which needs the event loop.
        wanted = None if prefer is None else self._address_of(prefer)
        with self._lock:
            self._result_of[held.key] = result
            if self._held or (not self._idle and len(self._sent) >= self._capacity):
                self._held.append(held)
                return result
            address = self._free_worker(wanted)
            self._sent.add(held.key)
        self._send(held, address)
        return result

    def _send(self, held: _Held, address: str | None) -> None:
        """Hands a task to Dask: to worker ``address``, or where Dask places it (None).

        Its key is in ``_sent`` already: counted busy from the instant it left the queue.
        """
        where = {} if address is None else {"workers": [address], "allow_other_workers": True}
        try:
            task = self.client.submit(
                run_and_report,
                self._topic,
                held.key,
                held.fn,
                *held.args,
                key=held.key,
                pure=False,
                **where,
            )
        except BaseException as exc:  # noqa: BLE001 - e.g. the client closed: the task fails
            with self._lock:
                self._sent.discard(held.key)
                self._result_of.pop(held.key, None)
            _settle(held.result, error=exc)
            return
        with self._lock:
            self._tasks.add(task)
            self._task_of[held.result] = task
        task.add_done_callback(partial(self._ended, held.key, held.result))

    def _ended(self, key: str, result: Future, task: Any) -> None:
        """A Dask task ended (in Dask's callback thread); its outcome came first, if it could."""
        with self._lock:
            self._tasks.discard(task)
            self._task_of.pop(result, None)
            self._result_of.pop(key, None)
            unreported = key in self._sent  # lost, cancelled, or an outcome that did not serialise
            self._sent.discard(key)
            # Dask has heard its worker is free (or gone): it places the next one itself.
            next_one = self._held.popleft() if unreported and self._held else None
            if next_one is not None:
                self._sent.add(next_one.key)
        if not result.done():
            try:
                _settle(result, value=task.result())
            except BaseException as exc:  # noqa: BLE001 - handed to the scheduler as is
                _settle(result, error=exc)
        if next_one is not None:
            self._send(next_one, None)

    def _receive(self, event: Any) -> None:
        """A task's outcome, sent by ``run_and_report`` (runs in the client's event loop)."""
        _, (key, ok, payload, address) = event
        try:
            outcome = deserialize_bytes(payload)
        except Exception:  # noqa: BLE001 - its end brings it through Dask, with Dask's error
            return
        with self._lock:
            result = self._result_of.pop(key, None)
            if key not in self._sent:
                return  # killed, or another executor's
            self._sent.discard(key)
            next_one = self._held.popleft() if self._held else None
            if next_one is not None:
                self._sent.add(next_one.key)
            else:
                if address in self._idle:
                    self._idle.remove(address)
                self._idle.append(address)
        if next_one is not None:
            self._send(next_one, address)  # this worker is free: the oldest held task is its
        if result is not None:
            if ok:
                _settle(result, value=outcome)
            else:
                _settle(result, error=outcome)

    def _free_worker(self, wanted: str | None) -> str | None:
        """The worker to aim the next task at (called under the lock): ``wanted`` when it
        is idle, else the one idle longest; None (Dask decides) when none is known idle."""
        if wanted is not None and wanted in self._idle:
            self._idle.remove(wanted)
            return wanted
        return self._idle.pop(0) if self._idle else None

    def _address_of(self, prefer: tuple[str, int]) -> str | None:
        """The address of worker process ``prefer`` (host, pid); None for one gone."""
        who = (str(prefer[0]), int(prefer[1]))
        if who not in self._address:
            # Listed again only for a process not seen yet: one unknown then is gone for good.
            try:
                live = {(str(h), int(p)): a for a, (h, p) in self.client.run(whoami).items()}
            except Exception as exc:  # noqa: BLE001 - a worker going away: aim at none
                log.info("could not list the Dask workers' processes: %s", exc)
                return None
            self._address = {k: live.get(k) for k in self._address} | live
            self._address.setdefault(who, None)
        return self._address[who]

    def kill(self, futures: Collection[Future]) -> None:
        """Cancels the tasks of ``futures`` and restarts the workers that run them.

        Without nannies a running task cannot be stopped: it is cancelled, and its
        thread runs on until it ends (its row is then refused by the fence, or kept).
        """
        chosen = set(futures)
        with self._lock:
            for held in [h for h in self._held if h.result in chosen]:
                self._held.remove(held)  # never sent: nothing runs it
                self._result_of.pop(held.key, None)
            tasks = [self._task_of[f] for f in futures if f in self._task_of]
        keys = {task.key for task in tasks}
        busy = self.client.processing()
        workers = [address for address, running in busy.items() if keys & set(running)]
        self.client.cancel(tasks, force=True)
        for future in futures:
            with self._lock:
                task = self._task_of.pop(future, None)
                if task is not None:
                    self._result_of.pop(task.key, None)
            try:
                future.set_exception(CancelledError("its worker was restarted"))
            except InvalidStateError:
                pass  # it finished meanwhile
        if workers and self.can_kill_one:  # only a nanny can restart its worker
            self.client.restart_workers(workers, raise_for_error=False)

    def restart(self) -> None:
        """Nothing to rebuild: Dask replaces lost workers itself."""

    def shutdown(self, kill: bool = False) -> None:
        """Leaves the cluster to its owner; ``kill`` cancels what is still queued.

        The pinning plugin is unregistered and every worker host's lease folder
        (``phobbit-dask-<token>`` in its temporary directory) removed; workers
        already pinned stay pinned.
        """
        with self._lock:
            tasks, self._tasks = list(self._tasks), set()
            held, self._held = list(self._held), deque()
        if kill and tasks:
            self.client.cancel(tasks, force=True)
        for task in held:
            if kill:
                _settle(task.result, error=CancelledError("the executor was shut down"))
            else:
                with self._lock:
                    self._sent.add(task.key)
                self._send(task, None)  # it runs, as what was sent already does
        if self._registered:
            self._registered = False
            try:
                # No restarted worker may lease from a folder about to go.
                self.client.unregister_worker_plugin(PinPlugin.name)
                self.client.unsubscribe_topic(self._topic)
                self.client.run(drop_lease_folder, self._plugin.token)
            except Exception as exc:  # noqa: BLE001 - a cluster already gone leaves nothing to do
                log.info("could not remove the Dask lease folders: %s", exc)


@dataclass(frozen=True, eq=False)
class _Held:
    """A task submitted while every worker was busy, kept until one frees."""

    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    result: Future


def _settle(result: Future, value: Any = None, error: BaseException | None = None) -> None:
    """Ends ``result`` with a task's value or error, unless it has ended already."""
    if error is not None and type(error).__name__ == "KilledWorker":
        error = WorkerLostError(str(error))
    try:
        if error is not None:
            result.set_exception(error)
        else:
            result.set_result(value)
    except InvalidStateError:
        pass  # its event and its end both came, or ``kill`` ended it


# -- the command line's way onto a cluster -------------------------------------------


def connect(
    address: str | None = None,
    scheduler_file: str | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> Any:
    """A ``distributed.Client`` of the scheduler at ``address`` or in ``scheduler_file``.

    Args:
        address: the scheduler's address, e.g. ``tcp://host:8786``.
        scheduler_file: the file ``dask scheduler --scheduler-file`` wrote.
        timeout: seconds to reach the scheduler before giving up.

    Raises:
        InputError: naming the scheduler, when the file is missing or unreadable or
            the scheduler does not answer within ``timeout``.
    """
    from distributed import Client

    if scheduler_file is not None:
        # Dask would wait the whole timeout for a file that may never appear.
        if not os.path.isfile(scheduler_file):
            raise InputError(
                f"Dask scheduler file {scheduler_file} does not exist; start the scheduler "
                "with `dask scheduler --scheduler-file FILE` on a path this machine sees"
            )
        where = f"scheduler file {scheduler_file}"
        options: dict[str, Any] = {"scheduler_file": scheduler_file}
    else:
        where = f"the Dask scheduler at {address}"
        options = {"address": address}
    try:
        return Client(**options, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError, KeyError) as exc:  # unreachable, malformed
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(
            f"cannot reach {where} within {timeout:g}s ({text}); start it (dask scheduler) "
            "or check the address"
        ) from None


def _missing_or_other(expected: dict[str, str | None]) -> list[str]:
    """Run on a Dask worker: the paths of ``expected`` it does not see as the driver does.

    ``expected`` maps a path to the SHA-256 of its content, or None for a path that
    need only exist.
    """
    wrong = []
    for path, digest in expected.items():
        try:
            if digest is not None:
                wrong += [path] if _digest(path) != digest else []
            elif not os.path.exists(path):
                wrong.append(path)
        except OSError:
            wrong.append(path)
    return wrong


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_shared(client: Any, repository: str | Path, files: Sequence[str | Path] = ()) -> None:
    """Refuses a cluster whose workers do not share the repository's file system.

    The workers write the repository and import ``files`` (a model file) by their
    paths, so each worker must see, at the same path, the same content: a file
    written here for the check (next to the repository, removed at once) and
    ``files`` byte for byte. A folder of the same name on another disk fails it.

    Raises:
        InputError: naming a worker and the first path it does not see.
    """
    target = Path(repository).absolute()
    anchor = target
    while not anchor.is_dir() and anchor != anchor.parent:
        anchor = anchor.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".phobbit-dask-probe-", dir=anchor)
    except OSError as exc:
        raise InputError(f"cannot write in {anchor} for repository {target}: {exc}") from None
    os.close(fd)
    try:
        expected: dict[str, str | None] = {probe: None}
        expected |= {str(Path(f).resolve()): _digest(str(Path(f).resolve())) for f in files}
        wrong = {w: paths for w, paths in client.run(_missing_or_other, expected).items() if paths}
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)
    if wrong:
        worker, paths = sorted(wrong.items())[0]
        what = f"the repository's folder {anchor}" if paths[0] == probe else f"the file {paths[0]}"
        raise InputError(
            f"Dask worker {worker} does not see {what} as this machine does ({len(wrong)} of "
            f"{len(client.nthreads())} workers); the repository and the model file must sit "
            "on a file system every worker shares, at the same path"
        )


def _gpu_count() -> tuple[str, int]:
    """Run on a Dask worker: its host, and how many NVIDIA GPUs ``nvidia-smi -L`` lists there."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return this_host(), 0
    return this_host(), sum(1 for line in listed.splitlines() if line.startswith("GPU "))


def cluster_gpus(client: Any, jobs_per_gpu: int = 1, gpus_per_trial: int = 1) -> list[int] | None:
    """The GPU ids to pin the workers of ``client``'s cluster to: those every host shows.

    ``DaskExecutor`` gives every host the same ids, so the hosts must show as
    many GPUs each; None when none shows one (the workers then run on the CPU).

    Raises:
        InputError: when hosts show different numbers of GPUs, or a host runs more
            workers than it has GPU slots (GPU groups of ``gpus_per_trial`` x
            ``jobs_per_gpu``).
    """
    found = client.run(_gpu_count)
    per_host: dict[str, int] = {}
    workers: dict[str, int] = {}
    for host, count in found.values():
        per_host[host] = count
        workers[host] = workers.get(host, 0) + 1
    counts = sorted(set(per_host.values()))
    if len(counts) > 1:
        shown = ", ".join(f"{h}: {n}" for h, n in sorted(per_host.items()))
        raise InputError(
            f"the Dask workers' hosts show different numbers of GPUs ({shown}); phobbit pins "
            "every host's workers to the same GPU ids: use hosts alike, or the library's "
            "DaskExecutor(client, gpus=[...]) with the ids they share"
        )
    if not counts or counts[0] == 0:
        return None
    slots = counts[0] // gpus_per_trial * jobs_per_gpu
    crowded = {h: n for h, n in workers.items() if n > slots}
    if crowded:
        host, n = sorted(crowded.items())[0]
        groups = (
            f"{counts[0]} GPUs in groups of {gpus_per_trial}"
            if gpus_per_trial > 1
            else (f"{counts[0]} GPUs")
        )
        raise InputError(
            f"Dask host {host} runs {n} workers but has {slots} GPU slots ({groups} x "
            f"{jobs_per_gpu} jobs per GPU); start at most {slots} there "
            f"(dask worker --nworkers {slots} --nthreads 1) or run more jobs per GPU"
        )
    return list(range(counts[0]))
