"""Commands that serve a run and grow its catalogue: serve, add-items."""

from __future__ import annotations

from pathlib import Path

import typer

from mahn.cli.common import DEVICE_HELP, app, fail
from mahn.index import HNSWSettings, IVFSettings


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
    index: str = typer.Option("auto", help="How the trained items are ranked: exact (score every item), ivf or "
                              "hnsw (approximate top-k for catalogues of millions of items; need faiss-cpu), or "
                              "auto (exact below 100,000 trained items, ivf from there)."),
    ef_search: int = typer.Option(HNSWSettings.ef_search, help="hnsw: candidates kept per search (more: better "
                                  "recall, slower; docs/serving.md#large-catalogues---index)."),
    probes: int = typer.Option(IVFSettings.probes, help="ivf: lists visited per query (more: better recall, "
                               "slower)."),
    token_file: Path | None = typer.Option(None, help="A file holding the token that every write (adding items, "
                                           "swapping the model) must send as `Authorization: Bearer TOKEN` "
                                           "(default: $MAHN_SERVE_TOKEN; none: writes are open, loopback only)."),
    protect: str = typer.Option("writes", help="What the token protects: writes, or all (reads too; the page "
                                "asks for it)."),
    read_only: bool = typer.Option(False, "--read-only", help="Refuse every write (403): nothing is added to "
                                   "the run. Needed on a public --host without a token."),
) -> None:
    """Serve recommendations over HTTP (FastAPI + uvicorn); the API is described at /docs and /openapi.json.

    SIGHUP (or POST /admin/reload) reloads the run without dropping a request; SIGTERM lets the requests in
    flight finish."""
    from mahn.serve.access import Access, read_token
    from mahn.serve.process import run_server

    if workers < 1 or threads < 1 or ef_search < 1 or probes < 1:
        fail("--workers, --threads, --ef-search and --probes must be at least 1")
    if not 0 <= port <= 65535:
        fail(f"--port must be between 0 and 65535, got {port}")
    access = Access(read_token(token_file), protect, read_only)
    run_server(run, host=host, port=port, device=device, workers=workers, threads=threads, compare=compare,
               images_root=images_root, index=index, ef_search=ef_search, probes=probes, access=access)


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


