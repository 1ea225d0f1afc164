"""Speed of one training epoch and of evaluation on Amazon Phones, with the share of the machine's matmul
ceiling that training reaches.

    .venv/bin/python benchmarks/train_speed.py [--runs mahn:ce mahn:bpr sasrec:ce] [--threads 2] [--batch-size 256]
    .venv/bin/python benchmarks/train_speed.py --profile --runs sasrec:ce      # where the time goes
    .venv/bin/python benchmarks/train_speed.py --device cuda --precision bf16  # on a GPU (benchmarks/gpu.sh)

Phones is read from ../shared/data beside the checkout, or from $MAHN_PHONES (its user_sequence.txt).

Each run is MODEL:LOSS: MAHN cat-cat (d 50, max_len 50) with random 4096-d visual (as VGG16 fc7) and 768-d text
(as BERT) features, or SASRec (d 50, 2 blocks, 1 head, max_len 50). Features are random: only the timing
matters. Each run trains one epoch through the trainer's own `train_epoch`, in its own process (so its peak
RSS is its own), then scores the test users three ways: both protocols in one pass (what `mahn evaluate`
does), full ranking alone and uni100 alone.

FLOP/s ratio: the epoch's floating-point work, counted on real batches (torch's FlopCounterMode for matrix
products and attention, plus 3 x the forward cost of each LSTM/GRU, which the counter does not see) divided
by the epoch's seconds, over the machine's matmul ceiling (the best of 5 products: fp32 2048 x 2048 on a CPU at
the same threads, 8192 x 8192 in the run's precision on a GPU). Prints a table and writes
benchmarks/results/train_speed.json (--out).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the checkout
PHONES = Path(os.environ.get("MAHN_PHONES", SHARED / "amazon2014-phones" / "user_sequence.txt"))
RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"
MODELS = {"mahn": {"model": "mahn", "dim": 50, "variant": "cat-cat", "max_len": 50},
          "sasrec": {"model": "sasrec", "dim": 50, "blocks": 2, "heads": 1, "max_len": 50}}
FLOP_BATCHES = 8  # batches whose work is counted; the epoch's is their mean per sequence x its sequences


def prepare_phones(out: Path) -> None:
    from mahn.data.prepare import PrepareConfig, prepare
    from mahn.io import read_json, save_npy, write_json

    prepare(PHONES, "sequences", out, PrepareConfig(seed=0))
    manifest = read_json(out / "manifest.json")
    rng = np.random.default_rng(0)
    n_items = manifest["counts"]["items"]
    manifest["features"] = {}
    for modality, dim in (("image", 4096), ("text", 768)):
        save_npy(out / "features" / f"{modality}.npy", rng.standard_normal((n_items, dim), dtype=np.float32)
                 .astype(np.float16))
        save_npy(out / "features" / f"{modality}.mask.npy", np.ones(n_items, dtype=bool))
        manifest["features"][modality] = {"dim": dim, "encoder": "random (benchmark)"}
    write_json(out / "manifest.json", manifest)


def matmul_ceiling(threads: int, device: str = "cpu", precision: str = "fp32") -> float:
    """GFLOP/s of the best of 5 (size x size) products: fp32 on a CPU (2048), fp32 or bf16 on a GPU (8192)."""
    torch.set_num_threads(threads)
    size = 2048 if device == "cpu" else 8192
    dtype = torch.bfloat16 if precision == "bf16" and device != "cpu" else torch.float32
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(5))
    return 2 * size**3 / best / 1e9


def timed(work) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def recurrent_flops(model: nn.Module) -> tuple[list[int], list]:
    """Hooks that add 3 x the forward multiply-adds of every LSTM/GRU call (forward + backward) to a list."""
    counts, handles = [], []

    def hook(module, inputs, _):
        x = inputs[0]
        positions = x.data.shape[0] if isinstance(x, PackedSequence) else x.shape[0] * x.shape[1]
        gates = 4 if isinstance(module, nn.LSTM) else 3
        inputs_per_layer = [module.input_size] + [module.hidden_size] * (module.num_layers - 1)
        counts.append(sum(3 * 2 * gates * module.hidden_size * (n + module.hidden_size) * positions
                          for n in inputs_per_layer))

    for module in model.modules():
        if isinstance(module, nn.LSTM | nn.GRU):
            handles.append(module.register_forward_hook(hook))
    return counts, handles


def epoch_flops(model, dataset, users: np.ndarray, settings) -> float:
    """The floating-point work of one epoch over `users`, from FLOP_BATCHES counted batches."""
    from torch.utils.flop_counter import FlopCounterMode

    from mahn.training import make_batch

    rng = np.random.default_rng(1)
    order = rng.permutation(users)
    size = settings.train.batch_size
    counted, sequences = 0, 0
    recurrent, handles = recurrent_flops(model)
    for lo in range(0, min(len(order), FLOP_BATCHES * size), size):
        batch = make_batch(dataset, order[lo : lo + size], settings.train.max_len, rng).to(model.device)
        with FlopCounterMode(display=False) as counter:
            model.loss(batch).backward()
        counted += counter.get_total_flops()
        sequences += len(batch.users)
    model.zero_grad(set_to_none=True)
    for handle in handles:
        handle.remove()
    return (counted + sum(recurrent)) / sequences * len(users)


def fresh_model(root: Path, model_name: str, loss: str, batch_size: int, threads: int, device: str = "cpu",
                precision: str = "fp32"):
    """(dataset, settings, model on `device`) of one run, seeded, with the given torch threads."""
    from mahn.data import Dataset
    from mahn.device import resolve_device
    from mahn.models import build_model
    from mahn.settings import resolve

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dataset = Dataset(root)
    settings = resolve(("benchmark", {**MODELS[model_name], "loss": loss, "batch_size": batch_size,
                                      "progress": False, "device": device, "precision": precision}))
    model = build_model(model_name, settings.model_config, dataset).to(resolve_device(device))
    return dataset, settings, model


def one_run(root: Path, model_name: str, loss: str, batch_size: int, threads: int, ceiling: float,
            device: str = "cpu", precision: str = "fp32") -> dict:
    """In a fresh process: one epoch of MODEL with LOSS, then the three evaluations; its own peak RSS (and, on a
    GPU, its peak GPU memory)."""
    from mahn.evaluation import EvalConfig, evaluate
    from mahn.training import make_optimizer, train_epoch, training_users

    dataset, settings, model = fresh_model(root, model_name, loss, batch_size, threads, device, precision)
    users = training_users(dataset)
    flops = epoch_flops(model, dataset, users, settings)
    optimizer, _ = make_optimizer(model, settings.train)
    epoch = train_epoch(model, optimizer, dataset, users, settings.train, np.random.default_rng(0))
    evaluations = {}
    for label, protocols in (("both", ("uni100", "full")), ("full", ("full",)), ("uni100", ("uni100",))):
        config = EvalConfig(split="test", max_len=settings.train.max_len, groups=False, protocols=protocols)
        evaluate(model, dataset, config) if label == "both" else None  # the first pass warms the caches
        evaluations[label] = min(timed(lambda c=config: evaluate(model, dataset, c)) for _ in range(2))
    achieved = flops / epoch["seconds"] / 1e9
    return {"model": model_name, "loss": loss, "batch_size": batch_size, "threads": threads,
            "epoch_seconds": epoch["seconds"], "sequences": epoch["sequences"],
            "sequences_per_second": epoch["sequences"] / epoch["seconds"], "epoch_tflop": flops / 1e12,
            "achieved_gflops": achieved, "ceiling_ratio": achieved / ceiling,
            "eval_seconds": evaluations, "eval_users": int(dataset.evaluated.sum()), "device": device,
            "precision": precision, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if model.device.type == "cuda" else None}


def profile_run(root: Path, model_name: str, loss: str, batch_size: int, threads: int) -> str:
    """torch.profiler's operators by self time: 20 training batches (after 5 warm-up batches), then one uni100
    evaluation of the test users (after a warm-up one)."""
    from torch.profiler import profile

    from mahn.evaluation import EvalConfig, evaluate
    from mahn.training import make_batch, make_optimizer, training_users

    dataset, settings, model = fresh_model(root, model_name, loss, batch_size, threads)
    optimizer, _ = make_optimizer(model, settings.train)
    users, rng = training_users(dataset), np.random.default_rng(0)
    batches = [make_batch(dataset, users[lo : lo + batch_size], settings.train.max_len, rng)
               for lo in range(0, 25 * batch_size, batch_size)]

    def steps(part: list) -> None:
        for batch in part:
            optimizer.zero_grad(set_to_none=True)
            model.loss(batch).backward()
            optimizer.step()

    steps(batches[:5])
    with profile() as training:
        steps(batches[5:])
    config = EvalConfig(split="test", max_len=settings.train.max_len, groups=False, protocols=("uni100",))
    evaluate(model, dataset, config)
    with profile() as evaluation:
        evaluate(model, dataset, config)
    return "\n".join([f"{model_name}:{loss}, 20 training batches:",
                      training.key_averages().table(sort_by="self_cpu_time_total", row_limit=12),
                      f"{model_name}:{loss}, uni100 evaluation:",
                      evaluation.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)])


def main() -> None:
    from mahn.data import Dataset
    from mahn.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=["mahn:ce", "mahn:bpr", "sasrec:ce"],
                        help="MODEL:LOSS pairs (models: mahn, sasrec).")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu.sh) [cpu].")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: the forward pass under bfloat16 autocast, and the ceiling in bf16 [fp32].")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--profile", action="store_true",
                        help="Instead of timing: print torch.profiler's top operators for 20 training batches and "
                             "for a uni100 evaluation of each run (nothing written).")
    args = parser.parse_args()
    if not PHONES.exists():
        raise SystemExit(f"skipped: {PHONES} not found")
    runs = [tuple(run.split(":", 1)) for run in args.runs]
    if any(len(run) != 2 or run[0] not in MODELS for run in runs):
        raise SystemExit(f"--runs: each is MODEL:LOSS with MODEL one of {', '.join(MODELS)}")
    spawn = multiprocessing.get_context("spawn")
    load_before = os.getloadavg()
    ceiling = matmul_ceiling(args.threads, args.device, args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "phones"
        child = spawn.Process(target=prepare_phones, args=(root,))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit("preparing Phones failed")
        dataset = Dataset(root)
        counts = {"users": dataset.n_users, "items": dataset.n_items, "interactions": len(dataset.items)}
        results = []
        if args.profile:
            for model_name, loss in runs:
                with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                    print(pool.submit(profile_run, root, model_name, loss, args.batch_size, args.threads).result())
            return
        for model_name, loss in runs:
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                results.append(pool.submit(one_run, root, model_name, loss, args.batch_size, args.threads,
                                           ceiling, args.device, args.precision).result())
    report = {"dataset": "amazon2014-phones", **counts, "features": "random 4096-d visual, 768-d text (float16)",
              "models": MODELS, "threads": args.threads, "device": args.device, "precision": args.precision,
              "gpu": torch.cuda.get_device_name() if args.device != "cpu" else None, "torch": torch.__version__,
              "matmul_ceiling_gflops": ceiling, "runs": results, "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "date": datetime.now(UTC).isoformat(timespec="seconds")}
    write_json(args.out, report)
    print(f"Phones: {counts['users']:,} users, {counts['items']:,} items; {args.threads} threads; "
          f"matmul ceiling {ceiling:.0f} GFLOP/s; load average {load_before[0]:.1f} before")
    print("| model | loss | epoch s | seq/s | epoch TFLOP | GFLOP/s | of ceiling | eval both s | full alone s | "
          "uni100 alone s | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        e = r["eval_seconds"]
        print(f"| {r['model']} | {r['loss']} | {r['epoch_seconds']:.1f} | {r['sequences_per_second']:,.0f} | "
              f"{r['epoch_tflop']:.3f} | {r['achieved_gflops']:.0f} | {r['ceiling_ratio']:.0%} | {e['both']:.2f} | "
              f"{e['full']:.2f} | {e['uni100']:.2f} | {r['peak_rss_gib']:.2f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
