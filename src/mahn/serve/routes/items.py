"""The catalogue: search, one item, items added after training (JSON or an uploaded image), images."""

from __future__ import annotations

import mimetypes
import os

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse

from mahn import catalog
from mahn.errors import DataError
from mahn.paths import is_url
from mahn.serve.engine import Engine, engine, errors
from mahn.serve.schemas import MAX_SEARCH, AddItemsRequest, AddItemsResponse, ItemOut, SearchResponse
from mahn.serve.swap import writable
from mahn.serve.uploads import store_upload

router = APIRouter()
writes = APIRouter()  # the endpoints that change state: behind the token (mahn.serve.access)


@router.get("/items", response_model=SearchResponse, responses=errors(400))
async def search(query: str = Query("", max_length=1000, description="Part of a title (any case); empty: all."),
                 limit: int = Query(20, ge=1, le=MAX_SEARCH), offset: int = Query(0, ge=0),
                 served: Engine = Depends(engine)) -> SearchResponse:
    """Items whose title contains the query, for a page that lets a user pick a history."""
    found = served.recommender.search(query, limit, offset)
    return SearchResponse(query=query, offset=offset, items=[served.item_out(i) for i in found])

@router.get("/items/{key:path}", response_model=ItemOut, responses=errors(404))
async def item(key: str, served: Engine = Depends(engine)) -> ItemOut:
    """One item: title, image URL, whether it was added after training."""
    return served.item_out(served.recommender.item(key))

@writes.post("/items", response_model=AddItemsResponse, responses=errors(400, 413))
def add_items(body: AddItemsRequest, request: Request, served: Engine = Depends(engine)) -> AddItemsResponse:
    """Add items after training (key, title, text, image, ...): the model places them by their content
    features, computed by the dataset's own encoders. Nothing is added when any item is bad."""
    records = [r.model_dump(exclude_none=True) for r in body.items]
    with writable(request.app.state.engines, served.name) as served:
        served.require_content()
        recommender = served.recommender
        report = catalog.add_item_records(served.run, records, served.root,
                                          loaded=(recommender.model, recommender.dataset))
        recommender.refresh()
    return AddItemsResponse(added=[r["key"] for r in records], items=len(recommender),
                            catalog={k: v for k, v in report.items() if k != "run"})

@writes.post("/items/upload", response_model=AddItemsResponse, responses=errors(400, 413))
def upload_item(request: Request, key: str = Form(min_length=1, max_length=1000, description="The new item's key."),
                image: UploadFile = File(description="The item's image file (JPEG, PNG, GIF, WebP or BMP)."),
                title: str | None = Form(None, max_length=10_000),
                text: str | None = Form(None, max_length=100_000, description="Description text."),
                brand: str | None = Form(None, max_length=1000),
                served: Engine = Depends(engine)) -> AddItemsResponse:
    """Add one item with its image file (multipart/form-data), as POST /items does for an image already on
    the server. The image is kept in the run (RUN/uploads/, named by its content); nothing is kept
    when the item is refused."""
    with writable(request.app.state.engines, served.name) as served:
        served.require_content()
        recommender = served.recommender
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

@router.get("/images/{key:path}", response_class=FileResponse, responses={
    200: {"content": {"image/*": {}}, "description": "The image file."}, **errors(404)})
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

