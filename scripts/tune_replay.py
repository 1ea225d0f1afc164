"""Replay `mahn tune` over a grid that benchmarks/tune_vs_grid.py trained, without training: each trial's
validation curve is read from the grid run with the same settings (the same settings and seed train the same
run), so the real tune code (TPE, the pruner, repeats) decides exactly as it would, in seconds. A trial
pruned after e of a run's E epochs is charged e/E of that run's CPU seconds.

    python scripts/tune_replay.py --dataset runs/real/office --pruner bound median none --seeds 30
        # the grid of benchmarks/results/tune.json (office/sasrec); --dataset is only checked (features, settings)

For each pruner (and --window / --warmup / --startup, the knobs of each) and each tune seed 0..N-1: whether the
tune reached the grid's best and at what share of the grid's CPU (counted up to the trial that reached it, as
benchmarks/tune_vs_grid.py counts). A real tune of the same seed gives the same trials (check against `tune` in
benchmarks/results/tune.json); the seeds say how much of one result is the sampler's luck. An investigation aid:
the numbers it prints come from one grid.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import mahn.tune as tune_module
from mahn.io import read_json
from mahn.search import search_space

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tune_vs_grid import reaching  # noqa: E402


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


def replay(dataset: Path, model: str, runs: dict[tuple, dict], pruner: str, knobs: dict[str, int], trials: int,
           seed: int, min_steps: int = 500) -> list[dict]:
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

    real = {name: getattr(tune_module, name) for name in ("train", *knobs)}
    for name, value in {"train": train, **knobs}.items():
        setattr(tune_module, name, value)
    try:
        with tempfile.TemporaryDirectory() as out:
            summary = tune_module.tune(dataset, Path(out) / "tune", model, trials, seed=seed,
                                       base={"epochs": 200, "patience": 10, "patience_steps": min_steps,
                                             "threads": 1, "progress": False},
                                       say=lambda line: None, pruner=pruner)
    finally:
        for name, value in real.items():
            setattr(tune_module, name, value)
    return [{**row, "cpu_charged": charged.get(row["number"], 0.0)} for row in summary["trials"]]


def reached(rows: list[dict], target: float) -> tuple[int | None, float]:
    """The first trial at or above `target` (None if none) and the CPU charged up to it (all, if none), counted
    as benchmarks/tune_vs_grid.py counts a real tune."""
    how, taken = reaching(rows, target)
    return (taken[-1]["number"] if how else None), sum(row["cpu_charged"] for row in taken)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--grid-from", type=Path, default=Path("benchmarks/results/tune.json"),
                        help="the results file of benchmarks/tune_vs_grid.py holding the grid's curves")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=1, help="replay the tune with seeds 0..N-1")
    parser.add_argument("--pruner", nargs="+", default=["bound"], choices=tune_module.PRUNERS)
    parser.add_argument("--window", type=int, nargs="+", default=[tune_module.RISE_WINDOW],
                        help="--pruner bound: epochs of the rate of gain (RISE_WINDOW)")
    parser.add_argument("--min-steps", type=int, nargs="+", default=[500],
                        help="--pruner bound: steps before a trial is judged (the tune takes early stopping's "
                        "patience_steps, 500; the replayed curves are the grid's, trained with 500)")
    parser.add_argument("--warmup", type=int, nargs="+", default=[tune_module.MEDIAN_AFTER_EPOCHS],
                        help="--pruner median: epochs every trial trains before it can be pruned")
    parser.add_argument("--startup", type=int, nargs="+", default=[tune_module.MEDIAN_AFTER_TRIALS],
                        help="--pruner median: completed trials before any is pruned")
    parser.add_argument("--verbose", action="store_true", help="every trial of every replay")
    args = parser.parse_args()
    runs = load_grid(args.grid_from, f"{args.dataset.name}/{args.model}", args.model)
    target, grid_cpu = max(r["best"] for r in runs.values()), sum(r["cpu"] for r in runs.values())
    print(f"grid: {len(runs)} points, best {target:.4f}, {grid_cpu:.0f} CPU s")
    settings = []
    for pruner in args.pruner:
        if pruner == "bound":  # (pruner, mahn.tune's constants it reads, the pruner's minimum in steps)
            settings += [(pruner, {"RISE_WINDOW": w}, m) for w, m in itertools.product(args.window, args.min_steps)]
        elif pruner == "median":
            settings += [(pruner, {"MEDIAN_AFTER_EPOCHS": w, "MEDIAN_AFTER_TRIALS": n}, 500)
                         for w, n in itertools.product(args.warmup, args.startup)]
        else:
            settings.append((pruner, {}, 500))
    for pruner, knobs, min_steps in settings:
        shares, hits = [], []
        for seed in range(args.seeds):
            rows = replay(args.dataset, args.model, runs, pruner, knobs, args.trials, seed, min_steps)
            number, spent = reached(rows, target)
            shares.append(spent / grid_cpu)
            hits.append(number is not None)
            if args.verbose or args.seeds == 1:
                trail = " ".join(f"{r['number']}:{r['state'][0]}{'=' if r['same_as'] is not None else ''}"
                                 f"{r['valid_full_ndcg10']:.4f}" for r in rows if r["state"] in tune_module.FINISHED)
                verdict = f"reached at trial {number}" if number is not None else "not reached"
                print(f"  seed {seed}: {verdict}, {spent:.0f} CPU s = {spent / grid_cpu:.2f} of the grid | {trail}")
        within = sum(hit and share <= 1 / 3 for hit, share in zip(hits, shares, strict=True))
        reached_shares = sorted(share for hit, share in zip(hits, shares, strict=True) if hit)
        median = reached_shares[len(reached_shares) // 2] if reached_shares else float("nan")
        shown = {**knobs, **({"min_steps": min_steps} if pruner == "bound" else {})}
        print(f"{pruner} {' '.join(f'{k}={v}' for k, v in shown.items())}: reached the grid's best in "
              f"{sum(hits)}/{args.seeds} seeds, within a third of the grid's CPU in {within}/{args.seeds}; "
              f"share of the grid's CPU when reached: median {median:.2f}, seed 0 {shares[0]:.2f}"
              f"{'' if hits[0] else ' (not reached)'}")


if __name__ == "__main__":
    main()
