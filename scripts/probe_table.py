"""The probes of a folder (scripts/probe.sh) as one Markdown table: validation and test NDCG@10 under both
protocols, the epochs, and, where the dataset has them, the test users whose target was never bought in
training and the new items of a new-item split.

Usage: python scripts/probe_table.py OUT [OUT ...] [--untrained] [--json FILE]
Rows: one per NAME.test.json in OUT. `--untrained` reloads each run to split its test users by whether their
target was bought in training (full-ranking HR@10 of each part); it needs the dataset the run was trained on.
`--json FILE` adds the rows to FILE: a row whose run is here replaces the one it had, the others stay.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import orjson


def flags(run: Path) -> str:
    """`mahn train` flags that retrain `run` with today's code: every setting that differs from today's default."""
    from mahn.settings import as_trained, defaults, inert

    record = orjson.loads((run / "config.json").read_bytes())
    then = as_trained(record)
    changed = []
    for key, value in defaults(record["model"]).items():
        if key in inert(record["model"], then) or then[key] == value:
            continue
        text = str(then[key]).lower() if isinstance(then[key], bool) else str(then[key])
        changed.append(f"--set {key}={text}")
    return " ".join([f"--model {record['model']}", *changed])


def untrained_split(run: Path) -> tuple[float, float, int]:
    """Full-ranking test HR@10 of the users whose target was / was not bought in training, and how many were not."""
    from mahn.evaluation import EvalConfig, rank_users
    from mahn.training import load_run

    model, dataset, record = load_run(run, device="cpu")
    config = EvalConfig(split="test", max_len=record["train"]["max_len"], protocols=("full",))
    scores = rank_users(model, dataset, config)
    untrained = dataset.item_frequency()[dataset.eval_set("test").targets] == 0
    hits = scores["full"]["HR@10"]
    return float(hits[~untrained].mean()), float(hits[untrained].mean()) if untrained.any() else float("nan"), int(
        untrained.sum())


def records(folder: Path) -> list[dict]:
    """One record per NAME.test.json in `folder`: the run, its flags, epochs, and validation and test NDCG@10."""
    out = []
    for path in sorted(folder.glob("*.test.json")):
        name = path.name.removesuffix(".test.json")
        test = orjson.loads(path.read_bytes())
        summary = orjson.loads((folder / name / "summary.json").read_bytes())
        out.append({"run": name, "flags": flags(folder / name), "epochs": summary["epochs"],
                    "best_epoch": summary["best_epoch"],
                    "valid": {p: summary["valid"][p]["NDCG@10"] for p in ("full", "uni100")},
                    "test": {p: test[p]["NDCG@10"] for p in ("full", "uni100")},
                    "new_items": {p: test["new_items"][p]["HR@10"] for p in ("full", "uni100")}
                    if test.get("new_items") else None})
    return out


def table(folder: Path, untrained: bool) -> str:
    header = ["run", "flags", "epochs (best)", "valid full", "valid uni100", "test full", "test uni100"]
    rows = []
    for record in records(folder):
        row = [record["run"], f"`{record['flags']}`", f"{record['epochs']} ({record['best_epoch']})"]
        row += [f"{record['valid'][p]:.4f}" for p in ("full", "uni100")]
        row += [f"{record['test'][p]:.4f}" for p in ("full", "uni100")]
        if record["new_items"]:
            row += [f"{record['new_items'][p]:.4f}" for p in ("full", "uni100")]
        if untrained:
            bought, unbought, count = untrained_split(folder / record["run"])
            row += [f"{bought:.4f}", f"{unbought:.4f}" if np.isfinite(unbought) else "–"]
        rows.append(row)
    if any(len(r) > len(header) + (2 if untrained else 0) for r in rows):
        header += ["new items full HR@10", "new items uni100 HR@10"]
    if untrained:
        header += ["full HR@10, target bought in training", "never bought"]
    lines = [f"{folder}:", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r + [""] * (len(header) - len(r))) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--untrained", action="store_true", help="split test users by whether their target was "
                        "bought in training (reloads each run)")
    parser.add_argument("--json", type=Path, help="also write every folder's records (run, flags, epochs, "
                        "validation and test NDCG@10) to this file, to commit beside the doc that quotes them")
    args = parser.parse_args()
    print("\n\n".join(table(folder, args.untrained) for folder in args.folders))
    if args.json:
        from mahn.io import read_json, write_json

        # runs/ is not committed: a folder's records already in the file whose runs are gone here are kept, so a
        # later session adds its probes without training the earlier ones again
        written = read_json(args.json) if args.json.is_file() else {}
        for folder in args.folders:
            found = records(folder)
            fresh = {record["run"] for record in found}
            written[str(folder)] = [r for r in written.get(str(folder), []) if r["run"] not in fresh] + found
        write_json(args.json, written)


if __name__ == "__main__":
    main()
