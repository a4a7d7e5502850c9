"""A per-worker timeline of one ``phobbit.keras_tuner`` run of the Keras Tuner port script.

Issue 20 asks that the Keras Tuner script of ``keras_tuner_port.py`` finish in at most
half of Keras Tuner's wall time with ``n_jobs=2``. This script shows where phobbit's
wall time goes: it runs that script (the same ``build_model(hp)``, data and
``Hyperband`` arguments) once, in a fresh process, and records when each step
happened, from the process's start to its exit:

- the driver: Keras imported, the tuner made, ``search`` called, the pool started,
  the space discovered, the run set up, the first segment handed out, the last
  result recorded, the pool shut down, ``search`` returned, the best model loaded
  and evaluated, the process gone;
- each worker: its process started, its Keras imported (the pool's initializer
  done), the discovery and the input check it ran, and every segment it trained
  (``results.csv``'s start and end), with the gaps between them.

It prints one table of the driver's steps, one of each worker's, and the busy
fraction of the two workers between the first segment and the last result. Run as

    python benchmarks/keras_tuner_timeline.py --max-epochs 27 --seed 0

Measurement only: the hooks wrap phobbit's functions from outside (in this script),
they change nothing the run does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

EVENTS_ENV = "PHOBBIT_TIMELINE_EVENTS"  # this script's own: where the hooks append events


def _note(what: str, **extra: Any) -> None:
    """Appends one event (wall time, pid, what) to the events file (any process)."""
    path = os.environ.get(EVENTS_ENV)
    if path:
        line = json.dumps({"t": time.time(), "pid": os.getpid(), "what": what, **extra})
        with open(path, "a") as out:
            out.write(line + "\n")


def _wrap(owner: Any, name: str, label: str) -> None:
    """Replaces ``owner.name`` with a function that notes its start and end."""
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _note(f"{label} begins")
        try:
            return original(*args, **kwargs)
        finally:
            _note(f"{label} ends")

    setattr(owner, name, wrapped)


def _hooks() -> None:
    """Hooks the driver's steps, and the worker-side functions the pool pickles by name."""
    import phobbit.api as api
    import phobbit.execution.executor as executor
    import phobbit.execution.scheduler as scheduler
    import phobbit.keras_adapter.hypermodel as hypermodel
    import phobbit.keras_tuner as kt

    _wrap(executor.LocalExecutor, "start", "pool start")
    _wrap(executor.LocalExecutor, "shutdown", "pool shutdown")
    _wrap(kt, "discover_in", "discovery (driver)")
    _wrap(api.ParallelHyperband, "run", "ParallelHyperband.run")
    _wrap(scheduler.Scheduler, "drive", "scheduler.drive")
    _wrap(scheduler.Scheduler, "_check_input", "input check (driver)")
    _wrap(kt.Hyperband, "get_best_models", "get_best_models")
    # Worker side: these run in the workers, which unpickle them from this module (loky
    # pickles __main__ functions by value), so they note there too.
    initializer = executor._pin_with_memory_limit
    executor._pin_with_memory_limit = _worker_hook(initializer, "worker initializer")
    scheduler.check_input = _worker_hook(scheduler.check_input, "input check")
    hypermodel.discover_space = _worker_hook(hypermodel.discover_space, "discovery")
    original_submit = executor.LocalExecutor.submit

    def submit(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(fn, "__name__", "") == "train_segment" and not getattr(self, "_noted", 0):
            self._noted = 1
            _note("first segment handed out")
        return original_submit(self, fn, *args, **kwargs)

    executor.LocalExecutor.submit = submit


def _worker_hook(function: Any, label: str) -> Any:
    def hooked(*args: Any, **kwargs: Any) -> Any:
        _note(f"{label} begins")
        try:
            return function(*args, **kwargs)
        finally:
            _note(f"{label} ends")

    hooked.__name__ = getattr(function, "__name__", label)
    return hooked


def child(seed: int, max_epochs: int, keep: str) -> None:
    """The port script's phobbit side, hooked; its repository is kept in ``keep``."""
    _note("process up (Python started, this script imported)")
    import keras  # noqa: F401  (the port script imports Keras first: a phase of its own)

    _note("keras imported")
    import phobbit.keras_tuner as kt

    _hooks()
    _note("phobbit imported")
    from keras_models import load_digits_split
    from keras_tuner_port import make_tuner  # the port script's tuner, the same run

    (x, y), (x_val, y_val) = load_digits_split()
    tuner = make_tuner(kt, seed, max_epochs, keep)
    _note("search begins")
    tuner.search(x, y, validation_data=(x_val, y_val), verbose=0)
    _note("search returned")
    best = tuner.get_best_models(num_models=1)[0]
    best.evaluate(x_val, y_val, verbose=0)
    _note("best model evaluated")
    warm = {"warm_starts": tuner.tuner.warm_starts, "continued": tuner.tuner.continued}
    _note("script done", **warm)


def _table(events: list[dict], rows: list[Any], launched: float) -> str:
    driver = events[0]["pid"]
    lines = ["| t (s) | process | event |", "|---|---|---|"]
    workers = sorted({e["pid"] for e in events if e["pid"] != driver} | {r.pid for r in rows})
    name = {driver: "driver", **{pid: f"worker {i + 1}" for i, pid in enumerate(workers)}}
    timed = [(e["t"], name.get(e["pid"], str(e["pid"])), e["what"]) for e in events]
    for row in rows:
        what = f"segment {row.s}-{row.id} rung {row.rung} ({row.start_epoch}->{row.epochs})"
        timed += [(row.start, name[row.pid], what + " begins")]
        timed += [(row.end, name[row.pid], what + " ends")]
    for t, who, what in sorted(timed):
        lines.append(f"| {t - launched:6.2f} | {who} | {what} |")
    return "\n".join(lines)


def _summary(events: list[dict], rows: list[Any], launched: float, exited: float) -> str:
    """Each worker's busy time, gaps and tail, and the run's phases."""
    first = min(r.start for r in rows)
    last = max(r.end for r in rows)
    driver = events[0]["pid"]
    at = {e["what"]: e["t"] for e in events if e["pid"] == driver}
    out = [
        f"process start to exit: {exited - launched:.1f} s",
        f"start to first segment: {first - launched:.1f} s; segments span {last - first:.1f} s; "
        f"last result to exit: {exited - last:.1f} s",
    ]
    for label in ("pool shutdown", "get_best_models"):
        if f"{label} begins" in at:
            out.append(f"{label}: {at[f'{label} ends'] - at[f'{label} begins']:.2f} s")
    busy_all = 0.0
    for pid in sorted({r.pid for r in rows}):
        mine = sorted((r for r in rows if r.pid == pid), key=lambda r: r.start)
        busy = sum(r.end - r.start for r in mine)
        busy_all += busy
        gaps = [b.start - a.end for a, b in zip(mine, mine[1:])]
        out.append(
            f"worker {pid}: {len(mine)} segments, busy {busy:.1f} s, first at "
            f"{mine[0].start - launched:.1f} s, gaps {sum(gaps):.1f} s (largest "
            f"{max(gaps, default=0):.2f} s), idle after its last {last - mine[-1].end:.1f} s"
        )
    workers = len({r.pid for r in rows})
    out.append(
        f"busy fraction between first segment and last result: "
        f"{busy_all / (workers * (last - first)):.3f}"
    )
    warm = [e for e in events if e["what"] == "script done"]
    if warm:
        out.append(f"warm starts {warm[0]['warm_starts']} of {warm[0]['continued']} continued")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=27)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.seed, args.max_epochs, args.child)
        return 0
    from phobbit.storage.repository import Repository

    with tempfile.TemporaryDirectory(prefix="kt-timeline-") as keep:
        events_path = Path(keep) / "events.jsonl"
        env = dict(os.environ, PYTHONPATH=str(HERE.parent), TF_CPP_MIN_LOG_LEVEL="2")
        env[EVENTS_ENV] = str(events_path)
        command = [sys.executable, __file__, "--child", keep, "--seed", str(args.seed)]
        command += ["--max-epochs", str(args.max_epochs)]
        load = os.getloadavg()
        launched = time.time()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        exited = time.time()
        if done.returncode:
            print(done.stderr[-3000:])
            return 1
        events = [json.loads(line) for line in events_path.read_text().splitlines()]
        rows = list(Repository(Path(keep) / "digits").iter_results())
        print(
            f"max_epochs {args.max_epochs}, seed {args.seed}, load {load[0]:.2f} -> "
            f"{os.getloadavg()[0]:.2f}\n"
        )
        print(_table(events, rows, launched))
        print()
        print(_summary(events, rows, launched, exited))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
