"""SIGKILL `mahn train` at random points and resume it as a user would (`--resume`): the final weights,
checkpoint and metrics must equal an uninterrupted run's (sha256), nothing temporary may remain. A file of its
own so that pytest-xdist (`--dist loadfile`) runs it beside the other commands' kills.
"""

from __future__ import annotations

import shutil

import pytest
from harness import Tally, finish, reference_run, trials
from ledger import scaled

from synthetic import make_dataset

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", ["mahn", "sasrec", "mgt"])
def test_train_killed_anywhere_resumes_to_the_same_weights(tmp_path, model):
    data = make_dataset(tmp_path / "data", users=60, items=30)
    out = tmp_path / "run"
    argv = ["train", str(data), "--out", str(out), "--model", model, "--dim", "8", "--epochs", "6", "--patience",
            "6", "--threads", "1", "--no-progress", "--resume"]

    def reset():
        shutil.rmtree(out, ignore_errors=True)

    reference, seconds = reference_run(argv, tmp_path, reset, out)
    tally = Tally("train")
    trials(tally, argv, tmp_path, reset, out, reference, seconds, scaled(25), seed=3)
    finish(tally)
