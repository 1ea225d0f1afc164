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


# how native writers (Arrow, safetensors) word a full disk in their messages, which carry no errno
FULL_DISK_WORDS = {errno.ENOSPC: ("No space left on device", "os error 28"),
                   errno.EFBIG: ("File too large", "os error 27")}


def _full_disk_cause(error: BaseException | None) -> tuple[int, BaseException] | None:
    """(errno, the exception that says so) when `error` or what caused it is a full disk, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return error.errno, error
        text = str(error)
        for code, words in FULL_DISK_WORDS.items():
            if any(word in text for word in words):
                return code, error
        error = error.__cause__ or error.__context__
    return None


def disk_full_errno(error: BaseException) -> int | None:
    """ENOSPC, EDQUOT or EFBIG when `error` (or what caused it) is a full disk, else None."""
    found = _full_disk_cause(error)
    return found[0] if found else None


def disk_full(error: BaseException) -> str | None:
    """'PATH: no space left on device' when `error` (or what caused it) is a full disk, else None."""
    found = _full_disk_cause(error)
    if found is None:
        return None
    code, cause = found
    if isinstance(cause, OSError) and cause.errno == code:
        return (f"{cause.filename}: " if cause.filename else "") + DISK_FULL[code]
    return f"{DISK_FULL[code]} ({str(cause).strip().splitlines()[0][:300]})"
