"""A full disk in the middle of every command that writes: a clear one-line error (exit code 3), the
previous artifacts intact, nothing temporary left, and once space is back the same command finishes with
the artifacts an undisturbed run writes.

Two ways to fill the disk: a real one (a small tmpfs, filled to a random point; needs the right to mount,
skipped without it) and a per-process file-size limit (RLIMIT_FSIZE at a random size: every write past
it fails, anywhere).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import Tally, attempt, digest, orphans, run
from ledger import record, scaled

from synthetic import make_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("small") / "small", users=60, items=30)


class Disk:
    """Where a scenario writes, and how it is made full."""

    def __init__(self, mode: str, folder: Path):
        self.mode, self.folder = mode, folder
        folder.mkdir()
        if mode == "tmpfs":
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
                                     capture_output=True, text=True)
            if mounted.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the file-size limit runs")

    def close(self) -> None:
        if self.mode == "tmpfs":
            subprocess.run(["umount", "-l", str(self.folder)], check=False)

    def fill(self, rng: random.Random, sizes: list[int]) -> int | None:
        """Make the next command run out of space part-way through writing files of these sizes. Returns
        the file-size limit for the command (None: the disk itself is full)."""
        if self.mode == "fsize":  # below the largest file's size
            return rng.randint(1, max(sizes) - 1)
        free = os.statvfs(self.folder).f_bavail * os.statvfs(self.folder).f_frsize
        with open(self.folder / "filler", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, max(1, free - rng.randint(0, sum(sizes) - 1)))
        return None

    def empty(self) -> None:
        (self.folder / "filler").unlink(missing_ok=True)


@pytest.fixture(params=["tmpfs", "fsize"])
def disk(request, tmp_path):
    disk = Disk(request.param, tmp_path / "disk")
    yield disk
    disk.close()


def scenario(shop: dict, small: Path, name: str, work: Path) -> tuple[list[str], list[str], Path, callable]:
    """(command, its rerun, the folder it writes, reset to the state before it)."""
    root = shop["root"]
    if name == "prepare":  # replaces an older dataset
        out = work / "data"
        argv = [*shop["prepare"], "--out", str(out), "--force"]
        return argv, argv, out, lambda: shutil.copytree(root / "other", out)
    if name == "features":
        out = work / "data"
        argv = ["features", str(out), "--no-progress", "--workers", "1", "--chunk-size", "8"]
        return argv, argv, out, lambda: shutil.copytree(root / "bare", out)
    if name == "train":
        out = work / "run"
        argv = ["train", str(small), "--out", str(out), "--model", "mgt", "--dim", "8", "--epochs", "4",
                "--threads", "1", "--no-progress", "--resume"]
        return argv, argv, out, lambda: out.mkdir()
    out = work / "run"
    argv = ["add-items", str(out), "--items", str(root / "new.csv")]
    return argv, argv, out, lambda: shutil.copytree(root / "run", out)


COUNTS = {"prepare": 6, "train": 4, "features": 1, "add-items": 1}  # faults per mode at MAHN_FAULTS=1 (the encoders
# that features and add-items load cost seconds a try)


@pytest.mark.parametrize("command", list(COUNTS))
def test_a_full_disk_is_a_clear_error_that_loses_nothing(shop, small, disk, tmp_path, command):
    argv, rerun, out, make = scenario(shop, small, command, disk.folder)

    def reset():
        disk.empty()
        shutil.rmtree(out, ignore_errors=True)
        make()

    reset()
    before = digest(out)
    run(argv, tmp_path / "reference.log")
    reference = digest(out)
    sizes = [(out / name).stat().st_size for name, sha in reference.items() if before.get(name) != sha]
    tally = Tally(f"{command} ({'full tmpfs' if disk.mode == 'tmpfs' else 'file-size limit'})")
    rng = random.Random(7)
    for _ in range(scaled(COUNTS[command])):
        reset()
        limit = disk.fill(rng, sizes)
        code, output = attempt(argv, tmp_path / "attempt.log", limit)
        if code == 0:  # the space left was enough after all: not a fault
            continue
        tally.injected += 1
        message = output.strip().splitlines()[-1] if output.strip() else ""
        if code != 3 or "Traceback" in output or not message.startswith(f"error: {disk.folder}") or not any(
                words in message for words in ("no space left on device", "file too large")):  # names the file
            tally.problems.append(f"exit {code}, said: {output[-1500:]}")
        if command in ("prepare", "add-items"):  # one atomic output: as it was
            tally.compare(digest(out), before, "after the failure")
        left = orphans(disk.folder)
        tally.orphans += len(left)
        if left:
            tally.problems.append(f"left {left}")
        disk.empty()
        code, output = attempt(rerun, tmp_path / "rerun.log")
        tally.trials += 1
        if code != 0:
            tally.problems.append(f"the rerun with space exited {code}: {output[-1500:]}")
        elif tally.compare(digest(out), reference, f"trial {tally.trials}") and not left:
            tally.recovered += 1
    record("disk", tally.command, **tally.as_counts())
    assert tally.injected > 0
    assert tally.problems == []
    assert tally.recovered == tally.trials
