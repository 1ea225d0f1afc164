"""The preparation pipeline: source rows -> filtered, k-cored, id-mapped dataset with stored negatives.

See docs/data-format.md for the output. The work happens in a temporary sibling of the output
directory; chunks from the reader are spilled to Parquet and every k-core round is a Polars lazy
query streamed to a new Parquet file, so memory stays bounded by the per-user/per-item count tables.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

import mahn
from mahn.data.dataset import MIN_EVAL_LENGTH, SCHEMA_VERSION
from mahn.data.negatives import draw_negatives
from mahn.errors import DataError
from mahn.io import atomic_dir, sha256_file, write_json
from mahn.readers import READERS, Source

if TYPE_CHECKING:
    from mahn.readers import ReaderOptions

REQUIREMENTS = ("title", "text", "image")


@dataclass
class PrepareConfig:
    kcore: int = 0  # 0 or 1: no k-core
    require: tuple[str, ...] = ()  # subset of REQUIREMENTS
    num_negatives: int = 100
    seed: int = 0
    force: bool = False

    def __post_init__(self) -> None:
        unknown = [r for r in self.require if r not in REQUIREMENTS]
        if unknown:
            raise DataError(f"--require accepts {', '.join(REQUIREMENTS)}; got {', '.join(unknown)}")
        if self.kcore < 0 or self.num_negatives < 1:
            raise DataError("--kcore must be >= 0 and --negatives >= 1")


def prepare(path: Path, fmt: str, out: Path, config: PrepareConfig, items: Path | None = None,
            options: ReaderOptions | None = None) -> dict:
    """Read `path` in format `fmt` and write a prepared dataset to `out`. Returns the manifest."""
    if fmt not in READERS:
        raise DataError(f"unknown format {fmt!r}; choose one of: {', '.join(sorted(READERS))}")
    source = READERS[fmt](Path(path), items=Path(items) if items else None, options=options)
    return write_dataset(source, out, config, fmt)


def prepare_frames(interactions: pl.DataFrame, items: pl.DataFrame | None, out: Path,
                   config: PrepareConfig) -> dict:
    """Prepare from in-memory frames (user:str, item:str, timestamp:Int64) and an optional items table."""
    frame = interactions.select(pl.col("user").cast(pl.String), pl.col("item").cast(pl.String),
                                pl.col("timestamp").cast(pl.Int64))
    return write_dataset(Source(iter([frame]), items, []), out, config, "frames")


def write_dataset(source: Source, out: Path, config: PrepareConfig, fmt: str) -> dict:
    started = time.perf_counter()
    out = Path(out)
    with atomic_dir(out, force=config.force) as tmp:
        work = tmp / "_work"
        work.mkdir()
        raw = spill(source, work)
        before = count_table(pl.scan_parquet(raw))
        rows = drop_items_lacking(pl.scan_parquet(raw), source.items, config.require)
        rows, user_keys, item_keys = encode_keys(dedupe(rows), work)
        current, rounds = kcore(rows, config.kcore, work)
        table = pl.scan_parquet(current)
        final = count_table(table)
        if final["interactions"] == 0:
            raise DataError(f"no users left after filtering (require={','.join(config.require) or 'none'}, "
                            f"kcore={config.kcore}); {before['interactions']} interactions were read")
        write_tables(table, user_keys, item_keys, source, tmp, work)
        shutil.rmtree(work)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "created_by": f"mahn {mahn.__version__}",
            "format": fmt,
            "sources": [{"path": str(Path(f).resolve()), "bytes": Path(f).stat().st_size,
                         "sha256": sha256_file(f)} for f in source.files],
            "has_time": source.has_time,
            "filters": {"require": list(config.require), "kcore": config.kcore, "kcore_rounds": rounds,
                        "dedupe": "exact (user, item, timestamp) repeats collapse to the first"},
            "counts_read": before,
            "counts": final,
            "ids": "dense from 0, in byte order of the external key, assigned after filtering",
            "split": {"method": "leave-one-out by time", "min_length": MIN_EVAL_LENGTH},
            "warnings": list(getattr(source, "warnings", []) or []),
        }
        manifest["files"] = {name: sha256_file(tmp / name)
                             for name in ("interactions.parquet", "users.parquet", "items.parquet")}
        write_json(tmp / "manifest.json", manifest)
        manifest = draw_negatives(tmp, config.num_negatives, config.seed)
        manifest["seconds"] = round(time.perf_counter() - started, 3)
        write_json(tmp / "manifest.json", manifest)
    return manifest


def spill(source: Source, work: Path) -> list[str]:
    """Write the reader's chunks to Parquet parts, numbering rows in arrival (file) order."""
    parts, offset = [], 0
    for n, chunk in enumerate(source.interactions):
        if chunk.height == 0:
            continue
        part = work / f"raw-{n:06d}.parquet"
        chunk.select(
            pl.col("user").cast(pl.String), pl.col("item").cast(pl.String), pl.col("timestamp").cast(pl.Int64),
            (pl.int_range(pl.len(), dtype=pl.Int64) + offset).alias("row"),
        ).write_parquet(part)
        parts.append(str(part))
        offset += chunk.height
    if not parts:
        raise DataError("the source has no interactions")
    return parts


def count_table(rows: pl.LazyFrame) -> dict:
    counts = rows.select(users=pl.col("user").n_unique(), items=pl.col("item").n_unique(),
                         interactions=pl.len()).collect(engine="streaming")
    return {k: int(v) for k, v in counts.row(0, named=True).items()}


def item_has(items: pl.DataFrame, requirement: str) -> pl.Expr:
    if requirement not in items.columns:
        return pl.lit(False)
    return pl.col(requirement).is_not_null() & (pl.col(requirement).str.strip_chars() != "")


def drop_items_lacking(rows: pl.LazyFrame, items: pl.DataFrame | None, require: tuple[str, ...]) -> pl.LazyFrame:
    """The paper's rule: drop interactions with items that lack a title or an image (or text)."""
    if not require:
        return rows
    if items is None:
        raise DataError(f"--require {','.join(require)} needs an items table (pass --items)")
    keep = items.filter(pl.all_horizontal([item_has(items, r) for r in require])).select("item")
    return rows.join(keep.lazy(), on="item", how="semi")


def dedupe(rows: pl.LazyFrame) -> pl.LazyFrame:
    """Collapse exact (user, item, timestamp) repeats to their first row; rows without time never collapse."""
    key = pl.coalesce(pl.col("timestamp"), -1 - pl.col("row")).alias("_time")
    return (rows.with_columns(key).group_by("user", "item", "_time")
            .agg(pl.col("timestamp").first(), pl.col("row").min()).drop("_time"))


def encode_keys(rows: pl.LazyFrame, work: Path) -> tuple[pl.LazyFrame, pl.DataFrame, pl.DataFrame]:
    """Replace string keys by integer codes ordered like the keys (so ranks of survivors = final ids)."""
    codes = {}
    for column in ("user", "item"):
        codes[column] = (rows.select(pl.col(column).unique()).sort(column).collect(engine="streaming")
                         .with_row_index("code").with_columns(pl.col("code").cast(pl.Int64)))
    encoded = (rows.join(codes["user"].lazy(), on="user").drop("user").rename({"code": "user"})
               .join(codes["item"].lazy(), on="item").drop("item").rename({"code": "item"})
               .select("user", "item", "timestamp", "row"))
    path = work / "encoded.parquet"
    encoded.sink_parquet(path)
    return pl.scan_parquet(path), codes["user"], codes["item"]


def kcore(rows: pl.LazyFrame, k: int, work: Path) -> tuple[Path, int]:
    """Iteratively drop users and items with fewer than k interactions until nothing changes."""
    current = work / "encoded.parquet"
    size = rows.select(pl.len()).collect().item()
    rounds = 0
    while k > 1:
        table = pl.scan_parquet(current)
        users = table.group_by("user").len().filter(pl.col("len") >= k).select("user")
        items = table.group_by("item").len().filter(pl.col("len") >= k).select("item")
        kept = table.join(users, on="user", how="semi").join(items, on="item", how="semi")
        rounds += 1
        path = work / f"kcore-{rounds:03d}.parquet"
        kept.sink_parquet(path)
        new_size = pl.scan_parquet(path).select(pl.len()).collect().item()
        current = path
        if new_size == size:
            break
        size = new_size
    return current, rounds


def write_tables(table: pl.LazyFrame, user_keys: pl.DataFrame, item_keys: pl.DataFrame, source: Source,
                 out: Path, work: Path) -> None:
    """Assign final dense ids, order each history by (time, file order), and write the three tables."""
    id_maps = {}
    for column, keys in (("user", user_keys), ("item", item_keys)):
        alive = table.select(pl.col(column).unique()).collect(engine="streaming").sort(column)
        id_maps[column] = alive.with_row_index("id").with_columns(pl.col("id").cast(pl.Int32)).join(
            keys.rename({"code": column, column: "key"}), on=column, how="left")
    order = ["user", "timestamp", "row"] if source.has_time else ["user", "row"]
    interactions = (
        table.join(id_maps["user"].lazy().select(pl.col(["user", "id"])), on="user").drop("user")
        .rename({"id": "user"})
        .join(id_maps["item"].lazy().select(pl.col(["item", "id"])), on="item").drop("item")
        .rename({"id": "item"})
        .sort(order)
        .select(
            "user", "item",
            pl.int_range(pl.len(), dtype=pl.Int32).over("user").alias("position"),
            pl.col("timestamp") if source.has_time else pl.lit(None, dtype=pl.Int64).alias("timestamp"),
        )
    )
    interactions.sink_parquet(out / "interactions.parquet")
    id_maps["user"].select(pl.col("id").alias("user"), "key").write_parquet(out / "users.parquet")
    items = id_maps["item"].select(pl.col("id").alias("item"), "key")
    if source.items is not None:
        attributes = source.items.rename({"item": "key"})
        items = items.join(attributes, on="key", how="left").sort("item")
    for column in ("title", "text", "image"):
        if column not in items.columns:
            items = items.with_columns(pl.lit(None, dtype=pl.String).alias(column))
    front = ["item", "key", "title", "text", "image"]
    items.select(front + [c for c in items.columns if c not in front]).write_parquet(out / "items.parquet")
