"""`mahn demo`: the whole pipeline on the synthetic shop, offline, in one command.

demo data -> prepare -> features (real default encoders) -> train MAHN and MAHN-V-T -> a table of both
protocols (test split) and example recommendations with titles. Every step is skipped when its
output is already there, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mahn.errors import DataError
from mahn.evaluation import PROTOCOLS, SHOWN, seed_stats
from mahn.io import read_json, write_json

MODELS = {"MAHN": "", "MAHN-V-T": "vt"}  # label -> ablation


@dataclass
class DemoConfig:
    out: Path = Path("demo")
    users: int = 3000
    items: int = 600
    data_seed: int = 0
    seeds: int = 1  # training seeds 0..seeds-1; the table shows mean ± std when > 1
    epochs: int = 20
    patience: int = 3
    batch_size: int = 128
    progress: bool = True


def build_dataset(config: DemoConfig, say=print) -> Path:
    from mahn.data.negatives import TooFewItems
    from mahn.data.prepare import PrepareConfig, prepare
    from mahn.demo.shop import generate_demo
    from mahn.features import FeatureConfig, extract_features
    from mahn.readers import ReaderOptions

    raw, data = config.out / "raw", config.out / "data"
    made = [] if config.out.exists() else [config.out]
    if not (raw / "interactions.csv").exists():
        say(f"[1/4] generating the demo shop in {raw}")
        made += [] if raw.exists() else [raw]
        generate_demo(raw, users=config.users, items=config.items, seed=config.data_seed, force=raw.exists())
    if not (data / "manifest.json").exists():
        say(f"[2/4] preparing {data}")
        try:
            prepare(raw / "interactions.csv", "csv", data, PrepareConfig(seed=config.data_seed, force=data.exists()),
                    items=raw / "items.csv", options=ReaderOptions(time_col="timestamp"))
        except TooFewItems as error:
            for folder in reversed(made):  # a shop too small for the protocol leaves nothing behind
                shutil.rmtree(folder, ignore_errors=True)
            raise DataError(f"a shop of {config.users} users and {config.items} items is too small for the "
                            f"protocol, which ranks each test item against {PrepareConfig().num_negatives} items "
                            f"its user never saw, and {error.items} items are left after the 5-core filter: "
                            "give more --users (30 or more)", "--users") from error
    if not {"image", "text"} <= set(read_json(data / "manifest.json").get("features", {})):
        say("[3/4] extracting image (EfficientNet-Lite0) and text (MiniLM) features")
        for report in extract_features(data, FeatureConfig(progress=config.progress)):
            say("      " + report.line())
    return data


def train_models(config: DemoConfig, data: Path, say=print) -> dict[str, list[dict]]:
    """Train every model of MODELS for every seed; returns label -> test results, one per seed."""
    from mahn.api import load
    from mahn.settings import resolve
    from mahn.training import train
    from mahn.training.loop import resume_refusal

    results: dict[str, list[dict]] = {label: [] for label in MODELS}
    for seed in range(config.seeds):
        for label, ablate in MODELS.items():
            run = config.out / "runs" / f"{label.lower()}-seed{seed}"
            if not (run / "summary.json").exists():
                say(f"[4/4] training {label} (seed {seed}) into {run}")
                started = time.perf_counter()
                settings = resolve(("demo", {"model": "mahn", "ablate": ablate,
                                             "epochs": config.epochs, "patience": config.patience,
                                             "batch_size": config.batch_size, "seed": seed,
                                             "progress": config.progress}))
                # a cut run continues; one cut under other settings (another --batch-size) starts again
                resume = (run / "checkpoints" / "last.safetensors").exists() and resume_refusal(run, settings) is None
                train(data, run, settings, resume=resume, force=True)
                say(f"      done in {time.perf_counter() - started:.0f} s")
            test_file = run / "test.json"
            if not test_file.exists():
                write_json(test_file, load(run).evaluate("test"))
            results[label].append(read_json(test_file))
    return results


def summarise(results: dict[str, list[dict]]) -> dict:
    """label -> protocol -> metric -> {"mean", "std", "values"} over seeds."""
    return {label: seed_stats(runs, SHOWN) for label, runs in results.items()}


def print_table(summary: dict, seeds: int, console) -> None:
    from rich.table import Table

    table = Table(title=f"demo, test split ({seeds} seed{'s' if seeds > 1 else ''}"
                        f"{', mean ± std' if seeds > 1 else ''})")
    table.add_column("protocol")
    table.add_column("metric")
    for label in summary:
        table.add_column(label, justify="right")
    for protocol in PROTOCOLS:
        for metric in SHOWN:
            cells = []
            for label in summary:
                cell = summary[label][protocol][metric]
                cells.append(f"{cell['mean']:.4f}" + (f" ± {cell['std']:.4f}" if seeds > 1 else ""))
            table.add_row(protocol, metric, *cells)
    console.print(table)


def print_examples(run: Path, console, users: int = 2, k: int = 5) -> None:
    from mahn.api import load

    recommender = load(run)
    dataset = recommender.dataset
    evalset = dataset.eval_set("test")
    for row in range(min(users, len(evalset.users))):
        user = evalset.users[row]
        history = dataset.items[dataset.offsets[user] : evalset.input_ends[row]]
        keys = [recommender.keys[i] for i in history]
        console.print(f"\n[bold]user {user}[/bold], last items bought:")
        for key in keys[-3:]:
            console.print(f"  - {recommender.titles[recommender.ids[key]]}")
        console.print(f"  actually bought next: [green]{recommender.titles[evalset.targets[row]]}[/green]")
        console.print(f"  MAHN recommends (top {k}):")
        for rank, rec in enumerate(recommender.recommend(keys, k), start=1):
            mark = " [green]<- the next purchase[/green]" if rec.key == recommender.keys[evalset.targets[row]] else ""
            console.print(f"   {rank}. {rec.title}{mark}")


def run_demo(config: DemoConfig) -> dict:
    from rich.console import Console

    console = Console(soft_wrap=True)  # long lines stay whole in a log
    started = time.perf_counter()
    data = build_dataset(config, console.print)
    results = train_models(config, data, console.print)
    summary = summarise(results)
    write_json(config.out / "results.json", {"config": {**vars(replace(config, out=str(config.out)))},
                                             "test": summary})
    print_table(summary, config.seeds, console)
    print_examples(config.out / "runs" / "mahn-seed0", console)
    console.print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; results in {config.out / 'results.json'}")
    return summary
