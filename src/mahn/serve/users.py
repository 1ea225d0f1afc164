"""The users of a served run's dataset, for the page's "start from a user" (GET /users)."""

from __future__ import annotations

from fastapi import HTTPException

from mahn.api import Recommender
from mahn.items import KEY_CHARS
from mahn.serve.schemas import UserOut


class UserIndex:
    """The users of a run's dataset (users.parquet `key`, in id order): search by key, and each one's history.

    A user's history here is the training part: every item before the validation and test targets, which
    are held out (`Dataset.train_ends`), so the page shows what the model learnt from and the held-out items
    it could be asked to predict next. Users too short to be evaluated have every item in training.
    """

    def __init__(self, recommender: Recommender):
        dataset = self.dataset = recommender.dataset
        self.keys: list[str] = dataset.user_keys()
        self.ids = {k: u for u, k in enumerate(self.keys)}
        self.folded = [k.casefold() for k in self.keys]
        self.train_counts = dataset.train_ends - dataset.offsets[:-1]

    def search(self, query: str, limit: int, offset: int) -> list[UserOut]:
        needle, found = query.strip().casefold(), []
        for u, key in enumerate(self.folded):
            if needle in key:
                if offset:
                    offset -= 1
                    continue
                found.append(UserOut(key=self.keys[u], train_items=int(self.train_counts[u])))
                if len(found) == limit:
                    break
        return found

    def history(self, key: str) -> tuple[list[int], list[int]]:
        """(training item ids, held-out item ids) of one user; 404 for an unknown key."""
        user = self.ids.get(key)
        if user is None:
            shown = key if len(key) <= KEY_CHARS else key[:KEY_CHARS] + "..."
            raise HTTPException(404, f"unknown user key: {shown}")
        dataset = self.dataset
        start, train_end, end = dataset.offsets[user], dataset.train_ends[user], dataset.offsets[user + 1]
        return dataset.items[start:train_end].tolist(), dataset.items[train_end:end].tolist()
