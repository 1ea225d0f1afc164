"""The `recbole` format: RecBole atomic files, `X.inter` and `X.item`, TSV with a typed header."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from mahn.errors import DataError
from mahn.readers.common import (
    ITEM_COLUMNS,
    ReaderOptions,
    Source,
    check_line_lengths,
    finish_items,
    first_line,
    items_frame,
    open_text,
    require_file,
)
from mahn.readers.table import LONE_CR, names_shown, refuse_lone_cr_header, table_chunks
from mahn.text import clean_text

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def recbole_header(path: Path) -> list[tuple[str, str]]:
    """[(name, type)] from the typed header `user_id:token<TAB>item_id:token<TAB>...`."""
    refuse_lone_cr_header(path)
    line = first_line(path)
    fields = []
    for column in line.rstrip("\r\n").split("\t"):
        name, _, kind = column.partition(":")
        if not name or kind not in RECBOLE_TYPES:
            raise DataError(f"header field {column!r:.60} is not 'name:type' with type one of "
                            f"{', '.join(RECBOLE_TYPES)}", path, 1)
        fields.append((name, kind))
    return fields


def recbole_lines(path: Path, width: int) -> Iterator[tuple[int, list[str]]]:
    """The data lines as fields. A lone \\r ends a line only at the end of the file, as in Polars' reading."""
    lone = None
    for lineno, line in open_text(path):
        if lone is not None:
            raise DataError(f"the line {LONE_CR}", path, lone)
        if line.endswith("\r"):
            lone = lineno
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
        raise DataError(f"no field '{name}' in the header (fields: {names_shown(names)})", path, 1)
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
            if column in ("title", "text"):
                record[column] = clean_text(text)
            elif column in ITEM_COLUMNS or kind == "token":
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
    check_line_lengths(path)
    user_name = options.user_col if options.user_col != "user" else "user_id"
    item_name = options.item_col if options.item_col != "item" else "item_id"
    fields = recbole_header(path)
    names = [n for n, _ in fields]
    if len(set(names)) < len(names):
        raise DataError(f"repeated field names in the header ({names_shown(names)})", path, 1)
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
