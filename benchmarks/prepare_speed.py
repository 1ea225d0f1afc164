"""Benchmark `mahn prepare` on the real Amazon 2014 sequences: wall time and peak memory.

Each dataset is prepared in a fresh process (the CLI, as a user runs it) so peak RSS is that of
the command alone. Prints a table and writes benchmarks/results/prepare_speed.json.
Targets (issue 2): Clothing in under 20 s and under 1 GiB peak memory on 2 cores.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mahn.io import write_json

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DATASETS = ("amazon2014-phones", "amazon2014-clothing")


def run_one(name: str, out: Path) -> dict:
    source = DATA / name / "user_sequence.txt"
    command = [sys.executable, "-m", "mahn.cli", "prepare", str(source), "--format", "sequences",
               "--kcore", "5", "--out", str(out)]
    started = time.perf_counter()
    # each run is a child of its own short-lived wrapper so RUSAGE_CHILDREN holds only that run's peak
    wrapper = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:]); "
               "print(json.dumps([r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    code, peak_kib = json.loads(done.stdout.strip().splitlines()[-1])
    if code != 0:
        raise SystemExit(f"prepare failed for {name}: {done.stderr}")
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    return {"dataset": name, "seconds": round(seconds, 2), "peak_rss_mib": round(peak_kib / 1024, 1), **counts}


def main() -> None:
    if not DATA.is_dir():
        print(f"skipped: {DATA} is missing")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in DATASETS:
            rows.append(run_one(name, Path(tmp) / name))
    print(f"{'dataset':<22}{'users':>8}{'items':>8}{'interactions':>14}{'seconds':>9}{'peak MiB':>10}")
    for r in rows:
        print(f"{r['dataset']:<22}{r['users']:>8}{r['items']:>8}{r['interactions']:>14}{r['seconds']:>9}"
              f"{r['peak_rss_mib']:>10}")
    result = {"benchmark": "prepare", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "targets": {"amazon2014-clothing": {"seconds": 20, "peak_rss_mib": 1024}}, "rows": rows}
    out = REPO / "benchmarks" / "results" / "prepare_speed.json"
    write_json(out, result)
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
