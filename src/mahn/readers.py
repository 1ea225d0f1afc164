"""Readers: turn a source in some real-world format into rows of (user, item, timestamp) plus an items table.

Every reader has the call shape `read_X(path, items=None, options=None) -> Source` and is registered in
`READERS` under its format name. Interactions come as an iterator of Polars DataFrames (chunks, in
file order) with columns `user` (str), `item` (str), `timestamp` (Int64, null when the format only
gives order). The pipeline in `mahn.prepare` numbers rows in arrival order, so ties in time keep
file order. `items` has `item` (str key) plus optional `title`, `text`, `image` (str) and any
extra columns worth keeping. Blank title/text/image values are null, so `--require` treats them as missing.

Images: URLs pass through; a local path is made absolute (relative paths resolve against
`ReaderOptions.image_root`, default the items file's folder) and becomes null when the file does not
exist, counted in `Source.warnings`.

Errors in the input raise `mahn.errors.DataError` naming the file and line (or field). Readers check
that their files exist when called; line errors surface while the interactions are consumed.
"""

from __future__ import annotations

import ast
import gzip
import math
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl

from mahn.errors import DataError

CHUNK_ROWS = 1_000_000
INTERACTION_SCHEMA = {"user": pl.String, "item": pl.String, "timestamp": pl.Int64}
ITEM_COLUMNS = ("item", "title", "text", "image")
INT64_RANGE = (-(2**63), 2**63 - 1)


@dataclass
class ReaderOptions:
    """How to read a user's own files; the flags of `mahn prepare` map 1:1 onto these."""

    user_col: str = "user"
    item_col: str = "item"
    time_col: str | None = None  # None: file order is the order
    time_format: str | None = None  # strptime format for string times; None = ISO date/datetime or integer seconds
    item_key_col: str | None = None  # key column in the items table; defaults to item_col
    title_col: str | None = None  # None: "title" if the items table has it
    text_cols: tuple[str, ...] = ()  # joined with ". "; empty: "text" if the items table has it
    image_col: str | None = None  # None: "image" if the items table has it
    image_pattern: str | None = None  # e.g. "images/{key:.3}/{key}.jpg" (str.format with key=item key)
    image_root: Path | None = None  # relative image paths resolve here; default: the items file's folder


@dataclass
class Source:
    interactions: Iterator[pl.DataFrame]
    items: pl.DataFrame | None = None
    files: list[Path] = field(default_factory=list)  # every file read, for the manifest's hashes
    has_time: bool = True  # False: timestamps are positions in the source (or null), not times
    warnings: list[str] = field(default_factory=list)  # may grow while `interactions` is consumed


# --- plain text and JSON lines ---


def require_file(path: Path) -> None:
    if not path.exists():
        raise DataError("file not found", path)
    if not path.is_file():
        raise DataError("not a file", path)
    if path.stat().st_size == 0:
        raise DataError("file is empty", path)


def open_text(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, line) from a text file, .gz or plain; decode and gzip errors name the file."""
    require_file(path)
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            for lineno, line in enumerate(f, start=1):  # noqa: B007 - lineno is used after the loop
                yield lineno, line
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"cannot read the file after line {lineno} ({e})", path) from e
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


def read_jsonl_objects(path: Path, loose: bool = False) -> Iterator[tuple[int, dict]]:
    """JSON objects, one a line. `loose` also accepts Python dict literals (McAuley's 2014 metadata)."""
    for lineno, line in open_text(path):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            if not loose:
                raise DataError(f"malformed JSON ({e})", path, lineno) from e
            obj = python_literal(line, path, lineno)
        if not isinstance(obj, dict):
            raise DataError("expected a JSON object", path, lineno)
        yield lineno, obj


def python_literal(line: str, path: Path, lineno: int) -> object:
    """Parse a Python literal with ast.literal_eval (never eval): strings, numbers, lists, dicts only."""
    try:
        return ast.literal_eval(line.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise DataError(f"malformed record: neither JSON nor a Python literal ({type(e).__name__})",
                        path, lineno) from e


def required_key(obj: dict, name: str, path: Path, lineno: int) -> str:
    """A key field (user or item id) as a non-blank string."""
    value = obj.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) and value is not None:
        raise DataError(f"field '{name}' must be a string, got {type(value).__name__}", path, lineno)
    if value is None or not value.strip():
        raise DataError(f"missing field '{name}'", path, lineno)
    return value


def as_text(value: object) -> str | None:
    """Title/text/brand values: strings as is, lists of strings joined by a space, blanks as None."""
    if isinstance(value, list):
        value = " ".join(part for part in map(as_text, value) if part)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


def string_list(value: object) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [text for text in map(as_text, value) if text is not None]


def join_text(parts: tuple) -> str | None:
    """Join several text fields with '. ', without doubling a sentence's own full stop."""
    joined = ""
    for part in parts:
        part = as_text(part)
        if part is None:
            continue
        if joined:
            joined += " " if joined[-1] in ".!?" else ". "
        joined += part
    return joined or None


# --- items tables ---


def items_frame(records: list[dict]) -> pl.DataFrame:
    """Build the items table: keys first, then title/text/image, then extras (nested values as JSON).

    Blank title/text/image become null; extra columns with no value at all are left out.
    """
    keys: list[str] = []
    for record in records:
        for k in record:
            if k not in keys:
                keys.append(k)
    columns = {}
    for k in keys:
        values = [r.get(k) for r in records]
        if k in ITEM_COLUMNS:
            texts = [None if v is None else str(v) for v in values]
            columns[k] = pl.Series(k, [t if t is None or k == "item" or t.strip() else None for t in texts],
                                   dtype=pl.String)
            continue
        if all(v is None for v in values):
            continue
        try:  # keep uniform values (numbers, lists of ints) native; anything ragged becomes JSON text
            columns[k] = pl.Series(k, values, strict=True)
        except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
            columns[k] = pl.Series(k, [None if v is None else orjson.dumps(v, default=str).decode()
                                       for v in values])
    frame = pl.DataFrame(columns)
    order = [c for c in ITEM_COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in ITEM_COLUMNS]
    return frame.select(order).unique(subset="item", keep="first", maintain_order=True)


def read_items_jsonl(path: Path) -> pl.DataFrame:
    """An items file of JSON objects with key `item` (the format of ../shared/data/*/items.jsonl).

    Without a `text` key, `description` (Amazon metadata) is the text.
    """
    records = []
    for lineno, obj in read_jsonl_objects(path):
        record = {k: v for k, v in obj.items() if k != "item"}
        record["item"] = required_key(obj, "item", path, lineno)
        if record.get("text") is None and "description" in record:
            record["text"] = record.pop("description")
        for column in ("title", "text", "image"):
            if column in record:
                record[column] = as_text(record[column])
        records.append(record)
    if not records:
        raise DataError("no items", path)
    return items_frame(records)


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def finish_items(table: pl.DataFrame | None, items_path: Path | None, options: ReaderOptions,
                 warnings: list[str]) -> pl.DataFrame | None:
    """Apply the image options to an items table: fill `image` from the pattern, then resolve paths.

    URLs pass through; local paths become absolute; a path to a missing file becomes null (counted in
    `warnings`), so `--require image` drops the item.
    """
    if table is None:
        return None
    if options.image_pattern:
        table = table.with_columns(image=pl.Series(image_paths(table["item"].to_list(), options.image_pattern)))
    if "image" not in table.columns:
        return table
    root = options.image_root if options.image_root is not None else (
        items_path.parent if items_path is not None else Path.cwd())
    resolved, missing, first_missing = [], 0, None
    for value in table["image"].to_list():
        if value is None or not value.strip() or is_url(value):
            resolved.append(value if value and value.strip() else None)
            continue
        local = os.path.abspath(os.path.join(root, os.path.expanduser(value)))
        if os.path.isfile(local):
            resolved.append(local)
        else:
            resolved.append(None)
            missing += 1
            first_missing = first_missing or local
    if missing:
        warnings.append(f"{missing} of {table.height} items name an image file that does not exist "
                        f"(first: {first_missing}); their image is left empty")
    columns = table.columns
    return table.with_columns(image=pl.Series(resolved, dtype=pl.String)).select(
        [c for c in ITEM_COLUMNS if c in columns] + [c for c in columns if c not in ITEM_COLUMNS])


def image_paths(keys: list[str], pattern: str) -> list[str]:
    try:
        return [pattern.format(key=key) for key in keys]
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise DataError(f"bad image pattern {pattern!r} ({type(e).__name__}: {e}); "
                        "use {key} for the item key, e.g. 'images/{key:.3}/{key}.jpg'", "--image-pattern") from e


# --- sequences ---


def read_sequences(path: Path, items: Path | None = None, options: ReaderOptions | None = None) -> Source:
    """`user item item ...` per line, items in time order (SASRec, S3-Rec, P5 releases).

    Of the options, only the image ones apply (to an `image` field in items.jsonl).
    """
    options = options or ReaderOptions()
    require_file(path)

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
    warnings: list[str] = []
    item_table = finish_items(read_items_jsonl(items) if items else None, items, options, warnings)
    return Source(chunked(rows(), INTERACTION_SCHEMA), item_table, files, has_time=False, warnings=warnings)


# --- Amazon review datasets (McAuley 2014 and Ni/Li/McAuley 2018) ---


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
        "title": as_text(obj.get("title")),
        "text": as_text(obj.get("description")),
        "image": as_text(obj.get("imUrl")),
        "brand": as_text(obj.get("brand")),
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
        "title": as_text(obj.get("title")),
        "text": as_text(obj.get("description")),
        "image": first_url(obj),
        "brand": as_text(obj.get("brand")),
        "category": string_list(obj.get("category")),
        "price": as_text(obj.get("price")),  # '$12.99', a range or blank in 2018: kept as written
        "feature": string_list(obj.get("feature")),
    }


def amazon_items(path: Path, parse: Callable[[dict, Path, int], dict]) -> pl.DataFrame:
    records = [parse(obj, path, lineno) for lineno, obj in read_jsonl_objects(path, loose=True)]
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


# --- RecBole atomic files ---

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def recbole_header(path: Path) -> list[tuple[str, str]]:
    """[(name, type)] from the typed header `user_id:token<TAB>item_id:token<TAB>...`."""
    line = next(iter(open_text(path)))[1]
    fields = []
    for column in line.rstrip("\r\n").split("\t"):
        name, _, kind = column.partition(":")
        if not name or kind not in RECBOLE_TYPES:
            raise DataError(f"header field {column!r:.60} is not 'name:type' with type one of "
                            f"{', '.join(RECBOLE_TYPES)}", path, 1)
        fields.append((name, kind))
    return fields


def recbole_lines(path: Path, width: int) -> Iterator[tuple[int, list[str]]]:
    for lineno, line in open_text(path):
        if lineno == 1 or not line.strip():
            continue
        values = line.rstrip("\r\n").split("\t")
        if len(values) != width:
            raise DataError(f"expected {width} tab-separated fields, found {len(values)}", path, lineno)
        yield lineno, values


def recbole_float(text: str, name: str, path: Path, lineno: int) -> float | None:
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError as e:
        raise DataError(f"field '{name}' value {text!r:.40} is not a number", path, lineno) from e


def field_index(fields: list[tuple[str, str]], name: str, path: Path) -> int:
    names = [n for n, _ in fields]
    if name not in names:
        raise DataError(f"no field '{name}' in the header (fields: {', '.join(names)})", path, 1)
    return names.index(name)


def recbole_items(path: Path, key: str) -> pl.DataFrame:
    """An `X.item` file: the key field, title from `title`/`movie_title`, the other fields as extras."""
    fields = recbole_header(path)
    field_index(fields, key, path)  # fails when the key is not in the header
    renamed = {key: "item", "movie_title": "title", "description": "text"}
    names = {n for n, _ in fields}
    records = []
    for lineno, values in recbole_lines(path, len(fields)):
        record: dict = {}
        for (name, kind), text in zip(fields, values, strict=True):
            if name == "title" and "movie_title" in names:
                name = "raw_title"  # both present: movie_title is the title
            column = renamed.get(name, name)
            if column in ITEM_COLUMNS or kind == "token":
                record[column] = text if text.strip() else None
            elif kind == "token_seq":
                record[column] = text.split()
            elif kind == "float":
                record[column] = recbole_float(text, name, path, lineno)
            else:
                record[column] = [recbole_float(x, name, path, lineno) for x in text.split()]
        if record["item"] is None:
            raise DataError(f"missing field '{key}'", path, lineno)
        records.append(record)
    if not records:
        raise DataError("no items", path)
    return items_frame(records)


def read_recbole(path: Path, items: Path | None = None, options: ReaderOptions | None = None) -> Source:
    """RecBole atomic files: `X.inter` (typed TSV header) and `X.item` (used when beside it and `items` is None).

    Fields: `user_id`, `item_id`, `timestamp` unless the options name others. `path` may be the
    dataset folder `X/` holding `X.inter`.
    """
    options = options or ReaderOptions()
    if path.is_dir():
        path = path / f"{path.name}.inter"
    require_file(path)
    user_name = options.user_col if options.user_col != "user" else "user_id"
    item_name = options.item_col if options.item_col != "item" else "item_id"
    fields = recbole_header(path)
    names = [n for n, _ in fields]
    if len(set(names)) < len(names):
        raise DataError(f"repeated field names in the header ({', '.join(names)})", path, 1)
    time_name = options.time_col or "timestamp"
    for name in (user_name, item_name) + ((time_name,) if options.time_col else ()):
        field_index(fields, name, path)  # fails when the field is not in the header
    has_time = time_name in names
    frame = pl.scan_csv(path, separator="\t", quote_char=None, has_header=False, skip_rows=1,
                        schema={name: pl.String for name in names})

    def chunks() -> Iterator[pl.DataFrame]:
        try:
            yield from table_chunks(frame, path, user_name, item_name, time_name if has_time else None, None)
        except DataError:
            for _ in recbole_lines(path, len(fields)):  # a line with the wrong field count gets named
                pass
            raise

    if items is None and path.with_suffix(".item").is_file():
        items = path.with_suffix(".item")
    warnings: list[str] = []
    table = finish_items(recbole_items(items, options.item_key_col or item_name) if items else None,
                         items, options, warnings)
    return Source(chunks(), table, [path] + ([items] if items else []), has_time=has_time, warnings=warnings)


# --- CSV / Parquet tables ---


def is_parquet(path: Path) -> bool:
    return path.name.lower().endswith((".parquet", ".pq"))


def polars_message(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__


def scan_table(path: Path) -> tuple[pl.LazyFrame, list[str]]:
    """A lazy scan of a CSV/TSV (optionally .gz; every column as a string) or Parquet file, and its columns."""
    require_file(path)
    try:
        if is_parquet(path):
            frame = pl.scan_parquet(path)
        else:
            tsv = path.name.lower().removesuffix(".gz").endswith(".tsv")
            frame = pl.scan_csv(path, separator="\t" if tsv else ",", infer_schema=False)
        columns = frame.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataError(f"cannot read the table ({polars_message(e)})", path) from e
    return frame, columns


def check_columns(wanted: list[str], columns: list[str], path: Path, what: str) -> None:
    for name in wanted:
        if name not in columns:
            raise DataError(f"no {what} column '{name}' (columns: {', '.join(columns)})", path)


def stream(frame: pl.LazyFrame, path: Path) -> Iterator[pl.DataFrame]:
    """Collect a lazy scan in ordered batches; Polars parse errors become DataError naming the file."""
    try:
        if not hasattr(frame, "collect_batches"):  # Polars < 1.31: one chunk
            yield frame.collect()
            return
        batches = iter(frame.collect_batches(chunk_size=CHUNK_ROWS, maintain_order=True))
        while True:
            try:
                yield next(batches)
            except StopIteration:
                return
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataError(f"cannot parse the table ({polars_message(e)})", path) from e


def first_bad_row(bad: pl.Series) -> int:
    return int(bad.arg_true()[0])


def epoch_seconds(values: pl.Series, time_format: str | None) -> pl.Series:
    """Times as Int64 epoch seconds; null where a value cannot be read. Naive datetimes are taken as UTC."""
    dtype = values.dtype
    if dtype == pl.Date:
        values = values.cast(pl.Datetime("us"))
        dtype = values.dtype
    if isinstance(dtype, pl.Datetime):
        return values.dt.epoch("s")
    if dtype.is_integer():
        return values.cast(pl.Int64, strict=False)
    if dtype.is_float():
        return values.floor().cast(pl.Int64, strict=False)
    text = values.cast(pl.String).str.strip_chars()
    if time_format:
        try:
            return text.str.strptime(pl.Datetime("us"), time_format, strict=False).dt.epoch("s")
        except pl.exceptions.PolarsError as e:
            raise DataError(f"bad time format {time_format!r} ({polars_message(e)})", "--time-format") from e
    number = text.cast(pl.Float64, strict=False)
    parsed = text.cast(pl.Int64, strict=False).fill_null(number.floor().cast(pl.Int64, strict=False))
    dated = text.filter(parsed.is_null() & text.is_not_null())
    if dated.len() == 0:
        return parsed
    try:
        seconds = pl.select(pl.when(parsed.is_null()).then(text).str.to_datetime(time_unit="us", strict=False)
                            .dt.epoch("s")).to_series()
    except pl.exceptions.PolarsError:  # Polars could not guess a date format from the first value
        return parsed
    return parsed.fill_null(seconds)


def table_chunks(frame: pl.LazyFrame, path: Path, user_col: str, item_col: str, time_col: str | None,
                 time_format: str | None) -> Iterator[pl.DataFrame]:
    """Stream (user, item, timestamp) chunks from a scanned table, checking keys and reading times."""
    selected = [pl.col(user_col).cast(pl.String).alias("user"), pl.col(item_col).cast(pl.String).alias("item")]
    if time_col:
        selected.append(pl.col(time_col).alias("timestamp"))
    seen = 0
    for batch in stream(frame.select(selected), path):
        for column, name in (("user", user_col), ("item", item_col)):
            blank = (batch[column].str.strip_chars() == "").fill_null(True)
            if blank.any():
                raise DataError(f"empty '{name}' in data row {seen + first_bad_row(blank) + 1}", path)
        if time_col:
            raw = batch["timestamp"]
            seconds = epoch_seconds(raw, time_format)
            bad = seconds.is_null()
            if bad.any():
                row = first_bad_row(bad)
                value = raw[row]
                problem = "empty" if value is None or str(value).strip() == "" else f"cannot read {value!r:.40} in"
                raise DataError(f"{problem} time column '{time_col}' in data row {seen + row + 1} "
                                "(expected integer seconds or an ISO date; see --time-format)", path)
            batch = batch.with_columns(timestamp=seconds)
        else:
            batch = batch.with_columns(timestamp=pl.lit(None, dtype=pl.Int64))
        seen += batch.height
        yield batch.select(pl.col("user"), pl.col("item"), pl.col("timestamp").cast(pl.Int64))
    if seen == 0:
        raise DataError("no interactions", path)


def read_csv(path: Path, items: Path | None = None, options: ReaderOptions | None = None) -> Source:
    """A user's own interactions table (CSV/TSV, optionally gzipped, or Parquet) and items table."""
    options = options or ReaderOptions()
    frame, columns = scan_table(path)
    keys = [options.user_col, options.item_col]
    check_columns(keys + ([options.time_col] if options.time_col else []), columns, path, "interactions")
    if options.time_col in keys:
        raise DataError(f"the time column '{options.time_col}' is also the user or item column", path)
    if options.user_col == options.item_col:
        raise DataError(f"the user and item columns are both '{options.user_col}'", path)
    warnings: list[str] = []
    table = finish_items(read_item_table(items, options) if items else None, items, options, warnings)
    chunks = table_chunks(frame, path, options.user_col, options.item_col, options.time_col, options.time_format)
    return Source(chunks, table, [path] + ([items] if items else []), options.time_col is not None, warnings)


def read_item_table(path: Path, options: ReaderOptions) -> pl.DataFrame:
    """The items table of the csv format: key, title, text (joined columns), image, other columns as extras."""
    frame, columns = scan_table(path)
    key = options.item_key_col or options.item_col
    title = options.title_col or ("title" if "title" in columns else None)
    texts = list(options.text_cols) or (["text"] if "text" in columns else [])
    image = options.image_col or ("image" if "image" in columns and not options.image_pattern else None)
    used = [key] + [c for c in (title, image) if c] + texts
    check_columns(used, columns, path, "items")
    try:
        table = frame.collect()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataError(f"cannot parse the table ({polars_message(e)})", path) from e
    if table.height == 0:
        raise DataError("no items", path)
    keys = table[key].cast(pl.String)
    blank = (keys.str.strip_chars() == "").fill_null(True)
    if blank.any():
        raise DataError(f"empty '{key}' in data row {first_bad_row(blank) + 1}", path)

    def text_column(name: str) -> pl.Series:
        values = pl.col(name).cast(pl.String).str.strip_chars()
        return table.select(pl.when(values != "").then(values)).to_series()

    out = {"item": keys}
    if title:
        out["title"] = text_column(title)
    if texts:
        parts = [table[c].cast(pl.String).to_list() for c in texts]
        out["text"] = pl.Series([join_text(row) for row in zip(*parts, strict=True)], dtype=pl.String)
    if image:
        out["image"] = text_column(image)
    extras = {c: table[c] for c in columns if c not in used and c not in ITEM_COLUMNS}
    result = pl.DataFrame(out).with_columns(**extras) if extras else pl.DataFrame(out)
    return result.unique(subset="item", keep="first", maintain_order=True)


READERS: dict[str, Callable[..., Source]] = {
    "sequences": read_sequences,
    "amazon2014": read_amazon2014,
    "amazon2018": read_amazon2018,
    "recbole": read_recbole,
    "csv": read_csv,
}
