"""Text templates: what text an item gets for the text encoders (title, title+brand+categories, ...)."""

from __future__ import annotations

import contextlib

import orjson

from mahn.errors import DataError
from mahn.text import clean_text

TEMPLATES = ("title", "title+brand+categories", "description", "title+text")
SEPARATOR = ", "  # joins the parts of a list value (categories, a list of description paragraphs)


def _categories(value) -> str | None:
    if isinstance(value, str) and value.lstrip().startswith("["):
        with contextlib.suppress(orjson.JSONDecodeError):
            value = orjson.loads(value)
    if isinstance(value, list) and value and isinstance(value[0], list):  # Amazon 2014: list of paths
        value = [c for path in value for c in path]
    if isinstance(value, list):
        value = list(dict.fromkeys(str(c) for c in value))  # drop repeats, keep order
    return clean_text(value, SEPARATOR)


def item_texts(table, template: str) -> tuple[list[str | None], list[str | None]]:
    """(text per item or None when it has none, error per item) following `template`."""
    if template not in TEMPLATES:
        raise DataError(f"unknown text template {template!r} (choose {', '.join(TEMPLATES)})")
    columns = set(table.columns)

    def column(name):
        return table[name].to_list() if name in columns else [None] * table.height

    titles = column("title")
    description = column("description") if "description" in columns else column("text")
    brands, categories = column("brand"), column("categories")
    texts: list[str | None] = []
    errors: list[str | None] = []
    for r in range(table.height):
        try:
            if template == "title":
                text = clean_text(titles[r], SEPARATOR)
            elif template == "description":
                text = clean_text(description[r], SEPARATOR)
            elif template == "title+text":
                parts = [clean_text(titles[r], SEPARATOR), clean_text(description[r], SEPARATOR)]
                text = ". ".join(p for p in parts if p) or None
            else:
                title = clean_text(titles[r], SEPARATOR)
                brand = clean_text(brands[r], SEPARATOR)
                cats = _categories(categories[r])
                extra = [f"Brand: {brand}" if brand else None, f"Categories: {cats}" if cats else None]
                text = ". ".join(p for p in [title, *extra] if p) if title else None
            texts.append(text)
            errors.append(None)
        except UnicodeDecodeError as e:
            texts.append(None)
            errors.append(f"not UTF-8: {e}")
    return texts, errors
