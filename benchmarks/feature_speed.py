"""Feature-extraction throughput on this machine: images/s (decode + EfficientNet-Lite0) and titles/s (MiniLM).

    python benchmarks/feature_speed.py [--data ../shared/data/hm-sample] [--images 512] [--titles 2000]

Uses the real H&M photos and product names. Prints a table and writes benchmarks/results/feature_speed.json.
Timings exclude model loading and one warm-up batch. The load average is recorded because the machine
may be shared: numbers taken under load understate the encoders' speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import torch

from mahn.features.encoders import make_image_encoder, make_text_encoder
from mahn.features.encoders.images import load_image
from mahn.io import write_json

REPO = Path(__file__).resolve().parents[1]


def rate(fn, items: list, warmup: list) -> float:
    fn(warmup)
    start = time.perf_counter()
    fn(items)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "hm-sample")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--titles", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "feature_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    articles = pl.read_csv(args.data / "articles.csv", infer_schema_length=0)
    paths = [str(p) for p in sorted((args.data / "images").rglob("*.jpg"))][: args.images]
    titles = [t for t in articles["prod_name"].to_list() if t][: args.titles]
    descriptions = [t for t in articles["detail_desc"].to_list() if t][: args.titles // 4]
    load_before = os.getloadavg()

    pool = ThreadPoolExecutor(args.workers)
    results = {
        "decode_images_per_s": rate(lambda p: list(pool.map(lambda s: load_image(s, 224), p)), paths, paths[:16]),
    }
    for runtime in ("onnx", "torch"):  # onnx: ONNX Runtime, the default when installed; torch: frozen TorchScript
        image_encoder = make_image_encoder("efficientnet-lite0", batch_size=args.batch_size, workers=args.workers,
                                           runtime=runtime)
        results[f"images_per_s_{runtime}"] = rate(image_encoder.encode, paths, paths[: args.batch_size])
    text_encoder = make_text_encoder("minilm")
    results["titles_per_s"] = rate(text_encoder.encode, titles, titles[:128])
    results["descriptions_per_s"] = rate(text_encoder.encode, descriptions, descriptions[:64])

    report = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "load_average_before": load_before, "load_average_after": os.getloadavg()},
              "settings": {"images": len(paths), "titles": len(titles), "descriptions": len(descriptions),
                           "batch_size": args.batch_size, "workers": args.workers,
                           "image_encoder": "efficientnet-lite0 224px (onnx and torch runtimes)",
                           "text_encoder": "minilm"},
              "results": {k: round(v, 1) for k, v in results.items()},
              "targets": {"images_per_s_onnx": 100, "titles_per_s": 200}}
    print(f"{'measure':<22} {'per second':>10}  (cpus {os.cpu_count()}, load {load_before[0]:.1f})")
    for key, value in report["results"].items():
        print(f"{key:<22} {value:>10.1f}")
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
