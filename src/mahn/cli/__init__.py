"""The `mahn` command line. Each command is a thin wrapper over a library function; the commands live in
one module per kind of work (data, runs, serving, experiments), all on one Typer app."""

from __future__ import annotations

import sys

import typer

from mahn.cli.common import app
from mahn.errors import DataError, disk_full

# each module adds its commands to `app`; their order is the order of `mahn --help`
# isort: off
from mahn.cli import data, runs, serving, experiments, exporting, tuning  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: a DataError (bad input) becomes a one-line message and exit code 2; a full disk
    one line and exit code 3 (every output is written atomically, so what was there before is intact)."""
    try:
        app()
    except DataError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except Exception as e:
        full = disk_full(e)
        if full is None:
            raise
        typer.secho(f"error: {full}; nothing was replaced: free some space and run the command again",
                    err=True, fg=typer.colors.RED)
        sys.exit(3)

