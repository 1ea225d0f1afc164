"""The hyperparameter search space of each model: one declaration, searched by `mahn tune` (Optuna's TPE
choosing among the declared values), alone or for `mahn reproduce --budget full`, and trained as a grid by
benchmarks/tune_vs_grid.py."""

from __future__ import annotations

from mahn.models import model_class

# tried for every model, beside the two settings of the model's own (its class's `search`)
SHARED: dict[str, list] = {"lr": [1e-3, 3e-4], "weight_decay": [1e-4, 0.0]}


def search_space(model: str) -> dict[str, list]:
    """Setting -> the values tried, for `model` (an unknown model is a DataError naming --model)."""
    return {**SHARED, **model_class(model).search}
