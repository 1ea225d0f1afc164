"""Commands that package a trained run for use without mahn: export."""

from __future__ import annotations

from pathlib import Path

import typer

from mahn.cli.common import app
from mahn.errors import DataError


@app.command("export")
def export_command(
    run: Path = typer.Argument(..., help="Run directory written by `mahn train`."),
    format_: str = typer.Option("onnx", "--format", help="What to write: onnx (the only format)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write: encoder.onnx, items.npy, export.json."),
    force: bool = typer.Option(False, help="Replace an existing --out folder that is not empty."),
) -> None:
    """Export a run to serve without mahn: the history encoder as ONNX, the item table as .npy (docs/export.md)."""
    from mahn.export import FORMATS, export_onnx

    if format_ not in FORMATS:
        raise DataError(f"unknown format {format_!r}; choose {', '.join(FORMATS)}", "--format")
    meta = export_onnx(run, out, force=force)
    typer.echo(f"exported {meta['model_name']} to {out}: encoder.onnx ({', '.join(meta['inputs'])} -> states of "
               f"{meta['dim']}), items.npy ({meta['n_items']} items, {meta['added']} added after training), "
               "export.json")
