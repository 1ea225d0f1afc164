"""The fault suite's ledger: what each test tried and what came of it, one JSON object a line.

Tests call `record(...)`; `scripts/fault_report.py` points MAHN_FAULT_LEDGER at a file, runs the suite
and prints the table in docs/reliability.md. Without MAHN_FAULT_LEDGER nothing is written.
MAHN_FAULTS scales how much each test tries (its CI default times MAHN_FAULTS / 1).
"""

from __future__ import annotations

import fcntl
import json
import os


def scaled(ci_default: int) -> int:
    """How many faults or inputs a test tries: its CI default, times MAHN_FAULTS (default 1)."""
    return max(1, round(ci_default * float(os.environ.get("MAHN_FAULTS", "1"))))


def record(kind: str, name: str, **counts: int) -> None:
    """Append one line: kind is kill | disk | input; name the command or reader; counts such as
    injected, recovered, lost, corrupted, orphans (kills), tried, refused, crashed (inputs)."""
    path = os.environ.get("MAHN_FAULT_LEDGER")
    if not path:
        return
    line = json.dumps({"kind": kind, "name": name, **counts}) + "\n"
    with open(path, "a", encoding="utf-8") as f:  # one append per line; a lock keeps xdist workers apart
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line)
