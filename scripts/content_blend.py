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

import torch

from new_item_ranks import fair, loaded, masked_scores
from raw_content_ranks import overlaps


def metrics(scores: torch.Tensor, targets: torch.Tensor, is_new: torch.Tensor) -> dict[str, float]:
    per_user, new = fair(scores, targets), is_new[targets].numpy()
    return {"HR": per_user["HR@10"].mean(), "NDCG": per_user["NDCG@10"].mean(),
            "new HR": per_user["HR@10"][new].mean() if new.any() else float("nan")}  # no new validation target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--last", type=int, default=5)
    args = parser.parse_args()
    _, dataset, _ = loaded(args.run)
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
