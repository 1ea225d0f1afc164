"""The `mahn` command line. Each command is a thin wrapper over a library function."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mahn.errors import DataError, disk_full

DEMO_ENTRIES = {"raw", "data", "runs", "results.json"}  # what `mahn demo` writes; it resumes a folder holding them
DEVICE_HELP = "auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multimodal sequential recommendation: prepare data, extract features, train, evaluate.")


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def at_least_one(*options: tuple[str, int]) -> None:
    """Refuse the first of (flag, value) below 1, naming the flag."""
    for flag, value in options:
        if value < 1:
            fail(f"{flag} must be at least 1, got {value}")


@app.command()
def prepare(
    source: Path = typer.Argument(..., help="Interactions file (or RecBole .inter, Amazon reviews, sequences)."),
    format: str = typer.Option(..., "--format", "-f", help="amazon2014 | amazon2018 | sequences | recbole | csv"),
    out: Path = typer.Option(..., "--out", "-o", help="Output dataset directory."),
    items: Path | None = typer.Option(None, help="Items/metadata file (titles, texts, images)."),
    kcore: int = typer.Option(0, help="Iterative k-core on users and items (the paper: 5)."),
    require: str = typer.Option("", help="Drop items lacking these, comma-separated: title,text,image."),
    negatives: int = typer.Option(100, help="Evaluation negatives per user and split."),
    seed: int = typer.Option(0, help="Seed of the evaluation negatives."),
    force: bool = typer.Option(False, help="Replace an existing output directory."),
    user_col: str = typer.Option("user", help="csv: the user column."),
    item_col: str = typer.Option("item", help="csv: the item column."),
    time_col: str | None = typer.Option(None, help="csv: the time column (seconds, ISO date/datetime)."),
    time_format: str | None = typer.Option(None, help="csv: strptime format of the time column."),
    item_key_col: str | None = typer.Option(None, help="Items table: the key column (default: --item-col)."),
    title_col: str | None = typer.Option(None, help="Items table: the title column (default: title)."),
    text_col: list[str] = typer.Option([], help="Items table: text column(s), joined (default: text)."),
    image_col: str | None = typer.Option(None, help="Items table: the image path/URL column (default: image)."),
    image_pattern: str | None = typer.Option(None, help="Image path from the key, e.g. 'images/{key:.3}/{key}.jpg'."),
    image_root: Path | None = typer.Option(None, help="Folder relative image paths resolve against."),
    images_anywhere: bool = typer.Option(False, help="Allow image paths outside the image folder (absolute, "
                                         "'..', links); refused by default."),
) -> None:
    """Turn source files into a prepared dataset: filter, k-core, dense ids, split, stored negatives."""
    from mahn.data.prepare import PrepareConfig
    from mahn.data.prepare import prepare as run_prepare
    from mahn.readers import ReaderOptions

    config = PrepareConfig(kcore=kcore, require=tuple(r.strip() for r in require.split(",") if r.strip()),
                           num_negatives=negatives, seed=seed, force=force)
    options = ReaderOptions(user_col=user_col, item_col=item_col, time_col=time_col, time_format=time_format,
                            item_key_col=item_key_col, title_col=title_col, text_cols=tuple(text_col),
                            image_col=image_col, image_pattern=image_pattern, image_root=image_root,
                            images_anywhere=images_anywhere)
    manifest = run_prepare(source, format, out, config, items=items, options=options)
    counts = manifest["counts"]
    typer.echo(f"prepared {out}: {counts['users']:,} users, {counts['items']:,} items, "
               f"{counts['interactions']:,} interactions in {manifest['seconds']:.1f} s")
    for warning in manifest.get("warnings", []):
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


@app.command("negatives")
def negatives_command(
    dataset: Path = typer.Argument(..., help="Prepared dataset directory."),
    seed: int = typer.Option(0, help="Seed of the draw."),
    count: int = typer.Option(100, help="Negatives per user and split."),
) -> None:
    """(Re)draw the stored evaluation negatives of a dataset with a given seed."""
    from mahn.data.negatives import draw_negatives

    at_least_one(("--count", count))
    manifest = draw_negatives(dataset, count, seed)
    typer.echo(f"drew {count} negatives per user and split with seed {seed}: "
               + ", ".join(f"{k} {v[:12]}" for k, v in manifest["negatives"]["sha256"].items()))


@app.command("cold-split")
def cold_split_command(
    dataset: Path = typer.Argument(..., help="Prepared dataset directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Derived dataset directory to write."),
    fraction: float = typer.Option(0.1, help="Share of the items held out of training and validation."),
    seed: int = typer.Option(0, help="Seed of the choice of new items."),
    force: bool = typer.Option(False, help="Replace an existing output directory."),
) -> None:
    """Derive the new-item protocol: a seeded fraction of items is removed from training and validation."""
    from mahn.data.cold import cold_split

    manifest = cold_split(dataset, out, fraction, seed, force)
    cold = manifest["cold"]
    typer.echo(f"wrote {out}: {len(cold['items']):,} new items, {cold['removed_interactions']:,} interactions "
               f"removed, {cold['new_item_targets']:,} test users with a new target")


@app.command()
def info(
    dataset: Path = typer.Argument(..., help="Prepared dataset directory."),
    json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Summarise a prepared dataset: counts, history lengths, modality coverage, features."""
    import orjson

    from mahn.data import Dataset
    from mahn.info import neighbour_sample, print_summary, summarize

    data = Dataset(dataset)
    summary = summarize(data)
    if json:
        summary["neighbours"] = neighbour_sample(data)
        typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
    else:
        print_summary(summary, neighbour_sample(data))


@app.command("demo-data")
def demo_data(
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for the raw demo files."),
    users: int = typer.Option(3000, help="Number of users."),
    items: int = typer.Option(600, help="Number of items."),
    seed: int = typer.Option(0, help="Seed; the same seed gives identical files."),
    force: bool = typer.Option(False, help="Replace an existing output directory."),
) -> None:
    """Generate a synthetic catalog with rendered images, titles and content-driven histories."""
    from mahn.demo.shop import generate_demo

    summary = generate_demo(out, users=users, items=items, seed=seed, force=force)
    typer.echo(f"wrote {out}: {summary['users']} users, {summary['items']} items, "
               f"{summary['interactions']} interactions in {summary['seconds']} s")


@app.command("features")
def features_command(
    dataset: Path = typer.Argument(..., help="Prepared dataset directory."),
    image: str = typer.Option("efficientnet-lite0", help="efficientnet-lite0|1|2, vgg16, mcauley, codes, none."),
    text: str = typer.Option("minilm", help="minilm, bert, mpnet, codes, none."),
    text_template: str = typer.Option("title", help="title | title+brand+categories | description | title+text."),
    text_model: str | None = typer.Option(None, help="bert/minilm/mpnet: local model folder or hub name."),
    pooling: str | None = typer.Option(None, help="Text pooling: cls | mean (default: the model's own)."),
    batch_size: int = typer.Option(32, help="Images per forward pass (text uses at least 128)."),
    workers: int | None = typer.Option(None, help="Image-decoding threads [half the cores]."),
    runtime: str = typer.Option("auto", help="Image CNN runtime: auto (ONNX Runtime if installed), onnx, torch."),
    dtype: str = typer.Option("float32", help="Stored dtype: float32 | float16."),
    weights: str | None = typer.Option(None, help="Image encoder weights file (.pth state dict)."),
    image_file: Path | None = typer.Option(None, help="mcauley: the 2014 binary image-feature file."),
    chunk_size: int = typer.Option(1024, help="Items per resumable chunk."),
    force: bool = typer.Option(False, help="Re-extract modalities that already have features."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Encode every item's image and text into DIR/features/ (resumable; see docs/features.md)."""
    from mahn.features import FeatureConfig, extract_features

    at_least_one(("--batch-size", batch_size), ("--chunk-size", chunk_size))
    config = FeatureConfig(image=image, text=text, text_template=text_template, text_model=text_model,
                           text_pooling=pooling, weights=weights,
                           image_file=str(image_file) if image_file else None, batch_size=batch_size,
                           workers=workers or FeatureConfig.workers, runtime=runtime, dtype=dtype,
                           chunk_size=chunk_size, force=force, progress=progress)
    for report in extract_features(dataset, config):
        typer.echo(report.line())


@app.command("features-grid")
def features_grid_command(
    dataset: Path = typer.Argument(..., help="Prepared dataset directory with features."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    modality: str = typer.Option("image", help="Which features rank the neighbours."),
    queries: int = typer.Option(5, help="Query items (rows), drawn at random with --seed."),
    k: int = typer.Option(3, help="Neighbours per query."),
    seed: int = typer.Option(0, help="Seed of the query draw."),
    item: list[int] = typer.Option([], help="Query these item ids instead of random ones."),
) -> None:
    """Render a PNG grid of items and their nearest neighbours, to see that the features mean something."""
    from mahn.features.grid import neighbour_grid

    at_least_one(("--queries", queries), ("--k", k))
    rows = neighbour_grid(dataset, out, modality, queries, k, seed, list(item) or None)
    typer.echo(f"wrote {out}: {len(rows)} queries x {k} neighbours by {modality}")


@app.command("models")
def models_command(
    settings: bool = typer.Option(False, "--settings", help="Also list each model's settings and defaults."),
) -> None:
    """List the models `mahn train --model` accepts."""
    from dataclasses import fields

    from mahn.models import MODELS, describe
    from mahn.settings import MODEL_DEFAULTS, TRAIN_KEYS, TrainConfig

    for name, cls in MODELS.items():
        typer.echo(f"{name:<11} {describe(name)}")
        if settings:
            for f in fields(cls.Config):
                shared = "  (shared with the trainer)" if f.name in TRAIN_KEYS else ""
                typer.echo(f"{'':<13}{f.name} = {f.default!r}{shared}")
            for key, value in MODEL_DEFAULTS.get(name, {}).items():
                typer.echo(f"{'':<13}{key} = {value!r}  (the trainer's, for this model)")
    if settings:
        typer.echo(f"{'trainer':<11} settings of every model (flags, --config TOML or --set), unless the model "
                   "sets its own above:")
        for f in fields(TrainConfig):
            typer.echo(f"{'':<13}{f.name} = {f.default!r}")


@app.command()
def train(
    dataset: Path = typer.Argument(..., help="Prepared dataset directory (with features unless ablated)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write."),
    model: str | None = typer.Option(None, help="Model name [mahn]."),
    variant: str | None = typer.Option(None, help="MAHN fusion op1-op2: add-add|add-cat|cat-add|cat-cat [cat-cat]."),
    ablate: str | None = typer.Option(None, help="MAHN ablation: v (MAHN-V), t (MAHN-T), vt (MAHN-V-T)."),
    dim: int | None = typer.Option(None, help="Embedding size d [50]."),
    rec_weight: float | None = typer.Option(None, "--lambda", help="Weight λ of the reconstruction loss [1.0]."),
    epochs: int | None = typer.Option(None, help="Maximum epochs [500]."),
    batch_size: int | None = typer.Option(None, help="Sequences per step [256; the paper used 5]."),
    lr: float | None = typer.Option(None, help="Adam learning rate [1e-3]."),
    weight_decay: float | None = typer.Option(None, help="L2 on weights and embeddings, not biases [1e-4]."),
    lr_schedule: str | None = typer.Option(None, help="Learning-rate schedule: constant|step|plateau [constant]."),
    lr_step: int | None = typer.Option(None, help="Epochs per rate step (step), or without a better validation "
                                       "score before one (plateau) [10]."),
    lr_gamma: float | None = typer.Option(None, help="Factor of each rate step [0.5]."),
    max_len: int | None = typer.Option(None, help="Histories cut to the last max_len items [50]."),
    patience: int | None = typer.Option(None, help="Epochs without better validation NDCG@10 before stopping "
                                        "(and --set patience_steps=N steps) [10]."),
    select: str | None = typer.Option(None, help="Validation protocol for early stopping: full|uni100 [full]."),
    seed: int | None = typer.Option(None, help="Seed of initialisation, shuffling and negatives [0]."),
    threads: int | None = typer.Option(None, help="Torch CPU threads (0: torch's default)."),
    device: str | None = typer.Option(None, help=DEVICE_HELP + " [auto]"),
    config: Path | None = typer.Option(None, "--config", help="TOML file of settings (flags override it)."),
    preset: str | None = typer.Option(None, help="Start from a named set of settings: paper (the papers' "
                                      "configurations; see docs/model.md)."),
    set_: list[str] = typer.Option([], "--set", help="Any model or trainer setting as KEY=VALUE (repeatable), "
                                   "e.g. --set dropout=0.5 (see `mahn models --settings`)."),
    resume: bool = typer.Option(False, help="Continue the run from its last checkpoint."),
    force: bool = typer.Option(False, help="Overwrite an existing run directory."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                         help="Progress output: a bar on a terminal, a line per epoch in a log [on]."),
    nproc: int = typer.Option(1, help="Processes to train on (DistributedDataParallel through torchrun: gloo on "
                              "CPUs, NCCL with one GPU each); the batch size is the total over them."),
) -> None:
    """Train a model; early stopping on validation NDCG@10; writes checkpoints, metrics.jsonl, summary.json."""
    import os

    from mahn.settings import parse_assignments, read_toml, resolve
    from mahn.training import train as run_training

    if nproc < 1:
        fail("--nproc must be at least 1")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # this process becomes torchrun, which starts the workers
        from mahn.training.distributed import launch

        raise typer.Exit(launch(nproc))

    flags = dict(model=model, variant=variant, ablate=ablate, dim=dim, rec_weight=rec_weight, epochs=epochs,
                 batch_size=batch_size, lr=lr, weight_decay=weight_decay, lr_schedule=lr_schedule,
                 lr_step=lr_step, lr_gamma=lr_gamma,
                 max_len=max_len, patience=patience, select=select, seed=seed, threads=threads,
                 device=device, progress=progress)
    layers = [("flags", flags), ("--set", parse_assignments(set_))]
    if config is not None:
        layers.insert(0, (str(config), read_toml(config)))
    summary = run_training(dataset, out, resolve(*layers, preset=preset), resume=resume, force=force)
    if os.environ.get("RANK", "0") != "0":  # under torchrun: one report, from rank 0
        return
    typer.echo(f"trained {out}: {summary['epochs']} epochs, {summary['steps']} steps, "
               f"{summary['train_seconds']:.0f} s; best epoch {summary['best_epoch']} "
               f"(valid NDCG@10 full {summary['valid']['full']['NDCG@10']:.4f}, "
               f"uni100 {summary['valid']['uni100']['NDCG@10']:.4f})")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run directory written by `mahn train`."),
    split: str = typer.Option("test", help="valid | test."),
    json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    keep_history: bool = typer.Option(False, help="Full ranking: keep the user's earlier items as candidates."),
    data: Path | None = typer.Option(None, help="Dataset directory, if it moved since training."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    protocols: str = typer.Option("uni100,full", help="Comma-separated: uni100 (the 100 stored negatives), "
                                  "full (every item). uni100 alone never scores the whole catalogue."),
) -> None:
    """HR, NDCG, MRR @10/@20 under uni100 and full ranking, overall and per item-frequency group."""
    import orjson

    from mahn.api import load
    from mahn.evaluation import EvalConfig, render

    if split not in ("valid", "test"):
        raise DataError(f"unknown split {split!r}; choose valid or test", "--split")
    chosen = tuple(p.strip() for p in protocols.split(",") if p.strip())
    EvalConfig(protocols=chosen)  # refuses an unknown protocol before the run is loaded
    result = load(run, data, device).evaluate(split, keep_history=keep_history, protocols=chosen)
    if json:
        typer.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        render(result)


@app.command()
def recommend(
    run: Path = typer.Argument(..., help="Run directory written by `mahn train`."),
    history: list[str] = typer.Option(..., "--history", help="Item keys, oldest first (repeat or space-separate)."),
    k: int = typer.Option(10, "-k", help="How many items to recommend."),
    keep_history: bool = typer.Option(False, help="Allow items already in the history."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Print the top-k items (key, title, score) after a history of item keys."""
    from mahn.api import load

    keys = [key for value in history for key in value.split()]
    for rank, rec in enumerate(load(run, device=device).recommend(keys, k, exclude_history=not keep_history), start=1):
        typer.echo(f"{rank:>3}. {rec.key}  {rec.title}  ({rec.score:.3f})")


@app.command()
def serve(
    run: Path = typer.Argument(..., help="Run directory written by `mahn train`."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="TCP port."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    workers: int = typer.Option(1, help="Server processes, each with its own copy of the model."),
    threads: int = typer.Option(1, help="Torch threads per process (1: requests in parallel beat one request "
                                "on two threads; see docs/serving.md)."),
    compare: Path | None = typer.Option(None, help="A second run, asked with ?run=compare."),
    images_root: Path | None = typer.Option(None, help="The only folder images are served from, and the one "
                                            "new items' image paths are relative to (default: the folder "
                                            "holding the dataset's images)."),
    index: str = typer.Option("exact", help="exact (score every item) or hnsw (approximate top-k from an HNSW "
                              "index, for catalogues of millions of items; needs faiss-cpu)."),
    ef_search: int = typer.Option(256, help="hnsw: candidates kept per search (more: better recall, slower; "
                                  "docs/serving.md#large-catalogues---index-hnsw)."),
) -> None:
    """Serve recommendations over HTTP (FastAPI + uvicorn); the API is described at /docs and /openapi.json."""
    from mahn.serve.process import run_server

    if workers < 1 or threads < 1 or ef_search < 1:
        fail("--workers, --threads and --ef-search must be at least 1")
    if not 0 <= port <= 65535:
        fail(f"--port must be between 0 and 65535, got {port}")
    run_server(run, host=host, port=port, device=device, workers=workers, threads=threads, compare=compare,
               images_root=images_root, index=index, ef_search=ef_search)


@app.command("add-items")
def add_items_command(
    run: Path = typer.Argument(..., help="Run directory written by `mahn train` (a model that reads content)."),
    items: Path = typer.Option(..., "--items", help="CSV, TSV or JSONL: key, title, text, image (path) per item."),
    images: Path | None = typer.Option(None, "--images", help="Folder image paths are relative to "
                                                               "(default: the items file's folder)."),
) -> None:
    """Add new items to a trained run, encoded by the dataset's own feature encoders; no retraining."""
    from mahn.catalog import add_items

    report = add_items(run, items, images)
    features = ", ".join(f"{m} {f['encoder']} {f['dim']}-d" + (f" ({f['missing']} without)" if f["missing"] else "")
                         for m, f in report["features"].items())
    typer.echo(f"added {report['added']} items to {run} ({report['total']} added in all); "
               f"features: {features}; {report['seconds']:.1f} s")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for the demo's data and runs."),
    users: int = typer.Option(3000, help="Demo users."),
    items: int = typer.Option(600, help="Demo items."),
    seeds: int = typer.Option(1, help="Training seeds (mean ± std when > 1)."),
    epochs: int = typer.Option(20, help="Maximum epochs per model."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Demo data -> prepare -> features -> train MAHN and MAHN-V-T -> both protocols + example recommendations."""
    from mahn.demo.pipeline import DemoConfig, run_demo

    at_least_one(("--seeds", seeds), ("--epochs", epochs))
    foreign = sorted(p.name for p in out.iterdir()
                     if p.name not in DEMO_ENTRIES and not p.name.startswith(".")) if out.is_dir() else []
    if foreign:
        fail(f"{out}: not empty and not a demo folder (it holds {', '.join(foreign[:3])}"
             f"{', ...' if len(foreign) > 3 else ''}); choose another --out")
    run_demo(DemoConfig(out=out, users=users, items=items, seeds=seeds, epochs=epochs, progress=progress))


@app.command()
def reproduce(
    dataset: Path = typer.Argument(..., help="Prepared dataset directory (with features for the multimodal models)."),
    out: Path = typer.Option(..., "--out", "-o", help="Report directory (reused: finished runs are kept)."),
    seeds: int | None = typer.Option(None, help="Seeds per cell (default: 5, or 1 with --budget quick)."),
    experiments: str = typer.Option(",".join(("compare", "variants", "ablations", "dims", "groups")),
                                    help="Comma-separated: compare, variants, ablations, dims, groups (the paper's), "
                                    "and cold (new items held out of training)."),
    budget: str = typer.Option("full", help="full (16 settings per model tried on validation, up to 200 epochs, 5 "
                               "seeds), standard (defaults, up to 50 epochs, 3 seeds) or quick (3 epochs, 1 seed: "
                               "a smoke check)."),
    models: str = typer.Option("", help="Comma-separated models for compare (default: all that the data can feed)."),
    batch_size: int | None = typer.Option(None, help="Training batch size of every run [the trainer's: 256]."),
    threads: int = typer.Option(0, help="Torch threads per run (0: torch's default)."),
    device: str = typer.Option("auto", help=DEVICE_HELP + " (training and test scoring)"),
    progress: bool = typer.Option(False, help="Show per-epoch progress bars."),
    preset: str | None = typer.Option(None, help="Settings preset of every run, e.g. paper (runs kept apart)."),
) -> None:
    """Run the paper's experiments (Tables 2-5, Figs. 3-5) and write REPORT/report.md, plots and JSON."""
    from mahn.reproduce import BUDGETS, ReproduceConfig
    from mahn.reproduce import reproduce as run_reproduce

    if budget not in BUDGETS:
        fail(f"--budget must be one of {', '.join(BUDGETS)}")
    config = ReproduceConfig(out=out, seeds=seeds or BUDGETS[budget].seeds,
                             experiments=tuple(e.strip() for e in experiments.split(",") if e.strip()),
                             budget=budget, models=tuple(m.strip() for m in models.split(",") if m.strip()),
                             batch_size=batch_size, threads=threads, device=device,
                             progress=progress, preset=preset)
    run_reproduce(dataset, config, command="mahn " + " ".join(sys.argv[1:]), say=typer.echo)


def main() -> None:
    """Console entry point: a DataError (bad input) becomes a one-line message and exit code 2; a full disk
    one line and exit code 3 (every output is written atomically, so what was there before is intact)."""
    try:
        app()
    except DataError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except Exception as e:
        full = disk_full(e)
        if full is None:
            raise
        typer.secho(f"error: {full}; nothing was replaced: free some space and run the command again",
                    err=True, fg=typer.colors.RED)
        sys.exit(3)


if __name__ == "__main__":
    main()
