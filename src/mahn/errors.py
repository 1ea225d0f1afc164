"""The user-facing error type: bad input from the user, reported as one line naming the file, line or field."""

from __future__ import annotations

import errno
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


DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
             errno.EFBIG: "file too large for the file system or its limit"}


def disk_full(error: BaseException) -> str | None:
    """'PATH: no space left on device' when `error` (or what caused it) is a full disk, else None. Native
    writers (Arrow, safetensors) report it as text, so their messages are read too."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            where = f"{error.filename}: " if error.filename else ""
            return where + DISK_FULL[error.errno]
        text = str(error)
        if "No space left on device" in text or "os error 28" in text:
            return f"{DISK_FULL[errno.ENOSPC]} ({text.strip().splitlines()[0][:300]})"
        if "File too large" in text or "os error 27" in text:
            return f"{DISK_FULL[errno.EFBIG]} ({text.strip().splitlines()[0][:300]})"
        error = error.__cause__ or error.__context__
    return None
