"""Damaged and crafted weight files: refused with a message naming the file, never half-loaded, never a
traceback from the command line."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from mahn.cli import app
from mahn.errors import DataError
from mahn.settings import resolve
from mahn.training import load_run, train
from synthetic import make_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    data = make_dataset(root / "data", users=40, items=20, length=6)
    train(data, root / "run", resolve(("t", {"dim": 8, "epochs": 1, "batch_size": 32, "max_len": 6, "progress": False,
                                             "threads": 1})))
    return root / "run"


def damaged(run, tmp_path, change) -> object:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = load_file(str(copy / "best.safetensors"))
    change(weights, copy / "best.safetensors")
    return copy


def write(weights, path):
    save_file(weights, str(path))


@pytest.mark.parametrize("change, message", [
    (lambda w, p: p.write_bytes(p.read_bytes()[:100]), "not a readable safetensors file"),
    (lambda w, p: p.write_bytes(b""), "not a readable safetensors file"),
    (lambda w, p: write({**w, "extra.weight": torch.zeros(2)}, p), "unexpected: extra.weight"),
    (lambda w, p: write({k: v for k, v in list(w.items())[1:]}, p), "missing: "),
    (lambda w, p: write({k: (v.double() if v.is_floating_point() else v) for k, v in w.items()}, p),
     "torch.float64 .* the model needs torch.float32"),
    (lambda w, p: write({k: (v[:-1] if v.ndim and v.shape[0] > 1 else v) for k, v in w.items()}, p),
     "the model needs"),
])
def test_damaged_or_crafted_weights_are_refused(run, tmp_path, change, message):
    copy = damaged(run, tmp_path, change)
    with pytest.raises(DataError, match=message) as error:
        load_run(copy, device="cpu")
    assert "best.safetensors" in str(error.value)
    result = CliRunner().invoke(app, ["evaluate", str(copy)])
    assert isinstance(result.exception, DataError) and message.split(" ")[0] in str(result.exception)


def test_a_damaged_checkpoint_is_refused_on_resume(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    checkpoint = copy / "checkpoints" / "last.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-50])
    settings = resolve(("t", {"dim": 8, "epochs": 2, "batch_size": 32, "max_len": 6, "progress": False}))
    with pytest.raises(DataError, match="last.safetensors: not a readable safetensors file"):
        train(load_run(run, device="cpu")[1].root, copy, settings, resume=True)
