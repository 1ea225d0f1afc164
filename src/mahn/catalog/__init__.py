"""New catalogue items for a trained run, without retraining (`mahn add-items`).

A new item (a key, a title/text, an image) gets the same raw features as the dataset's items: the
dataset records how each modality was extracted (features/<modality>.json), and that encoder (name,
weights, text template, pooling) is built again and run on the new items. A model that reads content
(MAHN unless ablated to V-T, MGT with content, VBPR, MV-RNN) turns them into item-table rows with `content_vectors`; an
ID-only model (and JRL, whose item vectors are learned per ID) has none for an item it never saw.

The records are read and checked by mahn.readers.new_items, encoded by catalog/encode.py and stored in the
run's `added/` folder by catalog/store.py. Nothing is written when any record is bad; the error names the
file and line (or record index) and the field.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from mahn.catalog.encode import encode_items
from mahn.catalog.store import (
    ADDED,
    AddedItems,
    check_features,
    load_added,
    locked,
    read_added,
    recover,
    same_features,
    write_added,
)
from mahn.errors import DataError
from mahn.paths import inside, is_url
from mahn.readers.new_items import ItemRecord, check_records, read_item_file


def check_image(record: ItemRecord) -> None:
    """A new item's local image decodes (the encoders would fail on it later, with less to say)."""
    from mahn.features.encoders.images import load_image_or_error

    image = record.values["image"]
    if not is_url(image):
        decoded = load_image_or_error(image, 16)
        if isinstance(decoded, str):
            raise record.error(f"field 'image': cannot decode {image}: {decoded}")


def _add(run: str | Path, records: list[ItemRecord], root: Path | None, allow_urls: bool, loaded=None) -> dict:
    from mahn.training import load_run

    started = time.perf_counter()
    run = Path(run)
    if not (run / "config.json").exists():
        raise DataError("not a training run (no config.json)", run)
    model, dataset = loaded or load_run(run, device="cpu")[:2]
    modalities = dataset.feature_modalities()
    model.require_content()
    with locked(run):
        recover(run)
        old = read_added(run / ADDED) if (run / ADDED).exists() else None
        if old is not None:
            check_features(dataset.manifest, old[0], run / ADDED)
        records = check_records(records, _taken(dataset, old), root, allow_urls, check_image)
        encoded = {m: encode_items(dataset, m, records) for m in modalities}
        total = _store(run, model, dataset, old, [{k: v for k, v in r.values.items() if v is not None}
                                                  for r in records], encoded)
    return {"run": str(run), "added": len(records), "total": total,
            "features": {m: {"dim": info["dim"], "encoder": info["encoder"], "missing": info["missing"]}
                         for m, (_, info) in encoded.items()},
            "seconds": round(time.perf_counter() - started, 2)}


def _taken(dataset, old: tuple | None) -> set[str]:
    """The keys a run already serves: its dataset's and those added before."""
    return set(dataset.item_metadata["key"].to_list()) | {r["key"] for r in (old[1] if old else [])}


def _store(run: Path, model, dataset, old: tuple | None, items: list[dict], encoded: dict) -> int:
    """Append `items` and their raw features (`encoded`: modality -> (rows, info)) to the run's `added/`, once the
    model gives them finite vectors; returns how many items the run has added in all. Under the run's lock."""
    import torch

    with torch.no_grad():
        rows = model.content_vectors({m: torch.from_numpy(f) for m, (f, _) in encoded.items()})
    if not torch.isfinite(rows).all():
        raise DataError("the model gives the new items non-finite vectors", run)
    batches = (old[0]["batches"] if old else []) + [len(items)]
    items = (old[1] if old else []) + items
    write_added(run, items, batches, encoded, dataset.root, dataset.manifest["features"], old)
    return len(items)


def add_items(run: str | Path, items: str | Path, images: str | Path | None = None) -> dict:
    """Add the items of a CSV/TSV or JSONL file (fields: key, title, text, image, ...) to a trained run.

    Image paths are relative to `images` (default: the items file's folder). Returns a report: items
    added, the total added so far, per-modality dims and encoders, seconds.
    """
    items = Path(items)
    root = Path(images) if images is not None else items.resolve().parent
    if not root.is_dir():
        raise DataError("images folder not found", root)
    return _add(run, read_item_file(items), root, allow_urls=True)


def add_item_records(run: str | Path, records: list[dict], images: str | Path | None = None,
                     loaded: tuple | None = None) -> dict:
    """`add_items` for records given as dicts (an HTTP request): images only as paths inside `images`.

    `loaded`: the run's (model, dataset) when the caller already holds them (a server), so they are not
    loaded again for every add.
    """
    if not isinstance(records, list) or not records:
        raise DataError("give a non-empty list of items", "records")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError("each item must be an object", f"records[{index}]")
    root = Path(images) if images is not None else None
    if root is not None and not root.is_dir():
        raise DataError("images folder not found", root)
    return _add(run, [ItemRecord(dict(r), "records", i) for i, r in enumerate(records)], root, allow_urls=False,
                loaded=loaded)


def carry_added(source: str | Path, run: str | Path, loaded: tuple | None = None) -> dict:
    """Add the items added to run `source` to `run` too (a server that switches runs keeps serving them).

    Items whose key `run` already has (its dataset's or added) are skipped: a retrained run may know them.
    When both runs' datasets have the same features (the same sha256), the stored rows are copied as they are;
    otherwise each item is encoded again by `run`'s dataset encoders from its stored fields and image. Images
    uploaded to `source` (RUN/uploads/) are copied into `run`'s uploads. Returns {"carried", "skipped"}.
    """
    from mahn.training import load_run

    source, run = Path(source), Path(run)
    if not (source / ADDED).exists():
        return {"carried": 0, "skipped": []}
    manifest, items, features = read_added(source / ADDED)
    model, dataset = loaded or load_run(run, device="cpu")[:2]
    with locked(run):
        recover(run)
        old = read_added(run / ADDED) if (run / ADDED).exists() else None
        taken = _taken(dataset, old)
        keep = [i for i, r in enumerate(items) if r["key"] not in taken]
        skipped = [r["key"] for r in items if r["key"] in taken]
        if not keep:
            return {"carried": 0, "skipped": skipped}
        model.require_content()
        records = [_moved_upload(dict(items[i]), source, run) for i in keep]
        if same_features(dataset.manifest, manifest):  # the stored rows are valid for this run's dataset too
            _store(run, model, dataset, old, records, {m: (features[m][keep], manifest["features"][m])
                                                       for m in manifest["features"]})
            return {"carried": len(records), "skipped": skipped}
    for record in records:  # other features: encoded again; stored image paths are absolute, given from "/"
        if record.get("image") and not is_url(record["image"]):
            record["image"] = os.path.relpath(record["image"], "/")
    where = str(source / ADDED / "items.jsonl")
    _add(run, [ItemRecord(r, where, n + 1) for n, r in enumerate(records)], Path("/"), allow_urls=True,
         loaded=(model, dataset))
    return {"carried": len(records), "skipped": skipped}


def _moved_upload(record: dict, source: Path, run: Path) -> dict:
    """A record whose image was uploaded to `source` (RUN/uploads/NAME), pointing at a copy in `run`'s uploads."""
    image = record.get("image")
    uploads = Path(os.path.realpath(source)) / "uploads"
    if image and not is_url(image) and inside(image, uploads) and os.path.isfile(image):
        target = Path(os.path.realpath(run)) / "uploads" / os.path.basename(image)
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(image, tmp)
            os.replace(tmp, target)
        record["image"] = str(target)
    return record


__all__ = ["AddedItems", "add_item_records", "add_items", "carry_added", "load_added"]

