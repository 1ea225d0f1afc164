"""A synthetic shop whose users pick items by how they look and how they are described (`mahn demo-data`).

Every item has six latent attributes. Three are drawn in its image and three are written in its
title, and one of them (colour) is in both:

    image only: shape, pattern        text only: brand, category, material        both: colour

A user has a long-term taste (a favourite shape and pattern, a favourite brand and category). The
next item is drawn from a softmax over the items not yet picked, whose logit adds up
  - attribute matches with the previous item (and, at half weight, the one before it),
  - matches with the user's taste,
  - a per-item popularity term,
and Gumbel noise. So both the look and the words carry signal the other lacks, and with ~10
interactions per user and ~50 per item a model that reads content can generalise where one that
only reads item ids cannot.

Item keys are assigned after a shuffle, so they say nothing about the attributes. The latent
attributes go to `latent.json` for sanity checks only; a model must never read that file.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mahn.errors import DataError
from mahn.io import atomic_dir, write_json

IMAGE_SIZE = 128
SUPERSAMPLE = 2  # shapes are drawn at 2x and downscaled, for anti-aliased edges
MIN_USERS = 10
MIN_ITEMS = 20
START_TIME = 1_577_836_800  # 2020-01-01T00:00:00Z

SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond", "hexagon", "cross")
PATTERNS = ("solid", "stripes", "dots", "checks", "grid")
COLOURS = {
    "red": (205, 40, 45), "blue": (40, 80, 200), "green": (40, 150, 70), "yellow": (235, 195, 30),
    "purple": (125, 60, 170), "orange": (240, 125, 30), "black": (35, 35, 40), "pink": (235, 120, 170),
}
BRANDS = ("Nordvik", "Brightline", "Casca", "Duna", "Elmstead", "Fjora",
          "Halden", "Kestrel", "Lumo", "Marrow", "Quill", "Sorrel")
CATEGORIES = {  # category noun -> department, written into the description
    "mug": "kitchen", "bottle": "kitchen", "lamp": "home", "cushion": "home", "backpack": "travel",
    "sneaker": "footwear", "scarf": "fashion", "watch": "accessories", "speaker": "electronics",
    "notebook": "office",
}
MATERIALS = ("ceramic", "cotton", "leather", "steel", "bamboo", "wool", "glass", "recycled plastic")
# Noise words: in the text, but unrelated to any choice a user makes.
ADJECTIVES = ("durable", "lightweight", "easy to clean", "compact", "timeless", "sturdy", "soft-touch",
              "handmade", "minimal", "everyday")
BACKGROUNDS = ((244, 242, 236), (236, 240, 244), (240, 240, 240), (246, 240, 232), (234, 242, 236))

ATTRIBUTES = {  # name -> values; order fixes the columns of the latent attribute matrix
    "shape": SHAPES, "pattern": PATTERNS, "colour": tuple(COLOURS),
    "brand": BRANDS, "category": tuple(CATEGORIES), "material": MATERIALS,
}
VISUAL = ("shape", "pattern", "colour")
TEXTUAL = ("colour", "brand", "category", "material")
TASTE = ("shape", "pattern", "brand", "category")


@dataclass(frozen=True)
class Process:
    """Weights of the latent choice process (logits; the Gumbel noise has scale 1)."""

    match_weight: float = 1.0  # per attribute shared with the previous item
    second_last_weight: float = 0.5  # the item before counts this fraction of the previous one
    taste_weight: float = 1.0  # per attribute equal to the user's favourite
    popularity_weight: float = 0.6  # times log popularity, popularity ~ lognormal(0, 1)
    taste_skew: float = 0.8  # favourite values are drawn with p ~ 1 / rank^skew, so tastes cluster
    min_length: int = 5
    max_length: int = 30
    mean_extra_length: float = 5.0  # length = min_length + geometric extra, capped at max_length
    mean_gap_seconds: float = 129_600.0  # 1.5 days between a user's picks, on average


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"must be an integer >= {minimum}, got {value!r}", where=name)
    return int(value)


def _key_width(count: int) -> int:
    return max(4, len(str(count)))


# --- catalogue -----------------------------------------------------------------------------------


def sample_attributes(rng: np.random.Generator, n_items: int) -> np.ndarray:
    """int64 (items, 6): one value index per attribute, independent and uniform."""
    return np.stack([rng.integers(0, len(values), n_items) for values in ATTRIBUTES.values()], axis=1)


def attribute_names(row: np.ndarray) -> dict[str, str]:
    return {name: values[int(v)] for (name, values), v in zip(ATTRIBUTES.items(), row, strict=True)}


def item_title_and_text(attrs: dict[str, str], rng: np.random.Generator) -> tuple[str, str]:
    noun, material = attrs["category"], attrs["material"]
    title = f"{attrs['brand']} {attrs['colour']} {material} {noun}"
    first, second = rng.choice(len(ADJECTIVES), size=2, replace=False)
    text = (f"{title}. A {material} {noun} from {attrs['brand']}, in {attrs['colour']}. "
            f"Department: {CATEGORIES[noun]}. {ADJECTIVES[first].capitalize()} and {ADJECTIVES[second]}.")
    return title, text


# --- images --------------------------------------------------------------------------------------


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    """Points at equal angular steps around (cx, cy), the first pointing up, rotated by `angle` (radians)."""
    n = len(radii)
    return [(cx + r * math.sin(angle + 2 * math.pi * k / n), cy - r * math.cos(angle + 2 * math.pi * k / n))
            for k, r in enumerate(radii)]


def _shape_mask(shape: str, cx: float, cy: float, r: float, angle: float, size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        inner = 0.55 * r
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, [r * 0.95] * 4, angle + math.pi / 4), fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + 0.15 * r, [r * 1.1] * 3, angle), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, [r, 0.42 * r] * 5, angle), fill=255)
    elif shape == "diamond":
        points = _polygon(cx, cy, [r, 0.62 * r, r, 0.62 * r], angle)
        draw.polygon(points, fill=255)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, [r] * 6, angle + math.pi / 6), fill=255)
    elif shape == "cross":
        arm = 0.36 * r
        points = [(-arm, -r), (arm, -r), (arm, -arm), (r, -arm), (r, arm), (arm, arm), (arm, r), (-arm, r),
                  (-arm, arm), (-r, arm), (-r, -arm), (-arm, -arm)]
        cos, sin = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _pattern_fill(pattern: str, base: tuple[int, ...], rng: np.random.Generator, size: int) -> Image.Image:
    """A full-canvas fill in the item's colour with the pattern drawn in a paler tint of it."""
    fill = Image.new("RGB", (size, size), base)
    if pattern == "solid":
        return fill
    tint = tuple(int(c + 0.6 * (255 - c)) for c in base)
    draw = ImageDraw.Draw(fill)
    step = int(rng.integers(10, 15))
    phase = int(rng.integers(0, step))
    if pattern == "stripes":  # diagonal bands
        for x in range(-size + phase, 2 * size, step):
            draw.polygon([(x, 0), (x + step // 2, 0), (x + step // 2 - size, size), (x - size, size)], fill=tint)
    elif pattern == "dots":
        dot = step / 4
        for y in range(phase, size + step, step):
            for x in range(phase, size + step, step):
                draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=tint)
    elif pattern == "checks":
        half = step // 2 + 1
        for row, y in enumerate(range(phase - half, size, half)):
            for col, x in enumerate(range(phase - half, size, half)):
                if (row + col) % 2 == 0:
                    draw.rectangle((x, y, x + half - 1, y + half - 1), fill=tint)
    elif pattern == "grid":
        for v in range(phase, size, step):
            draw.line((v, 0, v, size), fill=tint, width=2)
            draw.line((0, v, size, v), fill=tint, width=2)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return fill


def render_image(attrs: dict[str, str], rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """A product shot: a pale background and one patterned, coloured shape, with per-item jitter."""
    background = tuple(int(c) for c in np.clip(np.array(BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
                                               + rng.integers(-6, 7, 3), 0, 255))
    base = tuple(int(c) for c in np.clip(np.array(COLOURS[attrs["colour"]]) + rng.integers(-18, 19, 3), 0, 255))
    big = size * SUPERSAMPLE
    radius = big * rng.uniform(0.28, 0.40)
    cx, cy = big / 2 + rng.uniform(-0.08, 0.08) * big, big / 2 + rng.uniform(-0.08, 0.08) * big
    angle = rng.uniform(-0.2, 0.2)
    mask = _shape_mask(attrs["shape"], cx, cy, radius, angle, big).resize((size, size), Image.Resampling.LANCZOS)
    fill = _pattern_fill(attrs["pattern"], base, rng, size)
    return Image.composite(fill, Image.new("RGB", (size, size), background), mask)


# --- histories -----------------------------------------------------------------------------------


def match_scores(attrs: np.ndarray, item: int, columns: list[int]) -> np.ndarray:
    """float (items,): how many of the given attribute columns each item shares with `item`."""
    return (attrs[:, columns] == attrs[item, columns]).sum(axis=1).astype(np.float64)


def sample_histories(rng: np.random.Generator, attrs: np.ndarray, n_users: int,
                     process: Process) -> tuple[list[np.ndarray], dict]:
    """Each user's items in order (no repeats), and the latent user tastes and item popularity."""
    n_items = len(attrs)
    names = list(ATTRIBUTES)
    all_columns = list(range(len(names)))
    log_popularity = rng.normal(0.0, 1.0, n_items)
    taste_columns = [names.index(a) for a in TASTE]
    # Favourite values are skewed towards a few popular ones (in a random order per attribute).
    taste_probs = []
    for column in taste_columns:
        n_values = len(ATTRIBUTES[names[column]])
        weights = 1.0 / np.arange(1, n_values + 1) ** process.taste_skew
        taste_probs.append(weights[rng.permutation(n_values)] / weights.sum())
    favourites = np.stack([rng.choice(len(p), n_users, p=p) for p in taste_probs], axis=1)

    max_length = min(process.max_length, n_items // 2)
    extra = rng.geometric(1.0 / (process.mean_extra_length + 1.0), n_users) - 1
    lengths = np.minimum(process.min_length + extra, max_length)

    histories = []
    for user in range(n_users):
        base = process.popularity_weight * log_popularity
        base = base + process.taste_weight * (attrs[:, taste_columns] == favourites[user]).sum(axis=1)
        picked: list[int] = []
        logits = base.copy()
        for _ in range(lengths[user]):
            logits[picked] = -np.inf
            choice = int(np.argmax(logits + rng.gumbel(size=n_items)))
            picked.append(choice)
            logits = base + process.match_weight * match_scores(attrs, choice, all_columns)
            if len(picked) >= 2:
                logits += (process.second_last_weight * process.match_weight
                           * match_scores(attrs, picked[-2], all_columns))
        histories.append(np.array(picked, dtype=np.int64))
    latent = {"log_popularity": log_popularity, "favourites": favourites}
    return histories, latent


# --- writing -------------------------------------------------------------------------------------


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _readme(users: int, items: int, seed: int, process: Process, summary: dict) -> str:
    weights = "\n".join(f"- `{k}` = {v}" for k, v in asdict(process).items())
    return f"""# Synthetic multimodal shop (generated by `mahn demo-data`)

Parameters: users = {users}, items = {items}, seed = {seed}. The same parameters give byte-identical
files (images: given the same Pillow and zlib). {summary['interactions']} interactions, history
lengths {summary['min_length']}..{summary['max_length']} (mean {summary['mean_length']:.2f}).

## Files

- `items.csv`: `item,title,text,image`. `image` is relative to this directory.
- `images/<item>.png`: {IMAGE_SIZE}x{IMAGE_SIZE} rendered product images.
- `interactions.csv`: `user,item,timestamp` (integer seconds, strictly increasing per user), rows sorted
  by time. Users never pick an item twice.
- `latent.json`: the hidden attributes, user tastes and item popularity, **for sanity checks only.
  A model must never read it**: it would see the answer the content features are meant to recover.

Prepare it with:

    mahn prepare interactions.csv --format csv --items items.csv --time-col timestamp --out DIR

## How it is made

Every item has six latent attributes, drawn independently and uniformly, and each lives in a
chosen modality, so that both the image and the text carry signal the other does not:

| attribute | values | in the image | in the text |
|---|---|---|---|
| shape | {', '.join(SHAPES)} | yes | no |
| pattern | {', '.join(PATTERNS)} | yes | no |
| colour | {', '.join(COLOURS)} | yes (shape fill) | yes (colour word) |
| brand | {', '.join(BRANDS)} | no | yes |
| category | {', '.join(CATEGORIES)} | no | yes (noun and department) |
| material | {', '.join(MATERIALS)} | no | yes |

Titles read "<brand> <colour> <material> <category>" (e.g. "Nordvik blue ceramic mug"); the text
repeats them in a sentence with the department and two random adjectives (noise). Images show
one shape filled with the item's colour, the pattern drawn in a paler tint, on a pale background;
size, position, rotation, shade, pattern phase and background vary per item, so no two images are
identical. Item and user keys are assigned after a shuffle and carry no information.

Each user has a favourite shape, pattern, brand and category (drawn with a skew, so tastes
cluster). A history has {process.min_length} items plus a geometric extra (mean {process.mean_extra_length}),
capped at {min(process.max_length, items // 2)} (`max_length`, or half the catalogue if smaller). Each next
item is drawn, among the items the user has not picked, from a softmax with logit

    match_weight * (attributes shared with the previous item
                    + second_last_weight * attributes shared with the one before)
    + taste_weight * (attributes equal to the user's favourites)
    + popularity_weight * log popularity(item)         (log popularity ~ Normal(0, 1))

plus Gumbel noise (scale 1), with

{weights}

Timestamps start at a random time in 2020 per user; the gaps are 60 s plus an exponential draw.
"""


def generate_demo(out: Path, users: int = 3000, items: int = 600, seed: int = 0, force: bool = False) -> dict:
    """Write the synthetic dataset to `out` (atomically) and return a summary of what was written."""
    users = _check_int("users", users, MIN_USERS)
    items = _check_int("items", items, MIN_ITEMS)
    seed = _check_int("seed", seed, 0)
    process = Process()
    started = time.perf_counter()
    # Independent streams, so changing how images are drawn never changes the histories.
    catalogue_rng, history_rng, image_rng, time_rng, key_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))

    attrs = sample_attributes(catalogue_rng, items)
    histories, latent = sample_histories(history_rng, attrs, users, process)

    item_width, user_width = _key_width(items), _key_width(users)
    item_keys = [f"item{k + 1:0{item_width}d}" for k in key_rng.permutation(items)]
    user_keys = [f"user{k + 1:0{user_width}d}" for k in key_rng.permutation(users)]

    item_rows, latent_items = [], {}
    named = [attribute_names(row) for row in attrs]
    for index in np.argsort(item_keys):  # rows in key order, so the file does not follow generation order
        key = item_keys[index]
        title, text = item_title_and_text(named[index], catalogue_rng)
        item_rows.append((key, title, text, f"images/{key}.png"))
        latent_items[key] = {**named[index], "log_popularity": round(float(latent["log_popularity"][index]), 6)}

    interaction_rows = []
    for user, history in enumerate(histories):
        start = START_TIME + int(time_rng.integers(0, 365 * 86_400))
        gaps = 60 + time_rng.exponential(process.mean_gap_seconds, len(history)).astype(np.int64)
        stamps = start + np.cumsum(gaps) - gaps[0]
        interaction_rows += [(user_keys[user], item_keys[i], int(t)) for i, t in zip(history, stamps, strict=True)]
    interaction_rows.sort(key=lambda row: (row[2], row[0]))

    lengths = np.array([len(h) for h in histories])
    summary = {
        "out": str(out), "users": users, "items": items, "seed": seed,
        "interactions": int(lengths.sum()), "min_length": int(lengths.min()), "max_length": int(lengths.max()),
        "mean_length": round(float(lengths.mean()), 3),
        "items_with_interactions": int(len(np.unique(np.concatenate(histories)))),
    }
    with atomic_dir(out, force) as tmp:
        (tmp / "images").mkdir()
        for index, key in enumerate(item_keys):
            render_image(named[index], image_rng).save(tmp / "images" / f"{key}.png", optimize=False)
        _write_csv(tmp / "items.csv", ["item", "title", "text", "image"], item_rows)
        _write_csv(tmp / "interactions.csv", ["user", "item", "timestamp"], interaction_rows)
        write_json(tmp / "latent.json", {
            "warning": "latent ground truth for sanity checks; models must not read this file",
            "seed": seed, "process": asdict(process), "attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
            "visual": list(VISUAL), "textual": list(TEXTUAL),
            "items": latent_items,
            "users": {user_keys[u]: dict(zip(TASTE, (ATTRIBUTES[a][v] for a, v in
                                                      zip(TASTE, latent["favourites"][u], strict=True)),
                                             strict=True)) for u in range(users)},
        })
        (tmp / "README.md").write_text(_readme(users, items, seed, process, summary), encoding="utf-8")
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary
