"""`mahn serve`: a trained run's recommendations over HTTP (FastAPI).

`create_app(RUN)` loads the model once (and a second run with `compare=`, chosen per request with the
query parameter `?run=compare`). POST /recommend hands its request to the run's batcher (mahn.serve.batcher):
the requests that wait together are scored in one model call on the batcher's thread while the event loop reads
the next ones. The other short endpoints (lookups, health) are coroutines that run in the event loop: a hop to
the thread pool costs more than their work. Adds (seconds of feature extraction), images and the users' first read are
plain functions in FastAPI's thread pool. The Recommender runs every torch call under its lock and answers
each request from one snapshot of the items, so concurrent requests are safe and an add (POST /items) is
seen whole or not at all.

`GET /` is a small page (static/: HTML, JS and CSS, nothing fetched from elsewhere) to search items, build
a history or start from a user's training history (GET /users), and see each run's top-k side by side.

Errors: bad input that reaches the library (a DataError) is 400 with {"detail": message}, an unknown
item in the path 404, a request body over the limit 413, a body that does not match its schema 422
(FastAPI's own shape). Local file paths of the server are never put in a message.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

import mahn
from mahn.api import UnknownItemError
from mahn.errors import DataError
from mahn.index import HNSWSettings, IVFSettings
from mahn.serve.access import TOKEN_ENV, Access, may_read, may_write
from mahn.serve.engine import errors, load_engine, public_message
from mahn.serve.limits import MAX_BODY, MAX_UPLOAD, BodyLimit
from mahn.serve.routes import OPEN, READS, WRITES
from mahn.serve.routes.about import STATIC
from mahn.serve.swap import Swapper, freeze_loaded, map_large_allocations

# how `mahn serve --workers N` hands settings to each worker
ENV = {"run": "MAHN_SERVE_RUN", "device": "MAHN_SERVE_DEVICE", "compare": "MAHN_SERVE_COMPARE",
       "images_root": "MAHN_SERVE_IMAGES_ROOT", "index": "MAHN_SERVE_INDEX", "ef_search": "MAHN_SERVE_EF_SEARCH",
       "probes": "MAHN_SERVE_PROBES",
       "protect": "MAHN_SERVE_PROTECT", "read_only": "MAHN_SERVE_READ_ONLY", "workers": "MAHN_SERVE_WORKERS"}


def _printable(value):
    """A validation error's parts with bytes (a body that is not UTF-8) shown as text, not failing to encode."""
    if isinstance(value, bytes):
        return value[:200].decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def create_app(run: Path, *, device: str = "auto", compare: Path | None = None, images_root: Path | None = None,
               max_body: int = MAX_BODY, max_upload: int = MAX_UPLOAD, index: str = "auto",
               ef_search: int = HNSWSettings.ef_search, probes: int = IVFSettings.probes, access: Access = Access(),
               workers: int = 1) -> FastAPI:
    """The HTTP application of a trained run (and, with `compare`, a second one beside it).

    `images_root`: the only folder item images are served from, and the folder that the image paths of
    new items (POST /items) are relative to; default: the folder holding the dataset's images.
    `index`: auto, exact, ivf or hnsw (mahn.load); an ivf index scans `probes` lists a query, an hnsw one keeps
    `ef_search` candidates (more: better recall, slower).
    `access`: the token, what it protects and whether the server is read-only (mahn.serve.access).
    `workers`: the server's worker processes (a swap over HTTP needs one; SIGHUP replaces many).
    """
    engines = {"main": load_engine("main", Path(run), device, images_root, index, ef_search, probes)}
    if compare is not None:
        engines["compare"] = load_engine("compare", Path(compare), device, images_root, index, ef_search, probes)
    main_loader = partial(load_engine, "main", device=device, images_root=images_root, index=index,
                          ef_search=ef_search, probes=probes)

    app = FastAPI(title="mahn", version=mahn.__version__,
                  description="Next-item recommendations of a trained mahn run. Every endpoint takes "
                              "`?run=compare` to ask the second run (`mahn serve RUN --compare RUN2`).")
    app.add_middleware(BodyLimit, limit=max_body, larger={"/items/upload": max_upload})
    app.state.engines = engines
    app.state.access = access
    app.state.swapper = Swapper(engines, main_loader, workers)

    @app.exception_handler(DataError)
    async def data_error(request: Request, error: DataError) -> JSONResponse:
        status = 404 if isinstance(error, UnknownItemError) and request.method == "GET" else 400
        return JSONResponse({"detail": public_message(error)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, but safe for bodies that are not text (its own handler fails on them with a 500)."""
        return JSONResponse({"detail": jsonable_encoder([_printable(e) for e in error.errors()])}, status_code=422)

    guarded = errors(401, 403) if access.token is not None else {}
    reads = [Depends(may_read)] if access.protect == "all" else []
    writes = [Depends(may_write)] if access.token is not None or access.read_only else []
    for router in OPEN:
        app.include_router(router)
    for router in READS:
        app.include_router(router, dependencies=reads, responses=guarded if reads else {})
    for router in WRITES:
        app.include_router(router, dependencies=writes, responses={**guarded, **(errors(403) if writes else {})})
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def app_from_env() -> FastAPI:
    """The application of a `mahn serve --workers N` worker: its settings come in environment variables."""
    map_large_allocations()
    compare, images_root = os.environ.get(ENV["compare"]), os.environ.get(ENV["images_root"])
    access = Access(os.environ.get(TOKEN_ENV) or None, os.environ.get(ENV["protect"], "writes"),
                    os.environ.get(ENV["read_only"]) == "1")
    app = create_app(Path(os.environ[ENV["run"]]), device=os.environ.get(ENV["device"], "auto"),
                      compare=Path(compare) if compare else None,
                      images_root=Path(images_root) if images_root else None,
                      index=os.environ.get(ENV["index"], "auto"),
                      ef_search=int(os.environ.get(ENV["ef_search"], HNSWSettings.ef_search)),
                      probes=int(os.environ.get(ENV["probes"], IVFSettings.probes)), access=access,
                      workers=int(os.environ.get(ENV["workers"], "1")))
    freeze_loaded()
    return app
