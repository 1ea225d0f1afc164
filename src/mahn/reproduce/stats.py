"""Summaries of a reproduction's runs: per-group means over seeds, and paired Wilcoxon tests of MAHN against
every other model on per-user test NDCG@10."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mahn.evaluation import PROTOCOLS
from mahn.io import load_npy


def group_means(runs: list[dict]) -> list[dict]:
    """Per frequency group: metrics averaged over seeds."""
    groups = []
    for index, first in enumerate(runs[0]["test"]["groups"]):
        row = {k: first[k] for k in ("group", "items", "min_frequency", "max_frequency", "users")}
        for protocol in PROTOCOLS:
            row[protocol] = {m: float(np.mean([r["test"]["groups"][index][protocol][m] or 0.0 for r in runs]))
                             for m in ("HR@10", "NDCG@10")}
        groups.append(row)
    return groups


def per_user_ndcg(out: Path, runs: list[dict]) -> np.ndarray:
    """(protocols, users) test NDCG@10 averaged over a cell's seeds."""
    # runs of a preset live in runs/<budget>-<preset> (older results name only the budget)
    return np.mean([load_npy(out / "runs" / r.get("runs_dir", r["budget_name"]) / r["run"] / "test_ndcg10.npy")
                    for r in runs], axis=0)


def best_vs_best(out: Path, compare: dict, multimodal: list[str]) -> dict:
    """The best model that reads content against the best that does not, each chosen by its mean validation full
    NDCG@10 over seeds (never by test): the two-sided Wilcoxon p per protocol on per-user test NDCG@10, and which
    side's mean test NDCG@10 is higher ("multimodal" or "id_only")."""
    valid = {name: float(np.mean([r["valid"]["full"]["NDCG@10"] for r in runs])) for name, runs in compare.items()}
    others = [name for name in compare if name not in multimodal]
    if not multimodal or not others:
        return {}
    ours, theirs = max(multimodal, key=valid.get), max(others, key=valid.get)
    tests = paired_tests(out, {ours: compare[ours], theirs: compare[theirs]}, reference=ours)[theirs]
    means = {name: {p: float(np.mean([r["test"][p]["NDCG@10"] for r in compare[name]])) for p in PROTOCOLS}
             for name in (ours, theirs)}
    return {"multimodal": ours, "id_only": theirs, **tests,
            "higher": {p: "multimodal" if means[ours][p] >= means[theirs][p] else "id_only" for p in PROTOCOLS},
            "test_ndcg10": means, "chosen_by": "validation full NDCG@10"}


def paired_p(first: np.ndarray, second: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired per-user scores; 1.0 when every pair is equal (no test)."""
    from scipy.stats import wilcoxon

    return float(wilcoxon(first, second).pvalue) if np.any(first - second) else 1.0


def paired_tests(out: Path, compare: dict, reference: str = "MAHN") -> dict:
    """Wilcoxon signed-rank p-values, `reference` vs each model, on per-user test NDCG@10 (two-sided)."""
    if reference not in compare:
        return {}
    ours = per_user_ndcg(out, compare[reference])
    tests = {}
    for label, runs in compare.items():
        if label == reference:
            continue
        theirs = per_user_ndcg(out, runs)
        tests[label] = {protocol: paired_p(ours[index], theirs[index]) for index, protocol in enumerate(PROTOCOLS)}
    return tests
