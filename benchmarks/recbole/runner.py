"""Runs inside RecBole's own virtual environment (benchmarks/side_by_side.py creates it): train one
RecBole model on atomic files written from a mahn dataset, within a wall-clock budget, scoring every epoch's
model on the validation users by mahn's protocol too (greater/ties counts of the target under full ranking
without the history, and against mahn's stored 100 negatives; the benchmark turns them into metrics with mahn's
own code), on a clock that leaves that scoring out; then score the best validation checkpoint (RecBole's own
rule) on the test users by RecBole's evaluator and by mahn's protocol, with the history removed and kept.

    python runner.py WORK MODEL BUDGET_SECONDS SETTINGS_JSON
"""

import contextlib
import json
import os
import resource
import sys
import time

import numpy as np
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import get_model, get_trainer, init_seed


class OutOfBudget(Exception):
    pass


def internal_ids(dataset, field: str) -> np.ndarray:
    """mahn id (RecBole's token) -> RecBole's internal id, for `field` (item_id, user_id); 0 is RecBole's pad."""
    tokens = dataset.field2id_token[field]
    mapping = np.zeros(max(int(token) for token in tokens[1:]) + 1, dtype=np.int64)
    for internal, token in enumerate(tokens[1:], start=1):
        mapping[int(token)] = internal
    return mapping


def rank_counts(model, split: dict, keep_history: bool = False) -> dict[str, np.ndarray]:
    """mahn's protocol on a RecBole model: per user, how many candidates score above the target and how many tie
    with it, under full ranking (the history removed, and with `keep_history` also kept) and against the stored
    negatives. `split`: users, histories (offsets + flat) and targets as RecBole internal ids."""
    users, offsets, flat, targets, negatives = (split[k] for k in ("users", "offsets", "flat", "targets", "negatives"))
    max_len = model.max_seq_length
    counts = {"full_greater": [], "full_ties": [], "uni100_greater": [], "uni100_ties": []}
    if keep_history:
        counts |= {"full_kept_greater": [], "full_kept_ties": []}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(targets), 512):
            rows = range(lo, min(lo + 512, len(targets)))
            seqs = np.zeros((len(rows), max_len), dtype=np.int64)
            lengths = np.zeros(len(rows), dtype=np.int64)
            for r, u in enumerate(rows):
                history = flat[offsets[u] : offsets[u + 1]][-max_len:]
                seqs[r, : len(history)] = history  # RecBole's sequences are right-padded
                lengths[r] = len(history)
            interaction = Interaction({model.USER_ID: users[lo : lo + len(rows)],
                                       model.ITEM_SEQ: torch.from_numpy(seqs),
                                       model.ITEM_SEQ_LEN: torch.from_numpy(lengths)})
            scores = model.full_sort_predict(interaction).view(len(rows), -1)
            index = torch.arange(len(rows))
            target = torch.from_numpy(targets[lo : lo + len(rows)])
            target_scores = scores[index, target].unsqueeze(1)
            sampled = scores.gather(1, torch.from_numpy(negatives[lo : lo + len(rows)]))
            counts["uni100_greater"].append((sampled > target_scores).sum(1))
            counts["uni100_ties"].append((sampled == target_scores).sum(1))
            scores[:, 0] = -torch.inf  # RecBole's padding item
            if keep_history:  # RecBole's own full-sort evaluation of a sequential model leaves the history in
                counts["full_kept_greater"].append((scores > target_scores).sum(1))
                counts["full_kept_ties"].append((scores == target_scores).sum(1) - 1)
            for r, u in enumerate(rows):
                scores[r, torch.from_numpy(flat[offsets[u] : offsets[u + 1]])] = -torch.inf
            scores[index, target] = target_scores.squeeze(1)
            counts["full_greater"].append((scores > target_scores).sum(1))
            counts["full_ties"].append((scores == target_scores).sum(1) - 1)
    model.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in counts.items()}


def main() -> None:
    work, model_name, budget, settings = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
    torch.set_num_threads(settings.pop("threads", 1))
    config = Config(model=model_name, dataset="mahn", config_dict={
        "data_path": work,
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Recall", "NDCG"], "topk": [10], "valid_metric": "NDCG@10",
        "epochs": 10_000, "stopping_step": 10, "eval_step": 1, "show_progress": False,
        "seed": 0, "reproducibility": True, "device": "cpu", "use_gpu": False, **settings})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(model_name)(config, train_data.dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)

    # mahn's splits as RecBole internal ids: histories, targets and stored negatives of the valid and test users
    ours = np.load(os.path.join(work, "eval.npz"), allow_pickle=False)
    to_item, to_user = internal_ids(dataset, "item_id"), internal_ids(dataset, "user_id")
    splits = {split: {"users": torch.from_numpy(to_user[ours[f"{split}_users"]]),  # Caser reads a user embedding
                      "offsets": ours[f"{split}_offsets"], "flat": to_item[ours[f"{split}_histories"]],
                      "targets": to_item[ours[f"{split}_targets"]], "negatives": to_item[ours[f"{split}_negatives"]]}
              for split in ("valid", "test")}

    started, scoring = time.perf_counter(), 0.0  # scoring: seconds spent on mahn's protocol, off RecBole's clock
    best = {"score": None, "state": None}  # the best epoch's weights, kept in memory: no checkpoint file to unpickle
    valid_ranks = {}

    def after_epoch(epoch, valid_score):
        nonlocal scoring
        seconds = time.perf_counter() - started - scoring
        began = time.perf_counter()
        for name, values in rank_counts(model, splits["valid"]).items():
            valid_ranks[f"epoch{epoch + 1}_{name}"] = values
        scoring += time.perf_counter() - began
        log.write(json.dumps({"epoch": epoch + 1, "seconds": seconds, "valid_full_ndcg10": valid_score}) + "\n")
        log.flush()
        if best["score"] is None or valid_score > best["score"]:  # RecBole's own rule for its best epoch
            best.update(score=valid_score, state={k: v.detach().clone() for k, v in model.state_dict().items()})
        if seconds > budget:
            raise OutOfBudget

    with open(os.path.join(work, f"{model_name}.epochs.jsonl"), "w") as log, contextlib.suppress(OutOfBudget):
        trainer.fit(train_data, valid_data, saved=False, show_progress=False, callback_fn=after_epoch)
    trained_seconds = time.perf_counter() - started - scoring
    np.savez(os.path.join(work, f"{model_name}.valid_ranks.npz"), **valid_ranks)
    model.load_state_dict(best["state"])
    model.eval()
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    np.savez(os.path.join(work, f"{model_name}.ranks.npz"), **rank_counts(model, splits["test"], keep_history=True))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"model": model_name, "trained_seconds": trained_seconds, "scoring_seconds": scoring,
              "best_valid_full_ndcg10": best["score"],
              "recbole_test": {k: float(v) for k, v in test.items()}, "peak_rss_bytes": peak,
              "parameters": sum(p.numel() for p in model.parameters())}
    with open(os.path.join(work, f"{model_name}.result.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
