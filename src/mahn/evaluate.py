"""Evaluation under both protocols of SPEC §3: the stored uni100 negatives and full ranking over all items.

Ties are ranked fairly: every metric is its expected value when the target is placed uniformly at
random among the items that share its score. With g items scored strictly higher and t items tied,
the target's 0-based rank is uniform on g..g+t, so HR@k = |{g..g+t} ∩ [0, k)| / (t + 1) and NDCG@k,
MRR@k average their discounts over the same ranks. A constant-score model therefore gets exactly
what random guessing gets, never a perfect score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mahn.data import Dataset, left_padded, range_indices
from mahn.errors import DataError
from mahn.models.base import SequentialModel

CUTOFFS = (10, 20)
METRICS = tuple(f"{name}@{k}" for k in CUTOFFS for name in ("HR", "NDCG", "MRR"))
PROTOCOLS = ("uni100", "full")
N_GROUPS = 10


@dataclass
class EvalConfig:
    split: str = "test"
    keep_history: bool = False  # full ranking: keep the user's earlier items as candidates
    max_len: int = 50  # histories are cut to the last max_len items, as in training
    batch_size: int = 1024
    groups: bool = True


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


@torch.no_grad()
def rank_users(model: SequentialModel, dataset: Dataset, config: EvalConfig) -> dict[str, dict[str, np.ndarray]]:
    """Per-user metrics for both protocols on config.split, in the order of dataset.eval_set(split).users."""
    was_training = model.training
    model.eval()
    evalset = dataset.eval_set(config.split)
    negatives = dataset.negatives(config.split)
    pad = dataset.n_items
    device = model.device
    table = model.item_table()
    counts = {p: ([], []) for p in PROTOCOLS}  # (greater, ties) per batch
    for lo in range(0, len(evalset.users), config.batch_size):
        users = evalset.users[lo : lo + config.batch_size]
        starts, ends = dataset.offsets[users], evalset.input_ends[lo : lo + config.batch_size]
        targets = torch.from_numpy(evalset.targets[lo : lo + config.batch_size]).to(device)
        histories = torch.from_numpy(left_padded(dataset.items, starts, ends, config.max_len, pad)).to(device)
        scores = model.encode(histories, torch.from_numpy(users).to(device)) @ table.T
        rows = torch.arange(len(users), device=device)
        target_scores = scores[rows, targets].unsqueeze(1)

        sampled = negatives[users]
        if (sampled < 0).any():
            raise DataError(f"no stored {config.split} negatives for an evaluated user", dataset.root)
        negative_scores = scores.gather(1, torch.from_numpy(sampled.astype(np.int64)).to(device))
        counts["uni100"][0].append((negative_scores > target_scores).sum(1))
        counts["uni100"][1].append((negative_scores == target_scores).sum(1))

        if not config.keep_history:
            lengths = ends - starts
            seen_rows = np.repeat(np.arange(len(users)), lengths)
            seen = dataset.items[range_indices(starts, lengths)]
            scores[torch.from_numpy(seen_rows).to(device), torch.from_numpy(seen).to(device)] = -torch.inf
        scores[rows, targets] = target_scores.squeeze(1)  # a repeated target stays a candidate
        counts["full"][0].append((scores > target_scores).sum(1))
        counts["full"][1].append((scores == target_scores).sum(1) - 1)
    model.train(was_training)
    candidates = {"uni100": negatives.shape[1] + 1, "full": dataset.n_items}
    return {p: expected_metrics(torch.cat(g).cpu().numpy(), torch.cat(t).cpu().numpy(), candidates[p])
            for p, (g, t) in counts.items()}


def evaluate(model: SequentialModel, dataset: Dataset, config: EvalConfig | None = None,
             per_user: dict[str, dict[str, np.ndarray]] | None = None) -> dict:
    """{"split", "users", "uni100": {metric: mean}, "full": {...}, "groups": [...]} for config.split.

    Pass `per_user` (from rank_users with the same config) to summarise metrics already computed.
    """
    config = config or EvalConfig()
    per_user = rank_users(model, dataset, config) if per_user is None else per_user
    result: dict = {"split": config.split, "users": int(dataset.evaluated.sum()), "keep_history": config.keep_history}
    for protocol in PROTOCOLS:
        result[protocol] = mean_metrics(per_user[protocol])
    if config.groups:
        frequency = dataset.item_frequency()
        targets = dataset.eval_set(config.split).targets
        result["groups"] = []
        for number, group in enumerate(frequency_groups(frequency), start=1):
            rows = np.isin(targets, group)
            result["groups"].append({
                "group": number, "items": len(group),
                "min_frequency": int(frequency[group].min()) if len(group) else None,
                "max_frequency": int(frequency[group].max()) if len(group) else None,
                "users": int(rows.sum()),
                **{p: mean_metrics(per_user[p], rows) for p in PROTOCOLS},
            })
    return result


def render(result: dict, console=None) -> None:
    """Print the metrics table (and the per-group table) with Rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{result['split']} split, {result['users']} users")
    table.add_column("metric")
    for protocol in PROTOCOLS:
        table.add_column(protocol, justify="right")
    for metric in METRICS:
        table.add_row(metric, *(f"{result[p][metric]:.4f}" for p in PROTOCOLS))
    console.print(table)
    if result.get("groups"):
        groups = Table(title="by target item's training frequency (group 1 = rarest)")
        for column in ("group", "train freq", "users", "uni100 HR@10", "uni100 NDCG@10", "full HR@10",
                       "full NDCG@10"):
            groups.add_column(column, justify="right")
        for g in result["groups"]:
            cells = [f"{g[p][m]:.4f}" if g[p][m] is not None else "-" for p in PROTOCOLS
                     for m in ("HR@10", "NDCG@10")]
            groups.add_row(str(g["group"]), f"{g['min_frequency']}-{g['max_frequency']}", str(g["users"]), *cells)
        console.print(groups)
