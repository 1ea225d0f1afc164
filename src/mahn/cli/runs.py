"""Commands on models and runs: models, train, evaluate, recommend."""

from __future__ import annotations

from pathlib import Path

import typer

from mahn.cli.common import DEVICE_HELP, app, fail
from mahn.errors import DataError


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
    model: str | None = typer.Option(None, help="Model name (`mahn models` lists them) [mahn]."),
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
    track: str | None = typer.Option(None, help="Also send settings, every epoch's metrics, the test metrics and "
                                     "the run's files to tensorboard or mlflow (pip install \"mahn[track]\")."),
    track_uri: str | None = typer.Option(None, help="TensorBoard: a log folder for many runs (default: "
                                         "RUN/tensorboard); MLflow: the tracking URI (default: $MLFLOW_TRACKING_URI, "
                                         "else sqlite:///mlflow.db)."),
) -> None:
    """Train a model; early stopping on validation NDCG@10; writes checkpoints, metrics.jsonl, summary.json."""
    import os

    from mahn.settings import TRAIN_FLAGS, parse_assignments, read_toml, resolve
    from mahn.tracking import TrackConfig, train_tracked

    if nproc < 1:
        fail("--nproc must be at least 1")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # this process becomes torchrun, which starts the workers
        from mahn.training.distributed import launch

        raise typer.Exit(launch(nproc))

    given = locals()
    flags = {name: given[name] for name in TRAIN_FLAGS}  # each flag's parameter is named for its setting
    layers = [("flags", flags), ("--set", parse_assignments(set_))]
    if config is not None:
        layers.insert(0, (str(config), read_toml(config)))
    settings = resolve(*layers, preset=preset)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun: one report and one tracker, from rank 0
    tracker = TrackConfig(track, track_uri) if track is not None and main_process else None

    def test() -> dict:
        from mahn.api import load

        return load(out, dataset, settings.train.device, index="exact").evaluate("test")

    summary = train_tracked(tracker, dataset, out, settings, test=test, resume=resume, force=force)
    if not main_process:
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
    new_item_boost: float = typer.Option(
        0.0, help="Added to every new item's score (a dataset made by `mahn cold-split`), as `recommend "
                  "--new-item-boost` does: what it costs and gains."),
) -> None:
    """HR, NDCG, MRR @10/@20 under uni100 and full ranking, overall and per item-frequency group."""
    import orjson

    from mahn.api import load
    from mahn.evaluation import EvalConfig, render

    if split not in ("valid", "test"):
        raise DataError(f"unknown split {split!r}; choose valid or test", "--split")
    chosen = tuple(p.strip() for p in protocols.split(",") if p.strip())
    EvalConfig(protocols=chosen, new_item_boost=new_item_boost)  # refuses bad values before the run is loaded
    result = load(run, data, device).evaluate(split, keep_history=keep_history, protocols=chosen,
                                              new_item_boost=new_item_boost)
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
    new_item_places: int = typer.Option(
        0, help="Up to this many of the k places go to the best items added after training (or held out by a "
                "new-item split), replacing the last of the model's own top k."),
    new_item_boost: float = typer.Option(
        0.0, help="Added to every new item's score before ranking (a softmax model: its odds times e^boost)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Print the top-k items (key, title, score) after a history of item keys."""
    from mahn.api import load

    keys = [key for value in history for key in value.split()]
    recommender = load(run, device=device)
    recs = recommender.recommend(keys, k, exclude_history=not keep_history, new_item_places=new_item_places,
                                  new_item_boost=new_item_boost)
    for rank, rec in enumerate(recs, start=1):
        typer.echo(f"{rank:>3}. {rec.key}  {rec.title}  ({rec.score:.3f})")


