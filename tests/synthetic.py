"""Small prepared datasets with a known structure, shared by the model, trainer and evaluator tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from mahn.data.prepare import PrepareConfig, prepare_frames
from mahn.io import read_json, save_npy, write_json


def make_dataset(out: Path, users: int = 40, items: int = 30, clusters: int = 3, length: int = 8, seed: int = 0,
                 modalities: tuple[str, ...] = ("image", "text"),
                 missing: dict[str, list[int]] | None = None) -> Path:
    """Each user walks through one cluster of items in order, and the image and text features reveal
    the cluster: sequential and multimodal signal a model can learn. `missing` lists items (by key
    number) whose modality is absent (mask False, zero row); `modalities=()` writes no features."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        members = [i for i in range(items) if i % clusters == u % clusters]
        start = int(rng.integers(len(members)))
        rows += [(f"u{u:03d}", f"i{members[(start + p) % len(members)]:03d}", p) for p in range(length)]
    frame = pl.DataFrame(rows, schema={"user": pl.String, "item": pl.String, "timestamp": pl.Int64}, orient="row")
    item_frame = pl.DataFrame({"item": [f"i{i:03d}" for i in range(items)],
                               "title": [f"Item {i} of cluster {i % clusters}" for i in range(items)]})
    prepare_frames(frame, item_frame, out, PrepareConfig(num_negatives=10, seed=seed))
    if not modalities:
        return out
    keys = pl.read_parquet(out / "items.parquet")["key"].to_list()
    number = np.array([int(k[1:]) for k in keys])
    manifest = read_json(out / "manifest.json")
    manifest["features"] = {}
    for modality, dim in (("image", 12), ("text", 7)):
        if modality not in modalities:
            continue
        matrix = rng.normal(0, 0.1, (len(keys), dim)).astype(np.float32)
        matrix[np.arange(len(keys)), number % clusters] += 1.0
        mask = ~np.isin(number, (missing or {}).get(modality, []))
        matrix[~mask] = 0
        save_npy(out / "features" / f"{modality}.npy", matrix)
        save_npy(out / "features" / f"{modality}.mask.npy", mask)
        manifest["features"][modality] = {"dim": dim}
    write_json(out / "manifest.json", manifest)
    return out


def make_coded_dataset(out: Path, users: int = 30, items: int = 20, period: int = 4) -> Path:
    """make_dataset without features, then discrete codes for every item (items.parquet `image_codes` and
    `text_codes`: [i % period, i % 5, 7, i] and the same list reversed over items) turned into its image and text
    features by the `codes` encoders."""
    import orjson

    from mahn.features import FeatureConfig, extract_features

    make_dataset(out, users=users, items=items, modalities=())
    table = pl.read_parquet(out / "items.parquet")
    codes = [orjson.dumps([i % period, i % 5, 7, i]).decode() for i in range(table.height)]
    table.with_columns(image_codes=pl.Series(codes), text_codes=pl.Series(codes[::-1])).write_parquet(
        out / "items.parquet")
    extract_features(out, FeatureConfig(image="codes", text="codes", progress=False, workers=1))
    return out
