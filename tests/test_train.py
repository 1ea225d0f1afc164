"""The trainer: seed determinism, resume == uninterrupted, batches built on the fly, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.io import read_json
from mahn.models import MAHNConfig
from mahn.train import TrainConfig, load_run, make_batch, train, training_users
from synthetic import make_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "tiny")


FAST = dict(batch_size=8, max_len=6, progress=False, dim=8)


def quick(epochs: int = 3, seed: int = 0, **overrides) -> tuple[MAHNConfig, TrainConfig]:
    values = {**FAST, "patience": 100, **overrides}
    return (MAHNConfig(dim=values.pop("dim")),
            TrainConfig(epochs=epochs, seed=seed, **values))


def final_state(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / "last.safetensors"))


def test_batches_cover_every_position_without_materialising(tiny):
    dataset = Dataset(tiny)
    users = training_users(dataset)
    batch = make_batch(dataset, users[:5], max_len=4, rng=np.random.default_rng(0))
    pad = dataset.n_items
    assert batch.histories.shape == batch.targets.shape == batch.negatives.shape == (5, 4)
    for row, user in enumerate(users[:5]):
        train_items = dataset.items[dataset.offsets[user] : dataset.train_ends[user]]
        expected = train_items[-5:]  # max_len + 1 items: 4 inputs, 4 targets
        assert batch.histories[row].tolist() == expected[:-1].tolist()
        assert batch.targets[row].tolist() == expected[1:].tolist()
        negatives = batch.negatives[row]
        assert ((negatives >= 0) & (negatives < pad)).all()
        assert not np.isin(negatives.numpy(), expected).any()


def test_short_histories_are_left_padded(tmp_path):
    root = make_dataset(tmp_path / "d", users=6, length=4, modalities=())
    dataset = Dataset(root)
    batch = make_batch(dataset, training_users(dataset), max_len=50, rng=np.random.default_rng(0))
    # 4 items: 2 training items -> one input, one target; width is the longest row, not max_len
    assert batch.histories.shape[1] == 1
    assert (batch.targets != dataset.n_items).sum() == len(training_users(dataset))


def test_same_seed_gives_identical_metrics(tiny, tmp_path):
    model_config, config = quick(epochs=2)
    first = train(tiny, tmp_path / "a", model_config=model_config, config=config)
    second = train(tiny, tmp_path / "b", model_config=model_config, config=config)
    assert first["valid"] == second["valid"]
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train(tiny, tmp_path / "c", model_config=model_config, config=quick(epochs=2, seed=1)[1])
    assert not torch.equal(final_state(tmp_path / "c")["model.lstm1.weight_ih_l0"], a["model.lstm1.weight_ih_l0"])
    assert other["epochs"] == 2


def test_resume_after_interrupt_matches_uninterrupted_run(tiny, tmp_path):
    model_config, config = quick(epochs=4)
    whole = train(tiny, tmp_path / "whole", model_config=model_config, config=config)

    def interrupt(record: dict) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny, tmp_path / "cut", model_config=model_config, config=config, on_epoch_end=interrupt)
    with pytest.raises(DataError, match="--resume"):
        train(tiny, tmp_path / "cut", model_config=model_config, config=config)
    resumed = train(tiny, tmp_path / "cut", model_config=model_config, config=config, resume=True)
    assert resumed["valid"] == whole["valid"] and resumed["steps"] == whole["steps"]
    a, b = final_state(tmp_path / "whole"), final_state(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_run_records_budget_and_loads(tiny, tmp_path):
    model_config, config = quick(epochs=2)
    summary = train(tiny, tmp_path / "run", model_config=model_config, config=config)
    saved = read_json(tmp_path / "run" / "summary.json")
    assert saved["epochs"] == 2 and saved["steps"] > 0 and saved["train_seconds"] > 0
    assert summary["best_epoch"] in (1, 2)
    model, dataset, record = load_run(tmp_path / "run")
    assert record["model_config"]["dim"] == 8 and model.n_items == dataset.n_items


def test_early_stopping_uses_patience(tiny, tmp_path):
    model_config, config = quick(epochs=50, lr=0.0, patience=2)  # lr 0: validation never improves
    summary = train(tiny, tmp_path / "run", model_config=model_config, config=config)
    assert summary["stopped_early"] and summary["epochs"] == 3 and summary["best_epoch"] == 1


def test_missing_features_fail_clearly_unless_ablated(tmp_path):
    root = make_dataset(tmp_path / "plain", users=10, modalities=())
    with pytest.raises(DataError, match="image"):
        train(root, tmp_path / "run", config=quick(epochs=1)[1])
    summary = train(root, tmp_path / "run2", model_config=MAHNConfig(dim=4, ablate="vt"), config=quick(epochs=1)[1])
    assert summary["epochs"] == 1


def test_mahn_overfits_tiny_dataset(tiny, tmp_path):
    model_config, config = quick(epochs=25, lr=1e-2, weight_decay=0.0, dim=16)
    summary = train(tiny, tmp_path / "run", model_config=model_config, config=config)
    history = [r["loss"] for r in read_json_lines(tmp_path / "run" / "metrics.jsonl")]
    assert history[-1] < 0.5 * history[0]
    # each user walks a cluster in order, so the next item is predictable: far above random (1/30)
    assert summary["valid"]["full"]["HR@10"] > 0.8


def read_json_lines(path: Path) -> list[dict]:
    import orjson

    return [orjson.loads(line) for line in path.read_text().splitlines()]


def test_device_is_recorded_and_bad_devices_fail_clearly(tiny, tmp_path):
    from mahn.train import resolve_device

    train(tiny, tmp_path / "run", model_config=quick()[0], config=quick(epochs=1, device="cpu")[1])
    assert read_json(tmp_path / "run" / "config.json")["device"] == "cpu"
    with pytest.raises(DataError, match="unknown device"):
        resolve_device("abacus")
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_run_resumes_and_loads_on_cpu(tiny, tmp_path):
    model_config, config = quick(epochs=2, device="cuda")
    train(tiny, tmp_path / "once", model_config=model_config, config=config)
    train(tiny, tmp_path / "twice", model_config=model_config, config=quick(epochs=1, device="cuda")[1])
    train(tiny, tmp_path / "twice", model_config=model_config, config=config, resume=True)
    once, twice = final_state(tmp_path / "once"), final_state(tmp_path / "twice")
    for key in once:  # CUDA kernels need not repeat bit-for-bit, so close rather than equal
        if key != "cuda_rng":
            torch.testing.assert_close(once[key], twice[key], rtol=1e-3, atol=1e-4)
    model, _, _ = load_run(tmp_path / "once")  # weights saved from the GPU load on the CPU
    assert model.device.type == "cpu"
