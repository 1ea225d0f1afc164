"""Keep a report's finished runs across machines: what `mahn reproduce` needs of a finished run, committed.

A 3-seed report on Instruments is more CPU than one working session has, and a session's machine (with its
runs/) may not outlive it. `mahn reproduce` takes a run as finished when its folder holds config.json (the
settings it trained with), summary.json, result.json (its validation and test metrics) and test_ndcg10.npy
(each test user's NDCG@10, for the paired tests); the weights are not needed once it is tested. This script
copies those four files of every finished run of a report folder into a committed folder (the .npy gzipped: most
users score 0 under full ranking), and back:

    python scripts/report_runs.py save runs/reproduce/defaults/office docs/reports/defaults/office
    python scripts/report_runs.py restore docs/reports/defaults/office runs/reproduce/defaults/office

`restore` writes only runs the report folder lacks (a run there, finished or not, is left as it is), so
`mahn reproduce` then trains only what no session has finished and writes the report from all of them. The
per-user arrays also let a reader recompute every p-value of the report without training.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

from mahn.errors import DataError
from mahn.io import atomic_dir

KEPT = ("config.json", "summary.json", "result.json")
SCORES = "test_ndcg10.npy"


def finished_runs(report: Path) -> list[Path]:
    """Run folders under `report` whose test is written (result.json and the per-user scores), relative to it; runs
    moved aside by --move-changed are not the report's."""
    return sorted(run.parent.relative_to(report) for run in report.rglob("result.json")
                  if (run.parent / SCORES).is_file() and "changed" not in run.relative_to(report).parts)


def save(report: Path, kept: Path) -> int:
    count = 0
    for relative in finished_runs(report):
        source, target = report / relative, kept / relative
        if target.is_dir() and all((target / name).is_file() for name in (*KEPT, SCORES + ".gz")) and \
                (target / "result.json").read_bytes() == (source / "result.json").read_bytes():
            continue
        write_folder(target, {**{name: (source / name).read_bytes() for name in KEPT},
                              SCORES + ".gz": gzip.compress((source / SCORES).read_bytes(), mtime=0)})
        count += 1
    return count


def restore(kept: Path, report: Path) -> int:
    count = 0
    for result in sorted(kept.rglob("result.json")):
        relative = result.parent.relative_to(kept)
        if (report / relative).exists():
            continue
        source = kept / relative
        count += write_folder(report / relative, {**{name: (source / name).read_bytes() for name in KEPT},
                                                  SCORES: gzip.decompress((source / (SCORES + ".gz")).read_bytes())},
                              replace=False)
    return count


def write_folder(target: Path, files: dict[str, bytes], replace: bool = True) -> bool:
    """The folder whole or not at all (mahn.io.atomic_dir). With replace False a folder that is there, or that
    appears meanwhile (a reproduce beginning that run), is left as it is. Whether it was written."""
    try:
        with atomic_dir(target, force=replace) as staging:
            for name, data in files.items():
                (staging / name).write_bytes(data)
    except (DataError, OSError):
        if replace:
            raise
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("save", "restore"))
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    if not args.source.is_dir():
        sys.exit(f"{args.source}: no such folder")
    count = (save if args.action == "save" else restore)(args.source, args.target)
    print(f"{args.action}d {count} runs: {args.source} -> {args.target}")


if __name__ == "__main__":
    main()
