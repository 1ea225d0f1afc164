"""The CPU time `mahn tune` (Optuna TPE with pruning) needs to reach the validation score of the 16-point
grid that `mahn reproduce --budget full` trains, against the grid's own CPU time.

    .venv/bin/python benchmarks/tune_vs_grid.py --dataset runs/real/office --model sasrec \\
        --work runs/tune-bench/office --json benchmarks/results/tune.json

Both sides train one model on one thread with the `full` budget's settings (up to 200 epochs, patience 10,
seed 0) over the same space (mahn.search.search_space). The grid trains every point (a grid knows its best
only when every point is trained): its cost is the CPU seconds of all 16 runs. The tune runs one trial at a
time until its best trial's validation full NDCG@10 is at least the grid's best: its cost is the CPU seconds
of its trials up to then (pruned trials included, a repeated point costs nothing). time_ratio = tune / grid.
The same point with the same seed trains the same run on either side, on the same machine: the tune reaches the
grid's best when it trains the grid's best point (or one as good) to its end. A grid taken from an earlier run of
this benchmark (--grid-from) may have trained on another machine, whose floating point drifts by about 1e-4 over
a hundred epochs (the same point, seed and code: 0.08389 there, 0.08377 here), so a trial that completes the
grid's best point counts as reaching it too (`reached_by`: "score" or "settings", with both scores kept).
Both sides are resumable:
finished grid runs and tune trials are kept in --work. Run it on a quiet machine or both sides under the same
load; the load average before and after each side is recorded. The grid can be trained by N processes side by
side (`--part 1/2`, `--part 2/2`), each point's CPU seconds its own process's, and the tune beside them
(`--tune-only`): its trials do not depend on the grid, and its cost is counted up to the first trial that
reaches the grid's best, as if it had stopped there. A last call with neither flag gathers both and writes the
JSON; `--gather-only` before any tune writes the grid alone (its curves are what scripts/tune_replay.py replays).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from mahn.io import read_json, write_json
from mahn.tune import FINISHED

TRIALS_AT_MOST = 16  # as many as the grid: a tune that needs more has lost


def shared_settings(model: str, threads: int) -> dict:
    from mahn.reproduce import BUDGETS

    full = BUDGETS["full"]
    return {"model": model, "epochs": full.epochs, "patience": full.patience, "seed": 0, "threads": threads,
            "progress": False}


CHECKED_EPOCHS = (5, 10, 20, 30, 40, 60)  # where a pruner could compare trials


def curve(folder: Path) -> list[float]:
    """The run's validation full NDCG@10 after each epoch: all a pruner sees (scripts/tune_replay.py replays it)."""
    with open(folder / "metrics.jsonl", encoding="utf-8") as lines:
        return [json.loads(line)["valid"]["full"]["NDCG@10"] for line in lines]


def best_so_far(curve: list[float]) -> dict[str, float]:
    """The best of `curve` up to each of CHECKED_EPOCHS the run reached (what a pruner sees there)."""
    return {str(epoch): max(curve[:epoch]) for epoch in CHECKED_EPOCHS if epoch <= len(curve)}


def run_grid(dataset: Path, work: Path, model: str, threads: int, part: tuple[int, int] | None = None) -> dict:
    from mahn.search import search_space
    from mahn.settings import resolve
    from mahn.training import train

    space = search_space(model)
    runs = []
    for number, values in enumerate(itertools.product(*space.values())):
        point = dict(zip(space, values, strict=True))
        folder, timing = work / "grid" / f"{number:04d}", work / "grid" / f"{number:04d}.time.json"
        if part is not None and number % part[1] != part[0] - 1:
            continue
        if not timing.is_file():  # resumable: a finished point is not trained again
            started, cpu = time.perf_counter(), time.process_time()  # as mahn tune times its trials
            train(dataset, folder, resolve(("grid", shared_settings(model, threads)), (f"point {number}", point)),
                  force=True)
            write_json(timing, {"cpu_seconds": time.process_time() - cpu, "wall_seconds": time.perf_counter() - started,
                                "loadavg_after": os.getloadavg()})
        summary, by_epoch = read_json(folder / "summary.json"), curve(folder)
        runs.append({"number": number, "settings": point, "valid_full_ndcg10": summary["valid"]["full"]["NDCG@10"],
                     "epochs": summary["epochs"], "best_so_far_at_epoch": best_so_far(by_epoch),
                     "valid_full_ndcg10_by_epoch": by_epoch, **read_json(timing)})
        print(f"grid {number:2d}: valid NDCG@10 full {runs[-1]['valid_full_ndcg10']:.4f}  "
              f"{runs[-1]['cpu_seconds']:.0f} CPU s  {point}", flush=True)
    best = max(runs, key=lambda r: r["valid_full_ndcg10"])
    return {"runs": runs, "best": best, "cpu_seconds": sum(r["cpu_seconds"] for r in runs),
            "wall_seconds": sum(r["wall_seconds"] for r in runs),
            # each point's own record: a gather of points trained earlier (--part) ran under no load of its own
            "loadavg_1min_after_points": [min(r["loadavg_after"][0] for r in runs),
                                          max(r["loadavg_after"][0] for r in runs)]}


def grid_best(work: Path, model: str) -> float | None:
    """The grid's best validation score once every point is trained, else None."""
    from mahn.search import search_space

    points = len(list(itertools.product(*search_space(model).values())))
    scores = []
    for number in range(points):
        summary = work / "grid" / f"{number:04d}" / "summary.json"
        if not (work / "grid" / f"{number:04d}.time.json").is_file():
            return None
        scores.append(read_json(summary)["valid"]["full"]["NDCG@10"])
    return max(scores)


def reaching(rows: list[dict], target: float | None, settings: dict | None = None) -> tuple[str | None, list[dict]]:
    """How the tune reached `target` ("score", or "settings": it completed the grid's best point, `settings`),
    None if it did not, and its finished trials up to the first that did (all if none did). The trials are
    sampled one after another, each from those before it, so those after the first to reach the target change
    nothing before it: they are left out of the cost, as if the tune had stopped there."""
    taken = []
    for row in rows:
        if row["state"] not in FINISHED:
            continue
        taken.append(row)
        if target is not None and row["valid_full_ndcg10"] >= target:
            return "score", taken
        if settings is not None and row["state"] == "COMPLETE" and row["settings"] == settings:
            return "settings", taken
    return None, taken


def run_tune(dataset: Path, work: Path, model: str, threads: int, target: float | None, more: bool = True,
             best_settings: dict | None = None) -> dict:
    """One more trial a call (the study resumes each time) until one reaches the grid's best. With target None
    (--tune-only: the grid is still training beside it) the target is read again before each trial, known once
    the grid is finished."""
    from mahn.tune import tune

    base = {k: v for k, v in shared_settings(model, threads).items() if k not in ("model", "seed")}
    load_before, summary, trained_here = os.getloadavg(), None, False
    earlier = work / "tune" / "tune.json"  # a gather after --tune-only starts where it stopped
    first = read_json(earlier)["trained"] if earlier.is_file() else 1
    for trials in range(max(first, 1), TRIALS_AT_MOST + 1):
        goal = target if target is not None else grid_best(work, model)
        if summary is not None and (reaching(summary["trials"], goal, best_settings)[0] or summary["stopped"]
                                    or not more):
            break
        summary = tune(dataset, work / "tune", model, trials, seed=0, base=base, say=lambda line: None)
        trained_here = trained_here or summary["this_call_seconds"]["cpu"] > 1.0
        done = [t for t in summary["trials"] if t["state"] in FINISHED]
        latest = done[-1]
        print(f"tune {latest['number']:2d}: {latest['state'].lower()} valid NDCG@10 full "
              f"{latest['valid_full_ndcg10']:.4f}  {latest['cpu_seconds']:.0f} CPU s  {latest['settings']}",
              flush=True)
    if trained_here:  # the load this call trained under, for a later gather to read
        write_json(work / "tune-load.json", {"loadavg_before": load_before, "loadavg_after": os.getloadavg()})
    reached, taken = reaching(summary["trials"], target if target is not None else grid_best(work, model),
                              best_settings)
    if (work / "tune-load.json").is_file():
        load = read_json(work / "tune-load.json")
    else:
        load = {"loadavg_before": None, "loadavg_after": None,
                "load_note": "the trials ran in an earlier call that did not record its load"}
    # the CPU of every trial up to the one that reached the target (a trial a kill cut short recorded none: run
    # the benchmark without kills)
    return {"reached": reached is not None, "reached_by": reached, "trials": len(taken),
            "best": max(taken, key=lambda t: t["valid_full_ndcg10"]),
            "cpu_seconds": sum(t["cpu_seconds"] or 0.0 for t in taken),
            "wall_seconds": sum(t["seconds"] or 0.0 for t in taken), **load, "trial_rows": summary["trials"]}


def machine_speed(trials: list[dict], grid_runs: list[dict]) -> float | None:
    """The median, over the tune's trained trials, of a trial's CPU seconds an epoch over the grid run's with the
    same settings: how much slower (above 1) this machine trains the same epochs than the grid's machine did."""
    by_settings = {json.dumps(run["settings"], sort_keys=True): run for run in grid_runs}
    ratios = []
    for trial in trials:
        run = by_settings.get(json.dumps(trial["settings"], sort_keys=True))
        if trial["same_as"] is None and trial["state"] in FINISHED and trial["epochs"] and run is not None:
            ratios.append((trial["cpu_seconds"] / trial["epochs"])
                          / (run["cpu_seconds"] / len(run["valid_full_ndcg10_by_epoch"])))
    return statistics.median(ratios) if ratios else None


def commit() -> str | None:
    """The commit of the call that writes the JSON (+changes: src/ had uncommitted changes); the runs it gathers
    may have trained under an earlier one (their config.json hold their settings)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--work", type=Path, required=True, help="grid runs and the tune folder (resumable)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/tune.json"),
                        help="results file; the entry for this dataset and model is replaced, others kept")
    parser.add_argument("--part", help="K/N: train only the grid points whose number is K-1 modulo N, then stop "
                        "(N such processes side by side fill N cores; a last call without --part gathers them "
                        "and runs the tune)")
    parser.add_argument("--grid-from", type=Path, help="take the grid (its points' scores and CPU seconds) from "
                        "this results file's entry for the dataset and model instead of training it: to measure a "
                        "changed tune against a grid measured before (the entry records where its grid came from)")
    parser.add_argument("--gather-only", action="store_true", help="write the JSON from the trials finished so "
                        "far, training none (a tune that has not reached the grid's best gets time_ratio_at_least)")
    parser.add_argument("--tune-only", action="store_true", help="run the tune's trials beside a grid still "
                        "training (--part), until one reaches the grid's best once that is known; a last call "
                        "without it writes the JSON")
    args = parser.parse_args()
    key, grid = f"{args.dataset.name}/{args.model}", None
    if args.grid_from:  # the grid of an earlier run of this benchmark: the grid is what changes least and costs most
        earlier = read_json(args.grid_from).get(key)
        if earlier is None:
            parser.error(f"--grid-from {args.grid_from}: no entry {key}")
        grid = {**earlier["grid"], "from": {"file": str(args.grid_from), "date": earlier["date"],
                                            "commit": earlier.get("gathered_at_commit")}}
    if args.tune_only:
        run_tune(args.dataset, args.work, args.model, args.threads,
                 None if grid is None else grid["best"]["valid_full_ndcg10"],
                 best_settings=None if grid is None else grid["best"]["settings"])
        return
    if args.part:
        try:
            part = tuple(int(n) for n in args.part.split("/"))
            assert len(part) == 2 and 1 <= part[0] <= part[1]
        except (ValueError, AssertionError):
            parser.error(f"--part {args.part}: expected K/N with 1 <= K <= N")
        run_grid(args.dataset, args.work, args.model, args.threads, part)
        return
    if grid is None:
        grid = run_grid(args.dataset, args.work, args.model, args.threads)
    entry = {"dataset": str(args.dataset), "model": args.model, "gathered_at_commit": commit(),
             "command": " ".join(["python", *sys.argv]), "date": datetime.now(UTC).isoformat(timespec="seconds"),
             "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": args.threads},
             "grid": grid}
    grid_only = args.gather_only and not (args.work / "tune" / "study.db").is_file()
    if not grid_only:  # a gather before any tune keeps the grid alone (its curves: scripts/tune_replay.py)
        tuned = run_tune(args.dataset, args.work, args.model, args.threads, grid["best"]["valid_full_ndcg10"],
                         more=not args.gather_only, best_settings=grid["best"]["settings"] if args.grid_from else None)
        ratio = tuned["cpu_seconds"] / grid["cpu_seconds"]
        entry |= {"tune": tuned, "tune_reached_grid_best": tuned["reached"],
                  # a tune that has not reached the grid's best has no ratio yet, only a lower bound
                  "time_ratio": ratio if tuned["reached"] else None,
                  **({} if tuned["reached"] else {"time_ratio_at_least": ratio})}
        if args.grid_from:  # the two sides ran on two machines: how much slower this one trained the same points
            speed = machine_speed(tuned["trial_rows"], grid["runs"])
            if speed is not None:
                entry |= {"this_machine_over_grid_machine": speed, "time_ratio_same_machine": ratio / speed}
    results = read_json(args.json) if args.json.is_file() else {}
    results[key] = entry
    write_json(args.json, results)
    print(f"\ngrid: best valid NDCG@10 full {grid['best']['valid_full_ndcg10']:.4f} (point {grid['best']['number']}),"
          f" {grid['cpu_seconds']:.0f} CPU s over 16 runs")
    if grid_only:
        print("tune: none yet (the grid alone is written)")
        return
    verdict = {"score": "reached it", "settings": "reached its settings",
               None: "did not reach it"}[tuned["reached_by"]]
    print(f"tune: {verdict} after {tuned['trials']} trials, {tuned['cpu_seconds']:.0f} CPU s "
          f"(best {tuned['best']['valid_full_ndcg10']:.4f}); CPU time over the grid's {ratio:.2f}")
    if "time_ratio_same_machine" in entry:
        print(f"this machine trained the same epochs {entry['this_machine_over_grid_machine']:.2f} times as slowly as "
              f"the grid's: {entry['time_ratio_same_machine']:.2f} on one machine")


if __name__ == "__main__":
    main()
