"""`mahn ARGS` through the console entry point, as a user's shell runs it, for the tests of bad input."""

from __future__ import annotations

import sys

import pytest

from mahn.cli import main


def run_mahn(monkeypatch, capsys, args: list[str]) -> tuple[int | str | None, str, str]:
    """(exit code, stdout, stderr) of `mahn ARGS` (a DataError becomes one line and exit code 2)."""
    monkeypatch.setattr(sys, "argv", ["mahn", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    return exited.value.code, out, err
