"""Turning raw cell values (strings, lists, numbers, bytes) into clean text: the one path used both when
items are read and when their texts are built for the encoders."""

from __future__ import annotations


def clean_text(value: object, list_separator: str = " ") -> str | None:
    """A value as one line of text, or None when it holds none.

    Strings have their whitespace runs folded to one space; lists are cleaned element by element and
    joined with `list_separator`; numbers become their decimal text; bytes must be UTF-8 (a
    UnicodeDecodeError is raised otherwise, for the caller to report). Anything else is None.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, (list, tuple)):
        value = list_separator.join(part for part in (clean_text(v, list_separator) for v in value) if part)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    return " ".join(value.split()) or None


def join_text(parts: tuple | list) -> str | None:
    """Join several text fields with '. ', without doubling a sentence's own full stop."""
    joined = ""
    for part in parts:
        part = clean_text(part)
        if part is None:
            continue
        if joined:
            joined += " " if joined[-1] in ".!?" else ". "
        joined += part
    return joined or None
