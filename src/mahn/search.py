"""The hyperparameter search space of each model: one declaration, used by both `mahn reproduce --budget full`
(every combination, a grid) and `mahn tune` (Optuna's TPE choosing among the same values)."""

from __future__ import annotations

from mahn.models import model_class

# tried for every model, beside the two settings of the model's own (its class's `search`)
SHARED: dict[str, list] = {"lr": [1e-3, 3e-4], "weight_decay": [1e-4, 0.0]}


def search_space(model: str) -> dict[str, list]:
    """Setting -> the values tried, for `model` (an unknown model is a DataError naming --model)."""
    return {**SHARED, **model_class(model).search}
