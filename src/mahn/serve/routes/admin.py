"""Administration: swap the served model for a reloaded or another run, without dropping a request."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request

from mahn.errors import DataError
from mahn.serve.engine import errors, public_message
from mahn.serve.schemas import SwapRequest, SwapResponse
from mahn.serve.swap import SwapRefused

writes = APIRouter()


@writes.post("/admin/reload", response_model=SwapResponse, responses=errors(400, 409))
def reload(body: SwapRequest, request: Request) -> SwapResponse:  # a plain function: loading runs in the pool
    """Load a run (the served one again when `run` is null, e.g. after retraining into it or repointing a link)
    beside the served one, check that it recommends, and swap it in; requests in flight finish on the old one.
    A run that does not load leaves the old one serving (400, saying why)."""
    swapper = request.app.state.swapper
    try:
        return SwapResponse(**swapper.swap(Path(body.run) if body.run else None, body.drop_added))
    except SwapRefused as error:
        raise HTTPException(409, str(error)) from error
    except Exception as error:  # a broken run: whatever it raised, the old run goes on serving
        why = public_message(error) if isinstance(error, DataError) else f"{error.__class__.__name__}: {error}"
        raise HTTPException(400, f"the run does not load, the old one goes on serving: {why}") from error
