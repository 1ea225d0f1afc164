"""Run an encoder over a prepared dataset's items and store the result (see docs/features.md).

Items are processed in chunks of consecutive ids. Each finished chunk is written atomically under
DIR/features/.partial/<modality>/, so an interrupted run picks up at the first missing chunk. The
final matrix, mask and encoder record are assembled at the end and the manifest is updated last.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from tqdm import tqdm

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.features.encoders import ChunkEncoder, LookupEncoder, make_encoder
from mahn.features.encoders.codes import CodeEncoder
from mahn.features.templates import TEMPLATES, item_texts
from mahn.io import load_npy, lock_folder, read_json, save_npy, sha256_file, write_json
from mahn.progress import on_terminal

MODALITIES = ("image", "text")
FIRST_IDS = 10  # how many affected item ids a report lists
RANK_WAIT_S = 24 * 3600


@dataclass
class FeatureConfig:
    image: str = "efficientnet-lite0"  # efficientnet-lite0/1/2 | vgg16 | mcauley | codes | none
    text: str = "minilm"  # minilm | bert | mpnet | codes | none
    text_template: str = "title"
    text_model: str | None = None  # bert/minilm/mpnet: local folder or hub name
    text_pooling: str | None = None  # cls | mean (default: the model's own)
    weights: str | None = None  # image encoder weights file
    image_file: str | None = None  # mcauley: the binary feature file
    batch_size: int = 32  # images per forward pass: 32 is the fastest on 2 cores (benchmarks/feature_speed.py)
    workers: int = max(1, (os.cpu_count() or 2) // 2)  # decoding threads; the encoder gets the other cores
    runtime: str = "auto"  # image CNNs: auto (ONNX Runtime when installed) | onnx | torch
    dtype: str = "float32"
    chunk_size: int = 1024
    force: bool = False
    progress: bool = True


@dataclass
class ModalityReport:
    modality: str
    encoder: str
    dim: int
    n_items: int
    n_present: int
    missing: list[int]
    failed: dict[int, str]
    seconds: float
    skipped: bool = False

    def line(self) -> str:
        if self.skipped:
            return f"{self.modality}: already extracted with {self.encoder} (pass --force to redo)"
        text = (f"{self.modality}: {self.encoder} {self.n_items} x {self.dim}, "
                f"{self.n_present} items have it ({self.n_present / max(self.n_items, 1):.1%}); "
                f"{len(self.missing)} missing")
        if self.missing:
            text += f" (first ids {self.missing[:FIRST_IDS]})"
        text += f"; {len(self.failed)} failed"
        if self.failed:
            first = list(self.failed.items())[:3]
            text += " (" + "; ".join(f"item {i}: {why}" for i, why in first) + ")"
        return text


def _inputs(dataset: Dataset, modality: str, config: FeatureConfig, encoder) -> tuple[list, list]:
    """(input per item, None = the item lacks the modality; error per item found while reading inputs)."""
    table = dataset.item_metadata
    n = dataset.n_items
    if table.height != n or ("item" in table.columns and table["item"].to_list() != list(range(n))):
        raise DataError(f"items.parquet must hold items 0..{n - 1} in order (manifest counts {n} items)",
                        dataset.root / "items.parquet")
    if isinstance(encoder, CodeEncoder):
        if encoder.column not in table.columns:
            raise DataError(f"--{modality} codes needs a `{encoder.column}` column in items.parquet",
                            dataset.root / "items.parquet")
        values = [v if v is not None and (not isinstance(v, str) or v.strip()) else None
                  for v in table[encoder.column].to_list()]
        return values, [None] * n
    if modality == "text":
        return item_texts(table, config.text_template)
    if encoder.name == "mcauley":
        return table["key"].to_list(), [None] * n
    if "image" not in table.columns:
        return [None] * n, [None] * n
    images = [s if s and s.strip() else None for s in table["image"].to_list()]
    return images, [None] * n


def _fingerprint(dataset: Dataset, modality: str, config: FeatureConfig, record: dict) -> dict:
    return {"modality": modality, "n_items": dataset.n_items, "chunk_size": config.chunk_size,
            "items_sha256": sha256_file(dataset.root / "items.parquet"),
            "text_template": config.text_template if modality == "text" else None, "encoder": record}


def _run_chunks(modality: str, encoder: ChunkEncoder, inputs: list, errors: list, partial: Path, chunk_size: int,
                progress: bool) -> None:
    """Encode every chunk whose .json is not in `partial`. With torchrun, rank r does chunks r, r+W, ...

    Progress goes to stderr: a live bar on a terminal, else one line per finished chunk (no carriage
    returns in log files).
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    n = len(inputs)
    starts = list(range(0, n, chunk_size))[rank::world]
    todo = [s for s in starts if not (partial / f"chunk-{s:09d}.json").exists()]
    total = sum(min(chunk_size, n - s) for s in starts)
    done = sum(min(chunk_size, n - s) for s in starts if s not in todo)
    desc, live = f"{modality} {encoder.name}", progress and on_terminal()
    with tqdm(total=total, unit="item", disable=not live, desc=desc) as bar:
        bar.update(done)
        for start in todo:
            stop = min(start + chunk_size, n)
            rows = np.zeros((stop - start, encoder.dim), dtype=np.float32)
            status = {}
            present = [i for i in range(start, stop) if inputs[i] is not None and errors[i] is None]
            if present:
                out, errs = encoder.encode([inputs[i] for i in present])
                for i, row, err in zip(present, out, errs, strict=True):
                    if err is None:
                        rows[i - start] = row
                    else:
                        status[i] = err
            for i in range(start, stop):
                if errors[i] is not None:
                    status[i] = errors[i]
                elif inputs[i] is None:
                    status[i] = "missing"
            save_npy(partial / f"chunk-{start:09d}.npy", rows)
            write_json(partial / f"chunk-{start:09d}.json", {"status": {str(k): v for k, v in status.items()}})
            bar.update(stop - start)
            done += stop - start
            if progress and not live:
                print(f"{desc}: {done}/{total} items", file=sys.stderr, flush=True)


def _assemble(partial: Path, n: int, dim: int, chunk_size: int) -> tuple[np.ndarray, dict[int, str]]:
    matrix = np.zeros((n, dim), dtype=np.float32)
    status: dict[int, str] = {}
    for start in range(0, n, chunk_size):
        rows = load_npy(partial / f"chunk-{start:09d}.npy")
        if rows.shape != (min(chunk_size, n - start), dim):
            raise DataError(f"chunk has shape {rows.shape}; delete {partial} and rerun", partial)
        matrix[start : start + len(rows)] = rows
        status.update({int(k): v for k, v in read_json(partial / f"chunk-{start:09d}.json")["status"].items()})
    return matrix, status


def extract_modality(dataset: Dataset, modality: str, config: FeatureConfig) -> ModalityReport:
    started = time.perf_counter()
    out_dir = dataset.root / "features"
    existing = dataset.manifest.get("features", {}).get(modality)
    if existing and not config.force and (out_dir / f"{modality}.npy").exists():
        return ModalityReport(modality, existing.get("encoder", "?"), existing.get("dim", 0), dataset.n_items,
                              0, [], {}, 0.0, skipped=True)
    encoder = make_encoder(modality, config)
    record = encoder.record()
    inputs, errors = _inputs(dataset, modality, config, encoder)
    n = dataset.n_items
    if isinstance(encoder, LookupEncoder):  # a precomputed file: one pass over it, no chunks to resume
        matrix, lookup_errors = encoder.lookup(inputs)
        status = {i: e for i, e in enumerate(lookup_errors) if e is not None}
    else:
        partial = out_dir / ".partial" / modality
        fingerprint = _fingerprint(dataset, modality, config, record)
        run_file = partial / "run.json"
        if config.force or not run_file.exists() or read_json(run_file) != orjson.loads(orjson.dumps(fingerprint)):
            shutil.rmtree(partial, ignore_errors=True)  # another encoder/dataset: its chunks are not ours
            write_json(run_file, fingerprint)
        _run_chunks(modality, encoder, inputs, errors, partial, config.chunk_size, config.progress)
        if int(os.environ.get("RANK", 0)) != 0:
            return ModalityReport(modality, encoder.name, encoder.dim, n, 0, [], {},
                                  time.perf_counter() - started)
        _wait_for_chunks(partial, n, config.chunk_size)
        matrix, status = _assemble(partial, n, encoder.dim, config.chunk_size)
    missing = sorted(i for i, why in status.items() if why == "missing")
    failed = {i: why for i, why in sorted(status.items()) if why != "missing"}
    mask = np.ones(n, dtype=bool)
    mask[list(status)] = False
    matrix[~mask] = 0.0
    if not np.isfinite(matrix).all():
        raise DataError(f"{modality} features are not all finite", out_dir)
    matrix = matrix.astype(config.dtype)
    save_npy(out_dir / f"{modality}.npy", matrix)
    save_npy(out_dir / f"{modality}.mask.npy", mask)
    seconds = time.perf_counter() - started
    record.update({"modality": modality, "dtype": config.dtype, "n_items": n, "dim": encoder.dim,
                   "text_template": config.text_template if modality == "text" else None,
                   "n_present": int(mask.sum()),
                   "missing": {"count": len(missing), "first_ids": missing[:FIRST_IDS]},
                   "failed": {"count": len(failed),
                              "first": [{"item": i, "reason": why} for i, why in list(failed.items())[:FIRST_IDS]]},
                   "seconds": round(seconds, 2), "items_per_s": round(n / max(seconds, 1e-9), 1)})
    write_json(out_dir / f"{modality}.json", record)
    manifest = read_json(dataset.root / "manifest.json")  # re-read: another modality may have just been added
    manifest.setdefault("features", {})[modality] = {
        "dim": encoder.dim, "coverage": float(mask.mean()) if n else 0.0, "encoder": encoder.name,
        "dtype": config.dtype, "file": f"features/{modality}.npy",
        "sha256": sha256_file(out_dir / f"{modality}.npy")}
    write_json(dataset.root / "manifest.json", manifest)
    dataset.manifest = manifest
    if not isinstance(encoder, LookupEncoder):
        shutil.rmtree(out_dir / ".partial" / modality, ignore_errors=True)
        with contextlib.suppress(OSError):  # removed only once no modality has chunks left in it
            (out_dir / ".partial").rmdir()
    return ModalityReport(modality, encoder.name, encoder.dim, n, int(mask.sum()), missing, failed, seconds)


def _wait_for_chunks(partial: Path, n: int, chunk_size: int) -> None:
    """Rank 0 of a torchrun job waits until every rank's chunks are on disk."""
    deadline = time.monotonic() + RANK_WAIT_S
    while not all((partial / f"chunk-{s:09d}.json").exists() for s in range(0, n, chunk_size)):
        if time.monotonic() > deadline:
            raise DataError("timed out waiting for other ranks' chunks", partial)
        time.sleep(2)


def extract_features(root: str | Path, config: FeatureConfig) -> list[ModalityReport]:
    """Extract every modality whose encoder is not `none`; returns one report per modality."""
    if config.dtype not in ("float32", "float16"):
        raise DataError(f"--dtype must be float32 or float16, got {config.dtype!r}")
    if config.text_template not in TEMPLATES:
        raise DataError(f"unknown --text-template {config.text_template!r} (choose {', '.join(TEMPLATES)})")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    dataset = Dataset(root)
    lock = lock_folder(dataset.root, "writing into this dataset")  # one writer of its features and manifest
    try:
        return [extract_modality(dataset, modality, config) for modality in MODALITIES
                if (config.image if modality == "image" else config.text) != "none"]
    finally:
        os.close(lock)


def feature_summary(dataset: Dataset) -> dict:
    """Per modality: dim, coverage, encoder, dtype, and the missing/failed counts from the encoder record."""
    summary = {}
    for modality, entry in dataset.manifest.get("features", {}).items():
        record_path = dataset.root / "features" / f"{modality}.json"
        record = read_json(record_path) if record_path.exists() else {}
        summary[modality] = {"dim": entry["dim"], "coverage": entry["coverage"], "encoder": entry["encoder"],
                             "dtype": entry.get("dtype"), "text_template": record.get("text_template"),
                             "missing": record.get("missing", {}).get("count"),
                             "failed": record.get("failed", {}).get("count")}
    return summary


def nearest_neighbours(dataset: Dataset, modality: str, item: int, k: int = 3) -> list[tuple[int, str, float]]:
    """The k items (that have the modality) nearest to `item` by cosine, best first: (id, title, cosine)."""
    matrix, mask = dataset.features(modality)
    if not 0 <= item < dataset.n_items:
        raise DataError(f"item {item} is not in 0..{dataset.n_items - 1}", dataset.root)
    if not mask[item]:
        raise DataError(f"item {item} has no {modality} feature", dataset.root / "features" / f"{modality}.npy")
    vectors = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    cosine = vectors @ vectors[item] / np.maximum(norms * norms[item], 1e-12)
    cosine[~mask] = -np.inf
    cosine[item] = -np.inf
    k = min(k, int(np.isfinite(cosine).sum()))
    best = np.argpartition(-cosine, k - 1)[:k] if k else np.array([], dtype=np.int64)
    best = best[np.argsort(-cosine[best], kind="stable")]
    titles = dataset.titles()
    return [(int(j), titles[j], float(cosine[j])) for j in best]
