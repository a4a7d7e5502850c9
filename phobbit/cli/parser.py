"""The command line's grammar: every command and option of ``phobbit``, with its
defaults, help and the argparse types that read counts, durations and byte sizes
with the library's one grammar (``phobbit.core.units``).

Parsing only: what a command does is ``phobbit.cli.commands``'.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from phobbit import __version__
from phobbit.core.units import check_int, parse_bytes, parse_duration
from phobbit.errors import InputError

DEFAULT_REPO = "phobbit_repo"


# argparse names the option itself ("argument --jobs: must be ..."), so the units functions are
# given this placeholder as the setting's name and it is cut from their messages.
_OPTION = "OPTION"


def _refused(exc: InputError) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(str(exc).removeprefix(f"{_OPTION} "))


def _count(text: str) -> int:
    """An argparse type: an integer >= 1 (workers, rows, batch size, epochs)."""
    try:
        value: Any = int(text)
    except ValueError:
        value = text  # refused below, quoted as it was typed
    try:
        return check_int(_OPTION, value, minimum=1)
    except InputError as exc:
        raise _refused(exc) from None


def _duration(text: str) -> float:
    """An argparse type: seconds, from ``90``, ``90s``, ``15m``, ``2h``, ``1d`` or ``1h30m``."""
    try:
        return parse_duration(text, _OPTION)
    except InputError as exc:
        raise _refused(exc) from None


def _bytes(text: str) -> int:
    """An argparse type: bytes, from ``1GB``, ``512MB``, ``1GiB``, ``64k`` or ``0``."""
    try:
        return parse_bytes(text, _OPTION)
    except InputError as exc:
        raise _refused(exc) from None


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose refusals are one line on stderr and exit code 2.

    argparse prints the whole usage block (ten lines for ``train``) before its
    error; phobbit promises one line for every mistake, with where to read more.
    ``add_subparsers`` builds the commands' parsers with this class too.
    """

    def error(self, message: str) -> NoReturn:
        """Prints ``phobbit: error: MESSAGE; try 'PROG --help'`` and exits 2."""
        self._refuse(message, self.prog)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """Parses ``args``; an unknown option is refused naming its command's ``--help``."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            # argparse refuses these in the top parser, whose --help does not list the
            # command's options; point at the command's own.
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self._refuse(f"unrecognized arguments: {' '.join(extras)}", prog)
        return parsed

    def _refuse(self, message: str, prog: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"phobbit: error: {text}; try '{prog} --help'\n")


COLUMNS_HELP = (
    "metrics shown after the objective, as logged and comma-separated (val_accuracy,loss); "
    "default: the validation metrics the run records"
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, its options, their defaults and help."""
    parser = OneLineParser(
        prog="phobbit",
        description="Parallel Hyperband for Keras models, one worker pinned to each GPU.",
    )
    parser.add_argument("--version", action="version", version=f"phobbit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="tune the model of a model file",
        description="Tune the model of MODEL_FILE with Hyperband; running again on the same "
        "--repo with the same settings resumes.",
    )
    train.add_argument(
        "model_file",
        metavar="MODEL_FILE",
        help="a Python file defining the model function, hparams and data",
    )
    names = train.add_argument_group("names in the model file (defaults: Hobbit's, then plain)")
    names.add_argument(
        "--model-fn", metavar="NAME", help="model function (my_model, model_function)"
    )
    names.add_argument(
        "--hparams", metavar="NAME", help="hyperparameter list (my_hparam_ranges, hparam_ranges)"
    )
    names.add_argument(
        "--dataset",
        metavar="NAME",
        help="data, or a function returning it (my_dataset, dataset, load_dataset)",
    )
    where = train.add_argument_group("workers")
    where.add_argument("--gpus", metavar="IDS", help="GPU ids, one worker pinned to each: 0,1,2,3")
    where.add_argument(
        "--jobs-per-gpu",
        type=_count,
        default=1,
        metavar="K",
        help="trials at once on one GPU (default 1)",
    )
    where.add_argument(
        "--gpus-per-trial",
        type=_count,
        default=1,
        metavar="G",
        help="GPUs each trial trains on, under MirroredStrategy (default 1): --gpus 0,1,2,3 "
        "--gpus-per-trial 2 pins workers to 0,1 and 2,3",
    )
    where.add_argument(
        "--jobs",
        type=_count,
        metavar="N",
        help="CPU workers when there are no GPUs (default: the number of cores)",
    )
    cluster = where.add_mutually_exclusive_group()
    cluster.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="train on the Dask cluster of this scheduler, e.g. tcp://host:8786, instead of "
        "a local pool (needs phobbit[dask]; the repository and the model file on a file "
        "system every worker shares; workers pinned to the GPUs of their host)",
    )
    cluster.add_argument(
        "--dask-scheduler-file",
        metavar="FILE",
        help="as --dask, with the scheduler's address read from the file that "
        "`dask scheduler --scheduler-file FILE` wrote",
    )
    run = train.add_argument_group("the run")
    _add_schedule_options(run)
    run.add_argument(
        "--repo",
        default=DEFAULT_REPO,
        metavar="DIR",
        help=f"repository folder (default ./{DEFAULT_REPO})",
    )
    run.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    run.add_argument(
        "--iterations",
        type=_count,
        default=1,
        metavar="K",
        help="Hyperband iterations, each with its own configurations, run interleaved (default 1)",
    )
    run.add_argument("--batch-size", type=_count, metavar="N", help="fit's batch size (Keras: 32)")
    run.add_argument(
        "--objective",
        metavar="METRIC",
        help="the logged metric that ranks configurations, e.g. val_accuracy (default: the "
        "model file's objective, else val_loss)",
    )
    run.add_argument(
        "--direction",
        choices=("min", "max"),
        help="whether --objective is minimised or maximised (default: inferred from its name)",
    )
    run.add_argument(
        "--algorithm",
        choices=("hyperband", "asha"),
        default="hyperband",
        help="hyperband (exact, synchronous; default) or asha (asynchronous successive "
        "halving: no idle worker; stops at a budget, by default the epochs of --iterations "
        "Hyperband iterations)",
    )
    run.add_argument(
        "--sampler",
        choices=("random", "tpe"),
        default="random",
        help="random (default) or tpe (model-based, BOHB-style; needs phobbit[tpe])",
    )
    run.add_argument(
        "--time-limit",
        type=_duration,
        metavar="TIME",
        help="dispatch nothing new after this long, e.g. 8h or 1h30m (s, m, h, d); segments "
        "in flight finish; run again with a larger limit to go on",
    )
    run.add_argument(
        "--max-epochs",
        type=_count,
        metavar="N",
        help="dispatch nothing new once the run has trained N epochs in all; run again with "
        "a larger N to go on",
    )
    run.add_argument(
        "--backend",
        choices=("tensorflow", "jax", "torch"),
        help="the Keras backend the workers run (default: KERAS_BACKEND, else tensorflow)",
    )
    run.add_argument(
        "--warm-cache",
        type=_bytes,
        metavar="SIZE",
        help="trained models each worker keeps in memory for their next segment, e.g. 1GB, "
        "512MB; 0 keeps none (default: 1GiB; on a GPU they keep GPU memory)",
    )
    run.add_argument(
        "--segment-timeout",
        type=_duration,
        metavar="TIME",
        help="kill a segment (and its worker) that runs longer than this, e.g. 90s, 15m or "
        "1h30m (s, m, h, d); it is retried, then failed 'timed out' (default: none, wait for "
        "ever)",
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="train the failed configurations of the repository again (after a fix to the "
        "data or the code), from their last good checkpoint; the good ones are kept",
    )
    show = train.add_argument_group("output")
    show.add_argument(
        "--progress",
        choices=("auto", "live", "plain"),
        default="auto",
        help="live display, plain lines, or live on a terminal only (default)",
    )
    show.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="plain lines: one per finished segment too; the library's log and the workers' "
        "stderr (TensorFlow's start-up lines) on stderr, not in REPO/workers.log",
    )
    show.add_argument(
        "--top",
        type=_count,
        default=5,
        metavar="K",
        help="best configurations shown at the end (default 5)",
    )
    show.add_argument("--columns", type=_metric_names, metavar="NAMES", help=COLUMNS_HELP)

    schedule = commands.add_parser(
        "brackets",
        help="print the schedule of R and eta",
        description="Print Hyperband's brackets with totals.",
    )
    _add_schedule_options(schedule)
    schedule.add_argument(
        "--algorithm",
        choices=("hyperband", "asha"),
        default="hyperband",
        help="what runs the brackets (default hyperband)",
    )

    status = commands.add_parser(
        "status",
        help="progress of a run (safe while it runs)",
        description="Progress of the run in DIR; safe to call while the run is writing.",
    )
    status.add_argument("repo", metavar="DIR", help="the repository folder")

    best = commands.add_parser(
        "best",
        help="the best configurations of a run",
        description="The best configurations of the run in DIR.",
    )
    best.add_argument("repo", metavar="DIR", help="the repository folder")
    best.add_argument("--top", type=_count, default=5, metavar="K", help="how many (default 5)")
    best.add_argument(
        "--json", action="store_true", help="print JSON for scripts (every metric recorded)"
    )
    best.add_argument("--columns", type=_metric_names, metavar="NAMES", help=COLUMNS_HELP)

    export = commands.add_parser(
        "export",
        help="write the best model as a .keras file",
        description="Write the model of the best epoch of the best configuration of the run "
        "in DIR (or of --trial) to PATH, a .keras file keras.saving.load_model opens.",
    )
    export.add_argument("repo", metavar="DIR", help="the repository folder")
    export.add_argument("path", metavar="PATH", help="the .keras file to write")
    export.add_argument("--trial", metavar="ID", help="a trial of `phobbit best`, e.g. 2-4")

    plot = commands.add_parser(
        "plot",
        help="draw a run: learning curves, the workers' timeline, hparams (matplotlib)",
        description="Draw the run in DIR to an image file (needs phobbit[plot]).",
    )
    plot.add_argument("repo", metavar="DIR", help="the repository folder")
    plot.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="the image: .png, .svg, .pdf"
    )
    plot.add_argument(
        "--kind",
        choices=("all", "curves", "timeline", "hparams"),
        default="all",
        help="curves per bracket, the workers' timeline, the objective per hparam, "
        "or all three in one figure (default)",
    )

    board = commands.add_parser(
        "tensorboard",
        help="(re)write a run's TensorBoard logs (tensorboard --logdir DIR/tensorboard)",
        description="Write the TensorBoard logs of the run in DIR under DIR/tensorboard "
        "from its records (needs phobbit[tensorboard]); only what changed is rewritten.",
    )
    board.add_argument("repo", metavar="DIR", help="the repository folder")
    return parser


def _metric_names(text: str) -> list[str]:
    """``--columns``: metric names, comma-separated; at least one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(
            f"must name metrics, comma-separated (val_accuracy,loss), got {text!r}"
        )
    return names


def _add_schedule_options(group: Any) -> None:
    group.add_argument(
        "--R", type=int, default=20, help="most epochs per configuration (default 20)"
    )
    group.add_argument("--eta", type=int, default=3, help="cut factor (default 3)")
