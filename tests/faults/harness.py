"""Kill a mahn command at random points, rerun it as a user would, and compare what it leaves behind.

Each attempt is a process forked from a server that has already imported mahn and torch, running
`mahn.cli.main()` with the command's arguments: exactly the code `mahn ...` runs, without paying the
interpreter start for each of hundreds of kills. SIGKILL gives the command no chance to clean up.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from ledger import record

# values that differ between two uninterrupted runs of the same command: wall-clock times and the paths
# of the temporary folders a result was built in
VOLATILE = ("seconds", "per_s", "elapsed", "started", "finished", "created", "wall")


# Children come from a fork server: one clean, single-threaded process that has imported mahn and torch and
# done nothing else. Forking the test process itself is unsafe: a lock held by one of its threads (Polars',
# torch's) at the moment of the fork stays locked forever in the child.
PRELOAD = ["mahn.cli", "mahn.training", "mahn.reproduce", "mahn.catalog", "mahn.features", "mahn.serve.app"]
_context = None


def context() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _main(argv: list[str], log: str, file_size_limit: int | None) -> None:
    """The child: `mahn ARGV` with its output in `log`; exits with the command's exit code."""
    code = 1
    try:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if file_size_limit is not None:  # the log stays writable: it is opened before, and its errors
            import resource  # are one line, far below the limits the tests use

            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
        os.dup2(out, 1)
        os.dup2(out, 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child ends with os._exit
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        sys.argv = ["mahn", *argv]
        from mahn.cli import main

        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def forked(argv: list[str], log: Path, file_size_limit: int | None = None) -> multiprocessing.process.BaseProcess:
    """Start `mahn ARGV` in a child of the fork server; its output goes to `log`.
    `file_size_limit`: no file may grow past this many bytes (RLIMIT_FSIZE: a write past it fails with
    EFBIG, as on a full disk; Python ignores the SIGXFSZ that comes with it)."""
    child = context().Process(target=_main, args=(argv, str(log), file_size_limit), daemon=True)
    child.start()
    return child


def wait(child, timeout: float | None) -> int | None:
    """The child's exit code, or None if it is still running after `timeout` seconds."""
    child.join(timeout)
    return child.exitcode


def kill(child) -> None:
    child.kill()  # SIGKILL
    child.join()


def attempt(argv: list[str], log: Path, file_size_limit: int | None = None, timeout: float = 600) -> tuple[int, str]:
    """Run `mahn ARGV` to its end, whatever the end; returns (exit code, output)."""
    code = wait(forked(argv, log, file_size_limit), timeout)
    return code, log.read_text()


def run(argv: list[str], log: Path, timeout: float = 600) -> float:
    """Run `mahn ARGV` uninterrupted; returns its seconds. A non-zero exit fails with its output."""
    started = time.monotonic()
    code, output = attempt(argv, log, timeout=timeout)
    if code != 0:
        raise AssertionError(f"mahn {' '.join(argv)} exited {code}:\n{output[-3000:]}")
    return time.monotonic() - started


def _normalised(value):
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items() if not any(word in k for word in VOLATILE)}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def _safetensors_without_timings(data: bytes) -> bytes:
    """A safetensors file with the volatile keys of its metadata (a checkpoint's training state) removed."""
    size = int.from_bytes(data[:8], "little")
    header = orjson.loads(data[8 : 8 + size])
    metadata = header.get("__metadata__", {})
    for key, value in metadata.items():
        with contextlib.suppress(orjson.JSONDecodeError):
            metadata[key] = orjson.dumps(_normalised(orjson.loads(value)), option=orjson.OPT_SORT_KEYS).decode()
    return orjson.dumps(header, option=orjson.OPT_SORT_KEYS) + data[8 + size :]


def digest(root: Path, skip: Callable[[Path], bool] = lambda p: False) -> dict[str, str]:
    """sha256 of every file under `root` (relative path -> hash); JSON with its volatile keys removed.
    Hidden names (locks, temporaries) are left to `orphans`."""
    hashes = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts) or skip(relative):
            continue
        data = path.read_bytes()
        if path.suffix == ".json":
            data = orjson.dumps(_normalised(orjson.loads(data)), option=orjson.OPT_SORT_KEYS)
        elif path.suffix == ".safetensors":
            data = _safetensors_without_timings(data)
        elif path.suffix == ".jsonl" and path.name == "metrics.jsonl":
            data = b"".join(orjson.dumps(_normalised(orjson.loads(line)), option=orjson.OPT_SORT_KEYS)
                            for line in data.splitlines())
        hashes[str(relative)] = hashlib.sha256(data).hexdigest()
    return hashes


def orphans(*roots: Path) -> list[str]:
    """Temporary files and folders a writer left: `.NAME.<pid>.<random>.tmp` and `.NAME.old-<pid>`."""
    found = []
    for root in roots:
        if root.exists():
            found += [str(p) for p in root.rglob(".*") if p.name.endswith(".tmp") or ".old-" in p.name]
    return sorted(found)


@dataclass
class Tally:
    """What one command's kills came to; `record`ed in the ledger and asserted by the test."""
    command: str
    injected: int = 0  # SIGKILLs delivered to a running command
    trials: int = 0  # kill-and-rerun sequences, each ending in a finished command
    recovered: int = 0  # trials whose final artifacts equal the uninterrupted run's
    lost: int = 0  # artifacts missing at the end, or a finished artifact gone after a kill
    corrupted: int = 0  # artifacts present but different from the uninterrupted run's
    orphans: int = 0  # temporary files or folders left behind at the end of a trial
    problems: list[str] = field(default_factory=list)

    def compare(self, got: dict[str, str], want: dict[str, str], where: str) -> bool:
        lost = sorted(set(want) - set(got))
        changed = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        extra = sorted(set(got) - set(want))
        self.lost += len(lost)
        self.corrupted += len(changed) + len(extra)
        if lost or changed or extra:
            self.problems.append(f"{where}: lost {lost} changed {changed} unexpected {extra}")
        return not (lost or changed or extra)

    def end_trial(self, artifacts: dict[str, str], reference: dict[str, str], left: list[str]) -> None:
        """Count one finished trial: its artifacts against the undisturbed run's, and what it left behind."""
        self.trials += 1
        self.orphans += len(left)
        if left:
            self.problems.append(f"trial {self.trials}: left {left}")
        if self.compare(artifacts, reference, f"trial {self.trials}") and not left:
            self.recovered += 1

    def as_counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("injected", "trials", "recovered", "lost", "corrupted", "orphans")}


def kill_and_rerun(argv: list[str], log: Path, horizon: float, kills: int, rng: random.Random,
                   after_kill: Callable[[], None] | None = None, landed: Callable[[], bool] | None = None,
                   timeout: float = 600) -> int:
    """Start the command, SIGKILL it after a random delay in [0, horizon), up to `kills` times, each time
    starting it again, then let it finish. `after_kill` checks the state each kill left; `landed` says the
    killed command had already done its work (a user would not run it again). Returns the number of kills
    delivered (a command that finishes before its kill is not counted as killed)."""
    delivered = 0
    while True:
        child = forked(argv, log)
        if delivered < kills:
            code = wait(child, rng.uniform(0, horizon))
            if code is None:
                kill(child)
                delivered += 1
                if after_kill is not None:
                    after_kill()
                if landed is not None and landed():
                    return delivered
                continue
        else:
            code = wait(child, timeout)
        if code != 0:
            raise AssertionError(f"mahn {' '.join(argv)} exited {code} after {delivered} kills:\n"
                                 f"{log.read_text()[-3000:]}")
        return delivered


def trials(tally: Tally, argv: list[str], work: Path, reset, artifacts: Path, reference: dict[str, str],
           horizon: float, total: int, seed: int, after_kill=None, skip=lambda p: False) -> None:
    """Kill-and-rerun sequences (1-3 kills each) from a fresh pre-state until `total` kills are delivered."""
    rng = random.Random(seed)
    while tally.injected < total:
        reset()
        tally.injected += kill_and_rerun(argv, work / "attempt.log", horizon, rng.randint(1, 3), rng, after_kill)
        tally.end_trial(digest(artifacts, skip), reference, orphans(work))


def finish(tally: Tally) -> None:
    record("kill", tally.command, **tally.as_counts())
    assert tally.injected > 0
    assert tally.problems == []
    assert tally.recovered == tally.trials


def reference_run(argv: list[str], work: Path, reset, artifacts: Path, skip=lambda p: False) -> tuple[dict, float]:
    reset()
    seconds = run(argv, work / "reference.log")
    return digest(artifacts, skip), seconds
