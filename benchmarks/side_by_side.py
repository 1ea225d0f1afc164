"""mahn and a peer library (RecBole 1.2.1, or RecTools 0.19 with --peer rectools) side by side on one prepared
dataset, on one evaluator: every epoch of both sides is
scored on the validation users by mahn's protocol (mahn's counting code, on RecBole's model too, off RecBole's
clock), and each side's time to the best validation full NDCG@10 RecBole reaches within a budget is taken on
that one score (`same_evaluator: true`; `speedup`: RecBole's seconds over mahn's; `memory_ratio`: mahn's peak
RSS over RecBole's). Both best models' test metrics by mahn's protocol, RecBole's own test numbers, and RecBole's
model under mahn's protocol with the history kept among the candidates (as RecBole's evaluator leaves it), which
is what RecBole's own number measures. Not part of CI: it takes up to the budget per model (the two sides
train at the same time, one thread each, so both see the same machine).

    python benchmarks/side_by_side.py --dataset runs/real/phones --models sasrec,gru4rec \\
        --budget-minutes 30 --json benchmarks/results/recbole_phones.json
    python benchmarks/side_by_side.py --peer rectools --dataset runs/real/phones --models sasrec \\
        --budget-minutes 30 --json benchmarks/results/rectools_phones_sasrec.json
    python benchmarks/side_by_side.py --table RESULT.json ...      # one table of saved runs

RecTools (benchmarks/rectools/runner.py, its own venv: torch 2.13.0 CPU, rectools[torch] 0.19.0) trains a
user's last session_max_len items with a target at each position, as mahn does, so both sides get the same
users a batch; its softmax covers every item it has seen.

RecBole runs in its own virtual environment (created on first use at --venv: torch 2.13.0 CPU, recbole
1.2.1, numpy<2, pandas<2.3, scipy<1.14; its best epoch's weights are kept in memory, so no checkpoint is
ever unpickled), on atomic files written from the mahn dataset: the same users,
items, order and leave-one-out split. The same dimensions, history length and loss where both offer them;
each library keeps its own optimiser schedule and its own idea of an epoch (RecBole trains every prefix
as a sequence), which is why the comparison is time to a validation quality, not time per epoch. A RecBole
batch of 256 prefixes holds 256 training targets; a mahn batch row is a user with a target at each position,
so mahn's batch is 256 / (mean targets a user) users: both take the same number of optimiser steps an epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("recbole") / "runner.py"
PACKAGES = ["torch==2.13.0", "recbole==1.2.1", "numpy<2", "pandas<2.3", "scipy<1.14"]

RECBOLE_NAMES = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "bert4rec": "BERT4Rec", "caser": "Caser"}
# RecTools: (its settings, mahn's) with the same dimensions, blocks, history length, softmax and users a batch
RECTOOLS_MODELS = {
    "sasrec": ({"n_factors": 50, "n_blocks": 2, "n_heads": 1, "dropout_rate": 0.2, "session_max_len": 50,
                "lr": 0.001, "batch_size": 128},
               {"model": "sasrec", "dim": 50, "max_len": 50, "loss": "ce", "batch_size": 128, "lr": 0.001}),
    "bert4rec": ({"n_factors": 64, "n_blocks": 2, "n_heads": 2, "dropout_rate": 0.1, "session_max_len": 50,
                  "mask_prob": 0.6, "lr": 0.001, "batch_size": 128},
                 {"model": "bert4rec", "dim": 64, "max_len": 50, "batch_size": 128, "lr": 0.001}),
}
# (RecBole settings, mahn settings): the same architecture, history length and loss where both offer it
MODELS = {
    "sasrec": ({"hidden_size": 50, "inner_size": 50, "n_layers": 2, "n_heads": 1, "hidden_dropout_prob": 0.2,
                "attn_dropout_prob": 0.2, "MAX_ITEM_LIST_LENGTH": 50, "loss_type": "CE", "train_neg_sample_args": None,
                "train_batch_size": 256, "learning_rate": 0.001},
               {"model": "sasrec", "dim": 50, "max_len": 50, "loss": "ce", "batch_size": 256, "lr": 0.001}),
    # both with the softmax over every item (mahn's GRU4Rec keeps its output bias; RecBole's ties W to the input)
    "gru4rec": ({"embedding_size": 100, "hidden_size": 100, "num_layers": 1, "dropout_prob": 0.25,
                 "MAX_ITEM_LIST_LENGTH": 50, "loss_type": "CE", "train_neg_sample_args": None,
                 "train_batch_size": 256, "learning_rate": 0.001},
                {"model": "gru4rec", "dim": 100, "max_len": 50, "loss": "ce", "batch_size": 256, "lr": 0.001}),
    # both the paper's Beauty settings (d 64, 2 blocks, 2 heads, FFN 256, mask ratio 0.6) and the cloze softmax
    "bert4rec": ({"hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2, "hidden_dropout_prob": 0.1,
                  "attn_dropout_prob": 0.1, "hidden_act": "gelu", "mask_ratio": 0.6, "MAX_ITEM_LIST_LENGTH": 50,
                  "loss_type": "CE", "train_neg_sample_args": None, "train_batch_size": 256, "learning_rate": 0.001},
                 {"model": "bert4rec", "dim": 64, "max_len": 50, "batch_size": 256, "lr": 0.001}),
    # L = 5 items, d 50, 16 horizontal and 4 vertical filters, dropout 0.5, both with the softmax over every item
    # (mahn's for each of its T = 3 next items, RecBole's for the one next item)
    "caser": ({"embedding_size": 50, "nh": 16, "nv": 4, "dropout_prob": 0.5, "MAX_ITEM_LIST_LENGTH": 5,
               "loss_type": "CE", "train_neg_sample_args": None, "train_batch_size": 256, "learning_rate": 0.001},
              {"model": "caser", "dim": 50, "max_len": 50, "loss": "ce", "batch_size": 256, "lr": 0.001}),
}

PEERS = {"recbole": {"library": "RecBole 1.2.1", "runner": RUNNER, "packages": PACKAGES, "models": MODELS},
         "rectools": {"library": "RecTools 0.19.0", "runner": Path(__file__).with_name("rectools") / "runner.py",
                      "packages": ["torch==2.13.0", "rectools[torch]==0.19.0"], "models": RECTOOLS_MODELS}}


def ensure_venv(venv: Path, packages: list[str]) -> Path:
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)  # the CPU wheel first
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
        (venv / ".ready").touch()
    return python


def write_inputs(dataset, work: Path) -> None:
    """WORK/mahn/mahn.inter (RecBole atomic file: a user's items in mahn's order, the position as time) and
    WORK/eval.npz (every user's training items, train_offsets + train_histories, user u's at offsets u..u+1; per
    split, valid and test: users, targets, their histories and stored negatives; all as mahn ids)."""
    (work / "mahn").mkdir(parents=True, exist_ok=True)
    with open(work / "mahn" / "mahn.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user in range(dataset.n_users):
            for position, item in enumerate(dataset.history(user)):
                f.write(f"{user}\t{item}\t{position}\n")
    starts, ends = dataset.train_histories()  # what mahn trains on: every user's items before the valid target
    arrays = {"n_items": dataset.n_items, "train_offsets": np.concatenate([[0], np.cumsum(ends - starts)]),
              "train_histories": np.concatenate([dataset.items[s:e] for s, e in zip(starts, ends, strict=True)])}
    for split in ("valid", "test"):
        evalset = dataset.eval_set(split)
        starts, ends = dataset.offsets[evalset.users], evalset.input_ends
        histories = [dataset.items[s:e] for s, e in zip(starts, ends, strict=True)]
        arrays |= {f"{split}_users": evalset.users, f"{split}_targets": evalset.targets,
                   f"{split}_negatives": dataset.negatives(split)[evalset.users],
                   f"{split}_offsets": np.concatenate([[0], np.cumsum([len(h) for h in histories])]),
                   f"{split}_histories": np.concatenate(histories)}
    np.savez(work / "eval.npz", **arrays)


def positions_per_user(dataset, max_len: int) -> float:
    """Mean training positions (next-item targets) a mahn batch row holds: min(train length − 1, max_len)."""
    from mahn.training import training_users

    starts, ends = dataset.train_histories()
    users = training_users(dataset)
    return float(np.minimum(ends[users] - starts[users] - 1, max_len).mean())


def our_metrics(greater: np.ndarray, ties: np.ndarray, candidates: int) -> dict[str, float]:
    from mahn.evaluation.metrics import expected_metrics, mean_metrics

    return mean_metrics(expected_metrics(greater, ties, candidates))


def start_peer(peer: str, python: Path, work: Path, model: str, budget: float, threads: int) -> subprocess.Popen:
    settings = PEERS[peer]["models"][model][0]
    arguments = [str(work), RECBOLE_NAMES[model], str(budget), json.dumps({**settings, "threads": threads})]
    return subprocess.Popen([str(python), str(PEERS[peer]["runner"]), *arguments], cwd=work)


def peer_result(peer: str, work: Path, model: str, dataset) -> dict:
    """The peer's side: each epoch's validation full NDCG@10 by mahn's evaluator (`valid_full_ndcg10`; RecBole's
    own evaluator's beside it, `recbole_valid_full_ndcg10`), its best model's test metrics by mahn's protocol, by
    mahn's protocol with the history kept (`test_full_history_kept`), and by RecBole's own evaluator
    (`recbole_test`)."""
    name = RECBOLE_NAMES[model]
    result = json.loads((work / f"{name}.result.json").read_text())
    ranks, valid = np.load(work / f"{name}.ranks.npz"), np.load(work / f"{name}.valid_ranks.npz")
    epochs = []
    for line in (work / f"{name}.epochs.jsonl").read_text().splitlines():
        epoch = json.loads(line)
        ours = our_metrics(valid[f"epoch{epoch['epoch']}_full_greater"], valid[f"epoch{epoch['epoch']}_full_ties"],
                           dataset.n_items)
        epochs.append({"epoch": epoch["epoch"], "seconds": epoch["seconds"], "valid_full_ndcg10": ours["NDCG@10"]}
                      | ({"recbole_valid_full_ndcg10": epoch["valid_full_ndcg10"]} if peer == "recbole" else {}))
    own = ({"recbole_best_valid_full_ndcg10": result["best_valid_full_ndcg10"], "recbole_test": result["recbole_test"]}
           if peer == "recbole" else {key: result[key] for key in ("items_unknown", "targets_unknown", "settings")})
    return {"library": PEERS[peer]["library"], "epochs": epochs, "scoring_seconds_off_clock": result["scoring_seconds"],
            **own, "peak_rss_bytes": result["peak_rss_bytes"],
            "test_full": our_metrics(ranks["full_greater"], ranks["full_ties"], dataset.n_items),
            "test_uni100": our_metrics(ranks["uni100_greater"], ranks["uni100_ties"],
                                       dataset.negatives("test").shape[1] + 1),
            "test_full_history_kept": our_metrics(ranks["full_kept_greater"], ranks["full_kept_ties"],
                                                  dataset.n_items)}


def mahn_child(dataset_dir: str, run: str, budget: float, values: dict, out: str) -> None:
    """Train with mahn in this process, logging each epoch's wall time (training and validation) and
    stopping at the budget (or at patience 10); then test the best epoch. Writes OUT (JSON)."""
    import contextlib

    from mahn.evaluation import EvalConfig, evaluate
    from mahn.settings import resolve
    from mahn.training import load_run, train

    class OutOfBudget(Exception):
        pass

    epochs, started = [], time.perf_counter()

    def after_epoch(record: dict) -> None:
        epochs.append({"epoch": record["epoch"], "seconds": time.perf_counter() - started,
                       "valid_full_ndcg10": record["valid"]["full"]["NDCG@10"]})
        if epochs[-1]["seconds"] > budget:
            raise OutOfBudget

    settings = resolve(("benchmark", {"epochs": 1000, "patience": 10, "progress": False, "seed": 0, **values}))
    with contextlib.suppress(OutOfBudget):
        train(dataset_dir, run, settings, force=True, on_epoch_end=after_epoch)
    model, dataset, _ = load_run(run, device="cpu")
    test = evaluate(model, dataset, EvalConfig(split="test", groups=False))
    Path(out).write_text(json.dumps({"epochs": epochs, "peak_rss_bytes":
                                     resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                                     "test_full": test["full"], "test_uni100": test["uni100"]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", choices=list(PEERS), default="recbole")
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--models", default="sasrec,gru4rec")
    parser.add_argument("--budget-minutes", type=float, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--venv", type=Path, help="The peer's virtual environment [runs/PEER-venv].")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--same-batch-rows", action="store_true",
                        help="Give mahn RecBole's batch size in users instead of in training targets.")
    parser.add_argument("--mahn-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="Change a mahn setting of every model run (e.g. targets=1: Caser predicts one next "
                             "item, as RecBole's does); recorded in the JSON.")
    args = parser.parse_args()
    from mahn.data import Dataset

    dataset = Dataset(args.dataset)
    work = (args.work or ROOT / "runs" / args.peer / args.dataset.name).resolve()
    python = ensure_venv(args.venv or ROOT / "runs" / f"{args.peer}-venv", PEERS[args.peer]["packages"])
    models = PEERS[args.peer]["models"]
    write_inputs(dataset, work)
    budget = args.budget_minutes * 60
    report = {"peer": PEERS[args.peer]["library"], "dataset": str(args.dataset), "users": dataset.n_users,
              "items": dataset.n_items,
              "budget_seconds": budget, "threads": args.threads, "models": {}}
    for model in args.models.split(","):
        # A RecBole batch row is one prefix with one target; a mahn row is a user with a target at every
        # position. mahn's batch gets as many users as give RecBole's number of targets a step, so both take
        # the same number of optimiser steps an epoch (--same-batch-rows keeps mahn at RecBole's row count).
        ours_settings = {**models[model][1], "threads": args.threads,
                         **{k: json.loads(v) for k, v in (item.split("=", 1) for item in args.mahn_set)}}
        positions = positions_per_user(dataset, ours_settings["max_len"])
        if args.peer == "recbole" and not args.same_batch_rows:  # RecTools' batch rows are users, as mahn's
            ours_settings["batch_size"] = max(1, round(models[model][0]["train_batch_size"] / positions))
        out = work / f"mahn-{model}.json"
        # both sides train at once, one thread each, so they share whatever else the machine is doing
        processes = [start_peer(args.peer, python, work, model, budget, args.threads),
                     subprocess.Popen([sys.executable, __file__, "--mahn-child", str(args.dataset),
                                       str(work / "mahn-runs" / model), str(budget), json.dumps(ours_settings),
                                       str(out)])]
        load = os.getloadavg()
        if any(code != 0 for code in [process.wait() for process in processes]):
            raise SystemExit(f"{model}: a side failed (see its output above)")
        theirs = peer_result(args.peer, work, model, dataset)
        ours = {"library": "mahn", **json.loads(out.read_text()), "settings": ours_settings,
                "targets_per_user": positions}
        # one yardstick: RecBole's best validation score by mahn's evaluator, and each side's first epoch there
        target = max(e["valid_full_ndcg10"] for e in theirs["epochs"])
        theirs["best_valid_full_ndcg10"] = target
        theirs["seconds_to_target"], ours["seconds_to_target"] = seconds_to(theirs, target), seconds_to(ours, target)
        ours["best_valid_full_ndcg10"] = max(e["valid_full_ndcg10"] for e in ours["epochs"])
        report["models"][model] = {
            "peer": theirs, "mahn": ours, "same_evaluator": True, "target_valid_full_ndcg10": target,
            "speedup": theirs["seconds_to_target"] / ours["seconds_to_target"] if ours["seconds_to_target"] else None,
            "memory_ratio": ours["peak_rss_bytes"] / theirs["peak_rss_bytes"],
            "loadavg_at_start": load, "loadavg_at_end": os.getloadavg()}
        print_table(report)
        if args.json:  # after every model: a long run cut short keeps what it measured
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def peer_of(both: dict) -> dict:
    return both.get("peer") or both["recbole"]  # files written before RecTools joined name the side "recbole"


def seconds_to(side: dict, score: float) -> float | None:
    """The side's clock at its first epoch whose validation full NDCG@10 is at least `score`."""
    return next((e["seconds"] for e in side["epochs"] if e["valid_full_ndcg10"] >= score), None)


def print_table(report: dict) -> None:
    # A flat stretch at the top of the peer's curve makes "time to its best" swing by epochs: the time to 98%
    # of that score is printed beside it.
    print("| model | library | epochs | best valid full NDCG@10 | s to the peer's best | s to 98% of it | "
          "test full NDCG@10 | test uni100 NDCG@10 | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, both in report["models"].items():
        theirs = peer_of(both)
        near = 0.98 * theirs["best_valid_full_ndcg10"]
        their_close = seconds_to(theirs, near)
        for r in (theirs, both["mahn"]):
            reach = f"{r['seconds_to_target']:,.0f}" if r["seconds_to_target"] is not None else "not reached"
            close = seconds_to(r, near)
            reach_near = f"{close:,.0f}" if close is not None else "not reached"
            memory = f"{r['peak_rss_bytes'] / 2**30:.2f} GiB"
            if r is both["mahn"]:  # against the peer: how much sooner, what share of its memory
                if r["seconds_to_target"]:
                    reach += f" ({theirs['seconds_to_target'] / r['seconds_to_target']:.1f}x sooner)"
                if close:
                    reach_near += f" ({their_close / close:.1f}x sooner)"
                memory += f" ({r['peak_rss_bytes'] / theirs['peak_rss_bytes']:.2f}x)"
            print(f"| {model} | {r['library']} | {len(r['epochs'])} | {r['best_valid_full_ndcg10']:.4f} | {reach} | "
                  f"{reach_near} | {r['test_full']['NDCG@10']:.4f} | {r['test_uni100']['NDCG@10']:.4f} | {memory} |")
    kept = {model: peer_of(both) for model, both in report["models"].items()
            if "test_full_history_kept" in peer_of(both)}
    if kept:  # what a peer's own number measures: RecBole leaves the history among the candidates
        print("\n| model | the peer's own test full NDCG@10 | by mahn's evaluator, history kept | history removed |")
        print("|---|---|---|---|")
        for model, r in kept.items():
            own = f"{r['recbole_test']['ndcg@10']:.4f}" if "recbole_test" in r else "–"
            kept_history, removed = r["test_full_history_kept"]["NDCG@10"], r["test_full"]["NDCG@10"]
            print(f"| {model} | {own} | {kept_history:.4f} | {removed:.4f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--mahn-child":
        mahn_child(sys.argv[2], sys.argv[3], float(sys.argv[4]), json.loads(sys.argv[5]), sys.argv[6])
    elif len(sys.argv) > 1 and sys.argv[1] == "--table":  # --table RESULT.json ...: one table of saved runs
        rows = {}
        for path in sys.argv[2:]:
            for model, both in json.loads(Path(path).read_text())["models"].items():
                changed = " ".join(f"{k}={v}" for k, v in both["mahn"]["settings"].items() if k in ("loss", "targets"))
                rows[model if model not in rows else f"{model}, mahn {changed}"] = both  # a model run again
        print_table({"models": rows})
    else:
        sys.exit(main())
