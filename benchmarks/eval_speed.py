"""Time `mahn evaluate`'s scoring (both protocols, every test user) of a trained run, and where it goes.

    python benchmarks/eval_speed.py --run RUN [--threads 1] [--repeats 3] [--rows-in-cache 64 100000] [--profile]

`--rows-in-cache` compares block sizes of the counting step (mahn.evaluation.ranking.ROWS_IN_CACHE;
100000 is one block per batch, as before the change in docs/performance.md), interleaved so a busy
machine slows every setting alike. Prints a table; writes benchmarks/results/eval_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import mahn.evaluation.ranking as ranking
from mahn.evaluation import EvalConfig, evaluate
from mahn.training import load_run

RESULTS = Path(__file__).resolve().parent / "results" / "eval_speed.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows-in-cache", type=int, nargs="+", default=[ranking.ROWS_IN_CACHE])
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, dataset, _ = load_run(args.run, device="cpu")
    config = EvalConfig(split="test", groups=False)
    evaluate(model, dataset, config)  # warm-up
    seconds = {rows: [] for rows in args.rows_in_cache}
    for _ in range(args.repeats):
        for rows in args.rows_in_cache:
            ranking.ROWS_IN_CACHE = rows
            started = time.perf_counter()
            evaluate(model, dataset, config)
            seconds[rows].append(time.perf_counter() - started)
    print(f"{args.run}: {dataset.eval_set('test').users.size} users x {dataset.n_items} items, "
          f"{args.threads} thread(s), median of {args.repeats}")
    print("| rows compared at a time | seconds (median) | all |\n|---|---|---|")
    for rows, values in seconds.items():
        print(f"| {rows} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    RESULTS.write_text(json.dumps({"run": str(args.run), "users": int(dataset.eval_set("test").users.size),
                                   "items": dataset.n_items, "threads": args.threads,
                                   "seconds": {str(k): v for k, v in seconds.items()}}, indent=2) + "\n")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        ranking.ROWS_IN_CACHE = args.rows_in_cache[0]
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            evaluate(model, dataset, config)
        print(trace.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
