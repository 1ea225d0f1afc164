"""Python API and serving engine: `mahn.load(RUN).recommend(history_keys, k)`.

A `Recommender` holds a trained run's model, its dataset and the items added to the run after training
(`mahn.catalog`). The item table (every item's vector) is computed once, on the model's device, and kept;
a request is then one `encode` of the histories, one matrix product with the table and a top-k. The
server (`mahn.serve`) shares one Recommender between threads: the torch calls run under a lock, and
each request reads one snapshot of the items, which `refresh()` replaces whole after an add.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mahn.catalog import load_added
from mahn.catalog.store import stamp as added_stamp
from mahn.data import Dataset
from mahn.errors import DataError
from mahn.evaluation import PROTOCOLS, EvalConfig, evaluate
from mahn.index import HNSWIndex, HNSWSettings, check_index
from mahn.models.base import SequentialModel
from mahn.training import load_run

SHOWN_KEYS = 5  # unknown keys named in an error message
KEY_CHARS = 80  # each shortened to this many characters


@dataclass
class Recommendation:
    key: str
    title: str
    score: float
    image: str | None = None  # the item's image (a local path or a URL), when it has one


@dataclass
class Item:
    key: str
    title: str
    image: str | None  # a local path or a URL
    added: bool  # added to the run after training (scored by its content features only)


class UnknownItemError(DataError):
    """Item keys that are neither in the dataset nor added to the run; `keys` lists them (first seen first)."""

    def __init__(self, keys: list[str], where=None):
        self.keys = keys
        shown = ", ".join(k if len(k) <= KEY_CHARS else k[:KEY_CHARS] + "..." for k in keys[:SHOWN_KEYS])
        more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
        super().__init__(f"unknown item key(s): {shown}{more}", where)


@dataclass
class _Items:
    """One consistent view of the items: the dataset's (ids 0..n_trained-1), then the added ones, in order.

    Replaced whole by `refresh`, never changed in place (but for `table`, filled once on first use).
    """

    keys: list[str]
    titles: list[str]
    images: list[str | None]
    ids: dict[str, int]  # key -> item id
    folded: list[str]  # casefolded titles, for search
    added_rows: torch.Tensor | None  # (added, D) item-table rows of the added items, on the model's device
    table: torch.Tensor | None = None  # (items, D) the full item table, computed on first use
    # the model that reads histories: one that also reads the added items (SequentialModel.with_added), or None
    # for the trained model alone (no items added, or a model that cannot read them: they leave the window)
    reader: SequentialModel | None = None


class Recommender:
    """A trained run: its model (best validation weights), its dataset and the items added since training."""

    def __init__(self, model: SequentialModel, dataset: Dataset, record: dict, run: str | Path | None = None,
                 index: str = "exact", hnsw: HNSWSettings = HNSWSettings()):
        self.model, self.dataset, self.record = model, dataset, record
        self.index_kind, self.hnsw_settings = check_index(index), hnsw
        self._hnsw: HNSWIndex | None = None  # over the trained items' rows, built on first use (index "hnsw")
        self.run = Path(run) if run is not None else None
        self.max_len: int = record["train"]["max_len"]
        self.n_trained: int = dataset.n_items
        self.lock = threading.RLock()  # torch calls and refreshes; reads take one `_items` snapshot
        self._table: torch.Tensor | None = None  # the trained items' rows, computed on first use
        self.added_note: str | None = None  # why added items are not served, when they are not
        self._refresh_lock = threading.Lock()
        self._base: _Items | None = None  # the dataset's items
        self._items: _Items | None = None  # the dataset's and the added ones: read on first use (not by evaluate)
        self._loaded_stamp: tuple[int, int] | None = None

    # --- the items -------------------------------------------------------------------------------

    def _base_items(self) -> _Items:
        table = self.dataset.item_metadata
        keys = table["key"].to_list()
        titles = self.dataset.titles()
        images = ([s if s and s.strip() else None for s in table["image"].to_list()]
                  if "image" in table.columns else [None] * len(keys))
        return _Items(keys, titles, images, {k: i for i, k in enumerate(keys)}, [t.casefold() for t in titles], None)

    def _current(self) -> _Items:
        items = self._items
        if items is None:
            self.refresh()
            items = self._items
        return items

    @property
    def keys(self) -> list[str]:
        return self._current().keys

    @property
    def titles(self) -> list[str]:
        return self._current().titles

    @property
    def images(self) -> list[str | None]:
        return self._current().images

    @property
    def ids(self) -> dict[str, int]:
        """Each item's key -> its item id (the row of the item table)."""
        return self._current().ids

    def __len__(self) -> int:
        return len(self._current().keys)

    def _stamp(self) -> tuple[int, int] | None:
        """Identity of the run's added-items manifest (a new add replaces it), or None when there is none."""
        if self.run is None:
            return None
        try:
            stat = added_stamp(self.run)
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def refresh_if_changed(self) -> bool:
        """`refresh` when items were added to the run since the last one (by this process or another, such
        as `mahn add-items` or another server worker); one stat call otherwise. Returns whether it reloaded."""
        if self._items is not None and self._stamp() == self._loaded_stamp:
            return False
        self.refresh()
        return True

    @torch.no_grad()
    def refresh(self) -> int:
        """Reload the items added to the run (`mahn.catalog`) and their item-table rows; returns how many.

        An ID-only model cannot score items known only by their content: it serves none of them, and
        `added_note` says why.
        """
        with self._refresh_lock:
            stamp = self._stamp()  # before reading: an add during the read is seen by the next check
            if self._base is None:
                self._base = self._base_items()
            added = load_added(self.run) if self.run is not None else None
            items, note = self._base, None
            if added is not None and len(added.keys):
                items, note = self._with_added(added)
            with self.lock:
                self._items, self.added_note, self._loaded_stamp = items, note, stamp
            return len(items.keys) - self.n_trained

    def _with_added(self, added) -> tuple[_Items, str | None]:
        base = self._base
        clash = [k for k in added.keys if k in base.ids]
        if clash:
            raise DataError(f"added item key(s) already in the dataset: {', '.join(clash[:SHOWN_KEYS])}", self.run)
        features = {m: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(self.model.device)
                    for m, v in added.features.items()}
        with self.lock:
            try:
                self.model.require_content()
                rows = self.model.content_vectors(features)
            except DataError as error:  # an ID-only model, or features that do not fit it
                return base, f"{len(added.keys)} added item(s) not served: {error}"
            # a model that cannot read them in a history scores them but leaves them out of the window
            reader = self.model.with_added(features) if self.model.reads_added_in_history else None
        keys = base.keys + list(added.keys)
        titles = base.titles + [t if t else k for t, k in zip(added.titles, added.keys, strict=True)]
        images = base.images + [s if s and s.strip() else None for s in added.images]
        return _Items(keys, titles, images, {k: i for i, k in enumerate(keys)}, [t.casefold() for t in titles],
                      rows.detach().float(), reader=reader), None

    def item_table(self) -> torch.Tensor:
        """(items, D) every item's vector (trained, then added), on the model's device; computed once."""
        return self._full_table(self._current())

    @torch.no_grad()
    def _full_table(self, items: _Items) -> torch.Tensor:
        with self.lock:
            if items.table is None:
                if self._table is None:  # the trained items' rows: kept across refreshes
                    self._table = self.model.item_table().detach()
                items.table = self._table if items.added_rows is None else torch.cat(
                    [self._table, items.added_rows.to(self._table.dtype)])
            return items.table

    def ann(self) -> HNSWIndex:
        """The HNSW index over the trained items (mahn.index), built on first use."""
        with self.lock:
            if self._hnsw is None:
                self._full_table(self._current())
                self._hnsw = HNSWIndex(self._table.float().cpu().numpy(), self.hnsw_settings)
            return self._hnsw

    def warm(self) -> None:
        """Compute now what the first request would otherwise wait for: the item table (and the index)."""
        self.item_table()
        if self.index_kind == "hnsw":
            self.ann()

    def item_ids(self, keys: list[str]) -> list[int]:
        return self._ids(self._current(), keys)

    def _ids(self, items: _Items, keys: Sequence[str]) -> list[int]:
        unknown = list(dict.fromkeys(k for k in keys if k not in items.ids))
        if unknown:
            raise UnknownItemError(unknown, self.dataset.root / "items.parquet")
        return [items.ids[k] for k in keys]

    def item(self, key: str) -> Item:
        """One item by key; an UnknownItemError (a DataError) when there is none."""
        items = self._current()
        i = self._ids(items, [key])[0]
        return Item(items.keys[i], items.titles[i], items.images[i], i >= self.n_trained)

    def search(self, query: str, limit: int = 20, offset: int = 0) -> list[Item]:
        """Items whose title contains `query` (case-insensitive), in id order; an empty query lists every item."""
        if limit < 1:
            raise DataError(f"limit must be at least 1, got {limit}", "limit")
        if offset < 0:
            raise DataError(f"offset must be at least 0, got {offset}", "offset")
        items, needle = self._current(), query.strip().casefold()
        found = []
        for i, title in enumerate(items.folded):
            if needle in title:
                if offset:
                    offset -= 1
                    continue
                found.append(Item(items.keys[i], items.titles[i], items.images[i], i >= self.n_trained))
                if len(found) == limit:
                    break
        return found

    # --- recommendations --------------------------------------------------------------------------

    def recommend(self, history: list[str], k: int = 10, exclude_history: bool = True,
                  candidates: list[str] | None = None) -> list[Recommendation]:
        """Top-k items after a history of item keys (oldest first).

        `candidates`: rank only these keys. `exclude_history`: leave out every item of the history.
        Items added after training are recommended by their content, and read in a history by their content too
        (MAHN, MGT); models that cannot read them there (VBPR, JRL, MV-RNN) leave them out of the input window.
        """
        return self.recommend_batch([history], k, exclude_history, None if candidates is None else [candidates])[0]

    @torch.no_grad()
    def recommend_batch(self, histories: list[list[str]], k: int | Sequence[int] = 10,
                        exclude_history: bool | Sequence[bool] = True,
                        candidates: Sequence[list[str] | None] | None = None) -> list[list[Recommendation]]:
        """`recommend` for many histories with one encode: k, exclude_history and candidates per history
        (or one k and one exclude_history for all; `candidates` has one entry, or None, per history)."""
        n = len(histories)
        ks = [k] * n if isinstance(k, int) else list(k)
        excludes = [exclude_history] * n if isinstance(exclude_history, bool) else list(exclude_history)
        candidates = [None] * n if candidates is None else list(candidates)
        if not (len(ks) == len(excludes) == len(candidates) == n):
            raise DataError(f"{n} histories need one k, exclude_history and candidates entry each", "recommend_batch")
        if n == 0:
            return []
        items = self._current()
        total = len(items.keys)
        reader = items.reader or self.model
        ids, windows, pools = [], [], []
        for history, count, pool in zip(histories, ks, candidates, strict=True):
            if not history:
                raise DataError("the history is empty: give at least one item key", "history")
            if not 1 <= count <= total:
                raise DataError(f"k must be between 1 and the number of items ({total}), got {count}", "k")
            known = self._ids(items, history)
            window = [i for i in known if i < reader.n_items][-self.max_len :]
            if not window:
                raise DataError(f"the history holds only items added after training, which "
                                f"{self.record['model']} cannot read in a history: give at least one item of the "
                                "dataset", "history")
            ids.append(known)
            windows.append(window)
            pools.append(None if pool is None else sorted(set(self._ids(items, pool))))
        width = max(len(w) for w in windows)
        pad = reader.pad
        batch = torch.tensor([[pad] * (width - len(w)) + w for w in windows], device=self.model.device)
        table = self._full_table(items)
        approximate = self.index_kind == "hnsw"
        with self.lock:
            try:
                states = reader.encode(batch)
            except ValueError as error:  # a model that needs a user id (Caser) cannot serve anonymous histories
                raise DataError(f"{self.record['model']} cannot recommend for a history alone: {error}") from error
            scores = None if approximate else (states @ table.T).float()
        approximated = {}  # row -> its top-k from the index (rows with candidates are ranked exactly)
        if approximate:
            rows = [r for r, pool in enumerate(pools) if pool is None]
            approximated = self._approximate_tops(states, items, rows, [set(ids[r]) if excludes[r] else set()
                                                                        for r in rows], [ks[r] for r in rows])
        results = []
        for r, (known, count, exclude, pool) in enumerate(zip(ids, ks, excludes, pools, strict=True)):
            if approximated.get(r) is not None:
                results.append(approximated[r])
                continue
            row = scores[r] if scores is not None else (states[r] @ table.T).float()
            if pool is not None:
                allowed = torch.tensor(pool, dtype=torch.long, device=row.device)
                masked = torch.full_like(row, -torch.inf)
                masked[allowed] = row[allowed]
                row = masked
            if exclude:  # every item of the history, as full-ranking evaluation masks them, not only the window
                row[known] = -torch.inf
            top = torch.topk(row, min(count, int(torch.isfinite(row).sum())))
            results.append([Recommendation(items.keys[i], items.titles[i], float(s), items.images[i])
                            for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)])
        return results

    def _approximate_tops(self, states: torch.Tensor, items: _Items, rows: list[int], excluded: list[set[int]],
                          counts: list[int]) -> dict[int, list[Recommendation] | None]:
        """For each of `rows` of `states`: the top `count` from the HNSW index over the trained items and an exact
        pass over the added ones, leaving out that row's `excluded`; None where the index found too few (the
        caller then ranks that row exactly). One index search and one product for all the rows."""
        if not rows:
            return {}
        queries = states[rows].float()
        want = max(count + sum(i < self.n_trained for i in skip) for count, skip in zip(counts, excluded, strict=True))
        with self.lock:
            scores, ids = self.ann().search(queries.cpu().numpy(), want)
        added = None
        if items.added_rows is not None:
            added = (queries.to(items.added_rows.dtype) @ items.added_rows.T).float().cpu().tolist()
        tops = {}
        for n, (row, skip, count) in enumerate(zip(rows, excluded, counts, strict=True)):
            found = [(float(s), int(i)) for s, i in zip(scores[n], ids[n], strict=True) if i >= 0 and i not in skip]
            if added is not None:
                found += [(s, self.n_trained + j) for j, s in enumerate(added[n]) if self.n_trained + j not in skip]
            if len(found) < min(count, len(items.keys) - len(skip)):
                tops[row] = None
                continue
            found.sort(key=lambda pair: -pair[0])
            tops[row] = [Recommendation(items.keys[i], items.titles[i], s, items.images[i]) for s, i in found[:count]]
        return tops

    def evaluate(self, split: str = "test", keep_history: bool = False,
                 protocols: tuple[str, ...] = PROTOCOLS) -> dict:
        """Metrics under `protocols` (both by default; ("uni100",) alone scores 101 candidates a user)."""
        config = EvalConfig(split=split, keep_history=keep_history, max_len=self.max_len, protocols=protocols)
        return evaluate(self.model, self.dataset, config)


def load(run: str | Path, dataset: str | Path | None = None, device: str = "auto", index: str = "exact",
         hnsw: HNSWSettings = HNSWSettings()) -> Recommender:
    """Load a training run (best validation checkpoint) onto `device` (auto: a CUDA GPU when there is one).

    `dataset` overrides the dataset path stored in the run. `index`: exact (score every item) or hnsw (an
    approximate HNSW index over the trained items for very large catalogues; mahn.index).
    """
    model, data, record = load_run(run, dataset, device)
    return Recommender(model, data, record, run, index=index, hnsw=hnsw)


__all__ = ["Item", "Recommender", "Recommendation", "UnknownItemError", "load"]
