"""The cost of one Adam step over an item table as the catalogue grows, with torch's default (foreach) Adam,
the fused Adam the trainer uses by default, and the lazy Adam of `--set optimizer=lazy-adam`: why an epoch of
the scale benchmark grew faster than its interactions, and what stops it.

    .venv/bin/python benchmarks/optimizer_step.py [--items 50000 150000 500000 1500000] [--threads 1]

Adam updates every row of a parameter each step, also the rows no position of the batch touched, so a step
over an item table costs O(items) and an epoch (steps proportional to users) O(users x items). The scale
benchmark's logs have one item per 20 interactions, so this term grows with the square of the log. Each size
times the trainer's step (zero_grad, backward of a batch's embedding lookups, Adam.step) on an (items + 1) x 50
table with the scale benchmark's batch (256 users x 12 positions), median of 10 steps after one warm-up, and
the epoch it adds at the scale benchmark's users per item (1.01) and batch of 256 users. The fused Adam reads
and writes each parameter once a step, the default once per operation; the lazy one (a sparse table gradient,
mahn.training.lazy_adam) reads and writes only the rows the batch looked up, so its step does not grow with
the catalogue.
Prints a table and writes benchmarks/results/optimizer_step.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from mahn.io import write_json

USERS_PER_ITEM = 1.01  # benchmarks/scale.py: 505,307 users for 500,000 items at 10M interactions
BATCH_USERS, POSITIONS, DIM = 256, 12, 50


def step_seconds(items: int, kind: str) -> float:
    from mahn.training.lazy_adam import LazyAdam

    table = torch.nn.Embedding(items + 1, DIM, sparse=kind == "lazy")
    if kind == "lazy":
        optimizer = LazyAdam(table.parameters(), lr=1e-3)
    else:
        optimizer = torch.optim.Adam(table.parameters(), lr=1e-3, fused=kind == "fused" or None)
    ids = torch.randint(0, items, (BATCH_USERS * POSITIONS,))

    def step() -> float:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        table(ids).sum().backward()
        optimizer.step()
        return time.perf_counter() - started

    step()
    return statistics.median(step() for _ in range(10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[50_000, 150_000, 500_000, 1_500_000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "optimizer_step.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print("| items | Adam | ms per step | steps per epoch | seconds per epoch |")
    print("|---|---|---|---|---|")
    for items in args.items:
        for kind in ("foreach", "fused", "lazy"):
            seconds = step_seconds(items, kind)
            steps = -(-round(items * USERS_PER_ITEM) // BATCH_USERS)
            rows.append({"items": items, "adam": kind, "step_seconds": seconds, "steps_per_epoch": steps,
                         "epoch_seconds": seconds * steps})
            print(f"| {items:,} | {kind} | {seconds * 1000:.1f} | {steps:,} | {seconds * steps:.0f} |", flush=True)
    write_json(args.out, {"benchmark": "optimizer_step", "dim": DIM, "batch_users": BATCH_USERS,
                          "positions": POSITIONS, "threads": args.threads, "loadavg": os.getloadavg(),
                          "results": rows, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                          "date": datetime.now(UTC).isoformat(timespec="seconds")})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
