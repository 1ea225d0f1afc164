"""The trainer: seed determinism, resume == uninterrupted, batches built on the fly, checkpoints."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.evaluation import EvalConfig, evaluate
from mahn.io import read_json
from mahn.settings import RunSettings, resolve
from mahn.training import load_run, make_batch, train, training_users
from synthetic import make_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "tiny")


FAST = dict(batch_size=8, max_len=6, progress=False, dim=8)


def quick(epochs: int = 3, seed: int = 0, **overrides) -> RunSettings:
    return resolve(("test", {**FAST, "patience": 100, "epochs": epochs, "seed": seed, **overrides}))


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
    settings = quick(epochs=2)
    first = train(tiny, tmp_path / "a", settings)
    second = train(tiny, tmp_path / "b", settings)
    assert first["valid"] == second["valid"]
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train(tiny, tmp_path / "c", quick(epochs=2, seed=1))
    assert not torch.equal(final_state(tmp_path / "c")["model.lstm1.weight_ih_l0"], a["model.lstm1.weight_ih_l0"])
    assert other["epochs"] == 2


def test_resume_after_interrupt_matches_uninterrupted_run(tiny, tmp_path):
    settings = quick(epochs=4)
    whole = train(tiny, tmp_path / "whole", settings)

    def interrupt(record: dict) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny, tmp_path / "cut", settings, on_epoch_end=interrupt)
    with pytest.raises(DataError, match="--resume"):
        train(tiny, tmp_path / "cut", settings)
    resumed = train(tiny, tmp_path / "cut", settings, resume=True)
    assert resumed["valid"] == whole["valid"] and resumed["steps"] == whole["steps"]
    a, b = final_state(tmp_path / "whole"), final_state(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_resume_refuses_other_settings_but_may_train_longer(tiny, tmp_path):
    """A resumed run keeps the settings it started with, the trainer's and the model's (a different rate would
    leave a config.json that lies); its stopping rules may change, and config.json then records the new ones."""
    run = tmp_path / "run"
    train(tiny, run, quick(epochs=2))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    refusals = (({"lr": 0.02}, r"lr 0\.001 there, 0\.02 now"), ({"loss": "bpr"}, "loss 'ce' there, 'bpr' now"),
                ({"epochs": 1}, "a cap of 1 epochs: the run has trained 2"))
    for changed, said in refusals:
        with pytest.raises(DataError, match=said):
            train(tiny, run, quick(**{"epochs": 3, **changed}), resume=True)
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    record = read_json(run / "config.json")
    longer = train(tiny, run, quick(epochs=3, patience=7, threads=1), resume=True)
    record["train"] |= {"epochs": 3, "patience": 7}  # and nothing else: threads are how it ran, not what it learnt
    assert longer["epochs"] == 3 and read_json(run / "config.json") == record


def test_a_forced_fresh_start_leaves_nothing_of_the_run_it_replaces(tiny, tmp_path):
    """--force over a finished run, cut in its first epoch: the old run's summary, weights and checkpoint must
    not stand in for the new one's (a later --resume or a caller that skips finished runs would use them)."""
    run = tmp_path / "run"
    train(tiny, run, quick(epochs=3))

    def cut(record: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny, run, quick(epochs=3, lr=0.02), force=True, on_epoch_end=cut)
    assert not (run / "summary.json").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) <= 1
    assert read_json(run / "config.json")["train"]["lr"] == 0.02
    resumed = train(tiny, run, quick(epochs=3, lr=0.02), resume=True)
    fresh = train(tiny, tmp_path / "fresh", quick(epochs=3, lr=0.02))
    assert resumed["epochs"] == 3 and resumed["steps"] == fresh["steps"]


def test_run_records_budget_and_keeps_the_best_epoch(tiny, tmp_path):
    """summary.json counts the steps, sequences and time actually spent; best_epoch is the argmax of the
    selected protocol's validation NDCG@10, and best.safetensors holds that epoch's weights."""
    from safetensors.torch import load_file

    users = len(training_users(Dataset(tiny)))
    epochs, batch_size = 6, 6  # 40 users in batches of 6: the last batch of an epoch is partial
    best = {}
    for select in ("full", "uni100"):
        run = tmp_path / select
        records, stamps, weights = [], [], {}

        def snapshot(record: dict, run: Path = run, records=records, stamps=stamps, weights=weights) -> None:
            stamps.append(time.perf_counter())
            records.append(record)
            weights[record["epoch"]] = {k[6:]: v for k, v in final_state(run).items() if k.startswith("model.")}

        started = time.perf_counter()
        summary = train(tiny, run, quick(epochs=epochs, lr=0.1, batch_size=batch_size, select=select, loss="bpr"),
                        on_epoch_end=snapshot)
        history = read_json_lines(run / "metrics.jsonl")
        assert read_json(run / "summary.json") == summary and history == records
        assert summary["epochs"] == epochs and [r["epoch"] for r in history] == list(range(1, epochs + 1))
        assert summary["steps"] == epochs * math.ceil(users / batch_size)
        assert summary["sequences"] == epochs * users
        # each epoch's training time fits between the end of the previous epoch and the end of its own
        gaps = np.diff([started, *stamps])
        assert all(r["train_seconds"] <= gap for r, gap in zip(history, gaps, strict=True))
        assert summary["train_seconds"] == pytest.approx(sum(r["train_seconds"] for r in history))
        assert all(r["sequences_per_second"] == pytest.approx(users / r["train_seconds"]) for r in history)

        scores = [r["valid"][select]["NDCG@10"] for r in history]
        assert summary["best_epoch"] == 1 + int(np.argmax(scores)) and summary["select"] == f"valid {select} NDCG@10"
        assert summary["valid"] == history[summary["best_epoch"] - 1]["valid"]
        saved, expected = load_file(str(run / "best.safetensors")), weights[summary["best_epoch"]]
        assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)
        model, dataset, record = load_run(run)
        assert record["model_config"]["dim"] == 8 and model.n_items == dataset.n_items
        again = evaluate(model, dataset, EvalConfig(split="valid", max_len=FAST["max_len"], groups=False))
        for protocol in ("uni100", "full"):
            assert again[protocol] == pytest.approx(summary["valid"][protocol], rel=1e-6)
        best[select] = summary["best_epoch"]
    # the case discriminates: validation peaks before the last epoch, and at another epoch per protocol
    # (full 3, uni100 5 with these settings); if a model change moves the peaks, pick settings that keep this
    assert best["full"] != best["uni100"] and max(best.values()) < epochs, best


def test_early_stopping_uses_patience(tiny, tmp_path):
    settings = quick(epochs=50, lr=0.0, patience=2, patience_steps=0)  # lr 0: validation never improves
    summary = train(tiny, tmp_path / "run", settings)
    assert summary["stopped_early"] and summary["epochs"] == 3 and summary["best_epoch"] == 1
    # and the steps: a run stops once both patience epochs and patience_steps steps have passed since the best
    per_epoch = summary["steps"] // summary["epochs"]
    settings = quick(epochs=50, lr=0.0, patience=2, patience_steps=4 * per_epoch + 1)
    summary = train(tiny, tmp_path / "steps", settings)
    assert summary["stopped_early"] and summary["epochs"] == 6 and summary["best_epoch"] == 1


def test_missing_features_fail_clearly_unless_ablated(tmp_path):
    root = make_dataset(tmp_path / "plain", users=10, modalities=())
    with pytest.raises(DataError, match="image"):
        train(root, tmp_path / "run", quick(epochs=1))
    summary = train(root, tmp_path / "run2", quick(epochs=1, dim=4, ablate="vt"))
    assert summary["epochs"] == 1


def test_mahn_overfits_tiny_dataset(tiny, tmp_path):
    settings = quick(epochs=25, lr=1e-2, weight_decay=0.0, dim=16)
    summary = train(tiny, tmp_path / "run", settings)
    history = [r["loss"] for r in read_json_lines(tmp_path / "run" / "metrics.jsonl")]
    assert history[-1] < 0.5 * history[0]
    # each user walks a cluster in order, so the next item is predictable: far above random (1/30)
    assert summary["valid"]["full"]["HR@10"] > 0.8


def read_json_lines(path: Path) -> list[dict]:
    import orjson

    return [orjson.loads(line) for line in path.read_text().splitlines()]


def test_device_is_recorded_and_bad_devices_fail_clearly(tiny, tmp_path):
    from mahn.device import resolve_device

    train(tiny, tmp_path / "run", quick(epochs=1, device="cpu"))
    assert read_json(tmp_path / "run" / "config.json")["device"] == "cpu"
    with pytest.raises(DataError, match="unknown device"):
        resolve_device("abacus")
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_run_resumes_and_loads_on_cpu(tiny, tmp_path):
    settings = quick(epochs=2, device="cuda")
    train(tiny, tmp_path / "once", settings)
    train(tiny, tmp_path / "twice", quick(epochs=1, device="cuda"))
    train(tiny, tmp_path / "twice", settings, resume=True)
    once, twice = final_state(tmp_path / "once"), final_state(tmp_path / "twice")
    for key in once:  # CUDA kernels need not repeat bit-for-bit, so close rather than equal
        if key != "cuda_rng":
            torch.testing.assert_close(once[key], twice[key], rtol=1e-3, atol=1e-4)
    model, _, _ = load_run(tmp_path / "once", device="cpu")  # weights saved from the GPU load on the CPU
    assert model.device.type == "cpu"


def test_the_trainers_fused_adam_takes_the_default_adams_steps():
    """make_optimizer uses torch's fused Adam (one pass over each parameter a step); 10 steps of a small SASRec
    must end where the default (foreach) Adam with the same groups ends, up to rounding, far from the start."""
    from mahn.models.base import Batch
    from mahn.models.sasrec import SASRec, SASRecConfig
    from mahn.training import make_optimizer

    def parameters_after(fused: bool, steps: int = 10) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = SASRec(SASRecConfig(dim=16, dropout=0.0, max_len=6), 30)
        optimizer, _ = make_optimizer(model, resolve(("t", {"model": "sasrec", "lr": 0.01})).train)
        assert all(group["fused"] for group in optimizer.param_groups)
        if not fused:  # the same groups, torch's default implementation
            optimizer = type(optimizer)([{k: g[k] for k in ("params", "weight_decay")} for g in optimizer.param_groups],
                                        lr=0.01)
        generator = torch.Generator().manual_seed(1)
        for _ in range(steps):
            histories, targets, negatives = (torch.randint(0, 30, (8, 6), generator=generator) for _ in range(3))
            optimizer.zero_grad()
            model.loss(Batch(histories, targets, negatives, torch.arange(8))).backward()
            optimizer.step()
        # the attention's key bias has a zero gradient in exact arithmetic: Adam scales its rounding noise up to
        # full steps, differently in each implementation
        return {name: p.detach() for name, p in model.named_parameters() if not name.endswith("in_proj_bias")}

    fused, default, start = parameters_after(True), parameters_after(False), parameters_after(True, steps=0)
    assert max((fused[name] - start[name]).abs().max() for name in start) > 0.05  # 10 steps of lr 0.01 moved it
    for name in fused:
        torch.testing.assert_close(fused[name], default[name], rtol=0, atol=1e-6)


def test_lazy_adam_is_adam_on_rows_a_step_touches_and_leaves_the_others_alone():
    """LazyAdam (optimizer=lazy-adam): when every row is looked up each step, its steps are torch Adam's (coupled
    L2 included); a row no batch looks up keeps its weights and moments, where Adam would move it."""
    from mahn.training.lazy_adam import LazyAdam, make_tables_sparse

    def run(lazy: bool, rows: torch.Tensor, steps: int = 8) -> tuple[torch.nn.Embedding, torch.optim.Optimizer]:
        torch.manual_seed(0)
        table, head = torch.nn.Embedding(12, 4), torch.nn.Linear(4, 1)
        groups = [{"params": [table.weight, head.weight], "weight_decay": 0.01}, {"params": [head.bias],
                                                                                  "weight_decay": 0.0}]
        if lazy:
            assert make_tables_sparse(table) == 1
        optimizer = (LazyAdam if lazy else torch.optim.Adam)(groups, lr=0.05)
        generator = torch.Generator().manual_seed(1)
        for _ in range(steps):
            ids = rows[torch.randint(0, len(rows), (20,), generator=generator)]
            ids = torch.cat([rows, ids]) if len(rows) == 12 else ids  # every row at least once
            optimizer.zero_grad()
            head(table(ids)).pow(2).mean().backward()
            optimizer.step()
        return table, optimizer

    every = torch.arange(12)
    lazy, _ = run(True, every)
    plain, _ = run(False, every)
    torch.manual_seed(0)
    start = torch.nn.Embedding(12, 4).weight.detach()
    assert (lazy.weight - start).abs().max() > 0.1  # 8 steps of lr 0.05 moved it
    torch.testing.assert_close(lazy.weight, plain.weight, rtol=0, atol=1e-6)

    some = torch.arange(6)  # rows 6-11 never looked up
    lazy, optimizer = run(True, some)
    plain, _ = run(False, some)
    assert torch.equal(lazy.weight[6:], start[6:])
    assert not torch.equal(plain.weight[6:], start[6:])  # Adam decays and moves untouched rows
    state = optimizer.state[lazy.weight]
    assert not state["exp_avg"][6:].any() and not state["exp_avg_sq"][6:].any()
    assert state["exp_avg"][:6].abs().min() > 0


def test_lazy_adam_trains_resumes_and_refuses_many_processes(tiny, tmp_path, monkeypatch):
    """--set optimizer=lazy-adam through the trainer: learns (validation above an untrained model's), resumes
    bit-for-bit from its checkpoint, and is refused on more than one process before anything is written."""
    settings = quick(epochs=4, model="sasrec", loss="sampled-ce", optimizer="lazy-adam")
    whole = train(tiny, tmp_path / "whole", settings)
    untrained = train(tiny, tmp_path / "zero", quick(epochs=1, model="sasrec", loss="sampled-ce", lr=0.0))
    assert whole["valid"]["full"]["NDCG@10"] > untrained["valid"]["full"]["NDCG@10"]

    def interrupt(record: dict) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny, tmp_path / "cut", settings, on_epoch_end=interrupt)
    resumed = train(tiny, tmp_path / "cut", settings, resume=True)
    assert resumed["valid"] == whole["valid"]
    a, b = final_state(tmp_path / "whole"), final_state(tmp_path / "cut")
    assert any(k.startswith("optim.") and k.endswith("exp_avg") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DataError, match="one process"):
        train(tiny, tmp_path / "two", settings)
    assert not (tmp_path / "two").exists()


def test_a_plateau_cut_waits_for_its_steps_as_well_as_its_epochs(tiny, tmp_path):
    """`plateau` cuts the rate after lr_step epochs without a better validation score, and not before
    plateau_steps steps have passed too (a small dataset has a few steps an epoch). A rate too small to move
    the weights keeps the score flat after epoch 1, so the cut comes exactly when the rule says."""
    steps_per_epoch = math.ceil(len(training_users(Dataset(tiny))) / 8)
    first_cut = {}
    for plateau_steps in (0, 3 * steps_per_epoch):
        settings = resolve(("t", {"model": "gru4rec", "dim": 8, "batch_size": 8, "max_len": 6, "epochs": 6,
                                  "patience": 100, "lr": 1e-6, "lr_schedule": "plateau", "lr_step": 1,
                                  "lr_gamma": 0.5, "plateau_steps": plateau_steps, "progress": False}))
        run = tmp_path / f"steps{plateau_steps}"
        train(tiny, run, settings)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        scores = {r["valid"]["full"]["NDCG@10"] for r in records}
        assert len(scores) == 1  # flat: every epoch after the first is a bad one
        first_cut[plateau_steps] = next(r["epoch"] for r in records if r["lr"] < 1e-6)
    # epochs only: the first bad epoch (2) cuts, seen from epoch 3; with steps: 3 bad epochs (2-4), seen from 5
    assert first_cut == {0: 3, 3 * steps_per_epoch: 5}
