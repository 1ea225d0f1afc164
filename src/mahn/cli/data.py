"""Commands that make and inspect datasets: prepare, negatives, cold-split, info, demo-data, features."""

from __future__ import annotations

from pathlib import Path

import typer

from mahn.cli.common import app, at_least_one


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
    shown = max(len(row) for row in rows) - 1
    fewer = f" (asked for {k}; only {shown} other items have {modality} features)" if shown < k else ""
    typer.echo(f"wrote {out}: {len(rows)} queries x {shown} neighbours by {modality}{fewer}")


