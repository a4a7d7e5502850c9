"""``--gpus-per-trial``: a GPU list that does not split into disjoint groups, a group
without GPUs, or a backend that cannot train one model on several GPUs is refused in
one line before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import SYNTHETIC, assert_one_line_error, phobbit


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--gpus", "0,1,2", "--gpus-per-trial", 2],
            "--gpus 0,1,2 do not split into disjoint groups of --gpus-per-trial 2: 3 GPUs "
            "leave 1 over, and no GPU may serve two trials; give a multiple of 2 GPU ids, "
            "or --gpus-per-trial 1 or 3",
        ),
        (["--gpus-per-trial", 2], "--gpus-per-trial 2 needs --gpus: give 2 GPU ids"),
        (
            ["--gpus", "0,1", "--gpus-per-trial", 2, "--backend", "jax"],
            "--gpus-per-trial 2 trains each trial on several GPUs with TensorFlow's "
            "MirroredStrategy, not with the 'jax' backend",
        ),
        (["--gpus", "0,1", "--gpus-per-trial", 0], "argument --gpus-per-trial: must be an"),
    ],
    ids=["three-gpus-in-pairs", "no-gpus", "jax", "zero"],
)
def test_gpus_per_trial_refusals_are_one_line_and_write_nothing(
    tmp_path: Path, options: list, message: str
) -> None:
    repo = tmp_path / "repo"
    result = phobbit("train", SYNTHETIC, "--repo", repo, *options)
    assert message in assert_one_line_error(result)
    assert not repo.exists()
