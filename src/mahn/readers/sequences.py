"""The `sequences` format: `user item item ...` per line, with an optional items.jsonl."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mahn.errors import DataError
from mahn.readers.common import (
    INTERACTION_SCHEMA,
    ReaderOptions,
    Source,
    chunked,
    finish_items,
    open_text,
    read_items_jsonl,
    require_file,
)


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
    items_frame = finish_items(read_items_jsonl(items) if items else None, items, options, warnings)
    return Source(chunked(rows(), INTERACTION_SCHEMA), items_frame, files, has_time=False, warnings=warnings)
