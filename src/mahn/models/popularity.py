"""Popularity: rank every item by how often it occurs in the training split. The floor every
personalised model must beat (docs/protocol.md). Not from a paper; no parameters and nothing to train.

score(u, i) = training frequency of i, the same for every user. In the shared interface the user
state is the constant [1] and the item table is the frequency column, so scoring stays one matrix
product. Equal frequencies tie, and the evaluator ranks ties fairly (expected rank), so unseen
items are not ordered arbitrarily.

The counts come from `Dataset.item_frequency()` (training items only: validation and test targets
are never counted) and are stored in the state dict, so a saved run ranks with exactly the counts it
was built from. `trainable = False` tells the trainer to skip optimisation: there is nothing to
learn, and `loss` is a constant 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mahn.errors import DataError
from mahn.models.base import Batch, SequentialModel


@dataclass
class PopularityConfig:
    pass


class Popularity(SequentialModel):
    Config = PopularityConfig
    trainable = False

    def __init__(self, config: PopularityConfig, frequency: torch.Tensor):
        super().__init__()
        if frequency.ndim != 1 or (frequency < 0).any():
            raise DataError("popularity needs one non-negative count per item")
        self.config = config
        self.n_items = len(frequency)
        self.register_buffer("frequency", frequency.float())

    @classmethod
    def from_dataset(cls, config: PopularityConfig, dataset) -> Popularity:
        return cls(config, torch.from_numpy(dataset.item_frequency()))

    def encode(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return self.frequency.new_ones(len(histories), 1)

    def item_table(self) -> torch.Tensor:
        return self.frequency.unsqueeze(1)

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.frequency.new_zeros(())
