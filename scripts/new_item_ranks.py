"""Where a run ranks each new-item test target: among the whole catalogue and among the new items alone, on a
dataset made by `mahn cold-split` (docs/investigations/defaults.md section 5e).

    python scripts/new_item_ranks.py runs/defaults/instruments-cold/mgt-id0.5 [more runs...]

For every test user whose target is a new item, the target's rank among every item (the user's earlier items
left out, as full ranking does) and among the new items alone. Prints HR@10 over the catalogue and the share
of these users whose target is within the first 1, 2, 3, 5 and 10 of the new items. Then a serving policy,
measured on every test user: the top 10 with its last S places given to the best new items not already in
it (S = 1, 2), against the plain top 10: full HR@10 and NDCG@10 over all users and over new-item targets.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from mahn.data import left_padded
from mahn.training import load_run


def ranks(run: str) -> tuple[np.ndarray, np.ndarray]:
    model, dataset, record = load_run(run, device="cpu")
    model.eval()
    new = np.asarray(dataset.new_items())
    evalset = dataset.eval_set("test")
    rows = np.isin(evalset.targets, new)
    users, ends, targets = evalset.users[rows], evalset.input_ends[rows], evalset.targets[rows]
    starts = dataset.offsets[users]
    with torch.no_grad():
        histories = left_padded(dataset.items, starts, ends, record["train"]["max_len"], dataset.n_items)
        scores = model.encode(torch.from_numpy(histories), torch.from_numpy(users)) @ model.item_table().T
    among_all, among_new = [], []
    for row, (start, end, target) in enumerate(zip(starts, ends, targets, strict=True)):
        score = scores[row].clone()
        target_score = score[target].item()
        score[torch.from_numpy(dataset.items[start:end].astype(np.int64))] = -torch.inf
        score[target] = target_score
        among_all.append(int((score > target_score).sum()))
        among_new.append(int((score[torch.from_numpy(new)] > target_score).sum()))
    return np.array(among_all), np.array(among_new)


def with_slots(run: str, slots: int, k: int = 10) -> dict[str, float]:
    """Test HR@k and NDCG@k over all users and over new-item targets when the last `slots` places of each top k
    go to the best new items not already in it (the history left out, as in full ranking)."""
    model, dataset, record = load_run(run, device="cpu")
    model.eval()
    new = torch.from_numpy(np.asarray(dataset.new_items()))
    is_new = torch.zeros(dataset.n_items, dtype=torch.bool)
    is_new[new] = True
    evalset = dataset.eval_set("test")
    hits, gains, new_rows = [], [], np.isin(evalset.targets, new.numpy())
    for lo in range(0, len(evalset.users), 1024):
        users, ends = evalset.users[lo : lo + 1024], evalset.input_ends[lo : lo + 1024]
        starts, targets = dataset.offsets[users], torch.from_numpy(evalset.targets[lo : lo + 1024].astype(np.int64))
        with torch.no_grad():
            histories = left_padded(dataset.items, starts, ends, record["train"]["max_len"], dataset.n_items)
            scores = model.encode(torch.from_numpy(histories), torch.from_numpy(users)) @ model.item_table().T
        for row, (start, end) in enumerate(zip(starts, ends, strict=True)):
            seen = torch.from_numpy(dataset.items[start:end].astype(np.int64))
            target_score = scores[row, targets[row]].item()
            scores[row, seen] = -torch.inf
            scores[row, targets[row]] = target_score
        top = scores.topk(k, dim=1).indices
        if slots:
            best_new = new[scores[:, new].topk(k, dim=1).indices]
            for row in range(len(top)):
                listed, already = top[row].tolist(), int(is_new[top[row]].sum())
                missing = [i for i in best_new[row].tolist() if i not in listed][: max(0, slots - already)]
                if missing:
                    keep = [i for i in listed if not is_new[i]][: k - len(missing) - already]
                    kept_new = [i for i in listed if is_new[i]]
                    merged = sorted(keep + kept_new, key=lambda i: -scores[row, i].item()) + missing
                    top[row] = torch.tensor(merged[:k])
        place = (top == targets.unsqueeze(1)).float()
        hits.append(place.sum(1).numpy())
        gains.append((place / torch.log2(torch.arange(2, k + 2).float())).sum(1).numpy())
    hit, gain = np.concatenate(hits), np.concatenate(gains)
    return {"HR": hit.mean(), "NDCG": gain.mean(), "new HR": hit[new_rows].mean(), "new NDCG": gain[new_rows].mean()}


def main() -> None:
    print("| run | users | full HR@10 | first among new items: 1 | 2 | 3 | 5 | 10 |\n|---|---|---|---|---|---|---|---|")
    for run in sys.argv[1:]:
        among_all, among_new = ranks(run)
        shares = " | ".join(f"{(among_new < n).mean():.4f}" for n in (1, 2, 3, 5, 10))
        print(f"| {run} | {len(among_all)} | {(among_all < 10).mean():.4f} | {shares} |")
    print("\n| run | new-item places | full HR@10 | full NDCG@10 | new targets: HR@10 | NDCG@10 |")
    print("|---|---|---|---|---|---|")
    for run in sys.argv[1:]:
        for slots in (0, 1, 2):
            m = with_slots(run, slots)
            print(f"| {run} | {slots} | {m['HR']:.4f} | {m['NDCG']:.4f} | {m['new HR']:.4f} | {m['new NDCG']:.4f} |")


if __name__ == "__main__":
    main()
