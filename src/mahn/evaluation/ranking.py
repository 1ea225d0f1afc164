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
from mahn.scoring import check_boost

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
    new_item_boost: float = 0.0  # added to every new item's score (a new-item split), as `recommend` can

    def __post_init__(self) -> None:
        check_boost(self.new_item_boost, "--new-item-boost")
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise DataError(f"unknown protocol(s) {', '.join(unknown) or '(none given)'}; choose from "
                            f"{', '.join(PROTOCOLS)}", "--protocols")


# score bytes compared at a time: the rows read for the "greater" count are still in the CPU's cache for the
# "equal" one (a fixed 64 rows were 128 MiB at 500,000 items: both counts read the block from memory, 4x slower)
COMPARED_BYTES = 2 << 20


def greater_and_equal(scores: torch.Tensor, target_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, how many scores are above the row's target score and how many equal it (int32).

    Row blocks that fit in cache, each summed as int32: one pass over a whole (users x items) block with the
    default int64 sum wrote 8 bytes an item and read them back, 40% of a full-ranking evaluation and 5x
    this (docs/performance.md)."""
    greater, equal = [], []
    rows = len(scores)  # on a GPU the whole block: one kernel launch a count, not one a row
    if scores.device.type == "cpu":  # the budget is a CPU cache's
        rows = min(rows, COMPARED_BYTES // max(1, scores.element_size() * scores.shape[1]))
    rows = max(1, rows)
    compared = torch.empty(rows, scores.shape[1], dtype=torch.bool, device=scores.device)
    for lo in range(0, len(scores), rows):
        block, target = scores[lo : lo + rows], target_scores[lo : lo + rows]
        into = compared[: len(block)]
        greater.append(torch.gt(block, target, out=into).sum(1, dtype=torch.int32))
        equal.append(torch.eq(block, target, out=into).sum(1, dtype=torch.int32))
    return torch.cat(greater), torch.cat(equal)


def new_item_boosts(dataset: Dataset, boost: float, device: torch.device) -> torch.Tensor | None:
    """What each item's score gets added: `boost` for the dataset's new items, 0 for the rest (None: no boost)."""
    if not boost:
        return None
    new = dataset.new_items()
    if new is None:
        raise DataError("a new-item boost needs a dataset with new items (made by `mahn cold-split`)",
                        "--new-item-boost")
    added = torch.zeros(dataset.n_items, device=device)
    added[torch.from_numpy(np.asarray(new, dtype=np.int64)).to(device)] = boost
    return added


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
    boost = new_item_boosts(dataset, config.new_item_boost, device)
    n_users = len(evalset.users)
    # per protocol, each user's count of candidates scored above the target and of those tied with it
    counts = {p: (np.zeros(n_users, np.int64), np.zeros(n_users, np.int64)) for p in config.protocols}
    full = "full" in config.protocols
    batch = max(1, min(config.batch_size, SCORE_BYTES // (4 * max(1, dataset.n_items)))) if full else config.batch_size
    # Users by history length, longest first: a batch is padded to its own longest history, not to max_len (on
    # Phones, median 5 items, that encodes 7x fewer positions). Longest first, because each later batch then
    # asks for less memory than the one before and reuses it: shortest first grew the heap batch by batch.
    lengths = np.minimum(evalset.input_ends - dataset.offsets[evalset.users], config.max_len)
    order = np.argsort(-lengths, kind="stable")
    # one score block for every batch: allocated and freed per batch, hundreds of MiB each time, it fragmented
    # the heap until the process held 5.9 GiB on a 3M-interaction log (docs/performance.md)
    block = torch.empty(min(batch, n_users), dataset.n_items, device=device) if full else None
    # uni100 alone: one buffer for every batch's candidate vectors, instead of a fresh 62 MB gather per batch
    gathered = None if full else table.new_empty(min(batch, n_users) * (negatives.shape[1] + 1), table.shape[1])
    for lo in range(0, n_users, batch):
        rows_here = order[lo : lo + batch]

        def keep(protocol: str, greater: torch.Tensor, equal: torch.Tensor, rows: np.ndarray = rows_here) -> None:
            counts[protocol][0][rows] = greater.cpu().numpy()
            counts[protocol][1][rows] = equal.cpu().numpy()

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
            vectors = torch.index_select(table, 0, candidates.view(-1), out=gathered[: candidates.numel()])
            scores = torch.bmm(vectors.view(*candidates.shape, -1), states.unsqueeze(2)).squeeze(2)
            if boost is not None:
                scores += boost[candidates]
            keep("uni100", *greater_and_equal(scores[:, 1:], scores[:, :1]))
            continue
        scores = torch.mm(states, table.T, out=block[: len(users)])
        if boost is not None:
            scores += boost
        rows = torch.arange(len(users), device=device)
        target_scores = scores[rows, targets].unsqueeze(1)
        if "uni100" in counts:
            keep("uni100", *greater_and_equal(scores.gather(1, sampled), target_scores))
        if not config.keep_history:
            seen_lengths = ends - starts
            seen_rows = np.repeat(np.arange(len(users)), seen_lengths)
            seen = dataset.items[range_indices(starts, seen_lengths)]
            scores[torch.from_numpy(seen_rows).to(device), torch.from_numpy(seen).to(device)] = -torch.inf
        scores[rows, targets] = target_scores.squeeze(1)  # a repeated target stays a candidate
        greater, equal = greater_and_equal(scores, target_scores)
        keep("full", greater, equal - 1)  # the target itself is no tie
    model.train(was_training)
    candidates = {"uni100": negatives.shape[1] + 1, "full": dataset.n_items}
    return {p: expected_metrics(greater, ties, candidates[p]) for p, (greater, ties) in counts.items()}


def evaluate(model: SequentialModel, dataset: Dataset, config: EvalConfig | None = None,
             per_user: dict[str, dict[str, np.ndarray]] | None = None) -> dict:
    """{"split", "users", "uni100": {metric: mean}, "full": {...}, "groups": [...]} for config.split, and on
    the test split of a dataset with new items, "new_items": the same metrics over the users whose target is new.

    Pass `per_user` (from rank_users with the same config) to summarise metrics already computed.
    """
    config = config or EvalConfig()
    per_user = rank_users(model, dataset, config) if per_user is None else per_user
    result: dict = {"split": config.split, "users": int(dataset.evaluated.sum()), "keep_history": config.keep_history}
    if config.new_item_boost:
        result["new_item_boost"] = config.new_item_boost
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
