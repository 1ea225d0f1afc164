"""The two rules every place that reads a user's image path keeps: a URL is not a path, and a path may be
confined to a folder (links resolved), so that an items file or a request cannot make mahn open other files."""

from __future__ import annotations

import os
from pathlib import Path


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path`, with every link resolved, lies in `folder` (its links resolved too)."""
    base = os.path.realpath(folder)
    return os.path.commonpath([base, os.path.realpath(path)]) == base
