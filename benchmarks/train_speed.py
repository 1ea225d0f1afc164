"""Speed of one MAHN cat-cat training epoch (d=50, max_len 50) and of full-ranking evaluation on Amazon Phones.

Features are random (4096-d visual as VGG16 fc7, 768-d text as BERT): only the timing matters.
Run: .venv/bin/python benchmarks/train_speed.py [--batch-sizes 128 256 512] [--threads 2]
Prints a table and writes benchmarks/results/train_speed.json. Targets: epoch <= 60 s, peak RSS
< 4 GiB, full-ranking evaluation of all users < 10 s, on 2 cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mahn.data import Dataset
from mahn.data.prepare import PrepareConfig, prepare
from mahn.evaluation import EvalConfig, evaluate
from mahn.io import read_json, save_npy, write_json
from mahn.models import build_model
from mahn.settings import resolve
from mahn.training import make_optimizer, train_epoch, training_users

PHONES = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2014-phones" / "user_sequence.txt"
RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"


def prepare_phones(out: Path) -> None:
    prepare(PHONES, "sequences", out, PrepareConfig(seed=0))
    manifest = read_json(out / "manifest.json")
    rng = np.random.default_rng(0)
    n_items = manifest["counts"]["items"]
    manifest["features"] = {}
    for modality, dim in (("image", 4096), ("text", 768)):
        save_npy(out / "features" / f"{modality}.npy", rng.standard_normal((n_items, dim), dtype=np.float32)
                 .astype(np.float16))
        save_npy(out / "features" / f"{modality}.mask.npy", np.ones(n_items, dtype=bool))
        manifest["features"][modality] = {"dim": dim, "encoder": "random (benchmark)"}
    write_json(out / "manifest.json", manifest)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def one_epoch(dataset: Dataset, batch_size: int) -> dict:
    """One epoch through the trainer's own `train_epoch`, then full-ranking evaluation of the test split."""
    torch.manual_seed(0)
    settings = resolve(("benchmark", {"model": "mahn", "dim": 50, "variant": "cat-cat", "batch_size": batch_size,
                                      "max_len": 50, "progress": False}))
    model = build_model("mahn", settings.model_config, dataset)
    optimizer, _ = make_optimizer(model, settings.train)
    epoch = train_epoch(model, optimizer, dataset, training_users(dataset), settings.train, np.random.default_rng(0))
    started = time.perf_counter()
    result = evaluate(model, dataset, EvalConfig(split="test", max_len=50, groups=False))
    eval_seconds = time.perf_counter() - started
    return {"batch_size": batch_size, "epoch_seconds": epoch["seconds"], "sequences": epoch["sequences"],
            "sequences_per_second": epoch["sequences"] / epoch["seconds"], "full_eval_seconds": eval_seconds,
            "eval_users": result["users"], "final_loss": epoch["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not PHONES.exists():
        raise SystemExit(f"skipped: {PHONES} not found")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "phones"
        # prepared in a child process so its memory does not count in this process's peak RSS
        child = multiprocessing.get_context("spawn").Process(target=prepare_phones, args=(root,))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit("preparing Phones failed")
        dataset = Dataset(root)
        runs = [one_epoch(dataset, b) for b in args.batch_sizes]
        counts = {"users": dataset.n_users, "items": dataset.n_items, "interactions": len(dataset.items)}
    report = {"dataset": "amazon2014-phones", **counts, "model": "MAHN cat-cat d=50 max_len=50",
              "features": "random 4096-d visual, 768-d text (float16 on disk)", "threads": args.threads,
              "torch": torch.__version__, "runs": runs, "peak_rss_gib": peak_rss_gib(),
              "targets": {"epoch_seconds": 60, "peak_rss_gib": 4, "full_eval_seconds": 10}}
    write_json(RESULTS, report)
    print(f"Phones: {counts['users']} users, {counts['items']} items; threads {args.threads}; "
          f"peak RSS {report['peak_rss_gib']:.2f} GiB (target < 4)")
    print(f"{'batch':>6} {'epoch s':>8} {'seq/s':>8} {'full eval s':>12}   (targets: epoch <= 60 s, eval < 10 s)")
    for r in runs:
        print(f"{r['batch_size']:>6} {r['epoch_seconds']:>8.1f} {r['sequences_per_second']:>8.0f} "
              f"{r['full_eval_seconds']:>12.1f}")


if __name__ == "__main__":
    main()
