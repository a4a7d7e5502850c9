"""ParallelHyperband end to end on a synthetic trainable: the contracts of DESIGN.md."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
from conftest import read_records
from synthetic import failing_curve, overfitting_curve, x_curve

from phobbit import Hyperparameter, InputError, ParallelHyperband, RepositoryError, brackets
from phobbit.algorithms import Hyperband
from phobbit.core.records import Tuning
from phobbit.core.space import Space
from phobbit.storage.repository import Repository
from phobbit.testing import SyntheticTrainable, serial_hyperband, synthetic_result

STEPS = 10


def tune(hparams, repo, curve=x_curve, records=None, **kwargs) -> ParallelHyperband:
    trainable = SyntheticTrainable(
        curve=curve, steps_per_epoch=STEPS, record_dir=str(records) if records else None
    )
    kwargs.setdefault("verbose", 0)
    return ParallelHyperband(None, hparams, repo, trainable=trainable, **kwargs)


def serial_reference(R: int, eta: int, hparams, seed: int) -> dict:
    """What a serial Hyperband (``phobbit.testing``) gives: "<run>-<id>" -> (val loss, epochs)."""
    run = serial_hyperband(
        Tuning.of(Space(hparams), R, eta, seed), partial(synthetic_result, curve=x_curve)
    )
    return {f"{r.s}-{r.id}": (r.val_loss, r.epochs) for r in run.final().values()}


def test_results_table_is_shaped_like_hobbits(hparams, repo: Path) -> None:
    results = tune(hparams, repo, n_jobs=2).run(R=20, eta=3)
    assert list(results.columns[:4]) == ["Hparams", "ID", "Run", "Val Loss"]
    assert {"Epochs", "Status", "Train Time", "Start", "End"} <= set(results.columns)
    assert len(results) == 9 + 5 + 3
    assert set(results.index) == {f"{b.s}-{i}" for b in brackets(20, 3) for i in range(b.n)}
    assert results["Val Loss"].is_monotonic_increasing
    assert all(
        isinstance(h, dict) and set(h) == {"x", "lr", "act", "units"} for h in results["Hparams"]
    )
    first = results.loc["2-0"]
    assert first["Run"] == 2 and first["ID"] == 0


def test_every_configuration_matches_a_serial_hyperband(hparams, repo: Path) -> None:
    results = tune(hparams, repo, gpus=[0, 1, 2]).run(R=27, eta=3)
    expected = serial_reference(27, 3, hparams, seed=0)
    got = {idx: (row["Val Loss"], row["Epochs"]) for idx, row in results.iterrows()}
    assert got.keys() == expected.keys()
    for idx, (loss, epochs) in expected.items():
        assert got[idx][1] == epochs, idx
        assert got[idx][0] == pytest.approx(loss), idx


def test_same_seed_same_configurations_and_promotions_with_1_or_4_workers(
    hparams, tmp_path: Path
) -> None:
    one = tune(hparams, tmp_path / "one", n_jobs=1, seed=5).run(R=27, eta=3)
    four = tune(hparams, tmp_path / "four", gpus=[0, 1, 2, 3], seed=5).run(R=27, eta=3)
    columns = ["Hparams", "ID", "Run", "Val Loss", "Epochs", "Rung", "Status"]
    pd.testing.assert_frame_equal(one[columns].sort_index(), four[columns].sort_index())
    other = tune(hparams, tmp_path / "other", n_jobs=2, seed=6).run(R=27, eta=3)
    assert other.loc["3-0", "Hparams"] != one.loc["3-0", "Hparams"]


def test_promoted_configurations_resume_and_train_only_missing_epochs(
    hparams, repo: Path, tmp_path: Path
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    results = tune(hparams, repo, records=records, n_jobs=2).run(R=9, eta=3)
    segments = read_records(records)
    for idx, row in results.iterrows():
        run, config_id = map(int, idx.split("-"))
        state = json.loads((repo / "models" / f"0-{run}-{config_id}.json").read_text())
        # the optimizer-like count proves no epoch was trained twice nor skipped
        assert (state["epoch"], state["iterations"]) == (row["Epochs"], row["Epochs"] * STEPS)
    trained = sum(s["epochs"] - s["initial_epoch"] for s in segments)
    assert trained == sum(b.total_epochs(continuation=True) for b in brackets(9, 3))
    assert any(s["initial_epoch"] > 0 for s in segments)


def test_failed_trials_are_recorded_ranked_last_and_the_run_finishes(hparams, repo) -> None:
    results = tune(hparams, repo, curve=failing_curve, n_jobs=2).run(R=9, eta=3)
    failed = results[results["Status"] == "failed"]
    assert len(failed) > 0 and (results["Status"] == "ok").any()
    assert results["Status"].iloc[-len(failed) :].eq("failed").all()
    assert failed["Val Loss"].isna().all()
    errors = set(failed["Error"])
    assert any(e.startswith("ValueError: user code broke on x=") for e in errors)
    assert any("val loss is nan" in e and "diverged" in e for e in errors)
    assert not any("\n" in e for e in errors)


def test_repository_holds_rows_settings_and_checkpoints(hparams, repo: Path) -> None:
    results = tune(hparams, repo, n_jobs=2, seed=3).run(R=9, eta=3)
    settings = json.loads((repo / "run.json").read_text())
    assert {k: settings[k] for k in ("R", "eta", "seed")} == {"R": 9, "eta": 3, "seed": 3}
    assert len(settings["space_fingerprint"]) == 16
    rows = list(Repository(repo).iter_results())
    segments = sum(r.n for b in brackets(9, 3) for r in b.rungs)
    assert len(rows) == segments
    assert {type(r.hparams) for r in rows} == {dict}
    assert len(list((repo / "models").glob("*.json"))) == len(results)


def test_running_again_resumes_without_training_anything(hparams, repo, tmp_path) -> None:
    first = tune(hparams, repo, n_jobs=2).run(R=9, eta=3)
    records = tmp_path / "again"
    records.mkdir()
    again = tune(hparams, repo, records=records, n_jobs=2).run(R=9, eta=3)
    assert read_records(records) == []
    pd.testing.assert_frame_equal(
        first.drop(columns=["Train Time"]), again.drop(columns=["Train Time"])
    )
    with pytest.raises(RepositoryError, match="holds another run"):
        tune(hparams, repo, n_jobs=2).run(R=27, eta=3)


def test_a_resume_with_more_iterations_trains_only_the_new_ones(hparams, repo, tmp_path) -> None:
    tune(hparams, repo, n_jobs=2).run(R=9, eta=3, iterations=1)
    records = tmp_path / "more"
    records.mkdir()
    extended = tune(hparams, repo, records=records, n_jobs=2).run(R=9, eta=3, iterations=2)
    trained = read_records(records)
    iterations = {Path(r["checkpoint"]).name.split("-")[0] for r in trained}
    assert trained and iterations == {"1"}  # checkpoints are <iteration>-<s>-<id>
    fresh = tune(hparams, tmp_path / "fresh", n_jobs=2).run(R=9, eta=3, iterations=2)
    columns = ["Hparams", "Run", "ID", "Val Loss", "Epochs", "Rung", "Iteration"]
    pd.testing.assert_frame_equal(extended[columns], fresh[columns])


def test_iterations_run_their_own_configurations(hparams, repo) -> None:
    results = tune(hparams, repo, n_jobs=2).run(R=9, eta=3, iterations=2)
    assert len(results) == 2 * sum(b.n for b in brackets(9, 3))
    assert set(results["Iteration"]) == {0, 1}
    assert results.loc["0:2-0", "Hparams"] != results.loc["1:2-0", "Hparams"]


def test_hobbit_signature_ports_a_hobbit_script(hparams, repo) -> None:
    dataset = (([[0.0]] * 4, [0] * 4), ([[0.0]] * 2, [0] * 2))
    tuner = Hyperband(lambda hp: None, dataset, hparams, repo)
    assert tuner.space.hparams == tuple(hparams) and tuner.repository.path == repo
    generator = Hyperband(
        model_function=lambda hp: None,
        hparam_ranges=hparams,
        repo_dir=repo,
        generator_function=lambda n: iter(()),
        train_gen_args=(1,),
        valid_gen_args={"n": 2},
        steps_per_epoch=5,
        validation_steps=2,
    )
    assert generator.space == tuner.space


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": None}, "no data"),
        ({"dataset": ([1, 2], [1, 2])}, r"dataset must be \(\(x_train"),
        ({"dataset": (([1, 2], [1]), ([1], [1]))}, "2 training inputs for 1 labels"),
        ({"generator_function": print, "steps_per_epoch": 5}, "validation_steps must be"),
        ({"generator_function": print, "validation_steps": 5}, "steps_per_epoch must be"),
        ({"dataset": (([1], [1]), ([1], [1])), "seed": -1}, "seed must be"),
        ({"dataset": (([1], [1]), ([1], [1])), "jobs_per_gpu": 0}, "jobs_per_gpu must be"),
        ({"dataset": (([1], [1]), ([1], [1])), "gpus": "0,0"}, "listed twice"),
    ],
)
def test_bad_arguments_stop_before_anything_is_written(hparams, repo, kwargs, message) -> None:
    with pytest.raises(InputError, match=message):
        ParallelHyperband(lambda hp: None, hparams, repo, **kwargs)
    assert not repo.exists()


@pytest.mark.parametrize(
    ("R", "eta", "iterations"), [(0, 3, 1), (9, 1, 1), (9, 2.0, 1), (9, 3, 0)]
)
def test_bad_run_settings_stop_before_anything_is_written(hparams, repo, R, eta, iterations):
    with pytest.raises(InputError):
        tune(hparams, repo).run(R=R, eta=eta, iterations=iterations)
    assert not repo.exists()


def test_hyperparameter_names_reach_the_model_function_as_a_dict(repo) -> None:
    hp = [Hyperparameter("dropout", "uniform", (0.0, 0.5))]
    results = tune(hp + [Hyperparameter("x", "uniform", (0, 1))], repo, n_jobs=1).run(3, 3)
    assert all(0.0 <= h["dropout"] < 0.5 for h in results["Hparams"])


def test_the_best_keep_a_file_of_their_best_epoch_and_no_other_file_is_named(
    hparams, repo: Path
) -> None:
    from phobbit.storage.checkpoints import best_epoch, read_progress

    results = tune(hparams, repo, curve=overfitting_curve, n_jobs=2, keep_best=3).run(R=9, eta=3)
    repository = Repository(repo)
    kept = sorted(p.name for p in repository.models.glob("*.best.json"))
    named = {}
    for trial, row in results.iterrows():
        iteration, run, config_id = int(row["Iteration"]), int(row["Run"]), int(row["ID"])
        path = repository.scoring_checkpoint(iteration, run, config_id, row["Val Loss"])
        checkpoint = read_progress(
            repository.checkpoint(iteration, run, config_id).with_suffix(".json")
        )
        last_is_best = best_epoch(checkpoint.val_losses) == checkpoint.epoch
        if path is not None:
            assert read_progress(path).val_loss == row["Val Loss"]  # what it holds scored
            named[trial] = path.name
        else:  # only a best epoch that was not the last, of a configuration not kept
            assert not last_is_best and list(results.index).index(trial) >= 3
    assert len(kept) <= 3 and set(kept) <= set(named.values())
    assert all(trial in named for trial in results.index[:3])
    assert any(name.endswith(".best.json") for name in named.values())
    assert len(named) < len(results), "some best epoch was pruned, so the test can fail"
    with pytest.raises(InputError, match="keep_best must be an integer >= 0"):
        tune(hparams, repo, keep_best=-1)


@pytest.mark.parametrize("keep_best", [0, 2])
def test_best_epoch_files_stay_within_keep_best_plus_workers_while_the_run_goes(
    hparams, tmp_path: Path, keep_best: int
) -> None:
    from helpers import BestFileCounter

    def most_best_files(repo: Path, keep: int) -> int:
        counts = tmp_path / f"counts-{repo.name}"
        counts.mkdir()
        trainable = BestFileCounter(
            curve=overfitting_curve, steps_per_epoch=STEPS, count_dir=str(counts)
        )
        ParallelHyperband(
            None, hparams, repo, trainable=trainable, n_jobs=2, keep_best=keep, verbose=0
        ).run(R=27, eta=3)
        return max(int(p.read_text()) for p in counts.iterdir())

    # Kept until the end, the files would pile up: the bound below can fail.
    assert most_best_files(tmp_path / "all", 1000) > keep_best + 2
    # At most keep_best configurations, plus the two training (or just back), have one.
    assert most_best_files(tmp_path / "pruned", keep_best) <= keep_best + 2


def test_results_rank_by_the_repositorys_objective_whatever_the_tuners(hparams, repo) -> None:
    from backend_probes import accuracy_metrics

    from phobbit.execution.simulated import SimulatedExecutor
    from phobbit.storage.view import open_repository

    trainable = SyntheticTrainable(curve=x_curve, metrics=accuracy_metrics)
    by_accuracy = ParallelHyperband(
        None,
        hparams,
        repo,
        trainable=trainable,
        executor=SimulatedExecutor(2),
        verbose=0,
        objective="val_accuracy",
    ).run(R=9, eta=3)
    # The same repository, opened by a tuner left at its default objective (val_loss).
    other = tune(hparams, repo, executor=SimulatedExecutor(2))
    frame = other.results()
    assert (
        list(frame.index) == list(by_accuracy.index) == list(open_repository(repo).results().index)
    )
    assert "Val Accuracy" in frame.columns
    assert list(frame.index) != list(frame.sort_values("Val Loss").index)  # not by val loss
    assert tune(hparams, repo.parent / "empty").results().empty  # no run yet: its own


def test_the_objects_and_the_flat_keywords_make_the_same_run(hparams, tmp_path: Path) -> None:
    from phobbit import Budget, Resources, Search
    from phobbit.execution.simulated import SimulatedExecutor

    trainable = SyntheticTrainable(curve=x_curve, steps_per_epoch=STEPS)
    flat = ParallelHyperband(
        None,
        hparams,
        tmp_path / "flat",
        trainable=trainable,
        executor=SimulatedExecutor(3),
        max_retries=1,
        algorithm="asha",
        sampler="random",
        max_epochs=60,
        verbose=0,
    )
    grouped = ParallelHyperband(
        None,
        hparams,
        tmp_path / "grouped",
        trainable=trainable,
        resources=Resources(executor=SimulatedExecutor(3), max_retries=1),
        search=Search("asha"),
        budget=Budget(max_epochs=60),
        verbose=0,
    )
    assert (flat.search, flat.resources.max_retries) == (grouped.search, 1)
    columns = ["Hparams", "ID", "Run", "Val Loss", "Epochs", "Rung", "Status"]
    first, second = flat.run(R=9, eta=3), grouped.run(R=9, eta=3)
    pd.testing.assert_frame_equal(first[columns], second[columns])
    assert flat.stopped_by == grouped.stopped_by == "max_epochs"
    assert flat.budget == grouped.budget == Budget(max_epochs=60)
    assert ParallelHyperband(None, hparams, tmp_path / "e", trainable=trainable, search="asha")


def test_a_keras_fit_equals_its_flat_keywords(hparams, repo: Path, monkeypatch) -> None:
    from phobbit import KerasFit, Resources

    def callbacks(hparams: dict) -> list:
        return []

    data = (([[0.0]] * 4, [0] * 4), ([[0.0]] * 2, [0] * 2))
    flat = ParallelHyperband(
        print, hparams, repo, data, batch_size=8, callbacks=callbacks, fit_hparams="lr", n_jobs=2
    )
    fit = KerasFit(print, dataset=data, batch_size=8, callbacks=callbacks, fit_hparams=["lr"])
    grouped = ParallelHyperband(None, hparams, repo, trainable=fit, resources=Resources(n_jobs=2))
    assert flat.fit == grouped.fit == fit and fit.staged and fit.fit_hparams == ("lr",)
    assert flat._keras_kwargs == grouped._keras_kwargs
    assert flat.resources == grouped.resources == Resources(n_jobs=2)
    monkeypatch.setattr("phobbit.execution.executor.visible_gpu_count", lambda: 2)
    assert Resources(gpus="0, 1") == Resources(gpus=[0, 1]) and Resources(gpus=1).gpus == (1,)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"gpu": [0]}, TypeError, r"unexpected keyword 'gpu'; did you mean 'gpus' \(Resources"),
        ({"algoritm": "asha"}, TypeError, r"did you mean 'algorithm' \(Search.algorithm\)\?"),
        ({"sed": 1}, TypeError, r"unexpected keyword 'sed'; did you mean 'seed'\?$"),
        ({"zzz": 1}, TypeError, r"^ParallelHyperband got an unexpected keyword 'zzz'$"),
        ({"search": "asha", "sampler": "tpe"}, InputError, "sampler is a field of Search"),
        ({"budget": "8h"}, InputError, "budget must be a phobbit Budget, got str"),
        ({"resources": 4}, InputError, "resources must be Resources or an Executor, got int"),
        ({"search": 3}, InputError, "search must be a Search or an algorithm's name"),
        ({"search": "tpe"}, InputError, "algorithm must be one of 'hyperband', 'asha'"),
        ({"max_retries": -1}, InputError, "max_retries must be an integer >= 0"),
        ({"segment_timeout": "eight hours"}, InputError, "segment_timeout must be a duration"),
    ],
)
def test_a_keyword_it_does_not_take_is_refused_in_one_line(
    hparams, repo, kwargs, error, message
) -> None:
    with pytest.raises(error, match=message) as refused:
        tune(hparams, repo, **kwargs)
    assert "\n" not in str(refused.value)
    assert not repo.exists()


def test_a_flat_keyword_beside_the_object_that_holds_it_is_refused(hparams, repo) -> None:
    from phobbit import Budget, KerasFit, Resources
    from phobbit.execution.simulated import SimulatedExecutor

    data = (([[0.0]] * 4, [0] * 4), ([[0.0]] * 2, [0] * 2))
    cases = [
        ({"resources": Resources(), "gpus": [0]}, "gpus is a field of Resources"),
        ({"resources": SimulatedExecutor(2), "executor": None}, "executor is a field of Resou"),
        ({"budget": Budget(), "time_limit": "8h"}, "time_limit is a field of Budget"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            tune(hparams, repo, **kwargs)
    fit = KerasFit(print, dataset=data)
    with pytest.raises(InputError, match="model_function, batch_size are fields of KerasFit"):
        ParallelHyperband(print, hparams, repo, trainable=fit, batch_size=4)
    with pytest.raises(InputError, match="dataset is a field of KerasFit"):
        ParallelHyperband(None, hparams, repo, data, trainable=fit)
    with pytest.raises(InputError, match="give gpus/n_jobs to the executor, not beside it"):
        Resources(n_jobs=2, executor=SimulatedExecutor(2))
    assert not repo.exists()


def test_the_driver_imports_no_worker_side_keras_code(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = f"""
import sys
from phobbit import Hyperparameter, KerasFit, ParallelHyperband
hp = [Hyperparameter("x", "uniform", (0, 1))]
data = (([[0.0]] * 4, [0] * 4), ([[0.0]] * 2, [0] * 2))
ParallelHyperband(print, hp, {str(tmp_path / "a")!r}, data, callbacks=[], n_jobs=1)
ParallelHyperband(None, hp, {str(tmp_path / "b")!r}, trainable=KerasFit(print, dataset=data))
worker_side = ("keras", "tensorflow", "phobbit.keras_adapter.trainable",
               "phobbit.keras_adapter.saving", "phobbit.keras_adapter.seeding")
print(sorted(m for m in sys.modules if m.startswith(worker_side)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_public_name_imports() -> None:
    import phobbit

    assert set(phobbit.__all__) == set(phobbit._EXPORTS) | phobbit._SUBMODULES
    for name in phobbit.__all__:
        assert getattr(phobbit, name) is not None, name
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in ("DaskExecutor", "Trainable", "Losses", "Executor", "LocalExecutor"):
        assert name in readme and name in phobbit.__all__, name
    for name in (
        "SimulatedExecutor",
        "Search",
        "Resources",
        "KerasFit",
        "Budget",
        "CheckpointError",
    ):
        assert name in phobbit.__all__, name


def test_a_finished_run_leaves_the_column_index_up_to_date(hparams, repo) -> None:
    from phobbit.execution.simulated import SimulatedExecutor
    from phobbit.storage.index import INDEX
    from phobbit.storage.view import open_repository

    frame = tune(hparams, repo, executor=SimulatedExecutor(2)).run(R=9, eta=3)
    # The first `phobbit status` after the run reads this index instead of building it.
    saved = (repo / INDEX).stat().st_mtime_ns
    status = open_repository(repo).status()
    assert status.segments_done == status.segments_total and len(frame) == 17
    assert (repo / INDEX).stat().st_mtime_ns == saved, "nothing was left to add"
