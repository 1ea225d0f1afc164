"""A soak of `mahn serve`: mixed traffic for a fixed time against a multimodal model, items added at a steady
rate and the model swapped twice while the clients keep sending, with errors, latency and the server's memory
recorded minute by minute.

    .venv/bin/python benchmarks/serve_soak.py [--minutes 30] [--run RUN] [--swap-run RUN2] [--out FILE]
    .venv/bin/python benchmarks/serve_soak.py --judge FILE      # the targets of a finished soak, recomputed

The server is the real command (`python -m mahn serve COPY --port P --device cpu --token-file F`) on a free
loopback port, over a copy of RUN (items are added into it); it stops by itself after `--minutes`. Defaults:
RUN the MGT and RUN2 the MAHN run of H&M with images and product texts (`scripts/defaults.sh report hm` trains
both; or `mahn train runs/real/hm --model mgt|mahn`). Traffic, from `--clients` threads, each with its own
keep-alive connection and a pause of `--pause-ms` between requests:
- 70% POST /recommend (k = 10) with the history of a real test user, a third of them ending in an item added
  during the soak;
- 10% POST /recommend/batch of 8 such histories; 15% GET /items?query= (a word of a title); 5% GET /items/KEY;
- one POST /items every `--add-every` seconds (with the token): a new item with a real H&M photo and a text,
  encoded by the dataset's own EfficientNet-Lite0 and MiniLM encoders;
- two swaps (POST /admin/reload, with the token) at a third and two thirds of the run: to RUN2 (a copy), then
  back to the served copy of RUN; the items added so far are carried over each time.
A warm-up (one add, 50 requests) comes before the clock starts. Afterwards every added item must be found
(GET /items/KEY) and ranked (POST /recommend with it as the only candidate).

Writes benchmarks/results/serve_soak.json: per minute the requests, 5xx and failed requests, p50/p99 (ms),
the server's RSS (MiB) and the load average; the totals; whether each target holds: zero 5xx, zero failed
requests, p99 of every minute within 2x of the first minute's, RSS growth under 10% after minute 5 (the last
five minutes against minute 5; the highest sample, which includes the swaps, beside it), every added item
served.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/servers.py: `mahn serve` as a child process
from mahn.io import read_json, write_json  # noqa: E402
from servers import mahn_serve, serving  # noqa: E402

RUNS = REPO / "runs" / "reproduce" / "defaults" / "hm" / "runs" / "standard"
RESULTS = Path(__file__).resolve().parent / "results" / "serve_soak.json"
MIX = (("recommend", 0.70), ("batch", 0.10), ("search", 0.15), ("item", 0.05))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Soak:
    """The shared state of the clients, the adder, the swapper and the sampler."""

    def __init__(self, url: str, token: str, histories: list[list[str]], new_items: list[dict], words: list[str],
                 started: float):
        self.url, self.token, self.histories, self.new_items, self.words = url, token, histories, new_items, words
        self.started, self.stop = started, threading.Event()
        self.lock = threading.Lock()
        self.requests: list[tuple[float, str, int | None, float]] = []  # (t, kind, status or None, ms)
        self.failures: list[str] = []
        self.added: list[str] = []
        self.swaps: list[dict] = []
        self.samples: list[dict] = []

    def record(self, kind: str, began: float, status: int | None, detail: str = "") -> None:
        with self.lock:
            self.requests.append((began - self.started, kind, status, (time.perf_counter() - began) * 1000))
            if (status is None or status >= 400) and len(self.failures) < 20:
                self.failures.append(f"{kind} -> {status}: {detail[:300]}")

    def history(self, rng: random.Random) -> list[str]:
        history = list(rng.choice(self.histories))
        with self.lock:
            added = list(self.added)
        if added and rng.random() < 1 / 3:
            history.append(rng.choice(added))
        return history

    def client(self, seed: int, pause_s: float) -> None:
        rng = random.Random(seed)
        kinds, weights = zip(*MIX, strict=True)
        with httpx.Client(base_url=self.url, timeout=60) as session:
            while not self.stop.is_set():
                kind = rng.choices(kinds, weights)[0]
                began = time.perf_counter()
                try:
                    if kind == "recommend":
                        response = session.post("/recommend", json={"history": self.history(rng), "k": 10})
                    elif kind == "batch":
                        response = session.post("/recommend/batch", json={"requests": [
                            {"history": self.history(rng), "k": 10} for _ in range(8)]})
                    elif kind == "search":
                        response = session.get("/items", params={"query": rng.choice(self.words), "limit": 20})
                    else:
                        response = session.get(f"/items/{rng.choice(self.histories)[0]}")
                    self.record(kind, began, response.status_code, response.text if response.status_code >= 400 else "")
                except httpx.HTTPError as error:
                    self.record(kind, began, None, repr(error))
                time.sleep(pause_s)

    def adder(self, every_s: float) -> None:
        with httpx.Client(base_url=self.url, timeout=120, headers={"Authorization": f"Bearer {self.token}"}) as s:
            for item in self.new_items:
                if self.stop.wait(every_s):
                    return
                began = time.perf_counter()
                try:
                    response = s.post("/items", json={"items": [item]})
                    self.record("add", began, response.status_code, response.text)
                    if response.status_code == 200:
                        with self.lock:
                            self.added.append(item["key"])
                except httpx.HTTPError as error:
                    self.record("add", began, None, repr(error))

    def swapper(self, at_s: list[float], runs: list[Path]) -> None:
        with httpx.Client(base_url=self.url, timeout=600, headers={"Authorization": f"Bearer {self.token}"}) as s:
            for when, run in zip(at_s, runs, strict=True):
                if self.stop.wait(max(0.0, self.started + when - time.perf_counter())):
                    return
                began = time.perf_counter()
                response = s.post("/admin/reload", json={"run": str(run)})
                self.record("swap", began, response.status_code, response.text)
                self.swaps.append({"at_s": round(began - self.started, 1), "status": response.status_code,
                                   **(response.json() if response.status_code == 200 else {"error": response.text})})

    def sampler(self, pid: int, every_s: float) -> None:
        while not self.stop.wait(every_s):
            self.samples.append({"t_s": round(time.perf_counter() - self.started, 1), "rss_mib": round(rss_mib(pid), 1),
                                 "load": os.getloadavg()[0]})


def per_minute(soak: Soak, minutes: int, first: int = 0) -> list[dict]:
    """One row per minute from `first` to `minutes` - 1 (traffic only: adds and swaps are counted in the totals);
    the requests are read once, sorted into their minutes."""
    with soak.lock:
        requests, samples = list(soak.requests), list(soak.samples)
    by_minute: dict[int, list] = {m: [] for m in range(first, minutes)}
    for r in requests:
        if r[1] in dict(MIX) and int(r[0] // 60) in by_minute:
            by_minute[int(r[0] // 60)].append(r)
    rows = []
    for minute, inside in by_minute.items():
        ms = np.array([r[3] for r in inside if r[2] == 200] or [np.nan])
        taken = [s for s in samples if int(s["t_s"] // 60) == minute]
        rows.append({"minute": minute + 1, "requests": len(inside),
                     "errors_5xx": sum(1 for r in inside if r[2] is not None and r[2] >= 500),
                     "failed": sum(1 for r in inside if r[2] is None or r[2] >= 400),
                     "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
                     "rss_mib": max((s["rss_mib"] for s in taken), default=None),
                     "load": round(float(np.mean([s["load"] for s in taken])), 2) if taken else None})
    return rows


def judge(minutes: list[dict], failed_requests: int, unserved: list[str], swaps: list[dict]) -> dict:
    """The targets. RSS growth compares the last five minutes (the median of each minute's highest sample) with
    minute 5: what the server keeps. The highest sample after minute 5 over minute 5 is recorded beside it: it
    includes the seconds of a swap, when the old and the new run are both in memory by design."""
    first_p99 = minutes[0]["p99_ms"]
    rss = [m["rss_mib"] for m in minutes]
    base = rss[4] if len(rss) > 5 and rss[4] is not None else None
    kept = [r for r in rss[-5:] if r is not None]
    growth = float(np.median(kept)) / base - 1 if base and kept else None
    peak = max(r for r in rss[5:] if r is not None) / base - 1 if base else None
    return {
        "zero_5xx": all(m["errors_5xx"] == 0 for m in minutes),
        "zero_failed_requests": failed_requests == 0,
        "p99_within_2x_of_first_minute": all(m["p99_ms"] <= 2 * first_p99 for m in minutes),
        "worst_p99_over_first": round(max(m["p99_ms"] for m in minutes) / first_p99, 2),
        "rss_minute_5_mib": base,
        "rss_growth_after_minute_5": None if growth is None else round(growth, 4),
        "rss_growth_under_10_percent": growth is not None and growth < 0.10,
        "rss_peak_over_minute_5": None if peak is None else round(peak, 4),
        "every_added_item_served": not unserved and len(swaps) == 2 and all(s["status"] == 200 for s in swaps),
    }


def new_items(data: Path, images: Path, count: int, seed: int) -> list[dict]:
    """New items made of real H&M photos and product texts, under keys the dataset does not have."""
    items = pl.read_parquet(data / "items.parquet").filter(pl.col("image").is_not_null())
    rows = items.sample(n=min(count, items.height), seed=seed).to_dicts()
    out = []
    for n, row in enumerate(rows):
        image = os.path.relpath(os.path.realpath(row["image"]), images)
        out.append({"key": f"soak-{n:05d}", "title": f"{row['title']} (new)", "text": row.get("text") or None,
                    "image": image})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--run", type=Path, default=RUNS / "mgt-seed0")
    parser.add_argument("--swap-run", type=Path, default=RUNS / "mahn-seed0")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--pause-ms", type=float, default=20.0)
    parser.add_argument("--add-every", type=float, default=10.0, help="Seconds between two added items.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge", type=Path, help="Only recompute the targets of this result file (no soak).")
    args = parser.parse_args()
    if args.judge:
        result = read_json(args.judge)
        result["targets"] = judge(result["per_minute"], result["failed_requests"], result["unserved_added_items"],
                                  result["swaps"])
        write_json(args.judge, result)
        print(result["targets"])
        return

    import mahn

    config = read_json(args.run / "config.json")
    data = Path(config["dataset"])
    recommender = mahn.load(args.run, device="cpu")
    test = recommender.dataset.eval_set("test")
    dataset, keys = recommender.dataset, recommender.keys
    histories = [[keys[i] for i in dataset.items[dataset.offsets[u]: end]][-50:]
                 for u, end in zip(test.users, test.input_ends, strict=True)]
    words = sorted({w for t in recommender.titles if t for w in t.split() if len(w) > 3})
    images = Path(os.path.commonpath([os.path.dirname(os.path.realpath(p)) for p in recommender.images if p]))
    total_adds = int(args.minutes * 60 / args.add_every) + 2
    items = new_items(data, images, total_adds + 1, args.seed)
    del recommender

    with tempfile.TemporaryDirectory(prefix="mahn-soak-") as tmp:
        tmp = Path(tmp)
        served, other = tmp / "served", tmp / "other"
        shutil.copytree(args.run, served, ignore=shutil.ignore_patterns("checkpoints"))
        shutil.copytree(args.swap_run, other, ignore=shutil.ignore_patterns("checkpoints"))
        token = secrets.token_urlsafe(32)
        (tmp / "token").write_text(token)
        log = tmp / "server.log"
        command = lambda port: mahn_serve(str(served), "--port", str(port), "--device", "cpu",  # noqa: E731
                                          "--token-file", str(tmp / "token"), "--images-root", str(images))
        with serving(command, timeout=300, log=log) as server:
            warm = Soak(server.url, token, histories, items[:1], words, time.perf_counter())
            warm.adder(0.0)
            for _ in range(50):
                httpx.post(f"{server.url}/recommend", json={"history": histories[0], "k": 10}, timeout=60)
            soak = Soak(server.url, token, histories, items[1:], words, time.perf_counter())
            soak.added = list(warm.added)
            seconds = args.minutes * 60
            threads = [threading.Thread(target=soak.client, args=(args.seed + c, args.pause_ms / 1000))
                       for c in range(args.clients)]
            threads += [threading.Thread(target=soak.adder, args=(args.add_every,)),
                        threading.Thread(target=soak.swapper, args=([seconds / 3, 2 * seconds / 3], [other, served])),
                        threading.Thread(target=soak.sampler, args=(server.process.pid, 5.0))]
            print(f"soaking {server.url} for {args.minutes} min: {args.clients} clients, an add every "
                  f"{args.add_every:g} s, swaps at {seconds / 3:.0f} s and {2 * seconds / 3:.0f} s", flush=True)
            for thread in threads:
                thread.start()
            while time.perf_counter() - soak.started < seconds:
                time.sleep(min(60.0, seconds - (time.perf_counter() - soak.started)))
                finished = int((time.perf_counter() - soak.started) // 60)
                done = per_minute(soak, finished, first=max(0, finished - 1))  # the minute just ended
                if done:
                    print(f"minute {done[-1]['minute']}: {done[-1]}", flush=True)
            soak.stop.set()
            for thread in threads:
                thread.join(timeout=600)
            # every added item is served: found, and ranked when it is the only candidate
            unserved = []
            with httpx.Client(base_url=server.url, timeout=60) as session:
                for key in soak.added:
                    found = session.get(f"/items/{key}")
                    ranked = session.post("/recommend", json={"history": histories[0], "k": 1, "candidates": [key]})
                    if found.status_code != 200 or ranked.status_code != 200 or ranked.json()["items"][0]["key"] != key:
                        unserved.append(key)
            model = httpx.get(f"{server.url}/model", timeout=60).json()
        server_log = log.read_text(errors="replace") if log.exists() else ""

    minutes = per_minute(soak, args.minutes)
    requests = [r for r in soak.requests if r[1] in dict(MIX)]
    result = {
        "benchmark": "serve_soak", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/serve_soak.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "run": str(args.run), "swap_run": str(args.swap_run), "model": model["name"], "items_at_end": model["items"],
        "minutes": args.minutes, "clients": args.clients, "pause_ms": args.pause_ms, "add_every_s": args.add_every,
        "requests": len(requests), "errors_5xx": sum(1 for r in soak.requests if r[2] is not None and r[2] >= 500),
        "failed_requests": sum(1 for r in soak.requests if r[2] is None or r[2] >= 400),
        "failure_examples": soak.failures, "swaps": soak.swaps, "added_items": len(soak.added),
        "unserved_added_items": unserved,
        "p99_ms_series": [m["p99_ms"] for m in minutes], "p50_ms_series": [m["p50_ms"] for m in minutes],
        "rss_mib_series": [m["rss_mib"] for m in minutes], "load_series": [m["load"] for m in minutes],
        "per_minute": minutes,
        "targets": judge(minutes, sum(1 for r in soak.requests if r[2] is None or r[2] >= 400), unserved,
                         soak.swaps),
        "server_log_tail": server_log[-2000:],
    }
    write_json(args.out, result)
    print({k: v for k, v in result.items() if k in ("requests", "errors_5xx", "failed_requests", "added_items",
                                                     "targets")})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
