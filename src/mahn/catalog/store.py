"""The `added/` folder of a run: the items added after training, in one format read and written here only.

    RUN/added/items.jsonl        one JSON object per added item (key, title, text, image, ...), in order
    RUN/added/<modality>.npy     float32 (added, dim), row r = item r of items.jsonl
    RUN/added/manifest.json      counts, encoders, the sha256 of every file above

Every add writes a complete new `added/` (old items + new) in a temporary sibling and swaps it in
(mahn.io.atomic_dir), under an exclusive lock on the run directory: a killed add leaves the run as it
was, and the next `load_added` sees every item of every finished add.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from mahn.errors import DataError
from mahn.io import atomic_dir, load_npy, lock_folder, read_json, save_npy, sha256_file, write_bytes, write_json

ADDED = "added"
SCHEMA_VERSION = 1
READ_TRIES = 3  # load_added re-reads when an add swaps the folder in while it reads


@dataclass
class AddedItems:
    keys: list[str]
    titles: list[str | None]
    images: list[str | None]  # the image path/URL as given (resolved path inside the images root)
    features: dict[str, np.ndarray]  # modality ("image"/"text") -> float32 (len(keys), dim), rows of added items


def same_features(dataset_manifest: dict, manifest: dict) -> bool:
    """Whether added rows (an `added/` manifest) were encoded for exactly these dataset features."""
    current = dataset_manifest.get("features", {})
    return set(manifest["features"]) == set(current) and all(
        entry.get("dataset_sha256") == current[m].get("sha256") for m, entry in manifest["features"].items())


def check_features(dataset_manifest: dict, manifest: dict, where: Path) -> None:
    """The added rows are only valid beside the dataset features they were encoded for."""
    if not same_features(dataset_manifest, manifest):
        raise DataError("the dataset's features changed after items were added to this run: delete the folder "
                        "and add the items again", where)


def read_added(folder: Path) -> tuple[dict, list[dict], dict[str, np.ndarray]]:
    manifest = read_json(folder / "manifest.json")
    for name, digest in manifest["files"].items():
        if sha256_file(folder / name) != digest:
            raise DataError("does not match the sha256 in manifest.json", folder / name)
    lines = (folder / "items.jsonl").read_bytes().splitlines()
    items = [orjson.loads(line) for line in lines if line.strip()]
    features = {m: load_npy(folder / f"{m}.npy") for m in manifest["features"]}
    if len(items) != manifest["count"] or any(f.shape[0] != len(items) for f in features.values()):
        raise DataError("items.jsonl and the feature files do not hold the same items", folder)
    return manifest, items, features


def added_folder(run: Path) -> Path | None:
    """RUN/added, or the previous one left beside it by an add killed in the middle of its swap."""
    if (run / ADDED).exists():
        return run / ADDED
    old = sorted(run.glob(f".{ADDED}.old-*"), key=lambda p: p.stat().st_mtime)
    return old[-1] if old and (old[-1] / "manifest.json").exists() else None


def load_added(run: str | Path) -> AddedItems | None:
    """The items added to a run (None when nothing was added)."""
    run = Path(run)
    for attempt in range(READ_TRIES):
        folder = added_folder(run)
        if folder is None:
            return None
        try:
            manifest, items, features = read_added(folder)
            break
        except (DataError, FileNotFoundError):
            if attempt == READ_TRIES - 1:
                raise
            time.sleep(0.05)  # an add may have swapped the folder while it was read
    dataset_manifest = Path(read_json(run / "config.json")["dataset"]) / "manifest.json"
    if dataset_manifest.exists():  # a dataset that moved (`mahn.load(run, dataset=...)`) cannot be checked here
        check_features(read_json(dataset_manifest), manifest, folder)
    return AddedItems([r["key"] for r in items], [r.get("title") for r in items], [r.get("image") for r in items],
                      features)


@contextlib.contextmanager
def locked(run: Path):
    """The run folder's lock (mahn.io.lock_folder; nothing is written for it), waited for and held for one add."""
    fd = lock_folder(run, "adding items to this run", wait=True)
    try:
        yield
    finally:
        os.close(fd)


def recover(run: Path) -> None:
    """Undo what a killed add left (under the lock, so no add is running): put back an `added/` moved
    aside in the middle of a swap, and remove unfinished temporary folders."""
    folder = added_folder(run)
    if folder is not None and folder.name != ADDED:
        os.replace(folder, run / ADDED)
    for leftover in [*run.glob(f".{ADDED}.*.tmp"), *run.glob(f".{ADDED}.old-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def stamp(run: Path) -> os.stat_result:
    """The added items' manifest's stat: it changes with every add (an OSError when nothing was added)."""
    return (run / ADDED / "manifest.json").stat()


def write_added(run: Path, items: list[dict], batches: list[int], encoded: dict, dataset_root: Path,
                dataset_features: dict, old: tuple | None) -> None:
    """A complete new `added/`: the old items and features with the new ones after them, swapped in whole."""
    with atomic_dir(run / ADDED, force=True) as tmp:
        write_bytes(tmp / "items.jsonl", b"".join(orjson.dumps(item) + b"\n" for item in items))
        features = {}
        for m, (new, info) in encoded.items():
            matrix = np.concatenate([old[2][m], new]) if old else new
            save_npy(tmp / f"{m}.npy", matrix.astype(np.float32))
            features[m] = {**info, "dataset_sha256": dataset_features[m].get("sha256")}
        files = {name: sha256_file(tmp / name) for name in ["items.jsonl", *(f"{m}.npy" for m in encoded)]}
        write_json(tmp / "manifest.json", {"schema_version": SCHEMA_VERSION, "count": len(items),
                                           "dataset": str(dataset_root), "batches": batches,
                                           "features": features, "files": files})
