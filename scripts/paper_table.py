"""Print a reproduce report's compare table beside the MAHN paper's numbers (its Tables 2-3, uni100; docs/protocol.md).

Usage: python scripts/paper_table.py REPORT/results.json phones|clothing   (a `mahn reproduce` report)
       python scripts/paper_table.py RUNS phones|clothing                  (runs of scripts/baselines.sh)
The paper's numbers are reference values copied from the paper (Table 2-3 of Han, Niu, Wang 2021);
every other number is read from the files that `mahn reproduce` or `scripts/baselines.sh` wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mahn.io import read_json

PAPER = {  # (HR@10, NDCG@10) under uni100
    "phones": {"VBPR": (0.2778, 0.1562), "JRL": (0.3427, 0.1991), "MV-RNN": (0.5349, 0.3323),
               "GRU4Rec": (0.4414, 0.2703), "Caser": (0.4973, 0.3172), "SASRec": (0.5659, 0.3607),
               "BERT4Rec": (0.5783, 0.3674), "MAHN": (0.5966, 0.3758)},
    "clothing": {"VBPR": (0.1573, 0.0869), "JRL": (0.2230, 0.1189), "MV-RNN": (0.3422, 0.1996),
                 "GRU4Rec": (0.2755, 0.1557), "Caser": (0.2827, 0.1619), "SASRec": (0.3818, 0.2227),
                 "BERT4Rec": (0.3879, 0.2269), "MAHN": (0.4262, 0.2467)},
}


LABELS = {"popularity": "popularity", "gru4rec": "GRU4Rec", "caser": "Caser", "sasrec": "SASRec",
          "bert4rec": "BERT4Rec"}


def delta_cells(values: tuple[float, float], reference: tuple[float, float] | None) -> list[str]:
    cells = []
    for value, ref in zip(values, reference or (None, None), strict=True):
        cells += [f"{value:.4f}", f"{ref:.4f}" if ref else "–", f"{100 * (value / ref - 1):+.1f}%" if ref else "–"]
    return cells


def runs_table(runs: Path, dataset: str) -> None:
    """One row per RUNS/<dataset>-<name>.test.json; the budget read from the run's metrics.jsonl."""
    print("| run | uni100 HR@10 | paper | Δ | uni100 NDCG@10 | paper | Δ | full HR@10 | full NDCG@10 | "
          "epochs (best) | steps | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(runs.glob(f"{dataset}-*.test.json")):
        name = path.name.removesuffix(".test.json")
        test = read_json(path)
        folder = runs / name
        history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        summary = read_json(folder / "summary.json") if (folder / "summary.json").exists() else None
        config = read_json(folder / "config.json")
        key = config["train"]["select"]
        best = max(history, key=lambda r: r["valid"][key]["NDCG@10"])
        epochs = f"{len(history) if history[-1]['epoch'] else 0} ({best['epoch']})" + ("" if summary else ", cut")
        steps = summary["steps"] if summary else "–"
        seconds = sum(r.get("train_seconds", 0.0) for r in history)
        cells = delta_cells((test["uni100"]["HR@10"], test["uni100"]["NDCG@10"]),
                            PAPER[dataset].get(LABELS[config["model"]]))
        print(f"| {name.removeprefix(dataset + '-')} | " + " | ".join(cells) +
              f" | {test['full']['HR@10']:.4f} | {test['full']['NDCG@10']:.4f} | {epochs} | {steps} | {seconds:.0f} |")


def main() -> None:
    if Path(sys.argv[1]).is_dir():
        runs_table(Path(sys.argv[1]), sys.argv[2])
        return
    results, dataset = read_json(sys.argv[1]), sys.argv[2]
    paper = PAPER[dataset]
    mahn_label = "MAHN-V-T (ID only)" if results["chosen"]["mahn"].get("ablate") == "vt" else "MAHN"
    print("| model | uni100 HR@10 | paper | Δ | uni100 NDCG@10 | paper | Δ | full HR@10 | full NDCG@10 | "
          "epochs (best) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, runs in results["compare"].items():
        mean = {p: {m: np.mean([r["test"][p][m] for r in runs]) for m in ("HR@10", "NDCG@10")}
                for p in ("uni100", "full")}
        ours = (mean["uni100"]["HR@10"], mean["uni100"]["NDCG@10"])
        cells = delta_cells(ours, paper.get(label))
        epochs = f"{np.mean([r['budget']['epochs'] for r in runs]):.0f} " \
                 f"({np.mean([r['budget']['best_epoch'] for r in runs]):.0f})"
        name = mahn_label if label == "MAHN" else label
        print(f"| {name} | " + " | ".join(cells) + f" | {mean['full']['HR@10']:.4f} | {mean['full']['NDCG@10']:.4f} "
              f"| {epochs} |")


if __name__ == "__main__":
    main()
