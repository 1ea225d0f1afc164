"""Safe file handling shared by every command: atomic writes, hashes, JSON, TOML and .npy files.

Every file mahn writes goes to a temporary name in the same directory and is renamed into place,
so a killed command leaves either the old file or the new one, never half of one. Temporary names
carry the writer's process id (`.NAME.<pid>.<random>.tmp`), so the next write of the same output
removes what a killed writer left, and never what a live one is still writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mahn.errors import DISK_FULL, DataError, disk_full_errno


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _dead_writer(name: str, prefix: str) -> bool:
    """Whether a sibling named `prefix<pid>...` was left by a process that no longer runs."""
    pid = name[len(prefix):].split(".", 1)[0].split("-", 1)[0]
    return pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))


_swept: set[Path] = set()  # targets this process has swept: a folder is listed once per target, not per write


def sweep(target: Path) -> None:
    """Remove what killed writers of `target` left beside it: temporary files and folders, and for a folder
    moved aside in the middle of a swap, put it back when `target` is missing (else remove it). Done on this
    process's first write of `target` (a checkpoint rewritten every epoch lists its folder once)."""
    if target in _swept:
        return
    _swept.add(target)
    with contextlib.suppress(FileNotFoundError):
        for sibling in target.parent.iterdir():
            name = sibling.name
            if name.startswith(f".{target.name}.") and name.endswith(".tmp") and _dead_writer(name, f".{target.name}."):
                if sibling.is_dir() and not sibling.is_symlink():
                    shutil.rmtree(sibling, ignore_errors=True)
                else:
                    sibling.unlink(missing_ok=True)
            elif name.startswith(f".{target.name}.old-") and _dead_writer(name, f".{target.name}.old-"):
                if not target.exists():
                    os.replace(sibling, target)
                else:
                    shutil.rmtree(sibling, ignore_errors=True)


def _name_a_full_disk(error: Exception, target: Path) -> None:
    """Re-raise a full disk met while writing `target` as an OSError naming it (native writers name nothing)."""
    code = disk_full_errno(error)
    if code is not None and getattr(error, "filename", None) is None:
        raise OSError(code, DISK_FULL[code], str(target)) from error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except Exception as e:
        _name_a_full_disk(e, path)
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def lock_folder(folder: str | os.PathLike, what: str, wait: bool = False) -> int:
    """An exclusive lock on FOLDER itself (flock on the directory: no lock file is left), held until the
    returned descriptor is closed. The operating system drops it when the holder dies, so a killed writer
    leaves no stale lock. Another holder: with `wait`, wait for it; else a DataError saying that another
    process is `what`."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataError(f"another process is {what}: wait for it to finish, or stop it", folder) from None
    return fd


def read_json(path: str | os.PathLike) -> Any:
    try:
        return orjson.loads(Path(path).read_bytes())
    except FileNotFoundError as e:
        raise DataError("file not found", path) from e
    except orjson.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e})", path) from e


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    # np.save writes through ndarray.tofile, whose short write on a full disk is an OSError with no errno;
    # a plain file write reports ENOSPC as such
    array = np.asarray(array)
    array = array if array.flags.c_contiguous else array.copy(order="C")
    if array.dtype.hasobject:
        raise ValueError("object arrays are never saved (they would need pickle)")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
        f.write(memoryview(array.reshape(-1)).cast("B") if array.size else b"")


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """Load a .npy file; never unpickles. `mmap=True` maps it read-only."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it to `out` only when the block succeeds.

    An existing `out` is refused unless `force`; with `force` it is replaced only after the new one
    is complete, so a failure never destroys the old result.
    """
    out = Path(out)
    sweep(out)
    if out.exists() and not force:
        raise DataError("output directory exists (pass --force to replace it)", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    except Exception as e:
        _name_a_full_disk(e, out)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
