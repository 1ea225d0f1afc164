"""The items a run serves: the dataset's (ids 0..n_trained-1), then those added to the run after training
(`mahn.catalog`), as one `Snapshot` that `LiveItems.refresh` replaces whole after an add. Readers take one
snapshot and use it to the end of their request, so an add is seen whole or not at all."""

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
from mahn.models.base import SequentialModel

SHOWN_KEYS = 5  # unknown keys named in an error message
KEY_CHARS = 80  # each shortened to this many characters


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
class Snapshot:
    """One consistent view of the items: the dataset's, then the added ones, in order.

    Replaced whole by `LiveItems.refresh`, never changed in place (but for `table`, filled once on first use).
    """

    keys: list[str]
    titles: list[str]
    images: list[str | None]
    ids: dict[str, int]  # key -> item id
    folded: list[str]  # casefolded titles, for search
    added_rows: torch.Tensor | None  # (added, D) item-table rows of the added items, on the model's device
    table: torch.Tensor | None = None  # (items, D) the full item table, computed on first use (scoring.Scorer)
    # the model that reads histories: one that also reads the added items (SequentialModel.with_added), or None
    # for the trained model alone (no items added, or a model that cannot read them: they leave the window)
    reader: SequentialModel | None = None

    def item(self, i: int, n_trained: int) -> Item:
        return Item(self.keys[i], self.titles[i], self.images[i], i >= n_trained)


def snapshot(keys: list[str], titles: list[str], images: list[str | None], added_rows: torch.Tensor | None = None,
             reader: SequentialModel | None = None) -> Snapshot:
    return Snapshot(keys, titles, images, {k: i for i, k in enumerate(keys)}, [t.casefold() for t in titles],
                    added_rows, reader=reader)


class LiveItems:
    """The current snapshot of a run's items, read on first use and refreshed when an add changes them."""

    def __init__(self, model: SequentialModel, dataset: Dataset, run: Path | None, lock: threading.RLock):
        self.model, self.dataset, self.run, self.lock = model, dataset, run, lock
        self.n_trained: int = dataset.n_items
        self.added_note: str | None = None  # why added items are not served, when they are not
        self._refresh_lock = threading.Lock()
        self._base: Snapshot | None = None  # the dataset's items
        self._items: Snapshot | None = None  # the dataset's and the added ones: read on first use (not by evaluate)
        self._loaded_stamp: tuple[int, int] | None = None

    def current(self) -> Snapshot:
        items = self._items
        if items is None:
            self.refresh()
            items = self._items
        return items

    def _base_items(self) -> Snapshot:
        table = self.dataset.item_metadata
        keys = table["key"].to_list()
        images = ([s if s and s.strip() else None for s in table["image"].to_list()]
                  if "image" in table.columns else [None] * len(keys))
        return snapshot(keys, self.dataset.titles(), images)

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

    def _with_added(self, added) -> tuple[Snapshot, str | None]:
        base = self._base
        clash = [k for k in added.keys if k in base.ids]
        if clash:
            raise DataError(f"added item key(s) already in the dataset: {', '.join(clash[:SHOWN_KEYS])}", self.run)
        features = {m: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(self.model.device)
                    for m, v in added.features.items()}
        with self.lock:
            try:  # content_vectors refuses an ID-only model, and features that do not fit
                rows = self.model.content_vectors(features)
            except DataError as error:
                return base, f"{len(added.keys)} added item(s) not served: {error}"
            # a model that cannot read them in a history scores them but leaves them out of the window
            reader = self.model.with_added(features) if self.model.reads_added_in_history else None
        titles = [t if t else k for t, k in zip(added.titles, added.keys, strict=True)]
        images = [s if s and s.strip() else None for s in added.images]
        return snapshot(base.keys + list(added.keys), base.titles + titles, base.images + images,
                        rows.detach().float(), reader), None

    def ids(self, items: Snapshot, keys: Sequence[str]) -> list[int]:
        """The ids of `keys` in `items`; an UnknownItemError (a DataError) naming those it lacks."""
        unknown = list(dict.fromkeys(k for k in keys if k not in items.ids))
        if unknown:
            raise UnknownItemError(unknown, self.dataset.root / "items.parquet")
        return [items.ids[k] for k in keys]

    def item(self, key: str) -> Item:
        """One item by key; an UnknownItemError (a DataError) when there is none."""
        items = self.current()
        return items.item(self.ids(items, [key])[0], self.n_trained)

    def search(self, query: str, limit: int = 20, offset: int = 0) -> list[Item]:
        """Items whose title contains `query` (case-insensitive), in id order; an empty query lists every item."""
        if limit < 1:
            raise DataError(f"limit must be at least 1, got {limit}", "limit")
        if offset < 0:
            raise DataError(f"offset must be at least 0, got {offset}", "offset")
        items, needle = self.current(), query.strip().casefold()
        found = []
        for i, title in enumerate(items.folded):
            if needle in title:
                if offset:
                    offset -= 1
                    continue
                found.append(items.item(i, self.n_trained))
                if len(found) == limit:
                    break
        return found
