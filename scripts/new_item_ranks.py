"""Where a run ranks each new-item test target: among the whole catalogue and among the new items alone, on a
dataset made by `mahn cold-split` (docs/investigations/defaults.md section 5e).

    python scripts/new_item_ranks.py runs/defaults/instruments-cold/mgt-defaults-id0.5 [more runs...] [--boosts ...]

For every test user whose target is a new item, the target's rank among every item (the user's earlier items
left out, as full ranking does) and among the new items alone. Prints HR@10 over the catalogue and the share
of these users whose target is within the first 1, 2, 3, 5 and 10 of the new items. Then the serving option
`new_item_places` (`mahn recommend --new-item-places S`), measured on every test user: the top 10 with up to S
places for the best new items (S = 1, 2), against the plain top 10: full HR@10 and NDCG@10 over all users and
over new-item targets. Last the serving option `new_item_boost` (`mahn recommend --new-item-boost B`): every
new item's score raised by B, the same numbers plus validation full NDCG@10 (what a user could choose B by; no
validation target is new on such a split) and the softmax's mass on the new items, the model's own estimate of
how often a target is new, beside how often a test target is.
"""

from __future__ import annotations

import argparse
from functools import cache

import numpy as np
import torch

from mahn.data import Dataset, EvalSet, left_padded
from mahn.evaluation.metrics import expected_metrics
from mahn.evaluation.ranking import greater_and_equal
from mahn.scoring import with_new_items
from mahn.training import load_run


@cache
def loaded(run: str) -> tuple:
    """The run's model (in eval mode), dataset and record, loaded once however many splits are scored."""
    model, dataset, record = load_run(run, device="cpu")
    model.eval()
    return model, dataset, record


def masked_scores(run: str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every `split` user's scores over the catalogue, their earlier items at -inf as full ranking leaves them out
    (a repeated target kept); the targets; which items are new. One scoring pass per run and split."""
    model, dataset, record = loaded(run)
    evalset = dataset.eval_set(split)
    starts = dataset.offsets[evalset.users]
    with torch.no_grad():
        histories = left_padded(dataset.items, starts, evalset.input_ends, record["train"]["max_len"], dataset.n_items)
        scores = model.encode(torch.from_numpy(histories), torch.from_numpy(evalset.users)) @ model.item_table().T
    return masked(scores, dataset, evalset), torch.from_numpy(evalset.targets.astype(np.int64)), new_mask(dataset)


def masked(scores: torch.Tensor, dataset: Dataset, evalset: EvalSet) -> torch.Tensor:
    """`scores` (one row per user of `evalset`) with each user's earlier items at -inf, a repeated target kept."""
    starts, ends = dataset.offsets[evalset.users], evalset.input_ends
    rows, targets = torch.arange(len(starts)), torch.from_numpy(evalset.targets.astype(np.int64))
    target_scores = scores[rows, targets].clone()
    seen = torch.from_numpy(np.concatenate([dataset.items[a:b] for a, b in zip(starts, ends, strict=True)]))
    scores[torch.repeat_interleave(rows, torch.from_numpy(ends - starts)), seen.long()] = -torch.inf
    scores[rows, targets] = target_scores
    return scores


def new_mask(dataset: Dataset) -> torch.Tensor:
    is_new = torch.zeros(dataset.n_items, dtype=torch.bool)
    is_new[torch.from_numpy(np.asarray(dataset.new_items()))] = True
    return is_new


def ranks(scores: torch.Tensor, targets: torch.Tensor, is_new: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For the users whose target is new: the target's rank among every item and among the new items."""
    rows = torch.nonzero(is_new[targets]).squeeze(1)
    target_scores = scores[rows, targets[rows]].unsqueeze(1)
    above = scores[rows] > target_scores
    return above.sum(1).numpy(), above[:, is_new].sum(1).numpy()


def with_slots(scores: torch.Tensor, targets: torch.Tensor, is_new: torch.Tensor, slots: int,
               k: int = 10) -> dict[str, float]:
    """Test HR@k and NDCG@k over all users and over new-item targets when up to `slots` places of each top k go
    to the best new items (mahn.scoring.with_new_items, the rule of `recommend --new-item-places`)."""
    new = torch.nonzero(is_new).squeeze(1)
    top = scores.topk(k, dim=1)
    best_new = scores[:, new].topk(k, dim=1)
    newness = is_new.tolist()
    places = torch.empty(len(scores), k, dtype=torch.long)
    for row in range(len(scores)):
        ranked = list(zip(top.values[row].tolist(), top.indices[row].tolist(), strict=True))
        if slots:
            ranked = with_new_items(ranked, list(zip(best_new.values[row].tolist(), new[best_new.indices[row]].tolist(),
                                                     strict=True)), slots, newness.__getitem__)
        places[row] = torch.tensor([item for _, item in ranked])
    place = (places == targets.unsqueeze(1)).float()
    hit = place.sum(1).numpy()
    gain = (place / torch.log2(torch.arange(2, k + 2).float())).sum(1).numpy()
    new_rows = is_new[targets].numpy()
    return {"HR": hit.mean(), "NDCG": gain.mean(), "new HR": hit[new_rows].mean(), "new NDCG": gain[new_rows].mean()}


def fair(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-user metrics of each row's target among the row's columns, ties counted as the evaluator counts them."""
    greater, equal = greater_and_equal(scores, scores[torch.arange(len(targets)), targets].unsqueeze(1))
    return expected_metrics(greater.numpy(), equal.numpy() - 1, scores.shape[1])  # the target itself is no tie


def new_mass(scores: torch.Tensor, is_new: torch.Tensor) -> float:
    """The softmax's probability of the new items, averaged over users: the model's share of new targets."""
    return torch.softmax(scores, 1)[:, is_new].sum(1).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--boosts", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    args = parser.parse_args()
    scored = {run: masked_scores(run) for run in args.runs}
    print("| run | users | full HR@10 | first among new items: 1 | 2 | 3 | 5 | 10 |\n|---|---|---|---|---|---|---|---|")
    for run, found in scored.items():
        among_all, among_new = ranks(*found)
        shares = " | ".join(f"{(among_new < n).mean():.4f}" for n in (1, 2, 3, 5, 10))
        print(f"| {run} | {len(among_all)} | {(among_all < 10).mean():.4f} | {shares} |")
    print("\n| run | new-item places | full HR@10 | full NDCG@10 | new targets: HR@10 | NDCG@10 |")
    print("|---|---|---|---|---|---|")
    for run, found in scored.items():
        for slots in (0, 1, 2):
            m = with_slots(*found, slots)
            print(f"| {run} | {slots} | {m['HR']:.4f} | {m['NDCG']:.4f} | {m['new HR']:.4f} | {m['new NDCG']:.4f} |")
    print("\n| run | new-item boost | valid full NDCG@10 | full HR@10 | full NDCG@10 | new targets: HR@10 | NDCG@10 "
          "| softmax mass on new items | new test targets |\n|---|---|---|---|---|---|---|---|---|")
    for run, (scores, targets, is_new) in scored.items():
        valid_scores, valid_targets, _ = masked_scores(run, "valid")
        new_rows = is_new[targets].numpy()
        for boost in args.boosts:
            raised = boost * is_new.float()
            boosted = scores + raised
            valid, m = fair(valid_scores + raised, valid_targets), fair(boosted, targets)
            cells = [valid["NDCG@10"].mean(), m["HR@10"].mean(), m["NDCG@10"].mean(), m["HR@10"][new_rows].mean(),
                     m["NDCG@10"][new_rows].mean(), new_mass(boosted, is_new), new_rows.mean()]
            print(f"| {run} | {boost:g} | " + " | ".join(f"{cell:.4f}" for cell in cells) + " |")


if __name__ == "__main__":
    main()
