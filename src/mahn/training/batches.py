"""Training batches, built on the fly from the dataset's CSR histories: no per-prefix copies of the data.

Each user contributes one row per epoch: the last max_len + 1 training items, where inputs [:-1]
predict targets [1:] at every position (the shifted-sequence objective every sequential model here
trains on), with one uniform negative per position.
"""

from __future__ import annotations

import numpy as np
import torch

from mahn.data import Dataset, left_padded
from mahn.models.base import Batch


def training_users(dataset: Dataset) -> np.ndarray:
    """Users with at least two training items (one input, one target)."""
    starts, ends = dataset.train_histories()
    return np.flatnonzero(ends - starts >= 2)


def epoch_order(users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """This epoch's shuffled users (on many processes, every rank draws the same)."""
    return rng.permutation(users)


def make_batch(dataset: Dataset, users: np.ndarray, max_len: int, rng: np.random.Generator) -> Batch:
    """Each user's last max_len + 1 training items: inputs [:-1] predict targets [1:], one negative per position.

    Negatives are uniform over items (never the new items of a new-item split), redrawn (up to 3 times) when
    they hit an item in the row's window.
    """
    pad = dataset.n_items
    starts, ends = dataset.train_histories()
    starts, ends = starts[users], ends[users]
    histories = left_padded(dataset.items, starts, ends - 1, max_len, pad)
    targets = left_padded(dataset.items, starts + 1, ends, max_len, pad)
    real = targets != pad
    window = np.concatenate([histories, targets[:, -1:]], axis=1)
    pool = dataset.training_candidates()  # None: every item
    def draw(size):
        return rng.integers(0, pad, size=size) if pool is None else pool[rng.integers(0, len(pool), size=size)]

    negatives = draw(targets.shape)
    for _ in range(3):
        clash = (negatives[:, :, None] == window[:, None, :]).any(-1) & real
        if not clash.any():
            break
        negatives[clash] = draw(int(clash.sum()))
    negatives = np.where(real, negatives, pad)
    as_tensor = torch.from_numpy
    return Batch(as_tensor(histories), as_tensor(targets), as_tensor(negatives), as_tensor(users.astype(np.int64)))
