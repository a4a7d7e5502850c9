"""TensorBoard logs written from a repository's records, read back with TensorBoard's reader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from synthetic import failing_curve, x_curve

from phobbit import Hyperparameter, InputError, ParallelHyperband, open_repository
from phobbit.cli import commands as cli
from phobbit.core.records import config_name
from phobbit.execution.simulated import SimulatedExecutor
from phobbit.reporting import tensorboard as tb
from phobbit.testing import SyntheticTrainable

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402
from tensorboard.plugins.hparams import api_pb2, metadata  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SEGMENTS_R9 = 9 + 3 + 1 + 5 + 1 + 3  # the segments of brackets(9, 3)
SPACE = [
    Hyperparameter("x", "uniform", (0.0, 1.0)),
    Hyperparameter("act", "choice", [("relu", "tanh")]),
    Hyperparameter("units", "randint", (8, 64)),
    Hyperparameter("lr", "log-uniform", (1e-4, 1e-1)),
]


def run(folder: Path, curve=x_curve, **kwargs) -> ParallelHyperband:
    tuner = ParallelHyperband(
        None,
        SPACE,
        folder,
        trainable=SyntheticTrainable(curve=curve),
        executor=SimulatedExecutor(2),
        verbose=0,
        **kwargs,
    )
    tuner.run(R=9, eta=3)
    return tuner


def curves_of(folder: Path) -> pd.DataFrame:
    """The per-epoch curves keras-core's ``curves()`` gives, made from the synthetic curve."""
    records = []
    for row in open_repository(folder).repository.iter_results():
        for epoch in range(row.start_epoch + 1, row.epochs + 1):
            loss = x_curve(row.hparams, epoch)
            records.append(
                {
                    "Iteration": row.iteration,
                    "Run": row.s,
                    "ID": row.id,
                    "Rung": row.rung,
                    "Epoch": epoch,
                    "loss": loss / 2,
                    "val_loss": loss,
                    "val_accuracy": 1 - loss / 4,
                }
            )
    return pd.DataFrame(records).sort_values(["Iteration", "Run", "ID", "Epoch"])


def read(folder: Path) -> event_accumulator.EventAccumulator:
    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator: event_accumulator.EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [
        (e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)
    ]


def assert_points(got: list[tuple[int, float]], expected) -> None:
    """Steps exactly, values as the float32 TensorBoard stores."""
    expected = [(int(step), float(value)) for step, value in expected]
    assert [step for step, _ in got] == [step for step, _ in expected]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)


def event_files(logdir: Path) -> set[Path]:
    return set(logdir.rglob("events.out.tfevents.*"))


def test_a_run_writes_one_session_per_configuration_with_its_hparams_and_objective(
    tmp_path: Path,
) -> None:
    tuner = run(tmp_path / "repo")
    results = tuner.results()
    logdir = tmp_path / "repo" / "tensorboard"
    experiment = read(logdir).PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG]
    info = metadata.parse_experiment_plugin_data(experiment)
    assert [h.name for h in info.hparam_infos] == [hp.name for hp in SPACE]
    assert [m.name.tag for m in info.metric_infos] == ["best_val_loss", "loss", "val_loss"]
    rows = list(tuner.repository.iter_results())
    assert {p.name for p in logdir.iterdir() if p.is_dir()} == {
        config_name(r.iteration, r.s, r.id) for r in rows
    }
    curves = open_repository(tmp_path / "repo").curves()
    for _, config in results.iterrows():
        session = read(logdir / config_name(0, config["Run"], config["ID"]))
        content = session.PluginTagToContent("hparams")
        start = metadata.parse_session_start_info_plugin_data(
            content[metadata.SESSION_START_INFO_TAG]
        )
        logged = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
        assert logged == pytest.approx(config["Hparams"])
        # Every epoch it trained, and the Val Loss that ranks it at its last epoch.
        epochs = curves[(curves["Run"] == config["Run"]) & (curves["ID"] == config["ID"])]
        assert len(epochs) == config["Epochs"]
        for metric in ("loss", "val_loss"):
            assert_points(scalars(session, metric), zip(epochs["Epoch"], epochs[metric]))
        assert_points(scalars(session, "best_val_loss"), [(config["Epochs"], config["Val Loss"])])
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert end.status == api_pb2.STATUS_SUCCESS


def test_writing_again_rewrites_only_what_changed(tmp_path: Path) -> None:
    tuner = run(tmp_path / "repo", tensorboard=False)
    logdir = tmp_path / "repo" / "tensorboard"
    assert not logdir.exists()
    first = tb.write_repository(tmp_path / "repo")
    assert len(first) == len(tuner.results())
    files = event_files(logdir)
    assert tb.write_repository(tmp_path / "repo") == []
    assert event_files(logdir) == files
    # A configuration whose folder was deleted, and one whose record changed, are rewritten.
    victim = sorted(p for p in logdir.iterdir() if p.is_dir())[0]
    for path in victim.iterdir():
        path.unlink()
    victim.rmdir()
    manifest = json.loads((logdir / tb.MANIFEST).read_text())
    other = sorted(n for n in manifest if n and n != victim.name)[0]
    manifest[other] = "stale"
    (logdir / tb.MANIFEST).write_text(json.dumps(manifest))
    assert sorted(tb.write_repository(tmp_path / "repo")) == sorted([victim.name, other])
    assert len(event_files(logdir)) == len(files)


def test_curves_give_every_epoch_of_every_metric_and_the_objective_its_direction(
    tmp_path: Path,
) -> None:
    run(tmp_path / "repo", tensorboard=False)
    curves = curves_of(tmp_path / "repo")
    view = open_repository(tmp_path / "repo")
    found = tb.sessions(view.repository.iter_results(), curves, "val_accuracy", "max")
    logdir = tmp_path / "logs"
    tb.write_logs(logdir, SPACE, found, "val_accuracy")
    info = metadata.parse_experiment_plugin_data(
        read(logdir).PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG]
    )
    assert [m.name.tag for m in info.metric_infos] == [
        "best_val_accuracy",
        "loss",
        "val_accuracy",
        "val_loss",
    ]
    for (i, s, c), frame in curves.groupby(["Iteration", "Run", "ID"]):
        session = read(logdir / config_name(i, s, c))
        for metric in ("loss", "val_loss", "val_accuracy"):
            assert_points(
                scalars(session, metric), zip(frame["Epoch"], frame[metric], strict=True)
            )
        assert_points(
            scalars(session, "best_val_accuracy"),
            [(frame["Epoch"].max(), frame["val_accuracy"].max())],
        )


def test_a_failed_configuration_ends_its_session_as_failed_without_an_objective(
    tmp_path: Path,
) -> None:
    tuner = run(tmp_path / "repo", curve=failing_curve)
    failed = tuner.results().query("Status == 'failed'")
    assert len(failed)
    for _, config in failed.iterrows():
        name = config_name(0, config["Run"], config["ID"])
        session = read(tmp_path / "repo" / "tensorboard" / name)
        content = session.PluginTagToContent("hparams")
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert end.status == api_pb2.STATUS_FAILURE
        assert "best_val_loss" not in session.Tags()["tensors"]


def test_the_writer_never_imports_tensorflow(tmp_path: Path) -> None:
    run(tmp_path / "repo", tensorboard=False)
    code = (
        "import sys; from phobbit.reporting.tensorboard import write_repository; "
        f"write_repository({str(tmp_path / 'repo')!r}); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_without_tensorboard_logs_are_off_and_asking_for_them_says_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(tb, "available", lambda: False)
    with pytest.raises(InputError, match=r'pip install "phobbit\[tensorboard\]"'):
        run(tmp_path / "refused", tensorboard=True)
    assert not (tmp_path / "refused").exists()
    run(tmp_path / "repo")
    assert not (tmp_path / "repo" / "tensorboard").exists()
    assert cli.main(["tensorboard", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("phobbit: error: tensorboard is not installed") and "\n" not in err


def test_phobbit_tensorboard_writes_the_logs_and_says_how_to_view_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tuner = run(tmp_path / "repo", tensorboard=False)
    configs = {config_name(r.iteration, r.s, r.id) for r in tuner.repository.iter_results()}
    assert cli.main(["tensorboard", str(tmp_path / "repo")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {len(configs)} configuration(s) to ")
    assert f"tensorboard --logdir {tmp_path / 'repo' / 'tensorboard'}" in out
    assert (tmp_path / "repo" / "tensorboard" / tb.MANIFEST).is_file()


def test_phobbit_tensorboard_after_train_says_the_logs_are_up_to_date_and_how_many(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    tuner = run(tmp_path / "repo")  # the run wrote its logs itself
    configs = {config_name(r.iteration, r.s, r.id) for r in tuner.repository.iter_results()}
    logdir = tmp_path / "repo" / "tensorboard"
    assert cli.main(["tensorboard", str(tmp_path / "repo")]) == 0
    out = capsys.readouterr().out
    assert f"up to date: {len(configs)} configuration(s) already written in {logdir}" in out
    assert "wrote 0" not in out
    shutil.rmtree(logdir / min(configs))
    assert cli.main(["tensorboard", str(tmp_path / "repo")]) == 0
    out = capsys.readouterr().out
    assert f"wrote 1 configuration(s) to {logdir}; the other {len(configs) - 1} were" in out


def test_tensorboard_must_be_a_bool_or_none(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="tensorboard must be True, False or None, got 'yes'"):
        run(tmp_path / "repo", tensorboard="yes")


def test_the_runs_own_objective_is_the_hparams_metric_and_ranks_as_the_table(
    tmp_path: Path,
) -> None:
    from backend_probes import accuracy_metrics

    tuner = ParallelHyperband(
        None,
        SPACE,
        tmp_path / "repo",
        trainable=SyntheticTrainable(curve=x_curve, metrics=accuracy_metrics),
        executor=SimulatedExecutor(2),
        verbose=0,
        objective="val_accuracy",
    )
    results = tuner.run(R=9, eta=3)
    logdir = tmp_path / "repo" / "tensorboard"
    info = metadata.parse_experiment_plugin_data(
        read(logdir).PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG]
    )
    assert [m.name.tag for m in info.metric_infos][0] == "best_val_accuracy"
    for _, config in results.iterrows():
        session = read(logdir / config_name(0, config["Run"], config["ID"]))
        ((_, best),) = scalars(session, "best_val_accuracy")
        assert best == pytest.approx(config["Val Accuracy"], rel=1e-6)


def test_logs_are_rewritten_while_the_run_goes(tmp_path: Path) -> None:
    """The reporter that wraps the run's: after a finished segment, once the interval passed."""
    from phobbit.execution.scheduler import SilentReporter

    reporter = tb.LoggingReporter(SilentReporter(), tmp_path / "repo", interval=0.0)
    tuner = run(tmp_path / "repo", tensorboard=False, reporter=reporter)
    rows = list(tuner.repository.iter_results())
    # The last write came after the last row: every configuration is there.
    assert {p.name for p in (tmp_path / "repo" / "tensorboard").iterdir() if p.is_dir()} == {
        config_name(r.iteration, r.s, r.id) for r in rows
    }


def test_the_in_run_writer_writes_only_what_each_result_changed_and_reads_the_records_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phobbit.execution.scheduler import SilentReporter
    from phobbit.storage import view

    opened: list[Path] = []
    monkeypatch.setattr(
        view, "open_repository", lambda path: opened.append(Path(path)) or open_repository(path)
    )
    monkeypatch.setattr(tb, "write_repository", None)  # the whole rewrite: not while it runs
    reporter = tb.LoggingReporter(SilentReporter(), tmp_path / "repo", interval=0.0)
    flushes: list[list[str]] = []
    flush = reporter.logs.flush
    monkeypatch.setattr(reporter.logs, "flush", lambda: flushes.append(flush()))
    seen: list[str] = []
    finished = reporter.finished

    def noting(result) -> None:
        seen.append(config_name(result.iteration, result.s, result.id))
        finished(result)

    monkeypatch.setattr(reporter, "finished", noting)
    run(tmp_path / "repo", tensorboard=False, reporter=reporter)
    assert opened == [tmp_path / "repo"]  # the records, read once at the start
    # Each flush wrote the one configuration that had just got a result, no other.
    assert flushes == [[name] for name in seen] and len(seen) == SEGMENTS_R9
    monkeypatch.undo()
    # And what it wrote is what a whole rewrite from the records writes: nothing to redo.
    assert tb.write_repository(tmp_path / "repo") == []


def test_the_logging_reporter_passes_on_every_report(tmp_path: Path) -> None:
    from phobbit.execution.scheduler import Reporter

    reports = [n for n in vars(Reporter) if not n.startswith("_")]
    seen: list[str] = []

    class Inner:
        def __getattr__(self, name: str):
            return lambda *args: seen.append(name)

    reporter = tb.LoggingReporter(Inner(), tmp_path, interval=float("inf"))
    arguments = {"started": 2, "dispatched": 1, "finished": 1, "retrying": 3, "replaced": 1}
    for name in reports:
        getattr(reporter, name)(*[None] * arguments.get(name, 0))
    assert seen == reports and "replaced" in seen


def test_the_in_run_writer_of_a_resumed_run_with_more_iterations_leaves_nothing_to_redo(
    tmp_path: Path,
) -> None:
    from phobbit.execution.scheduler import SilentReporter

    for iterations in (1, 2):
        reporter = tb.LoggingReporter(SilentReporter(), tmp_path / "repo", interval=0.0)
        tuner = ParallelHyperband(
            None,
            SPACE,
            tmp_path / "repo",
            trainable=SyntheticTrainable(curve=x_curve),
            executor=SimulatedExecutor(2),
            verbose=0,
            tensorboard=False,
            reporter=reporter,
        )
        tuner.run(R=9, eta=3, iterations=iterations)
    rows = list(tuner.repository.iter_results())
    logdir = tmp_path / "repo" / "tensorboard"
    assert {p.name for p in logdir.iterdir() if p.is_dir()} == {
        config_name(r.iteration, r.s, r.id) for r in rows
    }
    assert tb.write_repository(tmp_path / "repo") == []  # the experiment too is as it should be
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1
