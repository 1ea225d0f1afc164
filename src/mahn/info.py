"""`mahn info`: what is in a prepared dataset, as a dict (for --json) and as a readable summary."""

from __future__ import annotations

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from mahn.data import Dataset

PERCENTILES = (25, 50, 75, 90, 99)


def summarize(dataset: Dataset) -> dict:
    manifest = dataset.manifest
    lengths = dataset.lengths
    items = dataset.item_metadata
    coverage = {}
    for column in ("title", "text", "image"):
        if column in items.columns:
            present = items.select((pl.col(column).is_not_null() & (pl.col(column) != "")).sum()).item()
            coverage[column] = round(present / max(dataset.n_items, 1), 4)
    summary = {
        "path": str(dataset.root),
        "format": manifest.get("format"),
        "users": dataset.n_users,
        "items": dataset.n_items,
        "interactions": len(dataset.items),
        "density": len(dataset.items) / max(dataset.n_users * dataset.n_items, 1),
        "evaluated_users": int(dataset.evaluated.sum()),
        "has_time": manifest.get("has_time"),
        "sequence_length": {
            "min": int(lengths.min()), "mean": round(float(lengths.mean()), 3), "max": int(lengths.max()),
            **{f"p{p}": float(np.percentile(lengths, p)) for p in PERCENTILES},
        },
        "modality_coverage": coverage,
        "filters": manifest.get("filters"),
        "counts_read": manifest.get("counts_read"),
        "negatives": {k: manifest["negatives"][k] for k in ("count", "seed")} if "negatives" in manifest else None,
        "features": feature_records(dataset),
        "warnings": manifest.get("warnings", []),
    }
    return summary


def feature_records(dataset: Dataset) -> dict:
    records = {}
    for modality, record in dataset.manifest.get("features", {}).items():
        records[modality] = {k: record.get(k) for k in ("dim", "coverage", "encoder", "dtype")}
    return records


def neighbour_sample(dataset: Dataset, samples: int = 2, k: int = 3) -> dict:
    """A few items with their k nearest items by each modality: a sanity check that features mean something."""
    try:
        from mahn.features import nearest_neighbours
    except ImportError:
        return {}
    result = {}
    titles = dataset.titles()
    rng = np.random.default_rng(0)
    for modality in dataset.feature_modalities():
        _, mask = dataset.features(modality)
        candidates = np.flatnonzero(mask)
        if len(candidates) == 0:
            continue
        rows = []
        for item in rng.choice(candidates, size=min(samples, len(candidates)), replace=False).tolist():
            neighbours = nearest_neighbours(dataset, modality, item, k=k)
            rows.append({"item": item, "title": titles[item],
                         "neighbours": [{"item": int(n), "title": t, "cosine": round(float(c), 3)}
                                        for n, t, c in neighbours]})
        result[modality] = rows
    return result


def print_summary(summary: dict, neighbours: dict, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"dataset {summary['path']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("format", str(summary["format"]))
    table.add_row("users / items / interactions",
                  f"{summary['users']:,} / {summary['items']:,} / {summary['interactions']:,}")
    table.add_row("density", f"{summary['density']:.5%}")
    table.add_row("evaluated users", f"{summary['evaluated_users']:,}")
    lengths = summary["sequence_length"]
    table.add_row("history length", f"min {lengths['min']}, mean {lengths['mean']}, "
                  + ", ".join(f"p{p} {lengths[f'p{p}']:g}" for p in PERCENTILES) + f", max {lengths['max']}")
    table.add_row("time", "timestamps" if summary["has_time"] else "order only")
    coverage = summary["modality_coverage"]
    table.add_row("items with title / text / image",
                  " / ".join(f"{coverage.get(c, 0):.1%}" for c in ("title", "text", "image")))
    filters = summary["filters"] or {}
    table.add_row("filters", f"require {','.join(filters.get('require', [])) or 'none'}, "
                  f"k-core {filters.get('kcore')} ({filters.get('kcore_rounds')} rounds)")
    if summary["counts_read"]:
        read = summary["counts_read"]
        table.add_row("before filtering",
                      f"{read['users']:,} / {read['items']:,} / {read['interactions']:,}")
    if summary["negatives"]:
        table.add_row("negatives", f"{summary['negatives']['count']} per user and split, "
                      f"seed {summary['negatives']['seed']}")
    for modality, record in summary["features"].items():
        table.add_row(f"features: {modality}", f"{record['encoder']}, dim {record['dim']}, "
                      f"coverage {record['coverage']:.1%}")
    for warning in summary["warnings"]:
        table.add_row("warning", warning)
    console.print(table)
    for modality, rows in neighbours.items():
        console.print(f"[bold]nearest items by {modality}[/bold]")
        for row in rows:
            console.print(f"  {row['title']}")
            for n in row["neighbours"]:
                console.print(f"    -> {n['title']}  (cosine {n['cosine']})")
