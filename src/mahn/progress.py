"""Progress output that suits where it goes: a live bar on a terminal, plain lines in a log.

A bar redrawn with carriage returns is right on a terminal and wrong in a file or a pipe, where every
redraw becomes a line; there, callers print one line per epoch or per stage instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


def on_terminal() -> bool:
    return sys.stderr.isatty()


def bar(iterable: Iterable | None = None, enabled: bool = True, **options) -> tqdm:
    """A tqdm bar that is drawn only when `enabled` and stderr is a terminal (otherwise a silent pass-through)."""
    return tqdm(iterable, disable=not (enabled and on_terminal()), leave=False, **options)


def line(text: str, enabled: bool = True) -> None:
    """One plain line (to stdout) that does not break a live bar."""
    if enabled:
        tqdm.write(text)
