"""The `csv` format: a user's own interactions table (CSV/TSV, optionally gzipped, or Parquet) and items table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from mahn.errors import DataError
from mahn.readers.common import (
    CHUNK_ROWS,
    ITEM_COLUMNS,
    ReaderOptions,
    Source,
    check_line_lengths,
    finish_items,
    first_line,
    open_text,
    require_file,
)
from mahn.text import clean_text, join_text


def is_parquet(path: Path) -> bool:
    return path.name.lower().endswith((".parquet", ".pq"))


POLARS_ERRORS = (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError)  # a panic is a BaseException


def polars_message(error: BaseException) -> str:
    return str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__


LONE_CR = "ends in a lone carriage return (\\r): tables take \\n or \\r\\n line endings"


def refuse_lone_cr_header(path: Path) -> None:
    """A header line that ends in a lone \r: Polars would read on past it, the next lines as more header."""
    if first_line(path).endswith("\r"):
        raise DataError(f"the header line {LONE_CR}", path, 1)


def table_error(error: BaseException, path: Path) -> DataError:
    """A Polars parse error as a DataError. For a text table, look for what Polars does not say: the line that is
    not UTF-8 or too long (open_text names it), or a line that ends in a lone \\r (Polars reads on into the next
    line, as more fields of this one)."""
    message = f"cannot parse the table ({polars_message(error)})"
    if not is_parquet(path):
        lone = None
        for lineno, line in open_text(path):
            if lone is not None:  # only a lone \r before another line: one that ends the file is harmless
                return DataError(f"{message}; line {lone} {LONE_CR}", path, lone)
            if line.endswith("\r"):
                lone = lineno
    return DataError(message, path)


def scan_table(path: Path) -> tuple[pl.LazyFrame, list[str]]:
    """A lazy scan of a CSV/TSV (optionally .gz; every column as a string) or Parquet file, and its columns."""
    require_file(path)
    if not is_parquet(path):
        check_line_lengths(path)
        refuse_lone_cr_header(path)
    try:
        if is_parquet(path):
            frame = pl.scan_parquet(path)
        else:
            tsv = path.name.lower().removesuffix(".gz").endswith(".tsv")
            frame = pl.scan_csv(path, separator="\t" if tsv else ",", infer_schema=False)
        columns = frame.collect_schema().names()
    except POLARS_ERRORS as e:
        raise table_error(e, path) from e
    return frame, columns


def names_shown(names: list[str]) -> str:
    """Column names for a message: on one line (odd characters escaped) and at most 300 characters."""
    text = ", ".join(name if name.isprintable() else repr(name) for name in names)
    return text if len(text) <= 300 else text[:300] + "..."


def check_columns(wanted: list[str], columns: list[str], path: Path, what: str) -> None:
    for name in wanted:
        if name not in columns:
            raise DataError(f"no {what} column '{name}' (columns: {names_shown(columns)})", path)


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
    except POLARS_ERRORS as e:
        raise table_error(e, path) from e


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
            try:
                seconds = epoch_seconds(raw, time_format)
            except pl.exceptions.PolarsError as e:  # a Parquet column of lists or structs
                raise DataError(f"time column '{time_col}' of type {raw.dtype} cannot be read as times "
                                f"({polars_message(e)})", path) from e
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
    table = finish_items(read_item_metadata(items, options) if items else None, items, options, warnings)
    chunks = table_chunks(frame, path, options.user_col, options.item_col, options.time_col, options.time_format)
    return Source(chunks, table, [path] + ([items] if items else []), options.time_col is not None, warnings)


def read_item_metadata(path: Path, options: ReaderOptions) -> pl.DataFrame:
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
    except POLARS_ERRORS as e:
        raise table_error(e, path) from e
    if table.height == 0:
        raise DataError("no items", path)
    keys = table[key].cast(pl.String)
    blank = (keys.str.strip_chars() == "").fill_null(True)
    if blank.any():
        raise DataError(f"empty '{key}' in data row {first_bad_row(blank) + 1}", path)

    out = {"item": keys}
    if title:
        out["title"] = pl.Series([clean_text(v) for v in table[title].cast(pl.String).to_list()], dtype=pl.String)
    if texts:
        parts = [table[c].cast(pl.String).to_list() for c in texts]
        out["text"] = pl.Series([join_text(row) for row in zip(*parts, strict=True)], dtype=pl.String)
    if image:  # a path or URL: only the ends are stripped, inner spaces belong to the file name
        values = pl.col(image).cast(pl.String).str.strip_chars()
        out["image"] = table.select(pl.when(values != "").then(values)).to_series()
    extras = {c: table[c] for c in columns if c not in used and c not in ITEM_COLUMNS}
    result = pl.DataFrame(out).with_columns(**extras) if extras else pl.DataFrame(out)
    return result.unique(subset="item", keep="first", maintain_order=True)
