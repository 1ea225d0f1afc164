"""Evaluation: uni100 and full ranking with fair ties, per-user metrics, item-frequency groups, summaries."""

from mahn.evaluation.metrics import (
    CUTOFFS,
    METRICS,
    N_GROUPS,
    PROTOCOLS,
    SHOWN,
    expected_metrics,
    frequency_groups,
    mean_metrics,
    seed_stats,
)
from mahn.evaluation.ranking import EvalConfig, evaluate, rank_users
from mahn.evaluation.render import render

__all__ = ["CUTOFFS", "METRICS", "N_GROUPS", "PROTOCOLS", "SHOWN", "EvalConfig", "evaluate", "expected_metrics",
           "frequency_groups", "mean_metrics", "rank_users", "render", "seed_stats"]
