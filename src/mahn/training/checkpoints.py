"""Weights and checkpoints as safetensors + JSON (never pickles), and loading a finished run.

`best.safetensors` holds the model weights of the best validation epoch; `checkpoints/last.safetensors`
holds the model, the optimizer's tensors and the torch RNG, with the rest of the trainer's state
(epoch, numpy RNG, scheduler, early stopping, history) as JSON in its metadata, so a run resumes
bit-for-bit. Everything is saved from CPU copies: a run trained on a GPU loads anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mahn.data import Dataset
from mahn.device import resolve_device
from mahn.errors import DataError
from mahn.io import atomic_path, read_json
from mahn.models import build_model, make_config
from mahn.models.base import SequentialModel


def save_weights(path: Path, model: SequentialModel, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a DataError when it is missing or not a readable safetensors file."""
    if not path.exists():
        raise DataError("no saved weights (did training finish an epoch?)", path)
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for every kind of damage
        raise DataError(f"not a readable safetensors file ({type(e).__name__}: {str(e)[:200]})", path) from None


def load_into(model: SequentialModel, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Load `weights` into `model` after checking that they are exactly its tensors: the same names, shapes and
    dtypes (a file made for another model or crafted by hand is refused, never cast or half-loaded)."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise DataError(f"does not hold this model's weights (missing: {', '.join(missing[:3]) or 'none'}; "
                        f"unexpected: {', '.join(unexpected[:3]) or 'none'})", path)
    for name, tensor in weights.items():
        want = expected[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise DataError(f"tensor {name} is {tensor.dtype} {tuple(tensor.shape)}; the model needs {want.dtype} "
                            f"{tuple(want.shape)}", path)
    model.load_state_dict(weights, strict=True)


def load_weights(path: Path, model: SequentialModel) -> None:
    load_into(model, read_tensors(path), path)


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

    tensors = read_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            trainer = json.loads(f.metadata()["trainer"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"a checkpoint without a readable trainer state ({type(e).__name__})", path) from None
    load_into(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
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


def check_fingerprint(record: dict, dataset: Dataset, run: Path) -> None:
    """Refuse a dataset whose interactions, items or features differ from those the run was trained on (runs
    made before runs recorded them are not checked)."""
    recorded = record.get("dataset_sha256")
    if recorded is None:
        return
    current = dataset.fingerprint()
    changed = [name for name in sorted(set(recorded) | set(current)) if recorded.get(name) != current.get(name)]
    if changed:
        what = "; ".join(f"{name}: trained on {str(recorded.get(name))[:12]}, now {str(current.get(name))[:12]}"
                         for name in changed)
        raise DataError(f"the dataset {dataset.root} changed since this run was trained ({what}); retrain, or give "
                        "the dataset it was trained on", run / "config.json")


def load_run(run: str | Path, dataset_dir: str | Path | None = None,
             device: str | torch.device = "auto") -> tuple[SequentialModel, Dataset, dict]:
    """(model with the best validation weights on `device`, its dataset, the run's config.json).

    `dataset_dir` overrides the dataset path stored in the run (a dataset that moved); `device` is
    resolved like training's `--device` (auto: a CUDA GPU when there is one).
    """
    run = Path(run)
    record = read_json(run / "config.json")
    dataset = Dataset(dataset_dir or record["dataset"])
    if dataset.n_items != record["n_items"]:
        raise DataError(f"dataset has {dataset.n_items} items, the run was trained on {record['n_items']}",
                        dataset.root)
    check_fingerprint(record, dataset, run)
    model = build_model(record["model"], make_config(record["model"], record["model_config"]), dataset)
    load_weights(run / "best.safetensors", model)
    model.to(resolve_device(device)).eval()
    return model, dataset, record
