"""McAuley's 2014 Amazon image-feature file (McAuley et al. 2015): precomputed 4096-d CNN features per ASIN."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mahn.errors import DataError
from mahn.io import sha256_file

MCAULEY_ASIN_BYTES = 10
MCAULEY_DIM = 4096
MCAULEY_RECORD = np.dtype([("asin", f"S{MCAULEY_ASIN_BYTES}"), ("features", "<f4", (MCAULEY_DIM,))])


class McAuleyFile:
    """The 2014 Amazon image-feature file: records of a 10-byte ASIN then 4096 little-endian float32.

    The file is memory-mapped and scanned once; records whose ASIN is an item key fill that row.
    A `LookupEncoder` (base.py): its inputs are the items' keys.
    """

    kind = "image"
    name = "mcauley"
    dim = MCAULEY_DIM
    batch_size = 1 << 30  # one pass over the file, not per chunk

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError("McAuley image-feature file not found (pass --image-file PATH)", self.path)
        size = self.path.stat().st_size
        if size == 0 or size % MCAULEY_RECORD.itemsize:
            raise DataError(f"size {size} is not a whole number of {MCAULEY_RECORD.itemsize}-byte records "
                            f"(10-byte ASIN + {MCAULEY_DIM} float32): truncated or not this format", self.path)
        self.records = np.memmap(self.path, dtype=MCAULEY_RECORD, mode="r")

    def record(self) -> dict:
        return {"name": "mcauley", "file": str(self.path), "sha256": sha256_file(self.path),
                "records": int(len(self.records)), "output_dim": self.dim,
                "preprocessing": "precomputed (McAuley et al. 2015, Caffe reference CNN fc7)",
                "normalisation": "none"}

    def lookup(self, keys: list[str | None], chunk: int = 4096) -> tuple[np.ndarray, list[str | None]]:
        want = {k: r for r, k in enumerate(keys) if k is not None}
        rows = np.zeros((len(keys), self.dim), dtype=np.float32)
        errors: list[str | None] = ["missing" if k is not None else None for k in keys]
        for start in range(0, len(self.records), chunk):
            block = self.records[start : start + chunk]
            for offset, asin in enumerate(block["asin"]):
                row = want.pop(asin.decode("ascii", "replace").strip(), None)
                if row is None:
                    continue
                vec = np.asarray(block["features"][offset], dtype=np.float32)
                if np.isfinite(vec).all():
                    rows[row], errors[row] = vec, None
                else:
                    errors[row] = f"non-finite features in record {start + offset}"
        return rows, errors
