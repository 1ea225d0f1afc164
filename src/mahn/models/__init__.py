"""The model registry: name -> model class. Each class has a typed `Config` dataclass and
`from_dataset(config, dataset)`, and implements `mahn.models.base.SequentialModel`."""

from __future__ import annotations

from dataclasses import fields

from mahn.io import DataError
from mahn.models.base import Batch, SequentialModel
from mahn.models.mahn import MAHN, MAHNConfig

MODELS: dict[str, type[SequentialModel]] = {"mahn": MAHN}


def model_class(name: str) -> type[SequentialModel]:
    if name not in MODELS:
        raise DataError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}", "--model")
    return MODELS[name]


def make_config(name: str, values: dict):
    """The model's Config from a dict, ignoring keys that belong to other models or the trainer."""
    config_class = model_class(name).Config
    known = {f.name for f in fields(config_class)}
    return config_class(**{k: v for k, v in values.items() if k in known})


def build_model(name: str, config, dataset) -> SequentialModel:
    return model_class(name).from_dataset(config, dataset)


__all__ = ["MODELS", "MAHN", "MAHNConfig", "Batch", "SequentialModel", "build_model", "make_config",
           "model_class"]
