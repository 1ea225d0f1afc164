"""Damaged and crafted weight files: refused with a message naming the file, never half-loaded, never a
traceback from the command line."""

from __future__ import annotations

import os
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


def test_the_code_never_unpickles_or_evaluates_data():
    """A scan of every module: no pickle-family imports, no eval/exec, torch.load only with weights_only=True,
    np.load only with allow_pickle=False."""
    import ast
    from pathlib import Path

    found = []
    for path in sorted((Path(__file__).resolve().parents[1] / "src" / "mahn").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve", "joblib")
                       for n in names):
                    found.append(f"{where} imports {names}")
            if not isinstance(node, ast.Call):
                continue
            function = node.func
            keywords = {k.arg: k.value for k in node.keywords}
            if isinstance(function, ast.Name) and function.id in ("eval", "exec", "compile", "__import__"):
                found.append(f"{where} calls {function.id}")
            if isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name):
                call = f"{function.value.id}.{function.attr}"
                if call == "torch.load" and not (isinstance(keywords.get("weights_only"), ast.Constant)
                                                 and keywords["weights_only"].value is True):
                    found.append(f"{where} torch.load without weights_only=True")
                if call in ("np.load", "numpy.load") and not (isinstance(keywords.get("allow_pickle"), ast.Constant)
                                                              and keywords["allow_pickle"].value is False):
                    found.append(f"{where} np.load without allow_pickle=False")
                if call in ("pd.read_pickle", "torch.jit.load", "yaml.load"):
                    found.append(f"{where} {call}")
    assert not found, found


def test_a_run_is_refused_against_a_dataset_that_changed_since_training(tmp_path):
    data = make_dataset(tmp_path / "data", users=40, items=20, length=6, seed=0)
    settings = resolve(("t", {"dim": 8, "epochs": 1, "batch_size": 32, "max_len": 6, "progress": False}))
    train(data, tmp_path / "run", settings)
    load_run(tmp_path / "run", device="cpu")  # unchanged: loads
    shutil.rmtree(data)
    make_dataset(tmp_path / "data", users=40, items=20, length=6, seed=1)  # same sizes, other interactions
    with pytest.raises(DataError, match=r"changed since this run was trained \(interactions.parquet: trained on"):
        load_run(tmp_path / "run", device="cpu")
    with pytest.raises(DataError, match="changed since this run was trained"):
        train(data, tmp_path / "run", resolve(("t", {"dim": 8, "epochs": 2, "batch_size": 32, "max_len": 6,
                                                     "progress": False})), resume=True)
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run")])
    assert isinstance(result.exception, DataError) and "interactions.parquet" in str(result.exception)


def test_a_second_writer_of_a_run_is_refused_and_a_killed_ones_lock_is_not_stale(tmp_path):
    import subprocess
    import sys
    import time

    data = make_dataset(tmp_path / "data", users=300, items=40, length=8)
    command = [sys.executable, "-m", "mahn", "train", str(data), "--out", str(tmp_path / "run"), "--epochs", "500",
               "--patience", "500", "--dim", "8", "--max-len", "6", "--no-progress", "--threads", "1"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "checkpoints" / "last.safetensors").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first training did not start"
            time.sleep(0.2)
        settings = resolve(("t", {"dim": 8, "epochs": 500, "max_len": 6, "progress": False}))
        with pytest.raises(DataError, match="another process is training into this run"):
            train(data, tmp_path / "run", settings, resume=True)
    finally:
        first.kill()
        first.wait()
    # the killed process's lock went with it: the run resumes from its last checkpoint (for one more epoch at
    # most: its metrics may be an epoch behind the checkpoint, and a cap below the epochs trained is refused)
    trained = len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    summary = train(data, tmp_path / "run", resolve(("t", {"dim": 8, "epochs": trained + 1, "max_len": 6,
                                                           "patience": 500, "progress": False})), resume=True)
    assert summary["epochs"] == trained + 1


def test_two_writers_of_one_dataset_are_serialised_by_a_lock_that_leaves_no_file(tmp_path):
    from mahn.data.negatives import draw_negatives
    from mahn.features import FeatureConfig, extract_features
    from mahn.io import lock_folder

    data = make_dataset(tmp_path / "data", users=40, items=30, modalities=())
    before = sorted(p.name for p in data.iterdir())
    held = lock_folder(data, "writing into this dataset")  # as a `mahn features` still running would
    try:
        with pytest.raises(DataError, match="another process is writing into this dataset"):
            draw_negatives(data, 5, seed=1)
        with pytest.raises(DataError, match="another process is writing into this dataset"):
            extract_features(data, FeatureConfig(image="none", text="codes", progress=False))
    finally:
        os.close(held)
    assert sorted(p.name for p in data.iterdir()) == before  # no lock file, nothing half-written
    draw_negatives(data, 5, seed=1)  # the lock went with its holder
