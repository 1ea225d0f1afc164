"""Scoring a model on a split under both protocols: the stored uni100 negatives and full ranking over all
items (docs/protocol.md). A user's history and the candidates go through one `encode` and one matrix
product with the model's item table, in batches, on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mahn.data import Dataset, left_padded, range_indices
from mahn.errors import DataError
from mahn.evaluation.metrics import PROTOCOLS, expected_metrics, frequency_groups, mean_metrics
from mahn.models.base import MAX_LEN, SequentialModel

# the (users x items) score block of one batch stays under this many bytes: a catalogue of a million items
# is scored 64 users at a time, each user's row whole (so ties and ranks are exactly those of one product)
SCORE_BYTES = 256 << 20


@dataclass
class EvalConfig:
    split: str = "test"
    keep_history: bool = False  # full ranking: keep the user's earlier items as candidates
    max_len: int = MAX_LEN  # histories are cut to the last max_len items, as in training
    batch_size: int = 1024
    groups: bool = True
    protocols: tuple[str, ...] = PROTOCOLS  # ("uni100",) alone scores 101 candidates a user, not every item

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise DataError(f"unknown protocol(s) {', '.join(unknown) or '(none given)'}; choose from "
                            f"{', '.join(PROTOCOLS)}", "--protocols")


ROWS_IN_CACHE = 64  # score rows compared at a time: the comparison, its cast and its sum stay in the CPU's cache


def greater_and_equal(scores: torch.Tensor, target_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, how many scores are above the row's target score and how many equal it (int32).

    Row blocks that fit in cache, each summed as int32: one pass over a whole (users x items) block with the
    default int64 sum wrote 8 bytes an item and read them back, 40% of a full-ranking evaluation and 5x
    this (docs/performance.md)."""
    greater, equal = [], []
    for lo in range(0, len(scores), ROWS_IN_CACHE):
        block, target = scores[lo : lo + ROWS_IN_CACHE], target_scores[lo : lo + ROWS_IN_CACHE]
        greater.append((block > target).sum(1, dtype=torch.int32))
        equal.append((block == target).sum(1, dtype=torch.int32))
    return torch.cat(greater), torch.cat(equal)


@torch.no_grad()
def rank_users(model: SequentialModel, dataset: Dataset, config: EvalConfig) -> dict[str, dict[str, np.ndarray]]:
    """Per-user metrics for config.protocols on config.split, in the order of dataset.eval_set(split).users."""
    was_training = model.training
    model.eval()
    evalset = dataset.eval_set(config.split)
    negatives = dataset.negatives(config.split)
    pad = dataset.n_items
    device = model.device
    table = model.item_table()
    counts = {p: ([], []) for p in config.protocols}  # (greater, ties) per batch
    full = "full" in config.protocols
    batch = max(1, min(config.batch_size, SCORE_BYTES // (4 * max(1, dataset.n_items)))) if full else config.batch_size
    # users in order of history length, so a batch is padded to its own longest history, not to max_len:
    # on Phones (median 5 items) that encodes 7x fewer positions; results go back to evalset order below
    order = np.argsort(np.minimum(evalset.input_ends - dataset.offsets[evalset.users], config.max_len), kind="stable")
    for lo in range(0, len(order), batch):
        rows_here = order[lo : lo + batch]
        users = evalset.users[rows_here]
        starts, ends = dataset.offsets[users], evalset.input_ends[rows_here]
        targets = torch.from_numpy(evalset.targets[rows_here]).to(device)
        histories = torch.from_numpy(left_padded(dataset.items, starts, ends, config.max_len, pad)).to(device)
        states = model.encode(histories, torch.from_numpy(users).to(device))
        sampled = negatives[users]
        if (sampled < 0).any():
            raise DataError(f"no stored {config.split} negatives for an evaluated user", dataset.root)
        sampled = torch.from_numpy(sampled.astype(np.int64)).to(device)
        if not full:  # only the target and its negatives are scored
            candidates = torch.cat([targets.unsqueeze(1), sampled], dim=1)
            scores = torch.bmm(table[candidates], states.unsqueeze(2)).squeeze(2)
            greater, equal = greater_and_equal(scores[:, 1:], scores[:, :1])
            counts["uni100"][0].append(greater)
            counts["uni100"][1].append(equal)
            continue
        scores = states @ table.T
        rows = torch.arange(len(users), device=device)
        target_scores = scores[rows, targets].unsqueeze(1)
        if "uni100" in counts:
            greater, equal = greater_and_equal(scores.gather(1, sampled), target_scores)
            counts["uni100"][0].append(greater)
            counts["uni100"][1].append(equal)

        if not config.keep_history:
            lengths = ends - starts
            seen_rows = np.repeat(np.arange(len(users)), lengths)
            seen = dataset.items[range_indices(starts, lengths)]
            scores[torch.from_numpy(seen_rows).to(device), torch.from_numpy(seen).to(device)] = -torch.inf
        scores[rows, targets] = target_scores.squeeze(1)  # a repeated target stays a candidate
        greater, equal = greater_and_equal(scores, target_scores)
        counts["full"][0].append(greater)
        counts["full"][1].append(equal - 1)  # the target itself
    model.train(was_training)
    candidates = {"uni100": negatives.shape[1] + 1, "full": dataset.n_items}
    back = np.argsort(order)  # batch order -> evalset order
    return {p: expected_metrics(torch.cat(g).cpu().numpy()[back], torch.cat(t).cpu().numpy()[back], candidates[p])
            for p, (g, t) in counts.items()}


def evaluate(model: SequentialModel, dataset: Dataset, config: EvalConfig | None = None,
             per_user: dict[str, dict[str, np.ndarray]] | None = None) -> dict:
    """{"split", "users", "uni100": {metric: mean}, "full": {...}, "groups": [...]} for config.split, and on
    the test split of a dataset with new items, "new_items": the same metrics over the users whose target is new.

    Pass `per_user` (from rank_users with the same config) to summarise metrics already computed.
    """
    config = config or EvalConfig()
    per_user = rank_users(model, dataset, config) if per_user is None else per_user
    result: dict = {"split": config.split, "users": int(dataset.evaluated.sum()), "keep_history": config.keep_history}
    protocols = [p for p in PROTOCOLS if p in per_user]
    for protocol in protocols:
        result[protocol] = mean_metrics(per_user[protocol])
    targets = dataset.eval_set(config.split).targets
    new_items = dataset.new_items()
    if new_items is not None and config.split == "test":
        rows = np.isin(targets, new_items)
        result["new_items"] = {"items": len(new_items), "users": int(rows.sum()),
                               **{p: mean_metrics(per_user[p], rows) for p in protocols}}
    if config.groups:
        frequency = dataset.item_frequency()
        result["groups"] = []
        for number, group in enumerate(frequency_groups(frequency), start=1):
            rows = np.isin(targets, group)
            result["groups"].append({
                "group": number, "items": len(group),
                "min_frequency": int(frequency[group].min()) if len(group) else None,
                "max_frequency": int(frequency[group].max()) if len(group) else None,
                "users": int(rows.sum()),
                **{p: mean_metrics(per_user[p], rows) for p in protocols},
            })
    return result
