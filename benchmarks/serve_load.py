"""Load on `mahn serve`: latency percentiles and requests/s of POST /recommend (k = 10) under 1, 8 and 32
concurrent clients, over the demo shop, a 24,000-item shop with images and titles served by the default
multimodal model, and a Clothing-sized ID-only catalogue (Amazon 2014 Clothing, 23,033 items).

    .venv/bin/python benchmarks/serve_load.py [--client wrk|httpx] [--duration 10] [--clients 1 8 32]
                                              [--workers 1 2] [--catalogues demo shop clothing]

The server is the real command (`python -m mahn serve RUN --port P --device cpu --workers W`) on a free
loopback port. The load comes from wrk (`--client wrk`, the default when it is installed: `apt-get install
wrk`): one wrk thread in C keeps `clients` keep-alive connections busy for `--duration` seconds, each sending
its next request when the last one is answered, and reports the latency percentiles of every request. It
shares the machine's 2 cores with the server, but costs them little; `--client httpx` uses threads in this
process instead, one keep-alive httpx.Client each, whose Python and GIL cost more than the server's own work
(GET /health alone had p99 22-38 ms at 8 clients that way). Each request carries the history of a real test
user (every item before the user's test target). After each level a sample of responses, sent by as many
concurrent httpx clients (so concurrent requests are scored together, as under load), is checked against the
Python API (`mahn.load(RUN).recommend(history, 10)`): the same keys in the same order, scores within 1e-4.
GET /health at the same concurrency gives the HTTP stack's own floor. Every server setting runs with
torch's default intra-op threads (one per core) and with OMP_NUM_THREADS=1. A profile in this process (no HTTP) says
where one request's time goes.

Catalogues:
- demo: demo/runs/mahn-seed0 (made by `mahn demo --out demo` when it is absent: about a minute);
- shop: `mahn demo --out WORK/shop --items 24000 --users 24000 --epochs 1`: 24,000 rendered items with images and
  titles, EfficientNet-Lite0 and MiniLM features, and MAHN (`mahn train`'s default model) reading both, one
  epoch (the latency does not depend on how well it learned); kept in --work for reruns (about half an hour
  to make on 2 cores);
- clothing: ../shared/data/amazon2014-clothing/user_sequence.txt prepared (`mahn prepare --format
  sequences`) and trained for 1 epoch as MAHN-V-T (`mahn train --model mahn --ablate vt --epochs 1`: MAHN
  without its image and text parts, as the dataset has no item content), kept in --work for reruns;
  skipped with a message when ../shared/data is absent.

Prints a table and writes benchmarks/results/serve_load.json, with the load average before and after each
level and the CPU that processes outside this benchmark (not this process, the server or its workers) used
during it (`other_cpu_cores`, from /proc/stat; `other_jobs_running` when they used more than 0.1 of a core
over all levels): on a machine where other jobs run, latencies are those of a shared CPU. The machine's own
speed is recorded too (`machine`: fp32 matmul GFLOP/s and one thread's memory read rate), as hosts differ.
The targets: p99 < 20 ms at 8 concurrent clients for k = 10 over the shop's 24k multimodal items and over
Clothing's 23k, on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch

import mahn
from mahn.io import write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/servers.py: `mahn serve` as a child process
from machine import OTHER_CPU_LIMIT, cpu_seconds  # noqa: E402  (benchmarks/, this script's folder, is on sys.path)
from servers import mahn_serve, serving  # noqa: E402
from train_speed import matmul_ceiling  # noqa: E402

CLOTHING = REPO.parent / "shared" / "data" / "amazon2014-clothing" / "user_sequence.txt"
RESULTS = Path(__file__).resolve().parent / "results" / "serve_load.json"
K = 10
TARGET_MS = 20.0  # p99 at 8 clients over the Clothing catalogue
TOLERANCE = 1e-4


def mahn_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mahn", *args]


def demo_run(log) -> Path:
    run = REPO / "demo" / "runs" / "mahn-seed0"
    if not (run / "best.safetensors").exists():
        log(f"{run} is absent: making it with `mahn demo --out demo` (about a minute)")
        subprocess.run(mahn_command("demo", "--out", str(REPO / "demo")), check=True, cwd=REPO)
    return run


def shop_run(work: Path, log) -> Path:
    run = work / "shop" / "runs" / "mahn-seed0"
    if not (run / "best.safetensors").exists():
        log(f"{run} is absent: making it with `mahn demo --items 24000 --users 24000 --epochs 1` (half an hour)")
        subprocess.run(mahn_command("demo", "--out", str(work / "shop"), "--items", "24000", "--users", "24000",
                                    "--epochs", "1", "--no-progress"), check=True)
    return run


def clothing_run(work: Path, log) -> Path | None:
    if not CLOTHING.exists():
        log(f"skipped the Clothing catalogue: {CLOTHING} not found")
        return None
    data, run = work / "clothing", work / "clothing-mahn-vt"
    if not (data / "manifest.json").exists():
        log(f"preparing {CLOTHING} into {data}")
        subprocess.run(mahn_command("prepare", str(CLOTHING), "--format", "sequences", "--out", str(data)),
                       check=True)
    if not (run / "best.safetensors").exists():
        log(f"training MAHN-V-T on {data} for 1 epoch into {run} (a few minutes on 2 cores)")
        subprocess.run(mahn_command("train", str(data), "--model", "mahn", "--ablate", "vt", "--epochs", "1",
                                    "--out", str(run), "--force", "--no-progress"), check=True)
    return run


def test_histories(recommender, count: int, seed: int) -> list[list[str]]:
    """Histories of `count` test users drawn at random: every item before each one's test target."""
    dataset, keys = recommender.dataset, recommender.keys
    test = dataset.eval_set("test")
    rows = np.random.default_rng(seed).choice(len(test.users), min(count, len(test.users)), replace=False)
    return [[keys[i] for i in dataset.items[dataset.offsets[test.users[r]] : test.input_ends[r]]] for r in rows]


def server(run: Path, workers: int, log_path: Path, threads: int | None):
    """`mahn serve RUN` on a free loopback port, ready once GET /health answers."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in each server process

    def command(port: int) -> list[str]:
        # no `threads`: torch's own default (one per core), which `mahn serve` would otherwise lower to 1
        return mahn_serve(str(run), "--port", str(port), "--device", "cpu", "--workers", str(workers),
                          "--threads", str(threads or os.cpu_count()))

    return serving(command, timeout=300, env=env, log=log_path)


def load_level(url: str, path: str, bodies: list[bytes] | None, clients: int, requests: int, cap_s: float,
               keep: set[int]) -> dict:
    """`requests` requests from `clients` threads (each its own keep-alive client), stopped after `cap_s`.
    Returns latencies (ms) and the bodies of the responses whose request index is in `keep`."""
    counter, lock = itertools.count(), threading.Lock()
    latencies, errors, kept, failures = [], [0], {}, []
    start = threading.Barrier(clients + 1)

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30, headers={"content-type": "application/json"}) as session:
            try:
                session.get("/health")  # connect before the clock starts
                connected = True
            except httpx.HTTPError as error:
                connected = False
                with lock:
                    errors[0] += 1
                    failures.append(f"could not connect: {error!r}")
            start.wait(timeout=120)  # a client that cannot connect still releases the others
            if not connected:
                return
            mine, deadline = [], time.perf_counter() + cap_s
            while True:
                i = next(counter)
                if i >= requests or time.perf_counter() > deadline:
                    break
                began = time.perf_counter()
                try:
                    if bodies is None:
                        response = session.get(path)
                    else:
                        response = session.post(path, content=bodies[i % len(bodies)])
                    status, content = response.status_code, response.content
                except httpx.HTTPError as error:
                    status, content = None, repr(error).encode()
                mine.append((time.perf_counter() - began) * 1000)
                if status != 200:
                    with lock:
                        errors[0] += 1
                        if len(failures) < 5:
                            failures.append(f"{status}: {content[:200].decode(errors='replace')}")
                elif i in keep:
                    kept[i] = content
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start.wait(timeout=120)
    began = time.perf_counter()
    for thread in threads:
        thread.join(timeout=cap_s + 60)
    wall = time.perf_counter() - began
    ms = np.array(latencies or [np.nan])
    return {"requests": len(ms), "errors": errors[0], "error_examples": failures, "seconds": wall,
            "requests_per_s": len(ms) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "capped": len(ms) < requests, "_kept": kept}


# wrk's Lua: POST bodies taken in turn from the file MAHN_BODIES names (one JSON document a line), and a summary
WRK_POST = """
local bodies, i = {}, 0
local file = io.open(os.getenv("MAHN_BODIES"))
for line in file:lines() do bodies[#bodies + 1] = line end
file:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i + 1
  return wrk.format(nil, nil, nil, bodies[(i - 1) % #bodies + 1])
end
"""
WRK_SUMMARY = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('MAHN {"requests": %d, "duration_us": %d, "socket_errors": %d, "status_errors": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


def wrk_level(url: str, path: str, bodies: list[bytes] | None, clients: int, seconds: int, work: Path) -> dict:
    """`clients` keep-alive connections driven by wrk (one thread, C and epoll) for `seconds`, each sending its
    next request when the last is answered; POST bodies taken in turn from `bodies` (GET without). wrk's own
    latency percentiles over every request."""
    script, env = work / "wrk.lua", dict(os.environ)
    script.write_text((WRK_POST if bodies is not None else "") + WRK_SUMMARY)
    if bodies is not None:
        listed = work / "wrk-bodies.jsonl"
        listed.write_bytes(b"\n".join(bodies) + b"\n")
        env["MAHN_BODIES"] = str(listed)
    command = ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script), url + path]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("MAHN ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {done.stdout[-500:]} {done.stderr[-500:]}")
    got = orjson.loads(line[5:])
    wall = got["duration_us"] / 1e6
    return {"requests": got["requests"], "errors": got["socket_errors"] + got["status_errors"], "error_examples": [],
            "seconds": wall, "requests_per_s": got["requests"] / wall, "p50_ms": got["p50_us"] / 1000,
            "p90_ms": got["p90_us"] / 1000, "p99_ms": got["p99_us"] / 1000, "max_ms": got["max_us"] / 1000,
            "capped": False, "_kept": {}}


def check_answers(recommender, histories: list[list[str]], kept: dict[int, bytes]) -> dict:
    """The kept responses against the Python API's answers for the same histories."""
    bad = []
    for i, content in kept.items():
        served = orjson.loads(content)["items"]
        expected = recommender.recommend(histories[i % len(histories)], K)
        same_keys = [r["key"] for r in served] == [r.key for r in expected]
        diff = max((abs(r["score"] - e.score) for r, e in zip(served, expected, strict=False)), default=0.0)
        if not same_keys or diff > TOLERANCE:
            bad.append({"request": i, "same_keys": same_keys, "max_score_diff": diff})
    return {"checked": len(kept), "mismatches": len(bad), "mismatch_examples": bad[:3]}


def percentiles(values: list[float]) -> dict:
    ms = np.array(values) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def profile(run: Path, histories: list[list[str]], threads: tuple[int, ...] = (1, 2)) -> dict:
    """Where one request's time goes, measured in this process (no HTTP): parsing and validating the JSON
    request, the Recommender (its encode, the matrix product with the item table, the top-k), per torch
    thread count (the server uses torch's default: one per core), building and serialising the response,
    and the whole application called over ASGI (1 torch thread)."""
    from mahn.serve.schemas import RecommendedItem, RecommendRequest, RecommendResponse

    recommender = mahn.load(run, device="cpu")
    table = recommender.item_table()
    bodies = [orjson.dumps({"history": h, "k": K}) for h in histories]
    out = {"histories": len(histories), "items": len(recommender), "dim": int(table.shape[1])}
    parse = []
    for body in bodies:
        began = time.perf_counter()
        RecommendRequest.model_validate_json(body)
        parse.append(time.perf_counter() - began)
    out["parse_and_validate_request"] = percentiles(parse)
    before = torch.get_num_threads()
    for count in threads:
        torch.set_num_threads(count)
        parts = {"recommend": [], "encode": [], "matmul": [], "topk": []}
        for history in histories:
            began = time.perf_counter()
            recommender.recommend(history, K)
            parts["recommend"].append(time.perf_counter() - began)
            window = [recommender.ids[k] for k in history][-recommender.max_len :]
            with torch.no_grad():
                began = time.perf_counter()
                state = recommender.model.encode(torch.tensor([window]))
                parts["encode"].append(time.perf_counter() - began)
                began = time.perf_counter()
                scores = (state @ table.T)[0]
                parts["matmul"].append(time.perf_counter() - began)
                began = time.perf_counter()
                torch.topk(scores, K)
                parts["topk"].append(time.perf_counter() - began)
        out[f"torch_threads_{count}"] = {name: percentiles(v) for name, v in parts.items()}
    torch.set_num_threads(before)
    respond = []
    for history in histories:
        recs = recommender.recommend(history, K)
        began = time.perf_counter()
        RecommendResponse(run="main", items=[RecommendedItem(key=r.key, title=r.title, score=r.score, image_url=None)
                                             for r in recs]).model_dump_json()
        respond.append(time.perf_counter() - began)
    out["build_and_serialise_response"] = percentiles(respond)
    out["app_in_process"] = asyncio.run(in_process(run, bodies))
    return out


async def in_process(run: Path, bodies: list[bytes]) -> dict:
    """The whole application (FastAPI: routing, validation, the thread pool, the Recommender, the response)
    called in this process over ASGI, one request at a time: the server's share without HTTP and sockets."""
    from mahn.serve import create_app

    app, out = create_app(run, device="cpu"), {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        for name, send in (("GET /health", lambda body: client.get("/health")),
                           ("POST /recommend", lambda body: client.post(
                               "/recommend", content=body, headers={"content-type": "application/json"}))):
            for body in bodies[:20]:  # warm-up
                await send(body)
            times = []
            for body in bodies:
                began = time.perf_counter()
                response = await send(body)
                times.append(time.perf_counter() - began)
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: {response.status_code} {response.text[:200]}")
            out[name] = percentiles(times)
    return out


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (done.stdout or done.stderr).split(" [", 1)[0].strip()


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_speed() -> dict:
    """What this machine can do, so runs on different hosts can be compared: the fp32 matmul rate (train_speed's
    ceiling: 2048 x 2048, best of 5, on one thread and on every core) and the rate one thread reads memory (a
    64 MiB sum; a request's product with a large item table is bound by it)."""
    before, out = torch.get_num_threads(), {}
    for threads in (1, os.cpu_count() or 1):
        out[f"matmul_gflops_{threads}_threads"] = round(matmul_ceiling(threads), 1)
    torch.set_num_threads(1)
    big = torch.randn(16 * 2**20)
    big.sum()
    began = time.perf_counter()
    for _ in range(10):
        big.sum()
    out["memory_read_gb_s_1_thread"] = round(10 * big.numel() * 4 / (time.perf_counter() - began) / 1e9, 1)
    torch.set_num_threads(before)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="Requests per level [400].")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="Concurrency levels [1 8 32].")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="`mahn serve --workers` [1 2].")
    parser.add_argument("--server-threads", type=int, nargs="+", default=[0, 1],
                        help="OMP_NUM_THREADS of the server: torch's intra-op threads (0: torch's default, one per "
                             "core) [0 1].")
    parser.add_argument("--catalogues", nargs="+", default=["demo", "shop", "clothing"],
                        choices=["demo", "shop", "clothing"])
    parser.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx",
                        help="What sends the load: wrk (C, one thread: the latency is the server's) or httpx "
                             "threads in this process [wrk when it is installed].")
    parser.add_argument("--duration", type=int, default=10, help="Seconds per level with wrk [10].")
    parser.add_argument("--time-cap", type=float, default=60.0, help="Seconds at most per level with httpx [60].")
    parser.add_argument("--sample", type=int, default=50, help="Responses checked against the Python API per level.")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mahn-serve-load",
                        help="Where the Clothing dataset and run are made and kept for reruns.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.client == "wrk" and shutil.which("wrk") is None:
        parser.error("--client wrk: wrk is not installed (apt-get install wrk), or use --client httpx")
    torch.set_num_threads(1)  # this process only checks answers; leave the cores to the server
    args.work.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    def log(message: str) -> None:
        print(message, flush=True)
        notes.append(message)

    started_load, speed = loadavg(), machine_speed()
    runs = {}
    if "demo" in args.catalogues:
        runs["demo"] = demo_run(log)
    if "shop" in args.catalogues:
        runs["shop"] = shop_run(args.work, log)
    if "clothing" in args.catalogues and (run := clothing_run(args.work, log)) is not None:
        runs["clothing"] = run
    rng = np.random.default_rng(args.seed)
    results, profiles, models = [], {}, {}
    for name, run in runs.items():
        recommender = mahn.load(run, device="cpu")
        record = recommender.record
        models[name] = {"run": str(run), "model": record["model"], "model_config": record["model_config"],
                        "max_len": recommender.max_len, "items": len(recommender),
                        "users": recommender.dataset.n_users, "index": recommender.index_kind,
                        "modalities": model_modalities(recommender.model)}
        histories = test_histories(recommender, 2000, args.seed)
        bodies = [orjson.dumps({"history": h, "k": K}) for h in histories]
        lengths = [min(len(h), recommender.max_len) for h in histories]
        models[name]["history_length_read"] = {"mean": float(np.mean(lengths)), "max": int(max(lengths))}
        profiles[name] = profile(run, histories[:200])
        for workers, threads in itertools.product(args.workers, args.server_threads):
            log(f"{name}: {len(recommender):,} items, `mahn serve --workers {workers}`"
                + (f", OMP_NUM_THREADS={threads}" if threads else ""))
            with server(run, workers, args.work / f"serve-{name}-{workers}.log", threads) as served:
                url = served.url
                load_level(url, "/recommend", bodies, 2, 40, args.time_cap, set())  # warm-up (each worker)
                for kind, clients in [("health", c) for c in (1, 8)] + [("recommend", c) for c in args.clients]:
                    offset = int(rng.integers(len(bodies)))
                    rotated = bodies[offset:] + bodies[:offset]
                    keep = set(rng.choice(args.requests, min(args.sample, args.requests), replace=False).tolist())
                    before, cpu_before = loadavg(), cpu_seconds()
                    if args.client == "wrk":
                        level = wrk_level(url, f"/{kind}", rotated if kind == "recommend" else None, clients,
                                          args.duration, args.work)
                    else:
                        level = load_level(url, f"/{kind}", rotated if kind == "recommend" else None, clients,
                                           args.requests, args.time_cap, keep if kind == "recommend" else set())
                    kept = level.pop("_kept")
                    (machine, ours), (machine_0, ours_0) = cpu_seconds(), cpu_before
                    other = max(0.0, (machine - machine_0) - (ours - ours_0))
                    row = {"catalogue": name, "items": len(recommender), "endpoint": kind, "workers": workers,
                           "server_threads": threads or "default",
                           "clients": clients, **level,
                           "loadavg_before": before, "loadavg_after": loadavg(),
                           # other processes' CPU during the level, in cores (0.5: half of one core)
                           "other_cpu_cores": round(other / level["seconds"], 3) if level["seconds"] else 0.0}
                    if kind == "recommend":
                        if args.client == "wrk":  # wrk keeps no answers: a sample sent as many at once, untimed
                            kept = load_level(url, "/recommend", rotated, clients, args.sample, args.time_cap,
                                              set(range(args.sample))).pop("_kept")
                        hist = histories[offset:] + histories[:offset]
                        row["correctness"] = check_answers(recommender, hist, kept)
                    results.append(row)
                    print(format_row(row), flush=True)
    ended_load = loadavg()
    # The load average lags by a minute and counts this benchmark's own server from the level before, so
    # "other jobs" is what the kernel says processes outside this benchmark used during the levels, over all
    # of them (a sub-second level's share is a few 10 ms ticks: the busiest level is recorded beside it).
    level_seconds = sum(r["seconds"] for r in results)
    other_share = sum(r["other_cpu_cores"] * r["seconds"] for r in results) / level_seconds if results else 0.0
    busiest = max((r["other_cpu_cores"] for r in results), default=0.0)
    targets = {}
    for name in ("shop", "clothing"):
        at8 = [r for r in results if r["catalogue"] == name and r["endpoint"] == "recommend" and r["clients"] == 8]
        if at8:
            targets[name] = {"p99_ms_limit": TARGET_MS, "clients": 8, "k": K,
                             "measured": {label(r): round(r["p99_ms"], 2) for r in at8},
                             "met_by": [label(r) for r in at8 if r["p99_ms"] < TARGET_MS]}
    report = {
        "benchmark": "serve_load", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), **speed, "platform": platform.platform(),
                    "python": platform.python_version(),
                    "torch": torch.__version__, "mahn": mahn.__version__, "httpx": httpx.__version__},
        "loadavg": {"start": started_load, "end": ended_load},
        "other_jobs_running": other_share > OTHER_CPU_LIMIT,
        "other_cpu_cores": round(other_share, 3), "other_cpu_cores_busiest_level": busiest,
        "note": (f"processes outside this benchmark used {other_share:.2f} of a core over the levels: these "
                 "latencies are those of a shared machine" if other_share > OTHER_CPU_LIMIT else
                 f"processes outside this benchmark used {other_share:.3f} of a core over the levels (at most "
                 f"{busiest:.2f} in one; /proc/stat against this benchmark's own processes): a quiet machine"),
        "k": K, "sample_checked": args.sample,
        **({"seconds_per_level": args.duration, "wrk": wrk_version(),
            "clients": "wrk connections (one wrk thread, keep-alive, each sending its next request when the last "
                       "is answered), on the same machine"} if args.client == "wrk" else
           {"requests_per_level": args.requests, "time_cap_s": args.time_cap,
            "clients": "threads in the benchmark process, one keep-alive httpx.Client each, on the same machine"}),
        "models": models, "targets": targets, "profile_ms": profiles, "results": results, "log": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    print()
    print(table(results))
    for name, target in targets.items():
        print(f"target p99 < {TARGET_MS:.0f} ms at 8 clients over {name}: {target['measured']} -> "
              f"{'met by ' + ', '.join(target['met_by']) if target['met_by'] else 'missed by every setting'}")
    print(f"load average: start {started_load}, end {ended_load}; {report['note']}")
    print(f"wrote {args.out}")


def model_modalities(model) -> list[str]:
    """The content a model reads: image and/or text (none for an ID-only model): MAHN's branches, MGT's sources."""
    if hasattr(model, "sources"):
        return list(model.sources)
    return [name for name, part in (("image", "visual"), ("text", "text")) if getattr(model, part, None) is not None]


def label(row: dict) -> str:
    return (f"workers={row['workers']},"
            f"threads={row['server_threads']}")


def format_row(row: dict) -> str:
    check = row.get("correctness")
    checked = f"{check['checked'] - check['mismatches']}/{check['checked']}" if check else "-"
    workers = f"{row['workers']}"
    return (f"| {row['catalogue']} | {row['items']:,} | {row['endpoint']} | {workers} | "
            f"{row['server_threads']} | {row['clients']} | {row['requests']} | {row['errors']} | "
            f"{row['requests_per_s']:.0f} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{checked} | {row['loadavg_before'][0]:.1f} / {row['loadavg_after'][0]:.1f} |")


def table(results: list[dict]) -> str:
    head = ("| catalogue | items | endpoint | workers | torch threads | clients | requests | errors | req/s | "
            "p50 ms | p90 ms | p99 ms | answers equal | load before / after |")
    return "\n".join([head, "|" + "---|" * 14, *(format_row(r) for r in results)])


if __name__ == "__main__":
    main()
