"""Where a run's segments run and how it treats its workers: ``Resources``.

Either a local pool that phobbit makes for each run (``gpus``, ``jobs_per_gpu``,
``gpus_per_trial``, ``n_jobs``, ``worker_log``) or an executor of yours (``executor``, e.g. a
``DaskExecutor``); with either, how long one segment may take and how often a
segment whose worker died is tried again.

Example:
    >>> Resources(gpus=[0, 1], jobs_per_gpu=2, segment_timeout=3600)
    >>> Resources(gpus="0,1,2,3", gpus_per_trial=2)   # two workers, on GPUs 0,1 and 2,3
    >>> Resources.of(DaskExecutor(client)) == Resources(executor=...)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from phobbit.core.units import check_int, parse_duration
from phobbit.errors import InputError
from phobbit.execution.executor import (
    Executor,
    LocalExecutor,
    check_worker_count,
    gpu_groups,
    parse_gpus,
)


@dataclass(frozen=True)
class Resources:
    """Where segments run and how failures of their workers are treated.

    Args:
        gpus: GPU ids (``[0, 1, 2, 3]``, ``"0,1,2,3"`` or one int; stored as a
            tuple): one worker pinned to each by ``CUDA_VISIBLE_DEVICES``. None (the
            default) runs ``n_jobs`` workers on the CPU.
        jobs_per_gpu: trials run at once on one GPU, or on one group of
            ``gpus_per_trial`` GPUs (default 1; TensorFlow's memory growth is turned
            on above 1).
        gpus_per_trial: GPUs each trial trains on (default 1). Each worker is pinned
            to a disjoint group of that many consecutive ids of ``gpus``
            (``[0, 1, 2, 3]`` by 2: ``CUDA_VISIBLE_DEVICES=0,1`` and ``2,3``) and
            trains its models under ``tf.distribute.MirroredStrategy`` (the
            TensorFlow backend only). ``gpus`` must split into such groups.
        n_jobs: CPU workers when there are no GPUs; None (the default): one per core.
            A local pool runs at most 4 workers per core of this machine (``n_jobs``,
            or GPUs x ``jobs_per_gpu``); more is refused, naming ``os.cpu_count()``.
        executor: where segments run instead of a local pool, e.g. a
            ``DaskExecutor`` past one machine (``gpus``, ``jobs_per_gpu`` and
            ``n_jobs`` then go to it, not here). It stays yours: a run leaves it
            running (and kills only what it had in flight when it stops on an
            error); shut it down when done. The local pool made when it is None
            (the default) is shut down at the end of every run.
        worker_log: send the workers' standard error (TensorFlow's start-up lines,
            warnings) to a file appended to ``repo_dir/workers.log`` when the run
            ends, instead of this process's stderr; True by default; only for the
            local pool phobbit makes.
        max_retries: how often a segment whose worker died, or that timed out, is
            tried again before it is marked failed (default 2).
        segment_timeout: seconds one segment may run, counted from when it is
            handed to a free worker (so a worker's start-up and its first TensorFlow
            import count); past it, its worker is killed and the segment is charged
            like a worker death. None (the default) waits for ever; give several
            times the longest segment you expect (the top rung trains R epochs).

    Raises:
        InputError: (a ``ValueError``) naming the field that is wrong, an executor
            given beside ``gpus`` or ``n_jobs``, more workers than this machine can
            run, or a ``segment_timeout`` for an executor that cannot kill one worker.
    """

    gpus: str | int | Sequence[int] | None = None
    jobs_per_gpu: int = 1
    gpus_per_trial: int = 1
    n_jobs: int | None = None
    executor: Executor | None = None
    worker_log: bool = True
    max_retries: int = 2
    segment_timeout: float | None = None

    def __post_init__(self) -> None:
        check_int("max_retries", self.max_retries, minimum=0)
        if self.executor is not None:
            if self.gpus is not None or self.n_jobs is not None:
                raise InputError("give gpus/n_jobs to the executor, not beside it")
            if self.gpus_per_trial != 1:
                raise InputError(
                    "give gpus_per_trial to the executor (DaskExecutor(client, gpus=..., "
                    "gpus_per_trial=...)), not beside it"
                )
            if not isinstance(self.executor, Executor):
                raise InputError(
                    f"executor must be a phobbit Executor (LocalExecutor, DaskExecutor, "
                    f"SimulatedExecutor), got {type(self.executor).__name__}"
                )
        ids = parse_gpus(self.gpus)
        object.__setattr__(self, "gpus", None if ids is None else tuple(ids))
        check_int("jobs_per_gpu", self.jobs_per_gpu, minimum=1)
        gpu_groups(self.gpus, self.gpus_per_trial)  # before anything: 0,1,2 by 2 is refused
        if self.n_jobs is not None:
            check_int("n_jobs", self.n_jobs, minimum=1)
        if self.executor is None:
            # Before the pool is made (and before anything is written): --jobs 100000
            # would spawn processes for minutes and train nothing.
            check_worker_count(self.gpus, self.jobs_per_gpu, self.n_jobs, self.gpus_per_trial)
        object.__setattr__(self, "worker_log", bool(self.worker_log))
        object.__setattr__(
            self, "segment_timeout", parse_duration(self.segment_timeout, "segment_timeout")
        )
        if self.segment_timeout is not None and not self.supports_timeout:
            raise InputError(
                f"segment_timeout cannot be used with {type(self.executor).__name__}: it "
                "cannot kill one worker (Dask workers must run under a nanny, as "
                "`dask worker` starts them, not LocalCluster(processes=False))"
            )

    @classmethod
    def of(cls, value: Any) -> Resources:
        """``value`` as ``Resources``: None is a local pool, an ``Executor`` runs there.

        Raises:
            InputError: for anything else.
        """
        if value is None:
            return cls()
        if isinstance(value, Resources):
            return value
        if isinstance(value, Executor):
            return cls(executor=value)
        raise InputError(f"resources must be Resources or an Executor, got {type(value).__name__}")

    @property
    def supports_timeout(self) -> bool:
        """Whether a segment that hangs can be stopped (the local pool can)."""
        return self.executor is None or self.executor.supports_timeout

    def make_executor(self, env: Mapping[str, str] | None = None) -> Executor:
        """The executor given, or a new local pool whose workers get ``env``."""
        if self.executor is not None:
            return self.executor
        gpus = None if self.gpus is None else list(self.gpus)
        return LocalExecutor(
            gpus, self.jobs_per_gpu, self.n_jobs, env=env, gpus_per_trial=self.gpus_per_trial
        )
