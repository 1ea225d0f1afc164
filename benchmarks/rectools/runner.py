"""Runs inside RecTools' own virtual environment (benchmarks/rectools/README.md says how it is made): train
RecTools 0.19's SASRecModel or BERT4RecModel (softmax over every item RecTools knows) on a mahn dataset's
training histories, one epoch per `fit_partial` call, within a wall-clock budget, scoring every epoch's model on
the validation users by mahn's protocol (greater/ties counts of the target under full ranking without the
history, and against mahn's stored 100 negatives; the benchmark turns them into metrics with mahn's own code),
on a clock that leaves that scoring out; then score the best epoch (by validation full NDCG@10, the expected
rank over ties as mahn's metrics take it) on the test users by mahn's protocol, with the history removed and kept.

    python runner.py WORK MODEL BUDGET_SECONDS SETTINGS_JSON

MODEL: SASRec or BERT4Rec. SETTINGS_JSON: RecTools' own arguments of that model (n_factors, n_blocks, n_heads,
dropout_rate, session_max_len, lr, batch_size, and mask_prob for BERT4Rec; any other keyword of the model class
passes through), plus threads. WORK holds eval.npz (see benchmarks/side_by_side.py's write_inputs).
Writes WORK/{MODEL}.epochs.jsonl, .valid_ranks.npz, .ranks.npz and .result.json.
"""

import json
import logging
import os
import resource
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch
from pytorch_lightning import Trainer, seed_everything
from rectools.columns import Columns
from rectools.dataset import Dataset
from rectools.models import BERT4RecModel, SASRecModel
from rectools.models.nn.transformers.constants import MASKING_VALUE, PADDING_VALUE
from rectools.models.rank import Distance
from rectools.version import VERSION

MODELS = {"SASRec": SASRecModel, "BERT4Rec": BERT4RecModel}
PATIENCE = 10  # epochs without a better validation full NDCG@10


def quiet_trainer(root: str) -> Trainer:
    """RecTools' own default Trainer (base.py `_init_trainer`), on the CPU, with Lightning's files under WORK."""
    return Trainer(max_epochs=1, min_epochs=1, deterministic=True, accelerator="cpu", devices=1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=root)


def interactions(ours) -> pd.DataFrame:
    """The training histories as RecTools' interactions: weight 1, a user's position in its history as datetime."""
    offsets, items = ours["train_offsets"], ours["train_histories"]
    lengths = np.diff(offsets)
    return pd.DataFrame({Columns.User: np.repeat(np.arange(len(lengths)), lengths), Columns.Item: items,
                         Columns.Weight: 1.0,
                         Columns.Datetime: np.arange(len(items)) - np.repeat(offsets[:-1], lengths)})


def internal_ids(model, n_items: int) -> np.ndarray:
    """mahn id -> the model's internal item id (a row of its item embeddings), -1 for an item RecTools never saw
    in the sequences it trains on. The model's map (data_preparator.item_id_map, built by process_dataset_train
    from the filtered interactions, extra tokens first) is not the input Dataset's item_id_map."""
    preparator = model.data_preparator
    external = preparator.item_id_map.external_ids
    mapping = np.full(n_items, -1, dtype=np.int64)
    known = np.arange(preparator.n_item_extra_tokens, len(external))
    mapping[external[known].astype(np.int64)] = known
    return mapping


def sessions(model, split: dict, rows: range, to_internal: np.ndarray) -> torch.Tensor:
    """RecTools' recommend input for these rows (data_preparator.transform_dataset_u2i, then the model's
    _collate_fn_recommend): the history as internal ids, items it does not know dropped, left-padded with PAD;
    SASRec keeps the last session_max_len items, BERT4Rec the last session_max_len - 1 and a MASK token."""
    preparator = model.data_preparator
    max_len = preparator.session_max_len
    mask = preparator.extra_token_ids.get(MASKING_VALUE)
    x = np.full((len(rows), max_len), preparator.extra_token_ids[PADDING_VALUE], dtype=np.int64)
    keep = max_len if mask is None else max_len - 1
    for r, u in enumerate(rows):
        history = to_internal[split["flat"][split["offsets"][u] : split["offsets"][u + 1]]]
        history = history[history >= 0]
        history = history[len(history) - min(keep, len(history)) :]
        if mask is not None:
            history = np.append(history, mask)
        x[r, max_len - len(history) :] = history
    return torch.from_numpy(x)


def item_scores(model, x: torch.Tensor, known_mahn: torch.Tensor, known_internal: torch.Tensor,
                n_items: int) -> torch.Tensor:
    """Scores of every mahn item, as RecTools' recommend computes them (lightning.py
    `_get_user_item_embeddings`, similarity.py `DistanceSimilarityModule`): the encoded session's last position
    against every item embedding; -inf for an item RecTools does not know."""
    net = model.torch_model
    items = net.item_model.get_all_embeddings()  # [n_known_items + n_extra_tokens, n_factors]
    states = net.encode_sessions({"x": x}, items)[:, -1, :]
    states = net.similarity_module.session_tower_forward(states)
    items = net.similarity_module.item_tower_forward(items)
    if net.similarity_module.distance != Distance.DOT:
        raise ValueError("only the dot-product similarity (RecTools' default) is scored here")
    scores = torch.full((len(x), n_items), -torch.inf)
    scores[:, known_mahn] = (states @ items.T)[:, known_internal]
    return scores


def rank_counts(model, split: dict, to_internal: np.ndarray, keep_history: bool = False) -> dict[str, np.ndarray]:
    """mahn's protocol on a RecTools model: per row, how many candidates score above the target and how many tie
    with it, under full ranking (the history removed, and with `keep_history` also kept) and against the stored
    negatives. `split`: offsets + flat histories, targets and negatives, all mahn ids."""
    offsets, flat, targets, negatives = (split[k] for k in ("offsets", "flat", "targets", "negatives"))
    n_items = len(to_internal)
    known_mahn = torch.from_numpy(np.flatnonzero(to_internal >= 0))
    known_internal = torch.from_numpy(to_internal[known_mahn.numpy()])
    counts = {"full_greater": [], "full_ties": [], "uni100_greater": [], "uni100_ties": []}
    if keep_history:
        counts |= {"full_kept_greater": [], "full_kept_ties": []}
    was_training = model.torch_model.training
    model.torch_model.eval()
    with torch.no_grad():
        for lo in range(0, len(targets), 256):
            rows = range(lo, min(lo + 256, len(targets)))
            scores = item_scores(model, sessions(model, split, rows, to_internal), known_mahn, known_internal,
                                 n_items)
            index = torch.arange(len(rows))
            target = torch.from_numpy(targets[lo : lo + len(rows)])
            target_scores = scores[index, target].unsqueeze(1)
            sampled = scores.gather(1, torch.from_numpy(negatives[lo : lo + len(rows)].astype(np.int64)))
            counts["uni100_greater"].append((sampled > target_scores).sum(1))
            counts["uni100_ties"].append((sampled == target_scores).sum(1))
            if keep_history:
                counts["full_kept_greater"].append((scores > target_scores).sum(1))
                counts["full_kept_ties"].append((scores == target_scores).sum(1) - 1)
            # the history leaves the candidates: NaN is neither above nor equal to any score, so a target that
            # RecTools does not know (-inf) ties with the unknown candidates only, not with the removed history
            seen = [flat[offsets[u] : offsets[u + 1]] for u in rows]
            seen_rows = torch.from_numpy(np.repeat(np.arange(len(rows)), [len(s) for s in seen]))
            scores[seen_rows, torch.from_numpy(np.concatenate(seen))] = torch.nan
            scores[index, target] = target_scores.squeeze(1)  # a repeated target stays a candidate
            counts["full_greater"].append((scores > target_scores).sum(1))
            counts["full_ties"].append((scores == target_scores).sum(1) - 1)
    model.torch_model.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in counts.items()}


def rows_without_known_history(split: dict, known: np.ndarray) -> int:
    running = np.concatenate([[0], np.cumsum(known[split["flat"]])])  # known items among the first n of flat
    return int((running[split["offsets"][1:]] == running[split["offsets"][:-1]]).sum())


def ndcg10(greater: np.ndarray, ties: np.ndarray) -> float:
    """Mean NDCG@10 with the target's rank uniform over greater..greater+ties (mahn's expected_metrics)."""
    discount = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(10) + 2))])  # discount[x]: ranks < x
    lo, hi = np.minimum(greater, 10), np.minimum(greater + ties + 1, 10)
    return float(((discount[hi] - discount[lo]) / (ties + 1)).mean())


def main() -> None:
    work, model_name, budget, settings = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
    torch.set_num_threads(settings.pop("threads", 1))
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # no "GPU available: False" lines
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    seed_everything(0, verbose=False)  # python, numpy (BERT4Rec's masking) and torch (init, shuffling)
    model = MODELS[model_name](**{"loss": "softmax", "epochs": 1, "deterministic": True, "verbose": 0,
                                  "recommend_torch_device": "cpu", **settings,
                                  "get_trainer_func": quiet_trainer, "get_trainer_func_kwargs": {"root": work}})
    ours = np.load(os.path.join(work, "eval.npz"), allow_pickle=False)
    n_items = int(ours["n_items"])
    dataset = Dataset.construct(interactions(ours))
    splits = {split: {"offsets": ours[f"{split}_offsets"], "flat": ours[f"{split}_histories"],
                      "targets": ours[f"{split}_targets"], "negatives": ours[f"{split}_negatives"]}
              for split in ("valid", "test")}

    started, scoring = time.perf_counter(), 0.0  # scoring: seconds spent on mahn's protocol, off RecTools' clock
    best = {"score": None, "epoch": None, "state": None}  # the best epoch's weights, in memory: no file to unpickle
    valid_ranks, to_internal, epoch = {}, None, 0
    with open(os.path.join(work, f"{model_name}.epochs.jsonl"), "w") as log:
        while True:
            model.fit_partial(dataset, min_epochs=1, max_epochs=1)  # resumes weights, Adam state and the trainer
            epoch += 1
            seconds = time.perf_counter() - started - scoring
            began = time.perf_counter()
            if to_internal is None:  # the model's item map exists from the first fit_partial on, and stays
                to_internal = internal_ids(model, n_items)
            counts = rank_counts(model, splits["valid"], to_internal)
            for name, values in counts.items():
                valid_ranks[f"epoch{epoch}_{name}"] = values
            score = ndcg10(counts["full_greater"], counts["full_ties"])
            if best["score"] is None or score > best["score"]:
                best.update(score=score, epoch=epoch,
                            state={k: v.detach().clone() for k, v in model.torch_model.state_dict().items()})
            scoring += time.perf_counter() - began
            log.write(json.dumps({"epoch": epoch, "seconds": seconds, "valid_full_ndcg10": score}) + "\n")
            log.flush()
            if seconds > budget or epoch - best["epoch"] >= PATIENCE:
                break
    trained_seconds = time.perf_counter() - started - scoring
    np.savez(os.path.join(work, f"{model_name}.valid_ranks.npz"), **valid_ranks)
    model.torch_model.load_state_dict(best["state"])
    np.savez(os.path.join(work, f"{model_name}.ranks.npz"),
             **rank_counts(model, splits["test"], to_internal, keep_history=True))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    known = to_internal >= 0
    result = {"model": model_name, "library": f"RecTools {VERSION}", "epochs": epoch,
              "trained_seconds": trained_seconds, "scoring_seconds": scoring, "best_epoch": best["epoch"],
              "best_valid_full_ndcg10": best["score"], "peak_rss_bytes": peak,
              "parameters": sum(p.numel() for p in model.torch_model.parameters()),
              # items and targets RecTools never trains on (it keeps each user's last session_max_len items,
              # +1 for SASRec, of users with 2 or more): scored -inf, so such a target ties with the unknown items
              "items_unknown": int((~known).sum()),
              "targets_unknown": {split: int((~known[splits[split]["targets"]]).sum()) for split in splits},
              # rows whose whole history is unknown: RecTools' recommend drops such users as cold; here they are
              # scored from a session of padding alone (BERT4Rec: the MASK token alone)
              "rows_without_known_history": {split: rows_without_known_history(splits[split], known)
                                             for split in splits},
              "settings": model.get_params(simple_types=True)}
    with open(os.path.join(work, f"{model_name}.result.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)


if __name__ == "__main__":
    main()
