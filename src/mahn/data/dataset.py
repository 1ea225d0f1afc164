"""Read a prepared dataset (see docs/data-format.md): histories, the leave-one-out split, negatives, features.

Histories are held as CSR arrays: `offsets` (users + 1) and `items` (interactions), each user's
items in time order. Nothing is materialised per prefix; trainers slice these arrays on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from mahn.errors import DataError
from mahn.io import load_npy, read_json, sha256_file

if TYPE_CHECKING:
    import polars as pl

SCHEMA_VERSION = 1
SPLITS = ("valid", "test")
MIN_EVAL_LENGTH = 3  # a user needs a training item, a validation target and a test target


@dataclass(frozen=True)
class EvalSet:
    """The users evaluated on one split. Input history of row r: items[offsets[users[r]] : input_ends[r]]."""

    split: str
    users: np.ndarray  # int64 (n,)
    input_ends: np.ndarray  # int64 (n,) absolute end index into Dataset.items
    targets: np.ndarray  # int64 (n,)


def covered_modalities(manifest: dict) -> list[str]:
    """The modalities whose features cover at least one item (Office's images: none could be fetched)."""
    records = manifest.get("features", {})
    return sorted(m for m, record in records.items() if record.get("coverage", 1.0) > 0)


class Dataset:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "manifest.json").exists():
            raise DataError("not a prepared dataset (no manifest.json); run `mahn prepare` first", self.root)
        self.manifest: dict = read_json(self.root / "manifest.json")
        version = self.manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DataError(f"schema_version {version} is not supported (expected {SCHEMA_VERSION})",
                            self.root / "manifest.json")
        counts = self.manifest["counts"]
        self.n_users: int = counts["users"]
        self.n_items: int = counts["items"]
        # pyarrow rather than Polars here keeps training (and the GPU machines that run it) free of Polars
        table = pq.read_table(self.root / "interactions.parquet", columns=["user", "item"])
        users = table["user"].to_numpy()
        self.items: np.ndarray = table["item"].to_numpy().astype(np.int64)
        self.offsets = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=self.n_users), out=self.offsets[1:])
        if len(self.items) != counts["interactions"]:
            raise DataError("interactions.parquet does not match the counts in manifest.json", self.root)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def history(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    @cached_property
    def evaluated(self) -> np.ndarray:
        """Bool (users,): users long enough to have a validation and a test target."""
        return self.lengths >= MIN_EVAL_LENGTH

    @cached_property
    def train_ends(self) -> np.ndarray:
        """Absolute end (exclusive) of each user's training items in `items`."""
        return self.offsets[1:] - np.where(self.evaluated, 2, 0)

    def train_histories(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) into `items` of every user's training items (all users, some may be short)."""
        return self.offsets[:-1].copy(), self.train_ends.copy()

    def eval_set(self, split: str) -> EvalSet:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        users = np.flatnonzero(self.evaluated)
        target_index = self.offsets[users + 1] - (2 if split == "valid" else 1)
        return EvalSet(split, users, target_index, self.items[target_index])

    def negatives(self, split: str) -> np.ndarray:
        """int32 (users, N) stored negatives for `split`, checked against the manifest's sha256."""
        record = self.manifest.get("negatives")
        if not record:
            raise DataError("no negatives stored; run `mahn negatives DIR`", self.root)
        path = self.root / record["files"][split]
        if sha256_file(path) != record["sha256"][split]:
            raise DataError("negatives file does not match the sha256 in manifest.json", path)
        return load_npy(path)

    @cached_property
    def item_metadata(self) -> pl.DataFrame:
        """items.parquet: each item's key and what is known of it (title, image, text, ...), in id order; the
        models' item_table() is the other thing, the items' vectors."""
        import polars as pl

        return pl.read_parquet(self.root / "items.parquet")

    def user_keys(self) -> list[str]:
        """users.parquet `key` in user id order: user u's key is user_keys()[u]."""
        table = pq.read_table(self.root / "users.parquet", columns=["user", "key"])
        keys = table["key"].to_pylist()
        return [keys[i] for i in np.argsort(table["user"].to_numpy(), kind="stable")]

    def titles(self) -> list[str]:
        table = self.item_metadata
        column = "title" if "title" in table.columns else "key"
        return [t if t is not None else k for t, k in zip(table[column].to_list(), table["key"].to_list(), strict=True)]

    def feature_modalities(self) -> list[str]:
        return sorted(self.manifest.get("features", {}))

    def covered_modalities(self) -> list[str]:
        return covered_modalities(self.manifest)

    def features(self, modality: str) -> tuple[np.ndarray, np.ndarray]:
        """(matrix float (items, dim) memory-mapped, mask bool (items,)) for a modality such as 'image'."""
        record = self.manifest.get("features", {}).get(modality)
        if record is None:
            raise DataError(f"no '{modality}' features; run `mahn features DIR`", self.root)
        matrix = load_npy(self.root / "features" / f"{modality}.npy", mmap=True)
        mask = load_npy(self.root / "features" / f"{modality}.mask.npy")
        if matrix.shape[0] != self.n_items or mask.shape != (self.n_items,):
            raise DataError(f"{modality} features have {matrix.shape[0]} rows for {self.n_items} items",
                            self.root / "features" / f"{modality}.npy")
        return matrix, mask

    def new_items(self) -> np.ndarray | None:
        """Ids of the items held out of training and validation (the new-item protocol, data/cold.py), or None."""
        cold = self.manifest.get("cold")
        return np.asarray(cold["items"], dtype=np.int64) if cold else None

    def training_candidates(self) -> np.ndarray | None:
        """Items a model may be trained against (negatives, softmax), or None for every item: on a new-item split,
        every item but the new ones, which arrive after training and must not be learnt as never bought."""
        return self._training_candidates

    @cached_property
    def _training_candidates(self) -> np.ndarray | None:  # asked for by every training batch: computed once
        new = self.new_items()
        if new is None or len(new) == 0:
            return None
        return np.setdiff1d(np.arange(self.n_items), new)

    def fingerprint(self) -> dict[str, str | None]:
        """The sha256 of what a model learns from (interactions, items, each modality's features), from the
        manifest: a run records it, and is refused against a dataset whose fingerprint differs. The stored
        evaluation negatives are not part of it (`mahn negatives` may redraw them)."""
        files = self.manifest.get("files", {})
        prints = {name: files.get(name) for name in ("interactions.parquet", "items.parquet")}
        for modality, record in sorted(self.manifest.get("features", {}).items()):
            prints[f"features/{modality}"] = record.get("sha256")
        return prints

    @cached_property
    def training_counts(self) -> np.ndarray:
        """Training interactions per item, counted once (every full-ranking evaluation reads them for its screen)."""
        starts, ends = self.train_histories()
        return np.bincount(self.items[range_indices(starts, ends - starts)], minlength=self.n_items)

    def item_frequency(self) -> np.ndarray:
        """Training interactions per item (int64, items,): a copy the caller may change."""
        return self.training_counts.copy()


def range_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Every index of the ranges [starts[i], starts[i] + lengths[i]), concatenated, without a Python loop."""
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + within


def left_padded(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_len: int, pad: int) -> np.ndarray:
    """(B, L) int64: the last min(max_len, longest) items of items[starts[b]:ends[b]], left-padded with pad."""
    width = int(max(1, min(max_len, (ends - starts).max(initial=1))))
    index = ends[:, None] - width + np.arange(width)[None, :]
    return np.where(index >= starts[:, None], items[np.maximum(index, 0)], pad)
