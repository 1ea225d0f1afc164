"""Run the counted fault suite (tests/faults/) and print what it tried and what came of it.

    python scripts/fault_report.py                 # CI's share: a few hundred faults, some thousand inputs
    python scripts/fault_report.py --faults 10     # ten times as many of everything
    python scripts/fault_report.py --json benchmarks/results/faults.json

The tables are the ones in docs/reliability.md. Exits non-zero when a test fails or anything was lost,
corrupted, left behind or crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILL = ("injected", "trials", "recovered", "lost", "corrupted", "orphans")
INPUT = ("tried", "refused", "accepted", "crashed")


def totals(lines: list[dict], kind: str, fields: tuple[str, ...]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(fields, 0))
    for line in lines:
        if line["kind"] == kind:
            for field in fields:
                table[line["name"]][field] += int(line.get(field, 0))
    return dict(sorted(table.items()))


def markdown(title: str, first: str, table: dict[str, dict[str, int]], fields: tuple[str, ...]) -> str:
    rows = [f"| {first} | " + " | ".join(fields) + " |", "|---" * (len(fields) + 1) + "|"]
    rows += [f"| {name} | " + " | ".join(f"{counts[f]:,}" for f in fields) + " |" for name, counts in table.items()]
    total = {f: sum(c[f] for c in table.values()) for f in fields}
    rows.append("| **all** | " + " | ".join(f"**{total[f]:,}**" for f in fields) + " |")
    return f"{title}\n\n" + "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", type=float, default=1.0, help="multiplier of every test's CI count")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. -k kills)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        ledger = Path(folder) / "ledger.jsonl"
        env = {**os.environ, "MAHN_FAULTS": str(args.faults), "MAHN_FAULT_LEDGER": str(ledger)}
        started = time.perf_counter()
        tests = subprocess.run([sys.executable, "-m", "pytest", "-m", "faults", "-q", "-p", "no:cacheprovider",
                                str(ROOT / "tests" / "faults"), *args.pytest_args], cwd=ROOT, env=env)
        seconds = time.perf_counter() - started
        lines = [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []
    kills, disks, inputs = totals(lines, "kill", KILL), totals(lines, "disk", KILL), totals(lines, "input", INPUT)
    print(markdown("SIGKILL at random points, then the same command again:", "command", kills, KILL))
    print()
    print(markdown("A full disk part-way through (then space back, and the same command again):", "command",
                   disks, KILL))
    print()
    print(markdown("Generated and mutated inputs per reader:", "reader", inputs, INPUT))
    bad = sum(c[f] for t in (kills, disks) for c in t.values() for f in ("lost", "corrupted", "orphans"))
    bad += sum(c["crashed"] for c in inputs.values())
    faults = sum(c["injected"] for t in (kills, disks) for c in t.values())
    print(f"\n{faults:,} faults injected, {sum(c['tried'] for c in inputs.values()):,} inputs tried, "
          f"{bad} artifacts lost, corrupted or left behind or crashes; pytest exit {tests.returncode}; "
          f"{seconds:.0f} s (MAHN_FAULTS={args.faults:g})")
    if args.json:
        args.json.write_text(json.dumps({"faults_multiplier": args.faults, "seconds": round(seconds),
                                         "pytest_exit": tests.returncode, "kills": kills, "disk_full": disks,
                                         "inputs": inputs}, indent=2) + "\n")
    return 1 if tests.returncode or bad else 0


if __name__ == "__main__":
    sys.exit(main())
