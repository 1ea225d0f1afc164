"""The metrics of both protocols, computed from ranks with fair ties, and their summaries over seeds.

Ties are ranked fairly: every metric is its expected value when the target is placed uniformly at
random among the items that share its score. With g items scored strictly higher and t items tied,
the target's 0-based rank is uniform on g..g+t, so HR@k = |{g..g+t} ∩ [0, k)| / (t + 1) and NDCG@k,
MRR@k average their discounts over the same ranks. A constant-score model therefore gets exactly
what random guessing gets, never a perfect score.
"""

from __future__ import annotations

import numpy as np

CUTOFFS = (10, 20)
METRICS = tuple(f"{name}@{k}" for k in CUTOFFS for name in ("HR", "NDCG", "MRR"))
PROTOCOLS = ("uni100", "full")
N_GROUPS = 10
SHOWN = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")  # the columns of the printed tables


def expected_metrics(greater: np.ndarray, ties: np.ndarray, n_candidates: int) -> dict[str, np.ndarray]:
    """Per-user metrics with the target's rank uniform over greater..greater+ties (ties excludes the target)."""
    ranks = np.arange(n_candidates + 1)
    discounts = {"HR": np.ones(len(ranks)), "NDCG": 1.0 / np.log2(ranks + 2), "MRR": 1.0 / (ranks + 1)}
    out = {}
    for name, discount in discounts.items():
        prefix = np.concatenate([[0.0], np.cumsum(discount)])  # prefix[x] = sum of discount[r] for r < x
        for k in CUTOFFS:
            lo = np.minimum(greater, k)
            hi = np.minimum(greater + ties + 1, k)
            out[f"{name}@{k}"] = (prefix[hi] - prefix[lo]) / (ties + 1)
    return {m: out[m] for m in METRICS}


def frequency_groups(frequency: np.ndarray, n_groups: int = N_GROUPS) -> list[np.ndarray]:
    """Items sorted by training frequency (ties by id), cut into n_groups of (nearly) equal item count."""
    return np.array_split(np.argsort(frequency, kind="stable"), n_groups)


def mean_metrics(per_user: dict[str, np.ndarray], rows: np.ndarray | slice = slice(None)) -> dict[str, float | None]:
    return {m: (float(v[rows].mean()) if v[rows].size else None) for m, v in per_user.items()}


def seed_stats(results: list[dict], metrics: tuple[str, ...] = METRICS) -> dict:
    """protocol -> metric -> {"mean", "std", "values"} over `evaluate` results (one per seed).

    The std is the population std (0 for one seed).
    """
    return {p: {m: {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
                for m in metrics for values in [[float(r[p][m]) for r in results]]}
            for p in PROTOCOLS}
