"""The interfaces the feature store (mahn.features.store) relies on, declared in one place.

Every encoder has `kind`, `name`, `dim` and `record()`. It then either encodes its inputs a chunk at a
time (`ChunkEncoder.encode`: resumable, see store.py) or looks every item up in one pass over a
precomputed file (`LookupEncoder.lookup`). Both return a float32 (n, dim) matrix and one error per
row: None when the row holds the item's features, else the reason it does not (the row is then zeros).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

RUNTIMES = ("torch", "onnx")  # what runs an image CNN: PyTorch, or its graph exported to ONNX Runtime


@runtime_checkable
class Encoder(Protocol):
    """What the store reads from every encoder."""

    kind: str  # the inputs it takes: "image" (paths/URLs, or item keys for a file), "text" or "codes"
    name: str  # the encoder's name, written to the manifest and the reports ("efficientnet-lite0", ...)
    dim: int  # the width of one feature row

    def record(self) -> dict:
        """JSON-able description of the encoder (weights, preprocessing, ...): written to
        features/<modality>.json, and part of the fingerprint that decides whether chunks left by an
        interrupted run can be reused, so it must change whenever the features would."""
        ...


@runtime_checkable
class ChunkEncoder(Encoder, Protocol):
    """Encodes the present items' inputs a chunk at a time; the store resumes at the first missing chunk."""

    def encode(self, inputs: list) -> tuple[np.ndarray, list[str | None]]:
        """(float32 (len(inputs), dim) rows, error per row or None)."""
        ...


@runtime_checkable
class LookupEncoder(Encoder, Protocol):
    """Reads precomputed features: one pass over its file for all items, no chunks."""

    def lookup(self, keys: list[str | None]) -> tuple[np.ndarray, list[str | None]]:
        """(float32 (len(keys), dim) rows, error per key: "missing" when the file lacks it; None keys stay None)."""
        ...
