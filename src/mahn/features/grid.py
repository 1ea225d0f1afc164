"""Render a PNG grid: a few query items (left column) and their nearest neighbours by one modality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mahn.data import Dataset
from mahn.errors import DataError
from mahn.features.encoders.images import load_image
from mahn.features.store import nearest_neighbours
from mahn.io import atomic_path

THUMB_W, THUMB_H, CAPTION_H = 160, 240, 34


def _thumb(source: str | None) -> Image.Image:
    canvas = Image.new("RGB", (THUMB_W, THUMB_H), (235, 235, 235))
    if source:
        try:
            pixels = load_image(source, THUMB_W)  # square crop; pad it into the portrait cell
            canvas.paste(Image.fromarray(pixels), (0, (THUMB_H - THUMB_W) // 2))
        except Exception:  # noqa: BLE001 - a grid cell stays grey when its image cannot be read
            pass
    return canvas


def neighbour_grid(root: str | Path, out: str | Path, modality: str = "image", n_queries: int = 5,
                   k: int = 3, seed: int = 0, items: list[int] | None = None) -> list[list[int]]:
    """Write the grid to `out`; returns the item ids drawn, one row per query ([query, neighbours...])."""
    dataset = Dataset(root)
    _, mask = dataset.features(modality)
    table = dataset.item_metadata
    images = table["image"].to_list() if "image" in table.columns else [None] * dataset.n_items
    titles = dataset.titles()
    k = min(k, int(mask.sum()) - 1)  # no more neighbours than the other items with this feature
    if k < 1:
        raise DataError(f"fewer than 2 items have a {modality} feature: no neighbours to show", root)
    if items is None:
        candidates = np.flatnonzero(mask)
        if not len(candidates):
            raise DataError(f"no item has a {modality} feature", root)
        rng = np.random.default_rng(seed)
        items = sorted(rng.choice(candidates, size=min(n_queries, len(candidates)), replace=False).tolist())
    rows = []
    grid = Image.new("RGB", ((k + 1) * THUMB_W, len(items) * (THUMB_H + CAPTION_H)), "white")
    draw = ImageDraw.Draw(grid)
    for r, item in enumerate(items):
        neighbours = nearest_neighbours(dataset, modality, item, k)
        row = [(item, titles[item], 1.0), *neighbours]
        rows.append([i for i, _, _ in row])
        for c, (i, title, cosine) in enumerate(row):
            x, y = c * THUMB_W, r * (THUMB_H + CAPTION_H)
            grid.paste(_thumb(images[i]), (x, y))
            label = "query" if c == 0 else f"cos {cosine:.2f}"
            draw.text((x + 4, y + THUMB_H + 2), f"{label} #{i}", fill=(200, 0, 0) if c == 0 else "black")
            draw.text((x + 4, y + THUMB_H + 16), (title or "")[:24], fill="black")
        draw.line([(THUMB_W - 1, 0), (THUMB_W - 1, grid.height)], fill=(200, 0, 0), width=2)
    with atomic_path(out) as tmp:
        grid.save(tmp, format="PNG")
    return rows
