"""Paired test of two or more trained runs on the same dataset: per-user test NDCG@10 under both protocols,
the first run against each other by a two-sided Wilcoxon signed-rank test over test users.

Usage: python scripts/paired.py RUN_A RUN_B [RUN_C ...] [--split test]
For one seed per run: the p-value says whether the users' scores differ, not whether a reseeded run would.
`mahn reproduce` gives the same test over seeds (per-user NDCG@10 averaged over them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mahn.evaluation import PROTOCOLS, EvalConfig, rank_users
from mahn.reproduce.stats import paired_p
from mahn.training import load_run


def per_user(run: Path, split: str) -> tuple[dict[str, np.ndarray], str]:
    model, dataset, record = load_run(run, device="cpu")
    scores = rank_users(model, dataset, EvalConfig(split=split, max_len=record["train"]["max_len"]))
    return {p: scores[p]["NDCG@10"] for p in PROTOCOLS}, str(dataset.root.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    if len(args.runs) < 2:
        raise SystemExit("give at least two runs")
    results = [per_user(run, args.split) for run in args.runs]
    if len({root for _, root in results}) > 1:
        raise SystemExit("the runs were trained on different datasets: their users cannot be paired")
    first = results[0][0]
    print(f"{args.split} NDCG@10, mean over {len(first['full'])} users; p: Wilcoxon, {args.runs[0]} vs the row")
    print("| run | " + " | ".join(f"{p} NDCG@10 | p ({p})" for p in PROTOCOLS) + " |")
    print("|---|" + "---|---|" * len(PROTOCOLS))
    for run, (scores, _) in zip(args.runs, results, strict=True):
        cells = []
        for p in PROTOCOLS:
            same = run == args.runs[0] or not np.any(first[p] - scores[p])
            cells += [f"{scores[p].mean():.4f}", "–" if same else f"{paired_p(first[p], scores[p]):.2g}"]
        print(f"| {run} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
