"""How far an item's raw content alone ranks new-item targets, with no model: on a dataset made by `mahn cold-split`,
each item scored by how many feature coordinates it shares with the user's last K items (the inner product of
its raw feature rows, every source concatenated, with their mean; docs/investigations/defaults.md section 5f).

    python scripts/raw_content_ranks.py runs/real/instruments-cold [--last 1 3 5]

For the test users whose target is new: full HR@10 (the target's rank among every item, the user's earlier items
left out as full ranking does) and HR@10 among the new items alone; for every test user, full HR@10 and NDCG@10.
Overlaps are whole numbers, so many items tie: each metric is its expectation over a random order of the tied items,
as the evaluator counts ties (mahn.evaluation.metrics).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mahn.data import Dataset
from new_item_ranks import fair, masked, new_mask


def overlaps(dataset: Dataset, split: str, last: int) -> torch.Tensor:
    """(users, items): each item's raw feature row against the mean row of the user's last `last` input items.
    Summed first and divided after, so items with the same whole-number overlap tie exactly."""
    rows = torch.from_numpy(np.concatenate([np.asarray(dataset.features(m)[0], dtype=np.float32)
                                            for m in dataset.feature_modalities()], axis=1))
    evalset = dataset.eval_set(split)
    windows = [torch.from_numpy(dataset.items[max(start, end - last):end])
               for start, end in zip(dataset.offsets[evalset.users], evalset.input_ends, strict=True)]
    sums = torch.stack([rows[window].sum(0) for window in windows])
    return (sums @ rows.T) / torch.tensor([len(window) for window in windows], dtype=torch.float32).unsqueeze(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a dataset made by `mahn cold-split`, with feature rows")
    parser.add_argument("--last", type=int, nargs="+", default=[1, 3, 5], help="history lengths K to try")
    args = parser.parse_args()
    dataset = Dataset(args.data)
    if dataset.new_items() is None:
        raise SystemExit(f"{args.data}: not a new-item split (no `cold` in manifest.json); run `mahn cold-split`")
    is_new, test = new_mask(dataset), dataset.eval_set("test")
    targets = torch.from_numpy(test.targets.astype(np.int64))
    wants_new = is_new[targets]
    new_ids = torch.cumsum(is_new, 0) - 1  # an item's column among the new items
    print(f"{args.data}: {int(is_new.sum())} new items, {int(wants_new.sum())} of {len(targets)} test users "
          f"with a new target; features {', '.join(dataset.feature_modalities())}")
    print("| last K | new targets: full HR@10 | new targets: HR@10 among new items | all users: full HR@10 | NDCG@10 |")
    print("|---|---|---|---|---|")
    for last in args.last:
        scores = masked(overlaps(dataset, "test", last), dataset, test)
        every = fair(scores, targets)
        among_new = fair(scores[wants_new][:, is_new], new_ids[targets[wants_new]])
        print(f"| {last} | {every['HR@10'][wants_new.numpy()].mean():.4f} | {among_new['HR@10'].mean():.4f} | "
              f"{every['HR@10'].mean():.4f} | {every['NDCG@10'].mean():.4f} |")


if __name__ == "__main__":
    main()
