"""One served run (an Engine) and the dependency that picks it for a request (`?run=main|compare`)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from fastapi import HTTPException, Query, Request

from mahn.api import Recommender, load
from mahn.errors import DataError
from mahn.index import HNSWSettings, IVFSettings
from mahn.io import sha256_file
from mahn.paths import inside, is_url
from mahn.serve.batcher import Batcher
from mahn.serve.schemas import ErrorResponse, ItemOut, RecommendedItem, RecommendResponse, RunName
from mahn.serve.users import UserIndex

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")


def errors(*codes: int) -> dict:
    text = {400: "Bad input: unknown item keys, empty history, k above the number of items, ...",
            401: "No token: this endpoint needs `Authorization: Bearer TOKEN`.",
            403: "A wrong token, or a write to a read-only server.",
            404: "No such item, or no image to serve.",
            409: "Refused: the swap would stop serving items added through the service, or needs a signal.",
            413: "The request body is over the size limit."}
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
    version: str = ""  # the first 12 hex digits of the sha256 of the run's weights and settings
    loaded_at: float = 0.0  # Unix time
    retired: bool = False  # swapped out: requests that hold it finish, adds go to its successor
    _users: UserIndex | None = None
    _users_lock: threading.Lock = field(default_factory=threading.Lock)
    batcher: Batcher = field(init=False)  # POST /recommend's requests, scored together when they wait together

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.recommender)

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


def load_engine(name: str, run: Path, device: str, images_root: Path | None, index: str = "auto",
                ef_search: int = HNSWSettings.ef_search, probes: int = IVFSettings.probes) -> Engine:
    recommender = load(run, device=device, index=index, hnsw=HNSWSettings(ef_search=ef_search),
                       ivf=IVFSettings(probes=probes))
    if images_root is not None and not Path(images_root).is_dir():
        raise DataError("images folder not found", images_root)
    root = Path(os.path.realpath(images_root)) if images_root is not None else default_root(recommender)
    recommender.warm()  # the item table (and index) computed now, not by the first request
    return Engine(name, Path(run), recommender, root, threading.Lock(), run_version(Path(run)), time.time())


def run_version(run: Path) -> str:
    """What identifies a run's model: its weights and its settings, hashed."""
    digest = hashlib.sha256()
    for name in ("config.json", "best.safetensors"):
        if (run / name).exists():
            digest.update(sha256_file(run / name).encode())
    return digest.hexdigest()[:12]



# async: a dependency or endpoint that is a plain function costs a hop to the thread pool per request
async def engine(request: Request,
                 run: RunName = Query("main", description="main, or compare: the run given with --compare")) -> Engine:
    engines = request.app.state.engines
    if run not in engines:
        raise HTTPException(400, "no second run is loaded: start the server with --compare RUN2")
    engines[run].recommender.refresh_if_changed()  # items added by `mahn add-items` or another worker
    return engines[run]
