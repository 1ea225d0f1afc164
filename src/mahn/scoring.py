"""Scoring histories against a snapshot of the items: the trained items' rows of the item table computed once
and kept, the added items' rows after them; a request is one `encode` of the windows, one matrix product and a
top-k per history, or, with an approximate index (`ivf`, `hnsw`: mahn.index), a search of the trained rows plus
an exact pass over the added ones. A request may raise the new items' scores by a boost, or keep places of its
top-k for them (`with_new_items`).
Every torch call runs under the Recommender's lock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mahn.errors import DataError
from mahn.index import HNSWIndex, HNSWSettings, IVFIndex, IVFSettings, build_index, resolve_index
from mahn.items import Snapshot
from mahn.models.base import SequentialModel

MAX_BOOST = 20.0  # a new-item boost's ceiling: e^20 already puts any new item above every trained one


def check_boost(boost: float, field: str) -> None:
    """A new-item boost must lie in [0, MAX_BOOST] (which also refuses NaN)."""
    if not 0 <= boost <= MAX_BOOST:
        raise DataError(f"new_item_boost must be between 0 and {MAX_BOOST:g}, got {boost}", field)


@dataclass
class Recommendation:
    key: str
    title: str
    score: float
    image: str | None = None  # the item's image (a local path or a URL), when it has one


def with_new_items(top: list[tuple[float, int]], best_new: list[tuple[float, int]], places: int,
                   is_new: Callable[[int], bool]) -> list[tuple[float, int]]:
    """A top list (score, item) with up to `places` of its last places given to new items: the new items it
    already lists count toward them; the best new items not in it (`best_new`, best first) replace its
    lowest-scored items that are not new, and follow the rest in their own order. The list keeps its length."""
    listed = {item for _, item in top}
    wanted = places - sum(is_new(item) for item in listed)
    extra = [pair for pair in best_new if pair[1] not in listed][: max(0, wanted)]
    if not extra:
        return top
    kept, dropped = [], 0
    for pair in reversed(top):
        if dropped < len(extra) and not is_new(pair[1]):
            dropped += 1
        else:
            kept.append(pair)
    return kept[::-1] + extra[:dropped]


class Scorer:
    def __init__(self, model: SequentialModel, name: str, n_trained: int, lock: threading.RLock,
                 index_kind: str, hnsw: HNSWSettings = HNSWSettings(), ivf: IVFSettings = IVFSettings(),
                 held_out: Sequence[int] = ()):
        self.model, self.name, self.n_trained, self.lock = model, name, n_trained, lock
        # new items: those added after training (ids from n_trained on) and a new-item split's held-out ones
        self.held_out = frozenset(int(i) for i in held_out)
        self._held_out_ids = torch.tensor(sorted(self.held_out), dtype=torch.long)
        self.index_kind = resolve_index(index_kind, n_trained)  # auto: exact, or ivf for a large catalogue
        self.hnsw_settings, self.ivf_settings = hnsw, ivf
        self._index: IVFIndex | HNSWIndex | None = None  # over the trained items' rows, built on first use
        self._table: torch.Tensor | None = None  # the trained items' rows, computed on first use

    @torch.no_grad()
    def table(self, items: Snapshot) -> torch.Tensor:
        """(items, D) every item's vector (trained, then added), on the model's device; computed once."""
        with self.lock:
            if items.table is None:
                if self._table is None:  # the trained items' rows: kept across refreshes
                    self._table = self.model.item_table().detach()
                items.table = self._table if items.added_rows is None else torch.cat(
                    [self._table, items.added_rows.to(self._table.dtype)])
            return items.table

    @property
    def approximate(self) -> bool:
        return self.index_kind in ("ivf", "hnsw")

    def ann(self, items: Snapshot) -> IVFIndex | HNSWIndex:
        """The approximate index over the trained items (mahn.index), built on first use."""
        with self.lock:
            if self._index is None:
                self.table(items)
                self._index = build_index(self.index_kind, self._table.float().cpu().numpy(), self.hnsw_settings,
                                          self.ivf_settings)
            return self._index

    def is_new(self, item: int) -> bool:
        return item >= self.n_trained or item in self.held_out

    def new_ids(self, items: Snapshot) -> torch.Tensor:
        return torch.cat([self._held_out_ids, torch.arange(self.n_trained, len(items.keys))])

    @torch.no_grad()
    def top_k(self, items: Snapshot, reader: SequentialModel, windows: list[list[int]], known: list[list[int]],
              ks: list[int], excludes: list[bool], pools: list[list[int] | None],
              new_places: list[int] | None = None, new_boosts: list[float] | None = None
              ) -> list[list[Recommendation]]:
        """Per history: its top-k, reading `windows` (ids the reader knows), leaving out `known` (every item of
        the history) where `excludes` says so, among `pools` where one is given, the new items' scores raised by
        `new_boosts` and up to `new_places` of its places kept for them (`with_new_items`); a history with either
        is ranked exactly."""
        new_places = new_places or [0] * len(windows)
        new_boosts = new_boosts or [0.0] * len(windows)
        width = max(len(w) for w in windows)
        batch = torch.tensor([[reader.pad] * (width - len(w)) + w for w in windows], device=self.model.device)
        table = self.table(items)
        approximate = self.approximate
        with self.lock:
            try:
                states = reader.encode(batch)
            except ValueError as error:  # a model that needs a user id (Caser) cannot serve anonymous histories
                raise DataError(f"{self.name} cannot recommend for a history alone: {error}") from error
            scores = None if approximate else (states @ table.T).float()
        approximated = {}  # row -> its top-k from the index (rows with candidates are ranked exactly)
        if approximate:
            rows = [r for r, (pool, places, boost) in enumerate(zip(pools, new_places, new_boosts, strict=True))
                    if pool is None and not places and not boost]
            approximated = self._approximate_tops(states, items, rows, [set(known[r]) if excludes[r] else set()
                                                                        for r in rows], [ks[r] for r in rows])
        results = []
        new_ids = self.new_ids(items).to(table.device) if any(new_places) or any(new_boosts) else None
        for r, (ids, count, exclude, pool, places, boost) in enumerate(zip(known, ks, excludes, pools, new_places,
                                                                           new_boosts, strict=True)):
            if approximated.get(r) is not None:
                results.append(approximated[r])
                continue
            row = scores[r] if scores is not None else (states[r] @ table.T).float()
            if boost:  # a softmax model's odds of every new item times e^boost
                row[new_ids] += boost
            if pool is not None:
                allowed = torch.tensor(pool, dtype=torch.long, device=row.device)
                masked = torch.full_like(row, -torch.inf)
                masked[allowed] = row[allowed]
                row = masked
            if exclude:  # every item of the history, as full-ranking evaluation masks them, not only the window
                row[ids] = -torch.inf
            top = torch.topk(row, min(count, int(torch.isfinite(row).sum())))
            ranked = list(zip(top.values.tolist(), top.indices.tolist(), strict=True))
            if places and len(new_ids):
                new_scores = row[new_ids]
                best = torch.topk(new_scores, min(count, int(torch.isfinite(new_scores).sum())))
                ranked = with_new_items(ranked, list(zip(best.values.tolist(), new_ids[best.indices].tolist(),
                                                         strict=True)), places, self.is_new)
            results.append([Recommendation(items.keys[i], items.titles[i], float(s), items.images[i])
                            for s, i in ranked])
        return results

    def _approximate_tops(self, states: torch.Tensor, items: Snapshot, rows: list[int], excluded: list[set[int]],
                          counts: list[int]) -> dict[int, list[Recommendation] | None]:
        """For each of `rows` of `states`: the top `count` from the index over the trained items and an exact
        pass over the added ones, leaving out that row's `excluded`; None where the index found too few (the
        caller then ranks that row exactly). One index search and one product for all the rows."""
        if not rows:
            return {}
        queries = states[rows].float()
        want = max(count + sum(i < self.n_trained for i in skip) for count, skip in zip(counts, excluded, strict=True))
        with self.lock:
            scores, ids = self.ann(items).search(queries.cpu().numpy(), want)
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
