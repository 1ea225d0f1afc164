"""`mahn serve`: a trained run's recommendations over HTTP (FastAPI).

`create_app(RUN)` loads the model once (and a second run with `compare=`, chosen per request with the
query parameter `?run=compare`). The short endpoints (recommend, lookups, health) are coroutines that run in
the event loop: a hop to the thread pool costs more than their ~1 ms of model time, and one process runs one
model call at a time anyway. Adds (seconds of feature extraction), images and the users' first read are
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

import mimetypes
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import torch
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

import mahn
from mahn import catalog
from mahn.api import Recommender, UnknownItemError, load
from mahn.errors import DataError
from mahn.index import HNSWSettings
from mahn.io import read_json
from mahn.paths import inside, is_url
from mahn.serve.limits import MAX_BODY, MAX_UPLOAD, BodyLimit
from mahn.serve.schemas import (
    MAX_SEARCH,
    AddItemsRequest,
    AddItemsResponse,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    Health,
    ItemOut,
    ModelInfo,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    RunName,
    SearchResponse,
    UserHistory,
    UsersResponse,
    Versions,
)
from mahn.serve.uploads import store_upload
from mahn.serve.users import UserIndex

STATIC = Path(__file__).resolve().parent / "static"  # the page: index.html, page.js, page.css

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")
# how `mahn serve --workers N` hands settings to each worker
ENV = {"run": "MAHN_SERVE_RUN", "device": "MAHN_SERVE_DEVICE", "compare": "MAHN_SERVE_COMPARE",
       "images_root": "MAHN_SERVE_IMAGES_ROOT", "index": "MAHN_SERVE_INDEX", "ef_search": "MAHN_SERVE_EF_SEARCH"}


def _errors(*codes: int) -> dict:
    text = {400: "Bad input: unknown item keys, empty history, k above the number of items, ...",
            404: "No such item, or no image to serve.", 413: "The request body is over the size limit."}
    return {code: {"model": ErrorResponse, "description": text[code]} for code in codes}


def public_message(error: DataError) -> str:
    """The error's message without a server-side file path in front (field names such as 'k' stay)."""
    message = str(error)
    if error.where and os.path.isabs(error.where):
        message = message.removeprefix(f"{error.where}:{error.line}: " if error.line is not None
                                       else f"{error.where}: ")
    return message


def default_root(recommender: Recommender) -> Path | None:
    """The folder images are served from by default: the deepest folder holding every local image of the
    dataset (None when the dataset has none, or when they share only the filesystem root)."""
    folders = {os.path.dirname(os.path.realpath(p)) for p in recommender.images[: recommender.n_trained]
               if p and not is_url(p)}
    if not folders:
        return None
    common = os.path.commonpath(sorted(folders))
    return Path(common) if os.path.dirname(common) != common else None


@dataclass
class Engine:
    """One loaded run and what serving it needs."""

    name: str
    run: Path
    recommender: Recommender
    root: Path | None  # images are served from inside this folder only; new items' image paths are relative to it
    add_lock: threading.Lock
    _users: UserIndex | None = None
    _users_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def users(self) -> UserIndex:
        """The dataset's users, read on first use (a server that is never asked about users never reads them)."""
        with self._users_lock:
            if self._users is None:
                self._users = UserIndex(self.recommender)
            return self._users

    @property
    def uploads(self) -> Path:
        """Where images sent with POST /items/upload are kept: RUN/uploads/ (not inside RUN/added/, which every
        add replaces whole)."""
        return Path(os.path.realpath(self.run)) / "uploads"

    def servable(self, path: str) -> bool:
        """Whether a local image path may be served: an image file type, really (links resolved) inside the root
        or the run's uploads folder."""
        return Path(os.path.realpath(path)).suffix.lower() in IMAGE_SUFFIXES and any(
            folder is not None and inside(path, folder) for folder in (self.root, self.uploads))

    def image_url(self, key: str, image: str | None) -> str | None:
        if not image:
            return None
        if is_url(image):
            return image
        if not self.servable(image):
            return None
        return f"/images/{quote(key, safe='')}" + ("?run=compare" if self.name == "compare" else "")

    def require_content(self) -> None:
        """A 400 unless the run's model places new items by their content."""
        try:
            self.recommender.model.require_content()
        except DataError as error:
            raise HTTPException(400, f"the run's model: {error}") from error

    def item_out(self, item) -> ItemOut:
        return ItemOut(key=item.key, title=item.title, image_url=self.image_url(item.key, item.image), added=item.added)

    def response(self, recommendations) -> RecommendResponse:
        return RecommendResponse(run=self.name, items=[
            RecommendedItem(key=r.key, title=r.title, score=r.score, image_url=self.image_url(r.key, r.image))
            for r in recommendations])


def load_engine(name: str, run: Path, device: str, images_root: Path | None, index: str = "exact",
                ef_search: int = HNSWSettings.ef_search) -> Engine:
    recommender = load(run, device=device, index=index, hnsw=HNSWSettings(ef_search=ef_search))
    if images_root is not None and not Path(images_root).is_dir():
        raise DataError("images folder not found", images_root)
    root = Path(os.path.realpath(images_root)) if images_root is not None else default_root(recommender)
    recommender.warm()  # the item table (and index) computed now, not by the first request
    return Engine(name, Path(run), recommender, root, threading.Lock())


def _printable(value):
    """A validation error's parts with bytes (a body that is not UTF-8) shown as text, not failing to encode."""
    if isinstance(value, bytes):
        return value[:200].decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def _metrics(path: Path, key: str | None = None) -> dict | None:
    if not path.exists():
        return None
    record = read_json(path)
    record = record.get(key) if key else record
    return {k: v for k, v in record.items() if k != "groups"} if isinstance(record, dict) else None


def create_app(run: Path, *, device: str = "auto", compare: Path | None = None, images_root: Path | None = None,
               max_body: int = MAX_BODY, max_upload: int = MAX_UPLOAD, index: str = "exact",
               ef_search: int = HNSWSettings.ef_search) -> FastAPI:
    """The HTTP application of a trained run (and, with `compare`, a second one beside it).

    `images_root`: the only folder item images are served from, and the folder that the image paths of
    new items (POST /items) are relative to; default: the folder holding the dataset's images.
    `index`: exact, or hnsw (approximate top-k over the trained items, for very large catalogues), searched
    with `ef_search` candidates (more: better recall, slower).
    """
    engines = {"main": load_engine("main", Path(run), device, images_root, index, ef_search)}
    if compare is not None:
        engines["compare"] = load_engine("compare", Path(compare), device, images_root, index, ef_search)

    app = FastAPI(title="mahn", version=mahn.__version__,
                  description="Next-item recommendations of a trained mahn run. Every endpoint takes "
                              "`?run=compare` to ask the second run (`mahn serve RUN --compare RUN2`).")
    app.add_middleware(BodyLimit, limit=max_body, larger={"/items/upload": max_upload})
    app.state.engines = engines

    @app.exception_handler(DataError)
    async def data_error(request: Request, error: DataError) -> JSONResponse:
        status = 404 if isinstance(error, UnknownItemError) and request.method == "GET" else 400
        return JSONResponse({"detail": public_message(error)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, but safe for bodies that are not text (its own handler fails on them with a 500)."""
        return JSONResponse({"detail": jsonable_encoder([_printable(e) for e in error.errors()])}, status_code=422)

    # async: a dependency or endpoint that is a plain function costs a hop to the thread pool per request
    async def engine(run: RunName = Query("main", description="main, or compare: the run given with --compare")
                     ) -> Engine:
        if run not in engines:
            raise HTTPException(400, "no second run is loaded: start the server with --compare RUN2")
        engines[run].recommender.refresh_if_changed()  # items added by `mahn add-items` or another worker
        return engines[run]

    @app.post("/recommend", response_model=RecommendResponse, responses=_errors(400, 413))
    async def recommend(body: RecommendRequest, served: Engine = Depends(engine)) -> RecommendResponse:
        """The top-k items after a history of item keys."""
        recs = served.recommender.recommend(body.history, body.k, body.exclude_history, body.candidates)
        return served.response(recs)

    @app.post("/recommend/batch", response_model=BatchResponse, responses=_errors(400, 413))
    async def recommend_batch(body: BatchRequest, served: Engine = Depends(engine)) -> BatchResponse:
        """Several recommendation requests in one model call (at most 256)."""
        requests = body.requests
        results = served.recommender.recommend_batch(
            [r.history for r in requests], [r.k for r in requests], [r.exclude_history for r in requests],
            [r.candidates for r in requests])
        return BatchResponse(run=served.name, results=[served.response(r) for r in results])

    @app.get("/items", response_model=SearchResponse, responses=_errors(400))
    async def search(query: str = Query("", max_length=1000, description="Part of a title (any case); empty: all."),
                     limit: int = Query(20, ge=1, le=MAX_SEARCH), offset: int = Query(0, ge=0),
                     served: Engine = Depends(engine)) -> SearchResponse:
        """Items whose title contains the query, for a page that lets a user pick a history."""
        found = served.recommender.search(query, limit, offset)
        return SearchResponse(query=query, offset=offset, items=[served.item_out(i) for i in found])

    @app.get("/items/{key:path}", response_model=ItemOut, responses=_errors(404))
    async def item(key: str, served: Engine = Depends(engine)) -> ItemOut:
        """One item: title, image URL, whether it was added after training."""
        return served.item_out(served.recommender.item(key))

    @app.post("/items", response_model=AddItemsResponse, responses=_errors(400, 413))
    def add_items(body: AddItemsRequest, served: Engine = Depends(engine)) -> AddItemsResponse:
        """Add items after training (key, title, text, image, ...): the model places them by their content
        features, computed by the dataset's own encoders. Nothing is added when any item is bad."""
        recommender = served.recommender
        served.require_content()
        records = [r.model_dump(exclude_none=True) for r in body.items]
        with served.add_lock:
            report = catalog.add_item_records(served.run, records, served.root,
                                              loaded=(recommender.model, recommender.dataset))
            recommender.refresh()
        return AddItemsResponse(added=[r["key"] for r in records], items=len(recommender),
                                catalog={k: v for k, v in report.items() if k != "run"})

    @app.post("/items/upload", response_model=AddItemsResponse, responses=_errors(400, 413))
    def upload_item(key: str = Form(min_length=1, max_length=1000, description="The new item's key."),
                    image: UploadFile = File(description="The item's image file (JPEG, PNG, GIF, WebP or BMP)."),
                    title: str | None = Form(None, max_length=10_000),
                    text: str | None = Form(None, max_length=100_000, description="Description text."),
                    brand: str | None = Form(None, max_length=1000),
                    served: Engine = Depends(engine)) -> AddItemsResponse:
        """Add one item with its image file (multipart/form-data), as POST /items does for an image already on
        the server. The image is kept in the run (RUN/uploads/, named by its content); nothing is kept
        when the item is refused."""
        recommender = served.recommender
        served.require_content()
        with served.add_lock:
            name, created = store_upload(image.file.read(), served.uploads)
            record = {"key": key, "image": name, **{f: v for f, v in (("title", title), ("text", text),
                                                                       ("brand", brand)) if v is not None}}
            try:
                report = catalog.add_item_records(served.run, [record], served.uploads,
                                                  loaded=(recommender.model, recommender.dataset))
            except DataError:
                if created:
                    (served.uploads / name).unlink(missing_ok=True)
                raise
            recommender.refresh()
        return AddItemsResponse(added=[key], items=len(recommender),
                                catalog={k: v for k, v in report.items() if k != "run"})

    @app.get("/images/{key:path}", response_class=FileResponse, responses={
        200: {"content": {"image/*": {}}, "description": "The image file."}, **_errors(404)})
    def image(key: str, served: Engine = Depends(engine)) -> FileResponse:
        """The item's image, when it is a local file inside the image root."""
        found = served.recommender.item(key)
        if not found.image:
            raise HTTPException(404, f"item {key} has no image")
        if is_url(found.image):
            raise HTTPException(404, f"item {key}'s image is not on this server: {found.image}")
        path = os.path.realpath(found.image)
        if not served.servable(path) or not os.path.isfile(path):
            raise HTTPException(404, f"item {key}'s image is not served (not an image file inside the image root)")
        return FileResponse(path, media_type=mimetypes.guess_type(path)[0] or "application/octet-stream")

    # the users endpoints serve the page's "start from a user"
    @app.get("/users", response_model=UsersResponse, responses=_errors(400))
    def users(query: str = Query("", max_length=1000, description="Part of a user key (any case); empty: all."),
              limit: int = Query(20, ge=1, le=MAX_SEARCH), offset: int = Query(0, ge=0),
              served: Engine = Depends(engine)) -> UsersResponse:
        """Users of the run's dataset whose key contains the query, with their training history's length."""
        return UsersResponse(query=query, offset=offset, users=served.users.search(query, limit, offset))

    @app.get("/users/{key:path}/history", response_model=UserHistory, responses=_errors(404))
    def user_history(key: str, served: Engine = Depends(engine)) -> UserHistory:
        """A user's training history (oldest first) and the items held out of training (validation, test)."""
        train, held_out = served.users.history(key)
        recommender = served.recommender
        keys, titles, images = recommender.keys, recommender.titles, recommender.images  # the dataset's come first

        def out(ids: list[int]) -> list[ItemOut]:
            return [ItemOut(key=keys[i], title=titles[i], image_url=served.image_url(keys[i], images[i]), added=False)
                    for i in ids]

        return UserHistory(key=key, history=out(train), held_out=out(held_out))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        """The page: search items, build a history, see the top-k of each run."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Whether the server answers, and how many items the main run serves."""
        recommender = engines["main"].recommender
        recommender.refresh_if_changed()
        return Health(status="ok", items=len(recommender))

    @app.get("/model", response_model=ModelInfo, responses=_errors(400))
    def model(served: Engine = Depends(engine)) -> ModelInfo:
        """The model's name, settings, dataset, metrics and versions."""
        recommender = served.recommender
        return ModelInfo(
            run=served.name, name=recommender.record["model"], path=str(served.run), settings=recommender.record,
            dataset=str(recommender.dataset.root), device=str(recommender.model.device), items=len(recommender),
            added_items=len(recommender) - recommender.n_trained, accepts_new_items=recommender.model.reads_content,
            added_note=recommender.added_note, valid=_metrics(served.run / "summary.json", "valid"),
            test=_metrics(served.run / "test.json"), versions=Versions(mahn=mahn.__version__, torch=torch.__version__),
            compare="compare" in engines)

    return app


def app_from_env() -> FastAPI:
    """The application of a `mahn serve --workers N` worker: its settings come in environment variables."""
    compare, images_root = os.environ.get(ENV["compare"]), os.environ.get(ENV["images_root"])
    return create_app(Path(os.environ[ENV["run"]]), device=os.environ.get(ENV["device"], "auto"),
                      compare=Path(compare) if compare else None,
                      images_root=Path(images_root) if images_root else None,
                      index=os.environ.get(ENV["index"], "exact"),
                      ef_search=int(os.environ.get(ENV["ef_search"], HNSWSettings.ef_search)))
