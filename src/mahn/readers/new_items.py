"""New items for a trained run, as a user gives them (`mahn add-items FILE`, `POST /items`): a CSV, TSV or JSONL
file, or a list of records, checked field by field. A bad record is a DataError naming the file and line (or the
record's index) and the field; image paths must stay inside the images folder."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath

import orjson

from mahn.errors import DataError
from mahn.paths import inside, is_url

TEXT_FIELDS = ("title", "text", "description", "brand")  # strings the text templates read
FIELDS = ("key", *TEXT_FIELDS, "categories", "image", "image_codes", "text_codes")


@dataclass
class ItemRecord:
    values: dict  # field -> value, checked
    where: str  # the file, or "records"
    line: int  # the file's line, or the record's index

    def error(self, message: str) -> DataError:
        return DataError(message, f"records[{self.line}]") if self.where == "records" else DataError(
            message, self.where, self.line)



def read_item_file(path: Path) -> list[ItemRecord]:
    if not path.is_file():
        raise DataError("items file not found", path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 ({e})", path) from e
    records = []
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(keepends=True), delimiter="\t" if suffix == ".tsv" else ",")
        header = reader.fieldnames or []
        if len(set(header)) != len(header):
            raise DataError(f"a column name occurs twice in the header {header}", path, 1)
        unknown = [c for c in header if c not in FIELDS]
        if unknown:
            raise DataError(f"unknown column '{unknown[0]}' (columns: {', '.join(FIELDS)})", path, 1)
        for row in reader:
            if None in row:
                raise DataError("more values than columns", path, reader.line_num)
            records.append(ItemRecord({k: v if v != "" else None for k, v in row.items()}, str(path), reader.line_num))
    elif suffix in (".jsonl", ".ndjson", ".json"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e})", path, number) from e
            if not isinstance(value, dict):
                raise DataError("each line must be one JSON object", path, number)
            records.append(ItemRecord(value, str(path), number))
    else:
        raise DataError(f"unknown items file type {suffix!r} (use .csv, .tsv or .jsonl)", path)
    if not records:
        raise DataError("no items in the file", path)
    return records


def check_value(record: ItemRecord, field: str, value):
    """The field's value, normalised (None when absent); a DataError naming the field when its type is wrong."""
    if value is None:
        return None
    if field == "key" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if field in ("key", *TEXT_FIELDS, "image"):
        if not isinstance(value, str):
            raise record.error(f"field '{field}' must be a string, got {type(value).__name__}")
        return value.strip() or None
    if field == "categories":
        ok = isinstance(value, str) or (isinstance(value, list) and all(
            isinstance(c, str) or (isinstance(c, list) and all(isinstance(x, str) for x in c)) for c in value))
        if not ok:
            raise record.error("field 'categories' must be a string or a list of strings")
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    if not isinstance(value, (str, list)):  # *_codes: JSON text or a list, checked by the encoder
        raise record.error(f"field '{field}' must be a list of codes, got {type(value).__name__}")
    return value


def image_path(record: ItemRecord, value: str, root: Path | None, allow_urls: bool) -> str:
    """The image's real path inside `root` (or the URL); a DataError for anything that would leave it."""
    if is_url(value):
        if allow_urls:
            return value
        raise record.error("field 'image': URLs are not accepted here; give a path inside the images folder")
    if root is None:
        raise record.error("field 'image': no images folder given for relative image paths")
    if "\0" in value:  # no file name holds one, and the path functions raise on it
        raise record.error("field 'image': a path cannot contain a NUL character")
    if os.path.isabs(value) or value.startswith("~") or PurePath(value).drive:
        raise record.error(f"field 'image': {value!r} is an absolute path; give it relative to the images folder")
    if ".." in PurePath(value.replace("\\", "/")).parts:
        raise record.error(f"field 'image': {value!r} leads out of the images folder ('..')")
    real = os.path.realpath(os.path.join(root, value))
    if not inside(real, root):
        raise record.error(f"field 'image': {value!r} leads out of the images folder (through a link)")
    if not os.path.isfile(real):
        raise record.error(f"field 'image': no image file {value!r} in {root}")
    return real


def check_records(records: list[ItemRecord], taken: set[str], root: Path | None, allow_urls: bool,
                  check_image: Callable[[ItemRecord], None] | None = None) -> list[ItemRecord]:
    """Each record's fields checked and normalised, its key new and unique, its image path resolved inside `root`
    (then handed to `check_image`, e.g. to decode it)."""
    seen: dict[str, ItemRecord] = {}
    for record in records:
        unknown = [f for f in record.values if f not in FIELDS]
        if unknown:
            raise record.error(f"unknown field '{unknown[0]}' (fields: {', '.join(FIELDS)})")
        record.values = {f: check_value(record, f, record.values.get(f)) for f in FIELDS}
        key = record.values["key"]
        if key is None:
            raise record.error("field 'key' is missing: every new item needs a key")
        if key in taken:
            raise record.error(f"field 'key': {key!r} is already an item of the run")
        if key in seen:
            raise record.error(f"field 'key': {key!r} occurs twice (first at line/record {seen[key].line})")
        seen[key] = record
        if record.values["image"] is not None:
            record.values["image"] = image_path(record, record.values["image"], root, allow_urls)
            if check_image is not None:
                check_image(record)
    return records
