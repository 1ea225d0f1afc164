"""A copy of a prepared dataset whose residual-quantisation code features keep only their coarsest levels: the
probe of docs/investigations/defaults.md section 5e (do the finest code levels make the content path memorise
the trained items instead of generalising to new ones?).

    python scripts/code_levels.py runs/real/instruments-cold runs/real/instruments-cold-l2 --levels 2

Each `codes` feature (a one-hot block of 256 columns a level) keeps its first LEVELS blocks; the later blocks
become zeros. The manifest records the new sha256 and the levels kept. Everything else is copied unchanged.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from mahn.io import read_json, save_npy, sha256_file, write_json

CODES_PER_LEVEL = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--levels", type=int, required=True, help="code levels kept, from the coarsest")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; remove it first")
    manifest = read_json(args.dataset / "manifest.json")
    codes = [m for m, record in manifest.get("features", {}).items() if record.get("encoder") == "codes"]
    if not codes:
        raise SystemExit(f"{args.dataset}: no `codes` features")
    partial = args.out.with_name(f".{args.out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(args.dataset, partial)
    for modality in codes:
        path = partial / manifest["features"][modality]["file"]
        features = np.load(path, allow_pickle=False)
        features[:, args.levels * CODES_PER_LEVEL :] = 0.0
        path.unlink()
        save_npy(path, features)
        manifest["features"][modality] |= {"sha256": sha256_file(path), "code_levels_kept": args.levels}
    write_json(partial / "manifest.json", manifest)
    partial.rename(args.out)
    print(f"{args.out}: {', '.join(codes)} keep {args.levels} of their code levels")


if __name__ == "__main__":
    main()
