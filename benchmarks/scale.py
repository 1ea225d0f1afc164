"""How mahn's costs grow with the data: synthetic interaction logs of 1M, 3M, 10M and 30M interactions, each
prepared, trained for one MAHN-V-T epoch and scored by full ranking, with wall time and peak memory.

    .venv/bin/python benchmarks/scale.py [--sizes 1000000 3000000 10000000 30000000] [--work /tmp/mahn-scale]
                                         [--optimizer lazy-adam]

The logs are made to look like real ones: item popularity follows a Zipf law (exponent 1.1, the long tail
of shop catalogues), history lengths a log-normal with a median of 12 and a long tail (at least 5 items a
user, as after a 5-core filter), one item per 20 interactions. Each stage runs as its own process, the
command a user would run, so its peak RSS is that command's alone:

- prepare: `mahn prepare LOG.parquet --format csv --time-col t` (no k-core: the log is made 5-core-like);
- train: `mahn train DATA --model mahn --ablate vt --set loss=sampled-ce --set optimizer=lazy-adam --epochs 1`
  (MAHN-V-T, the model that needs no features, with the sampled softmax: the full softmax costs items x
  positions per batch, which at 500k items is the wrong loss; lazy Adam: a step updates only the item rows the
  batch looked up, so the epoch does not grow with items x steps; one epoch, then the validation pass with
  both protocols);
- evaluate: `mahn evaluate RUN --split test` (both protocols over every test user);
- full ranking alone (sizes up to --floor-up-to, 10M by default: at 30M it is another 40 minutes and more of
  the same pass): `mahn evaluate RUN --split test --protocols full`, against its FLOP floor: test users x items x
  dim x 2 floating-point operations (the score matrix, nothing else) over the machine's matmul ceiling measured
  in the same run at the same threads (`eval_floor_ratio`: the stage's seconds, process start and loading
  included, over the floor's). The evaluator ranks against the whole catalogue only the users whose target a
  screen of the most-bought items does not already put below the top 20 (ranking.py); `screened_out` is how
  many test users it ruled out, and `ranked_share` the share it ranked.

The log and the floor are made in processes of their own too, so the launcher that starts each stage stays at
about 60 MiB (`launcher_rss_mib`): Linux reports a child's peak RSS as at least its parent's at the fork, and until
336d8ce the launcher made the log itself, so every stage of a size reported at least the log's memory.
Prints a table and writes benchmarks/results/scale.json (rows of sizes not rerun are kept), with the load average
before and after each size and the CPU that processes outside the benchmark used during it (`other_cpu_cores`,
from /proc/stat; `other_jobs_running` above 0.1 of a core).
The project's targets: the 10M epoch at most 12x the 1M epoch, every stage of the 30M log under 12 GiB peak
RSS, and full ranking at 10M within 3x of its floor.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import polars as pl

from mahn.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import OTHER_CPU_LIMIT, cpu_seconds  # noqa: E402

ZIPF = 1.1
MEDIAN_LENGTH = 12
MIN_LENGTH = 5
INTERACTIONS_PER_ITEM = 20


def make_log(size: int, seed: int, path: Path) -> dict:
    """A Parquet log of about `size` interactions (user, item, t); returns its counts."""
    rng = np.random.default_rng(seed)
    lengths = []
    total = 0
    while total < size:  # draw users until the log is long enough
        more = np.maximum(MIN_LENGTH, rng.lognormal(np.log(MEDIAN_LENGTH), 1.0, 100_000).astype(np.int64))
        lengths.append(more)
        total += int(more.sum())
    lengths = np.concatenate(lengths)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), size)) + 1]
    n = int(lengths.sum())
    items = max(100, size // INTERACTIONS_PER_ITEM)
    weights = 1.0 / np.arange(1, items + 1) ** ZIPF
    item = rng.choice(items, size=n, p=weights / weights.sum())
    user = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    pl.DataFrame({"user": user.astype(str), "item": rng.permutation(items)[item].astype(str),
                  "t": position}).write_parquet(path)
    return {"interactions": n, "users": len(lengths), "items": items}


def in_child(*arguments: str) -> dict:
    """This script's --make-log or --floor step in a process of its own, its JSON answer. The launcher stays small:
    a process started by one that holds G bytes reports a peak RSS of at least G (Linux carries the parent's peak
    across fork and exec), so a 30M log made in the launcher counted as every later stage's peak."""
    done = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(arguments)} failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    return orjson.loads(done.stdout)


def own_rss_mib() -> int:
    """This launcher's resident memory now (a floor under every stage's reported peak, see in_child)."""
    return round(int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)


def run_stage(command: list[str]) -> tuple[dict, bytes]:
    """Run one command in its own process; its wall time and peak RSS (os.wait4 gives the child's own), and what
    it wrote to stdout."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            said = (output + errors.read()).decode(errors="replace")
            raise SystemExit(f"{' '.join(command[:4])} failed:\n{said[-2000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024)}, output


def eval_floor(work: Path, threads: int) -> dict:
    """The full-ranking evaluation's floor: test users x items x dim x 2 FLOPs at the fp32 matmul ceiling (best
    of 5 products of 2048 x 2048, at the evaluation's threads)."""
    import torch

    from mahn.data import Dataset
    from train_speed import matmul_ceiling  # imports torch: only in this step's own process (in_child)

    dataset = Dataset(work / "data")
    dim = orjson.loads((work / "run" / "config.json").read_bytes())["model_config"]["dim"]
    users = len(dataset.eval_set("test").users)
    ceiling = matmul_ceiling(threads or torch.get_num_threads()) * 1e9
    flops = users * dataset.n_items * dim * 2
    return {"users": users, "items": dataset.n_items, "dim": dim, "gflop": flops / 1e9,
            "ceiling_gflops": ceiling / 1e9, "seconds": flops / ceiling}


def print_table(results: list[dict]) -> None:
    """The measured rows, with the seconds of each stage per million interactions and the training epoch alone."""
    print("| interactions | users | items | stage | seconds | s per 1M interactions | peak RSS MiB | "
          "load before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for row in results:
        load = f"{row['loadavg_before'][0]:.1f} / {row['loadavg_after'][0]:.1f}"
        if "other_cpu_cores" in row:
            load += f" ({row['other_cpu_cores']:.2f} other)"
        stages = []
        for stage, measured in row["stages"].items():
            stages.append((stage, measured))
            if stage.startswith("train"):
                stages.append(("(of which the training epoch)", {"seconds": round(row["train_seconds"], 1),
                                                                   "peak_rss_mib": None}))
            if stage.endswith("full ranking alone)") and "eval_floor" in row:
                ranked = f"; {row['ranked_share']:.0%} of users ranked" if "ranked_share" in row else ""
                stages.append((f"(its floor; ratio {row['eval_floor_ratio']:.1f}{ranked})",
                               {"seconds": round(row["eval_floor"]["seconds"], 1), "peak_rss_mib": None}))
        for stage, measured in stages:
            peak = f"{measured['peak_rss_mib']:,}" if measured["peak_rss_mib"] is not None else ""
            per_million = measured["seconds"] / row["interactions"] * 1e6
            print(f"| {row['interactions']:,} | {row['users']:,} | {row['items']:,} | {stage} | "
                  f"{measured['seconds']:,} | {per_million:.1f} | {peak} | {load} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000, 30_000_000])
    parser.add_argument("--optimizer", default="lazy-adam", help="The training stage's --set optimizer= "
                                                                 "[lazy-adam].")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mahn-scale"))
    parser.add_argument("--threads", type=int, default=0, help="Torch threads of train and evaluate (0: default).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--floor-up-to", type=int, default=10_000_000,
                        help="Run the full-ranking-alone stage (and its FLOP floor) at sizes up to this.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    parser.add_argument("--table", action="store_true", help="Print the table of the results in --out and stop.")
    parser.add_argument("--make-log", type=Path, help=argparse.SUPPRESS)  # in_child: write a log of --sizes[0]
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)  # in_child: the floor of the run in this work
    args = parser.parse_args()
    if args.make_log:
        sys.stdout.buffer.write(orjson.dumps(make_log(args.sizes[0], args.seed, args.make_log)))
        return
    if args.floor:
        sys.stdout.buffer.write(orjson.dumps(eval_floor(args.floor, args.threads)))
        return
    if args.table:
        print_table(orjson.loads(args.out.read_bytes())["results"])
        return
    mahn = [sys.executable, "-m", "mahn"]
    # rows of sizes not rerun are kept from an earlier run (10M alone takes over an hour on 2 cores)
    earlier = orjson.loads(args.out.read_bytes())["results"] if args.out.exists() else []
    results = [row for row in earlier if row["size"] not in args.sizes]
    print("| interactions | users | items | stage | seconds | peak RSS MiB | seconds per 1M interactions |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        work = args.work / f"{size}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        counts = in_child("--make-log", str(work / "log.parquet"), "--sizes", str(size), "--seed", str(args.seed))
        load = os.getloadavg()
        stages = {
            "prepare": [*mahn, "prepare", str(work / "log.parquet"), "--format", "csv", "--time-col", "t",
                        "--out", str(work / "data")],
            "train one epoch + validation": [*mahn, "train", str(work / "data"), "--model", "mahn", "--ablate", "vt",
                                             "--set", "loss=sampled-ce", "--set", f"optimizer={args.optimizer}",
                                             "--epochs", "1", "--out",
                                             str(work / "run"), "--no-progress", "--threads", str(args.threads)],
            "evaluate (test, both protocols)": [*mahn, "evaluate", str(work / "run"), "--device", "cpu", "--json"],
        }
        if size <= args.floor_up_to:
            stages["evaluate (test, full ranking alone)"] = [*mahn, "evaluate", str(work / "run"), "--device", "cpu",
                                                             "--json", "--protocols", "full"]
        busy_before, own_before, began = *cpu_seconds(), time.perf_counter()
        row = {"size": size, **counts, "stages": {}, "threads": args.threads, "optimizer": args.optimizer,
               "launcher_rss_mib": own_rss_mib(),
               "loadavg_before": load, "date": datetime.now(UTC).isoformat(timespec="seconds")}
        for stage, command in stages.items():
            measured, output = run_stage(command)
            row["stages"][stage] = measured
            if stage == "evaluate (test, full ranking alone)":  # users the screen ruled out, unranked (ranking.py)
                row["screened_out"] = orjson.loads(output).get("screened_out", 0)
            print(f"| {counts['interactions']:,} | {counts['users']:,} | {counts['items']:,} | {stage} | "
                  f"{measured['seconds']} | {measured['peak_rss_mib']:,} | "
                  f"{measured['seconds'] / counts['interactions'] * 1e6:.1f} |", flush=True)
        metrics = orjson.loads((work / "run" / "metrics.jsonl").read_bytes().splitlines()[0])
        row["train_seconds"] = metrics["train_seconds"]
        busy_after, own_after = cpu_seconds()
        other = max(0.0, (busy_after - busy_before) - (own_after - own_before)) / (time.perf_counter() - began)
        row["other_cpu_cores"], row["other_jobs_running"] = round(other, 3), other > OTHER_CPU_LIMIT
        if "evaluate (test, full ranking alone)" in row["stages"]:
            row["eval_floor"] = in_child("--floor", str(work), "--threads", str(args.threads))
            row["ranked_share"] = 1 - row["screened_out"] / row["eval_floor"]["users"]
            row["eval_floor_ratio"] = row["stages"]["evaluate (test, full ranking alone)"]["seconds"] / (
                row["eval_floor"]["seconds"])
        row["loadavg_after"] = os.getloadavg()
        results = sorted([*results, row], key=lambda r: r["size"])
        shutil.rmtree(work, ignore_errors=True)
        # after every size: a long run stopped at 10M keeps the sizes it finished
        write_json(args.out, {"benchmark": "scale", "zipf": ZIPF, "median_length": MEDIAN_LENGTH,
                              "min_length": MIN_LENGTH, "interactions_per_item": INTERACTIONS_PER_ITEM,
                              "results": results,
                              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                              "date": datetime.now(UTC).isoformat(timespec="seconds")})
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
