"""Approximate top-k for large catalogues, over the trained items' vectors (faiss).

Exact ranking scores every item: one matrix product and a top-k, about 1 ms over 23k items on a CPU core and
linear in the catalogue; past about 100,000 items a request waits for it. `ivf` (the default there, `auto`)
scores a share of the items roughly and re-ranks the best of them exactly:
- scores are inner products; one extra coordinate, sqrt(R² - |x|²) with R² the largest squared norm, gives
  every item the same norm, so the item nearest a query (with a 0 appended) in Euclidean distance is the one
  with the largest inner product, and nearest-neighbour structures apply;
- the lifted items are grouped by k-means into about 4·sqrt(items) lists, and a query visits the `probes`
  lists nearest it;
- inside the lists, items are stored as 4-bit product-quantisation codes (faiss' fast-scan, 16 learned levels
  a dimension), which a query scans several times faster than the floats; the `candidates` best by the codes
  are then scored exactly from the item table and the top k returned.
`hnsw` is a graph over the items searched by inner product directly; it finds fewer of the true top 10 at a
million items. `benchmarks/ann_recall.py` measures both (recall@10 against exact top-k, per-query latency,
build time and memory), on a trained table and on million-item catalogues with and without structure.

An index holds the items the model was trained on. Items added after training are few and are scored
exactly beside it, so an add never rebuilds it. Both return exact inner products of the items they find.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mahn.errors import DataError

INDEXES = ("auto", "exact", "ivf", "hnsw")
AUTO_IVF_FROM = 100_000  # trained items from which `auto` searches an ivf index instead of scoring every item
TRAIN_PER_LIST = 50  # k-means sample: this many items per list (faiss asks for at least 39)
QUANTISE_FROM = 10_000  # items from which an ivf index stores 4-bit codes instead of floats


@dataclass(frozen=True)
class HNSWSettings:
    links: int = 32  # M: neighbours per node; more: better recall, more memory, slower build
    ef_construction: int = 200  # candidates kept while building
    ef_search: int = 256  # candidates kept while searching; more: better recall, slower queries


@dataclass(frozen=True)
class IVFSettings:
    lists: int = 0  # k-means lists; 0: about 4·sqrt(items), a power of two (4,096 at a million items)
    probes: int = 1024  # lists visited per query; more: better recall, slower queries
    candidates: int = 1000  # the best items by their codes that are re-ranked exactly; more: better recall


def check_index(name: str) -> str:
    if name not in INDEXES:
        raise DataError(f"unknown index {name!r}; choose one of {', '.join(INDEXES)}", "--index")
    if name in ("ivf", "hnsw"):
        _faiss()
    return name


def resolve_index(name: str, items: int) -> str:
    """The index a catalogue of `items` trained items is searched with: `auto` is exact below AUTO_IVF_FROM
    items and ivf from there (exact when faiss is not installed); any other name is itself."""
    if name != "auto":
        return name
    if items < AUTO_IVF_FROM:
        return "exact"
    try:
        _faiss()
    except DataError:
        return "exact"
    return "ivf"


def _faiss():
    try:
        import faiss
    except ImportError:
        raise DataError("--index ivf and hnsw need faiss: pip install faiss-cpu (or mahn[ann])", "--index") from None
    return faiss


def default_lists(items: int) -> int:
    """About 4·sqrt(items), rounded to a power of two, with at least 39 items a list (faiss' k-means)."""
    wanted = 2 ** round(np.log2(max(1.0, 4 * np.sqrt(items))))
    return int(max(1, min(wanted, items // 39)))


class IVFIndex:
    """Inverted lists over a fixed (items, D) table lifted to equal norms, with quantised codes, re-ranked
    exactly; `search` returns the best k per query by inner product."""

    def __init__(self, table: np.ndarray, settings: IVFSettings = IVFSettings(), seed: int = 0):
        faiss = _faiss()
        self.table = np.ascontiguousarray(table, dtype=np.float32)  # kept (no copy when already so) for exact scores
        self.size, self.dim = self.table.shape
        self.settings = settings
        self.width = self.dim + 1 + (self.dim + 1) % 2  # the lifted coordinate, then a zero to an even width
        lifted = np.zeros((self.size, self.width), np.float32)
        lifted[:, : self.dim] = self.table
        squared = np.einsum("ij,ij->i", self.table, self.table)
        lifted[:, self.dim] = np.sqrt(np.maximum(squared.max() - squared, 0.0))
        self.lists = settings.lists or default_lists(self.size)
        # codes: 4-bit product quantisation, one dimension a sub-quantiser (with two, near-duplicate items could
        # not be told apart: recall@10 stayed at 0.85 at a million items, benchmarks/results/ann_recall_ivf_pq2.json),
        # once there are items enough to train its 16 levels per dimension; floats below that
        codes = f"PQ{self.width}x4fs" if self.size >= QUANTISE_FROM else "Flat"
        self.index = faiss.index_factory(self.width, f"IVF{self.lists},{codes}")
        self.lists_index = faiss.extract_index_ivf(self.index)  # the inverted lists: seed and probes are set there
        self.lists_index.cp.seed = seed
        sample = np.random.default_rng(seed).choice(self.size, min(self.size, TRAIN_PER_LIST * self.lists),
                                                    replace=False)
        self.index.train(lifted[np.sort(sample)])
        self.index.add(lifted)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(inner products, ids), each (queries, k), best first; an id of -1 where fewer than k were found."""
        k = min(k, self.size)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.lists_index.nprobe = min(self.settings.probes, self.lists)
        padded = np.zeros((len(queries), self.width), np.float32)
        padded[:, : self.dim] = queries
        _, ids = self.index.search(padded, min(self.size, max(k, self.settings.candidates)))
        scores = np.einsum("qkd,qd->qk", self.table[np.maximum(ids, 0)], queries)
        scores[ids < 0] = -np.inf
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, best, 1), np.take_along_axis(ids, best, 1)


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


def build_index(kind: str, table: np.ndarray, hnsw: HNSWSettings, ivf: IVFSettings) -> IVFIndex | HNSWIndex:
    return IVFIndex(table, ivf) if kind == "ivf" else HNSWIndex(table, hnsw)
