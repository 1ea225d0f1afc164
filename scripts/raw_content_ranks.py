"""How far an item's raw content alone ranks new-item targets, with no model: on a dataset made by `mahn cold-split`,
each item scored by how many feature coordinates it shares with the user's last K items (the inner product of
its raw feature rows, every source concatenated, with their mean; docs/investigations/defaults.md section 5f).

    python scripts/raw_content_ranks.py runs/real/instruments-cold [--last 1 3 5]

For the test users whose target is new: full HR@10 (the target's rank among every item, the user's earlier items
left out as full ranking does) and HR@10 among the new items alone; for every test user, full HR@10 and NDCG@10.
Overlaps are whole numbers, so many items tie: each metric is its expectation over a random order of the tied items.
"""

from __future__ import annotations

import argparse

import numpy as np

from mahn.data import Dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a dataset made by `mahn cold-split`, with feature rows")
    parser.add_argument("--last", type=int, nargs="+", default=[1, 3, 5], help="history lengths K to try")
    args = parser.parse_args()
    dataset = Dataset(args.data)
    new = dataset.new_items()
    if new is None:
        raise SystemExit(f"{args.data}: not a new-item split (no `cold` in manifest.json); run `mahn cold-split`")
    rows = np.concatenate([np.asarray(dataset.features(m)[0], dtype=np.float32) for m in dataset.feature_modalities()],
                          axis=1)
    is_new = np.zeros(dataset.n_items, dtype=bool)
    is_new[new] = True
    test = dataset.eval_set("test")
    starts = dataset.offsets[test.users]
    print(f"{args.data}: {len(new)} new items, {int(is_new[test.targets].sum())} of {len(test.users)} test users "
          f"with a new target; features {', '.join(dataset.feature_modalities())} ({rows.shape[1]} columns)")
    print("| last K | new targets: full HR@10 | new targets: HR@10 among new items | all users: full HR@10 | NDCG@10 |")
    print("|---|---|---|---|---|")
    gain = 1 / np.log2(np.arange(2, 12))  # NDCG@10's gain at ranks 0..9
    wants_new = is_new[test.targets]
    for last in args.last:
        hit, hit_new, ndcg = (np.empty(len(test.users)) for _ in range(3))
        for block in range(0, len(test.users), 1024):
            rows_of = slice(block, block + 1024)
            queries = np.stack([rows[dataset.items[max(start, end - last):end]].mean(0)
                                for start, end in zip(starts[rows_of], test.input_ends[rows_of], strict=True)])
            scores = queries @ rows.T
            for row, (start, end, target) in enumerate(zip(starts[rows_of], test.input_ends[rows_of],
                                                           test.targets[rows_of], strict=True)):
                earlier = dataset.items[start:end]
                scores[row, earlier[earlier != target]] = -np.inf
                own = scores[row, target]
                above, tied = scores[row] > own, scores[row] == own
                tied[target] = False
                for into, among in ((0, None), (1, is_new)):
                    greater = int(above[among].sum() if among is not None else above.sum())
                    ties = int(tied[among].sum() if among is not None else tied.sum())
                    # the target's rank is uniform over greater .. greater + ties
                    share = max(0, min(10 - greater, ties + 1)) / (ties + 1)
                    (hit if into == 0 else hit_new)[block + row] = share
                    if into == 0:
                        places = range(greater, min(10, greater + ties + 1))
                        ndcg[block + row] = sum(gain[p] for p in places) / (ties + 1)
        print(f"| {last} | {hit[wants_new].mean():.4f} | {hit_new[wants_new].mean():.4f} | "
              f"{hit.mean():.4f} | {ndcg.mean():.4f} |")

if __name__ == "__main__":
    main()
