"""The page, the health check and what the run is."""

from __future__ import annotations

from pathlib import Path

import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

import mahn
from mahn.io import read_json
from mahn.serve.engine import Engine, engine, errors
from mahn.serve.schemas import Health, ModelInfo, Versions

router = APIRouter()
open_router = APIRouter()  # the page and the health check: open even under `--protect all`


STATIC = Path(__file__).resolve().parent.parent / "static"  # the page: index.html, page.js, page.css


def _metrics(path: Path, key: str | None = None) -> dict | None:
    if not path.exists():
        return None
    record = read_json(path)
    record = record.get(key) if key else record
    return {k: v for k, v in record.items() if k != "groups"} if isinstance(record, dict) else None


@open_router.get("/", include_in_schema=False)
def page() -> FileResponse:
    """The page: search items, build a history, see the top-k of each run."""
    return FileResponse(STATIC / "index.html", media_type="text/html")

@open_router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    """Whether the server answers, and how many items the main run serves."""
    recommender = request.app.state.engines["main"].recommender
    recommender.refresh_if_changed()
    return Health(status="ok", items=len(recommender))

@router.get("/model", response_model=ModelInfo, responses=errors(400))
def model(request: Request, served: Engine = Depends(engine)) -> ModelInfo:
    """The model's name, settings, dataset, metrics and versions."""
    recommender = served.recommender
    return ModelInfo(
        run=served.name, name=recommender.record["model"], path=str(served.run), settings=recommender.record,
        dataset=str(recommender.dataset.root), device=str(recommender.model.device), items=len(recommender),
        added_items=len(recommender) - recommender.n_trained, accepts_new_items=recommender.model.reads_content,
        added_note=recommender.added_note, valid=_metrics(served.run / "summary.json", "valid"),
        test=_metrics(served.run / "test.json"), versions=Versions(mahn=mahn.__version__, torch=torch.__version__),
        compare="compare" in request.app.state.engines, version=served.version, loaded_at=served.loaded_at,
        swaps=request.app.state.swapper.swaps)
