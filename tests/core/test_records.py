"""RunSettings: what run.json records, validated as one typed object from either side."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_settings
from hypothesis import given, settings
from hypothesis import strategies as st

import phobbit
from phobbit import Hyperparameter, InputError, RepositoryError
from phobbit.core.records import MAX_SEGMENTS, RunSettings, Segment, Status
from phobbit.core.space import Space
from phobbit.storage.repository import encode_row


def test_settings_round_trip_through_json() -> None:
    original = run_settings(R=27, eta=3, seed=4, iterations=2)
    again = RunSettings.from_dict(json.loads(json.dumps(original.to_dict())))
    assert again == original
    assert set(original.to_dict()) == {
        "R",
        "eta",
        "seed",
        "iterations",
        "space_fingerprint",
        "space",
    }


_DROP = object()  # a value for _edited: remove the key


def _edited(**changes: object) -> dict:
    """What run.json holds for ``run_settings()``, with ``changes``."""
    data = run_settings().to_dict()
    data.update(changes)
    return {k: v for k, v in data.items() if v is not _DROP}


_SPACE = [{"name": "x", "distribution": "uniform", "distr_args": [0.0, 1.0]}]

# Each case: what run.json holds, and what the message must say.
BAD_FILES = {
    "empty": ({}, "lacks R, eta, seed, iterations, space_fingerprint, space; restore it"),
    "no seed": (_edited(seed=_DROP), "lacks seed; restore it or use another repository"),
    "a list": ([1, 2], "does not hold a phobbit run"),
    "unknown key": (_edited(shuffle=True), "does not know (shuffle); it was edited or written"),
    "R a string": (_edited(R="9"), "R must be an integer >= 1, got '9'"),
    "R a float": (_edited(R=9.0), "R must be an integer >= 1, got 9.0"),
    "eta 1": (_edited(eta=1), "eta must be an integer >= 2, got 1"),
    "seed negative": (_edited(seed=-1), "seed must be an integer >= 0, got -1"),
    "seed a bool": (_edited(seed=True), "seed must be an integer >= 0, got True"),
    "iterations 0": (_edited(iterations=0), "iterations must be an integer >= 1, got 0"),
    "iterations 1e9": (
        _edited(iterations=10**9),
        "iterations=1000000000 make more than 1,000,000 segments",
    ),
    "R 1e18": (_edited(R=10**18, eta=2), "R=1000000000000000000, eta=2 and iterations=1"),
    "space not a list": (_edited(space="x"), "space must be a list of hyperparameters"),
    "space empty": (_edited(space=[]), "the search space is empty"),
    "hyperparameter without a name": (
        _edited(space=[{"distribution": "uniform", "distr_args": [0, 1]}]),
        "a hyperparameter lacks 'name'",
    ),
    "bad distribution": (
        _edited(space=[{"name": "x", "distribution": "gauss", "distr_args": [0, 1]}]),
        "distribution 'gauss' of hyperparameter 'x' is unknown",
    ),
    "fingerprint of another space": (
        _edited(space_fingerprint="0123456789abcdef"),
        "space_fingerprint '0123456789abcdef' is not that of the space",
    ),
    "fingerprint not a string": (_edited(space_fingerprint=7), "space_fingerprint 7 is not"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_run_json_is_refused_naming_the_file_and_the_field(case: str) -> None:
    data, message = BAD_FILES[case]
    with pytest.raises(RepositoryError, match="^/r/run.json ") as info:
        RunSettings.from_dict(data, "/r/run.json")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_run_of_absurd_size_is_refused_from_the_caller_too() -> None:
    space = Space([Hyperparameter("x", "uniform", (0, 1))])
    with pytest.raises(InputError, match=f"more than {MAX_SEGMENTS:,} segments") as info:
        RunSettings.of(space, R=10**9, eta=2, seed=0)
    assert not isinstance(info.value, RepositoryError)
    assert RunSettings.of(space, R=81, eta=3, seed=0, iterations=1000).segments() == 206_000


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "R": st.integers(-2, 10**20) | _json,
        "eta": st.integers(-2, 10**20) | _json,
        "seed": st.integers(-2, 10**20) | _json,
        "iterations": st.integers(-2, 10**20) | _json,
        "space_fingerprint": st.just(Space.from_list(_SPACE).fingerprint()) | _json,
        "space": st.just(_SPACE) | st.lists(st.dictionaries(st.text(max_size=12), _json)),
    },
)


@settings(max_examples=300, deadline=None)
@given(_fields | _json)
def test_whatever_run_json_holds_it_is_read_or_refused_with_a_repository_error(data) -> None:
    try:
        settings_ = RunSettings.from_dict(data)
    except RepositoryError as exc:
        assert "\n" not in str(exc)
        return
    assert RunSettings.from_dict(json.loads(json.dumps(settings_.to_dict()))) == settings_


# -- segments, results, status ------------------------------------------------------------


def _segment(**changes: object) -> Segment:
    values = dict(
        iteration=0, s=2, id=5, rung=1, hparams={"x": 0.5, "units": [1, 2]},
        start_epoch=3, epochs=9, checkpoint="models/0-2-5", prior_best=0.25,
    )  # fmt: skip
    values.update(changes)
    return Segment(**values)  # type: ignore[arg-type]


def test_a_segment_is_a_dict_key_and_a_set_member() -> None:
    segment = _segment()
    assert {segment: "running"}[_segment()] == "running"
    assert len({segment, _segment(), _segment(rung=2)}) == 2
    assert hash(segment) == hash(_segment(hparams={"x": 0.5, "units": [1, 2]}))


def test_segments_compare_by_every_field_hparams_included() -> None:
    assert _segment() == _segment()
    assert _segment() != _segment(hparams={"x": 0.6, "units": [1, 2]})
    assert _segment() != _segment(checkpoint="elsewhere")


def test_a_segment_and_its_result_pickle_as_plain_data() -> None:
    segment = _segment()
    result = segment.result(val_loss=0.1, last_val_loss=0.2, status=Status.OK, error="")
    assert pickle.loads(pickle.dumps(segment)) == segment
    again = pickle.loads(pickle.dumps(result))
    assert again == result and again.key == segment.key and again.status is Status.OK


def test_status_reads_as_ok_and_failed_and_a_string_is_taken_for_it() -> None:
    assert [str(s) for s in Status] == ["ok", "failed"]
    assert Status.OK == "ok" and f"{Status.FAILED}" == "failed"
    result = _segment().result(val_loss=None, last_val_loss=None, status="failed", error="boom")
    assert result.status is Status.FAILED and not result.ok
    assert ",failed," in encode_row(result)
    with pytest.raises(ValueError):
        _segment().result(val_loss=None, last_val_loss=None, status="crashed", error="")


def test_the_pure_core_imports_no_process_file_or_framework_module() -> None:
    """records, space, schedule, reducer, the state machine, the policy and the plan."""
    code = textwrap.dedent(
        f"""
        import sys, types
        package = types.ModuleType("phobbit")  # skips phobbit/__init__.py, the whole library
        package.__path__ = [{str(Path(phobbit.__file__).parent)!r}]
        sys.modules["phobbit"] = package
        import phobbit.core.plan, phobbit.core.records
        heavy = {{"pandas", "filelock", "loky", "joblib", "rich", "tensorflow", "keras",
                 "phobbit.storage.repository", "phobbit.execution.worker",
                 "phobbit.execution.scheduler"}}
        print(sorted(heavy & set(sys.modules)))
        """
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"
