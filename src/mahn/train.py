"""Model-agnostic training: batches built on the fly from the CSR histories, Adam + StepLR, early
stopping on validation NDCG@10, and checkpoints that resume bit-for-bit.

Run directory:
  config.json              model name and config, trainer config, dataset path
  checkpoints/last.safetensors  model + optimizer tensors + torch RNG; metadata["trainer"] holds the
                           rest (epoch, numpy RNG, scheduler, early-stopping state, history) as JSON
  best.safetensors         model weights of the best validation epoch (what `evaluate` loads)
  metrics.jsonl            one line per epoch: loss, validation metrics, time
  summary.json             training budget (epochs, steps, wall time) and the best validation epoch
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from mahn.data import Dataset, left_padded
from mahn.errors import DataError
from mahn.evaluate import EvalConfig, evaluate
from mahn.io import atomic_path, read_json, write_bytes, write_json
from mahn.models import build_model, make_config
from mahn.models.base import Batch, SequentialModel


@dataclass
class TrainConfig:
    epochs: int = 100  # upper bound; early stopping usually ends sooner
    batch_size: int = 256  # sequences per step (the paper used 5: slow on CPU, reachable by flag)
    lr: float = 1e-3
    weight_decay: float = 1e-4  # the paper's "regularisation": L2 on weight matrices and embeddings, not biases
    lr_step: int = 10
    lr_gamma: float = 0.5
    max_len: int = 50
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping
    select: str = "full"  # protocol whose validation NDCG@10 picks the checkpoint: full or uni100
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N; results differ across devices
    progress: bool = True

    def __post_init__(self) -> None:
        if self.select not in ("full", "uni100"):
            raise DataError("select must be 'full' or 'uni100'", "--select")
        for name in ("epochs", "batch_size", "max_len", "patience", "lr_step"):
            if getattr(self, name) < 1:
                raise DataError(f"{name} must be at least 1", f"--{name.replace('_', '-')}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise DataError(f"unknown device {name!r} (auto, cpu, cuda or cuda:N)", "--device") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError("device cuda was asked for but torch sees no CUDA GPU", "--device")
    return device


def training_users(dataset: Dataset) -> np.ndarray:
    """Users with at least two training items (one input, one target)."""
    starts, ends = dataset.train_histories()
    return np.flatnonzero(ends - starts >= 2)


def epoch_order(users: np.ndarray, rng: np.random.Generator, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This epoch's shuffled users; with world_size > 1 each rank takes its own stride (for DDP)."""
    return rng.permutation(users)[rank::world_size]


def make_batch(dataset: Dataset, users: np.ndarray, max_len: int, rng: np.random.Generator) -> Batch:
    """Each user's last max_len + 1 training items: inputs [:-1] predict targets [1:], one negative per position.

    Negatives are uniform over items, redrawn (up to 3 times) when they hit an item in the row's window.
    """
    pad = dataset.n_items
    starts, ends = dataset.train_histories()
    starts, ends = starts[users], ends[users]
    histories = left_padded(dataset.items, starts, ends - 1, max_len, pad)
    targets = left_padded(dataset.items, starts + 1, ends, max_len, pad)
    real = targets != pad
    window = np.concatenate([histories, targets[:, -1:]], axis=1)
    negatives = rng.integers(0, pad, size=targets.shape)
    for _ in range(3):
        clash = (negatives[:, :, None] == window[:, None, :]).any(-1) & real
        if not clash.any():
            break
        negatives[clash] = rng.integers(0, pad, size=int(clash.sum()))
    negatives = np.where(real, negatives, pad)
    as_tensor = torch.from_numpy
    return Batch(as_tensor(histories), as_tensor(targets), as_tensor(negatives), as_tensor(users.astype(np.int64)))


def make_optimizer(model: SequentialModel, config: TrainConfig):
    decayed = [p for p in model.parameters() if p.ndim >= 2]
    plain = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.Adam([{"params": decayed, "weight_decay": config.weight_decay},
                                  {"params": plain, "weight_decay": 0.0}], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    return optimizer, scheduler


def save_weights(path: Path, model: SequentialModel, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(path: Path, model: SequentialModel) -> None:
    if not path.exists():
        raise DataError("no saved weights (did training finish an epoch?)", path)
    model.load_state_dict(load_file(str(path)), strict=True)


def save_checkpoint(path: Path, model, optimizer, scheduler, rng: np.random.Generator, state: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_state = optimizer.state_dict()
    for index, values in optim_state["state"].items():
        for name, value in values.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).cpu().contiguous()
    tensors["torch_rng"] = torch.get_rng_state()
    if model.device.type == "cuda":
        tensors["cuda_rng"] = torch.cuda.get_rng_state(model.device)
    trainer = {**state, "numpy_rng": rng.bit_generator.state, "scheduler": scheduler.state_dict(),
               "param_groups": optim_state["param_groups"]}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"trainer": json.dumps(trainer)})


def load_checkpoint(path: Path, model, optimizer, scheduler, rng: np.random.Generator) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        trainer = json.loads(f.metadata()["trainer"])
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": trainer.pop("param_groups")})
    scheduler.load_state_dict(trainer.pop("scheduler"))
    rng.bit_generator.state = trainer.pop("numpy_rng")
    torch.set_rng_state(tensors["torch_rng"])
    if "cuda_rng" in tensors and model.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["cuda_rng"], model.device)
    return trainer


def write_history(run: Path, history: list[dict]) -> None:
    write_bytes(run / "metrics.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in history))


def train(dataset_dir: str | Path, run: str | Path, model_name: str = "mahn", model_config=None,
          config: TrainConfig | None = None, resume: bool = False, force: bool = False,
          on_epoch_end: Callable[[dict], None] | None = None) -> dict:
    """Train `model_name` on a prepared dataset into `run`; returns the summary (also in run/summary.json)."""
    config = config or TrainConfig()
    run = Path(run)
    dataset = Dataset(dataset_dir)
    model_config = model_config or make_config(model_name, {})
    device = resolve_device(config.device)
    checkpoint = run / "checkpoints" / "last.safetensors"
    run_record = {"model": model_name, "model_config": asdict(model_config), "train": asdict(config),
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
    model = build_model(model_name, model_config, dataset).to(device)
    if not getattr(model, "trainable", True):
        write_json(run / "config.json", run_record)
        return fit_without_training(model, dataset, run, model_name, config)
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
        model.train()
        order = epoch_order(users, rng)
        started, total_loss = time.perf_counter(), 0.0
        bar = tqdm(range(0, len(order), config.batch_size), desc=f"epoch {epoch}", disable=not config.progress,
                   leave=False)
        for lo in bar:
            batch = make_batch(dataset, order[lo : lo + config.batch_size], config.max_len, rng).to(device)
            loss = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch.users)
            state["step"] += 1
            bar.set_postfix(loss=f"{loss.item():.4f}",
                            seq_s=f"{(lo + len(batch.users)) / (time.perf_counter() - started):.0f}")
        scheduler.step()
        seconds = time.perf_counter() - started
        valid = evaluate(model, dataset, eval_config)
        record = {"epoch": epoch, "loss": total_loss / len(order), "lr": optimizer.param_groups[0]["lr"],
                  "train_seconds": seconds, "sequences_per_second": len(order) / seconds,
                  "valid": {p: valid[p] for p in ("uni100", "full")}}
        score = valid[config.select]["NDCG@10"]
        state["history"].append(record)
        state["epoch"], state["train_seconds"] = epoch, state["train_seconds"] + seconds
        state["sequences"] += len(order)
        if state["best"] is None or score > state["best"]:
            state.update(best=score, best_epoch=epoch, bad_epochs=0)
            save_weights(run / "best.safetensors", model, {"epoch": str(epoch)})
        else:
            state["bad_epochs"] += 1
        save_checkpoint(checkpoint, model, optimizer, scheduler, rng, state)
        write_history(run, state["history"])
        if config.progress:
            tqdm.write(f"epoch {epoch}: loss {record['loss']:.4f}  valid NDCG@10 full "
                       f"{valid['full']['NDCG@10']:.4f} uni100 {valid['uni100']['NDCG@10']:.4f}  "
                       f"({seconds:.1f}s)")
        if on_epoch_end is not None:
            on_epoch_end(record)

    best = state["history"][state["best_epoch"] - 1]
    summary = {"model": model_name, "epochs": state["epoch"], "steps": state["step"],
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


def load_run(run: str | Path, dataset_dir: str | Path | None = None) -> tuple[SequentialModel, Dataset, dict]:
    """(model with the best validation weights, its dataset, the run's config.json)."""
    run = Path(run)
    record = read_json(run / "config.json")
    dataset = Dataset(dataset_dir or record["dataset"])
    if dataset.n_items != record["n_items"]:
        raise DataError(f"dataset has {dataset.n_items} items, the run was trained on {record['n_items']}",
                        dataset.root)
    model = build_model(record["model"], make_config(record["model"], record["model_config"]), dataset)
    load_weights(run / "best.safetensors", model)
    model.eval()
    return model, dataset, record
