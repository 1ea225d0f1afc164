"""Micro-batching for POST /recommend: the requests that wait at the same moment are scored together.

One thread per served run takes every request queued while it was busy (up to `MAX_BATCH`) and answers them
with one `recommend_batch` call: one pass of the history encoder and one read of the item table for all of
them, where one call each read the table once a request. Nothing waits on purpose: a request that finds the
thread idle is scored at once, alone, so a quiet server answers as fast as before and a busy one scores more
requests a call. A batch that fails (one request with an unknown item, say) is answered one request at a time,
so each request gets its own answer or its own error.

While the model runs in this thread, the event loop goes on reading requests, which is where the next batch
comes from.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass

from mahn.api import Recommendation, Recommender
from mahn.serve.schemas import RecommendRequest

MAX_BATCH = 64  # requests a model call; past this the table product stops being the cost that batching shares


@dataclass
class Pending:
    request: RecommendRequest
    future: asyncio.Future  # of the event loop the request waits in (future.get_loop())


class Batcher:
    """Scores the requests to one Recommender in batches, on a thread of its own (started on first use)."""

    def __init__(self, recommender: Recommender, max_batch: int = MAX_BATCH):
        self.recommender, self.max_batch = recommender, max_batch
        self.waiting: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self.lock = threading.Lock()  # orders `close` against new requests
        self.thread: threading.Thread | None = None
        self.closed = False
        self.batches = 0  # batches taken from the queue, and the requests in them (for tests and benchmarks)
        self.answered = 0

    async def recommend(self, request: RecommendRequest) -> list[Recommendation]:
        future = None
        with self.lock:
            if not self.closed:
                if self.thread is None:
                    self.thread = threading.Thread(target=self._serve, name="mahn-batcher", daemon=True)
                    self.thread.start()
                future = asyncio.get_running_loop().create_future()
                self.waiting.put(Pending(request, future))
        if future is None:  # a retired run: its last requests are answered directly
            return self._one(request)
        return await future

    def close(self) -> None:
        """Answer what is queued, then stop the thread (a swapped-out run); later requests are answered directly."""
        with self.lock:
            self.closed = True
            if self.thread is not None:
                self.waiting.put(None)

    def _serve(self) -> None:
        while True:
            first = self.waiting.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    pending = self.waiting.get_nowait()
                except queue.Empty:
                    break
                if pending is None:  # closed: answer this batch, then stop
                    self._answer(batch)
                    return
                batch.append(pending)
            self._answer(batch)

    def _answer(self, batch: list[Pending]) -> None:
        requests = [p.request for p in batch]
        try:
            outcomes: list = self.recommender.recommend_batch(
                [r.history for r in requests], [r.k for r in requests], [r.exclude_history for r in requests],
                [r.candidates for r in requests], [r.new_item_places for r in requests],
                [r.new_item_boost for r in requests])
        except Exception as error:  # noqa: BLE001 - one bad request must not fail the others: each alone
            outcomes = [error] if len(batch) == 1 else [self._one_or_error(r) for r in requests]
        self.batches += 1
        self.answered += len(batch)
        for pending, outcome in zip(batch, outcomes, strict=True):
            try:
                pending.future.get_loop().call_soon_threadsafe(settle, pending.future, outcome)
            except RuntimeError:  # its event loop has closed (a server shutting down): nobody waits for it
                continue

    def _one(self, request: RecommendRequest) -> list[Recommendation]:
        return self.recommender.recommend(request.history, request.k, request.exclude_history, request.candidates,
                                          request.new_item_places, request.new_item_boost)

    def _one_or_error(self, request: RecommendRequest) -> list[Recommendation] | Exception:
        try:
            return self._one(request)
        except Exception as error:  # noqa: BLE001 - handed to the request's own coroutine, which raises it
            return error


def settle(future: asyncio.Future, outcome: list[Recommendation] | Exception) -> None:
    if future.done():  # the client went away and its request was cancelled
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
