"""Python API: `mahn.load(RUN).recommend(history_keys, k)`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.evaluation import EvalConfig, evaluate
from mahn.models.base import SequentialModel
from mahn.training import load_run


@dataclass
class Recommendation:
    key: str
    title: str
    score: float


class Recommender:
    """A trained run: its model (best validation weights) and its dataset."""

    def __init__(self, model: SequentialModel, dataset: Dataset, record: dict):
        self.model, self.dataset, self.record = model, dataset, record

    @cached_property
    def keys(self) -> list[str]:
        return self.dataset.item_table["key"].to_list()

    @cached_property
    def index(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.keys)}

    @cached_property
    def titles(self) -> list[str]:
        return self.dataset.titles()

    def item_ids(self, keys: list[str]) -> list[int]:
        unknown = [k for k in keys if k not in self.index]
        if unknown:
            raise DataError(f"unknown item key(s): {', '.join(unknown[:5])}", self.dataset.root / "items.parquet")
        return [self.index[k] for k in keys]

    @torch.no_grad()
    def recommend(self, history: list[str], k: int = 10, exclude_history: bool = True) -> list[Recommendation]:
        """Top-k items after a history of item keys (oldest first)."""
        if not history:
            raise DataError("the history is empty: give at least one item key")
        ids = self.item_ids(history)
        window = torch.tensor([ids[-self.record["train"]["max_len"] :]], device=self.model.device)
        scores = self.model.scores(window)[0]
        if exclude_history:  # every item of the history, as full-ranking evaluation masks them, not only the window
            scores[ids] = -torch.inf
        top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum())))
        return [Recommendation(self.keys[i], self.titles[i], float(s))
                for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    def evaluate(self, split: str = "test", keep_history: bool = False) -> dict:
        config = EvalConfig(split=split, keep_history=keep_history, max_len=self.record["train"]["max_len"])
        return evaluate(self.model, self.dataset, config)


def load(run: str | Path, dataset: str | Path | None = None, device: str = "auto") -> Recommender:
    """Load a training run (best validation checkpoint) onto `device` (auto: a CUDA GPU when there is one).

    `dataset` overrides the dataset path stored in the run.
    """
    model, data, record = load_run(run, dataset, device)
    return Recommender(model, data, record)


__all__ = ["Recommender", "Recommendation", "load"]
