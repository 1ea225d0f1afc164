"""The pieces every reader shares: options, the `Source` it returns, line-by-line text and JSON input,
the items table and its image paths."""

from __future__ import annotations

import ast
import gzip
import os
import re
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import polars as pl

from mahn.errors import DataError
from mahn.paths import inside, is_url
from mahn.text import clean_text

CHUNK_ROWS = 1_000_000
MAX_LINE = 16 << 20  # the longest line a reader takes: characters of text (bytes where Polars reads the file)
MAX_LITERAL = 1 << 20  # the longest line read as a Python literal (the 2014 metadata): see python_literal
SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: not a character, and not UTF-8
NOT_UTF8 = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, as errors="surrogateescape" keeps it
INTERACTION_SCHEMA = {"user": pl.String, "item": pl.String, "timestamp": pl.Int64}
ITEM_COLUMNS = ("item", "title", "text", "image")


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
    images_anywhere: bool = False  # allow image paths that lead out of the image root (absolute, '..', links)


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
    """Yield (line number, line) from a text file, .gz or plain, each line with its ending.

    Lines end at \\n, \\r\\n or a lone \\r. A line longer than MAX_LINE characters is refused when its first
    MAX_LINE + 1 characters are read, never held whole; decode and gzip errors name the file and line.
    """
    require_file(path)
    lineno = 0
    try:
        for lineno, line in numbered_lines(path, "strict"):  # noqa: B007 - lineno is used after the loop
            yield lineno, line
    except UnicodeDecodeError as e:
        raise undecodable_line(path, e) from e
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"cannot read the file after line {lineno} ({e})", path) from e


def first_line(path: Path) -> str:
    """The first line, with its ending; a file without one (an empty .gz) is refused as empty."""
    for _, line in open_text(path):
        return line
    raise DataError("file is empty", path)


def numbered_lines(path: Path, errors: str) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors=errors, newline="") as f:
        lineno = 0
        while line := f.readline(MAX_LINE + 1):
            lineno += 1
            if len(line) > MAX_LINE and line[-1] not in "\r\n":
                raise DataError(f"line longer than {MAX_LINE} characters", path, lineno)
            if lineno == 1 and line.startswith("\ufeff"):  # a byte-order mark (Windows editors) is not data
                line = line[1:]
            yield lineno, line


def undecodable_line(path: Path, error: UnicodeDecodeError) -> DataError:
    """The decoder works in blocks of several lines, so find the line holding the first byte that is not UTF-8:
    read again with each such byte kept as a lone surrogate (U+DC80..U+DCFF), which valid UTF-8 never decodes to."""
    try:
        for lineno, line in numbered_lines(path, "surrogateescape"):
            if NOT_UTF8.search(line):
                try:
                    line.encode("utf-8", "surrogateescape").decode("utf-8")
                except UnicodeDecodeError as e:
                    return DataError(f"not UTF-8 text ({e.reason} at byte {e.start + 1} of the line)", path, lineno)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError):
        pass
    return DataError(f"not UTF-8 text ({error.reason})", path)


def check_line_lengths(path: Path) -> None:
    """Refuse a line longer than MAX_LINE bytes, holding at most MAX_LINE bytes at a time: the check made before
    Polars, which reads a line whole, reads a CSV/TSV file."""
    opener = gzip.open if path.suffix == ".gz" else open
    lines, run = 0, 0  # lines ended so far; bytes of the unfinished line
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(MAX_LINE):  # a line inside one chunk is shorter than MAX_LINE: check the ends
                first = chunk.find(b"\n")
                if first < 0:
                    run += len(chunk)
                elif run + first > MAX_LINE:
                    run += first
                else:
                    lines += chunk.count(b"\n")
                    run = len(chunk) - chunk.rfind(b"\n") - 1
                if run > MAX_LINE:
                    raise DataError(f"line longer than {MAX_LINE} bytes", path, lines + 1)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"cannot read the file after line {lines} ({e})", path) from e


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
    """Parse a Python literal with ast.literal_eval (never eval): strings, numbers, lists, dicts only.

    Nesting too deep for the parser is a malformed record; so is a line over MAX_LITERAL characters, as the parser
    takes up to ~500 times a line's size in memory (a list of a million numbers, 2 MB, takes ~1 GB)."""
    if len(line) > MAX_LITERAL:
        raise DataError(f"malformed record: not JSON, and over {MAX_LITERAL} characters, too long to parse as a "
                        "Python literal", path, lineno)
    try:
        with warnings.catch_warnings():  # '\\e' and other unknown escapes: a warning per line (SyntaxWarning in 3.12)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", SyntaxWarning)
            value = ast.literal_eval(line.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise DataError(f"malformed record: neither JSON nor a Python literal ({type(e).__name__})",
                        path, lineno) from e
    if "\\u" not in line and "\\U" not in line:  # only these escapes make surrogates
        return value
    try:
        return joined_surrogates(value)
    except UnicodeDecodeError as e:
        raise DataError("malformed record: a \\u escape is half of a UTF-16 surrogate pair, not a character",
                        path, lineno) from e


def joined_surrogates(value: object) -> object:
    """Strings with UTF-16 surrogate pairs (Python 2 wrote '\\ud83d\\ude00' for an emoji) made characters; a lone
    half raises UnicodeDecodeError. Nesting is at most the parser's limit (~200)."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16") if SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {joined_surrogates(k): joined_surrogates(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(map(joined_surrogates, value))
    return value


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


def string_list(value: object) -> list[str] | None:
    """A list field (categories, features, image URLs) as its non-blank texts; None when not a list."""
    if not isinstance(value, list):
        return None
    return [text for text in map(clean_text, value) if text is not None]


def image_value(value: object) -> str | None:
    """An image path or URL as written, ends stripped: unlike titles, inner spaces are part of a file name."""
    if isinstance(value, str):
        return value.strip() or None
    return clean_text(value)


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
        for column in ("title", "text"):
            if column in record:
                record[column] = clean_text(record[column])
        if "image" in record:
            record["image"] = image_value(record["image"])
        records.append(record)
    if not records:
        raise DataError("no items", path)
    return items_frame(records)


def finish_items(table: pl.DataFrame | None, items_path: Path | None, options: ReaderOptions,
                 warnings: list[str]) -> pl.DataFrame | None:
    """Apply the image options to an items table: fill `image` from the pattern, then resolve paths.

    URLs pass through; local paths become absolute; a path to a missing file becomes null (counted in
    `warnings`), so `--require image` drops the item. A path read from a file (or given an image root) that
    leads out of the image root (absolute elsewhere, '..', a link) is an error naming the item, unless
    `images_anywhere`: an items file must not make mahn open files it was not pointed at.
    """
    if table is None:
        return None
    if options.image_pattern:
        table = table.with_columns(image=pl.Series(image_paths(table["item"].to_list(), options.image_pattern)))
    if "image" not in table.columns:
        return table
    root = options.image_root if options.image_root is not None else (
        items_path.parent if items_path is not None else Path.cwd())
    confined = not options.images_anywhere and (items_path is not None or options.image_root is not None)
    resolved, missing, first_missing = [], 0, None
    for key, value in zip(table["item"].to_list(), table["image"].to_list(), strict=True):
        if value is None or not value.strip() or is_url(value):
            resolved.append(value if value and value.strip() else None)
            continue
        if "\0" in value:
            raise DataError(f"item {key!r}: its image path contains a NUL character", items_path)
        local = os.path.abspath(os.path.join(root, os.path.expanduser(value)))
        if confined and not inside(local, root):
            raise DataError(f"item {key!r}: image {value[:200]!r} leads out of the image folder {root}; give paths "
                            "inside it, or pass --images-anywhere to allow others", items_path)
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
