"""The model registry: name -> model class. Each class has a typed `Config` dataclass and
`from_dataset(config, dataset)`, and implements `mahn.models.base.SequentialModel`."""

from __future__ import annotations

import sys
from dataclasses import fields

from mahn.errors import DataError
from mahn.models.base import Batch, SequentialModel
from mahn.models.bert4rec import BERT4Rec
from mahn.models.caser import Caser
from mahn.models.gru4rec import GRU4Rec
from mahn.models.jrl import JRL
from mahn.models.mahn import MAHN, MAHNConfig
from mahn.models.mgt import MGT
from mahn.models.mvrnn import MVRNN
from mahn.models.popularity import Popularity
from mahn.models.sasrec import SASRec
from mahn.models.vbpr import VBPR

MODELS: dict[str, type[SequentialModel]] = {
    "mahn": MAHN,
    "vbpr": VBPR,
    "jrl": JRL,
    "mvrnn": MVRNN,
    "gru4rec": GRU4Rec,
    "caser": Caser,
    "sasrec": SASRec,
    "bert4rec": BERT4Rec,
    "popularity": Popularity,
    "mgt": MGT,
}
LABELS = {"mahn": "MAHN", "vbpr": "VBPR", "jrl": "JRL", "mvrnn": "MV-RNN", "gru4rec": "GRU4Rec", "caser": "Caser",
          "sasrec": "SASRec", "bert4rec": "BERT4Rec", "popularity": "Popularity",
          "mgt": "MGT (ours)"}  # names as the papers write them


def label(name: str) -> str:
    """The model's name as printed in tables ("mvrnn" -> "MV-RNN")."""
    return LABELS.get(name, name)


def model_class(name: str) -> type[SequentialModel]:
    if name not in MODELS:
        raise DataError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}", "--model")
    return MODELS[name]


def describe(name: str) -> str:
    """The first line of the model's docstring: what it is and where it comes from."""
    doc = sys.modules[model_class(name).__module__].__doc__ or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def make_config(name: str, values: dict):
    """The model's Config from a dict, ignoring keys that belong to other models or the trainer."""
    config_class = model_class(name).Config
    known = {f.name for f in fields(config_class)}
    return config_class(**{k: v for k, v in values.items() if k in known})


def build_model(name: str, config, dataset) -> SequentialModel:
    return model_class(name).from_dataset(config, dataset)


__all__ = ["LABELS", "MODELS", "MAHN", "MAHNConfig", "Batch", "SequentialModel", "build_model", "describe", "label",
           "make_config", "model_class"]
