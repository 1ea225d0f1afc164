"""Approximate top-k for large catalogues: an HNSW graph (faiss) over the trained items' vectors.

Exact ranking (the default) scores every item: one matrix product and a top-k, about 1 ms over 23k
items on a CPU core, and linear in the catalogue. Past about a million items an HNSW index answers in
a fraction of that by visiting a few thousand items, at the price of sometimes missing one of the true
top-k; `benchmarks/ann_recall.py` measures how often (recall@10 against exact top-k) and how fast.

The index holds the items the model was trained on. Items added after training are few and are scored
exactly beside it, so an add never rebuilds the graph. Scores are inner products, the models' own: the
graph is built on inner product directly (faiss METRIC_INNER_PRODUCT). The reduction of maximum inner
product search to nearest neighbours (appending sqrt(R² − |x|²) to each item) was measured too and found
worse on trained item tables (recall@10 0.59 against 0.999 at ef_search 128 on Instruments' MAHN table).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mahn.errors import DataError

INDEXES = ("exact", "hnsw")


@dataclass(frozen=True)
class HNSWSettings:
    links: int = 32  # M: neighbours per node; more: better recall, more memory, slower build
    ef_construction: int = 200  # candidates kept while building
    ef_search: int = 256  # candidates kept while searching; more: better recall, slower queries


def check_index(name: str) -> str:
    if name not in INDEXES:
        raise DataError(f"unknown index {name!r}; choose one of {', '.join(INDEXES)}", "--index")
    if name == "hnsw":
        _faiss()
    return name


def _faiss():
    try:
        import faiss
    except ImportError:
        raise DataError("--index hnsw needs faiss: pip install faiss-cpu (or mahn[ann])", "--index") from None
    return faiss


class HNSWIndex:
    """Inner-product HNSW over a fixed (items, D) table; `search` returns the best k of it per query."""

    def __init__(self, table: np.ndarray, settings: HNSWSettings = HNSWSettings()):
        faiss = _faiss()
        table = np.ascontiguousarray(table, dtype=np.float32)
        self.size, self.dim = table.shape
        self.settings = settings
        self.index = faiss.IndexHNSWFlat(self.dim, settings.links, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = settings.ef_construction
        self.index.add(table)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(inner products, ids), each (queries, k), best first; an id of -1 where fewer than k were found."""
        k = min(k, self.size)
        self.index.hnsw.efSearch = max(self.settings.ef_search, k)  # fewer candidates could not give k
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
