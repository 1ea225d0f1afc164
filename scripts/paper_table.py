"""Print a reproduce report's compare table beside the MAHN paper's numbers (SPEC.md §4, uni100 protocol).

Usage: python scripts/paper_table.py REPORT/results.json phones|clothing
The paper's numbers are reference values copied from the paper (Table 2-3 of Han, Niu, Wang 2021);
every other number is read from the results file that `mahn reproduce` wrote.
"""

from __future__ import annotations

import sys

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


def main() -> None:
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
        ref = paper.get(label)
        cells = []
        for value, reference in zip(ours, ref or (None, None), strict=True):
            cells += [f"{value:.4f}", f"{reference:.4f}" if reference else "–",
                      f"{100 * (value / reference - 1):+.1f}%" if reference else "–"]
        epochs = f"{np.mean([r['budget']['epochs'] for r in runs]):.0f} " \
                 f"({np.mean([r['budget']['best_epoch'] for r in runs]):.0f})"
        name = mahn_label if label == "MAHN" else label
        print(f"| {name} | " + " | ".join(cells) + f" | {mean['full']['HR@10']:.4f} | {mean['full']['NDCG@10']:.4f} "
              f"| {epochs} |")


if __name__ == "__main__":
    main()
