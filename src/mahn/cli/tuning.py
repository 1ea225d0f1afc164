"""The command that searches a model's settings: tune."""

from __future__ import annotations

from pathlib import Path

import typer

from mahn.cli.common import app


@app.command()
def tune(
    dataset: Path = typer.Argument(..., help="Prepared dataset directory (with features for the multimodal models)."),
    model: str = typer.Option(..., help="Model name (`mahn models` lists them)."),
    trials: int = typer.Option(..., help="Trials to train (complete or pruned), those of earlier calls included; "
                               "settings TPE picks again are not trained again and do not count."),
    out: Path = typer.Option(..., "--out", "-o", help="Tune directory: study.db, trials/, best.toml, tune.json "
                             "(run the same command again to resume)."),
    minutes: float | None = typer.Option(None, help="Start no new trial after this many minutes."),
    seed: int = typer.Option(0, help="Seed of the TPE sampler and of every trial's training."),
    pruner: str = typer.Option("bound", help="bound: stop a trial that, rising at its recent rate to its last "
                               "epoch, would still end below the best completed trial; median: Optuna's median "
                               "rule (compares trials at the same epoch); none."),
    progress: bool = typer.Option(False, help="Optuna's log and a line per epoch."),
    set_: list[str] = typer.Option([], "--set", help="A setting every trial shares, KEY=VALUE (repeatable), e.g. "
                                   "--set epochs=50 (not one the search varies)."),
    track: str | None = typer.Option(None, help="Send every trial to tensorboard or mlflow, as `mahn train --track` "
                                     "does (pip install \"mahn[track]\")."),
    track_uri: str | None = typer.Option(None, help="Where (see `mahn train --track-uri`; default: OUT/tensorboard "
                                         "for TensorBoard, sqlite:///mlflow.db for MLflow)."),
) -> None:
    """Search a model's settings (the `full` budget's space) with Optuna TPE and pruning on validation NDCG@10;
    writes OUT/best.toml for `mahn train --config`."""
    from mahn.reproduce import BUDGETS
    from mahn.settings import parse_assignments
    from mahn.tracking import TrackConfig
    from mahn.tune import tune as run_tune

    # the `full` budget's epoch cap and patience: a trial trains as a trial of `mahn reproduce --budget full`
    full = BUDGETS["full"]
    base = {"epochs": full.epochs, "patience": full.patience} | parse_assignments(set_)
    tracker = None
    if track is not None:  # TensorBoard's default is one log folder for the tune, a subfolder a trial
        tracker = TrackConfig(track, track_uri or (str(out / "tensorboard") if track == "tensorboard" else None))
    summary = run_tune(dataset, out, model, trials, minutes=minutes, seed=seed, base=base, progress=progress,
                       say=typer.echo, track=tracker, pruner=pruner)
    best = summary["best"]
    if best is None:  # --minutes spent before a trial finished
        typer.echo(f"tuned {out}: no trial finished yet; run the command again to go on")
        return
    typer.echo(f"tuned {out}: {summary['trained']} trials trained; best trial {best['number']:04d} "
               f"(valid NDCG@10 full {best['valid_full_ndcg10']:.4f}): "
               f"mahn train {dataset} --config {out / 'best.toml'} --out RUN")
