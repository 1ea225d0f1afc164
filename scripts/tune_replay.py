"""Replay `mahn tune` over a grid that benchmarks/tune_vs_grid.py trained, without training: each trial's
validation curve is read from the grid run with the same settings (the same settings and seed train the same
run), so the real tune code (TPE, the MedianPruner, repeats) decides exactly as it would, in seconds. A trial
pruned after e of a run's E epochs is charged e/E of that run's CPU seconds.

    python scripts/tune_replay.py --dataset runs/real/office --warmup 5 25 --startup 2 4   # the grid of
        # benchmarks/results/tune.json (office/sasrec); --dataset is only checked (features, settings)

Check first that the replay with today's warm-up gives the trials a real tune gave (`tune` in
benchmarks/results/tune.json); then each other warm-up says whether the tune would have reached the grid's best
and at what share of the grid's CPU. An investigation aid: the numbers it prints come from one grid.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import mahn.tune as tune_module
from mahn.io import read_json
from mahn.search import search_space


def load_grid(results: Path, key: str, model: str) -> dict[tuple, dict]:
    """Settings (in search order) -> the grid run's validation curve, epochs and CPU seconds, from the results
    file of benchmarks/tune_vs_grid.py (each grid run's `valid_full_ndcg10_by_epoch`)."""
    entry = read_json(results).get(key)
    if entry is None:
        raise SystemExit(f"{results}: no entry {key}")
    space = search_space(model)
    runs = {}
    for run in entry["grid"]["runs"]:
        curve = run["valid_full_ndcg10_by_epoch"]
        runs[tuple(run["settings"][k] for k in space)] = {
            "records": [{"epoch": n, "valid": {"full": {"NDCG@10": v}}} for n, v in enumerate(curve, start=1)],
            "cpu": run["cpu_seconds"], "best": max(curve)}
    return runs


def replay(dataset: Path, model: str, runs: dict[tuple, dict], warmup: int, startup: int, trials: int) -> list[dict]:
    space = search_space(model)
    charged: dict[int, float] = {}

    def train(dataset_dir, folder, settings, force=False, on_epoch_end=None):
        flat = settings.flat()
        run = runs[tuple(flat[key] for key in space)]
        number = int(Path(folder).name)
        for epoch, record in enumerate(run["records"], start=1):
            charged[number] = run["cpu"] * epoch / len(run["records"])
            on_epoch_end(record)  # raises TrialPruned when the pruner stops it
        return {}

    real = tune_module.train, tune_module.PRUNE_AFTER_EPOCHS, tune_module.PRUNE_AFTER_TRIALS
    tune_module.train, tune_module.PRUNE_AFTER_EPOCHS, tune_module.PRUNE_AFTER_TRIALS = train, warmup, startup
    try:
        with tempfile.TemporaryDirectory() as out:
            summary = tune_module.tune(dataset, Path(out) / "tune", model, trials, seed=0,
                                       base={"epochs": 200, "patience": 10, "threads": 1, "progress": False},
                                       say=lambda line: None)
    finally:
        tune_module.train, tune_module.PRUNE_AFTER_EPOCHS, tune_module.PRUNE_AFTER_TRIALS = real
    return [{**row, "cpu_charged": charged.get(row["number"], 0.0)} for row in summary["trials"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--grid-from", type=Path, default=Path("benchmarks/results/tune.json"),
                        help="the results file of benchmarks/tune_vs_grid.py holding the grid's curves")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--warmup", type=int, nargs="+", default=[tune_module.PRUNE_AFTER_EPOCHS],
                        help="epochs every trial trains before it can be pruned (PRUNE_AFTER_EPOCHS)")
    parser.add_argument("--startup", type=int, nargs="+", default=[tune_module.PRUNE_AFTER_TRIALS],
                        help="completed trials before any is pruned (PRUNE_AFTER_TRIALS)")
    args = parser.parse_args()
    runs = load_grid(args.grid_from, f"{args.dataset.name}/{args.model}", args.model)
    target, grid_cpu = max(r["best"] for r in runs.values()), sum(r["cpu"] for r in runs.values())
    print(f"grid: {len(runs)} points, best {target:.4f}, {grid_cpu:.0f} CPU s")
    for warmup, startup in itertools.product(args.warmup, args.startup):
        rows, spent, reached = replay(args.dataset, args.model, runs, warmup, startup, args.trials), 0.0, None
        for row in rows:
            if row["state"] in ("COMPLETE", "PRUNED"):
                spent += row["cpu_charged"]
                if row["valid_full_ndcg10"] >= target:
                    reached = row["number"]
                    break
        trail = " ".join(f"{r['number']}:{r['state'][0]}{'=' if r['same_as'] is not None else ''}"
                         f"{r['valid_full_ndcg10']:.4f}" for r in rows)
        verdict = f"reached at trial {reached}" if reached is not None else "not reached"
        print(f"warm-up {warmup:3d} epochs, {startup} completed first: {verdict}, {spent:.0f} CPU s = "
              f"{spent / grid_cpu:.2f} of the grid | {trail}")


if __name__ == "__main__":
    main()
