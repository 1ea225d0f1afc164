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

import time
from pathlib import Path

from mahn.catalog.encode import encode_items
from mahn.catalog.store import ADDED, AddedItems, check_features, load_added, locked, read_added, recover, write_added
from mahn.errors import DataError
from mahn.paths import is_url
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
        taken = set(dataset.item_metadata["key"].to_list()) | {r["key"] for r in (old[1] if old else [])}
        records = check_records(records, taken, root, allow_urls, check_image)
        encoded = {m: encode_items(dataset, m, records) for m in modalities}
        import torch

        with torch.no_grad():
            rows = model.content_vectors({m: torch.from_numpy(f) for m, (f, _) in encoded.items()})
        if not torch.isfinite(rows).all():
            raise DataError("the model gives the new items non-finite vectors", run)
        items = (old[1] if old else []) + [{k: v for k, v in r.values.items() if v is not None} for r in records]
        batches = (old[0]["batches"] if old else []) + [len(records)]
        write_added(run, items, batches, encoded, dataset.root, dataset.manifest["features"], old)
    return {"run": str(run), "added": len(records), "total": len(items),
            "features": {m: {"dim": info["dim"], "encoder": info["encoder"], "missing": info["missing"]}
                         for m, (_, info) in encoded.items()},
            "seconds": round(time.perf_counter() - started, 2)}


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


__all__ = ["AddedItems", "add_item_records", "add_items", "load_added"]

