"""Model-agnostic training: Adam + StepLR over batches built on the fly, early stopping on validation
NDCG@10, and checkpoints that resume bit-for-bit.

Run directory:
  config.json              model name and config, trainer config, dataset path
  checkpoints/last.safetensors  model + optimizer tensors + torch RNG; metadata["trainer"] holds the
                           rest (epoch, numpy RNG, scheduler, early-stopping state, history) as JSON
  best.safetensors         model weights of the best validation epoch (what `evaluate` loads)
  metrics.jsonl            one line per epoch: loss, validation metrics, time
  summary.json             training budget (epochs, steps, wall time) and the best validation epoch

Under torchrun the same function trains on many processes (mahn.training.distributed).
"""

from __future__ import annotations

import math
import os
import shutil
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
from mahn.io import lock_folder, read_json, write_bytes, write_json
from mahn.models import build_model
from mahn.models.base import SequentialModel
from mahn.settings import RunSettings, TrainConfig, as_trained, inert, resolve
from mahn.training.batches import epoch_order, make_batch, training_users
from mahn.training.checkpoints import check_fingerprint, load_checkpoint, save_checkpoint, save_weights
from mahn.training.distributed import (
    World,
    barrier,
    epoch_rng,
    from_main,
    join,
    leave,
    rank_part,
    total,
    world_from_env,
    wrap,
)
from mahn.training.lazy_adam import LazyAdam, make_tables_sparse


def make_optimizer(model: SequentialModel, config: TrainConfig, steps_per_epoch: int = 1):
    """Adam (or AdamW, or lazy Adam) with weight decay on weight matrices and, unless switched off, embedding
    tables; never on biases and norms; the rate schedule on top (TrainConfig.lr_schedule)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decayed, plain = [], []
    for p in model.parameters():
        keep = p.ndim >= 2 and (config.embedding_decay or id(p) not in embeddings)
        (decayed if keep else plain).append(p)
    groups = [{"params": decayed, "weight_decay": config.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    if config.optimizer == "lazy-adam":  # embedding tables sparse, their untouched rows left alone (lazy_adam.py)
        make_tables_sparse(model)
        optimizer = LazyAdam(groups, lr=config.lr)
    else:
        adam = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        # fused: one pass over each parameter's memory instead of one per operation (Adam updates every row of an
        # item table each step; on a 500k-item table the step took 4x less time: docs/performance.md)
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
        optimizer = adam(groups, lr=config.lr, fused=True if fused else None)
    if config.lr_schedule == "plateau":  # stepped with the validation score: lr_step bad epochs, then lr_gamma
        # (and at least plateau_steps steps: an epoch's steps are fixed, so that is a number of epochs too)
        epochs = max(config.lr_step, math.ceil(config.plateau_steps / max(1, steps_per_epoch)))
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.lr_gamma,
                                                               patience=epochs - 1, threshold=0.0)
    else:
        gamma = config.lr_gamma if config.lr_schedule == "step" else 1.0
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=gamma)
    return optimizer, scheduler


def train_epoch(model: SequentialModel, optimizer: torch.optim.Optimizer, dataset: Dataset, users: np.ndarray,
                config: TrainConfig, rng: np.random.Generator, desc: str = "epoch", *, world: World = World(),
                epoch: int = 1, step: torch.nn.Module | None = None) -> dict:
    """One pass over `users` in a fresh shuffled order. On many processes every rank draws the same order and
    batches from `rng` and trains on its share of each batch through the DistributedDataParallel `step`
    (distributed.rank_part): the steps of one process; dropout is drawn from (seed, epoch, rank).

    Returns {"loss" (mean per sequence over every rank), "sequences" (every rank's), "steps", "seconds"}.
    """
    model.train()
    order = epoch_order(users, rng)
    if world.distributed:
        torch.manual_seed(int(epoch_rng(world, config.seed, epoch).integers(2**62)))  # this rank's dropout
    started, total_loss, steps = time.perf_counter(), 0.0, 0
    bar = progress.bar(range(0, len(order), config.batch_size), config.progress and world.main, desc=desc)
    for lo in bar:
        batch = make_batch(dataset, order[lo : lo + config.batch_size], config.max_len, rng)
        whole, weight = len(batch.users), 1.0
        if world.distributed:
            batch, weight, _ = rank_part(batch, world, dataset.n_items)
        batch = batch.to(model.device)
        with torch.autocast(model.device.type, torch.bfloat16, enabled=config.precision == "bf16"):
            loss = model.loss(batch) if step is None else step(batch.histories, batch.targets, batch.negatives,
                                                                  batch.users)
        optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()  # weight 1 on one process
        optimizer.step()
        total_loss += loss.item() * weight / world.size * whole  # summed over the ranks: the batch's mean x rows
        steps += 1
        bar.set_postfix(loss=f"{loss.item():.4f}", seq_s=f"{(lo + whole) / (time.perf_counter() - started):.0f}")
    (loss_sum,), sequences = total(world, total_loss), len(order)
    return {"loss": loss_sum / sequences, "sequences": int(sequences), "steps": steps,
            "seconds": time.perf_counter() - started}


def write_history(run: Path, history: list[dict]) -> None:
    write_bytes(run / "metrics.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in history))


def read_history(run: Path) -> list[dict]:
    """The run's metrics.jsonl, one dict an epoch ([] before the first epoch)."""
    path = run / "metrics.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()] if path.is_file() else []


RUN_IDENTITY = ("model", "model_config", "dataset")  # what a run killed before its first checkpoint shares with
# its config.json when it is started again (a resumed run is checked setting by setting: changed_settings)
STOPPING = ("epochs", "patience", "patience_steps")  # the settings a resumed run may change


def changed_settings(run: Path, settings: RunSettings) -> dict[str, tuple]:
    """The settings a run in `run` was trained (or started) with that differ from `settings`: {name: (then, now)};
    {} when the run has no config.json yet. Settings that act on neither side are no difference, and neither is a
    new epoch cap that the run has not reached, or did not need as it stopped early before it."""
    if not (run / "config.json").is_file():
        return {}
    record = read_json(run / "config.json")
    if record["model"] != settings.model:
        return {"model": (record["model"], settings.model)}
    then = orjson.loads(orjson.dumps(as_trained(record)))
    now = orjson.loads(orjson.dumps(asdict(settings.model_config) | asdict(settings.train)))
    ignored = inert(settings.model, then) & inert(settings.model, now)
    changed = {key: (then[key], value) for key, value in now.items() if key not in ignored and then[key] != value}
    if "epochs" in changed:
        summary = read_json(run / "summary.json") if (run / "summary.json").is_file() else None
        if summary is None:  # unfinished: metrics.jsonl may be one epoch behind its checkpoint
            same = len(read_history(run)) + 1 <= settings.train.epochs
        else:
            same = summary["stopped_early"] and summary["epochs"] <= settings.train.epochs
        if same:
            del changed["epochs"]
    return changed


def described(changed: dict[str, tuple]) -> str:
    """Each changed setting (changed_settings) as "name then there, now now", in name order."""
    return ", ".join(f"{name} {then!r} there, {now!r} now" for name, (then, now) in sorted(changed.items()))


def resume_refusal(run: Path, settings: RunSettings) -> DataError | None:
    """Why the run in `run` cannot resume under `settings` (None: it can): a setting other than its stopping rules
    changed, or a cap below the epochs it has trained."""
    changed = {k: v for k, v in changed_settings(run, settings).items() if k not in STOPPING}
    if changed:
        return DataError(f"cannot resume with other settings than the run's config.json ({described(changed)})",
                         run / "config.json")
    trained = len(read_history(run))
    if settings.train.epochs < trained:
        return DataError(f"cannot resume with a cap of {settings.train.epochs} epochs: the run has trained {trained}",
                         "--epochs")
    return None


def killed_before_first_checkpoint(run: Path, record: dict) -> bool:
    """A run killed before its first checkpoint holds no more than its config (the same as `record`'s), a
    first best.safetensors and metrics: `--resume` starts it again from epoch 1."""
    names = {p.name for p in run.iterdir() if not p.name.startswith(".")}
    if not names <= {"config.json", "best.safetensors", "metrics.jsonl", "checkpoints"}:
        return False
    if "config.json" not in names:
        return True
    saved = read_json(run / "config.json")
    return all(saved.get(key) == record[key] for key in RUN_IDENTITY)


def train(dataset_dir: str | Path, run: str | Path, settings: RunSettings | None = None, *, resume: bool = False,
          force: bool = False, on_epoch_end: Callable[[dict], None] | None = None) -> dict:
    """Train a model on a prepared dataset into `run`; returns the summary (also in run/summary.json).

    `settings` come from `mahn.settings.resolve` (None: every default, i.e. MAHN cat-cat).
    """
    settings = settings or resolve()
    world = world_from_env()
    if world.distributed and settings.train.optimizer == "lazy-adam":
        raise DataError("optimizer lazy-adam trains on one process (its sparse gradients are not all-reduced)",
                        "--set optimizer=...")
    device = resolve_device(settings.train.device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)  # one GPU per process
    dataset = Dataset(dataset_dir)  # a bad dataset is refused before anything is written
    join(world, device)
    # one writer per run: a second `mahn train` into the same folder is refused while the first runs
    lock = lock_folder(run, "training into this run") if world.main else None
    finished = False
    try:
        summary = _train(dataset, Path(run), settings, resume, force, on_epoch_end, world, device)
        finished = True
        return summary
    finally:
        if lock is not None:
            os.close(lock)
        leave(world, finished)


def check_run_dir(run: Path, run_record: dict, settings: RunSettings, dataset: Dataset, resuming: bool, resume: bool,
                  force: bool) -> None:
    """A run resumes only with the model, data and settings it started with (its stopping rules may change: a
    longer cap or more patience trains it on); an existing run is never overwritten unless asked (--force), or it
    was killed before it wrote anything worth keeping."""
    if resuming:
        saved = read_json(run / "config.json")
        for key in ("model", "dataset"):
            if saved[key] != run_record[key]:
                raise DataError(f"cannot resume: {key} differs from the run's config.json", run / "config.json")
        refusal = resume_refusal(run, settings)
        if refusal is not None:
            raise refusal
        check_fingerprint(saved, dataset, run)
    elif (run.exists() and any(not p.name.startswith(".") for p in run.iterdir()) and not force
          and not (resume and killed_before_first_checkpoint(run, run_record))):
        raise DataError("run directory exists (pass --resume to continue it or --force to overwrite)", run)


def record_stopping(run: Path, config: TrainConfig) -> None:
    """A resumed run's config.json takes the stopping rules it now trains under (the rest it started with)."""
    saved = read_json(run / "config.json")
    stopping = {key: getattr(config, key) for key in STOPPING}
    if {key: saved["train"].get(key) for key in STOPPING} != stopping:
        saved["train"] |= stopping
        write_json(run / "config.json", saved)


def set_threads(config: TrainConfig, world: World, device: torch.device) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)
    elif world.distributed and device.type == "cpu":  # the processes share the machine's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))


def _train(dataset: Dataset, run: Path, settings: RunSettings, resume: bool, force: bool, on_epoch_end, world: World,
           device: torch.device) -> dict:
    config = settings.train
    checkpoint = run / "checkpoints" / "last.safetensors"
    run_record = {"model": settings.model, "model_config": asdict(settings.model_config), "train": asdict(config),
                  "device": str(device), "processes": world.size,
                  "dataset": str(dataset.root.resolve()), "n_items": dataset.n_items,
                  "dataset_sha256": dataset.fingerprint(),
                  "torch": torch.__version__, "numpy": np.__version__}
    check_run_dir(run, run_record, settings, dataset, resume and checkpoint.exists(), resume, force)
    barrier(world)  # every rank has checked the run directory before rank 0 writes into it
    set_threads(config, world, device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_model(settings.model, settings.model_config, dataset).to(device)
    if not model.trainable:
        summary = None
        if world.main:
            write_json(run / "config.json", run_record)
            summary = fit_without_training(model, dataset, run, settings.model, config)
        return from_main(world, summary)
    candidates = dataset.training_candidates()
    if candidates is not None:  # a new-item split: its new items arrive after training, never candidates
        model.excluded = torch.ones(dataset.n_items, dtype=torch.bool, device=device)
        model.excluded[torch.from_numpy(candidates).to(device)] = False
    step = wrap(model, world, device) if world.distributed else None
    users = training_users(dataset)
    if len(users) == 0:
        raise DataError("no user has two training items to learn from", dataset.root)
    optimizer, scheduler = make_optimizer(model, config, math.ceil(len(users) / config.batch_size))
    state = {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "best_step": 0, "bad_epochs": 0, "history": [],
             "train_seconds": 0.0, "sequences": 0}
    if resume and checkpoint.exists():
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, rng)
        if world.main:  # a kill between the checkpoint and the metrics leaves them one epoch behind
            write_history(run, state["history"])
            record_stopping(run, config)
    elif world.main:
        # a fresh start over an earlier run (--force): none of its outputs may outlive this run's config.json, or
        # a kill before this run's first checkpoint would leave them to be resumed or reused as this run's
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
        for earlier in ("summary.json", "best.safetensors", "metrics.jsonl"):
            (run / earlier).unlink(missing_ok=True)
        write_json(run / "config.json", run_record)
    eval_config = EvalConfig(split="valid", max_len=config.max_len, groups=False)

    def patience_spent() -> bool:  # as many epochs and as many steps without a better score as patience allows
        return (state["bad_epochs"] >= config.patience
                and state["step"] - state.get("best_step", 0) >= config.patience_steps)

    while state["epoch"] < config.epochs and not patience_spent():
        epoch = state["epoch"] + 1
        done = train_epoch(model, optimizer, dataset, users, config, rng, desc=f"epoch {epoch}", world=world,
                           epoch=epoch, step=step)
        state["step"] += done["steps"]
        record = None
        if world.main:  # one evaluation, whose result every rank acts on
            valid = evaluate(model, dataset, eval_config)
            record = {"epoch": epoch, "loss": done["loss"], "lr": optimizer.param_groups[0]["lr"],
                      "train_seconds": done["seconds"], "sequences_per_second": done["sequences"] / done["seconds"],
                      "valid": {p: valid[p] for p in ("uni100", "full")}}
        record = from_main(world, record)
        valid = record["valid"]
        score = valid[config.select]["NDCG@10"]
        if config.lr_schedule == "plateau":
            scheduler.step(score)
        else:
            scheduler.step()
        state["history"].append(record)
        state["epoch"], state["train_seconds"] = epoch, state["train_seconds"] + done["seconds"]
        state["sequences"] += done["sequences"]
        if state["best"] is None or score > state["best"]:
            state.update(best=score, best_epoch=epoch, best_step=state["step"], bad_epochs=0)
            if world.main:
                save_weights(run / "best.safetensors", model, {"epoch": str(epoch)})
        else:
            state["bad_epochs"] += 1
        if world.main:
            save_checkpoint(checkpoint, model, optimizer, scheduler, rng, state)
            write_history(run, state["history"])
        progress.line(f"epoch {epoch}: loss {record['loss']:.4f}  valid NDCG@10 full "
                      f"{valid['full']['NDCG@10']:.4f} uni100 {valid['uni100']['NDCG@10']:.4f}  "
                      f"({done['seconds']:.1f}s)", config.progress and world.main)
        if on_epoch_end is not None:
            on_epoch_end(record)

    best = state["history"][state["best_epoch"] - 1]
    summary = {"model": settings.model, "epochs": state["epoch"], "steps": state["step"],
               "sequences": state["sequences"], "train_seconds": state["train_seconds"],
               "stopped_early": patience_spent(), "best_epoch": state["best_epoch"],
               "select": f"valid {config.select} NDCG@10", "valid": best["valid"], "processes": world.size}
    if world.main:
        write_json(run / "summary.json", summary)
    barrier(world)  # the run is complete on disk when any rank returns
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
