"""Recommendations: one history, or a batch of them in one model call."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from mahn.serve.engine import Engine, engine, errors
from mahn.serve.schemas import BatchRequest, BatchResponse, RecommendRequest, RecommendResponse

router = APIRouter()


@router.post("/recommend", response_model=RecommendResponse, responses=errors(400, 413))
async def recommend(body: RecommendRequest, served: Engine = Depends(engine)) -> RecommendResponse:
    """The top-k items after a history of item keys."""
    return served.response(await served.batcher.recommend(body))

@router.post("/recommend/batch", response_model=BatchResponse, responses=errors(400, 413))
async def recommend_batch(body: BatchRequest, served: Engine = Depends(engine)) -> BatchResponse:
    """Several recommendation requests in one model call (at most 256)."""
    requests = body.requests
    results = served.recommender.recommend_batch(
        [r.history for r in requests], [r.k for r in requests], [r.exclude_history for r in requests],
        [r.candidates for r in requests], [r.new_item_places for r in requests],
        [r.new_item_boost for r in requests])
    return BatchResponse(run=served.name, results=[served.response(r) for r in results])
