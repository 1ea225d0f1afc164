"""Approximate top-k (`mahn serve --index ivf|hnsw`) against exact ranking: recall@10, per-query latency, build
time and memory, over a trained run's own item table and over catalogues of up to a million items.

    .venv/bin/python benchmarks/ann_recall.py [--run demo/runs/mahn-seed0] [--sizes 100000 1000000]
                                              [--methods ivf hnsw] [--probes ...] [--ef ...]

Queries are real: the user states of test users of the run's dataset (each history before the test target,
encoded by the run's model), sent one at a time as a server request would be. Catalogues: the run's own item
table, and tables of N items made of the run's n items plus N - n more vectors, filled two ways: `copies`
(each a random item of the table plus noise of a quarter of the table's per-dimension spread: the table's
clusters and norms at scale) and `gaussian` (one Gaussian with the table's mean and covariance: no
structure, the hardest case for a graph index). Exact:
one matrix product and a top-k in torch (what `--index exact` does). IVF: mahn.index.IVFIndex (the items
lifted to one norm, faiss IndexIVFFlat with about 4·sqrt(items) lists) with the lists scanned per query in
--probes. HNSW: mahn.index.HNSWIndex (faiss IndexHNSWFlat, inner product) with mahn's defaults (32 links,
ef_construction 200) and ef_search in --ef. recall@10 is the share of the exact top 10 that the index returns,
averaged over queries.

Prints a table and writes benchmarks/results/ann_recall.json, with the load average before and after: on a
machine where other jobs run, latencies are those of a shared CPU. Rows of methods not measured this time
(--methods) are kept from the file, each with its own date.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

import mahn
from mahn.index import HNSWIndex, HNSWSettings, IVFIndex, IVFSettings
from mahn.io import read_json, write_json

K = 10
JITTER = 0.25


def user_states(recommender, count: int, seed: int) -> np.ndarray:
    """States of `count` random test users: the model's encoding of every item before their test target."""
    dataset = recommender.dataset
    test = dataset.eval_set("test")
    rows = np.random.default_rng(seed).choice(len(test.users), min(count, len(test.users)), replace=False)
    pad, width = recommender.model.pad, recommender.max_len
    windows = [dataset.items[dataset.offsets[test.users[r]] : test.input_ends[r]][-width:].tolist() for r in rows]
    batch = torch.tensor([[pad] * (width - len(w)) + w for w in windows])
    with torch.no_grad():
        return recommender.model.encode(batch).float().numpy()


def catalogue(table: np.ndarray, size: int, fill: str, seed: int) -> np.ndarray:
    """`table` and size - len(table) more rows: `copies`, each a random item of the table plus Gaussian noise of
    JITTER times the table's per-dimension spread (the table's own clusters and norms, at scale); `gaussian`,
    drawn from one Gaussian with the table's mean and covariance (no structure at all: the hard case)."""
    if size <= len(table):
        return table
    rng = np.random.default_rng(seed)
    count = size - len(table)
    if fill == "copies":
        extra = table[rng.integers(len(table), size=count)] + rng.normal(size=(count, table.shape[1])) * (
            JITTER * table.std(0))
    else:
        extra = rng.multivariate_normal(table.mean(0), np.cov(table, rowvar=False), count, method="cholesky")
    return np.concatenate([table, extra.astype(np.float32)])


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def searched(index, queries: np.ndarray, exact: list[set]) -> dict:
    """recall@10 and latency of `index` answering `queries` one at a time."""
    seconds, hits = [], []
    for query, truth in zip(queries, exact, strict=True):
        started = time.perf_counter()
        _, ids = index.search(query[None], K)
        seconds.append(time.perf_counter() - started)
        hits.append(len(truth & set(ids[0].tolist())) / K)
    return {"recall@10": float(np.mean(hits)), **percentiles(seconds)}


def measure(table: np.ndarray, queries: np.ndarray, methods: list[str], probes: list[int], candidates: list[int],
            ef_values: list[int]) -> list[dict]:
    import faiss

    tensor = torch.from_numpy(table)
    exact, seconds = [], []
    for query in queries:
        started = time.perf_counter()
        top = torch.topk(tensor @ torch.from_numpy(query), K).indices
        seconds.append(time.perf_counter() - started)
        exact.append(set(top.tolist()))
    rows = [{"method": "exact", "setting": None, "recall@10": 1.0, **percentiles(seconds), "build_s": 0.0,
             "memory_mb": table.nbytes / 2**20}]
    if "ivf" in methods:
        started = time.perf_counter()
        index = IVFIndex(table, IVFSettings())
        build = time.perf_counter() - started
        memory = faiss.serialize_index(index.index).nbytes / 2**20
        default = IVFSettings()
        settings = [IVFSettings(probes=count) for count in probes] + [
            IVFSettings(candidates=count) for count in candidates if count != default.candidates]
        for setting in settings:
            index.settings = setting
            rows.append({"method": "ivf", "setting": f"probes {setting.probes} of {index.lists} lists, "
                                                     f"{setting.candidates} candidates",
                         **searched(index, queries, exact), "build_s": build, "memory_mb": memory})
    if "hnsw" in methods:
        started = time.perf_counter()
        index = HNSWIndex(table, HNSWSettings())
        build = time.perf_counter() - started
        memory = faiss.serialize_index(index.index).nbytes / 2**20
        for ef in ef_values:
            index.settings = HNSWSettings(ef_search=ef)
            rows.append({"method": "hnsw", "setting": f"ef_search {ef}", **searched(index, queries, exact),
                         "build_s": build, "memory_mb": memory})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("demo/runs/mahn-seed0"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000],
                        help="Catalogue sizes besides the run's own [100000 1000000].")
    parser.add_argument("--fill", nargs="+", default=["copies", "gaussian"], choices=["copies", "gaussian"],
                        help="How catalogues past the run's own are filled (see `catalogue`) [both].")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", default=["ivf", "hnsw"], choices=["ivf", "hnsw"],
                        help="Indexes measured beside exact ranking; rows of the others are kept [both].")
    parser.add_argument("--probes", type=int, nargs="+", default=[128, 256, 512, 1024, 2048],
                        help="ivf: lists visited per query, each with the default candidates.")
    parser.add_argument("--candidates", type=int, nargs="+", default=[200, 500, 2000],
                        help="ivf: items re-ranked exactly, each with the default probes.")
    parser.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--threads", type=int, default=1, help="Torch and faiss threads (a server worker's) [1].")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ann_recall.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    if not (args.run / "config.json").exists():
        raise SystemExit(f"{args.run}: no trained run (make it with `mahn demo --out demo`)")
    recommender = mahn.load(args.run, device="cpu")
    table = recommender.item_table().float().numpy()
    queries = user_states(recommender, args.queries, args.seed)
    print(f"run {args.run} ({recommender.record['model']}): {len(table):,} items of dim {table.shape[1]}, "
          f"{len(queries)} test users' states as queries")
    results, load_before = [], os.getloadavg()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    kept = []
    if args.out.exists():  # rows of the methods not measured now, from the same run
        earlier = read_json(args.out)
        if earlier.get("run") == str(args.run):
            kept = [row for row in earlier["results"] if row["method"] not in ("exact", *args.methods)]
    print("| items | filled with | method | setting | recall@10 | p50 ms | p99 ms | build s | memory MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    catalogues = [(len(table), "-")] + [(s, f) for s in sorted(args.sizes) if s > len(table) for f in args.fill]
    for size, fill in catalogues:
        for row in measure(catalogue(table, size, fill, args.seed), queries, args.methods, args.probes,
                           args.candidates, args.ef):
            row = {"items": size, "fill": fill, **row, "date": date}
            results.append(row)
            print(f"| {size:,} | {fill} | {row['method']} | {row['setting'] or '–'} | {row['recall@10']:.3f} | "
                  f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['build_s']:.0f} | {row['memory_mb']:.0f} |",
                  flush=True)
    write_json(args.out, {"benchmark": "ann_recall", "run": str(args.run), "model": recommender.record["model"],
                          "dim": int(table.shape[1]), "queries": len(queries), "k": K, "threads": args.threads,
                          "hnsw": vars(HNSWSettings()), "ivf": vars(IVFSettings()), "results": results + kept,
                          "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                          "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                          "versions": {"mahn": mahn.__version__, "torch": torch.__version__,
                                       "faiss": faiss.__version__},
                          "date": date})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
