"""Python API and serving engine: `mahn.load(RUN).recommend(history_keys, k)`.

A `Recommender` holds a trained run's model, its dataset and the items added to the run after training
(`mahn.catalog`): the items it serves are `mahn.items.LiveItems` (one snapshot at a time), the scores come
from `mahn.scoring.Scorer` (the item table computed once, on the model's device, and kept; a request is then
one `encode` of the histories, one matrix product with the table and a top-k, or a search of the HNSW index).
The server (`mahn.serve`) shares one Recommender between threads: the torch calls run under one lock, and
each request reads one snapshot of the items, which `refresh()` replaces whole after an add.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.evaluation import PROTOCOLS, EvalConfig, evaluate
from mahn.index import HNSWIndex, HNSWSettings, IVFIndex, IVFSettings, check_index
from mahn.items import Item, LiveItems, UnknownItemError
from mahn.models.base import SequentialModel
from mahn.scoring import Recommendation, Scorer, check_boost
from mahn.training import load_run


class Recommender:
    """A trained run: its model (best validation weights), its dataset and the items added since training."""

    def __init__(self, model: SequentialModel, dataset: Dataset, record: dict, run: str | Path | None = None,
                 index: str = "auto", hnsw: HNSWSettings = HNSWSettings(), ivf: IVFSettings = IVFSettings()):
        self.model, self.dataset, self.record = model, dataset, record
        self.run = Path(run) if run is not None else None
        self.max_len: int = record["train"]["max_len"]
        self.n_trained: int = dataset.n_items
        self.lock = threading.RLock()  # torch calls and refreshes; reads take one snapshot of the items
        self.items = LiveItems(model, dataset, self.run, self.lock)
        held_out = dataset.new_items()  # a new-item split's items, new to the model like the added ones
        self.scorer = Scorer(model, record["model"], self.n_trained, self.lock, check_index(index), hnsw, ivf,
                             held_out=() if held_out is None else held_out.tolist())

    # --- the items -------------------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        return self.items.current().keys

    @property
    def titles(self) -> list[str]:
        return self.items.current().titles

    @property
    def images(self) -> list[str | None]:
        return self.items.current().images

    @property
    def ids(self) -> dict[str, int]:
        """Each item's key -> its item id (the row of the item table)."""
        return self.items.current().ids

    @property
    def added_note(self) -> str | None:
        """Why the items added to the run are not served, when they are not."""
        return self.items.added_note

    @property
    def index_kind(self) -> str:
        """How the trained items are ranked: exact, ivf or hnsw (`auto` resolved by the catalogue's size)."""
        return self.scorer.index_kind

    def __len__(self) -> int:
        return len(self.items.current().keys)

    def refresh(self) -> int:
        """Reload the items added to the run (`mahn.catalog`) and their item-table rows; returns how many."""
        return self.items.refresh()

    def refresh_if_changed(self) -> bool:
        """`refresh` when items were added since the last one; one stat call otherwise (see LiveItems)."""
        return self.items.refresh_if_changed()

    def item_ids(self, keys: list[str]) -> list[int]:
        return self.items.ids(self.items.current(), keys)

    def item(self, key: str) -> Item:
        """One item by key; an UnknownItemError (a DataError) when there is none."""
        return self.items.item(key)

    def search(self, query: str, limit: int = 20, offset: int = 0) -> list[Item]:
        """Items whose title contains `query` (case-insensitive), in id order; an empty query lists every item."""
        return self.items.search(query, limit, offset)

    # --- the scores -------------------------------------------------------------------------------

    def item_table(self) -> torch.Tensor:
        """(items, D) every item's vector (trained, then added), on the model's device; computed once."""
        return self.scorer.table(self.items.current())

    def ann(self) -> IVFIndex | HNSWIndex:
        """The approximate index over the trained items (mahn.index), built on first use."""
        return self.scorer.ann(self.items.current())

    def warm(self) -> None:
        """Compute now what the first request would otherwise wait for: the item table (and the index)."""
        self.item_table()
        if self.scorer.approximate:
            self.ann()

    def recommend(self, history: list[str], k: int = 10, exclude_history: bool = True,
                  candidates: list[str] | None = None, new_item_places: int = 0,
                  new_item_boost: float = 0.0) -> list[Recommendation]:
        """Top-k items after a history of item keys (oldest first).

        `candidates`: rank only these keys. `exclude_history`: leave out every item of the history.
        Items added after training are recommended by their content, and read in a history by their content too
        (MAHN, MGT); models that cannot read them there (VBPR, JRL, MV-RNN) leave them out of the input window.
        `new_item_boost`: added to the score of every new item (added after training, or held out by a new-item
        split) before ranking; to a model trained with the softmax, each new item's odds times e^boost.
        `new_item_places`: up to this many of the k places go to the best new items when the (boosted) top-k lists
        fewer: they replace its last items.
        """
        return self.recommend_batch([history], k, exclude_history, None if candidates is None else [candidates],
                                    new_item_places, new_item_boost)[0]

    def recommend_batch(self, histories: list[list[str]], k: int | Sequence[int] = 10,
                        exclude_history: bool | Sequence[bool] = True,
                        candidates: Sequence[list[str] | None] | None = None,
                        new_item_places: int | Sequence[int] = 0,
                        new_item_boost: float | Sequence[float] = 0.0) -> list[list[Recommendation]]:
        """`recommend` for many histories with one encode: k, exclude_history, candidates, new_item_places and
        new_item_boost per history (or one value of each for all; `candidates` has one entry, or None, per
        history)."""
        n = len(histories)
        ks = [k] * n if isinstance(k, int) else list(k)
        excludes = [exclude_history] * n if isinstance(exclude_history, bool) else list(exclude_history)
        candidates = [None] * n if candidates is None else list(candidates)
        places = [new_item_places] * n if isinstance(new_item_places, int) else list(new_item_places)
        boosts = [new_item_boost] * n if isinstance(new_item_boost, int | float) else list(new_item_boost)
        if not (len(ks) == len(excludes) == len(candidates) == len(places) == len(boosts) == n):
            raise DataError(f"{n} histories need one k, exclude_history, candidates, new_item_places and "
                            "new_item_boost entry each", "recommend_batch")
        if n == 0:
            return []
        items = self.items.current()
        total = len(items.keys)
        reader = items.reader or self.model
        known, windows, pools = [], [], []
        for history, count, pool, new_places, boost in zip(histories, ks, candidates, places, boosts, strict=True):
            if not history:
                raise DataError("the history is empty: give at least one item key", "history")
            if not 1 <= count <= total:
                raise DataError(f"k must be between 1 and the number of items ({total}), got {count}", "k")
            if not 0 <= new_places <= count:
                raise DataError(f"new_item_places must be between 0 and k ({count}), got {new_places}",
                                "new_item_places")
            check_boost(boost, "new_item_boost")
            ids = self.items.ids(items, history)
            window = [i for i in ids if i < reader.n_items][-self.max_len :]
            if not window:
                raise DataError(f"the history holds only items added after training, which "
                                f"{self.record['model']} cannot read in a history: give at least one item of the "
                                "dataset", "history")
            known.append(ids)
            windows.append(window)
            pools.append(None if pool is None else sorted(set(self.items.ids(items, pool))))
        return self.scorer.top_k(items, reader, windows, known, ks, excludes, pools, places,
                                 [float(b) for b in boosts])

    def evaluate(self, split: str = "test", keep_history: bool = False,
                 protocols: tuple[str, ...] = PROTOCOLS, new_item_boost: float = 0.0) -> dict:
        """Metrics under `protocols` (both by default; ("uni100",) alone scores 101 candidates a user), with
        `new_item_boost` added to every new item's score (a dataset made by `mahn cold-split`), as `recommend`."""
        config = EvalConfig(split=split, keep_history=keep_history, max_len=self.max_len, protocols=protocols,
                            new_item_boost=new_item_boost)
        return evaluate(self.model, self.dataset, config)


def load(run: str | Path, dataset: str | Path | None = None, device: str = "auto", index: str = "auto",
         hnsw: HNSWSettings = HNSWSettings(), ivf: IVFSettings = IVFSettings()) -> Recommender:
    """Load a training run (best validation checkpoint) onto `device` (auto: a CUDA GPU when there is one).

    `dataset` overrides the dataset path stored in the run. `index`: how the trained items are ranked: exact
    (score every item), ivf or hnsw (approximate top-k for very large catalogues; mahn.index), or auto (exact
    below 100,000 trained items, ivf from there, when faiss is installed); `ivf` and `hnsw` tune those two.
    """
    model, data, record = load_run(run, dataset, device)
    return Recommender(model, data, record, run, index=index, hnsw=hnsw, ivf=ivf)


__all__ = ["Item", "Recommender", "Recommendation", "UnknownItemError", "load"]
