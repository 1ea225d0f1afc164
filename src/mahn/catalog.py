"""New catalogue items for a trained run, without retraining (`mahn add-items`).

A new item (a key, a title/text, an image) gets the same raw features as the dataset's items: the
dataset records how each modality was extracted (features/<modality>.json), and that encoder (name,
weights, text template, pooling) is built again and run on the new items. A model that reads content
(MAHN unless ablated to V-T, VBPR, MV-RNN) turns them into item-table rows with `content_vectors`; an
ID-only model (and JRL, whose item vectors are learned per ID) has none for an item it never saw.

    RUN/added/items.jsonl        one JSON object per added item (key, title, text, image, ...), in order
    RUN/added/<modality>.npy     float32 (added, dim), row r = item r of items.jsonl
    RUN/added/manifest.json      counts, encoders, the sha256 of every file above

Every add writes a complete new `added/` (old items + new) in a temporary sibling and swaps it in
(mahn.io.atomic_dir), under an exclusive lock on the run directory: a killed add leaves the run as it
was, and the next `load_added` sees every item of every finished add. Nothing is written when any
record is bad; the error names the file and line (or record index) and the field.
"""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import orjson

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.io import atomic_dir, load_npy, lock_folder, read_json, save_npy, sha256_file, write_bytes, write_json
from mahn.paths import inside, is_url

ADDED = "added"
SCHEMA_VERSION = 1
TEXT_FIELDS = ("title", "text", "description", "brand")  # strings the text templates read
FIELDS = ("key", *TEXT_FIELDS, "categories", "image", "image_codes", "text_codes")
RECORD_ENCODER = ("name", "weights_sha256", "input_size", "normalisation", "pooling", "output_dim", "column",
                  "sha256")  # what must match between the dataset's encoder and the one rebuilt here
READ_TRIES = 3  # load_added re-reads when an add swaps the folder in while it reads


@dataclass
class AddedItems:
    keys: list[str]
    titles: list[str | None]
    images: list[str | None]  # the image path/URL as given (resolved path inside the images root)
    features: dict[str, np.ndarray]  # modality ("image"/"text") -> float32 (len(keys), dim), rows of added items


@dataclass
class _Record:
    values: dict  # field -> value, checked
    where: str  # the file, or "records"
    line: int  # the file's line, or the record's index

    def error(self, message: str) -> DataError:
        return DataError(message, f"records[{self.line}]") if self.where == "records" else DataError(
            message, self.where, self.line)


# --- reading and checking the new items ---


def _read_file(path: Path) -> list[_Record]:
    if not path.is_file():
        raise DataError("items file not found", path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 ({e})", path) from e
    records = []
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(keepends=True), delimiter="\t" if suffix == ".tsv" else ",")
        header = reader.fieldnames or []
        if len(set(header)) != len(header):
            raise DataError(f"a column name occurs twice in the header {header}", path, 1)
        unknown = [c for c in header if c not in FIELDS]
        if unknown:
            raise DataError(f"unknown column '{unknown[0]}' (columns: {', '.join(FIELDS)})", path, 1)
        for row in reader:
            if None in row:
                raise DataError("more values than columns", path, reader.line_num)
            records.append(_Record({k: v if v != "" else None for k, v in row.items()}, str(path), reader.line_num))
    elif suffix in (".jsonl", ".ndjson", ".json"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e})", path, number) from e
            if not isinstance(value, dict):
                raise DataError("each line must be one JSON object", path, number)
            records.append(_Record(value, str(path), number))
    else:
        raise DataError(f"unknown items file type {suffix!r} (use .csv, .tsv or .jsonl)", path)
    if not records:
        raise DataError("no items in the file", path)
    return records


def _check_value(record: _Record, field: str, value):
    """The field's value, normalised (None when absent); a DataError naming the field when its type is wrong."""
    if value is None:
        return None
    if field == "key" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if field in ("key", *TEXT_FIELDS, "image"):
        if not isinstance(value, str):
            raise record.error(f"field '{field}' must be a string, got {type(value).__name__}")
        return value.strip() or None
    if field == "categories":
        ok = isinstance(value, str) or (isinstance(value, list) and all(
            isinstance(c, str) or (isinstance(c, list) and all(isinstance(x, str) for x in c)) for c in value))
        if not ok:
            raise record.error("field 'categories' must be a string or a list of strings")
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    if not isinstance(value, (str, list)):  # *_codes: JSON text or a list, checked by the encoder
        raise record.error(f"field '{field}' must be a list of codes, got {type(value).__name__}")
    return value


def _image_path(record: _Record, value: str, root: Path | None, allow_urls: bool) -> str:
    """The image's real path inside `root` (or the URL); a DataError for anything that would leave it."""
    if is_url(value):
        if allow_urls:
            return value
        raise record.error("field 'image': URLs are not accepted here; give a path inside the images folder")
    if root is None:
        raise record.error("field 'image': no images folder given for relative image paths")
    if "\0" in value:  # no file name holds one, and the path functions raise on it
        raise record.error("field 'image': a path cannot contain a NUL character")
    if os.path.isabs(value) or value.startswith("~") or PurePath(value).drive:
        raise record.error(f"field 'image': {value!r} is an absolute path; give it relative to the images folder")
    if ".." in PurePath(value.replace("\\", "/")).parts:
        raise record.error(f"field 'image': {value!r} leads out of the images folder ('..')")
    real = os.path.realpath(os.path.join(root, value))
    if not inside(real, root):
        raise record.error(f"field 'image': {value!r} leads out of the images folder (through a link)")
    if not os.path.isfile(real):
        raise record.error(f"field 'image': no image file {value!r} in {root}")
    return real


def _check_records(records: list[_Record], taken: set[str], root: Path | None, allow_urls: bool) -> list[_Record]:
    from mahn.features.encoders.images import load_image_or_error

    seen: dict[str, _Record] = {}
    for record in records:
        unknown = [f for f in record.values if f not in FIELDS]
        if unknown:
            raise record.error(f"unknown field '{unknown[0]}' (fields: {', '.join(FIELDS)})")
        record.values = {f: _check_value(record, f, record.values.get(f)) for f in FIELDS}
        key = record.values["key"]
        if key is None:
            raise record.error("field 'key' is missing: every new item needs a key")
        if key in taken:
            raise record.error(f"field 'key': {key!r} is already an item of the run")
        if key in seen:
            raise record.error(f"field 'key': {key!r} occurs twice (first at line/record {seen[key].line})")
        seen[key] = record
        if record.values["image"] is not None:
            record.values["image"] = _image_path(record, record.values["image"], root, allow_urls)
            if not record.values["image"].startswith(("http://", "https://")):
                decoded = load_image_or_error(record.values["image"], 16)
                if isinstance(decoded, str):
                    raise record.error(f"field 'image': cannot decode {record.values['image']}: {decoded}")
    return records


# --- features: the dataset's own encoders ---


def _encoder(dataset: Dataset, modality: str):
    """(encoder rebuilt from the dataset's record of `modality`, that record)."""
    from mahn.features import FeatureConfig
    from mahn.features.encoders import make_encoder, onnx_available

    path = dataset.root / "features" / f"{modality}.json"
    if not path.exists():
        raise DataError(f"the dataset's {modality} features have no encoder record, so new items cannot be "
                        f"encoded the same way (run `mahn features {dataset.root} --force`)", path)
    stored = read_json(path)
    name, weights, model = stored["name"], stored.get("weights_file"), stored.get("model")
    config = FeatureConfig(
        image=name if modality == "image" else "none", text=name if modality == "text" else "none",
        text_template=stored.get("text_template") or "title",
        text_model=model if model and (name == "bert" or Path(model).exists()) else None,
        text_pooling=stored.get("pooling") if modality == "text" else None,
        weights=weights if weights and Path(weights).exists() else None, image_file=stored.get("file"),
        runtime="onnx" if stored.get("runtime") == "onnx" and onnx_available() else "torch", progress=False)
    encoder = make_encoder(modality, config)
    rebuilt = orjson.loads(orjson.dumps(encoder.record()))
    for field in RECORD_ENCODER:
        if field in stored and stored[field] != rebuilt.get(field):
            raise DataError(f"the {modality} encoder available here differs from the one that made the dataset's "
                            f"features ({field}: {rebuilt.get(field)!r}, recorded {stored[field]!r})", path)
    return encoder, config, stored


def _encode(dataset: Dataset, modality: str, records: list[_Record]) -> tuple[np.ndarray, dict]:
    """float32 (records, dim) features of the new items; zeros where an item lacks the modality."""
    import polars as pl

    from mahn.features.encoders import CodeEncoder, LookupEncoder
    from mahn.features.templates import item_texts

    encoder, config, stored = _encoder(dataset, modality)
    values = [r.values for r in records]
    errors: list[str | None] = [None] * len(records)
    if isinstance(encoder, CodeEncoder):
        inputs = [v[f"{modality}_codes"] for v in values]
    elif isinstance(encoder, LookupEncoder):
        inputs = [v["key"] for v in values]
    elif modality == "text":
        columns = ["title", "text", "brand", "categories"] + (
            ["description"] if any(v["description"] for v in values) else [])
        table = pl.DataFrame({c: [v[c] for v in values] for c in columns}, schema=dict.fromkeys(columns, pl.String))
        inputs, errors = item_texts(table, config.text_template)
    else:
        inputs = [v["image"] for v in values]
    for record, error in zip(records, errors, strict=True):
        if error is not None:
            raise record.error(f"{modality}: {error}")
    rows = np.zeros((len(records), encoder.dim), dtype=np.float32)
    present = [i for i, x in enumerate(inputs) if x is not None]
    missing = len(records) - len(present)
    if present:
        run = encoder.lookup if isinstance(encoder, LookupEncoder) else encoder.encode
        out, errs = run([inputs[i] for i in present])
        for i, row, error in zip(present, out, errs, strict=True):
            if error == "missing":  # blank codes, or a key the precomputed file lacks: a zero row, as the store does
                missing += 1
            elif error is not None:
                field = {"image": "image", "text": "title/text"}.get(encoder.kind, f"{modality}_codes")
                raise records[i].error(f"field '{field}': {modality} encoder {encoder.name} failed: {error}")
            else:
                rows[i] = row
    rows = rows.astype(stored.get("dtype", "float32")).astype(np.float32)  # the dataset rows' precision
    info = {"dim": int(encoder.dim), "encoder": encoder.name, "missing": missing,
            "text_template": config.text_template if modality == "text" else None}
    return rows, info


# --- storage ---


def _feature_check(dataset_manifest: dict, manifest: dict, where: Path) -> None:
    """The added rows are only valid beside the dataset features they were encoded for."""
    current = dataset_manifest.get("features", {})
    if set(manifest["features"]) != set(current) or any(
            entry.get("dataset_sha256") != current[m].get("sha256") for m, entry in manifest["features"].items()):
        raise DataError("the dataset's features changed after items were added to this run: delete the folder "
                        "and add the items again", where)


def _read_added(folder: Path) -> tuple[dict, list[dict], dict[str, np.ndarray]]:
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


def _folder(run: Path) -> Path | None:
    """RUN/added, or the previous one left beside it by an add killed in the middle of its swap."""
    if (run / ADDED).exists():
        return run / ADDED
    old = sorted(run.glob(f".{ADDED}.old-*"), key=lambda p: p.stat().st_mtime)
    return old[-1] if old and (old[-1] / "manifest.json").exists() else None


def load_added(run: str | Path) -> AddedItems | None:
    """The items added to a run (None when nothing was added)."""
    run = Path(run)
    for attempt in range(READ_TRIES):
        folder = _folder(run)
        if folder is None:
            return None
        try:
            manifest, items, features = _read_added(folder)
            break
        except (DataError, FileNotFoundError):
            if attempt == READ_TRIES - 1:
                raise
            time.sleep(0.05)  # an add may have swapped the folder while it was read
    dataset_manifest = Path(read_json(run / "config.json")["dataset"]) / "manifest.json"
    if dataset_manifest.exists():  # a dataset that moved (`mahn.load(run, dataset=...)`) cannot be checked here
        _feature_check(read_json(dataset_manifest), manifest, folder)
    return AddedItems([r["key"] for r in items], [r.get("title") for r in items], [r.get("image") for r in items],
                      features)


@contextlib.contextmanager
def _locked(run: Path):
    """The run folder's lock (mahn.io.lock_folder; nothing is written for it), waited for and held for one add."""
    fd = lock_folder(run, "adding items to this run", wait=True)
    try:
        yield
    finally:
        os.close(fd)


def _recover(run: Path) -> None:
    """Undo what a killed add left (under the lock, so no add is running): put back an `added/` moved
    aside in the middle of a swap, and remove unfinished temporary folders."""
    folder = _folder(run)
    if folder is not None and folder.name != ADDED:
        os.replace(folder, run / ADDED)
    for leftover in [*run.glob(f".{ADDED}.*.tmp"), *run.glob(f".{ADDED}.old-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _add(run: str | Path, records: list[_Record], root: Path | None, allow_urls: bool, loaded=None) -> dict:
    from mahn.training import load_run

    started = time.perf_counter()
    run = Path(run)
    if not (run / "config.json").exists():
        raise DataError("not a training run (no config.json)", run)
    model, dataset = loaded or load_run(run, device="cpu")[:2]
    modalities = dataset.feature_modalities()
    model.require_content()
    with _locked(run):
        _recover(run)
        old = _read_added(run / ADDED) if (run / ADDED).exists() else None
        if old is not None:
            _feature_check(dataset.manifest, old[0], run / ADDED)
        taken = set(dataset.item_table["key"].to_list()) | {r["key"] for r in (old[1] if old else [])}
        records = _check_records(records, taken, root, allow_urls)
        encoded = {m: _encode(dataset, m, records) for m in modalities}
        import torch

        with torch.no_grad():
            rows = model.content_vectors({m: torch.from_numpy(f) for m, (f, _) in encoded.items()})
        if not torch.isfinite(rows).all():
            raise DataError("the model gives the new items non-finite vectors", run)
        items = (old[1] if old else []) + [{k: v for k, v in r.values.items() if v is not None} for r in records]
        batches = (old[0]["batches"] if old else []) + [len(records)]
        with atomic_dir(run / ADDED, force=True) as tmp:
            write_bytes(tmp / "items.jsonl", b"".join(orjson.dumps(item) + b"\n" for item in items))
            features = {}
            for m, (new, info) in encoded.items():
                matrix = np.concatenate([old[2][m], new]) if old else new
                save_npy(tmp / f"{m}.npy", matrix.astype(np.float32))
                features[m] = {**info, "dataset_sha256": dataset.manifest["features"][m].get("sha256")}
            files = {name: sha256_file(tmp / name) for name in ["items.jsonl", *(f"{m}.npy" for m in encoded)]}
            write_json(tmp / "manifest.json", {"schema_version": SCHEMA_VERSION, "count": len(items),
                                               "dataset": str(dataset.root), "batches": batches,
                                               "features": features, "files": files})
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
    return _add(run, _read_file(items), root, allow_urls=True)


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
    return _add(run, [_Record(dict(r), "records", i) for i, r in enumerate(records)], root, allow_urls=False,
                loaded=loaded)


__all__ = ["AddedItems", "add_item_records", "add_items", "load_added"]
