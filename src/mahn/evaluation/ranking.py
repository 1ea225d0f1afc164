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
from mahn.evaluation.metrics import CUTOFFS, PROTOCOLS, expected_metrics, frequency_groups, mean_metrics
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


# Full ranking first scores each batch against the SCREEN_ITEMS most-bought items (catalogues of MIN_SCREENED or more
# only): a user whose target at least CUTOFF of them certainly outscore gets 0 on every metric (they stop at rank
# CUTOFF) without the catalogue being scored. Only the rest are ranked against every item.
CUTOFF = max(CUTOFFS)
SCREEN_ITEMS = 4096
MIN_SCREENED = 4 * SCREEN_ITEMS


class Screen:
    """The screen of full ranking: the head items' vectors (and boosts), gathered once per evaluation."""

    def __init__(self, table: torch.Tensor, frequency: np.ndarray, boost: torch.Tensor | None):
        head = torch.from_numpy(np.argsort(-frequency, kind="stable")[:SCREEN_ITEMS].copy()).to(table.device)
        self.table, self.boost = table, boost
        self.head_table = table[head]
        self.head_boost = None if boost is None else boost[head]
        self.position = torch.full((len(table),), -1, dtype=torch.long, device=table.device)  # item -> head column
        self.position[head] = torch.arange(len(head), device=table.device)
        # Two float32 dot products of length d (the screen's and the full product's, summed in any order) differ
        # from the true one by at most d * u * |s| * |e| each (u: the unit roundoff of the product's precision),
        # so a head item that leads the target by 4 * d * u * |s| * (the longest |e|) leads it in the full product
        # too. TF32 products (a GPU allowed to use them) round to 10 bits.
        unit = torch.finfo(table.dtype).eps / 2
        if table.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
            unit = max(unit, 2.0**-11)
        self.relative_margin = 8 * table.shape[1] * unit  # twice the bound, for the rounding of the margin itself
        self.longest = float(table.norm(dim=1).max())
        self.largest_boost = 0.0 if boost is None else float(boost.abs().max())

    def certainly_above(self, states: torch.Tensor, targets: torch.Tensor, seen_rows: torch.Tensor | None,
                        seen_items: torch.Tensor | None) -> torch.Tensor:
        """Per user, how many head items (not in the history, when seen_* are given) certainly outscore the
        target in the full product (a lower bound on the target's count of items above it)."""
        scores = torch.mm(states, self.head_table.T)
        target = (states * self.table[targets]).sum(1)
        if self.boost is not None:
            scores += self.head_boost
            target += self.boost[targets]
        margin = self.relative_margin * (states.norm(dim=1) * self.longest + self.largest_boost)
        if seen_rows is not None:
            column = self.position[seen_items]
            inside = column >= 0
            scores[seen_rows[inside], column[inside]] = -torch.inf
        return (scores > (target + margin).unsqueeze(1)).sum(1, dtype=torch.int32)


@torch.no_grad()
def rank_users(model: SequentialModel, dataset: Dataset, config: EvalConfig,
               tally: dict | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per-user metrics for config.protocols on config.split, in the order of dataset.eval_set(split).users.
    With full ranking, `tally` (if given) gets "screened_out": how many users the screen gave 0 unranked."""
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
    screen = Screen(table, dataset.item_frequency(), boost) if full and dataset.n_items >= MIN_SCREENED else None
    # Users by history length, longest first: a batch is padded to its own longest history, not to max_len (on
    # Phones, median 5 items, that encodes 7x fewer positions). Longest first, because each later batch then
    # asks for less memory than the one before and reuses it: shortest first grew the heap batch by batch.
    lengths = np.minimum(evalset.input_ends - dataset.offsets[evalset.users], config.max_len)
    order = np.argsort(-lengths, kind="stable")
    # full ranking scores a user's row whole (so ranks and ties are those of one product), as many rows at a time
    # as the budget allows, into one block for every batch: allocated and freed per batch, hundreds of MiB each
    # time, it fragmented the heap until the process held 5.9 GiB on a 3M-interaction log (docs/performance.md)
    block_rows = max(1, min(config.batch_size, SCORE_BYTES // (4 * max(1, dataset.n_items)), n_users))
    block = torch.empty(block_rows, dataset.n_items, device=device) if full else None
    # one buffer for every batch's uni100 candidate vectors, instead of a fresh 62 MB gather per batch
    gathered = table.new_empty(min(config.batch_size, n_users) * (negatives.shape[1] + 1), table.shape[1])

    def keep(protocol: str, rows: np.ndarray, greater: torch.Tensor, equal: torch.Tensor) -> None:
        counts[protocol][0][rows] = greater.cpu().numpy()
        counts[protocol][1][rows] = equal.cpu().numpy()

    def seen_pairs(starts: np.ndarray, ends: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, item) of every item in each row's history (its whole history, not only the model's window)."""
        seen_lengths = ends - starts
        rows = np.repeat(np.arange(len(starts)), seen_lengths)
        items = dataset.items[range_indices(starts, seen_lengths)]
        return torch.from_numpy(rows).to(device), torch.from_numpy(items).to(device)

    screened_out = 0
    for lo in range(0, n_users, config.batch_size):
        rows_here = order[lo : lo + config.batch_size]
        users = evalset.users[rows_here]
        starts, ends = dataset.offsets[users], evalset.input_ends[rows_here]
        targets = torch.from_numpy(evalset.targets[rows_here]).to(device)
        histories = torch.from_numpy(left_padded(dataset.items, starts, ends, config.max_len, pad)).to(device)
        states = model.encode(histories, torch.from_numpy(users).to(device))
        if "uni100" in counts:  # only the target and its negatives are scored, whether or not full ranking is
            sampled = negatives[users]
            if (sampled < 0).any():
                raise DataError(f"no stored {config.split} negatives for an evaluated user", dataset.root)
            candidates = torch.cat([targets.unsqueeze(1), torch.from_numpy(sampled.astype(np.int64)).to(device)], 1)
            vectors = torch.index_select(table, 0, candidates.view(-1), out=gathered[: candidates.numel()])
            scores = torch.bmm(vectors.view(*candidates.shape, -1), states.unsqueeze(2)).squeeze(2)
            if boost is not None:
                scores += boost[candidates]
            keep("uni100", rows_here, *greater_and_equal(scores[:, 1:], scores[:, :1]))
        if not full:
            continue
        ranked = np.arange(len(users))  # the batch's rows still to rank against the whole catalogue
        if screen is not None:
            seen = (None, None) if config.keep_history else seen_pairs(starts, ends)
            above = screen.certainly_above(states, targets, *seen)
            out = (above >= CUTOFF).cpu().numpy()
            keep("full", rows_here[out], above[torch.from_numpy(out).to(device)], torch.zeros(int(out.sum())))
            ranked = ranked[~out]
            screened_out += int(out.sum())
        for sub in range(0, len(ranked), block_rows):
            part = ranked[sub : sub + block_rows]
            index = torch.from_numpy(part).to(device)
            scores = torch.mm(states[index], table.T, out=block[: len(part)])
            if boost is not None:
                scores += boost
            rows = torch.arange(len(part), device=device)
            part_targets = targets[index]
            target_scores = scores[rows, part_targets].unsqueeze(1)
            if not config.keep_history:
                scores[seen_pairs(starts[part], ends[part])] = -torch.inf
            scores[rows, part_targets] = target_scores.squeeze(1)  # a repeated target stays a candidate
            greater, equal = greater_and_equal(scores, target_scores)
            keep("full", rows_here[part], greater, equal - 1)  # the target itself is no tie
    model.train(was_training)
    if tally is not None and full:
        tally["screened_out"] = screened_out
    candidates = {"uni100": negatives.shape[1] + 1, "full": dataset.n_items}
    return {p: expected_metrics(greater, ties, candidates[p]) for p, (greater, ties) in counts.items()}


def evaluate(model: SequentialModel, dataset: Dataset, config: EvalConfig | None = None,
             per_user: dict[str, dict[str, np.ndarray]] | None = None) -> dict:
    """{"split", "users", "uni100": {metric: mean}, "full": {...}, "groups": [...]} for config.split, and on
    the test split of a dataset with new items, "new_items": the same metrics over the users whose target is new.

    Pass `per_user` (from rank_users with the same config) to summarise metrics already computed.
    """
    config = config or EvalConfig()
    tally: dict = {}
    per_user = rank_users(model, dataset, config, tally) if per_user is None else per_user
    result: dict = {"split": config.split, "users": int(dataset.evaluated.sum()), "keep_history": config.keep_history}
    if "screened_out" in tally:  # users whose target the screen put below the top 20 without ranking the catalogue
        result["screened_out"] = tally["screened_out"]
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
