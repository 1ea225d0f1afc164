"""`mahn reproduce`: the paper's experiments as cached, resumable runs (runs.py), their statistics (stats.py),
the Markdown report (report.py) and its figures (plots.py)."""

from mahn.reproduce.runs import (
    ABLATIONS,
    BUDGETS,
    DIMS,
    EXPERIMENTS,
    PAPER_EXPERIMENTS,
    Budget,
    ReproduceConfig,
    Run,
    reproduce,
)

__all__ = ["ABLATIONS", "BUDGETS", "DIMS", "EXPERIMENTS", "PAPER_EXPERIMENTS", "Budget", "ReproduceConfig", "Run",
           "reproduce"]
