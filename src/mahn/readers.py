"""Readers: turn a source in some real-world format into rows of (user, item, timestamp) plus an items table.

Every reader returns a `Source`. Interactions come as an iterator of Polars DataFrames (chunks, in
file order) with columns `user` (str), `item` (str), `timestamp` (Int64, null when the format only
gives order). The pipeline in `mahn.prepare` numbers rows in arrival order, so ties in time keep
file order. `items` has `item` (str key) plus optional `title`, `text`, `image` (str) and any
extra columns worth keeping.

Errors in the input raise `mahn.io.DataError` naming the file and line.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import polars as pl

from mahn.io import DataError

CHUNK_ROWS = 1_000_000
INTERACTION_SCHEMA = {"user": pl.String, "item": pl.String, "timestamp": pl.Int64}
ITEM_COLUMNS = ("item", "title", "text", "image")


@dataclass
class Source:
    interactions: Iterator[pl.DataFrame]
    items: pl.DataFrame | None = None
    files: list[Path] = field(default_factory=list)  # every file read, for the manifest's hashes
    has_time: bool = True  # False: timestamps are positions in the source, not times


def open_text(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, line) from a text file, .gz or plain; decode and gzip errors name the file."""
    if not path.exists():
        raise DataError("file not found", path)
    if path.stat().st_size == 0:
        raise DataError("file is empty", path)
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            for lineno, line in enumerate(f, start=1):  # noqa: B007 - lineno is used after the loop
                yield lineno, line
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"cannot read compressed data after line {lineno} ({e})", path) from e
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason})", path, lineno + 1) from e


def chunked(rows: Iterator[tuple], columns: dict, size: int = CHUNK_ROWS) -> Iterator[pl.DataFrame]:
    """Group row tuples into DataFrames of at most `size` rows with the given schema."""
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield pl.DataFrame(batch, schema=columns, orient="row")
            batch = []
    if batch:
        yield pl.DataFrame(batch, schema=columns, orient="row")


def read_jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    for lineno, line in open_text(path):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise DataError(f"malformed JSON ({e})", path, lineno) from e
        if not isinstance(obj, dict):
            raise DataError("expected a JSON object", path, lineno)
        yield lineno, obj


def read_items_jsonl(path: Path) -> pl.DataFrame:
    """An items file of JSON objects with key `item` (the format of ../shared/data/*/items.jsonl)."""
    records = []
    for lineno, obj in read_jsonl_objects(path):
        key = obj.get("item")
        if key is None or str(key).strip() == "":
            raise DataError("missing field 'item'", path, lineno)
        record = {k: v for k, v in obj.items() if k != "item"}
        record["item"] = str(key)
        for column in ("title", "text", "image"):
            if column in record and record[column] is not None and not isinstance(record[column], str):
                record[column] = str(record[column])
        records.append(record)
    if not records:
        raise DataError("no items", path)
    return items_frame(records)


def items_frame(records: list[dict]) -> pl.DataFrame:
    """Build the items table: keys first, then title/text/image, then extras (nested values as JSON)."""
    keys: list[str] = []
    for record in records:
        for k in record:
            if k not in keys:
                keys.append(k)
    columns = {}
    for k in keys:
        values = [r.get(k) for r in records]
        if k in ITEM_COLUMNS:
            columns[k] = pl.Series(k, [None if v is None else str(v) for v in values], dtype=pl.String)
            continue
        try:  # keep uniform values (numbers, lists of ints) native; anything ragged becomes JSON text
            columns[k] = pl.Series(k, values, strict=True)
        except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
            columns[k] = pl.Series(k, [None if v is None else orjson.dumps(v).decode() for v in values])
    frame = pl.DataFrame(columns)
    order = [c for c in ITEM_COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in ITEM_COLUMNS]
    return frame.select(order).unique(subset="item", keep="first", maintain_order=True)


def read_sequences(path: Path, items: Path | None = None) -> Source:
    """`user item item ...` per line, items in time order (SASRec, S3-Rec, P5 releases)."""

    def rows() -> Iterator[tuple]:
        users: set[str] = set()
        for lineno, line in open_text(path):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise DataError("expected 'user item [item ...]'", path, lineno)
            user = fields[0]
            if user in users:
                raise DataError(f"user {user!r} appears on more than one line", path, lineno)
            users.add(user)
            for position, item in enumerate(fields[1:]):
                yield user, item, position
        if not users:
            raise DataError("no interactions", path)

    files = [path] + ([items] if items else [])
    item_table = read_items_jsonl(items) if items else None
    return Source(chunked(rows(), INTERACTION_SCHEMA), item_table, files, has_time=False)


READERS: dict[str, Callable[..., Source]] = {
    "sequences": read_sequences,
}
