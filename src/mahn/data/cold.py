"""The new-item protocol: a derived dataset in which a seeded fraction of the items was never seen in training.

Every interaction with a chosen ("new") item is removed, except where it is a user's last
interaction and so that user's test target (when the user keeps a training and a validation item).
So no new item occurs in training or validation, and the test users whose target is new measure how
a model ranks items it has only seen through their content. Everything else is kept as it is: the
items table (new items keep their ids, titles, images and features), the users, the order of the
remaining interactions. The stored negatives are redrawn
for the new histories with the source's count and seed. `evaluate` reports the test users with a
new target as `new_items`, beside the usual numbers over all users.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mahn.data.dataset import MIN_EVAL_LENGTH, Dataset
from mahn.data.negatives import draw_negatives
from mahn.errors import DataError
from mahn.io import atomic_dir, sha256_file, write_json


def cold_split(source: str | Path, out: str | Path, fraction: float = 0.1, seed: int = 0,
               force: bool = False) -> dict:
    """Write the derived dataset to `out` and return its manifest."""
    if not 0 < fraction < 1:
        raise DataError(f"fraction must be between 0 and 1, got {fraction}", "--fraction")
    dataset = Dataset(source)
    if dataset.manifest.get("cold"):
        raise DataError("this dataset already has new items; derive from the original", dataset.root)
    rng = np.random.default_rng(seed)
    n_new = max(1, round(fraction * dataset.n_items))
    new = np.sort(rng.choice(dataset.n_items, n_new, replace=False))
    is_new = np.zeros(dataset.n_items, dtype=bool)
    is_new[new] = True

    table = pq.read_table(dataset.root / "interactions.parquet")
    users = table["user"].to_numpy()
    last = np.arange(len(users)) == dataset.offsets[users + 1] - 1
    old_items = np.bincount(users[~is_new[dataset.items]], minlength=dataset.n_users)
    # a new last item stays only where it is a test target, i.e. the user keeps enough items to be evaluated
    # (a shorter history is all training, and the new item would leak into it)
    keep = ~is_new[dataset.items] | (last & (old_items[users] + 1 >= MIN_EVAL_LENGTH))
    kept = table.filter(pa.array(keep))
    kept_users = kept["user"].to_numpy()
    starts = np.searchsorted(kept_users, kept_users)  # rows are grouped by user, in history order
    positions = pa.array((np.arange(len(kept_users)) - starts).astype(np.int32))
    kept = kept.set_column(kept.schema.get_field_index("position"), "position", positions)

    with atomic_dir(out, force=force) as tmp:
        pq.write_table(kept, tmp / "interactions.parquet")
        for name in ("users.parquet", "items.parquet"):
            shutil.copy2(dataset.root / name, tmp / name)
        if (dataset.root / "features").is_dir():
            shutil.copytree(dataset.root / "features", tmp / "features")
        manifest = {k: v for k, v in dataset.manifest.items() if k not in ("negatives", "seconds")}
        new_targets = int((is_new[dataset.items] & keep).sum())
        manifest["counts"] = {"users": dataset.n_users, "items": dataset.n_items, "interactions": kept.num_rows}
        manifest["cold"] = {"fraction": fraction, "seed": seed, "items": new.tolist(),
                            "removed_interactions": int((~keep).sum()), "new_item_targets": new_targets,
                            "derived_from": str(dataset.root.resolve()),
                            "rule": "every interaction with a new item is removed unless it is the user's last"}
        manifest["files"] = {name: sha256_file(tmp / name)
                             for name in ("interactions.parquet", "users.parquet", "items.parquet")}
        write_json(tmp / "manifest.json", manifest)
        record = dataset.manifest.get("negatives") or {}
        manifest = draw_negatives(tmp, record.get("count", 100), record.get("seed", 0))
    return manifest
