"""Readers: turn a source in some real-world format into rows of (user, item, timestamp) plus an items table.

Every reader has the call shape `read_X(path, items=None, options=None) -> Source` and is registered in
`READERS` under its format name. Interactions come as an iterator of Polars DataFrames (chunks, in
file order) with columns `user` (str), `item` (str), `timestamp` (Int64, null when the format only
gives order). The pipeline in `mahn.data.prepare` numbers rows in arrival order, so ties in time keep
file order. `items` has `item` (str key) plus optional `title`, `text`, `image` (str) and any
extra columns worth keeping. Blank title/text/image values are null, so `--require` treats them as missing;
titles and texts are cleaned by `mahn.text.clean_text` (whitespace runs folded to one space).

Images: URLs pass through; a local path is made absolute (relative paths resolve against
`ReaderOptions.image_root`, default the items file's folder) and becomes null when the file does not
exist, counted in `Source.warnings`.

Errors in the input raise `mahn.errors.DataError` naming the file and line (or field). Readers check
that their files exist when called; line errors surface while the interactions are consumed. Hostile files are
bounded: a line over `common.MAX_LINE` (16 Mi characters; bytes for the tables Polars reads) is refused once that
much is read, as is a Python-literal record over `common.MAX_LITERAL` (1 Mi) and nesting too deep to parse; text
must be UTF-8 (the message names the line). Text formats end lines at \n, \r\n or a lone \r; tables (csv/tsv,
RecBole) at \n or \r\n, and refuse a lone \r with its line.

One module a format: `sequences`, `amazon` (2014 and 2018), `recbole`, `table` (csv/tsv/parquet);
the shared pieces are in `common`.
"""

from __future__ import annotations

from collections.abc import Callable

from mahn.readers.amazon import read_amazon2014, read_amazon2018
from mahn.readers.common import CHUNK_ROWS, INTERACTION_SCHEMA, ReaderOptions, Source, chunked
from mahn.readers.recbole import read_recbole
from mahn.readers.sequences import read_sequences
from mahn.readers.table import read_csv

READERS: dict[str, Callable[..., Source]] = {
    "sequences": read_sequences,
    "amazon2014": read_amazon2014,
    "amazon2018": read_amazon2018,
    "recbole": read_recbole,
    "csv": read_csv,
}

__all__ = [
    "CHUNK_ROWS",  # for reading only: the csv/recbole batch size is looked up in mahn.readers.table
    "INTERACTION_SCHEMA",
    "READERS",
    "ReaderOptions",
    "Source",
    "chunked",
    "read_amazon2014",
    "read_amazon2018",
    "read_csv",
    "read_recbole",
    "read_sequences",
]
