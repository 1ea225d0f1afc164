"""A model's scores plus a share of each item's raw content overlap with the user's last items, on a dataset made by
`mahn cold-split` (docs/investigations/defaults.md section 5f): does the raw content, which ranks new targets
better than a trained model's content does (scripts/raw_content_ranks.py), lift them in the model's ranking, and
at what cost to the rest?

    python scripts/content_blend.py runs/defaults/instruments-cold/mgt-defaults [--weights 0 0.25 0.5 1 2] [--last 5]

Item j's blended score for a user is s_j + w * (f_j . mean of f over the user's last K items), f the raw
feature rows of every source side by side. Validation full NDCG@10 (every validation user; no validation
target is new on such a split) is what a weight would be chosen by; test full HR@10 and NDCG@10 over every user
and over the users whose target is new are what it costs and gains.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mahn.data import Dataset
from mahn.training import load_run
from new_item_ranks import masked_scores


def overlaps(dataset: Dataset, split: str, last: int) -> torch.Tensor:
    """(users, items): each item's raw feature row against the mean row of the user's last `last` input items."""
    rows = torch.from_numpy(np.concatenate([np.asarray(dataset.features(m)[0], dtype=np.float32)
                                            for m in dataset.feature_modalities()], axis=1))
    evalset = dataset.eval_set(split)
    queries = torch.stack([rows[torch.from_numpy(dataset.items[max(start, end - last):end])].mean(0)
                           for start, end in zip(dataset.offsets[evalset.users], evalset.input_ends, strict=True)])
    return queries @ rows.T


def metrics(scores: torch.Tensor, targets: torch.Tensor, is_new: torch.Tensor, k: int = 10) -> dict[str, float]:
    rank = (scores > scores[torch.arange(len(targets)), targets].unsqueeze(1)).sum(1)
    hit = rank < k
    gain = torch.where(hit, 1 / torch.log2(rank.float() + 2), torch.zeros(()))
    new = is_new[targets]
    return {"HR": hit.float().mean().item(), "NDCG": gain.mean().item(),
            "new HR": hit[new].float().mean().item() if new.any() else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--last", type=int, default=5)
    args = parser.parse_args()
    _, dataset, _ = load_run(args.run, device="cpu")
    print(f"{args.run}, the last {args.last} items' raw content")
    print("| weight | valid full NDCG@10 | test full HR@10 | test full NDCG@10 | new targets: full HR@10 |")
    print("|---|---|---|---|---|")
    found = {split: masked_scores(args.run, split) for split in ("valid", "test")}
    extra = {split: overlaps(dataset, split, args.last) for split in ("valid", "test")}
    for weight in args.weights:
        valid = metrics(found["valid"][0] + weight * extra["valid"], *found["valid"][1:])
        test = metrics(found["test"][0] + weight * extra["test"], *found["test"][1:])
        print(f"| {weight:g} | {valid['NDCG']:.4f} | {test['HR']:.4f} | {test['NDCG']:.4f} | {test['new HR']:.4f} |")


if __name__ == "__main__":
    main()
