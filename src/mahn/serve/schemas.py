"""Request and response bodies of `mahn serve` (pydantic v2): the OpenAPI schema is generated from these.

Requests are strict (JSON types must match: a key is a string, k an integer) and refuse unknown fields,
so a typo is a 422 naming the field rather than a silently ignored setting.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mahn.scoring import MAX_BOOST

MAX_K = 1000
MAX_HISTORY = 10_000
MAX_CANDIDATES = 100_000
MAX_BATCH = 256
MAX_NEW_ITEMS = 1000
MAX_SEARCH = 1000

def integral(value):
    """An integral float (5.0) as the int it is, for fields whose schema says integer: JSON Schema counts 5.0
    as an integer, so the API takes it. Anything else is left to the strict check (5.5, "5", true: 422)."""
    if isinstance(value, list):
        return [integral(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


Key = Annotated[str, Field(min_length=1, max_length=1000, description="An item key (items.parquet `key`).")]
RunName = Literal["main", "compare"]


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ErrorResponse(BaseModel):
    """Every error this API raises itself (bad input, unknown item, body too large): one message."""

    detail: str = Field(description="What was wrong, naming the field or the unknown keys.")


class RecommendRequest(Request):
    history: list[Key] = Field(min_length=1, max_length=MAX_HISTORY,
                               description="Item keys the user interacted with, oldest first.")
    k: int = Field(10, ge=1, le=MAX_K, description="How many items to return (at most the number of items).")
    exclude_history: bool = Field(True, description="Leave out every item of the history.")
    candidates: list[Key] | None = Field(None, max_length=MAX_CANDIDATES,
                                         description="Rank only these items (null: every item).")
    new_item_places: int = Field(0, ge=0, le=MAX_K, description=(
        "Up to this many of the k places go to the best new items (added after training) when the model's own "
        "top k lists fewer: they replace its last items. At most k."))
    new_item_boost: float = Field(0.0, ge=0, le=MAX_BOOST, allow_inf_nan=False, description=(
        "Added to every new item's score before ranking: to a model trained with the softmax, each new item's "
        "odds times e^boost. New items then enter the top k only where they come within the boost of it."))

    _k = field_validator("k", "new_item_places", mode="before")(integral)


class RecommendedItem(BaseModel):
    key: str
    title: str
    score: float = Field(description="The model's score (higher is better); comparable within one response.")
    image_url: str | None = Field(description="GET this for the item's image: /images/KEY for a local file, "
                                              "the item's own URL for a remote one; null when it has none.")


class RecommendResponse(BaseModel):
    run: RunName = Field(description="The run that answered (main, or compare: see ?run=).")
    items: list[RecommendedItem] = Field(description="Best first. Fewer than k when fewer items are left.")


class BatchRequest(Request):
    requests: list[RecommendRequest] = Field(min_length=1, max_length=MAX_BATCH)


class BatchResponse(BaseModel):
    run: RunName
    results: list[RecommendResponse] = Field(description="One per request, in order.")


class ItemOut(BaseModel):
    key: str
    title: str
    image_url: str | None
    added: bool = Field(description="Added to the run after training (ranked by its content features only).")


class SearchResponse(BaseModel):
    query: str
    offset: int
    items: list[ItemOut] = Field(description="Items whose title contains the query (case-insensitive), in id order.")


Codes = Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=4, max_length=4)]


class NewItem(Request):
    """A new item: the fields the dataset's feature encoders read (its text template, its image, its codes)."""

    key: Key
    title: str | None = Field(None, max_length=10_000)
    text: str | None = Field(None, max_length=100_000, description="Description text (the text features read it).")
    description: str | None = Field(None, max_length=100_000)
    brand: str | None = Field(None, max_length=1000)
    categories: list[str] | None = Field(None, max_length=100)
    image: str | None = Field(None, max_length=4096, description="The image file's path relative to the server's "
                                                                 "images folder (`mahn serve --images-root`).")
    image_codes: Codes | None = Field(None, description="For datasets whose image features are codes.")
    text_codes: Codes | None = Field(None, description="For datasets whose text features are codes.")

    _codes = field_validator("image_codes", "text_codes", mode="before")(integral)


class AddItemsRequest(Request):
    items: list[NewItem] = Field(min_length=1, max_length=MAX_NEW_ITEMS)


class AddItemsResponse(BaseModel):
    added: list[str] = Field(description="The keys added, in order.")
    items: int = Field(description="Items the run serves now (dataset + added).")
    catalog: dict[str, Any] = Field(description="What the catalog reported (features computed, files written).")


class Health(BaseModel):
    status: Literal["ok"]
    items: int


class Versions(BaseModel):
    mahn: str
    torch: str


class ModelInfo(BaseModel):
    run: RunName
    name: str = Field(description="The model (mahn, sasrec, ...).")
    path: str = Field(description="The run directory.")
    settings: dict[str, Any] = Field(description="The run's config.json: model settings, training settings, ...")
    dataset: str
    device: str
    items: int = Field(description="Items served: the dataset's and those added after training.")
    added_items: int
    accepts_new_items: bool = Field(description="Whether the model can place items known only by their content.")
    added_note: str | None = Field(description="Why added items are not served, when they are not.")
    valid: dict[str, Any] | None = Field(description="Validation metrics at the best epoch (summary.json).")
    test: dict[str, Any] | None = Field(description="Test metrics (test.json), when the run has them.")
    versions: Versions
    compare: bool = Field(description="Whether a second run is loaded (?run=compare).")
    version: str = Field(description="The run's version: the first 12 hex digits of a sha256 of its weights and "
                                     "settings (changes when a swap serves different weights).")
    loaded_at: float = Field(description="When this run was loaded (Unix time).")
    swaps: int = Field(description="Swaps this server process has made (POST /admin/reload or SIGHUP).")


class SwapRequest(Request):
    run: str | None = Field(None, min_length=1, max_length=4096,
                            description="The run directory to serve, as a path on the server; null: the served one "
                                        "again (its path read anew, so a link repointed to a new run is followed).")
    drop_added: bool = Field(False, description="Swap even when the new model cannot serve the items added "
                                                "through the service (they stay in the old run's folder).")


class SwapResponse(BaseModel):
    run: str = Field(description="The run directory now served.")
    version: str = Field(description="The new run's version (a hash of its weights and settings).")
    previous_version: str
    carried: int = Field(description="Items added to the old run through the service, now added to the new one.")
    skipped: list[str] = Field(description="Added items not carried because the new run already has their key.")
    seconds: float = Field(description="Time to load, check and swap.")


class UserOut(BaseModel):
    key: str = Field(description="The user's key (users.parquet `key`).")
    train_items: int = Field(description="Items in the user's training history (the validation and test items "
                                         "held out).")


class UsersResponse(BaseModel):
    query: str
    offset: int
    users: list[UserOut] = Field(description="Users whose key contains the query (case-insensitive), in id order.")


class UserHistory(BaseModel):
    key: str
    history: list[ItemOut] = Field(description="The user's training history, oldest first: every item before "
                                               "the held-out ones (what the model was trained on).")
    held_out: list[ItemOut] = Field(description="The items held out of training, in order: the validation target, "
                                                "then the test target (none for users too short to be evaluated).")
