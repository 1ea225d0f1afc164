"""Code features: items' discrete codes (e.g. `image_codes` = 4 residual-quantisation levels of 256 codes)
turned into one-hot-per-level vectors, so a dataset that ships codes instead of raw media is usable."""

from __future__ import annotations

import numpy as np
import orjson

LEVELS = 4
CODEBOOK = 256


def parse_codes(value) -> list[int] | None:
    """A list column value or JSON text -> list of ints; None when absent. Raises ValueError when malformed."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        if not value.strip():
            return None
        value = orjson.loads(value)
    codes = list(value)
    if len(codes) != LEVELS:
        raise ValueError(f"expected {LEVELS} codes, got {len(codes)}")
    if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in codes):
        raise ValueError("codes must be integers")
    if not all(0 <= c < CODEBOOK for c in codes):
        raise ValueError(f"codes must be in [0, {CODEBOOK})")
    return [int(c) for c in codes]


def one_hot(codes: list[int]) -> np.ndarray:
    row = np.zeros(LEVELS * CODEBOOK, dtype=np.float32)
    row[np.arange(LEVELS) * CODEBOOK + np.asarray(codes)] = 1.0
    return row


class CodeEncoder:
    """Reads a codes column of the items table; `encode` gets the raw column values."""

    kind = "codes"
    dim = LEVELS * CODEBOOK
    batch_size = 4096

    def __init__(self, column: str):
        self.column = column
        self.name = "codes"

    def record(self) -> dict:
        return {"name": "codes", "column": self.column, "levels": LEVELS, "codebook": CODEBOOK,
                "output_dim": self.dim, "preprocessing": "one-hot per level, levels concatenated",
                "normalisation": "none"}

    def encode(self, values: list) -> tuple[np.ndarray, list[str | None]]:
        rows = np.zeros((len(values), self.dim), dtype=np.float32)
        errors: list[str | None] = []
        for r, value in enumerate(values):
            try:
                codes = parse_codes(value)
            except (ValueError, TypeError, orjson.JSONDecodeError) as e:
                errors.append(f"bad codes: {e}")
                continue
            if codes is None:
                errors.append("missing")
                continue
            rows[r] = one_hot(codes)
            errors.append(None)
        return rows, errors
