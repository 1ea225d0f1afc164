"""Commands that run whole experiments: demo, reproduce."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mahn.cli.common import DEVICE_HELP, app, at_least_one, fail

DEMO_ENTRIES = {"raw", "data", "runs", "results.json"}  # what `mahn demo` writes; it resumes a folder holding them


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
    budget: str = typer.Option("full", help="full (each model's settings chosen on validation by `mahn tune`, up "
                               "to 200 epochs, 5 seeds), standard (each model's defaults, 3 seeds) or quick (3 "
                               "epochs, 1 seed: a smoke check)."),
    trials: int | None = typer.Option(None, help="Tune trials per model with --budget full [16]."),
    models: str = typer.Option("", help="Comma-separated models for compare (default: all that the data can feed)."),
    batch_size: int | None = typer.Option(None, help="Training batch size of every run [the trainer's: 256]."),
    threads: int = typer.Option(0, help="Torch threads per run (0: torch's default)."),
    device: str = typer.Option("auto", help=DEVICE_HELP + " (training and test scoring)"),
    progress: bool = typer.Option(False, help="Show per-epoch progress bars."),
    preset: str | None = typer.Option(None, help="Settings preset of every run, e.g. paper (runs kept apart)."),
    track: str | None = typer.Option(None, help="Send every run to tensorboard or mlflow, as `mahn train --track` "
                                     "does (pip install \"mahn[track]\")."),
    track_uri: str | None = typer.Option(None, help="Where (see `mahn train --track-uri`; default: OUT/tensorboard "
                                         "for TensorBoard, sqlite:///mlflow.db for MLflow)."),
    move_changed: bool = typer.Option(False, help="Move each run trained with other settings than this mahn gives it "
                                      "(a default changed since) into OUT/changed/ (OUT/cold/changed/ for the new-item "
                                      "runs) and train it again, instead of stopping at it."),
) -> None:
    """Run the paper's experiments (Tables 2-5, Figs. 3-5) and write REPORT/report.md, plots and JSON."""
    from mahn.reproduce import BUDGETS, ReproduceConfig
    from mahn.reproduce import reproduce as run_reproduce
    from mahn.tracking import TrackConfig

    if budget not in BUDGETS:
        fail(f"--budget must be one of {', '.join(BUDGETS)}")
    config = ReproduceConfig(out=out, seeds=seeds or BUDGETS[budget].seeds,
                             experiments=tuple(e.strip() for e in experiments.split(",") if e.strip()),
                             budget=budget, models=tuple(m.strip() for m in models.split(",") if m.strip()),
                             batch_size=batch_size, threads=threads, device=device,
                             progress=progress, preset=preset, trials=trials, move_changed=move_changed,
                             track=None if track is None else TrackConfig(
                                 track, track_uri or (str(out / "tensorboard") if track == "tensorboard" else None)))
    run_reproduce(dataset, config, command="mahn " + " ".join(sys.argv[1:]), say=typer.echo)


