"""Time `mahn evaluate`'s scoring (both protocols, every test user) of a trained run, and where it goes; or time
the counting step alone over synthetic score blocks of large catalogues.

    python benchmarks/eval_speed.py --run RUN [--threads 1] [--repeats 3] [--compared-bytes 2097152 ...] [--profile]
    python benchmarks/eval_speed.py --counting 10000 50000 150000 500000 [--compared-bytes 2097152 ...]
                                    [--compared-rows 64 ...]
    python benchmarks/eval_speed.py --screen RUN [RUN ...] [--threads 1] [--repeats 3]

`--compared-bytes` compares how many score bytes the counting step compares at a time
(mahn.evaluation.ranking.COMPARED_BYTES; a number above a batch's block is one block a batch), interleaved so a
busy machine slows every setting alike; `--compared-rows` adds a fixed number of rows whatever the catalogue (64: the
step before 58d511e). `--counting ITEMS...` times `greater_and_equal` alone on one full-ranking
batch of each catalogue size (as many users as the evaluator's 256 MiB score block holds), beside the batch's
score product and its FLOP floor (users x items x 64 x 2 at the machine's fp32 matmul ceiling). `--screen RUN...`
times full ranking of each run's test users with the evaluator's screen (ranking.Screen) and without it,
interleaved, checks that every user's metrics are the same both ways, and records how many users it ruled out.
Prints a table; writes benchmarks/results/eval_speed.json (--run), eval_counting.json (--counting) or
eval_screen.json (--screen).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

import mahn.evaluation.ranking as ranking
from mahn.evaluation import EvalConfig, evaluate
from mahn.io import write_json
from mahn.training import load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import matmul_ceiling, timed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 64  # the models' default dim


def one_batch(items: int, compared: dict[str, tuple[int, str]], repeats: int, ceiling: float) -> dict:
    """One full-ranking batch of a catalogue of `items`: its product, its counting at each setting (label: (n,
    "bytes") or (n, "rows")), its floor."""
    users = max(1, min(1024, ranking.SCORE_BYTES // (4 * items)))
    table, states = torch.randn(items, DIM), torch.randn(users, DIM)
    block = torch.empty(users, items)
    torch.mm(states, table.T, out=block)
    target = block[:, :1].clone()
    product = statistics.median(timed(lambda: torch.mm(states, table.T, out=block)) for _ in range(repeats))
    default, seconds = ranking.COMPARED_BYTES, {label: [] for label in compared}
    for _ in range(repeats + 1):  # the first round warms up and is not kept
        for label, (n, unit) in compared.items():
            ranking.COMPARED_BYTES = n if unit == "bytes" else n * 4 * items
            seconds[label].append(timed(lambda: ranking.greater_and_equal(block, target)))
    seconds = {label: values[1:] for label, values in seconds.items()}
    ranking.COMPARED_BYTES = default
    return {"items": items, "users": users, "floor_seconds": users * items * DIM * 2 / ceiling,
            "product_seconds": product, "counting_seconds": {k: statistics.median(v) for k, v in seconds.items()}}


def counting(sizes: list[int], compared: dict[str, tuple[int, str]], threads: int, repeats: int) -> None:
    ceiling = matmul_ceiling(threads) * 1e9
    torch.manual_seed(0)
    rows = []
    print(f"{threads} thread(s), median of {repeats}; ceiling {ceiling / 1e9:.1f} GFLOP/s")
    print("| items | users a batch | floor ms | product ms | "
          + " | ".join(f"counting ms, {label}" for label in compared) + " |\n|" + "---|" * (4 + len(compared)))
    for items in sizes:
        row = one_batch(items, compared, repeats, ceiling)
        rows.append(row)
        print(f"| {items:,} | {row['users']} | {row['floor_seconds'] * 1e3:.1f} | {row['product_seconds'] * 1e3:.1f} | "
              + " | ".join(f"{v * 1e3:.1f}" for v in row["counting_seconds"].values()) + " |", flush=True)
    write_json(RESULTS / "eval_counting.json", {
        "benchmark": "eval_counting", "threads": threads, "repeats": repeats, "dim": DIM,
        "ceiling_gflops": ceiling / 1e9, "default": f"{ranking.COMPARED_BYTES >> 10} KiB", "results": rows,
        "loadavg": os.getloadavg(), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": datetime.now(UTC).isoformat(timespec="seconds")})


def screen(runs: list[Path], threads: int, repeats: int) -> None:
    """Full ranking of each run's test users with the screen and without it (interleaved), the same metrics."""
    rows = []
    default = ranking.MIN_SCREENED
    for run in runs:
        model, dataset, _ = load_run(run, device="cpu")
        config = EvalConfig(split="test", protocols=("full",))
        seconds: dict[str, list[float]] = {"without": [], "with": []}
        metrics, tally = {}, {}  # tally: the screened run's count of users ruled out
        for _ in range(repeats):
            for label, least in (("without", 1 << 62), ("with", default)):
                ranking.MIN_SCREENED = least
                started = time.perf_counter()
                metrics[label] = ranking.rank_users(model, dataset, config, tally if label == "with" else None)
                seconds[label].append(time.perf_counter() - started)
        ranking.MIN_SCREENED = default
        same = all((metrics["with"]["full"][m] == v).all() for m, v in metrics["without"]["full"].items())
        if not same:
            raise SystemExit(f"{run}: the screen changed a user's metrics")
        users = int(dataset.eval_set("test").users.size)
        rows.append({"run": str(run), "users": users, "items": dataset.n_items, "screened_out": tally["screened_out"],
                     "same_metrics": same, "ndcg@10": float(metrics["with"]["full"]["NDCG@10"].mean()),
                     "seconds": seconds, "median_without": statistics.median(seconds["without"]),
                     "median_with": statistics.median(seconds["with"])})
    print(f"full ranking of the test users, {threads} thread(s), median of {repeats}, interleaved")
    print("| run | users | items | ruled out by the screen | seconds without | with | same metrics |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['run']} | {row['users']:,} | {row['items']:,} | {row['screened_out']:,} "
              f"({row['screened_out'] / row['users']:.1%}) | {row['median_without']:.2f} | {row['median_with']:.2f} | "
              f"{row['same_metrics']} |")
    write_json(RESULTS / "eval_screen.json", {
        "benchmark": "eval_screen", "threads": threads, "repeats": repeats, "screen_items": ranking.SCREEN_ITEMS,
        "min_screened": default, "rows": rows, "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg": os.getloadavg(), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path)
    parser.add_argument("--counting", type=int, nargs="+", metavar="ITEMS")
    parser.add_argument("--screen", type=Path, nargs="+", metavar="RUN")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compared-bytes", type=int, nargs="+", default=[ranking.COMPARED_BYTES])
    parser.add_argument("--compared-rows", type=int, nargs="*", default=[])
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.counting:
        settings = ({f"{b >> 10} KiB": (b, "bytes") for b in args.compared_bytes}
                    | {f"{r} rows": (r, "rows") for r in args.compared_rows})
        counting(args.counting, settings, args.threads, args.repeats)
        return
    if args.screen:
        screen(args.screen, args.threads, args.repeats)
        return
    if args.run is None:
        parser.error("give --run RUN, --counting ITEMS... or --screen RUN...")
    model, dataset, _ = load_run(args.run, device="cpu")
    config = EvalConfig(split="test", groups=False)
    evaluate(model, dataset, config)  # warm-up
    seconds = {b: [] for b in args.compared_bytes}
    for _ in range(args.repeats):
        for b in args.compared_bytes:
            ranking.COMPARED_BYTES = b
            started = time.perf_counter()
            evaluate(model, dataset, config)
            seconds[b].append(time.perf_counter() - started)
    print(f"{args.run}: {dataset.eval_set('test').users.size} users x {dataset.n_items} items, "
          f"{args.threads} thread(s), median of {args.repeats}")
    print("| bytes compared at a time | seconds (median) | all |\n|---|---|---|")
    for b, values in seconds.items():
        print(f"| {b:,} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    (RESULTS / "eval_speed.json").write_text(json.dumps({
        "run": str(args.run), "users": int(dataset.eval_set("test").users.size), "items": dataset.n_items,
        "threads": args.threads, "seconds": {str(k): v for k, v in seconds.items()}}, indent=2) + "\n")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        ranking.COMPARED_BYTES = args.compared_bytes[0]
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            evaluate(model, dataset, config)
        print(trace.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
