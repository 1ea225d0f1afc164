"""Model-agnostic training: Adam + StepLR over batches built on the fly, early stopping on validation
NDCG@10, and checkpoints that resume bit-for-bit.

Run directory:
  config.json              model name and config, trainer config, dataset path
  checkpoints/last.safetensors  model + optimizer tensors + torch RNG; metadata["trainer"] holds the
                           rest (epoch, numpy RNG, scheduler, early-stopping state, history) as JSON
  best.safetensors         model weights of the best validation epoch (what `evaluate` loads)
  metrics.jsonl            one line per epoch: loss, validation metrics, time
  summary.json             training budget (epochs, steps, wall time) and the best validation epoch
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import orjson
import torch

from mahn import progress
from mahn.data import Dataset
from mahn.device import resolve_device
from mahn.errors import DataError
from mahn.evaluation import EvalConfig, evaluate
from mahn.io import read_json, write_bytes, write_json
from mahn.models import build_model
from mahn.models.base import SequentialModel
from mahn.settings import RunSettings, TrainConfig, resolve
from mahn.training.batches import epoch_order, make_batch, training_users
from mahn.training.checkpoints import load_checkpoint, save_checkpoint, save_weights


def make_optimizer(model: SequentialModel, config: TrainConfig):
    """Adam (or AdamW) with weight decay on weight matrices and, unless switched off, embedding tables; never
    on biases and norms; StepLR on top (lr_gamma 1 keeps the rate constant)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decayed, plain = [], []
    for p in model.parameters():
        keep = p.ndim >= 2 and (config.embedding_decay or id(p) not in embeddings)
        (decayed if keep else plain).append(p)
    groups = [{"params": decayed, "weight_decay": config.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    adam = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = adam(groups, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    return optimizer, scheduler


def train_epoch(model: SequentialModel, optimizer: torch.optim.Optimizer, dataset: Dataset, users: np.ndarray,
                config: TrainConfig, rng: np.random.Generator, desc: str = "epoch") -> dict:
    """One pass over `users` in a fresh shuffled order.

    Returns {"loss" (mean per sequence), "sequences", "steps", "seconds"}.
    """
    model.train()
    order = epoch_order(users, rng)
    started, total_loss, steps = time.perf_counter(), 0.0, 0
    bar = progress.bar(range(0, len(order), config.batch_size), config.progress, desc=desc)
    for lo in bar:
        batch = make_batch(dataset, order[lo : lo + config.batch_size], config.max_len, rng).to(model.device)
        loss = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(batch.users)
        steps += 1
        bar.set_postfix(loss=f"{loss.item():.4f}",
                        seq_s=f"{(lo + len(batch.users)) / (time.perf_counter() - started):.0f}")
    return {"loss": total_loss / len(order), "sequences": len(order), "steps": steps,
            "seconds": time.perf_counter() - started}


def write_history(run: Path, history: list[dict]) -> None:
    write_bytes(run / "metrics.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in history))


def train(dataset_dir: str | Path, run: str | Path, settings: RunSettings | None = None, *, resume: bool = False,
          force: bool = False, on_epoch_end: Callable[[dict], None] | None = None) -> dict:
    """Train a model on a prepared dataset into `run`; returns the summary (also in run/summary.json).

    `settings` come from `mahn.settings.resolve` (None: every default, i.e. MAHN cat-cat).
    """
    settings = settings or resolve()
    config = settings.train
    run = Path(run)
    dataset = Dataset(dataset_dir)
    device = resolve_device(config.device)
    checkpoint = run / "checkpoints" / "last.safetensors"
    run_record = {"model": settings.model, "model_config": asdict(settings.model_config), "train": asdict(config),
                  "device": str(device),
                  "dataset": str(Path(dataset_dir).resolve()), "n_items": dataset.n_items,
                  "torch": torch.__version__, "numpy": np.__version__}
    if resume and checkpoint.exists():
        saved = read_json(run / "config.json")
        for key in ("model", "model_config", "dataset"):
            if saved[key] != run_record[key]:
                raise DataError(f"cannot resume: {key} differs from the run's config.json", run / "config.json")
    elif run.exists() and any(run.iterdir()) and not force:
        raise DataError("run directory exists (pass --resume to continue it or --force to overwrite)", run)

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_model(settings.model, settings.model_config, dataset).to(device)
    if not model.trainable:
        write_json(run / "config.json", run_record)
        return fit_without_training(model, dataset, run, settings.model, config)
    optimizer, scheduler = make_optimizer(model, config)
    state = {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "bad_epochs": 0, "history": [],
             "train_seconds": 0.0, "sequences": 0}
    if resume and checkpoint.exists():
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, rng)
    else:
        write_json(run / "config.json", run_record)
    eval_config = EvalConfig(split="valid", max_len=config.max_len, groups=False)
    users = training_users(dataset)
    if len(users) == 0:
        raise DataError("no user has two training items to learn from", dataset.root)

    while state["epoch"] < config.epochs and state["bad_epochs"] < config.patience:
        epoch = state["epoch"] + 1
        done = train_epoch(model, optimizer, dataset, users, config, rng, desc=f"epoch {epoch}")
        scheduler.step()
        state["step"] += done["steps"]
        valid = evaluate(model, dataset, eval_config)
        record = {"epoch": epoch, "loss": done["loss"], "lr": optimizer.param_groups[0]["lr"],
                  "train_seconds": done["seconds"], "sequences_per_second": done["sequences"] / done["seconds"],
                  "valid": {p: valid[p] for p in ("uni100", "full")}}
        score = valid[config.select]["NDCG@10"]
        state["history"].append(record)
        state["epoch"], state["train_seconds"] = epoch, state["train_seconds"] + done["seconds"]
        state["sequences"] += done["sequences"]
        if state["best"] is None or score > state["best"]:
            state.update(best=score, best_epoch=epoch, bad_epochs=0)
            save_weights(run / "best.safetensors", model, {"epoch": str(epoch)})
        else:
            state["bad_epochs"] += 1
        save_checkpoint(checkpoint, model, optimizer, scheduler, rng, state)
        write_history(run, state["history"])
        progress.line(f"epoch {epoch}: loss {record['loss']:.4f}  valid NDCG@10 full "
                      f"{valid['full']['NDCG@10']:.4f} uni100 {valid['uni100']['NDCG@10']:.4f}  "
                      f"({done['seconds']:.1f}s)", config.progress)
        if on_epoch_end is not None:
            on_epoch_end(record)

    best = state["history"][state["best_epoch"] - 1]
    summary = {"model": settings.model, "epochs": state["epoch"], "steps": state["step"],
               "sequences": state["sequences"], "train_seconds": state["train_seconds"],
               "stopped_early": state["bad_epochs"] >= config.patience, "best_epoch": state["best_epoch"],
               "select": f"valid {config.select} NDCG@10", "valid": best["valid"]}
    write_json(run / "summary.json", summary)
    return summary


def fit_without_training(model: SequentialModel, dataset: Dataset, run: Path, model_name: str,
                         config: TrainConfig) -> dict:
    """A model with nothing to learn (popularity): score validation once and save it like a trained run."""
    started = time.perf_counter()
    valid = evaluate(model, dataset, EvalConfig(split="valid", max_len=config.max_len, groups=False))
    save_weights(run / "best.safetensors", model, {"epoch": "0"})
    record = {"epoch": 0, "valid": {p: valid[p] for p in ("uni100", "full")}}
    write_history(run, [record])
    summary = {"model": model_name, "epochs": 0, "steps": 0, "sequences": 0,
               "train_seconds": time.perf_counter() - started, "stopped_early": False, "best_epoch": 0,
               "select": f"valid {config.select} NDCG@10", "valid": record["valid"]}
    write_json(run / "summary.json", summary)
    return summary
