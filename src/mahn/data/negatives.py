"""The stored evaluation negatives: for every evaluated user and split, items the user never interacted with.

They are drawn once, with a seed, and stored with their sha256 in the manifest, so every model is
scored against the same candidates (the uni100 protocol, docs/protocol.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mahn.data.dataset import SPLITS, Dataset
from mahn.errors import DataError
from mahn.io import lock_folder, read_json, save_npy, sha256_file, write_json


def draw_negatives(root: Path, count: int, seed: int) -> dict:
    """Draw `count` distinct never-interacted items per evaluated user and split; store them and their hashes.

    Uniform sampling without replacement by rejection, with numpy's default_rng(seed): a block of
    candidates is drawn for every user at once and the first `count` valid ones are kept; users left
    short (tiny catalogs) are topped up one by one. The result depends only on the dataset and the seed.
    """
    root = Path(root)
    dataset = Dataset(root)
    lock = lock_folder(root, "writing into this dataset")  # one writer of its negatives and manifest
    try:
        return _draw(root, dataset, count, seed)
    finally:
        os.close(lock)


class TooFewItems(DataError):
    """Some evaluated user has fewer never-seen items than the negatives to draw; `items`: the dataset's items."""

    def __init__(self, message: str, items: int):
        super().__init__(message)
        self.items = items


def _draw(root: Path, dataset: Dataset, count: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    record = {"seed": seed, "count": count, "sampler": "uniform without replacement, never-interacted items",
              "files": {}, "sha256": {}}
    users = np.flatnonzero(dataset.evaluated)
    n = dataset.n_items
    owners = np.repeat(np.arange(dataset.n_users), dataset.lengths)
    seen_keys = np.unique(owners * n + dataset.items)  # (user, item) pairs as one sorted int64 key
    unseen = n - np.diff(np.searchsorted(seen_keys, np.arange(dataset.n_users + 1) * n))
    short = users[unseen[users] < count]
    if len(short):
        raise TooFewItems(f"user {short[0]} has only {unseen[short[0]]} unseen items of {n} to draw {count} "
                          "negatives from; lower --negatives", n)
    for split in SPLITS:
        negatives = np.full((dataset.n_users, count), -1, dtype=np.int32)
        for block in np.array_split(users, max(1, len(users) // 8192)):  # bounded memory
            negatives[block] = draw_block(block, count, n, seen_keys, dataset, rng)
        name = f"negatives/{split}.npy"
        save_npy(root / name, negatives)
        record["files"][split] = name
        record["sha256"][split] = sha256_file(root / name)
    manifest = read_json(root / "manifest.json")
    manifest["negatives"] = record
    write_json(root / "manifest.json", manifest)
    return manifest


def draw_block(users: np.ndarray, count: int, n: int, seen_keys: np.ndarray, dataset, rng) -> np.ndarray:
    width = count + count // 2 + 16
    candidates = rng.integers(0, n, size=(len(users), width))
    keys = users[:, None] * n + candidates
    found = np.minimum(np.searchsorted(seen_keys, keys), len(seen_keys) - 1)
    valid = seen_keys[found] != keys
    first = np.zeros(keys.size, dtype=bool)
    first[np.unique(keys.ravel(), return_index=True)[1]] = True  # drop repeats within a user's draw
    valid &= first.reshape(keys.shape)
    rank = np.cumsum(valid, axis=1)
    result = np.empty((len(users), count), dtype=np.int32)
    for row, user in enumerate(users):
        chosen = candidates[row][valid[row] & (rank[row] <= count)]
        if len(chosen) < count:  # rare: only when the block ran short
            chosen = chosen.tolist()
            taken = set(chosen) | set(dataset.history(user).tolist())
            while len(chosen) < count:
                item = int(rng.integers(0, n))
                if item not in taken:
                    taken.add(item)
                    chosen.append(item)
        result[row] = chosen
    return result
