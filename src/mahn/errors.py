"""The user-facing error type: bad input from the user, reported as one line naming the file, line or field."""

from __future__ import annotations

import os


class DataError(Exception):
    """Bad input from the user. The CLI prints the message and exits with code 2.

    `where` names the file (and line or field) so the user can find the problem.
    """

    def __init__(self, message: str, where: str | os.PathLike | None = None, line: int | None = None):
        self.where = str(where) if where is not None else None
        self.line = line
        location = ""
        if self.where:
            location = f"{self.where}:{line}: " if line is not None else f"{self.where}: "
        super().__init__(location + message)
