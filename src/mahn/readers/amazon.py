"""Amazon review datasets: McAuley 2014 (`amazon2014`) and Ni/Li/McAuley 2018 (`amazon2018`).

Reviews are JSON lines; the 2014 metadata is Python dict literals, read with `ast.literal_eval` (never
eval) through `read_jsonl_objects(loose=True)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from mahn.errors import DataError
from mahn.readers.common import (
    INTERACTION_SCHEMA,
    ReaderOptions,
    Source,
    chunked,
    finish_items,
    image_value,
    items_frame,
    read_jsonl_objects,
    require_file,
    required_key,
    string_list,
)
from mahn.text import clean_text

INT64_RANGE = (-(2**63), 2**63 - 1)


def review_time(obj: dict, path: Path, lineno: int) -> int:
    """unixReviewTime (seconds); when absent, reviewTime ('05 21, 2014') read as a UTC date."""
    value = obj.get("unixReviewTime")
    if (isinstance(value, float) and value.is_integer()) or (
            isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
            raise DataError(f"unixReviewTime {value} is out of range", path, lineno)
        return value
    if value is not None:
        raise DataError(f"field 'unixReviewTime' must be integer seconds, got {value!r:.40}", path, lineno)
    written = obj.get("reviewTime")
    if isinstance(written, str):
        try:
            return int(datetime.strptime(written.strip(), "%m %d, %Y").replace(tzinfo=UTC).timestamp())
        except ValueError as e:
            raise DataError(f"field 'reviewTime' {written!r:.40} is not 'MM DD, YYYY'", path, lineno) from e
    raise DataError("missing field 'unixReviewTime'", path, lineno)


def amazon_reviews(path: Path) -> Iterator[pl.DataFrame]:
    def rows() -> Iterator[tuple]:
        count = 0
        for lineno, obj in read_jsonl_objects(path):
            user, item, time = obj.get("reviewerID"), obj.get("asin"), obj.get("unixReviewTime")
            # fast path for the usual record; anything else goes through the checks that explain the problem
            if not (type(user) is str and type(item) is str and type(time) is int and user.strip()
                    and item.strip() and INT64_RANGE[0] <= time <= INT64_RANGE[1]):
                user, item = required_key(obj, "reviewerID", path, lineno), required_key(obj, "asin", path, lineno)
                time = review_time(obj, path, lineno)
            yield user, item, time
            count += 1
        if count == 0:
            raise DataError("no interactions", path)

    return chunked(rows(), INTERACTION_SCHEMA)


def price_2014(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def category_lists(value: object) -> list[list[str]] | None:
    if not isinstance(value, list):
        return None
    return [string_list(path) or [] for path in value]


def item_2014(obj: dict, path: Path, lineno: int) -> dict:
    return {
        "item": required_key(obj, "asin", path, lineno),
        "title": clean_text(obj.get("title")),
        "text": clean_text(obj.get("description")),
        "image": image_value(obj.get("imUrl")),
        "brand": clean_text(obj.get("brand")),
        "categories": category_lists(obj.get("categories")),
        "price": price_2014(obj.get("price")),
    }


def first_url(obj: dict) -> str | None:
    """The first high-resolution image, else the first ordinary one."""
    for name in ("imageURLHighRes", "imageURL"):
        urls = string_list(obj.get(name)) or []
        if urls:
            return urls[0]
    return None


def item_2018(obj: dict, path: Path, lineno: int) -> dict:
    return {
        "item": required_key(obj, "asin", path, lineno),
        "title": clean_text(obj.get("title")),
        "text": clean_text(obj.get("description")),
        "image": first_url(obj),
        "brand": clean_text(obj.get("brand")),
        "category": string_list(obj.get("category")),
        "price": clean_text(obj.get("price")),  # '$12.99', a range or blank in 2018: kept as written
        "feature": string_list(obj.get("feature")),
    }


def amazon_items(path: Path, parse: Callable[[dict, Path, int], dict]) -> pl.DataFrame:
    records = []
    for lineno, obj in read_jsonl_objects(path, loose=True):
        try:
            records.append(parse(obj, path, lineno))
        except UnicodeDecodeError as e:  # a Python bytes literal (b'...') that is not UTF-8
            raise DataError(f"not UTF-8 text ({e.reason})", path, lineno) from e
    if not records:
        raise DataError("no items", path)
    return items_frame(records)


def read_amazon(path: Path, items: Path | None, options: ReaderOptions | None,
                parse_item: Callable[[dict, Path, int], dict]) -> Source:
    options = options or ReaderOptions()
    require_file(path)
    warnings: list[str] = []
    table = finish_items(amazon_items(items, parse_item) if items else None, items, options, warnings)
    return Source(amazon_reviews(path), table, [path] + ([items] if items else []), True, warnings)


def read_amazon2014(path: Path, items: Path | None = None, options: ReaderOptions | None = None) -> Source:
    """McAuley 2014 reviews (JSON lines, .json or .json.gz) + optional metadata (Python dict literals)."""
    return read_amazon(path, items, options, item_2014)


def read_amazon2018(path: Path, items: Path | None = None, options: ReaderOptions | None = None) -> Source:
    """Amazon 2018 reviews (JSON lines) + optional 2018 metadata (JSON lines)."""
    return read_amazon(path, items, options, item_2018)
