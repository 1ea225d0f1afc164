"""New items' raw features, made by the dataset's own encoders: the dataset records how each modality was
extracted (features/<modality>.json), and that encoder (name, weights, text template, pooling) is built again
here and refused when it differs from the one that made the dataset's rows."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import orjson

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.io import read_json
from mahn.readers.new_items import ItemRecord

RECORD_ENCODER = ("name", "weights_sha256", "input_size", "normalisation", "pooling", "output_dim", "column",
                  "sha256")  # what must match between the dataset's encoder and the one rebuilt here


_REBUILT: dict[tuple, tuple] = {}  # (record path, its mtime and size) -> rebuild_encoder's answer
_REBUILT_LOCK = threading.Lock()
_ENCODING = threading.Lock()
KEEP_ENCODERS = 4  # a server that adds items all day builds each encoder once, not once per add


def rebuild_encoder(dataset: Dataset, modality: str):
    """(encoder rebuilt from the dataset's record of `modality`, its config, that record), kept for the next
    call while the record file is unchanged: loading the weights for every add costs time and, in a long-running
    server, memory that the allocator does not give back."""
    path = dataset.root / "features" / f"{modality}.json"
    with _REBUILT_LOCK:
        if not path.exists():
            return _rebuild(dataset, modality)  # refuses, naming the missing record
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key not in _REBUILT:
            while len(_REBUILT) >= KEEP_ENCODERS:
                _REBUILT.pop(next(iter(_REBUILT)))
            _REBUILT[key] = _rebuild(dataset, modality)
        return _REBUILT[key]


def _rebuild(dataset: Dataset, modality: str):
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


def encode_items(dataset: Dataset, modality: str, records: list[ItemRecord]) -> tuple[np.ndarray, dict]:
    """float32 (records, dim) features of the new items; zeros where an item lacks the modality."""
    import polars as pl

    from mahn.features.encoders import CodeEncoder, LookupEncoder
    from mahn.features.templates import item_texts

    encoder, config, stored = rebuild_encoder(dataset, modality)
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
        with _ENCODING:  # the kept encoders are shared by the threads of a server
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
