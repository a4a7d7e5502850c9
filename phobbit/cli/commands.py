"""The command line's commands: ``phobbit train|brackets|status|best|export|plot|tensorboard``:
what each does, what it prints, its exit code (the grammar is ``phobbit.cli.parser``).

Every decision is the library's; this module only wires arguments to it and
turns its errors into one line on stderr: exit code 2 for bad input (nothing
is written), 1 when the run itself fails, 130 after Ctrl-C (the same command
resumes).

Example:
    $ python -m phobbit train examples/mnist_mlp.py --gpus 0,1,2,3 --R 20 --eta 3
    $ phobbit status phobbit_repo
    $ phobbit best phobbit_repo --top 5 --json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from phobbit.cli.parser import build_parser
from phobbit.core.schedule import brackets, format_schedule, validate
from phobbit.errors import InputError, PhobbitError
from phobbit.execution.streams import GuardedStdout, stdout_to_devnull

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


# rich, pandas and the library's engine are imported where a command needs them, so
# that `phobbit brackets` starts without them.

INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT


class CliError(PhobbitError):
    """The run finished but produced nothing usable (every trial failed)."""


class OutputError(PhobbitError):
    """Standard output cannot be written (``> /dev/full``, a full disk under ``> file``)."""


class _OutputErrors:
    """Standard output whose write errors, other than a reader who left (a broken pipe,
    which ``_run`` ends quietly), are one ``OutputError`` line, not a traceback.

    ``train`` writes through a ``GuardedStdout`` instead: its run goes on without printing.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def _failed(self, exc: OSError) -> OutputError:
        return OutputError(f"cannot write to standard output: {exc.strerror or exc}")

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)  # isatty, fileno, encoding: rich asks


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command and returns its exit code (the ``phobbit`` console script)."""
    args = build_parser().parse_args(argv)
    stdout = sys.stdout
    if args.command != "train" and stdout is not None:
        sys.stdout = _OutputErrors(stdout)
    try:
        with _skipped_rows_on_stderr():
            code = _run(args)
            if isinstance(sys.stdout, _OutputErrors):
                try:
                    sys.stdout.flush()  # what is still buffered fails here, not at exit
                except OutputError as exc:
                    _error(str(exc))
                    code = exc.exit_code
                except BrokenPipeError:
                    pass
        return code
    finally:
        if isinstance(sys.stdout, _OutputErrors):
            failed = sys.stdout
            sys.stdout = stdout
            if failed is not stdout:
                with contextlib.suppress(OSError, ValueError):
                    stdout.flush()


def _run(args: argparse.Namespace) -> int:
    """Runs the command ``args`` names; a user's mistake ends as one line, exit code 2."""
    try:
        if args.command == "brackets":
            validate(args.R, args.eta)
            print(format_schedule(brackets(args.R, args.eta)), flush=True)
            if args.algorithm == "asha":
                from phobbit.core.asha import asha_budget_epochs

                print(
                    "asha: these brackets run side by side, asynchronously; each decision goes "
                    "to the bracket that has dispatched the fewest epochs. Default budget: "
                    f"{asha_budget_epochs(args.R, args.eta):,} epochs per --iterations",
                    flush=True,
                )
            return 0
        if args.command == "train":
            stdout = GuardedStdout(
                sys.stdout,
                notice="the run goes on without printing (Ctrl-C stops it, and the same "
                "command resumes)",
            )
            with _terminate_as_interrupt(), _dask_executor(args) as executor:
                return _train(args, _console(stdout), stdout, executor)
        if args.command == "status":
            return _status(args.repo, _console())
        if args.command == "export":
            return _export(args.repo, args.path, args.trial)
        if args.command == "plot":
            from phobbit.reporting.plot import plot_repository

            print(plot_repository(args.repo, args.output, args.kind), flush=True)
            return 0
        if args.command == "tensorboard":
            return _tensorboard(args.repo)
        return _best(args, _console())
    except KeyboardInterrupt:
        if args.command == "train":
            _error(
                "interrupted; workers stopped. "
                f"Run the same command again to resume from {args.repo}"
            )
        else:
            _error("interrupted")
        return INTERRUPTED
    except PhobbitError as exc:
        if isinstance(exc, OutputError):
            stdout_to_devnull()  # nothing is left to flush at exit
        _error(str(exc))
        return exc.exit_code
    except BrokenPipeError as exc:
        if args.command != "train":
            # `phobbit best DIR | head`: the reader has all it wanted.
            stdout_to_devnull()
            return 0
        # `train` writes standard output through a GuardedStdout, so this pipe is
        # another one (a worker's): not a user's mistake.
        traceback.print_exc()
        _error(f"{type(exc).__name__}: {exc}")
        return 1
    except Exception as exc:  # noqa: BLE001 - not a user's mistake: keep the traceback
        traceback.print_exc()
        _error(f"{type(exc).__name__}: {exc}")
        return 1


@contextlib.contextmanager
def _skipped_rows_on_stderr() -> Iterator[None]:
    """Rows of the repository's files that the run cannot have written are skipped with a
    warning (``phobbit.storage.sifting``): every command says so on stderr, one line a file."""
    import logging

    from phobbit.storage.sifting import SKIPPED_LOGGER

    logger = logging.getLogger(SKIPPED_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("phobbit: warning: %(message)s"))
    said: set[str] = set()

    def once(record: logging.LogRecord) -> bool:
        # A command reads a file through several readers (the run, its table, TensorBoard).
        message = record.getMessage()
        new = message not in said
        said.add(message)
        return new

    handler.addFilter(once)
    # Not again through the library's log, which -v puts on stderr as well.
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _console(stdout: GuardedStdout | None = None) -> Console:
    from rich.console import Console

    # Off a terminal rich would wrap tables at 80 columns; logs read better wider.
    wide = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120

    # Nothing printed is markup: hparams, names, paths and errors are the user's text,
    # and "[red]" or ":smile:" in them must print as written.
    class QuietOnBrokenPipe(Console):
        def on_broken_pipe(self) -> None:
            # rich exits 1 here; `main` ends quietly instead (`phobbit best DIR | head`).
            self.quiet = True
            raise BrokenPipeError

    stream: Any = stdout if stdout is not None else sys.stdout
    if not stream.isatty():  # a file or a pipe: rich pads every line to its table's width
        stream = _TrimmedLines(stream)
    return QuietOnBrokenPipe(file=stream, width=wide, highlight=False, markup=False, emoji=False)


class _TrimmedLines:
    """A stream that drops the spaces before each line's end (rich pads tables' lines to
    their width): a file or a pipe gets no line that ends in spaces."""

    _TRAILING = re.compile(r" +((?:\x1b\[[0-9;]*m)*)\n")

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._pending = ""  # spaces that end a write: trailing only if a newline follows

    def write(self, text: str) -> int:
        body = self._TRAILING.sub(r"\1\n", self._pending + text)
        kept = body.rstrip(" ")
        self._pending = body[len(kept) :]
        self.stream.write(kept)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)  # isatty, fileno, encoding: rich asks


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """``kill PID`` (SIGTERM) stops a run as Ctrl-C does: workers killed, resumable.

    Background jobs of a shell ignore SIGINT, so SIGTERM is how they are stopped.
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _error(message: str) -> None:
    from phobbit.execution.worker import printable

    # A message may quote user code or Keras (an error row, an exception): no escape of
    # theirs may recolour or rewrite the user's terminal.
    print(f"phobbit: error: {' '.join(printable(message).split())}", file=sys.stderr, flush=True)


# -- train -----------------------------------------------------------------------


def _train(
    args: argparse.Namespace, console: Console, stdout: GuardedStdout, executor: Any = None
) -> int:
    # The model file and the API are imported here so that `brackets`, `status` and
    # `best` start fast; the API itself never imports TensorFlow.
    from phobbit.api import start_pool
    from phobbit.cli.model_file import trains_keras
    from phobbit.core.records import Status
    from phobbit.execution.resources import Resources
    from phobbit.keras_adapter.hypermodel import discover_in

    if args.jobs is not None and args.gpus:
        raise InputError("--jobs sets CPU workers; with --gpus use --jobs-per-gpu")
    # A DaskExecutor (--dask) holds --gpus-per-trial already: it grouped its hosts' GPUs.
    per_trial = args.gpus_per_trial if executor is None else 1
    _check_gpus(args.gpus, per_trial, args.backend)
    _check_workers(args.gpus, args.jobs_per_gpu, args.jobs, per_trial)
    resources = Resources(
        gpus=args.gpus,
        jobs_per_gpu=args.jobs_per_gpu,
        gpus_per_trial=per_trial,
        n_jobs=args.jobs,
        executor=executor,  # a DaskExecutor with --dask, else None: a local pool
        worker_log=not args.verbose,
        segment_timeout=args.segment_timeout,
    )
    with contextlib.ExitStack() as pool:
        discover = None
        if executor is None and trains_keras(args.model_file, args.model_fn):
            # The workers start and import Keras now, while this process loads the model
            # file (whose top level may import Keras itself) and reads the repository; a
            # Keras Tuner file's space is found in one of them, not in a process of its own
            # that would import Keras once more before the pool even started.
            started = start_pool(resources, args.backend, args.repo, pool)
            discover = functools.partial(discover_in, started)
            resources = dataclasses.replace(
                resources,
                gpus=None,
                n_jobs=None,
                jobs_per_gpu=1,
                gpus_per_trial=1,
                executor=started,
            )
        frame, tuner, repository = _tune(args, console, stdout, resources, discover)
    _final_table(console, frame, args, tuner)
    if tuner.stopped_by not in (None, "iterations") or args.algorithm == "asha":
        console.print(
            f"Stopped: {tuner.stop_reason()}; run again with a larger --max-epochs, "
            "--time-limit or --iterations to go on",
            soft_wrap=True,
        )
    console.print(f"Repository: {args.repo}", soft_wrap=True)
    console.print(_tensorboard_line(tuner, args.repo), soft_wrap=True)
    ok = frame[frame["Status"] == Status.OK]
    if frame.empty and tuner.stopped_by not in (None, "iterations"):
        # The budget ran out before any segment finished: nothing failed, and the
        # "Stopped:" line above says what happened and how to go on.
        return 0
    if ok.empty:
        first = frame["Error"].iloc[0] if not frame.empty else "no results"
        raise CliError(
            f"every trial failed; the first says: {first}. Fix the data or the code, then run "
            "the same command with --retry-failed to train the failed ones again"
        )
    model_path = _checkpoint(repository, ok.iloc[0], tuner.objective)
    if model_path is not None:
        console.print(f"Best model: {model_path}", soft_wrap=True)
    return 0


def _tune(
    args: argparse.Namespace,
    console: Console,
    stdout: GuardedStdout,
    resources: Any,
    discover: Any,
) -> tuple[Any, Any, Any]:
    """Loads the model file and runs the tuner of ``train`` on ``resources``; returns the
    results table, the tuner and the repository."""
    from phobbit.api import ParallelHyperband
    from phobbit.cli.model_file import load_model_file
    from phobbit.cli.terminal import LineReporter, LiveReporter, with_best_metrics
    from phobbit.core.budget import Budget
    from phobbit.core.search import Search
    from phobbit.keras_adapter.fit import KerasFit
    from phobbit.reporting.progress import slot_summary
    from phobbit.storage.repository import Repository

    model = load_model_file(args.model_file, args.model_fn, args.hparams, args.dataset, discover)
    repository = Repository(args.repo)
    if repository.path.is_dir():
        repository.sift()  # rows the run cannot have written are not progress
        previous = list(repository.iter_results())
    else:
        previous = []
    if args.retry_failed:  # trained again: not done yet for the progress display
        previous = [row for row in previous if row.ok]
    live = args.progress == "live" or (args.progress == "auto" and console.is_terminal)
    options = _objective_options(model.options, args.objective, args.direction)
    ranking = {n: options.pop(n) for n in ("objective", "direction") if n in options}
    workers = {"backend": args.backend, "warm_cache": args.warm_cache}
    # A model file's trainable trains itself; the backend and the warm cache reach it too.
    trains: dict[str, Any] = (
        {"trainable": model.trainable, **workers}
        if model.model_function is None
        else {
            "trainable": KerasFit(
                model.model_function,
                batch_size=args.batch_size,
                **workers,
                **model.data,
                **options,
            )
        }
    )
    tuner = ParallelHyperband(
        None,
        model.hparam_ranges,
        args.repo,
        search=Search(args.algorithm, args.sampler),
        resources=resources,
        budget=Budget(args.time_limit, args.max_epochs),
        seed=args.seed,
        **trains,
        **ranking,
    )
    where = slot_summary(tuner.executor.slots)  # not `slots`: that name is rebound below

    def title() -> str:
        # Made as the run starts: its budget (ASHA's default, the time earlier invocations
        # used) is known only then.
        return (
            f"phobbit train {args.model_file}: R={args.R} eta={args.eta} seed={args.seed}"
            f"{f', {args.iterations} iterations' if args.iterations > 1 else ''}, "
            f"{args.algorithm}, {args.sampler} sampling, {_budget_words(tuner.budget)}; "
            f"{_backend_name(args.backend)} on {tuner.executor.capacity} workers ({where}); "
            f"repository {args.repo}"
        )

    if previous:  # a resumed run's best shows the metrics of its scoring epoch too
        previous = with_best_metrics(previous, repository.path)
    slots = tuner.executor.slots
    budget = lambda: tuner.budget  # noqa: E731 - known once the run starts (ASHA's default)
    if live:
        tuner.reporter = LiveReporter(console, title, previous, slots, budget)
    else:
        verbose = 2 if args.verbose else 1
        tuner.reporter = LineReporter(stdout, verbose, title, previous, slots, budget)
    with _logging_to_stderr(args.verbose):
        frame = tuner.run(
            R=args.R, eta=args.eta, iterations=args.iterations, retry_failed=args.retry_failed
        )
    return frame, tuner, repository


def _final_table(console: Console, frame: Any, args: argparse.Namespace, tuner: Any) -> None:
    """The table at the end of ``train``; ``--columns`` the run never recorded are named on
    stderr (known only now, after training, so they stop nothing)."""
    from phobbit.storage.view import open_repository

    metrics = {}
    if not frame.empty:
        metrics = open_repository(args.repo).scoring_metrics(frame.head(args.top).iterrows())
    _, unknown = metric_columns(tuner.objective, metrics, args.columns)
    if unknown:
        print(f"phobbit: warning: {unknown_columns_message(unknown, metrics)}", file=sys.stderr)
    order = [hp.name for hp in tuner.space.hparams]
    console.print(best_table(frame, args.top, order, tuner.objective, metrics, args.columns))


@contextlib.contextmanager
def _dask_executor(args: argparse.Namespace) -> Iterator[Any]:
    """With ``--dask`` or ``--dask-scheduler-file``, a ``DaskExecutor`` on that cluster.

    Yields None without either. The client it connects is closed at the end and the
    executor shut down (its pinning plugin and lease folders removed); the cluster
    itself is left running, as it is the user's.
    """
    address, scheduler_file = args.dask, args.dask_scheduler_file
    if address is None and scheduler_file is None:
        yield None
        return
    option = "--dask" if address is not None else "--dask-scheduler-file"
    if args.gpus is not None:
        raise InputError(
            f"--gpus sets a local pool's GPUs; with {option} each Dask worker is pinned to a "
            "GPU of its own host (all those nvidia-smi lists there): drop --gpus"
        )
    if args.jobs is not None:
        raise InputError(
            f"--jobs sets a local pool's CPU workers; with {option} the cluster's workers "
            "train, one segment each: start as many as you want (dask worker --nworkers N "
            "--nthreads 1) and drop --jobs"
        )
    try:
        from phobbit.execution.dask import DaskExecutor, check_shared, cluster_gpus, connect
    except ImportError as exc:
        raise InputError(
            f"{option} needs Dask, which is not installed ({exc}); install the extra: "
            "pip install 'phobbit[dask]'"
        ) from None
    client = connect(address, scheduler_file)
    executor = None
    try:
        model_file = [args.model_file] if os.path.isfile(args.model_file) else []
        check_shared(client, args.repo, model_file)
        per_trial = args.gpus_per_trial
        gpus = cluster_gpus(client, args.jobs_per_gpu, per_trial)
        if gpus is None and per_trial > 1:
            raise InputError(
                f"--gpus-per-trial {per_trial}: the Dask workers' hosts show no GPU "
                "(nvidia-smi); drop --gpus-per-trial"
            )
        executor = DaskExecutor(client, gpus, args.jobs_per_gpu, gpus_per_trial=per_trial)
        yield executor
    except BaseException:
        if executor is not None:
            executor.shutdown(kill=True)
            executor = None
        raise
    finally:
        if executor is not None:
            executor.shutdown()
        client.close()


def _objective_options(
    options: dict[str, Any], objective: str | None, direction: str | None
) -> dict[str, Any]:
    """The model file's options, with ``--objective`` and ``--direction`` over its own."""
    chosen = dict(options)
    if objective is not None:
        chosen["objective"] = objective
        chosen.pop("direction", None)  # the file's direction was for its own objective
    if direction is not None:
        chosen["direction"] = direction
    return chosen


BACKENDS = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "torch"}


def _backend_name(backend: str | None) -> str:
    """The Keras backend the workers train with, as its makers write it: ``TensorFlow``."""
    name = backend or os.environ.get("KERAS_BACKEND") or "tensorflow"
    return BACKENDS.get(name, name)


def _budget_words(budget: Any) -> str:
    """A ``Budget`` for a header: ``time limit 10m, 7m left, at most 500 epochs`` (what is
    left after the time earlier invocations used), or ``no time or epoch limit``."""
    words = []
    if budget.time_limit is not None:
        words.append(budget.time_text())
    if budget.max_epochs is not None:
        words.append(f"at most {budget.max_epochs:,} epochs")
    return ", ".join(words) or "no time or epoch limit"


def _devices_words(devices: Sequence[str | None]) -> str:
    """Where a repository's segments trained (``RunStatus.devices``): ``GPU 0, GPU 1``,
    ``CPU workers``."""
    words = [f"GPU {gpu}" for gpu in devices if gpu is not None]
    words += ["CPU workers"] if None in devices else []
    return ", ".join(words) or "nothing trained yet"


def _algorithm_words(algorithm: str, sampler: str) -> str:
    """``"asha, tpe sampling, "`` for a run that is not random Hyperband; else ``""``."""
    if (algorithm, sampler) == ("hyperband", "random"):
        return ""
    return f"{algorithm}, {sampler} sampling, "


@contextlib.contextmanager
def _logging_to_stderr(verbose: bool) -> Iterator[None]:
    """With ``-v``, the library's log (pool restarts, retries, fencing) goes to stderr too."""
    if not verbose:
        yield
        return
    import logging

    logger = logging.getLogger("phobbit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("phobbit: %(levelname)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _check_gpus(gpus: str | None, gpus_per_trial: int = 1, backend: str | None = None) -> None:
    """Refuses a bad ``--gpus`` or ``--gpus-per-trial`` in the CLI's words: the library
    names its arguments.

    ``--gpus`` on a machine that shows no NVIDIA GPU (no ``nvidia-smi``) is refused
    too: its workers would train on the CPU while the display said "GPU 0". So is
    ``--gpus-per-trial`` above 1 with a backend other than TensorFlow, whose
    ``MirroredStrategy`` trains one model on several GPUs.
    """
    import shutil

    from phobbit.execution.executor import gpu_groups, parse_gpus

    words = {
        "gpus": "--gpus",
        "jobs_per_gpu": "--jobs-per-gpu",
        "gpus_per_trial": "--gpus-per-trial",
    }
    try:
        ids = parse_gpus(gpus)
        gpu_groups(ids, gpus_per_trial)
    except InputError as exc:
        raise InputError(
            re.sub(r"\b(gpus_per_trial|gpus|jobs_per_gpu)\b", lambda m: words[m[1]], str(exc))
        ) from None
    running = backend or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if gpus_per_trial > 1 and running != "tensorflow":
        raise InputError(
            f"--gpus-per-trial {gpus_per_trial} trains each trial on several GPUs with "
            f"TensorFlow's MirroredStrategy, not with the {running!r} backend; use "
            "--backend tensorflow, or --gpus-per-trial 1"
        )
    if ids and shutil.which("nvidia-smi") is None:
        raise InputError(
            f"--gpus {gpus}: this machine shows no NVIDIA GPU (nvidia-smi is not on PATH), so "
            "the workers would train on the CPU; use --jobs N for CPU workers, or put "
            "nvidia-smi on PATH"
        )


def _check_workers(
    gpus: str | None, jobs_per_gpu: int, jobs: int | None, gpus_per_trial: int = 1
) -> None:
    """Refuses more workers than this machine can run, in the options' words."""
    from phobbit.execution.executor import check_worker_count, parse_gpus

    try:
        check_worker_count(parse_gpus(gpus), jobs_per_gpu, jobs, gpus_per_trial)
    except InputError as exc:
        words = {"n_jobs": "--jobs", "jobs_per_gpu": "--jobs-per-gpu"}
        raise InputError(
            re.sub(r"\b(n_jobs|jobs_per_gpu)\b", lambda m: words[m[1]], str(exc)).replace(
                "None: one per core", "default: one per core"
            )
        ) from None


def _tensorboard(repo: str) -> int:
    from phobbit.reporting.tensorboard import FOLDER, write_repository, written_count

    written = len(write_repository(repo))
    logdir = os.path.join(repo, FOLDER)
    # A run writes its logs as it goes: after `train` there is usually nothing new.
    there = written_count(logdir)
    if not written:
        what = f"up to date: {there} configuration(s) already written in {logdir}"
    elif written < there:
        what = (
            f"wrote {written} configuration(s) to {logdir}; "
            f"the other {there - written} were up to date"
        )
    else:
        what = f"wrote {written} configuration(s) to {logdir}"
    print(f"{what}; view with: tensorboard --logdir {logdir}", flush=True)
    return 0


def _tensorboard_line(tuner: Any, repo: str) -> str:
    """The last line of ``train`` about TensorBoard: where the logs are, or how to get them."""
    from phobbit.reporting.tensorboard import FOLDER, INSTALL_HINT

    if not tuner.tensorboard:
        return INSTALL_HINT
    return f"TensorBoard: tensorboard --logdir {os.path.join(repo, FOLDER)}"


# -- best ------------------------------------------------------------------------


def _in_order(hparams: dict[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """``hparams`` with the names of ``order`` first, in that order (JSON sorted them)."""
    return {n: hparams[n] for n in order if n in hparams} | hparams


def _checkpoint(repository: Any, row: Any, objective: Any = None) -> Any:
    """The file that evaluates to a configuration's listed Val Loss (and objective, a
    ``phobbit.core.objective.Objective``); None if none holds it."""
    from phobbit.core.records import Status  # lazy: `phobbit brackets` stays light

    if row["Status"] != Status.OK or math.isnan(row["Val Loss"]):
        return None
    value = None
    if objective is not None and not objective.is_val_loss:
        value = float(row[objective.label])
    return repository.scoring_checkpoint(
        int(row["Iteration"]),
        int(row["Run"]),
        int(row["ID"]),
        float(row["Val Loss"]),
        *(() if value is None else (objective, value)),
        hparams=row["Hparams"],
    )


def metric_label(name: str) -> str:
    """A logged metric's name as a table's column: ``Val Accuracy`` for ``val_accuracy``."""
    return " ".join(part.capitalize() for part in name.split("_"))


def metric_columns(
    objective: Any, metrics: dict[str, dict[str, float]], chosen: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """The metrics a table shows after the objective, and those of ``chosen`` never recorded.

    By default every validation metric the configurations' scoring epochs logged
    (``val_loss`` first), the objective left out as it has a column of its own.

    Args:
        objective: the run's ``Objective``.
        metrics: by trial, what its scoring epoch logged (``RepositoryView.scoring_metrics``).
        chosen: the names ``--columns`` gave, or None.
    """
    from phobbit.storage.view import metric_order

    recorded: list[str] = []
    for logged in metrics.values():
        recorded.extend(n for n in logged if n not in recorded)
    recorded = metric_order(recorded)
    if chosen is None:
        shown = [n for n in recorded if n.startswith("val_")] or ["val_loss"]
        return [n for n in shown if n != objective.name], []
    unknown = [n for n in chosen if n not in recorded and n != objective.name]
    return [n for n in chosen if n not in unknown and n != objective.name], unknown


def unknown_columns_message(unknown: Sequence[str], metrics: dict[str, dict[str, float]]) -> str:
    """One line naming the ``--columns`` the run never recorded, and those it did."""
    recorded = sorted({n for logged in metrics.values() for n in logged})
    return (
        f"--columns {','.join(unknown)}: the run records no such metric; it records "
        f"{', '.join(recorded) or 'none in epochs.csv'}"
    )


def best_table(
    frame: Any,
    top: int,
    order: Sequence[str] = (),
    objective: Any = None,
    metrics: dict[str, dict[str, float]] | None = None,
    columns: Sequence[str] | None = None,
) -> Table:
    """The ``top`` best configurations of a results table, as a rich table: the objective
    first, its direction in its header (``Val Loss (min)``), then the metrics of each
    configuration's scoring epoch.

    Args:
        frame: the results table (``results_frame``), best first.
        top: how many rows.
        order: hyperparameter names in the search space's order (else as stored).
        objective: the run's ``Objective`` (default the val loss).
        metrics: by trial, what its scoring epoch logged; None or empty shows the
            val loss alone beside the objective.
        columns: the metrics to show (``--columns``); None: ``metric_columns``' default.
    """
    from phobbit.core.records import Status  # lazy: `phobbit brackets` stays light

    failed = bool((frame["Status"] != Status.OK).any())
    rows = list(frame.head(top).iterrows())
    return _results_table(rows, len(frame), failed, order, objective, metrics, columns)


def ranking_table(
    ranking: Any,
    top: int,
    order: Sequence[str] = (),
    objective: Any = None,
    metrics: dict[str, dict[str, float]] | None = None,
    columns: Sequence[str] | None = None,
) -> Table:
    """``best_table`` of a ``phobbit.storage.view.Ranking``: the same table, built from the
    column index without pandas (``phobbit best``)."""
    rows = ranking.top(top)
    return _results_table(rows, len(ranking), ranking.failed, order, objective, metrics, columns)


def _results_table(
    rows: Sequence[tuple[Any, Any]],
    total: int,
    failed: bool,
    order: Sequence[str],
    objective: Any,
    metrics: dict[str, dict[str, float]] | None,
    columns: Sequence[str] | None,
) -> Table:
    """The table of ``rows`` ((trial, row with the results table's columns)) of ``total``."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from phobbit.core.objective import VAL_LOSS
    from phobbit.core.records import Status  # lazy: `phobbit brackets` stays light
    from phobbit.reporting.plain import format_hparams

    objective = objective or VAL_LOSS
    metrics = metrics or {}
    table = Table(
        title=f"Best {min(len(rows), total)} of {total} configurations",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    shown, _ = metric_columns(objective, metrics, columns)
    listed = "Val Loss" if objective.is_val_loss else objective.label  # the table's column
    heads = [f"{objective.label} ({objective.direction})", *map(metric_label, shown)]
    for column in ("Trial", *heads, "Epochs", "Hparams") + (("Status",) if failed else ()):
        table.add_column(
            column, justify="left" if column in ("Trial", "Hparams", "Status") else "right"
        )

    def value(trial: str, row: Any, name: str) -> float:
        logged = metrics.get(trial, {})
        if name in logged:
            return logged[name]
        return row["Val Loss"] if name == "val_loss" else math.nan  # an older repository

    for trial, row in rows:
        values = [row[listed], *(value(str(trial), row, n) for n in shown)]
        cells = [str(trial), *("-" if math.isnan(v) else f"{v:.4g}" for v in values)]
        cells += [str(row["Epochs"]), format_hparams(_in_order(row["Hparams"], order))]
        if failed:
            cells.append(
                Status.OK.value if row["Status"] == Status.OK else f"failed: {row['Error']}"
            )
        table.add_row(*map(Text, cells))  # Text, not str: a str cell is parsed as markup
    return table


def _best(args: argparse.Namespace, console: Console) -> int:
    from phobbit.storage.view import open_repository

    run = open_repository(args.repo)
    # From the column index, not the pandas table: quick on a run of 100,000 rows.
    ranking = run.ranking()
    if args.json:
        print(json.dumps([b.to_dict() for b in run.best(args.top, ranking)], indent=2))
        return 0
    if not len(ranking):
        console.print(f"{args.repo} has no results yet", soft_wrap=True)
        return 0
    goal = run.settings.goal
    metrics = run.scoring_metrics(ranking.top(args.top))
    _, unknown = metric_columns(goal, metrics, args.columns)
    if unknown:
        raise InputError(unknown_columns_message(unknown, metrics))
    how = _algorithm_words(run.settings.algorithm, run.settings.sampler)
    if how:
        console.print(f"Algorithm: {how.rstrip(', ')}", soft_wrap=True)
    console.print(ranking_table(ranking, args.top, run.hparam_names, goal, metrics, args.columns))
    model_path = run.best(1, ranking)[0].checkpoint
    if model_path is not None:
        console.print(f"Best model: {model_path}", soft_wrap=True)
    return 0


def _export(repo: str, path: str, trial: str | None) -> int:
    from phobbit.storage.checkpoints import export_checkpoint
    from phobbit.storage.view import open_repository

    if not path.endswith(".keras"):
        raise InputError(f"PATH must end with .keras (Keras' format), got {path!r}")
    run = open_repository(repo)
    # Resolved both: a path through a link (or a repository reached through one) is the
    # same place. Written there, an export would replace the run's own files (its
    # checkpoint, stripped of what phobbit records in it) or stand among them.
    folder, target = os.path.realpath(run.path), os.path.realpath(path)
    if os.path.commonpath([folder, target]) == folder:
        raise InputError(
            f"PATH {path} is inside the repository {repo}; an export there would replace "
            "or stand among the run's own files: write it outside the repository folder"
        )
    # A copy a live run cannot replace or delete between finding it and exporting it.
    with run.scoring_copy(trial) as (source, copy):
        if not str(source).endswith(".keras"):
            raise InputError(f"{source} is not a Keras model (the run trained no Keras model)")
        try:
            export_checkpoint(copy, path)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"Wrote {path} from {source}", flush=True)
    return 0


# -- status ----------------------------------------------------------------------

SHOWN_ITERATIONS = 3  # a run of more iterations shows its finished ones as one line


def _fold_finished(rungs: Sequence[Any]) -> tuple[str, list[Any]]:
    """The finished iterations said in words (``"0-480, 482"``), and the rungs left to show.

    A run of hundreds of iterations would otherwise print (and lay out: seconds) a table
    row per bracket of each; the last finished iteration stays in the table (the last two,
    when all are finished).
    """
    iterations = sorted({r.iteration for r in rungs})
    if len(iterations) <= SHOWN_ITERATIONS:
        return "", list(rungs)
    unfinished = {r.iteration for r in rungs if r.done < r.n}
    # Two iterations at least stay in the table, so that its rows name their iteration.
    complete = [i for i in iterations if i not in unfinished][: -max(1, 2 - len(unfinished))]
    if not complete:
        return "", list(rungs)
    folded = set(complete)
    spans: list[list[int]] = []
    for i in complete:
        if spans and spans[-1][1] == i - 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    words = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return words, [r for r in rungs if r.iteration not in folded]


def _status_budget_words(status: Any) -> str:
    """The budget of ``status``'s last driver and the time the run used: ``at most 500
    epochs, time used 2m``, ``time limit 10m, 7m left``; ``budget unknown, time used 2m``
    for a run whose ``driver.json`` does not say (an older version's)."""
    from phobbit.core.units import format_duration

    used = f"time used {format_duration(round(status.time_used))}"
    if status.budget is None:
        return f"budget unknown, {used}"
    words = _budget_words(status.budget)
    # A time limit's words say what is left of it; without one, the time used is said.
    return words if status.budget.time_limit is not None else f"{words}, {used}"


def _driver_words(about: Any) -> str:
    """Where the last driver trained, ``TensorFlow on 2 workers (CPU 0, CPU 1); ``, from its
    ``driver.json``; empty when that does not say."""
    from phobbit.reporting.progress import HIDDEN, slot_summary

    if about is None or about.backend is None:
        return ""
    words = _backend_name(about.backend)
    if about.workers is not None:
        # A GPU slot is its ids ("0", "0,1"); any other (a simulated "cpu") is a CPU worker.
        slots = [d if d.replace(",", "").isdigit() else HIDDEN for d in about.devices]
        devices = f" ({slot_summary(slots)})" if slots else ""
        words += f" on {about.workers} workers{devices}"
    return f"{words}; "


def _status(path: str, console: Console) -> int:
    from phobbit.cli.terminal import best_line, format_duration, rung_table, with_scoring_metrics
    from phobbit.storage.view import open_repository

    run = open_repository(path)
    status = run.status()
    settings = status.settings
    trained_on = _devices_words(status.devices)
    console.print(
        f"Repository {run.path}: R={settings.R} eta={settings.eta} seed={settings.seed}, "
        f"{settings.iterations} iteration(s), {settings.algorithm}, {settings.sampler} "
        f"sampling; {_status_budget_words(status)}; {_driver_words(status.driver.about)}"
        f"trained on {trained_on}; driver {status.driver.describe()}",
        soft_wrap=True,
    )
    finished, shown = _fold_finished(status.rungs)
    if finished:
        console.print(f"Iterations {finished}: every segment done", soft_wrap=True)
    console.print(rung_table(shown))
    done, total = status.epochs_done, status.epochs_total
    line = (
        f"{done}/{total} epochs ({100 * done / max(total, 1):.0f}%), "
        f"{status.segments_done}/{status.segments_total} segments"
    )
    if status.failed:
        line += f", {status.failed} failed"
    if status.first_start is not None and status.last_end is not None:
        now = status.checked_at
        line += (
            f"; started {format_duration(now - status.first_start)} ago, "
            f"last result {format_duration(now - status.last_end)} ago"
        )
        if status.driver.running:
            line += f", left ~{format_duration(status.seconds_left)}"
    console.print(line, soft_wrap=True)
    goal, several = settings.goal, settings.iterations > 1
    best = status.best if status.best is None else with_scoring_metrics(run, status.best)
    console.print(
        f"Best {goal.label} ({goal.direction}) {best_line(best, goal, several)}",
        soft_wrap=True,
    )
    return 0
